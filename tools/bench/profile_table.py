#!/usr/bin/env python3
"""Where the time goes: summarise onnxruntime profiles (one JSON per session) of a bevy_helios chunk loop.

Input: the `onnxruntime_profile` files gpu_bench writes with `--profile PREFIX` (one per graph session; the
graph key must appear in the file name, e.g. `PREFIX.denoiser_stage2_2026-...json`; files without a known
key are classified by their ops). For GPU numbers run the bench with `CUDA_LAUNCH_BLOCKING=1`: the CUDA
provider launches kernels asynchronously and onnxruntime times each node on the host, so without it a node's
time is only its launch cost. With it, each node's time is its kernel time plus a few microseconds of
launch + synchronisation (small kernels are over-counted: the table gives shares, and scales them to the
steady chunk time measured without the profiler when `--chunk-ms` is given).

Per file, the first run of the session (warm-up, cuDNN/cuBLAS autotuning) is dropped and the others are
averaged; a steady chunk is then assembled from per-run averages: 2 runs of each denoiser and dmd_step
stage, 1 of the VAE decoder, the renoise graphs, the downsample and the history graphs.

Categories: attention (MultiHeadAttention / Attention / Softmax), FFN matmuls (a MatMul/Gemm whose input or
output has the FFN width, --ffn-dim), other matmuls (q/k/v/out/text projections, patch/time embedding),
norms + elementwise (LayerNorm, RMSNorm pieces, Add/Mul/Cast/Gelu/...), layout (Transpose, Reshape, Concat,
Slice, Split, Expand, Gather, ...), conv (the patch embeddings), VAE decode (every node of the decoder
graph), helpers (downsample, renoise, dmd_step, history graphs), copies (Memcpy nodes), onnxruntime
overhead (model_run minus its nodes), and gaps (host time between graph runs: --chunk-ms-profiled minus
all model_run time of a steady chunk).

Also reports, per denoiser stage, the share of node time inside the transformer blocks (node names
`blocks.N/...`, from export.py --fused-attention): the per-layer term of the 40-layer extrapolation.

Usage: profile_table.py PROFILE.json... [--ffn-dim 13824] [--chunk-ms MS] [--chunk-ms-profiled MS]
                        [--json OUT.json] [--md OUT.md]
"""

from __future__ import annotations

import argparse
import json
import re
import statistics
import sys
from collections import defaultdict
from pathlib import Path

KEYS = (["denoiser_stage0", "denoiser_stage1", "denoiser_stage2", "vae_decoder_rgba8", "vae_decoder",
         "pyramid_downsample", "pyramid_renoise_stage1", "pyramid_renoise_stage2", "dmd_step_stage0",
         "dmd_step_stage1", "dmd_step_stage2", "history_push", "history_slices", "vae_encoder_image",
         "vae_encoder_clip"])
RUNS_PER_STEADY_CHUNK = {"denoiser_stage0": 2, "denoiser_stage1": 2, "denoiser_stage2": 2, "dmd_step_stage0": 2,
                         "dmd_step_stage1": 2, "dmd_step_stage2": 2, "vae_decoder_rgba8": 1, "vae_decoder": 1,
                         "pyramid_downsample": 1, "pyramid_renoise_stage1": 1, "pyramid_renoise_stage2": 1,
                         "history_push": 1, "history_slices": 1, "vae_encoder_image": 0, "vae_encoder_clip": 0}
ATTENTION = {"MultiHeadAttention", "Attention", "GroupQueryAttention", "Softmax", "PackedMultiHeadAttention"}
MATMUL = {"MatMul", "Gemm", "FusedMatMul", "MatMulInteger", "FusedGemm"}
LAYOUT = {"Transpose", "Reshape", "Concat", "Slice", "Split", "Expand", "Gather", "Squeeze", "Unsqueeze",
          "Identity", "Flatten", "Tile", "Pad", "ConstantOfShape", "Shape", "GatherElements", "ScatterND"}
CONV = {"Conv", "ConvTranspose"}
COPY = {"MemcpyFromHost", "MemcpyToHost", "Memcpy"}
ROWS = ["attention", "FFN matmuls", "other matmuls", "norms + elementwise", "layout", "conv", "other denoiser",
        "VAE decode", "helpers", "copies", "onnxruntime overhead", "gaps"]


def graph_key(path: Path, events) -> str:
    name = path.name
    for key in sorted(KEYS, key=len, reverse=True):
        if key in name:
            return key
    ops = {e["args"].get("op_name") for e in events if e.get("cat") == "Node"}
    if ops & ATTENTION:
        return "denoiser?"
    if "Conv" in ops and len(ops) > 8:
        return "vae_decoder?"
    return "helper?"


def shapes(args) -> list[list[int]]:
    out = []
    for k in ("input_type_shape", "output_type_shape"):
        for entry in args.get(k, []) or []:
            for dims in entry.values():
                out.append(list(dims))
    return out


def category(op: str, args, ffn_dim: int) -> str:
    if op in ATTENTION:
        return "attention"
    if op in MATMUL:
        return "FFN matmuls" if any(s and ffn_dim in s[-1:] for s in shapes(args)) else "other matmuls"
    if op in COPY:
        return "copies"
    if op in LAYOUT:
        return "layout"
    if op in CONV:
        return "conv"
    return "norms + elementwise"


def load(path: Path):
    events = json.loads(path.read_text())
    if isinstance(events, dict):  # some writers wrap the list
        events = events.get("traceEvents", [])
    return events


def summarize_file(path: Path, ffn_dim: int) -> dict:
    events = load(path)
    key = graph_key(path, events)
    runs = sorted((e for e in events if e.get("cat") == "Session" and e.get("name") == "model_run"),
                  key=lambda e: e["ts"])
    nodes = [e for e in events if e.get("cat") == "Node" and str(e.get("name", "")).endswith("_kernel_time")]
    per_run = []
    for r in runs:
        lo, hi = r["ts"], r["ts"] + r["dur"]
        mine = [n for n in nodes if lo <= n["ts"] <= hi]
        cats, blocks_us, ops, cpu_ops = defaultdict(float), 0.0, defaultdict(float), defaultdict(int)
        for n in mine:
            op = n["args"].get("op_name", "?")
            cats["copies" if op in COPY else category(op, n["args"], ffn_dim)] += n["dur"]
            ops[op] += n["dur"]
            if n["args"].get("provider") == "CPUExecutionProvider":
                cpu_ops[op] += 1
            if n["name"].startswith("blocks."):
                blocks_us += n["dur"]
        per_run.append({"run_us": r["dur"], "nodes_us": sum(n["dur"] for n in mine), "cats": cats,
                        "blocks_us": blocks_us, "providers": sorted({n["args"].get("provider", "?") for n in mine}),
                        "ops": ops, "cpu_ops": cpu_ops})
    used = per_run[1:] if len(per_run) > 1 else per_run  # drop the warm-up run
    avg = lambda f: statistics.mean(f(r) for r in used) if used else 0.0  # noqa: E731
    cats = defaultdict(float)
    for r in used:
        for c, v in r["cats"].items():
            cats[c] += v / len(used)
    ops = defaultdict(float)
    for r in used:
        for o, v in r["ops"].items():
            ops[o] += v / len(used) / 1e3
    cpu_ops = dict(used[-1]["cpu_ops"]) if used else {}
    return {"file": path.name, "key": key, "runs": len(per_run), "runs_used": len(used),
            "op_ms": dict(sorted(ops.items(), key=lambda kv: -kv[1])), "cpu_ops": cpu_ops,
            "run_ms": avg(lambda r: r["run_us"]) / 1e3, "nodes_ms": avg(lambda r: r["nodes_us"]) / 1e3,
            "blocks_ms": avg(lambda r: r["blocks_us"]) / 1e3, "cats_ms": {c: v / 1e3 for c, v in cats.items()},
            "providers": sorted({p for r in per_run for p in r["providers"]})}


def build_table(files: list[dict], chunk_ms: float | None, chunk_ms_profiled: float | None) -> dict:
    rows = defaultdict(float)
    run_total = 0.0
    per_stage = {}
    for f in files:
        k = f["key"].rstrip("?")
        n = RUNS_PER_STEADY_CHUNK.get(k, 2 if k.startswith("denoiser") else 1)
        run_total += n * f["run_ms"]
        if k.startswith("vae"):
            rows["VAE decode"] += n * f["nodes_ms"]
        elif k.startswith("denoiser"):
            for c, v in f["cats_ms"].items():
                rows[c if c in ROWS else "other denoiser"] += n * v
            if k[-1].isdigit():
                per_stage[k] = {"forward_ms": f["run_ms"], "nodes_ms": f["nodes_ms"], "blocks_ms": f["blocks_ms"],
                                "block_share": f["blocks_ms"] / f["nodes_ms"] if f["nodes_ms"] else None}
        else:
            rows["copies"] += n * f["cats_ms"].get("copies", 0.0)
            rows["helpers"] += n * (f["nodes_ms"] - f["cats_ms"].get("copies", 0.0))
        rows["onnxruntime overhead"] += n * (f["run_ms"] - f["nodes_ms"])
    if chunk_ms_profiled:
        rows["gaps"] = max(chunk_ms_profiled - run_total, 0.0)
    total = sum(rows.values())
    table = []
    for r in ROWS:
        ms = rows.get(r, 0.0)
        share = ms / total if total else 0.0
        table.append({"what": r, "profiled_ms": ms, "share": share,
                      "scaled_ms": share * chunk_ms if chunk_ms else None})
    return {"rows": table, "total_profiled_ms": total, "steady_chunk_runs_ms": run_total,
            "chunk_ms": chunk_ms, "chunk_ms_profiled": chunk_ms_profiled, "per_stage": per_stage}


def markdown(res: dict, files: list[dict]) -> str:
    scaled = res["chunk_ms"] is not None
    lines = ["| where | ms (profiled run) | share |" + (" ms of a steady chunk (scaled) |" if scaled else ""),
             "|---|---|---|" + ("---|" if scaled else "")]
    for r in res["rows"]:
        lines.append(f"| {r['what']} | {r['profiled_ms']:.2f} | {100 * r['share']:.1f} % |"
                     + (f" {r['scaled_ms']:.1f} |" if scaled else ""))
    lines.append(f"| **total** | {res['total_profiled_ms']:.2f} | 100 % |" + (f" {res['chunk_ms']:.1f} |" if scaled else ""))
    lines += ["", "| graph (session) | runs (used) | ms / run | nodes ms / run | in blocks | providers |",
              "|---|---|---|---|---|---|"]
    for f in sorted(files, key=lambda f: f["key"]):
        lines.append(f"| {f['key']} | {f['runs']} ({f['runs_used']}) | {f['run_ms']:.2f} | {f['nodes_ms']:.2f} | "
                     f"{f['blocks_ms']:.2f} | {', '.join(p.replace('ExecutionProvider', '') for p in f['providers'])} |")
    lines += ["", "Top node types per graph (ms per run), and nodes the CPU provider ran:", ""]
    for f in sorted(files, key=lambda f: f["key"]):
        if not f.get("op_ms"):
            continue
        top = ", ".join(f"{o} {v:.2f}" for o, v in list(f["op_ms"].items())[:8])
        cpu = ", ".join(f"{o} ×{c}" for o, c in sorted(f.get("cpu_ops", {}).items())) or "none"
        lines.append(f"- `{f['key']}`: {top}; on the CPU: {cpu}")
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("profiles", nargs="+")
    ap.add_argument("--ffn-dim", type=int, default=13824)
    ap.add_argument("--chunk-ms", type=float, default=None, help="steady chunk wall of the un-profiled run")
    ap.add_argument("--chunk-ms-profiled", type=float, default=None, help="steady chunk wall of the profiled run")
    ap.add_argument("--json", default=None)
    ap.add_argument("--md", default=None)
    a = ap.parse_args(argv)
    paths = [Path(p) for p in a.profiles if Path(p).is_file()]
    if not paths:
        print("profile_table: no profile files", file=sys.stderr)
        return 1
    files = [summarize_file(p, a.ffn_dim) for p in paths]
    res = build_table(files, a.chunk_ms, a.chunk_ms_profiled)
    res["files"] = files
    md = markdown(res, files)
    print(md)
    if a.json:
        Path(a.json).write_text(json.dumps(res, indent=1))
    if a.md:
        Path(a.md).write_text(md)
    return 0


if __name__ == "__main__":
    sys.exit(main())
