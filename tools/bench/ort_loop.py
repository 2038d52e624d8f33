#!/usr/bin/env python3
"""Python twin of `helios-tools gpu-bench` (src/bin/helios-tools/gpu_bench.rs) on onnxruntime's Python API: the device-loop graph chain
of docs/graph-contract.md run chunk by chunk, with the same command line and JSON. It exists to check an
exported model directory plus a reference recording end to end without the Rust build (the CPU dry run of
tools/bench/side_by_side.sh uses it when no gpu_bench binary is there), and to pin down what gpu_bench reads
and writes (tools/bench/README.md).

Per chunk k (T2V, keep_first_frame):
  short, mid, long = history_slices(history, anchor)          anchor = zeros until chunk 0 is done
  start0 = pyramid_downsample(eps_k)                          eps_k = chunk{k}.draw.latent_noise
  stage s: schedule = HeliosDMDScheduler.set_timesteps(2, s, mu_s, amplify and k == 0), mu_s from the
           latents before the stage's upsample (spec 1.6); s > 0: start_s = pyramid_renoise_stage{s}(x0, z_s)
           step i: v = denoiser_stage{s}(x, floor(t_i), text, short, mid, long);
                   x0, x = dmd_step_stage{s}(x, v, start_s, sigma_i, sigma_{i+1})
  history, first_frame = history_push(history, x0);  rgba = vae_decoder_rgba8(x0)
Timers are host timers around each graph run (onnxruntime's run() returns when the outputs are ready).
"""

from __future__ import annotations

import argparse
import json
import math
import re
import statistics
import sys
import time
from pathlib import Path

import numpy as np

NP = {"F32": np.float32, "F64": np.float64, "I64": np.int64, "U8": np.uint8}


def manifest_graphs(model: Path) -> dict:
    """key -> {name: (shape, dtype)} of inputs, from manifest.ron (a light regex parse: enough for this tool)."""
    text = (model / "manifest.ron").read_text()
    graphs = {}
    for m in re.finditer(r'"(\w+)": \(\n\s+file: "([^"]+)",.*?inputs: \[(.*?)\],\n\s+outputs: \[(.*?)\],', text, re.S):
        key, file, ins, _ = m.groups()
        specs = {n: ([int(d) for d in s.split(",") if d.strip()], t)
                 for n, s, t in re.findall(r'name: "(\w+)", shape: \[([^\]]*)\], dtype: (\w+)', ins)}
        graphs[key] = {"file": file, "inputs": specs}
    return graphs


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", required=True)
    ap.add_argument("--chunks", type=int, default=3)
    ap.add_argument("--provider", default="cpu", choices=["cpu", "cuda"])
    ap.add_argument("--loop", default="device", choices=["device", "host"], help="accepted; always the graph chain")
    ap.add_argument("--first-chunk", default="amplify", choices=["amplify", "fast"])
    ap.add_argument("--inject-noise", default=None, help="reference recording: chunk{k}.draw.* tensors")
    ap.add_argument("--compare", default=None, help="reference recording: chunk{k}.result / chunk{k}.rgba")
    ap.add_argument("--profile", default=None, help="onnxruntime profile prefix (one file per session)")
    ap.add_argument("--json", default=None)
    ap.add_argument("--prompt", default=None, help="prompt name in embeddings.safetensors (default: the first)")
    ap.add_argument("--seed", type=int, default=0, help="noise when nothing is injected")
    ap.add_argument("--warmup", type=int, default=2, help="warm-up chunks on a throwaway stream")
    ap.add_argument("--ttff-reps", type=int, default=1, help="cold first-chunk requests per mode")
    a = ap.parse_args(argv)

    import onnxruntime as ort
    import torch
    from diffusers import HeliosDMDScheduler
    from safetensors.numpy import load_file

    model = Path(a.model)
    graphs = manifest_graphs(model)
    text = (model / "manifest.ron").read_text()
    sched_cfg = dict(re.findall(r"\n\s+(use_dynamic_shifting|gamma|shift|stages): ([\w.]+),", text))
    sched = HeliosDMDScheduler(use_dynamic_shifting=sched_cfg.get("use_dynamic_shifting") == "true",
                               time_shift_type="linear")
    providers = ["CUDAExecutionProvider"] if a.provider == "cuda" else ["CPUExecutionProvider"]
    sessions, t_create = {}, time.perf_counter()
    for key, g in graphs.items():
        if key.startswith("vae_encoder") or key == "vae_decoder":
            continue
        so = ort.SessionOptions()
        so.log_severity_level = 3
        if a.profile:
            so.enable_profiling = True
            so.profile_file_prefix = f"{a.profile}.{key}"
        sessions[key] = ort.InferenceSession(str(model / g["file"]), so, providers=providers)
    create_ms = (time.perf_counter() - t_create) * 1e3
    bank = load_file(str(model / "embeddings.safetensors"))
    prompt = a.prompt or sorted(bank)[0]
    text_emb = bank[prompt][None].astype(np.float32)
    noise = load_file(a.inject_noise) if a.inject_noise else None
    ref = load_file(a.compare) if a.compare else None
    gen = np.random.default_rng(a.seed)
    timers: dict[str, float] = {}

    def run(key, **feeds):
        spec = graphs[key]["inputs"]
        feeds = {n: np.ascontiguousarray(v, dtype=NP[spec[n][1]]) for n, v in feeds.items()}
        t = time.perf_counter()
        out = sessions[key].run(None, feeds)
        timers[key] = timers.get(key, 0.0) + (time.perf_counter() - t) * 1e3
        return out

    hist_shape = graphs["history_push"]["inputs"]["history"][0]
    _, c, _, h, w = hist_shape
    f = graphs["history_push"]["inputs"]["chunk"][0][2]

    def draw(k, name, shape):
        key = f"chunk{k}.draw.{name}"
        if noise is not None and key in noise:
            return noise[key]
        return gen.standard_normal(shape).astype(np.float32)

    def stream(n_chunks, first_chunk, draw_fn, record_compare):
        history = np.zeros(hist_shape, np.float32)
        anchor = np.zeros([1, c, 1, h, w], np.float32)
        chunks = []
        t_prev = t_start = time.perf_counter()
        for k in range(n_chunks):
            timers.clear()
            amplify = first_chunk == "amplify" and k == 0
            short, mid, long_ = run("history_slices", history=history, anchor=anchor)
            (start,) = run("pyramid_downsample", noise=draw_fn(k, "latent_noise", [1, c, f, h, w]))
            lat_hw = start.shape[-2:]
            x0, forwards, stage_ms = None, 0, [0.0, 0.0, 0.0]
            for s in range(3):
                t0 = time.perf_counter()
                mu_len = f * lat_hw[0] * lat_hw[1] // 4
                m = (1.15 - 0.5) / (4096 - 256)
                sched.set_timesteps(2, s, mu=mu_len * m + (0.5 - 256 * m), is_amplify_first_chunk=amplify)
                ts, sig = sched.timesteps.double().numpy(), sched.sigmas.double().numpy()
                if s > 0:
                    z = draw_fn(k, f"block_noise_stage{s}", [c * f * lat_hw[0] * lat_hw[1], 4])
                    (start,) = run(f"pyramid_renoise_stage{s}", x0=x0, z=z)
                    lat_hw = (lat_hw[0] * 2, lat_hw[1] * 2)
                x = start
                for t in ts:
                    j = int(np.argmin(np.abs(ts - t)))
                    (v,) = run(f"denoiser_stage{s}", hidden_states=x, timestep=np.array([math.floor(t)], np.int64),
                               encoder_hidden_states=text_emb, latents_history_short=short,
                               latents_history_mid=mid, latents_history_long=long_)
                    x0, x = run(f"dmd_step_stage{s}", sample=x, velocity=v, start=start,
                                sigma=np.array([sig[j]]), sigma_next=np.array([sig[j + 1]]))
                    forwards += 1
                stage_ms[s] = (time.perf_counter() - t0) * 1e3
            history, first_frame = run("history_push", history=history, chunk=x0)
            if k == 0:
                anchor = first_frame
            (rgba,) = run("vae_decoder_rgba8", latents=x0)
            now = time.perf_counter()
            chunks.append({"index": k, "amplified": amplify, "forwards": forwards, "wall_ms": (now - t_prev) * 1e3,
                           "stage_ms": stage_ms,
                           "transformer_ms": sum(v for kk, v in timers.items() if kk.startswith("denoiser")),
                           "vae_ms": timers.get("vae_decoder_rgba8"), "from_start_ms": (now - t_start) * 1e3})
            t_prev = now
            for name, got in ((f"chunk{k}.result", x0), (f"chunk{k}.rgba", rgba)):
                if record_compare and ref is not None and name in ref:
                    want = ref[name].astype(np.float64)
                    d = np.abs(got.astype(np.float64) - want)
                    compare[name] = {"max_abs": float(d.max()),
                                     "max_rel": float(d.max() / max(np.abs(want).max(), 1e-12)),
                                     "rel_l2": float(np.linalg.norm(d) / max(np.linalg.norm(want), 1e-12)),
                                     "mean_abs": float(d.mean()), "count_off": int((d > 0).sum())}
        return chunks

    def seeded(seed):
        g = np.random.default_rng(seed)
        return lambda k, name, shape: g.standard_normal(shape).astype(np.float32)

    compare = {}
    for k, wc in enumerate(stream(a.warmup, "amplify", seeded(a.seed ^ 0x5EED), False)):
        print(f"warm-up chunk {k}: {wc['wall_ms']:.1f} ms")
    chunks = stream(a.chunks, a.first_chunk, draw, True)
    ttff = {}
    for mode in ("amplify", "fast"):
        times = [stream(1, mode, seeded(a.seed + 1000 + r), False)[0]["wall_ms"] for r in range(a.ttff_reps)]
        if times:
            ttff[mode] = statistics.median(times)
    res = {"tool": "tools/bench/ort_loop.py (Python twin of gpu_bench)", "provider": a.provider, "loop": "device",
           "first_chunk": a.first_chunk, "model": str(model), "prompt": prompt, "session_create_ms": create_ms,
           "chunks": chunks, "ttff_ms": chunks[0]["wall_ms"] if chunks else None, "ttff_by_mode_ms": ttff,
           "steady_chunk_ms": statistics.median([c_["wall_ms"] for c_ in chunks[1:]]) if len(chunks) > 1 else None,
           "compare": compare, "peak_vram_bytes": None,
           "noise_injected": noise is not None}
    if a.profile:
        res["profiles"] = [s.end_profiling() for s in sessions.values()]
    if a.json:
        Path(a.json).write_text(json.dumps(res, indent=1))
    for c_ in chunks:
        print(f"chunk {c_['index']}: {c_['wall_ms']:.1f} ms, {c_['forwards']} forwards")
    for name, v in compare.items():
        print(f"{name}: max abs {v['max_abs']:.3g}, max rel {v['max_rel']:.3g}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
