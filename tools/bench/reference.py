"""Time diffusers 0.42.1 `HeliosPyramidPipeline` (Helios-Distilled settings) on one GPU.

Random weights with the real Helios-Distilled transformer dimensions (diffusers' HeliosTransformer3DModel
defaults = the 14B config: 40 heads x 128, ffn 13824, text_dim 4096, rope (44,42,42)) but `--layers N`
blocks; bf16 transformer with `_keep_in_fp32_modules` kept fp32 (as from_pretrained(torch_dtype=bf16) does);
fp32 AutoencoderKLWan with the default (Wan 2.1) config; HeliosDMDScheduler(dynamic shifting, linear).
Prompt embeddings are given directly: [1, 512, 4096] bf16, rows >= 24 zero (no text encoder).

Run settings (spec 1.1): 384x640, 33-frame chunks, pyramid steps [2,2,2], guidance 1.0, amplify first chunk.

Measured (CUDA events around every transformer forward and every vae.decode, after a warm-up call):
  per chunk: wall (previous chunk's end -> this chunk's decode end), transformer sum, VAE decode,
  generated FPS (33 / wall), time to first frame (pipeline start -> first chunk decoded) with amplify on
  and off, peak VRAM (torch allocator), achieved TFLOP/s with the spec section 5 formulas scaled to N
  layers, and % of the floor (floor = FLOPs / --peak-tflops, default 790 = the spec's rate).

Usage (device):  python3 tools/bench/reference.py --layers 2 --chunks 3 --out $OUT/reference_L2.json
Needs: torch (CUDA), diffusers==0.42.1 (plus its deps transformers/accelerate are NOT needed here).
"""

from __future__ import annotations

import argparse
import json
import math
import platform
import sys
import time

import torch

H, W = 384, 640
FRAMES_PER_CHUNK = 33
D, FFN, TEXT_ROWS, HIST_TOKENS = 5120, 13824, 512, 2400
# spec section 5: 40-block totals per forward (TFLOP) -> the "outside the blocks" term per stage
SPEC_TOTAL_40 = {0: 69.74e12, 1: 119.10e12, 2: 359.56e12}
VAE_DECODE_FLOP = 69.26e12  # one 9-latent-frame chunk at 384x640 (spec section 5, flop counter)
KEEP_FP32 = ["time_embedder", "scale_shift_table", "norm1", "norm2", "norm3", "history_key_scale"]


def block_flops(tc: int) -> float:
    """Spec section 5 per-block FLOPs (2 * multiply-adds) for T_c current tokens."""
    L = tc + HIST_TOKENS
    return (8 * L * D * D + 4 * L * L * D + 4 * tc * D * D + 4 * TEXT_ROWS * D * D + 4 * tc * TEXT_ROWS * D
            + 4 * L * D * FFN)


STAGE_TC = {0: 9 * 6 * 10, 1: 9 * 12 * 20, 2: 9 * 24 * 40}
OUTSIDE = {s: SPEC_TOTAL_40[s] - 40 * block_flops(STAGE_TC[s]) for s in range(3)}


def forward_flops(stage: int, layers: int) -> float:
    return layers * block_flops(STAGE_TC[stage]) + OUTSIDE[stage]


def stage_of(hidden_states: torch.Tensor) -> int:
    return {12: 0, 24: 1, 48: 2}[int(hidden_states.shape[-2])]


def build(layers: int, seed: int, device: str):
    from diffusers import AutoencoderKLWan, HeliosDMDScheduler, HeliosPyramidPipeline, HeliosTransformer3DModel

    torch.manual_seed(seed)
    prev = torch.get_default_dtype()
    torch.set_default_dtype(torch.bfloat16)  # init straight in bf16 on the GPU (a 40-layer fp32 init is 57 GB)
    try:
        with torch.device(device):
            tr = HeliosTransformer3DModel(num_layers=layers)
    finally:
        torch.set_default_dtype(prev)
    n_fp32 = 0
    for name, p in tr.named_parameters():  # what from_pretrained(torch_dtype=bf16) keeps in fp32
        if any(k in name.split(".") for k in KEEP_FP32):
            p.data = p.data.float()
            n_fp32 += p.numel()
    tr.eval().requires_grad_(False)
    with torch.device(device):
        vae = AutoencoderKLWan().eval().requires_grad_(False)  # fp32, default = Wan 2.1 config
    sched = HeliosDMDScheduler(use_dynamic_shifting=True, time_shift_type="linear")
    pipe = HeliosPyramidPipeline(tokenizer=None, text_encoder=None, vae=vae, scheduler=sched, transformer=tr,
                                 is_distilled=True)
    pipe.set_progress_bar_config(disable=True)
    return pipe, n_fp32


CHOLESKY_FALLBACKS = []


def guard_cholesky():
    """The block-noise covariance is numerically singular (tools/README.md "Cholesky"): where the native
    factorisation raises, retry with 1e-6 jitter and record it (timing only; values are random anyway)."""
    real = torch.linalg.cholesky

    def chol(a, *args, **kw):
        try:
            return real(a, *args, **kw)
        except Exception as e:  # noqa: BLE001
            CHOLESKY_FALLBACKS.append(str(e)[:80])
            eye = torch.eye(a.shape[-1], dtype=a.dtype, device=a.device)
            return real(a + 1e-6 * eye, *args, **kw)

    torch.linalg.cholesky = chol


class Recorder:
    """Wraps transformer.forward and vae.decode with CUDA events (no host syncs inside the pipeline)."""

    def __init__(self, pipe):
        self.events = []  # (kind, stage, start_event, end_event)
        tr, vae = pipe.transformer, pipe.vae
        tr_fwd, vae_dec = tr.forward, vae.decode

        def tr_wrapped(*a, **kw):
            hs = kw.get("hidden_states", a[0] if a else None)
            s, e = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            s.record()
            out = tr_fwd(*a, **kw)
            e.record()
            self.events.append(("tr", stage_of(hs), s, e))
            return out

        def vae_wrapped(*a, **kw):
            s, e = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            s.record()
            out = vae_dec(*a, **kw)
            e.record()
            self.events.append(("vae", -1, s, e))
            return out

        tr.forward = tr_wrapped
        vae.decode = vae_wrapped

    def reset(self):
        self.events = []


def run_once(pipe, rec, embeds, chunks: int, amplify: bool, seed: int, layers: int):
    rec.reset()
    gen = torch.Generator("cuda").manual_seed(seed)
    torch.cuda.synchronize()
    start = torch.cuda.Event(enable_timing=True)
    t0 = time.perf_counter()
    start.record()
    out = pipe(prompt_embeds=embeds, height=H, width=W, num_frames=FRAMES_PER_CHUNK * chunks, guidance_scale=1.0,
               pyramid_num_inference_steps_list=[2, 2, 2], is_amplify_first_chunk=amplify, generator=gen,
               output_type="latent", return_dict=False)
    end = torch.cuda.Event(enable_timing=True)
    end.record()
    torch.cuda.synchronize()
    host_total = (time.perf_counter() - t0) * 1e3
    res, cur, prev_end = [], None, start
    for kind, stage, s, e in rec.events:
        if cur is None:
            cur = {"forwards": 0, "transformer_ms": 0.0, "stage_ms": [0.0, 0.0, 0.0], "tflop": 0.0,
                   "fwd_ms": [[], [], []]}
        if kind == "tr":
            ms = s.elapsed_time(e)
            cur["forwards"] += 1
            cur["transformer_ms"] += ms
            cur["stage_ms"][stage] += ms
            cur["fwd_ms"][stage].append(ms)
            cur["tflop"] += forward_flops(stage, layers) / 1e12
        else:
            cur["vae_ms"] = s.elapsed_time(e)
            cur["wall_ms"] = prev_end.elapsed_time(e)
            cur["from_start_ms"] = start.elapsed_time(e)
            cur["tflop_with_vae"] = cur["tflop"] + VAE_DECODE_FLOP / 1e12
            res.append(cur)
            prev_end, cur = e, None
    total_ms = start.elapsed_time(end)
    del out
    return res, total_ms, host_total


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--layers", type=int, default=2)
    ap.add_argument("--chunks", type=int, default=3, help="chunks in the timed amplify-on run (first is amplified)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--peak-tflops", type=float, default=790.0, help="rate for the floor (spec: 790 TF/s)")
    ap.add_argument("--ttff-reps", type=int, default=2, help="1-chunk runs per amplify setting for TTFF")
    ap.add_argument("--out", required=True)
    a = ap.parse_args()

    import diffusers
    torch.backends.cuda.matmul.allow_tf32 = False  # torch defaults (the reference's numerics)
    dev = "cuda"
    guard_cholesky()
    t = time.perf_counter()
    pipe, n_fp32 = build(a.layers, a.seed, dev)
    build_s = time.perf_counter() - t
    rec = Recorder(pipe)
    g = torch.Generator("cpu").manual_seed(a.seed + 1)
    embeds = torch.randn(1, TEXT_ROWS, 4096, generator=g)
    embeds[:, 24:] = 0  # zero-padded rows like encode_prompt (24 "tokens")
    embeds = embeds.to(dev, torch.bfloat16)

    weights_gb = torch.cuda.memory_allocated() / 1e9
    # warm-up: one amplified chunk + one plain chunk (all three stage shapes, VAE, both forward counts)
    run_once(pipe, rec, embeds, 2, True, a.seed, a.layers)
    torch.cuda.reset_peak_memory_stats()
    chunks, total_ms, host_ms = run_once(pipe, rec, embeds, a.chunks, True, a.seed, a.layers)
    peak_alloc = torch.cuda.max_memory_allocated() / 1e9
    peak_reserved = torch.cuda.max_memory_reserved() / 1e9
    ttff = {"amplify_on": [], "amplify_off": []}
    for rep in range(a.ttff_reps):
        for key, amp in (("amplify_on", True), ("amplify_off", False)):
            c, tot, _ = run_once(pipe, rec, embeds, 1, amp, a.seed, a.layers)
            ttff[key].append({"ttff_ms": c[0]["from_start_ms"], "transformer_ms": c[0]["transformer_ms"],
                              "vae_ms": c[0]["vae_ms"], "forwards": c[0]["forwards"]})
    for c in chunks:
        c["fps"] = FRAMES_PER_CHUNK / (c["wall_ms"] / 1e3)
        c["transformer_tflops_achieved"] = c["tflop"] / (c["transformer_ms"] / 1e3)
        c["chunk_tflops_achieved"] = c["tflop_with_vae"] / (c["wall_ms"] / 1e3)
        c["floor_ms"] = c["tflop_with_vae"] / a.peak_tflops * 1e3
        c["pct_of_floor"] = 100.0 * c["floor_ms"] / c["wall_ms"]
    out = {
        "what": "diffusers HeliosPyramidPipeline, random weights, real Helios-Distilled dims, reduced layers",
        "layers": a.layers, "height": H, "width": W, "frames_per_chunk": FRAMES_PER_CHUNK,
        "pyramid_steps": [2, 2, 2], "guidance_scale": 1.0, "amplify_first_chunk": True,
        "device": torch.cuda.get_device_name(0), "torch": torch.__version__, "diffusers": diffusers.__version__,
        "cuda": torch.version.cuda, "python": platform.python_version(),
        "transformer_params": sum(p.numel() for p in pipe.transformer.parameters()), "fp32_params": n_fp32,
        "build_s": build_s, "weights_gb_allocated": weights_gb,
        "peak_vram_allocated_gb": peak_alloc, "peak_vram_reserved_gb": peak_reserved,
        "chunks": chunks, "total_ms": total_ms, "host_total_ms": host_ms, "ttff": ttff,
        "forward_flops_tflop": {s: forward_flops(s, a.layers) / 1e12 for s in range(3)},
        "peak_tflops_for_floor": a.peak_tflops, "cholesky_fallbacks": len(CHOLESKY_FALLBACKS),
    }
    with open(a.out, "w") as f:
        json.dump(out, f, indent=1)
    print(f"== reference layers={a.layers} on {out['device']}  weights {weights_gb:.2f} GB  peak alloc "
          f"{peak_alloc:.2f} GB reserved {peak_reserved:.2f} GB  build {build_s:.1f}s")
    for i, c in enumerate(chunks):
        print(f" chunk {i}: fwd {c['forwards']:2d} wall {c['wall_ms']:8.1f} ms  tr {c['transformer_ms']:8.1f} "
              f"(s0 {c['stage_ms'][0]:.1f} s1 {c['stage_ms'][1]:.1f} s2 {c['stage_ms'][2]:.1f})  vae "
              f"{c['vae_ms']:7.1f}  fps {c['fps']:6.1f}  tr {c['transformer_tflops_achieved']:6.1f} TF/s  "
              f"{c['pct_of_floor']:5.1f}% of floor")
    for k, v in ttff.items():
        print(f" ttff {k}: " + ", ".join(f"{x['ttff_ms']:.1f} ms (tr {x['transformer_ms']:.1f}, vae "
                                          f"{x['vae_ms']:.1f})" for x in v))


if __name__ == "__main__":
    main()
