#!/usr/bin/env python3
"""Final table of tools/bench/side_by_side.sh: diffusers vs the Rust runtime, same card, same weights.

Reads (all optional but the reference): OUT/reference.json (reference.py), OUT/rust.json (gpu_bench --json:
the recorded stream, amplified first chunk, TTFF of both modes), WORK/rust_profile.json (the
CUDA_LAUNCH_BLOCKING profiling run) + the onnxruntime profiles under WORK/prof/, OUT/vram.csv (nvidia-smi
samples) + WORK/phases.txt (phase start/end times). Writes OUT/summary.json, OUT/summary.md and
OUT/profile_table.md.

Numbers per side at N layers (as measured) and extrapolated to the 40-layer 14B model:
  steady chunk ms = median wall of chunks 1.. of the timed call; generated FPS = 33 / that;
  TTFF = request -> first chunk's frames (amplified first chunk and fast start);
  peak VRAM = nvidia-smi's device-wide memory.used during the side's phase (minus the idle level before the
  phase), and the side's own figure (torch allocator peak / gpu_bench's);
  FLOPs = spec section 5 (reference.py forward_flops, VAE 69.26 TF), achieved TF/s = FLOPs / wall,
  % of floor = (FLOPs / 790 TF/s) / wall.
40-layer extrapolation, per stage s (3 stages x 2 forwards in a steady chunk):
  reference: T40_s = T_s(N) + (40 - N) * b_s, b_s = median per-block CUDA-event time (reference.py --record);
  Rust:      b_s = share_s * T_s(N) / N, share_s = node time in `blocks.N/` nodes / all node time of the
             stage's session (profile_table.py; falls back to the reference's N*b_s/T_s(N) if no profile);
             T_s(N) = gpu_bench's per-stage forward time, else the profiled stage time scaled by
             (chunk ms / profiled chunk ms).
  chunk40 = chunk(N) + 2 * sum_s (40 - N) * b_s. The VAE decode and everything outside the blocks are
  measured, not scaled.
At N = 40 (the full 14B model, side_by_side.sh --fused --layers 40) nothing is extrapolated: the measured numbers
are the 40-layer numbers (summary.json `at_40_layers` = them, with "source": "measured").

Also reported: the model's size on disk (WORK/model), gpu_bench's `shared_weight_bytes` (the fused export's
weights, in device memory once for the three stage sessions) and session creation time, the reference's
weights write (reference.py --save-fused-weights: bytes, seconds), and the device-memory peak of every phase.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import profile_table  # noqa: E402

FRAMES = 33
FULL_LAYERS = 40
VAE_TF = 69.26
PEAK_TF = 790.0


def load_json(path: Path):
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def forward_tflop(stage: int, layers: int) -> float:
    import reference  # lazy: needs torch only for its module import

    return reference.forward_flops(stage, layers) / 1e12


def chunk_tflop(layers: int) -> float:
    return 2 * sum(forward_tflop(s, layers) for s in range(3)) + VAE_TF


def first(d: dict, *names, default=None):
    for n in names:
        if isinstance(d, dict) and d.get(n) is not None:
            return d[n]
    return default


def rust_chunks(r: dict | None) -> list[dict]:
    if not r or r.get("stub"):
        return []
    chunks = first(r, "chunks", "timed_chunks", default=[]) or []
    out = []
    for c in chunks:
        wall = first(c, "wall_ms", "ms", "total_ms")
        if wall is None:
            continue
        out.append({"wall_ms": float(wall), "stage_ms": first(c, "stage_ms"), "vae_ms": first(c, "vae_ms", "decode_ms"),
                    "forwards": first(c, "forwards"), "transformer_ms": first(c, "transformer_ms", "denoise_ms")})
    return out


def steady(chunks: list[dict]) -> float | None:
    walls = [c["wall_ms"] for c in chunks[1:]] or [c["wall_ms"] for c in chunks]
    return statistics.median(walls) if walls else None


def rust_ttff(r: dict | None, mode: str = "amplify") -> float | None:
    """gpu_bench's `ttff_by_mode_ms[mode]` (median of its cold requests), else `ttff_ms` of a run in that mode."""
    if not r or r.get("stub"):
        return None
    by_mode = r.get("ttff_by_mode_ms")
    if isinstance(by_mode, dict) and by_mode.get(mode) is not None:
        v = by_mode[mode]
        if isinstance(v, dict):
            v = first(v, "median_ms", "ms", "median")
        if isinstance(v, list):
            v = statistics.median(v) if v else None
        return None if v is None else float(v)
    if r.get("first_chunk", mode) != mode:
        return None
    v = first(r, "ttff_ms", "time_to_first_frame_ms", "ttff")
    if isinstance(v, dict):
        v = first(v, "ms", "median_ms", "ttff_ms")
    if isinstance(v, list):
        v = statistics.median(v) if v else None
    return None if v is None else float(v)


def rust_compare(r: dict | None) -> dict:
    if not r or r.get("stub"):
        return {}
    cmp_ = first(r, "compare", "comparison", default={}) or {}
    if isinstance(cmp_, list):
        cmp_ = {first(x, "name", "tensor", default=str(i)): x for i, x in enumerate(cmp_)}
    out = {}
    for name, v in cmp_.items():
        if isinstance(v, dict):
            out[name] = {"max_abs": first(v, "max_abs", "max_abs_diff"), "max_rel": first(v, "max_rel", "max_rel_diff"),
                         **{k: v[k] for k in ("rel_l2", "mean_abs", "count_off") if k in v}}
    return out


def vram_phases(csv: Path, phases: Path) -> dict:
    """Peak device memory (MiB) per phase from nvidia-smi samples `timestamp, memory.used, memory.total`."""
    if not csv.exists() or not phases.exists():
        return {}
    samples = []
    for line in csv.read_text().splitlines():
        parts = [p.strip() for p in line.split(",")]
        if len(parts) < 2:
            continue
        try:
            ts = time.mktime(time.strptime(parts[0].split(".")[0], "%Y/%m/%d %H:%M:%S"))
            ts += float("0." + parts[0].split(".")[1]) if "." in parts[0] else 0.0
            samples.append((ts, float(parts[1])))
        except (ValueError, IndexError):
            continue
    marks = {}
    for line in phases.read_text().splitlines():
        try:
            t, name, what = line.split()
        except ValueError:
            continue
        marks.setdefault(name, {})[what] = float(t)
    out = {}
    for name, m in marks.items():
        if "start" not in m:
            continue
        end = m.get("end", float("inf"))
        inside = [v for t, v in samples if m["start"] <= t <= end]
        before = [v for t, v in samples if t < m["start"]]
        if inside:
            idle = before[-1] if before else min(inside)
            out[name] = {"peak_mib": max(inside), "idle_before_mib": idle, "peak_above_idle_mib": max(inside) - idle,
                         "samples": len(inside)}
    return out


def side_metrics(chunk_ms, layers, ttff_amp, ttff_fast, tiny: bool) -> dict:
    res = {"steady_chunk_ms": chunk_ms, "ttff_amplify_ms": ttff_amp, "ttff_fast_ms": ttff_fast}
    if chunk_ms:
        res["fps"] = FRAMES / (chunk_ms / 1e3)
        if not tiny:
            tf = chunk_tflop(layers)
            res["chunk_tflop"] = tf
            res["achieved_tflops"] = tf / (chunk_ms / 1e3)
            res["pct_of_floor"] = 100 * (tf / PEAK_TF * 1e3) / chunk_ms
    return res


def extrapolate(chunk_ms, layers, block_ms_per_stage, tiny: bool) -> dict | None:
    if not chunk_ms or block_ms_per_stage is None or any(b is None for b in block_ms_per_stage):
        return None
    extra = 2 * sum((FULL_LAYERS - layers) * b for b in block_ms_per_stage)
    ms = chunk_ms + extra
    res = {"chunk_ms": ms, "fps": FRAMES / (ms / 1e3), "block_ms": block_ms_per_stage, "added_ms": extra}
    if not tiny:
        tf = chunk_tflop(FULL_LAYERS)
        res.update({"chunk_tflop": tf, "achieved_tflops": tf / (ms / 1e3), "pct_of_floor": 100 * (tf / PEAK_TF * 1e3) / ms,
                    "floor_ms": tf / PEAK_TF * 1e3})
    return res


def measured_at_40(side: dict, tiny: bool) -> dict | None:
    """At N = 40 layers the measurement itself is the 40-layer figure (same keys as `extrapolate`)."""
    ms = side.get("steady_chunk_ms")
    if not ms:
        return None
    res = {"chunk_ms": ms, "fps": FRAMES / (ms / 1e3), "source": "measured"}
    if not tiny:
        tf = chunk_tflop(FULL_LAYERS)
        res.update({"chunk_tflop": tf, "achieved_tflops": tf / (ms / 1e3), "pct_of_floor": 100 * (tf / PEAK_TF * 1e3) / ms,
                    "floor_ms": tf / PEAK_TF * 1e3})
    return res


def model_on_disk(model: Path) -> dict | None:
    """Bytes of the exported model directory (what gpu_bench loads), and its largest files."""
    if not model.is_dir():
        return None
    files = sorted(((f.stat().st_size, f.name) for f in model.iterdir() if f.is_file()), reverse=True)
    return {"bytes": sum(b for b, _ in files), "files": len(files), "largest": [[n, b] for b, n in files[:4]]}


def size(b) -> str:
    """Bytes for the table: GB from 1 GB on, else MB."""
    if b is None:
        return "n/a"
    return f"{b / 1e9:.2f} GB" if b >= 1e9 else f"{b / 1e6:.2f} MB"


def fmt(v, spec=".1f", unit=""):
    return "n/a" if v is None else f"{v:{spec}}{unit}"


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--work", required=True)
    ap.add_argument("--out", required=True)
    ap.add_argument("--ffn-dim", type=int, default=13824)
    ap.add_argument("--note", action="append", default=[], help="line for the summary's notes")
    a = ap.parse_args(argv)
    work, out = Path(a.work), Path(a.out)
    ref = load_json(out / "reference.json")
    r_amp, r_prof = load_json(out / "rust.json"), load_json(work / "rust_profile.json")
    tiny = bool(ref and ref.get("tiny"))
    layers = ref["layers"] if ref else None
    full = bool(layers and layers >= FULL_LAYERS)  # the full model: measured, nothing to extrapolate
    res = {"layers": layers, "tiny": tiny, "full_model_measured": full, "notes": list(a.note)}
    res["model_on_disk"] = model_on_disk(work / "model")

    # --- reference ---
    if ref:
        ref_steady = steady(ref["chunks"])
        med = lambda xs: statistics.median(xs) if xs else None  # noqa: E731
        ttff_on = med([x["ttff_ms"] for x in ref["ttff"]["amplify_on"]])
        ttff_off = med([x["ttff_ms"] for x in ref["ttff"]["amplify_off"]])
        res["reference"] = side_metrics(ref_steady, layers, ttff_on, ttff_off, tiny)
        res["reference"].update({"device": ref["device"], "torch": ref["torch"], "diffusers": ref["diffusers"],
                                 "peak_alloc_gb": ref["peak_vram_allocated_gb"],
                                 "peak_reserved_gb": ref["peak_vram_reserved_gb"],
                                 "amplified_chunk_ms": ref["chunks"][0]["wall_ms"],
                                 "fused_weights_write": ref.get("fused_weights"), "checkpoint": ref.get("checkpoint")})
        pl = ref.get("per_layer")
        ref_blocks = pl["block_ms"] if pl else None
        res["reference"]["per_layer"] = pl
        res["reference"]["at_40_layers"] = (measured_at_40(res["reference"], tiny) if full
                                            else extrapolate(ref_steady, layers, ref_blocks, tiny))
    else:
        ref_blocks, ref_steady, pl = None, None, None
        res["notes"].append("reference.json missing: the reference step failed or was skipped")

    # --- Rust ---
    amp_chunks, prof_chunks = rust_chunks(r_amp), rust_chunks(r_prof)
    rust_steady = steady(amp_chunks)
    res["rust"] = side_metrics(rust_steady, layers or 0, rust_ttff(r_amp, "amplify"), rust_ttff(r_amp, "fast"), tiny)
    res["rust"]["stub"] = bool((r_amp or {}).get("stub")) or r_amp is None
    for k in ("provider", "loop", "device", "session_create_ms", "shared_weight_bytes", "peak_vram_bytes",
              "host_allocations_per_chunk",
              "hot_loop_allocations_per_chunk", "active_provider", "tf32", "ttff_by_mode_ms", "device_loop_stats"):
        if r_amp and k in r_amp:
            res["rust"][k] = r_amp[k]
    if amp_chunks:
        res["rust"]["amplified_chunk_ms"] = amp_chunks[0]["wall_ms"]
    res["compare"] = rust_compare(r_amp)

    # --- profile ---
    prof_files = sorted((work / "prof").glob("*.json")) if (work / "prof").is_dir() else []
    table = None
    if prof_files:
        files = [profile_table.summarize_file(p, a.ffn_dim) for p in prof_files]
        table = profile_table.build_table(files, rust_steady, steady(prof_chunks))
        table["files"] = files
        (out / "profile_table.md").write_text(
            "# Where the time goes (onnxruntime profile, CUDA_LAUNCH_BLOCKING=1 run)\n\n"
            + profile_table.markdown(table, files))
    res["profile"] = table

    # --- Rust 40-layer extrapolation (at 40 layers: the measurement) ---
    if full and rust_steady:
        res["rust"]["at_40_layers"] = measured_at_40(res["rust"], tiny)
    elif layers and rust_steady:
        per_stage_ms, source = None, None
        steady_amp = amp_chunks[1:] or amp_chunks
        if steady_amp and all(c.get("stage_ms") for c in steady_amp):
            per_stage_ms = [statistics.median(c["stage_ms"][s] for c in steady_amp) / 2 for s in range(3)]
            source = "gpu_bench per-stage times"
        elif table and len(table["per_stage"]) == 3 and steady(prof_chunks):
            scale = rust_steady / steady(prof_chunks)
            per_stage_ms = [table["per_stage"][f"denoiser_stage{s}"]["forward_ms"] * scale for s in range(3)]
            source = "profiled stage times x (chunk ms / profiled chunk ms)"
        shares, share_src = None, None
        if table and len(table["per_stage"]) == 3 and all(table["per_stage"][f"denoiser_stage{s}"]["block_share"]
                                                          for s in range(3)):
            shares = [table["per_stage"][f"denoiser_stage{s}"]["block_share"] for s in range(3)]
            share_src = "profile: node time in blocks.N/ nodes"
        elif pl:
            shares = [layers * pl["block_ms"][s] / pl["forward_ms"][s] for s in range(3)]
            share_src = "the reference's block share (no profile)"
        if per_stage_ms and shares:
            blocks = [shares[s] * per_stage_ms[s] / layers for s in range(3)]
            res["rust"]["per_layer"] = {"forward_ms": per_stage_ms, "forward_source": source, "block_share": shares,
                                        "share_source": share_src, "block_ms": blocks}
            res["rust"]["at_40_layers"] = extrapolate(rust_steady, layers, blocks, tiny)

    # --- VRAM, ratio ---
    res["vram"] = vram_phases(out / "vram.csv", work / "phases.txt")
    if ref_steady and rust_steady:
        res["speedup_vs_reference"] = ref_steady / rust_steady
        r40, f40 = res["rust"].get("at_40_layers"), (res.get("reference") or {}).get("at_40_layers")
        if r40 and f40:
            res["speedup_vs_reference_40"] = f40["chunk_ms"] / r40["chunk_ms"]
    (out / "summary.json").write_text(json.dumps(res, indent=1))
    (out / "summary.md").write_text(markdown(res))
    print(markdown(res))
    return 0


def markdown(res: dict) -> str:
    ref, rust = res.get("reference") or {}, res.get("rust") or {}
    L = res.get("layers")
    vram = res.get("vram", {})
    full = res.get("full_model_measured")
    lines = [f"# Side by side: diffusers vs bevy_helios (ORT), {L} layers"
             + (" (the full 14B model, measured)" if full and not res.get("tiny") else "")
             + (" — TINY CPU DRY RUN, numbers meaningless" if res.get("tiny") else ""), ""]
    if ref:
        lines.append(f"Card: {ref.get('device')}; torch {ref.get('torch')}, diffusers {ref.get('diffusers')}.")
    if rust.get("stub"):
        lines.append("**Rust side: not run (gpu_bench missing or failed) — its columns are n/a.**")
    lines += ["", f"| at {L} layers | diffusers | bevy_helios |", "|---|---|---|"]

    def row(name, key, spec=".1f", unit=""):
        lines.append(f"| {name} | {fmt(ref.get(key), spec, unit)} | {fmt(rust.get(key), spec, unit)} |")

    row("steady chunk (ms)", "steady_chunk_ms")
    row("generated FPS", "fps", ".2f")
    row("amplified first chunk (ms)", "amplified_chunk_ms")
    row("TTFF, amplified first chunk (ms)", "ttff_amplify_ms")
    row("TTFF, fast start (ms)", "ttff_fast_ms")
    row("achieved TFLOP/s (chunk incl. VAE)", "achieved_tflops")
    row("% of the 790 TF/s floor", "pct_of_floor")
    lines.append(f"| peak VRAM, nvidia-smi (MiB above idle) | {fmt((vram.get('reference') or {}).get('peak_above_idle_mib'), '.0f')} "
                 f"| {fmt((vram.get('rust') or {}).get('peak_above_idle_mib'), '.0f')} |")
    lines.append(f"| peak VRAM, own count | {fmt(ref.get('peak_alloc_gb'), '.2f', ' GB alloc')} / "
                 f"{fmt(ref.get('peak_reserved_gb'), '.2f', ' GB reserved')} | "
                 f"{fmt((rust.get('peak_vram_bytes') or 0) / 1e9 if rust.get('peak_vram_bytes') else None, '.2f', ' GB')} |")
    disk = res.get("model_on_disk") or {}
    fw = ref.get("fused_weights_write") or {}
    ck = ref.get("checkpoint") or {}
    lines.append(f"| on disk: checkpoint (diffusers) / model (ours) | {size(ck.get('bytes'))}"
                 + ("" if not ck or ck.get("transformer_weights", True) else " (no transformer weights)")
                 + f" | {size(disk.get('bytes'))} |")
    if fw:
        lines.append(f"| transformer weights written by the reference in our layout | {size(fw['bytes'])} in "
                     f"{fw['seconds']:.1f} s ({fw['gb_per_s']:.2f} GB/s) | (read by ours) |")
    swb = rust.get("shared_weight_bytes")
    lines.append(f"| session creation (ms) / shared weights in device memory | n/a | "
                 f"{fmt(rust.get('session_create_ms'), '.0f')} / {size(swb) if swb else 'none'} |")
    if res.get("speedup_vs_reference"):
        lines.append(f"| speed-up (reference chunk ms / ours) | 1.00 | {res['speedup_vs_reference']:.2f} |")
    r40, f40 = rust.get("at_40_layers"), ref.get("at_40_layers")
    if full:
        lines += ["", f"{L} layers is the full Helios-Distilled 14B model: the table above is measured, nothing is "
                      "extrapolated."]
    else:
        lines += ["", "| extrapolated to 40 layers | diffusers | bevy_helios |", "|---|---|---|"]
        for name, k, spec in (("steady chunk (ms)", "chunk_ms", ".0f"), ("generated FPS", "fps", ".2f"),
                              ("achieved TFLOP/s", "achieved_tflops", ".0f"), ("% of floor", "pct_of_floor", ".1f")):
            lines.append(f"| {name} | {fmt((f40 or {}).get(k), spec)} | {fmt((r40 or {}).get(k), spec)} |")
        if res.get("speedup_vs_reference_40"):
            lines.append(f"| speed-up at 40 layers | 1.00 | {res['speedup_vs_reference_40']:.2f} |")
    for side, d in (("diffusers", ref.get("per_layer")), ("bevy_helios", rust.get("per_layer"))):
        if d:
            lines.append(f"\nPer-layer ms per forward ({side}), stages 0/1/2: "
                         + " / ".join(f"{v:.2f}" for v in d["block_ms"])
                         + (f" (block share {', '.join(f'{s:.2f}' for s in d['block_share'])}; {d['share_source']};"
                            f" forwards from {d['forward_source']})" if "block_share" in d else ""))
    cmp_ = res.get("compare") or {}
    if cmp_:
        lines += ["", "| output vs diffusers | max abs | max rel | rel L2 | values off |", "|---|---|---|---|---|"]
        for name, v in cmp_.items():
            lines.append(f"| {name} | {fmt(v.get('max_abs'), '.3g')} | {fmt(v.get('max_rel'), '.3g')} | "
                         f"{fmt(v.get('rel_l2'), '.3g')} | {fmt(v.get('count_off'), '.0f')} |")
    if vram:
        lines += ["", "| device memory by phase (nvidia-smi, MiB) | peak | idle before | peak above idle |",
                  "|---|---|---|---|"]
        for name, v in vram.items():
            lines.append(f"| {name} | {v['peak_mib']:.0f} | {v['idle_before_mib']:.0f} | {v['peak_above_idle_mib']:.0f} |")
    if res.get("profile"):
        lines += ["", "Where the time goes (steady chunk, from the profiled run): see profile_table.md (per graph, "
                      "and the top node types of each graph with the nodes the CPU provider ran).", ""]
        lines.append(profile_table.markdown(res["profile"], res["profile"]["files"]).split("\n\n")[0])
    elif full:
        lines += ["", "No profile at this size (the profiled run is skipped unless the budget allows it): take the "
                      "where-the-time-goes table from a 4-layer run."]
    if res.get("notes"):
        lines += ["", "Notes:"] + [f"* {n}" for n in res["notes"]]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    sys.exit(main())
