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

For the side-by-side benchmark (tools/bench/side_by_side.sh) it can also
  --save-checkpoint DIR  save the random weights in diffusers format (export.py --checkpoint DIR exports them)
  --save-fused-weights FILE
                         write the transformer's weights in the fused export's layout
                         (tools/export/fused_graph.py write_shared_weights: safetensors, Linear weights
                         transposed, streamed tensor by tensor from the GPU; 28.6 GB at 40 layers) for
                         `export.py --fused-kernels --fused-weights FILE`. Written after every timed and
                         recorded call, so neither its device-to-host copies nor the kernel's write-back of
                         the dirty pages overlap a measurement. With --save-checkpoint the checkpoint then
                         holds no transformer weights (VAE, scheduler, model_index.json and only
                         transformer/config.json): the weights go to disk once, not twice (at 40 layers two
                         28.6 GB copies do not fit the device's 64 GB disk next to everything else)
  --embeddings FILE      write the prompt embedding as an embeddings.safetensors bank (one prompt, `bench`)
  --record FILE          after the timed runs, replay the timed call (same seed) once more, untimed, and save
                         every random draw, every chunk's latents and the first chunks' RGBA8 frames
                         (tools/bench/README.md "Recorded tensors"), plus per-block CUDA-event timings
                         (per-layer cost per stage: the extrapolation to 40 layers)
  --tiny                 the tiny config (tools/export/export.py TINY_*), 64x64, on the CPU: a dry run of
                         the harness without a GPU (timings are host timers and mean nothing)

Usage (device):  python3 tools/bench/reference.py --layers 2 --chunks 3 --out $OUT/reference_L2.json
Needs: torch (CUDA), diffusers==0.42.1 (plus its deps transformers/accelerate are NOT needed here).
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[2]
H, W = 384, 640
FRAMES_PER_CHUNK = 33
LATENT_FRAMES = 9
D, FFN, TEXT_ROWS, TEXT_DIM, HIST_TOKENS = 5120, 13824, 512, 4096, 2400
PROMPT_TOKENS = 24  # rows >= this are zero, like encode_prompt's padding
PROMPT_NAME = "bench"
# spec section 5: 40-block totals per forward (TFLOP) -> the "outside the blocks" term per stage
SPEC_TOTAL_40 = {0: 69.74e12, 1: 119.10e12, 2: 359.56e12}
VAE_DECODE_FLOP = 69.26e12  # one 9-latent-frame chunk at 384x640 (spec section 5, flop counter)
KEEP_FP32 = ["time_embedder", "scale_shift_table", "norm1", "norm2", "norm3", "history_key_scale"]
DTYPES = {"bf16": torch.bfloat16, "fp32": torch.float32}


def block_flops(tc: int) -> float:
    """Spec section 5 per-block FLOPs (2 * multiply-adds) for T_c current tokens."""
    L = tc + HIST_TOKENS
    return (8 * L * D * D + 4 * L * L * D + 4 * tc * D * D + 4 * TEXT_ROWS * D * D + 4 * tc * TEXT_ROWS * D
            + 4 * L * D * FFN)


STAGE_TC = {0: 9 * 6 * 10, 1: 9 * 12 * 20, 2: 9 * 24 * 40}
OUTSIDE = {s: SPEC_TOTAL_40[s] - 40 * block_flops(STAGE_TC[s]) for s in range(3)}


def forward_flops(stage: int, layers: int) -> float:
    return layers * block_flops(STAGE_TC[stage]) + OUTSIDE[stage]


class Cfg:
    """Geometry of the run: the real config (default) or the tiny one (--tiny)."""

    def __init__(self, tiny: bool):
        self.tiny = tiny
        if tiny:
            sys.path.insert(0, str(ROOT / "tools" / "export"))
            import export as ex

            self.transformer = dict(ex.TINY_TRANSFORMER)
            self.vae = dict(ex.TINY_VAE)
            self.h, self.w, self.text_rows, self.text_dim, self.prompt_tokens = 64, 64, 16, 32, 8
        else:
            self.transformer, self.vae = {}, {}
            self.h, self.w, self.text_rows, self.text_dim, self.prompt_tokens = H, W, TEXT_ROWS, TEXT_DIM, PROMPT_TOKENS
        self.stage_hw = {0: self.h // 32, 1: self.h // 16, 2: self.h // 8}


def stage_of(hidden_states: torch.Tensor, cfg: Cfg) -> int:
    return {v: k for k, v in cfg.stage_hw.items()}[int(hidden_states.shape[-2])]


def save_checkpoint(pipe, dest: str, transformer_weights: bool) -> dict:
    """The pipeline in diffusers format. Without `transformer_weights` (--save-fused-weights holds them) it writes
    what `save_pretrained` writes minus the transformer's safetensors: model_index.json, vae/, scheduler/ and
    transformer/config.json, from which `HeliosTransformer3DModel.from_config` rebuilds the module (export.py
    --fused-weights builds it on the meta device). Returns {"bytes", "transformer_weights"}."""
    dest_p = Path(dest)
    if transformer_weights:
        pipe.save_pretrained(dest, safe_serialization=True)
    else:
        dest_p.mkdir(parents=True, exist_ok=True)
        pipe.save_config(str(dest_p))  # model_index.json, as save_pretrained writes it
        pipe.vae.save_pretrained(str(dest_p / "vae"), safe_serialization=True)
        pipe.scheduler.save_pretrained(str(dest_p / "scheduler"))
        pipe.transformer.save_config(str(dest_p / "transformer"))
        # A from_pretrained of this folder fails ("no file named diffusion_pytorch_model..."); say why.
        (dest_p / "transformer" / "WEIGHTS_NOT_HERE.txt").write_text(
            "tools/bench/reference.py --save-fused-weights wrote this transformer's weights in the fused export's "
            "layout instead (export.py graphs --fused-kernels --fused-weights FILE); only config.json is here.\n")
    size = sum(f.stat().st_size for f in dest_p.rglob("*") if f.is_file())
    return {"bytes": size, "transformer_weights": transformer_weights}


def save_fused_weights(transformer, path: str, dtype: str) -> dict:
    """fused_graph.write_shared_weights: every parameter streamed from the device to `path` in the fused denoisers'
    layout (names, [in, out] Linear weights, T = `dtype` except the f32 operands). Returns its summary plus the
    seconds and rate of the write."""
    sys.path.insert(0, str(ROOT / "tools" / "export"))
    import fused_graph

    Path(path).parent.mkdir(parents=True, exist_ok=True)
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    t = time.perf_counter()
    info = fused_graph.write_shared_weights(transformer, path, dtype)
    secs = time.perf_counter() - t
    return {"file": str(path), "bytes": info["bytes"], "seconds": secs, "gb_per_s": info["bytes"] / 1e9 / secs,
            "dtype": dtype, "tensors": len(info["tensors"]), "sha256": info["sha256"], "casts": len(info["casts"])}


def build(layers: int, seed: int, device: str, cfg: Cfg, dtype: torch.dtype):
    from diffusers import AutoencoderKLWan, HeliosDMDScheduler, HeliosPyramidPipeline, HeliosTransformer3DModel

    torch.manual_seed(seed)
    prev = torch.get_default_dtype()
    torch.set_default_dtype(dtype)  # init straight in bf16 on the GPU (a 40-layer fp32 init is 57 GB)
    try:
        with torch.device(device):
            tr = HeliosTransformer3DModel(**{**cfg.transformer, "num_layers": layers})
    finally:
        torch.set_default_dtype(prev)
    n_fp32 = 0
    for name, p in tr.named_parameters():  # what from_pretrained(torch_dtype=bf16) keeps in fp32
        if any(k in name.split(".") for k in KEEP_FP32):
            p.data = p.data.float()
            n_fp32 += p.numel()
    tr.eval().requires_grad_(False)
    with torch.device(device):
        vae = AutoencoderKLWan(**cfg.vae).eval().requires_grad_(False)  # fp32, default = Wan 2.1 config
    sched = HeliosDMDScheduler(use_dynamic_shifting=True, time_shift_type="linear")
    pipe = HeliosPyramidPipeline(tokenizer=None, text_encoder=None, vae=vae, scheduler=sched, transformer=tr,
                                 is_distilled=True)
    pipe.set_progress_bar_config(disable=True)
    return pipe, n_fp32


CHOLESKY_FALLBACKS = []


def guard_cholesky():
    """The block-noise covariance is numerically singular (tools/README.md "Cholesky"): where the native
    factorisation raises (some CPUs; CUDA factors it), use the factor the spec recorded for CPU (the one
    export.py bakes with `--cholesky-source probe`), so both sides of a dry run agree; record it."""
    real = torch.linalg.cholesky

    def chol(a, *args, **kw):
        try:
            return real(a, *args, **kw)
        except Exception as e:  # noqa: BLE001
            CHOLESKY_FALLBACKS.append(str(e)[:80])
            if tuple(a.shape) == (4, 4):
                sys.path.insert(0, str(ROOT / "tools" / "export"))
                import export as ex

                return torch.tensor(ex.PROBE_CHOLESKY["cpu"], dtype=a.dtype, device=a.device)
            eye = torch.eye(a.shape[-1], dtype=a.dtype, device=a.device)
            return real(a + 1e-6 * eye, *args, **kw)

    torch.linalg.cholesky = chol


class HostEvent:
    """torch.cuda.Event look-alike for the CPU dry run."""

    def __init__(self, **_):
        self.t = None

    def record(self):
        self.t = time.perf_counter()

    def elapsed_time(self, end) -> float:
        return (end.t - self.t) * 1e3


def video_to_rgba8(video: torch.Tensor) -> torch.Tensor:
    """[1, 3, T, H, W] in [-1, 1] -> [T, H, W, 4] uint8 exactly as src/core/sampler/mod.rs `video_to_rgba`
    (round half to even of clamp(v*0.5+0.5, 0, 1)*255 in f32; alpha 255)."""
    v = video[0].float()
    rgb = torch.round((v * 0.5 + 0.5).clamp(0.0, 1.0) * 255.0).to(torch.uint8)
    return torch.cat([rgb, torch.full_like(rgb[:1], 255)], dim=0).permute(1, 2, 3, 0).contiguous()


class Recorder:
    """Wraps transformer.forward and vae.decode with events (no host syncs inside the pipeline); optionally
    (record mode) per-block events, every random draw of the call's generator and the decoded frames."""

    def __init__(self, pipe, cfg: Cfg, device: str):
        self.cfg = cfg
        self.Event = (lambda: torch.cuda.Event(enable_timing=True)) if device == "cuda" else HostEvent
        self.events = []  # (kind, stage, start_event, end_event)
        self.recording = False
        self.block_events = []  # (stage, start, end) in record mode
        self.draws, self.frames, self.generator, self.frames_wanted = [], [], None, 0
        self.stage = -1
        tr, vae = pipe.transformer, pipe.vae
        tr_fwd, vae_dec = tr.forward, vae.decode

        def tr_wrapped(*a, **kw):
            hs = kw.get("hidden_states", a[0] if a else None)
            s, e = self.Event(), self.Event()
            self.stage = stage_of(hs, cfg)
            s.record()
            out = tr_fwd(*a, **kw)
            e.record()
            self.events.append(("tr", self.stage, s, e))
            return out

        def vae_wrapped(*a, **kw):
            s, e = self.Event(), self.Event()
            s.record()
            out = vae_dec(*a, **kw)
            e.record()
            self.events.append(("vae", -1, s, e))
            if self.recording and len(self.frames) < self.frames_wanted:
                self.frames.append(video_to_rgba8(out[0] if isinstance(out, tuple) else out.sample))
            return out

        tr.forward = tr_wrapped
        vae.decode = vae_wrapped

        def pre_hook(_m, _a):
            if self.recording:
                ev = self.Event()
                ev.record()
                self._block_start = ev

        def post_hook(_m, _a, _o):
            if self.recording:
                ev = self.Event()
                ev.record()
                self.block_events.append((self.stage, self._block_start, ev))

        for block in tr.blocks:
            block.register_forward_pre_hook(pre_hook)
            block.register_forward_hook(post_hook)

        real_randn = torch.randn

        def randn(*a, **kw):
            out = real_randn(*a, **kw)
            if self.recording and kw.get("generator") is not None and kw.get("generator") is self.generator:
                self.draws.append(out.detach().clone())
            return out

        torch.randn = randn

    def reset(self):
        self.events = []
        self.block_events = []
        self.draws, self.frames = [], []


def run_once(pipe, rec, embeds, chunks: int, amplify: bool, seed: int, layers: int, device: str, cfg: Cfg):
    rec.reset()
    gen = torch.Generator(device).manual_seed(seed)
    rec.generator = gen
    if device == "cuda":
        torch.cuda.synchronize()
    start = rec.Event()
    t0 = time.perf_counter()
    start.record()
    out = pipe(prompt_embeds=embeds, height=cfg.h, width=cfg.w, num_frames=FRAMES_PER_CHUNK * chunks,
               guidance_scale=1.0, pyramid_num_inference_steps_list=[2, 2, 2], is_amplify_first_chunk=amplify,
               generator=gen, output_type="latent", return_dict=False)
    end = rec.Event()
    end.record()
    if device == "cuda":
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
    latents = out[0] if isinstance(out, (tuple, list)) else out
    return res, total_ms, host_total, latents


def per_layer(rec, chunks: list[dict], layers: int) -> dict:
    """Per-stage cost of one block (median over all block calls of steady chunks) and of everything outside
    the blocks (median forward minus layers x block): the terms of the 40-layer extrapolation."""
    steady_fwd = [[], [], []]
    for c in chunks[1:] or chunks:
        for s in range(3):
            steady_fwd[s] += c["fwd_ms"][s]
    blocks = [[], [], []]
    for stage, s, e in rec.block_events:
        blocks[stage].append(s.elapsed_time(e))
    out = {"block_ms": [], "outside_ms": [], "forward_ms": [], "block_calls": [len(b) for b in blocks]}
    for s in range(3):
        b = statistics.median(blocks[s]) if blocks[s] else float("nan")
        f = statistics.median(steady_fwd[s]) if steady_fwd[s] else float("nan")
        out["block_ms"].append(b)
        out["forward_ms"].append(f)
        out["outside_ms"].append(f - layers * b)
    return out


def save_record(path: str, rec, latents: torch.Tensor, embeds: torch.Tensor, chunks: int, a, cfg: Cfg):
    """The tensors tools/bench/README.md "Recorded tensors" lists (gpu_bench --inject-noise/--compare)."""
    from safetensors.torch import save_file

    if len(rec.draws) != 3 * chunks:
        raise RuntimeError(f"recorded {len(rec.draws)} draws for {chunks} chunks (expected 3 per chunk)")
    h, w = cfg.h // 8, cfg.w // 8
    t = {"prompt_embeds": embeds[0].float().cpu().contiguous()}
    for k in range(chunks):
        noise, b1, b2 = rec.draws[3 * k:3 * k + 3]
        want = [[1, 16, LATENT_FRAMES, h, w], [16 * LATENT_FRAMES * (h // 4) * (w // 4), 4],
                [16 * LATENT_FRAMES * (h // 2) * (w // 2), 4]]
        if [list(noise.shape), list(b1.shape), list(b2.shape)] != want:
            raise RuntimeError(f"chunk {k} draw shapes {[list(x.shape) for x in (noise, b1, b2)]} != {want}")
        t[f"chunk{k}.draw.latent_noise"] = noise.float().cpu().contiguous()
        t[f"chunk{k}.draw.block_noise_stage1"] = b1.float().cpu().contiguous()
        t[f"chunk{k}.draw.block_noise_stage2"] = b2.float().cpu().contiguous()
        t[f"chunk{k}.result"] = latents[:, :, LATENT_FRAMES * k:LATENT_FRAMES * (k + 1)].float().cpu().contiguous()
    for k, frames in enumerate(rec.frames):
        t[f"chunk{k}.rgba"] = frames.cpu().contiguous()
    meta = {"seed": str(a.seed), "chunks": str(chunks), "amplify_first_chunk": "true", "layers": str(a.layers),
            "height": str(cfg.h), "width": str(cfg.w), "generator_device": a.device, "prompt": PROMPT_NAME,
            "frames_chunks": str(len(rec.frames)), "cholesky_fallbacks": str(len(CHOLESKY_FALLBACKS))}
    save_file(t, path, metadata=meta)
    return {k: list(v.shape) for k, v in t.items()}


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--layers", type=int, default=2)
    ap.add_argument("--chunks", type=int, default=3, help="chunks in the timed amplify-on run (first is amplified)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--peak-tflops", type=float, default=790.0, help="rate for the floor (spec: 790 TF/s)")
    ap.add_argument("--ttff-reps", type=int, default=2, help="1-chunk runs per amplify setting for TTFF")
    ap.add_argument("--out", required=True)
    ap.add_argument("--tiny", action="store_true", help="tiny config, 64x64 (CPU dry run of the harness)")
    ap.add_argument("--device", default=None, choices=["cuda", "cpu"], help="default: cuda (cpu with --tiny)")
    ap.add_argument("--dtype", default=None, choices=list(DTYPES), help="transformer dtype (bf16; fp32 --tiny)")
    ap.add_argument("--save-checkpoint", default=None,
                    help="save the random-weight pipeline here (diffusers format; without the transformer's weights "
                         "when --save-fused-weights is given)")
    ap.add_argument("--save-fused-weights", default=None, metavar="FILE",
                    help="after the timed and recorded calls, write the transformer's weights in the fused export's "
                         "layout (fused_graph.write_shared_weights) for export.py --fused-kernels --fused-weights "
                         "FILE; prints bytes and seconds")
    ap.add_argument("--fused-weights-dtype", default=None, choices=["fp32", "bf16"],
                    help="T of --save-fused-weights = export.py's --dtype (default: --dtype: bf16 on the GPU, fp32 "
                         "with --tiny)")
    ap.add_argument("--embeddings", default=None, help="write the prompt as an embeddings.safetensors bank")
    ap.add_argument("--record", default=None, help="safetensors file for draws, chunk latents and frames")
    ap.add_argument("--record-frames", type=int, default=2, help="chunks whose RGBA8 frames are recorded")
    a = ap.parse_args()

    import diffusers
    cfg = Cfg(a.tiny)
    a.device = a.device or ("cpu" if a.tiny else "cuda")
    a.dtype = a.dtype or ("fp32" if a.tiny else "bf16")
    a.fused_weights_dtype = a.fused_weights_dtype or a.dtype
    if a.tiny:
        a.layers = cfg.transformer["num_layers"] if a.layers == 2 else a.layers
    torch.backends.cuda.matmul.allow_tf32 = False  # torch defaults (the reference's numerics)
    dev = a.device
    cuda = dev == "cuda"
    guard_cholesky()
    t = time.perf_counter()
    pipe, n_fp32 = build(a.layers, a.seed, dev, cfg, DTYPES[a.dtype])
    build_s = time.perf_counter() - t
    save_s, ckpt_info = 0.0, None
    if a.save_checkpoint:
        t = time.perf_counter()
        ckpt_info = save_checkpoint(pipe, a.save_checkpoint, transformer_weights=not a.save_fused_weights)
        save_s = time.perf_counter() - t
        print(f"saved the random-weight checkpoint to {a.save_checkpoint} in {save_s:.1f}s "
              f"({ckpt_info['bytes'] / 1e9:.3f} GB" + ("" if ckpt_info["transformer_weights"] else
                                                       ", transformer config only: its weights go to "
                                                       f"{a.save_fused_weights}") + ")", flush=True)
    rec = Recorder(pipe, cfg, dev)
    g = torch.Generator("cpu").manual_seed(a.seed + 1)
    embeds = torch.randn(1, cfg.text_rows, cfg.text_dim, generator=g)
    embeds[:, cfg.prompt_tokens:] = 0  # zero-padded rows like encode_prompt
    embeds = embeds.to(dev, DTYPES[a.dtype])
    if a.embeddings:
        from safetensors.torch import save_file

        Path(a.embeddings).parent.mkdir(parents=True, exist_ok=True)
        save_file({PROMPT_NAME: embeds[0].float().cpu().contiguous()}, a.embeddings,
                  metadata={PROMPT_NAME: f"random N(0,1) rows, rows >= {cfg.prompt_tokens} zero "
                                         f"(tools/bench/reference.py seed {a.seed + 1}), rounded to {a.dtype}"})

    weights_gb = torch.cuda.memory_allocated() / 1e9 if cuda else 0.0
    # warm-up: one amplified chunk + one plain chunk (all three stage shapes, VAE, both forward counts)
    run_once(pipe, rec, embeds, 2, True, a.seed, a.layers, dev, cfg)
    if cuda:
        torch.cuda.reset_peak_memory_stats()
    chunks, total_ms, host_ms, _ = run_once(pipe, rec, embeds, a.chunks, True, a.seed, a.layers, dev, cfg)
    peak_alloc = torch.cuda.max_memory_allocated() / 1e9 if cuda else 0.0
    peak_reserved = torch.cuda.max_memory_reserved() / 1e9 if cuda else 0.0
    ttff = {"amplify_on": [], "amplify_off": []}
    for rep in range(a.ttff_reps):
        for key, amp in (("amplify_on", True), ("amplify_off", False)):
            c, tot, _, _ = run_once(pipe, rec, embeds, 1, amp, a.seed, a.layers, dev, cfg)
            ttff[key].append({"ttff_ms": c[0]["from_start_ms"], "transformer_ms": c[0]["transformer_ms"],
                              "vae_ms": c[0]["vae_ms"], "forwards": c[0]["forwards"]})
    for c in chunks:
        c["fps"] = FRAMES_PER_CHUNK / (c["wall_ms"] / 1e3)
        c["transformer_tflops_achieved"] = c["tflop"] / (c["transformer_ms"] / 1e3)
        c["chunk_tflops_achieved"] = c["tflop_with_vae"] / (c["wall_ms"] / 1e3)
        c["floor_ms"] = c["tflop_with_vae"] / a.peak_tflops * 1e3
        c["pct_of_floor"] = 100.0 * c["floor_ms"] / c["wall_ms"]
    record_info = None
    layer_model = None
    if a.record:
        # Replay of the timed call (same seed, same chunks), untimed: draws, latents, frames, block timings.
        rec.recording, rec.frames_wanted = True, a.record_frames
        rec_chunks, _, _, latents = run_once(pipe, rec, embeds, a.chunks, True, a.seed, a.layers, dev, cfg)
        rec.recording = False
        layer_model = per_layer(rec, rec_chunks, a.layers)
        t = time.perf_counter()
        record_info = {"file": a.record,
                       "tensors": save_record(a.record, rec, latents, embeds, a.chunks, a, cfg),
                       "save_s": time.perf_counter() - t}
    fused_weights = None
    if a.save_fused_weights:
        # Last GPU work of the run: the device-to-host copies and the page-cache write-back (28.6 GB at 40 layers)
        # come after every timed and recorded call.
        fused_weights = save_fused_weights(pipe.transformer, a.save_fused_weights, a.fused_weights_dtype)
        print(f"wrote the fused weights {a.save_fused_weights}: {fused_weights['bytes']} bytes "
              f"({fused_weights['tensors']} tensors, {fused_weights['dtype']}) in {fused_weights['seconds']:.1f}s "
              f"= {fused_weights['gb_per_s']:.2f} GB/s", flush=True)
    out = {
        "what": "diffusers HeliosPyramidPipeline, random weights, real Helios-Distilled dims, reduced layers"
                + (" (TINY config on the CPU: a dry run, timings meaningless)" if a.tiny else ""),
        "tiny": a.tiny, "dtype": a.dtype,
        "layers": a.layers, "height": cfg.h, "width": cfg.w, "frames_per_chunk": FRAMES_PER_CHUNK,
        "pyramid_steps": [2, 2, 2], "guidance_scale": 1.0, "amplify_first_chunk": True,
        "device": torch.cuda.get_device_name(0) if cuda else platform.processor() or "cpu",
        "torch": torch.__version__, "diffusers": diffusers.__version__,
        "cuda": torch.version.cuda, "python": platform.python_version(),
        "transformer_params": sum(p.numel() for p in pipe.transformer.parameters()), "fp32_params": n_fp32,
        "build_s": build_s, "checkpoint_save_s": save_s, "checkpoint": ckpt_info, "fused_weights": fused_weights,
        "weights_gb_allocated": weights_gb,
        "peak_vram_allocated_gb": peak_alloc, "peak_vram_reserved_gb": peak_reserved,
        "chunks": chunks, "total_ms": total_ms, "host_total_ms": host_ms, "ttff": ttff,
        "forward_flops_tflop": {s: forward_flops(s, a.layers) / 1e12 for s in range(3)},
        "peak_tflops_for_floor": a.peak_tflops, "cholesky_fallbacks": len(CHOLESKY_FALLBACKS),
        "per_layer": layer_model, "record": record_info,
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
    if layer_model:
        print(" per block ms (s0/s1/s2): " + " / ".join(f"{v:.2f}" for v in layer_model["block_ms"])
              + "   outside the blocks: " + " / ".join(f"{v:.2f}" for v in layer_model["outside_ms"]))
    if record_info:
        print(f" recorded {len(record_info['tensors'])} tensors to {a.record}")


if __name__ == "__main__":
    main()
