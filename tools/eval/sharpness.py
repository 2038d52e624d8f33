#!/usr/bin/env python3
"""Sharpness of helios-nano's frames per frame index within a 33-frame chunk, on frames made by the Rust
runtime (`helios-tools batch-generate`), to measure the "hazy end of every chunk" pulse.

    cargo build --no-default-features --features tools --bin helios-tools   # a debug build is enough
    tools/.venv/bin/python tools/eval/sharpness.py --model models/helios-nano --label before
    tools/.venv/bin/python tools/eval/sharpness.py --model /tmp/nano-ft/helios-nano --label after

Streams: every prompt of the bank (tools/nano/prompts.txt names) x `--seeds` seeds, `--chunks` chunks each.
Chunk 0 (amplified first chunk, no history) is reported on its own; the "steady" numbers average chunks 1..
For every frame index 0..32 of a chunk:
  * lapvar   variance of the 4-neighbour Laplacian of luma (0.299 R + 0.587 G + 0.114 B, 0..255 units) over the
             interior pixels: high = sharp, low = hazy/blurred;
  * contrast std of luma over the frame;
  * ratio    last/first = frame 32 / frame 0, and mean(frames 25..32) / mean(frames 0..7).
`--roundtrip-clips N` adds the same numbers for procedural clips of the bank captions (tools/nano/clips.py)
through the model's own ONNX VAE (vae_encoder_clip -> normalise -> vae_decoder, onnxruntime CPU), which isolates
the decoder from the transformer, plus the mean abs error against the source clip.

Writes DOCS/sharpness_<label>.md and .json (and the raw frames under OUT). `laplacian_variance` is also used by
tools/nano/finetune_decoder.py, so keep this module importable without onnxruntime.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[2]
CHUNK = 33
H, W = 64, 128
LUMA = np.array([0.299, 0.587, 0.114], np.float64)


def luma(frames: np.ndarray) -> np.ndarray:
    """uint8 [T, H, W, 3] (or float in 0..255) -> float64 [T, H, W] luma in 0..255."""
    return frames.astype(np.float64) @ LUMA


def laplacian_variance(frames: np.ndarray) -> np.ndarray:
    """uint8 [T, H, W, 3] -> float64 [T]: variance of the 4-neighbour Laplacian of luma over interior pixels."""
    y = luma(frames)
    lap = (y[:, :-2, 1:-1] + y[:, 2:, 1:-1] + y[:, 1:-1, :-2] + y[:, 1:-1, 2:]) - 4.0 * y[:, 1:-1, 1:-1]
    return lap.reshape(lap.shape[0], -1).var(axis=1)


def luma_contrast(frames: np.ndarray) -> np.ndarray:
    """uint8 [T, H, W, 3] -> float64 [T]: standard deviation of luma over the frame."""
    y = luma(frames)
    return y.reshape(y.shape[0], -1).std(axis=1)


def ratios(v: np.ndarray) -> dict:
    v = np.asarray(v, np.float64)
    return {"last_over_first": float(v[-1] / v[0]), "last8_over_first8": float(v[-8:].mean() / v[:8].mean()),
            "min_over_max": float(v.min() / v.max()), "argmin": int(v.argmin())}


# ----------------------------------------------------------------------------------------------------------
# Runtime frames
# ----------------------------------------------------------------------------------------------------------


def bank_names() -> list[tuple[str, str]]:
    out = []
    for line in (REPO / "tools" / "nano" / "prompts.txt").read_text().splitlines():
        if line.strip() and not line.startswith("#"):
            name, text = line.split(":", 1)
            out.append((name.strip(), text.strip()))
    return out


def make_jobs(bank: list[tuple[str, str]], seeds: list[int], chunks: int) -> list[dict]:
    return [dict(id=f"sharp_{name}_s{seed}", seed=seed, chunks=chunks, prompt=name) for seed in seeds for name, _ in bank]


def generate(binary: Path, model: Path, jobs: list[dict], out: Path) -> float:
    out.mkdir(parents=True, exist_ok=True)
    (out / "jobs.tsv").write_text("".join(f"{j['id']}\t{j['seed']}\t{j['chunks']}\t{j['prompt']}\n" for j in jobs))
    t0 = time.time()
    subprocess.run([str(binary), "batch-generate", "--model", str(model), "--jobs", str(out / "jobs.tsv"), "--out", str(out)], check=True)
    return time.time() - t0


def load_frames(out: Path, job_id: str) -> np.ndarray:
    return np.fromfile(out / f"{job_id}.rgb", np.uint8).reshape(-1, H, W, 3)


def measure_runtime(out: Path, jobs: list[dict]) -> dict:
    """Per chunk position (0 = first chunk, 1.. = steady) per frame index: lapvar / contrast / luma."""
    lap = {}   # chunk index -> list of [33]
    con, lum = {}, {}
    per_prompt = {}
    for j in jobs:
        fr = load_frames(out, j["id"])
        if fr.shape[0] != j["chunks"] * CHUNK:
            raise SystemExit(f"{j['id']}: {fr.shape[0]} frames, expected {j['chunks'] * CHUNK}")
        for k in range(j["chunks"]):
            c = fr[k * CHUNK:(k + 1) * CHUNK]
            lv = laplacian_variance(c)
            lap.setdefault(k, []).append(lv)
            con.setdefault(k, []).append(luma_contrast(c))
            lum.setdefault(k, []).append(luma(c).mean(axis=(1, 2)))
            if k > 0:
                per_prompt.setdefault(j["prompt"], []).append(lv)
    steady = [k for k in lap if k > 0]
    res = {"chunk0": {"lapvar": np.mean(lap[0], 0).tolist(), "contrast": np.mean(con[0], 0).tolist(),
                      "luma": np.mean(lum[0], 0).tolist(), "n_chunks": len(lap[0])}}
    if steady:
        L = np.concatenate([np.stack(lap[k]) for k in steady])
        res["steady"] = {"lapvar": L.mean(0).tolist(),
                         "lapvar_sem": (L.std(0, ddof=1) / np.sqrt(len(L))).tolist() if len(L) > 1 else None,
                         "contrast": np.concatenate([np.stack(con[k]) for k in steady]).mean(0).tolist(),
                         "luma": np.concatenate([np.stack(lum[k]) for k in steady]).mean(0).tolist(),
                         "n_chunks": int(len(L)), "chunk_indices": sorted(steady)}
        res["steady"]["ratios"] = ratios(res["steady"]["lapvar"])
        # ratio per chunk position and per prompt (is the pulse everywhere?)
        res["steady_by_chunk"] = {str(k): ratios(np.mean(lap[k], 0)) for k in sorted(steady)}
        res["steady_by_prompt"] = {p: ratios(np.mean(v, 0)) for p, v in sorted(per_prompt.items())}
    res["chunk0"]["ratios"] = ratios(res["chunk0"]["lapvar"])
    return res


# ----------------------------------------------------------------------------------------------------------
# VAE roundtrip of procedural clips (isolates the decoder)
# ----------------------------------------------------------------------------------------------------------


def read_latent_constants(model: Path) -> tuple[np.ndarray, np.ndarray]:
    import re

    text = (model / "manifest.ron").read_text()
    vals = {}
    for key in ("latents_mean", "latents_std"):
        m = re.search(rf"{key}: \[([^\]]*)\]", text)
        vals[key] = np.array([float(v) for v in m.group(1).split(",") if v.strip()], np.float32).reshape(1, -1, 1, 1, 1)
    return vals["latents_mean"], vals["latents_std"]


def caption_attrs() -> dict:
    sys.path.insert(0, str(REPO / "tools" / "nano"))
    import clips

    return {clips.caption(a, v): (a, v) for a in clips.all_attrs() for v in range(clips.VARIANTS)}


def measure_roundtrip(model: Path, bank: list[tuple[str, str]], n_clips: int, seed: int, threads: int) -> dict:
    import onnxruntime as ort

    sys.path.insert(0, str(REPO / "tools" / "nano"))
    import clips

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    opts.log_severity_level = 3
    enc = ort.InferenceSession(str(model / "vae_encoder_clip.onnx"), opts, providers=["CPUExecutionProvider"])
    dec = ort.InferenceSession(str(model / "vae_decoder.onnx"), opts, providers=["CPUExecutionProvider"])
    lm, ls = read_latent_constants(model)
    table = caption_attrs()
    src_lap, rec_lap, mae = [], [], []
    for name, text in bank:
        a, v = table[text]
        for i in range(n_clips):
            clip = clips.make_clip(seed + 1000 * i + hash_name(name), attrs=[a], variant=v)
            for k in range(clips.CHUNKS):
                fr = clip.frames[k * CHUNK:(k + 1) * CHUNK]
                video = fr.astype(np.float32).transpose(3, 0, 1, 2)[None] / 127.5 - 1.0
                mean = enc.run(None, {"video": video})[0]
                out = dec.run(None, {"latents": (mean - lm) / ls})[0][0]
                rec = np.round(np.clip(out * 0.5 + 0.5, 0, 1) * 255).astype(np.uint8).transpose(1, 2, 3, 0)
                src_lap.append(laplacian_variance(fr))
                rec_lap.append(laplacian_variance(rec))
                mae.append(np.abs(rec.astype(np.float64) - fr).mean(axis=(1, 2, 3)))
    res = {"source_lapvar": np.mean(src_lap, 0).tolist(), "lapvar": np.mean(rec_lap, 0).tolist(),
           "mae": np.mean(mae, 0).tolist(), "n_chunks": len(rec_lap)}
    res["ratios"] = ratios(res["lapvar"])
    res["source_ratios"] = ratios(res["source_lapvar"])
    res["mae_ratios"] = ratios(res["mae"])
    return res


def hash_name(name: str) -> int:
    return sum((i + 1) * ord(c) for i, c in enumerate(name)) % 997


# ----------------------------------------------------------------------------------------------------------
# Report
# ----------------------------------------------------------------------------------------------------------


def markdown(res: dict) -> str:
    m = res["meta"]
    L = [f"# helios-nano sharpness per frame index ({m['label']})", "",
         f"Model `{m['model']}`; frames from the Rust runtime (`helios-tools batch-generate`, ONNX Runtime CPU): "
         f"{m['prompts']} bank prompts x seeds {m['seeds']} x {m['chunks']} chunks; {m['date']}, "
         f"`tools/eval/sharpness.py`. lapvar = variance of the 4-neighbour Laplacian of luma (0..255); "
         f"contrast = std of luma. Steady = chunks 1..{m['chunks'] - 1} (n = {res['runtime'].get('steady', {}).get('n_chunks', 0)}), "
         f"chunk 0 = the amplified first chunk (n = {res['runtime']['chunk0']['n_chunks']}).", ""]
    rt = res["runtime"]
    st = rt.get("steady")
    rtp = res.get("roundtrip")
    head = "| frame | steady lapvar | steady contrast | chunk-0 lapvar |"
    sep = "|---:|---:|---:|---:|"
    if rtp:
        head += " VAE roundtrip lapvar | source lapvar | roundtrip MAE |"
        sep += "---:|---:|---:|"
    L += [head, sep]
    for t in range(CHUNK):
        row = f"| {t} | {st['lapvar'][t]:.1f} | {st['contrast'][t]:.2f} | {rt['chunk0']['lapvar'][t]:.1f} |" if st else \
            f"| {t} | - | - | {rt['chunk0']['lapvar'][t]:.1f} |"
        if rtp:
            row += f" {rtp['lapvar'][t]:.1f} | {rtp['source_lapvar'][t]:.1f} | {rtp['mae'][t]:.2f} |"
        L.append(row)
    L.append("")

    def rline(name, r):
        return (f"| {name} | {r['last_over_first']:.3f} | {r['last8_over_first8']:.3f} | {r['min_over_max']:.3f} "
                f"| {r['argmin']} |")

    L += ["| lapvar series | last/first (32/0) | mean 25..32 / mean 0..7 | min/max | argmin |", "|---|---:|---:|---:|---:|"]
    if st:
        L.append(rline("runtime, steady chunks", st["ratios"]))
        for k, r in rt["steady_by_chunk"].items():
            L.append(rline(f"runtime, chunk {k}", r))
    L.append(rline("runtime, chunk 0", rt["chunk0"]["ratios"]))
    if rtp:
        L.append(rline("VAE roundtrip (ONNX)", rtp["ratios"]))
        L.append(rline("source clips", rtp["source_ratios"]))
    L.append("")
    if st:
        L += ["Per prompt (steady chunks), lapvar last/first: " + ", ".join(
            f"{p} {r['last_over_first']:.2f}" for p, r in rt["steady_by_prompt"].items()), ""]
    return "\n".join(L)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default=str(REPO / "models" / "helios-nano"))
    ap.add_argument("--bin", default=str(REPO / "target" / "debug" / "helios-tools"),
                    help="helios-tools binary (debug or release; run as `BIN batch-generate`)")
    ap.add_argument("--label", default="before", help="report name: DOCS/sharpness_<label>.md/.json")
    ap.add_argument("--out", default=None, help="raw frames (default /tmp/helios-sharpness-<label>)")
    ap.add_argument("--docs", default=str(REPO / "docs" / "nano"))
    ap.add_argument("--seeds", default="11,12", help="comma-separated stream seeds")
    ap.add_argument("--chunks", type=int, default=4, help="chunks per stream (chunk 0 reported separately)")
    ap.add_argument("--roundtrip-clips", type=int, default=1,
                    help="procedural clips per bank caption through the ONNX VAE (0: skip)")
    ap.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    ap.add_argument("--reuse", action="store_true", help="skip generation, reuse OUT's frames")
    args = ap.parse_args(argv)
    model = Path(args.model).resolve()
    out = Path(args.out or f"/tmp/helios-sharpness-{args.label}")
    docs = Path(args.docs)
    docs.mkdir(parents=True, exist_ok=True)
    bank = bank_names()
    seeds = [int(s) for s in args.seeds.split(",")]
    if args.chunks < 2:
        ap.error("--chunks must be >= 2 (chunk 0 is reported separately)")
    jobs = make_jobs(bank, seeds, args.chunks)
    gen_s = None
    if not args.reuse:
        if not Path(args.bin).exists():
            raise SystemExit(f"{args.bin} missing: cargo build --no-default-features --features tools --bin helios-tools")
        gen_s = generate(Path(args.bin), model, jobs, out)
        print(f"generation: {len(jobs)} streams x {args.chunks} chunks in {gen_s:.0f}s", flush=True)
    res = {"meta": dict(label=args.label, model=str(model.relative_to(REPO)) if REPO in model.parents else str(model),
                        date=time.strftime("%Y-%m-%d"), cpu=platform.processor() or platform.machine(),
                        prompts=len(bank), seeds=seeds, chunks=args.chunks, generation_s=gen_s,
                        binary=str(args.bin))}
    res["runtime"] = measure_runtime(out, jobs)
    if args.roundtrip_clips > 0:
        t0 = time.time()
        res["roundtrip"] = measure_roundtrip(model, bank, args.roundtrip_clips, 9000, args.threads)
        print(f"roundtrip: {res['roundtrip']['n_chunks']} chunks in {time.time() - t0:.0f}s", flush=True)
    md = markdown(res)
    (docs / f"sharpness_{args.label}.json").write_text(json.dumps(res, indent=1))
    (docs / f"sharpness_{args.label}.md").write_text(md + "\n")
    print(md)
    return 0


if __name__ == "__main__":
    sys.exit(main())
