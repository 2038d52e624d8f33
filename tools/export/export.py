#!/usr/bin/env python3
"""Export Helios-Distilled (diffusers 0.42.1 `HeliosPyramidPipeline`) as the ONNX graphs bevy_helios runs.

Subcommands:
  graphs  write every graph of docs/graph-contract.md plus manifest.ron
  embed   write embeddings.safetensors (the prompt bank) from tools/export/prompts.txt
  all     embed + graphs + manifest.ron (what users run)

Model source is either `--checkpoint DIR` (a diffusers-format Helios checkpoint with transformer/, vae/,
scheduler/ and, for `embed`, text_encoder/ + tokenizer/) or `--tiny` (random weights from `--seed`, the
smallest valid config; see the spec shared/design/helios-sampler.md section 3.4).

Every graph is checked after writing: onnx.checker, I/O names/shapes/dtypes against the contract, and an
onnxruntime (CPU) run on seeded random inputs against the torch module. The tool exits non-zero when any
check fails and then does not write manifest.ron.

All numerics are delegated to diffusers; the wrappers below only fix the inputs the contract bakes in
(frame indices, latent constants, pyramid constants) and cast at the graph boundary.
"""

from __future__ import annotations

import argparse
import hashlib
import logging
import math
import re
import shlex
import sys
import tempfile
import time
import types
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent))
import contract as K  # noqa: E402

# The exporter logs a warning per missing torchvision op and per skipped constant fold; none matter here.
logging.getLogger("torch.onnx").setLevel(logging.ERROR)
logging.getLogger("onnxscript").setLevel(logging.ERROR)

REPO_ROOT = Path(__file__).resolve().parents[2]
PROMPTS_FILE = Path(__file__).resolve().parent / "prompts.txt"

# Smallest valid HeliosTransformer3DModel (spec 3.4 "tiny" column; the diffusers pipeline test config).
TINY_TRANSFORMER = dict(
    patch_size=(1, 2, 2),
    num_attention_heads=2,
    attention_head_dim=12,
    in_channels=16,
    out_channels=16,
    text_dim=32,
    freq_dim=256,
    ffn_dim=32,
    num_layers=2,
    cross_attn_norm=True,
    qk_norm="rms_norm_across_heads",
    rope_dim=(4, 4, 4),
    has_multi_term_memory_patch=True,
    guidance_cross_attn=True,
    zero_history_timestep=True,
    is_amplify_history=False,
)
# Tiny AutoencoderKLWan; latents_mean/std stay the diffusers defaults (= Wan 2.1 VAE).
TINY_VAE = dict(base_dim=3, z_dim=16, dim_mult=[1, 1, 1, 1], num_res_blocks=1, temperal_downsample=[False, True, True])

# Pipeline constants of Helios-Distilled (spec 1.1): chunk geometry and the distilled run settings.
LATENT_FRAMES = 9
HISTORY_SIZES = (16, 2, 1)  # long, mid, 1x (keep_first_frame layout)
PYRAMID_STEPS = (2, 2, 2)
AMPLIFY_FIRST_CHUNK = True
STAGES = 3

DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}
PRECISION_RON = {"fp32": "F32", "fp16": "F16", "bf16": "Bf16"}
ONNX_ELEM = {1: "F32", 7: "I64", 10: "F16", 16: "Bf16", 11: "F64", 2: "U8"}
# Max abs error allowed between onnxruntime and torch, as a fraction of max |torch output| (floored at 1e-6).
TOLERANCE = {"fp32": 1e-4, "fp16": 1e-2, "bf16": 5e-2}
EXTERNAL_DATA_BYTES = 1_800_000_000  # above this a graph's weights go to `<file>.data` (2 GB protobuf limit)


def log(msg: str) -> None:
    print(msg, flush=True)


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def repo_relative(path: str | Path) -> str:
    p = Path(path).resolve()
    try:
        return str(p.relative_to(REPO_ROOT))
    except ValueError:
        return str(p)


def command_line(argv: list[str]) -> str:
    """The command that made an output, with the script path relative to the repository root."""
    return shlex.join([repo_relative(__file__)] + argv)


# ----------------------------------------------------------------------------------------------------------
# Loading models
# ----------------------------------------------------------------------------------------------------------


def build_tiny_pipeline_dir(seed: int, dest: Path) -> None:
    """Builds the tiny transformer + VAE from `seed` and saves them in diffusers format under `dest`.

    Writes what `HeliosPyramidPipeline.save_pretrained` writes (model_index.json, transformer/, vae/,
    scheduler/), so the tiny model is loaded by exactly the same `from_pretrained` path as a real checkpoint.
    """
    from diffusers import AutoencoderKLWan, HeliosDMDScheduler, HeliosPyramidPipeline, HeliosTransformer3DModel

    torch.manual_seed(seed)
    transformer = HeliosTransformer3DModel(**TINY_TRANSFORMER).eval()
    vae = AutoencoderKLWan(**TINY_VAE).eval()
    scheduler = HeliosDMDScheduler(use_dynamic_shifting=True, time_shift_type="linear")
    pipe = HeliosPyramidPipeline(
        tokenizer=None, text_encoder=None, vae=vae, scheduler=scheduler, transformer=transformer, is_distilled=True
    )
    dest.mkdir(parents=True, exist_ok=True)
    pipe.save_pretrained(str(dest), safe_serialization=True)


def load_scheduler(checkpoint: Path, dynamic_shifting: bool | None):
    """HeliosDMDScheduler from `checkpoint/scheduler`; `dynamic_shifting` overrides the saved flag."""
    from diffusers import HeliosDMDScheduler

    sched_dir = checkpoint / "scheduler"
    if (sched_dir / "scheduler_config.json").exists():
        config = HeliosDMDScheduler.load_config(str(sched_dir))
        if config.get("_class_name") not in (None, "HeliosDMDScheduler"):
            log(f"warning: checkpoint scheduler is {config.get('_class_name')}; Distilled uses HeliosDMDScheduler")
        if dynamic_shifting is not None and bool(config.get("use_dynamic_shifting", False)) != dynamic_shifting:
            log(f"warning: --dynamic-shifting {dynamic_shifting} overrides the checkpoint's "
                f"use_dynamic_shifting={config.get('use_dynamic_shifting')}")
        overrides = {} if dynamic_shifting is None else {"use_dynamic_shifting": dynamic_shifting}
        return HeliosDMDScheduler.from_config(config, **overrides)
    log("warning: checkpoint has no scheduler/scheduler_config.json; using HeliosDMDScheduler defaults "
        "with time_shift_type=linear")
    return HeliosDMDScheduler(
        use_dynamic_shifting=True if dynamic_shifting is None else dynamic_shifting, time_shift_type="linear"
    )


def meta_transformer(checkpoint: Path, dtype: str):
    """`HeliosTransformer3DModel.from_config(<checkpoint>/transformer/config.json)` on the meta device: the module's
    structure, shapes and dtypes without any weights (`--fused-weights`: they are in the fused layout's file).

    Dtypes as `from_pretrained(torch_dtype=dtype)` gives them: a parameter whose dotted name has a part in
    `_keep_in_fp32_modules` stays float32, every other one is `dtype` (diffusers 0.42.1
    model_loading_utils.load_model_dict_into_meta: `module_to_keep_in_fp32 in param_name.split(".")`)."""
    from diffusers import HeliosTransformer3DModel

    cfg_dir = checkpoint / "transformer"
    if not (cfg_dir / "config.json").is_file():
        raise SystemExit(f"--fused-weights: {cfg_dir}/config.json missing (the transformer's config is needed to "
                         "rebuild its structure)")
    config = HeliosTransformer3DModel.load_config(str(cfg_dir))
    with torch.device("meta"):
        transformer = HeliosTransformer3DModel.from_config(config)
    keep = list(getattr(HeliosTransformer3DModel, "_keep_in_fp32_modules", None) or [])
    for name, p in transformer.named_parameters():
        want = torch.float32 if dtype != "fp32" and any(m in name.split(".") for m in keep) else DTYPES[dtype]
        p.data = p.data.to(want)
    return transformer.eval().requires_grad_(False)


def load_models(checkpoint: Path, dtype: str, device: str, dynamic_shifting: bool | None,
                transformer_on_meta: bool = False):
    """Transformer (in `dtype`, `_keep_in_fp32_modules` kept fp32 by from_pretrained; with `transformer_on_meta`
    only its structure, see `meta_transformer`), VAE (fp32), scheduler."""
    from diffusers import AutoencoderKLWan, HeliosTransformer3DModel

    if transformer_on_meta:
        transformer = meta_transformer(checkpoint, dtype)
    else:
        transformer = HeliosTransformer3DModel.from_pretrained(
            str(checkpoint), subfolder="transformer", torch_dtype=DTYPES[dtype]
        ).to(device).eval()
    # The reference runs the VAE in fp32 (spec 1.1); the latent constants are built in the VAE dtype.
    vae = AutoencoderKLWan.from_pretrained(str(checkpoint), subfolder="vae", torch_dtype=torch.float32).to(device).eval()
    scheduler = load_scheduler(checkpoint, dynamic_shifting)
    return transformer, vae, scheduler


# ----------------------------------------------------------------------------------------------------------
# Pipeline constants (each computed by, or exactly as, diffusers 0.42.1 HeliosPyramidPipeline.__call__)
# ----------------------------------------------------------------------------------------------------------


def frame_indices() -> dict[str, torch.Tensor]:
    """RoPE frame indices the pipeline passes for keep_first_frame=True: arange over
    [prefix 1 | long 16 | mid 2 | 1x 1 | current 9]; short = prefix + 1x. Constant for every chunk."""
    long_n, mid_n, one_n = HISTORY_SIZES
    bounds = np.cumsum([0, 1, long_n, mid_n, one_n, LATENT_FRAMES])
    part = [torch.arange(int(bounds[i]), int(bounds[i + 1])) for i in range(5)]
    prefix, long_i, mid_i, one_i, cur_i = part
    return {
        "indices_hidden_states": cur_i[None],
        "indices_latents_history_short": torch.cat([prefix, one_i])[None],
        "indices_latents_history_mid": mid_i[None],
        "indices_latents_history_long": long_i[None],
    }


def latent_constants(vae, device: str = "cpu") -> tuple[torch.Tensor, torch.Tensor]:
    """(latents_mean, latents_std) tensors exactly as the pipeline builds them: mean in the VAE dtype and
    `latents_std` = 1 / std (the pipeline's variable holds the reciprocal)."""
    z = vae.config.z_dim
    mean = torch.tensor(vae.config.latents_mean).view(1, z, 1, 1, 1).to(device, vae.dtype)
    inv_std = 1.0 / torch.tensor(vae.config.latents_std).view(1, z, 1, 1, 1).to(device, vae.dtype)
    return mean, inv_std


def renoise_coefficients(scheduler, stage: int) -> tuple[float, float]:
    """(alpha, beta) of the stage transition, from `scheduler.ori_start_sigmas` as the pipeline computes them
    before `sample_block_noise` (spec 1.5)."""
    signal = 1 - scheduler.ori_start_sigmas[stage]
    gamma = scheduler.config.gamma
    alpha = 1 / (math.sqrt(1 + (1 / gamma)) * (1 - signal) + signal)
    beta = alpha * (1 - signal) / math.sqrt(gamma)
    return alpha, beta


# fp32 factors recorded by shared/design/helios-sampler-probe.py (spec 1.5) on its H200 host (Intel Xeon,
# torch 2.11; re-measured there by this tool's --cholesky-source native: identical). The fp32 covariance is
# numerically singular (its smallest eigenvalue rounds to about -3e-8), so whether torch.linalg.cholesky
# succeeds, and the last pivot it returns, depend on device, CPU and LAPACK build: on an AMD EPYC with
# torch 2.15 / MKL 2024.2 the CPU factorisation raises "not positive-definite".
_a, _b, _c = -0.3333333432674408, -0.471404492855072, -0.8164964914321899
PROBE_CHOLESKY = {
    "cpu": [[1.0, 0.0, 0.0, 0.0], [_a, 0.9428090453147888, 0.0, 0.0], [_a, _b, 0.8164966106414795, 0.0],
            [_a, _b, _c, 0.00042286395910196006]],
    "cuda": [[1.0, 0.0, 0.0, 0.0], [_a, 0.942808985710144, 0.0, 0.0], [_a, _b, 0.8164965510368347, 0.0],
             [_a, _b, _c, 0.0004074478929396719]],
}


def native_block_noise_cholesky(scheduler, device: str) -> torch.Tensor:
    """The fp32 Cholesky factor L that `HeliosPyramidPipeline.sample_block_noise` uses on `device`.

    Read out of the pipeline's own function: with torch.randn patched to return the 4x4 identity as z
    (4 channels x one 2x2 block), the returned noise holds z @ L.T = L.T, i.e. channel c's 2x2 block is
    column c of L. This multiplies by exact 0/1, so the factor comes back bit-exact. Raises
    torch.linalg.LinAlgError where the pipeline itself would (the factorisation fails on some CPUs).
    """
    from diffusers import HeliosPyramidPipeline

    fake_pipe = types.SimpleNamespace(scheduler=scheduler)
    real_randn = torch.randn

    def identity_randn(*shape, generator=None, device=None, **kw):
        return torch.eye(4, dtype=torch.float32, device=device)

    torch.randn = identity_randn
    tf32 = torch.backends.cuda.matmul.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = False  # z @ L.T must stay exact fp32
    try:
        gen = torch.Generator(device=device)
        noise = HeliosPyramidPipeline.sample_block_noise(fake_pipe, 1, 4, 1, 2, 2, (1, 2, 2), device, gen)
    finally:
        torch.randn = real_randn
        torch.backends.cuda.matmul.allow_tf32 = tf32
    L = noise[0, :, 0].reshape(4, 4).T.contiguous().cpu()  # L[j, c] = noise[c, j // 2, j % 2]
    # Cross-check against a direct factorisation of the same fp32 covariance on the same device.
    g = scheduler.config.gamma
    cov = torch.eye(4, device=device) * (1 + g) - torch.ones(4, 4, device=device) * g
    direct = torch.linalg.cholesky((cov + torch.eye(4, device=device) * 1e-8).float()).cpu()
    if not torch.equal(L, direct):
        raise RuntimeError(f"factor read from sample_block_noise {L.tolist()} != direct {direct.tolist()}")
    return L


def block_noise_cholesky(scheduler, device: str, source: str) -> tuple[torch.Tensor, str]:
    """(L, description). source "native": computed by the pipeline on `device` (error if torch cannot);
    "probe": the factor the spec recorded for `device` (reproducible on any machine; the tiny default)."""
    try:
        native = native_block_noise_cholesky(scheduler, device)
        native_desc = f"native {device}: {native.tolist()}"
    except torch.linalg.LinAlgError as e:
        native, native_desc = None, f"native {device}: torch.linalg.cholesky failed ({str(e).splitlines()[0]})"
    log(f"block-noise Cholesky, {native_desc}")
    if source == "native":
        if native is None:
            raise SystemExit("the reference pipeline cannot factor the block-noise covariance on this device, so "
                             "it cannot run here either; pass --cholesky-source probe to bake the factor the spec "
                             "recorded, or export on the device the reference runs on")
        return native, f"native-{device}"
    probe = torch.tensor(PROBE_CHOLESKY[device], dtype=torch.float32)
    if native is not None and not torch.equal(native, probe):
        log(f"note: the native {device} factor differs from the spec's probe factor; using the probe factor")
    return probe, f"probe-{device}"


# ----------------------------------------------------------------------------------------------------------
# Graph wrappers: the ONNX inputs are exactly the contract's; everything else is baked in.
# ----------------------------------------------------------------------------------------------------------


class DenoiserStage(torch.nn.Module):
    """One `HeliosTransformer3DModel.forward` at one pyramid stage with the pipeline's frame indices baked in.

    Casts like the pipeline: latents, histories and prompt embeddings to the transformer dtype; the timestep
    stays int64. The output is returned as f32 (lossless from bf16/fp16)."""

    def __init__(self, transformer):
        super().__init__()
        self.transformer = transformer
        for name, value in frame_indices().items():
            self.register_buffer(name, value, persistent=False)

    def forward(self, hidden_states, timestep, encoder_hidden_states, latents_history_short,
                latents_history_mid, latents_history_long):
        dt = self.transformer.dtype
        out = self.transformer(
            hidden_states=hidden_states.to(dt),
            timestep=timestep,
            encoder_hidden_states=encoder_hidden_states.to(dt),
            indices_hidden_states=self.indices_hidden_states,
            indices_latents_history_short=self.indices_latents_history_short,
            indices_latents_history_mid=self.indices_latents_history_mid,
            indices_latents_history_long=self.indices_latents_history_long,
            latents_history_short=latents_history_short.to(dt),
            latents_history_mid=latents_history_mid.to(dt),
            latents_history_long=latents_history_long.to(dt),
            return_dict=False,
        )[0]
        return out.float()


class VaeDecoder(torch.nn.Module):
    """`latents / latents_std + latents_mean` (the pipeline's expression, `latents_std` = 1/std) then
    `AutoencoderKLWan.decode` of the whole 9-frame chunk (cache cleared per call, output clamped)."""

    def __init__(self, vae):
        super().__init__()
        self.vae = vae
        mean, inv_std = latent_constants(vae)
        self.register_buffer("latents_mean", mean, persistent=False)
        self.register_buffer("latents_std", inv_std, persistent=False)

    def forward(self, latents):
        z = latents.to(self.vae.dtype) / self.latents_std + self.latents_mean
        return self.vae.decode(z, return_dict=False)[0].float()


class VaeEncoder(torch.nn.Module):
    """`AutoencoderKLWan.encode(video).latent_dist` raw moments: mean and (clamped) logvar, not normalised."""

    def __init__(self, vae):
        super().__init__()
        self.vae = vae

    def forward(self, video):
        dist = self.vae.encode(video.to(self.vae.dtype)).latent_dist
        return dist.mean.float(), dist.logvar.float()


def _frames_as_images(x):
    """[B, C, F, H, W] -> [B*F, C, H, W], the layout the pipeline resizes in."""
    b, c, f, h, w = x.shape
    return x.permute(0, 2, 1, 3, 4).reshape(b * f, c, h, w)


def _images_as_frames(x, b, f):
    bf, c, h, w = x.shape
    return x.reshape(b, f, c, h, w).permute(0, 2, 1, 3, 4)


class PyramidDownsample(torch.nn.Module):
    """Stage-0 start point: for each of the stages-1 levels, bilinear resize to half size then x2
    (pipeline's `F.interpolate(..., mode="bilinear") * 2`), in fp32 like the pipeline."""

    def forward(self, noise):
        b, _, f, h, w = noise.shape
        x = _frames_as_images(noise)
        for _ in range(STAGES - 1):
            h, w = h // 2, w // 2
            x = F.interpolate(x, size=(h, w), mode="bilinear") * 2
        return _images_as_frames(x, b, f)


class PyramidRenoise(torch.nn.Module):
    """Stage transition: nearest x2 upsample of the previous x0, block noise z @ L.T scattered to 2x2 blocks,
    start = alpha * up + beta * noise. In reduced precision up/noise are rounded to the transformer dtype and
    each product/sum is rounded as torch does for a low-precision tensor times a Python float (the scalar
    stays fp32, the result is rounded): emulated with fp32 math plus explicit casts."""

    def __init__(self, L: torch.Tensor, alpha: float, beta: float, dtype: torch.dtype):
        super().__init__()
        self.register_buffer("L", L.float().clone(), persistent=False)
        self.alpha, self.beta, self.dt = alpha, beta, dtype

    def forward(self, x0, z):
        b, c, f, h, w = x0.shape
        # Round to the transformer dtype first (the reference's x0 is in that dtype), then copy pixels in fp32:
        # nearest upsampling is exact in any dtype, and ORT's CPU Resize has no bf16 kernel.
        x0 = x0.to(self.dt).float()
        up = _images_as_frames(F.interpolate(_frames_as_images(x0), size=(2 * h, 2 * w), mode="nearest"), b, f)
        noise = z @ self.L.T  # [b*c*f*h*w, 4]; component 2*ph + pw of block (i, k) -> pixel (2i+ph, 2k+pw)
        noise = noise.view(b, c, f, h, w, 2, 2).permute(0, 1, 2, 3, 5, 4, 6).reshape(b, c, f, 2 * h, 2 * w)
        if self.dt == torch.float32:
            return self.alpha * up + self.beta * noise
        a = (up * self.alpha).to(self.dt)
        n = (noise.to(self.dt).float() * self.beta).to(self.dt)
        return (a.float() + n.float()).to(self.dt).float()


class DmdStep(torch.nn.Module):
    """`HeliosDMDScheduler.step` with the sigmas already looked up: x0 = sample - sigma * v in float64, rounded
    to the velocity dtype (`convert_flow_pred_to_x0`); next = (1 - sigma') * x0 + sigma' * start in float64,
    rounded to the start point's dtype (`add_noise`). Start points are fp32 in stage 0 and the transformer
    dtype afterwards (spec 1.5)."""

    def __init__(self, velocity_dtype: torch.dtype, start_dtype: torch.dtype):
        super().__init__()
        self.vdt, self.sdt = velocity_dtype, start_dtype

    def forward(self, sample, velocity, start, sigma, sigma_next):
        s = sigma.double().reshape(-1, 1, 1, 1, 1)
        sn = sigma_next.double().reshape(-1, 1, 1, 1, 1)
        x0 = (sample.to(self.sdt).double() - s * velocity.to(self.vdt).double()).to(self.vdt)
        nxt = ((1 - sn) * x0.double() + sn * start.to(self.sdt).double()).to(self.sdt)
        return x0.float(), nxt.float()


class HistoryPush(torch.nn.Module):
    """The pipeline's history update after a chunk (`torch.cat([history_latents, latents], dim=2)`, of which
    the next chunk reads the last 19 frames) on a fixed 19-frame window: history_next = the last 19 frames of
    concat(history, chunk); first_frame = chunk[:, :, 0:1] (the T2V anchor the pipeline captures after
    chunk 0). Pure copies: exact in any dtype."""

    def forward(self, history, chunk):
        n = history.shape[2]
        return torch.cat([history, chunk], dim=2)[:, :, -n:], chunk[:, :, 0:1]


class HistorySlices(torch.nn.Module):
    """The transformer's history inputs from the 19-frame window (pipeline step 6, keep_first_frame):
    long | mid | 1x = split(history, [16, 2, 1]); short = concat(anchor, 1x). Pure copies."""

    def __init__(self, sizes=HISTORY_SIZES):
        super().__init__()
        self.sizes = list(sizes)

    def forward(self, history, anchor):
        long_, mid, one = history.split(self.sizes, dim=2)
        return torch.cat([anchor, one], dim=2), mid, long_


def video_to_rgba8(video: torch.Tensor) -> torch.Tensor:
    """[1, 3, T, H, W] in [-1, 1] -> [T, H, W, 4] uint8, exactly src/core/sampler/mod.rs `video_to_rgba`:
    round_half_even(clamp(v * 0.5 + 0.5, 0, 1) * 255) per channel in f32, alpha 255."""
    v = video[0].float()
    rgb = torch.round((v * 0.5 + 0.5).clamp(0.0, 1.0) * 255.0).to(torch.uint8)  # torch.round: half to even
    alpha = torch.full_like(rgb[:1], 255)
    return torch.cat([rgb, alpha], dim=0).permute(1, 2, 3, 0).contiguous()


class VaeDecoderRgba8(torch.nn.Module):
    """`VaeDecoder` followed by `video_to_rgba8`: the frames as display bytes, so only they leave the device.
    (The exported graph is vae_decoder.onnx with the byte mapping appended, see `append_rgba8`; this module
    is the torch reference it is verified against.)"""

    def __init__(self, vae):
        super().__init__()
        self.decoder = VaeDecoder(vae)

    def forward(self, latents):
        return video_to_rgba8(self.decoder(latents))


def append_rgba8(src: Path, dst: Path) -> None:
    """Writes `dst` = the graph `src` (vae_decoder: `latents` -> `video` [1, 3, T, H, W] f32) with
    `video_to_rgba8` appended as ONNX nodes (Squeeze, Mul, Add, Clip, Mul, Round (half to even), Cast,
    ConstantOfShape, Concat, Transpose) and `rgba` [T, H, W, 4] uint8 as the only output. External weights,
    if any, are referenced in place, not copied. Saves a second trace of the VAE (minutes at full size)."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    m = onnx.load(str(src), load_external_data=False)
    (video,) = [o for o in m.graph.output if o.name == "video"]
    dims = [d.dim_value for d in video.type.tensor_type.shape.dim]
    _, ch, t, hh, ww = dims
    g = m.graph
    names = {n.name for n in g.node} | {i.name for i in g.initializer}

    def uniq(base):
        name, i = f"rgba8/{base}", 0
        while name in names:
            i += 1
            name = f"rgba8/{base}_{i}"
        names.add(name)
        return name

    def const(base, arr):
        name = uniq(base)
        g.initializer.append(numpy_helper.from_array(np.asarray(arr), name))
        return name

    def node(op, inputs, base, **attrs):
        out = uniq(base)
        g.node.append(helper.make_node(op, inputs, [out], name=out, **attrs))
        return out

    x = node("Squeeze", ["video", const("axis0", np.array([0], np.int64))], "squeeze")
    x = node("Mul", [x, const("half", np.array(0.5, np.float32))], "mul_half")
    x = node("Add", [x, const("half_offset", np.array(0.5, np.float32))], "add_half")
    x = node("Clip", [x, const("zero", np.array(0.0, np.float32)), const("one", np.array(1.0, np.float32))], "clip")
    x = node("Mul", [x, const("scale255", np.array(255.0, np.float32))], "mul_255")
    x = node("Round", [x], "round")
    rgb = node("Cast", [x], "to_u8", to=TensorProto.UINT8)
    alpha = node("ConstantOfShape", [const("alpha_shape", np.array([1, t, hh, ww], np.int64))], "alpha",
                 value=numpy_helper.from_array(np.array([255], np.uint8)))
    cat = node("Concat", [rgb, alpha], "concat", axis=0)
    out = helper.make_node("Transpose", [cat], ["rgba"], name=uniq("transpose"), perm=[1, 2, 3, 0])
    g.node.append(out)
    del g.output[:]
    g.output.append(helper.make_tensor_value_info("rgba", TensorProto.UINT8, [t, hh, ww, ch + 1]))
    onnx.save(m, str(dst))


# ----------------------------------------------------------------------------------------------------------
# The contract (docs/graph-contract.md) and the graph list
# ----------------------------------------------------------------------------------------------------------


def stage_hw(h: int, w: int, stage: int) -> tuple[int, int]:
    down = 1 << (STAGES - 1 - stage)
    return h // down, w // down


def contract(height: int, width: int, seq: int, dim: int, channels: int = 16, sigma_dtype: str = "F32") -> dict:
    """graph key -> (inputs, outputs), each a list of (name, shape, dtype) as docs/graph-contract.md states.
    Names come from contract.py (the mirror of src/core/graph_contract.rs).
    `sigma_dtype` is the dtype of the dmd_step graphs' `sigma`/`sigma_next` ("F32", or "F64" = exact)."""
    h, w = height // 8, width // 8
    F_, (L_, M_, _) = LATENT_FRAMES, HISTORY_SIZES
    frames = (F_ - 1) * 4 + 1
    f32 = "F32"
    c = {}
    hist = [
        (K.LATENTS_HISTORY_SHORT, [1, channels, 2, h, w], f32),
        (K.LATENTS_HISTORY_MID, [1, channels, M_, h, w], f32),
        (K.LATENTS_HISTORY_LONG, [1, channels, L_, h, w], f32),
    ]
    for s in range(STAGES):
        hs, ws = stage_hw(h, w, s)
        lat = [1, channels, F_, hs, ws]
        c[K.denoiser(s)] = (
            [(K.HIDDEN_STATES, lat, f32), (K.TIMESTEP, [1], "I64"), (K.ENCODER_HIDDEN_STATES, [1, seq, dim], f32)]
            + hist,
            [(K.VELOCITY, lat, f32)],
        )
    c[K.VAE_DECODER] = ([(K.LATENTS, [1, channels, F_, h, w], f32)], [(K.VIDEO, [1, 3, frames, height, width], f32)])
    c[K.VAE_ENCODER_IMAGE] = (
        [(K.VIDEO, [1, 3, 1, height, width], f32)],
        [(K.MEAN, [1, channels, 1, h, w], f32), (K.LOGVAR, [1, channels, 1, h, w], f32)],
    )
    c[K.VAE_ENCODER_CLIP] = (
        [(K.VIDEO, [1, 3, frames, height, width], f32)],
        [(K.MEAN, [1, channels, F_, h, w], f32), (K.LOGVAR, [1, channels, F_, h, w], f32)],
    )
    c[K.PYRAMID_DOWNSAMPLE] = ([(K.NOISE, [1, channels, F_, h, w], f32)],
                               [(K.START, [1, channels, F_, h // 4, w // 4], f32)])
    for s in range(1, STAGES):
        hs, ws = stage_hw(h, w, s)
        n = channels * F_ * (hs // 2) * (ws // 2)
        c[K.pyramid_renoise(s)] = (
            [(K.X0, [1, channels, F_, hs // 2, ws // 2], f32), (K.Z, [n, 4], f32)],
            [(K.START, [1, channels, F_, hs, ws], f32)],
        )
    for s in range(STAGES):
        hs, ws = stage_hw(h, w, s)
        lat = [1, channels, F_, hs, ws]
        c[K.dmd_step(s)] = (
            [(K.SAMPLE, lat, f32), (K.VELOCITY, lat, f32), (K.START, lat, f32), (K.SIGMA, [1], sigma_dtype),
             (K.SIGMA_NEXT, [1], sigma_dtype)],
            [(K.X0, lat, f32), (K.NEXT, lat, f32)],
        )
    # Device-loop helpers (issue 6): the history ring and the decode to display bytes on the device.
    n_hist = L_ + M_ + 1
    c[K.HISTORY_PUSH] = (
        [(K.HISTORY, [1, channels, n_hist, h, w], f32), (K.CHUNK, [1, channels, F_, h, w], f32)],
        [(K.HISTORY_NEXT, [1, channels, n_hist, h, w], f32), (K.FIRST_FRAME, [1, channels, 1, h, w], f32)],
    )
    c[K.HISTORY_SLICES] = (
        [(K.HISTORY, [1, channels, n_hist, h, w], f32), (K.ANCHOR, [1, channels, 1, h, w], f32)],
        [(K.SHORT, [1, channels, 2, h, w], f32), (K.MID, [1, channels, M_, h, w], f32),
         (K.LONG, [1, channels, L_, h, w], f32)],
    )
    c[K.VAE_DECODER_RGBA8] = ([(K.LATENTS, [1, channels, F_, h, w], f32)],
                              [(K.RGBA, [frames, height, width, 4], "U8")])
    return c


GRAPH_ORDER = (
    [K.denoiser(s) for s in range(STAGES)]
    + [K.VAE_DECODER, K.VAE_ENCODER_IMAGE, K.VAE_ENCODER_CLIP, K.PYRAMID_DOWNSAMPLE]
    + [K.pyramid_renoise(s) for s in range(1, STAGES)]
    + [K.dmd_step(s) for s in range(STAGES)]
    + [K.HISTORY_PUSH, K.HISTORY_SLICES, K.VAE_DECODER_RGBA8]
)


def sample_inputs(spec_inputs, key: str, gen: torch.Generator) -> list[torch.Tensor]:
    """Seeded random inputs in the value ranges the sampler feeds."""
    out = []
    for name, shape, dtype in spec_inputs:
        if dtype == "I64":  # timestep: an integer in the model's range
            out.append(torch.randint(0, 1000, shape, generator=gen, dtype=torch.int64))
        elif name in ("sigma", "sigma_next"):
            out.append(torch.rand(shape, generator=gen, dtype=torch.float64 if dtype == "F64" else torch.float32))
        elif name == "video":  # pixels in [-1, 1]
            out.append(torch.rand(shape, generator=gen, dtype=torch.float32) * 2 - 1)
        else:
            out.append(torch.randn(shape, generator=gen, dtype=torch.float32))
    return out


# ----------------------------------------------------------------------------------------------------------
# Export + verification
# ----------------------------------------------------------------------------------------------------------


def onnx_io(path: Path) -> tuple[list, list]:
    """(inputs, outputs) of a written ONNX file as (name, static shape, dtype name)."""
    import onnx

    model = onnx.load(str(path), load_external_data=False)

    def spec(values):
        res = []
        for v in values:
            tt = v.type.tensor_type
            dims = []
            for d in tt.shape.dim:
                if not d.HasField("dim_value"):
                    raise ValueError(f"{path.name}: `{v.name}` has a non-static dimension {d}")
                dims.append(int(d.dim_value))
            res.append((v.name, dims, ONNX_ELEM.get(tt.elem_type, f"elem{tt.elem_type}")))
        return res

    return spec(model.graph.input), spec(model.graph.output)


def _strip_debug_metadata(model) -> None:
    """Drops the exporter's per-node debug metadata (Python stack traces with local paths, FX node text,
    module hierarchy): it is most of a small graph's bytes and would make files machine-dependent."""
    import onnx_ir as ir

    for node in ir.traversal.RecursiveGraphIterator(model.graph):
        node.metadata_props.clear()
        node.doc_string = None
        for value in node.outputs:
            value.metadata_props.clear()


def export_one(module, args, input_names, output_names, path: Path, opset: int,
               threshold: int = EXTERNAL_DATA_BYTES, translation_table: dict | None = None,
               optimize: bool = True, name_blocks: bool = False) -> bool:
    """torch.onnx.export (dynamo; the TorchScript exporter fails on RMSNorm) then save. When the weights pass
    `threshold` bytes they go to `<file>.data` (ONNX external data) and True is returned.
    `translation_table`: custom op translations (the fused-attention path); `optimize=False` skips the
    onnxscript optimizer (onnxruntime optimises at session creation anyway; the optimizer takes minutes on the
    unrolled VAE); `name_blocks`: prefix node names with their transformer block (for profiles)."""
    import onnx

    with torch.no_grad():
        prog = torch.onnx.export(
            module, tuple(args), None, input_names=input_names, output_names=output_names, opset_version=opset,
            dynamo=True, optimize=optimize, verbose=False, custom_translation_table=translation_table,
        )
    if name_blocks:
        import fused

        fused.name_nodes_by_block(prog.model)
    _strip_debug_metadata(prog.model)
    weight_bytes = 0
    for value in prog.model.graph.initializers.values():
        if value.const_value is not None:
            weight_bytes += value.const_value.nbytes
    data_path = path.with_name(path.name + ".data")
    if data_path.exists():
        data_path.unlink()
    if weight_bytes > threshold:
        # A >2 GB ModelProto cannot be serialised at all, so let the exporter stream tensors to the data file.
        prog.save(str(path), external_data=True)
        if data_path.exists() and data_path.stat().st_size == 0:
            data_path.unlink()
        return bool(external_data_files(path))
    onnx.save(prog.model_proto, str(path))
    return False


SHARED_DENOISER_DATA = "denoiser_weights.onnx.data"
FUSED_WEIGHTS = "denoiser_weights.safetensors"  # --fused-kernels: the denoisers' shared weights (fused_graph.py)
# --fused-kernels: the fused denoisers are run in onnx.reference against torch only up to this many parameters
# (the tiny model; a 14B forward in numpy is hopeless). Larger models get the checker + I/O checks.
FUSED_REFERENCE_MAX_PARAMS = 50_000_000
# --fused-weights: the shared weights' sha256 goes into the manifest at any size. The Rust loader hashes every file
# it loads when verify_hashes is on (src/core/runtime/session.rs check_sized_file), one streamed pass per file.
EXTERNAL_ALIGN = 4096  # page-aligned offsets let onnxruntime map tensors instead of copying them


def _external_tensors(model):
    import onnx

    for t in model.graph.initializer:
        if t.data_location == onnx.TensorProto.EXTERNAL:
            yield t
    for node in model.graph.node:  # Constant nodes can carry external tensors too
        for attr in node.attribute:
            if attr.HasField("t") and attr.t.data_location == onnx.TensorProto.EXTERNAL:
                yield attr.t


def external_data_files(path: Path) -> list[str]:
    """Names of the external data files an ONNX file refers to."""
    import onnx

    model = onnx.load(str(path), load_external_data=False)
    names = {e.value for t in _external_tensors(model) for e in t.external_data if e.key == "location"}
    return sorted(names)


def share_external_weights(out: Path, keys: list[str], shared_name: str) -> None:
    """Moves the external tensors of several graphs into one data file, storing identical bytes once.

    The per-stage denoiser graphs hold the same transformer weights (28.6 GB for Helios 14B in bf16);
    separate data files would triple the disk size. Each graph's TensorProtos are re-pointed at
    (shared file, offset, length); tensors that differ (per-stage constants) are appended too."""
    import onnx

    index: dict[str, tuple[int, int]] = {}
    tmp = out / (shared_name + ".tmp")
    old_files: set[Path] = set()
    models = {}
    with open(tmp, "wb") as dst:
        for key in keys:
            path = out / f"{key}.onnx"
            model = onnx.load(str(path), load_external_data=False)
            for t in _external_tensors(model):
                info = {e.key: e.value for e in t.external_data}
                src = out / info["location"]
                old_files.add(src)
                with open(src, "rb") as f:
                    f.seek(int(info.get("offset", 0)))
                    data = f.read(int(info["length"])) if "length" in info else f.read()
                digest = hashlib.sha256(data).hexdigest()
                if digest not in index:
                    pos = dst.tell()
                    pad = (-pos) % EXTERNAL_ALIGN
                    dst.write(b"\0" * pad)
                    index[digest] = (pos + pad, len(data))
                    dst.write(data)
                offset, length = index[digest]
                del t.external_data[:]
                for k, v in (("location", shared_name), ("offset", str(offset)), ("length", str(length))):
                    entry = t.external_data.add()
                    entry.key, entry.value = k, v
            models[key] = model
    for f in old_files:
        f.unlink()
    tmp.rename(out / shared_name)
    for key, model in models.items():
        onnx.save(model, str(out / f"{key}.onnx"))
    log(f"denoiser weights shared in {shared_name}: {(out / shared_name).stat().st_size / 1e6:.1f} MB "
        f"({len(index)} tensors)")


def verify_one(key: str, module, path: Path, spec, dtype: str, gen: torch.Generator, run_ort: bool,
               provider: str = "cpu", device: str = "cpu", reference_ops: list | None = None) -> dict:
    """checker + contract I/O + onnxruntime vs torch. Returns a result dict with `ok`.
    `reference_ops`: extra onnx.reference OpRun classes (custom-domain ops of the fused export) for the bf16
    fallback. uint8 outputs (RGBA8 frames) may differ by one level where the fp32 decoder's last-bit
    differences straddle a rounding boundary; the count is reported."""
    import onnx
    import onnxruntime as ort

    res = {"key": key, "ok": True, "notes": []}
    onnx.checker.check_model(str(path), full_check=True)
    ins, outs = onnx_io(path)
    want_in, want_out = spec
    if ins != [(n, list(s), d) for n, s, d in want_in] or outs != [(n, list(s), d) for n, s, d in want_out]:
        res["ok"] = False
        res["notes"].append(f"I/O differs from the contract:\n  got  {ins} -> {outs}\n  want {want_in} -> {want_out}")
        return res
    if not run_ort:
        res["notes"].append("onnxruntime run skipped by --verify")
        return res
    args = sample_inputs(want_in, key, gen)
    with torch.no_grad():
        ref = module(*[a.to(device) for a in args])
    ref = ref if isinstance(ref, tuple) else (ref,)
    so = ort.SessionOptions()
    so.log_severity_level = 3
    providers = ["CUDAExecutionProvider"] if provider == "cuda" else ["CPUExecutionProvider"]
    if provider == "cuda" and "CUDAExecutionProvider" not in ort.get_available_providers():
        raise RuntimeError("--ort-provider cuda: this onnxruntime has no CUDAExecutionProvider")
    feeds = {name: a.cpu().numpy() for (name, _, _), a in zip(want_in, args)}
    t0 = time.time()
    try:
        if uses_helios_ops(path):
            got = run_cpu(path, feeds)
            res["engine"] = "onnx.reference (com.helios operators: tools/export/vae_fused.py reference kernels)"
        else:
            sess = ort.InferenceSession(str(path), so, providers=providers)
            got = sess.run(None, feeds)
            res["engine"] = f"onnxruntime {providers[0]}"
    except Exception as e:
        if not (dtype == "bf16" and "NOT_IMPLEMENTED" in str(e)):
            raise
        # ORT's CPU provider has no bf16 Conv/MatMul. The ONNX reference evaluator (numpy + ml_dtypes) still
        # checks the graph's semantics; it says nothing about whether a GPU provider runs the file.
        from onnx.reference import ReferenceEvaluator

        got = ReferenceEvaluator(str(path), new_ops=reference_ops).run(None, feeds)
        res["engine"] = "onnx.reference (onnxruntime CPU: " + str(e).split(":")[-1].strip() + ")"
        res["notes"].append("onnxruntime CPU cannot run this bf16 graph; checked with onnx.reference instead")
    res["ort_seconds"] = time.time() - t0
    errs, mags = [], []
    for (name, _, odt), r, g in zip(want_out, ref, got):
        r = r.detach().cpu().double().numpy()
        diff = np.abs(r - g.astype(np.float64))
        errs.append(float(diff.max()))
        mags.append(float(np.abs(r).max()))
        if odt == "U8":
            res["u8_values_off_by_one"] = int((diff == 1).sum())
            res["u8_values"] = int(diff.size)
    res["max_abs_err"] = max(errs)
    res["max_abs_ref"] = max(mags)
    tol = max(TOLERANCE[dtype] * max(mags), 1e-6)
    if any(d == "U8" for _, _, d in want_out):
        tol = 1.0
    res["tol"] = tol
    if not all(np.isfinite(g).all() for g in got):
        res["ok"] = False
        res["notes"].append("onnxruntime output has non-finite values")
    if res["max_abs_err"] > tol:
        res["ok"] = False
        res["notes"].append(f"max abs error {res['max_abs_err']:.3e} > tolerance {tol:.3e}")
    return res


def build_modules(key: str, transformer, vae, scheduler, L: torch.Tensor, dtype: str):
    dt = DTYPES[dtype]
    if key.startswith(K.DENOISER_PREFIX):
        return DenoiserStage(transformer).eval()
    if key == K.VAE_DECODER:
        return VaeDecoder(vae).eval()
    if key in (K.VAE_ENCODER_IMAGE, K.VAE_ENCODER_CLIP):
        return VaeEncoder(vae).eval()
    if key == K.PYRAMID_DOWNSAMPLE:
        return PyramidDownsample().eval()
    if key.startswith(K.RENOISE_PREFIX):
        s = int(key[-1])
        alpha, beta = renoise_coefficients(scheduler, s)
        return PyramidRenoise(L, alpha, beta, dt).eval()
    if key.startswith(K.DMD_STEP_PREFIX):
        s = int(key[-1])
        return DmdStep(dt, torch.float32 if s == 0 else dt).eval()
    if key == K.HISTORY_PUSH:
        return HistoryPush().eval()
    if key == K.HISTORY_SLICES:
        return HistorySlices().eval()
    if key == K.VAE_DECODER_RGBA8:
        return VaeDecoderRgba8(vae).eval()
    raise KeyError(key)


# ----------------------------------------------------------------------------------------------------------
# manifest.ron
# ----------------------------------------------------------------------------------------------------------


def ron_str(s: str) -> str:
    return '"' + s.replace("\\", "\\\\").replace('"', '\\"') + '"'


def ron_float(x: float) -> str:
    r = repr(float(x))
    if not any(ch in r for ch in ".eE") or r in ("nan", "inf", "-inf"):
        if r in ("nan", "inf", "-inf"):
            raise ValueError(f"non-finite float {r} in manifest")
        r += ".0"
    return r


def ron_floats(values) -> str:
    return "[" + ", ".join(ron_float(v) for v in values) + "]"


def ron_tensor_list(specs, indent: str) -> str:
    lines = [f"{indent}    (name: {ron_str(n)}, shape: [{', '.join(str(d) for d in s)}], dtype: {d})," for n, s, d in specs]
    return "[\n" + "\n".join(lines) + f"\n{indent}]"


def ron_external_data(out: Path, graphs: dict, shared_weights: dict | None) -> list[str]:
    """The optional `external_data: [...]` field (`DataFileSpec`): every ONNX external-data file the graphs read,
    with its sha256 and size, so the loader can verify weights as it verifies graphs. The shared weights file has
    its own field. Absent when the graphs carry their weights inline."""
    shared = shared_weights["file"] if shared_weights else None
    names = sorted({name for g in graphs.values() if (out / g["file"]).exists()
                    for name in external_data_files(out / g["file"]) if name != shared})
    if not names:
        return []
    lines = ["    external_data: ["]
    for name in names:
        path = out / name
        if not path.exists():
            raise SystemExit(f"{path}: external data of a graph is missing")
        lines.append(f"        (file: {ron_str(name)}, sha256: {ron_str(sha256_file(path))}, "
                     f"bytes: {path.stat().st_size}),")
    return lines + ["    ],"]


def write_manifest(out: Path, meta: dict) -> Path:
    """Writes manifest.ron in the field order of src/core/manifest.rs `ModelManifest`."""
    s = meta["scheduler"]
    emb = meta["embeddings"]
    lines = [
        "(",
        "    format_version: 1,",
        f"    name: {ron_str(meta['name'])},",
        f"    source: {ron_str(meta['source'])},",
        f"    diffusers_version: {ron_str(meta['diffusers_version'])},",
        f"    opset: {meta['opset']},",
        f"    precision: {meta['precision']},",
        f"    height: {meta['height']},",
        f"    width: {meta['width']},",
        f"    latent_channels: {meta['latent_channels']},",
        f"    latent_frames_per_chunk: {LATENT_FRAMES},",
        f"    vae_scale_factor_temporal: {meta['vae_scale_factor_temporal']},",
        f"    vae_scale_factor_spatial: {meta['vae_scale_factor_spatial']},",
        f"    history_sizes: [{', '.join(str(v) for v in HISTORY_SIZES)}],",
        f"    pyramid_steps: [{', '.join(str(v) for v in PYRAMID_STEPS)}],",
        f"    amplify_first_chunk: {'true' if AMPLIFY_FIRST_CHUNK else 'false'},",
        "    scheduler: (",
        f"        num_train_timesteps: {int(s['num_train_timesteps'])},",
        f"        shift: {ron_float(s['shift'])},",
        f"        stages: {int(s['stages'])},",
        f"        stage_range: {ron_floats(s['stage_range'])},",
        f"        gamma: {ron_float(s['gamma'])},",
        f"        use_dynamic_shifting: {'true' if s['use_dynamic_shifting'] else 'false'},",
        f"        time_shift_type: {s['time_shift_type']},",
        f"        base_image_seq_len: {ron_float(s['base_image_seq_len'])},",
        f"        max_image_seq_len: {ron_float(s['max_image_seq_len'])},",
        f"        base_shift: {ron_float(s['base_shift'])},",
        f"        max_shift: {ron_float(s['max_shift'])},",
        "    ),",
        "    block_noise_cholesky: [" + ", ".join(ron_floats(row) for row in meta["cholesky"]) + "],",
        f"    latents_mean: {ron_floats(meta['latents_mean'])},",
        f"    latents_std: {ron_floats(meta['latents_std'])},",
        "    embeddings: (",
        f"        file: {ron_str(emb['file'])},",
        f"        sha256: {ron_str(emb['sha256'])},",
        f"        seq_len: {emb['seq_len']},",
        f"        dim: {emb['dim']},",
        "    ),",
        *ron_text_encoder(meta.get("text_encoder")),
        *ron_shared_weights(meta.get("shared_weights")),
        *ron_external_data(out, meta["graphs"], meta.get("shared_weights")),
        "    graphs: {",
    ]
    for key, g in meta["graphs"].items():
        lines += [
            f"        {ron_str(key)}: (",
            f"            file: {ron_str(g['file'])},",
            f"            sha256: {ron_str(g['sha256'])},",
            f"            inputs: {ron_tensor_list(g['inputs'], '            ')},",
            f"            outputs: {ron_tensor_list(g['outputs'], '            ')},",
            "        ),",
        ]
    lines += ["    },", ")", ""]
    path = out / "manifest.ron"
    path.write_text("\n".join(lines))
    return path


def scheduler_meta(scheduler) -> dict:
    cfg = scheduler.config
    tst = cfg.get("time_shift_type", "linear")
    return {
        "num_train_timesteps": cfg.num_train_timesteps,
        "shift": cfg.shift,
        "stages": cfg.stages,
        "stage_range": list(cfg.stage_range),
        "gamma": cfg.gamma,
        "use_dynamic_shifting": bool(cfg.use_dynamic_shifting),
        "time_shift_type": {"linear": "Linear", "exponential": "Exponential"}[tst],
        # Read with the same defaults as the pipeline's calculate_shift call.
        "base_image_seq_len": cfg.get("base_image_seq_len", 256),
        "max_image_seq_len": cfg.get("max_image_seq_len", 4096),
        "base_shift": cfg.get("base_shift", 0.5),
        "max_shift": cfg.get("max_shift", 1.15),
    }


def ron_text_encoder(te: dict | None) -> list[str]:
    """The optional `text_encoder: Some((...))` field of src/core/manifest.rs (`TextEncoderSpec`)."""
    if not te:
        return []
    return [
        "    text_encoder: Some((",
        f"        file: {ron_str(te['file'])},",
        f"        tokenizer: {ron_str(te['tokenizer'])},",
        f"        sha256: {ron_str(te['sha256'])},",
        f"        tokenizer_sha256: {ron_str(te['tokenizer_sha256'])},",
        f"        max_tokens: {te['max_tokens']},",
        "    )),",
    ]


def ron_shared_weights(sw: dict | None) -> list[str]:
    """The optional `shared_weights: Some((...))` field (`--fused-kernels`): one weights file that the listed
    denoiser graphs read as ONNX external data (tools/export/fused_graph.py). Absent otherwise."""
    if not sw:
        return []
    graphs = ", ".join(ron_str(g) for g in sw["graphs"])
    return [f"    shared_weights: Some((file: {ron_str(sw['file'])}, sha256: {ron_str(sw['sha256'])}, "
            f"graphs: [{graphs}])),"]


def record_shared_weights(out: Path, sw: dict) -> None:
    """Adds or replaces the shared_weights field of an existing manifest.ron (after `embeddings` and the optional
    `text_encoder`, where write_manifest puts it)."""
    path = out / "manifest.ron"
    text = re.sub(r"    shared_weights: Some\(\(.*?\)\),\n", "", path.read_text(), count=1)
    m = re.search(r"\n    graphs: \{\n", text)
    if m is None:
        raise SystemExit(f"{path}: no graphs field to put shared_weights before")
    path.write_text(text[:m.start() + 1] + ron_shared_weights(sw)[0] + "\n" + text[m.start() + 1:])


def text_encoder_meta(out: Path, src: Path, seq: int, dim: int) -> dict:
    """`--text-encoder-dir`: text_encoder.onnx + tokenizer.json of tools/text/export_text_encoder.py, copied into
    `out` and checked against the prompt shape (one row of the encoder's output width)."""
    import shutil

    import onnx

    names = ("text_encoder.onnx", "tokenizer.json")
    for name in names:
        if not (src / name).exists():
            raise SystemExit(f"--text-encoder-dir: {src / name} missing (run tools/text/export_text_encoder.py)")
        if (src / name).resolve() != (out / name).resolve():
            shutil.copyfile(src / name, out / name)
    graph = onnx.load(str(out / names[0]), load_external_data=False)
    outs = {o.name: [d.dim_value for d in o.type.tensor_type.shape.dim] for o in graph.graph.output}
    width = outs.get("embedding", [0, 0])[-1]
    if seq != 1 or width != dim:
        raise SystemExit(f"--text-encoder-dir: the encoder gives [1, {width}] prompts, the model takes [{seq}, {dim}] "
                         "(use --text-seq-len 1 and a transformer text_dim equal to the encoder width)")
    return {"file": names[0], "tokenizer": names[1], "sha256": sha256_file(out / names[0]),
            "tokenizer_sha256": sha256_file(out / names[1]), "max_tokens": 128}


def record_text_encoder(out: Path, te: dict) -> None:
    """Adds or replaces the text_encoder field of an existing manifest.ron (after `embeddings`)."""
    path = out / "manifest.ron"
    text = re.sub(r"    text_encoder: Some\(\(\n.*?\n    \)\),\n", "", path.read_text(), count=1, flags=re.S)
    m = re.search(r"    embeddings: \(\n.*?\n    \),\n", text, flags=re.S)
    if m is None:
        raise SystemExit(f"{path}: no embeddings field to put text_encoder after")
    path.write_text(text[:m.end()] + "\n".join(ron_text_encoder(te)) + "\n" + text[m.end():])


def embeddings_meta(out: Path, seq: int, dim: int) -> dict:
    from safetensors import safe_open

    path = out / "embeddings.safetensors"
    if not path.exists():
        log("warning: embeddings.safetensors missing; manifest gets an empty sha256 (run `embed`)")
        return {"file": path.name, "sha256": "", "seq_len": seq, "dim": dim}
    with safe_open(str(path), "pt") as f:
        for k in f.keys():
            shape = list(f.get_slice(k).get_shape())
            if shape != [seq, dim]:
                raise RuntimeError(f"embedding `{k}` has shape {shape}, graphs expect [{seq}, {dim}]")
    return {"file": path.name, "sha256": sha256_file(path), "seq_len": seq, "dim": dim}


# ----------------------------------------------------------------------------------------------------------
# Subcommands
# ----------------------------------------------------------------------------------------------------------


def resolve_common(args) -> None:
    if args.height is None:
        args.height = 64 if args.tiny else 384
    if args.width is None:
        args.width = 64 if args.tiny else 640
    if args.text_seq_len is None:
        if getattr(args, "text_encoder", "checkpoint") == "minilm":
            args.text_seq_len = 1  # helios-nano: one sentence-embedding token
        else:
            args.text_seq_len = 16 if args.tiny else 512
    for v, n in ((args.height, "height"), (args.width, "width")):
        if v <= 0 or v % 64:
            raise SystemExit(f"--{n} {v} must be a positive multiple of 64 (3 pyramid stages x patch 2 x VAE 8)")
    if args.name is None:
        args.name = Path(args.out).name
    if args.command in ("graphs", "all"):
        if args.opset is None:
            args.opset = 23 if args.fused_attention == "attn23" else 22 if args.dtype == "bf16" else 18
        if args.dtype == "bf16" and args.opset < 22:
            raise SystemExit("--dtype bf16 needs --opset 22 or later (ONNX Conv accepts bfloat16 from opset 22)")
        if args.fused_attention == "attn23" and args.opset < 23:
            raise SystemExit("--fused-attention attn23 needs --opset 23 (ONNX Attention)")
        if args.fused_kernels and args.fused_attention == "attn23":
            raise SystemExit("--fused-kernels writes its own denoisers (MultiHeadAttention); drop --fused-attention")
        if args.fused_kernels and args.dtype not in ("fp32", "bf16"):
            raise SystemExit("--fused-kernels supports --dtype fp32 or bf16 (the com.helios operators' T)")
        if args.fused_weights:
            if not args.fused_kernels:
                raise SystemExit("--fused-weights goes with --fused-kernels (it is the fused denoisers' weights file)")
            if args.tiny:
                raise SystemExit("--fused-weights needs --checkpoint (its transformer/config.json), not --tiny")
            # (--jobs workers never read it, and it may have been moved into --out by then)
            if not args.export_only and not Path(args.fused_weights).is_file():
                raise SystemExit(f"--fused-weights {args.fused_weights}: no such file")
        if args.sigma_dtype is None:
            # f64 is what the scheduler computes in (exact); the shipped helios-tiny keeps its f32 graphs.
            args.sigma_dtype = "f32" if args.tiny else "f64"
        if args.merge_manifest and not args.only:
            raise SystemExit("--merge-manifest goes with --only")


class ModelSource:
    """Where weights come from: a checkpoint dir, or the tiny model materialised in a diffusers dir."""

    def __init__(self, args):
        self._tmp = None
        if args.tiny:
            if args.save_checkpoint:
                self.dir = Path(args.save_checkpoint)
            else:
                self._tmp = tempfile.TemporaryDirectory(prefix="helios-tiny-")
                self.dir = Path(self._tmp.name)
            build_tiny_pipeline_dir(args.seed, self.dir)
            log(f"tiny checkpoint (seed {args.seed}) -> {self.dir}")
        else:
            self.dir = Path(args.checkpoint)
            if not (self.dir / "transformer").is_dir():
                raise SystemExit(f"{self.dir} has no transformer/ subfolder (not a diffusers Helios checkpoint)")

    def close(self):
        if self._tmp is not None:
            self._tmp.cleanup()


def uses_helios_ops(path: Path) -> bool:
    """Whether a graph has com.helios operators (the fused export): onnxruntime's Python package cannot run it."""
    import onnx

    return any(n.domain == "com.helios" for n in onnx.load(str(path), load_external_data=False).graph.node)


def run_cpu(path: Path, feeds: dict) -> list:
    """A graph on the CPU: onnxruntime, or onnx.reference with the fused operators' reference kernels when it
    uses com.helios operators."""
    if uses_helios_ops(path):
        from onnx.reference import ReferenceEvaluator

        import vae_fused

        return ReferenceEvaluator(str(path), new_ops=vae_fused.reference_ops()).run(None, feeds)
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.log_severity_level = 3
    return ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"]).run(None, feeds)


def check_rgba8_mapping(out: Path, decoder_inputs, seed: int) -> str:
    """vae_decoder and vae_decoder_rgba8 run on the same latents (onnxruntime, or onnx.reference for the fused
    VAE); the bytes must equal `video_to_rgba8` of the decoder's own video exactly (checks the appended nodes, free
    of VAE noise)."""
    (name, shape, _), = decoder_inputs
    x = torch.randn(shape, generator=torch.Generator().manual_seed(seed + 7)).numpy()
    video = run_cpu(out / "vae_decoder.onnx", {name: x})[0]
    rgba = run_cpu(out / "vae_decoder_rgba8.onnx", {name: x})[0]
    want = video_to_rgba8(torch.from_numpy(video)).numpy()
    if rgba.shape != want.shape or not np.array_equal(rgba, want):
        raise RuntimeError(f"rgba8 bytes != video_to_rgba8(vae_decoder video): "
                           f"{int((rgba != want).sum()) if rgba.shape == want.shape else rgba.shape} differ")
    return f"rgba8 mapping: bit-exact against video_to_rgba8 of vae_decoder's own output ({want.size} bytes)"


def _ron_graph_entry(key: str, g: dict) -> list[str]:
    """One `graphs` entry of manifest.ron, formatted exactly as `write_manifest` writes it."""
    return [
        f"        {ron_str(key)}: (",
        f"            file: {ron_str(g['file'])},",
        f"            sha256: {ron_str(g['sha256'])},",
        f"            inputs: {ron_tensor_list(g['inputs'], '            ')},",
        f"            outputs: {ron_tensor_list(g['outputs'], '            ')},",
        "        ),",
    ]


def merge_manifest_graphs(out: Path, graphs: dict) -> Path:
    """Adds (or replaces) graph entries in an existing manifest.ron, leaving every other line as it is
    (`--only KEYS --merge-manifest`: new graphs for a shipped model without re-exporting the others)."""
    path = out / "manifest.ron"
    if not path.exists():
        raise SystemExit(f"--merge-manifest: {path} does not exist")
    text = path.read_text()
    for key, g in graphs.items():
        entry = "\n".join(_ron_graph_entry(key, g)) + "\n"
        pattern = re.compile(r"        " + re.escape(ron_str(key)) + r": \(\n.*?\n        \),\n", re.S)
        if pattern.search(text):
            text = pattern.sub(lambda _m: entry, text, count=1)
        else:
            end = text.rindex("    },\n)")
            text = text[:end] + entry + text[end:]
    path.write_text(text)
    return path


def export_in_subprocesses(keys: list[str], args, argv: list[str], out: Path) -> dict:
    """Runs `export.py <argv> --only KEY --export-only` for every key, at most `args.jobs` at a time; each
    process loads the model itself. Returns key -> (seconds, external data?) like the serial loop."""
    import subprocess

    pending, running, done = list(keys), {}, {}
    log(f"exporting {len(keys)} graphs in up to {args.jobs} processes")
    while pending or running:
        while pending and len(running) < args.jobs:
            key = pending.pop(0)
            cmd = [sys.executable, "-u", str(Path(__file__).resolve()), "graphs", *argv[1:], "--only", key,
                   "--export-only", "--jobs", "1"]
            log_path = out / f".export_{key}.log"
            with open(log_path, "w") as f:
                running[key] = (subprocess.Popen(cmd, stdout=f, stderr=subprocess.STDOUT), time.time(), log_path)
        for key, (proc, t0, log_path) in list(running.items()):
            if proc.poll() is None:
                continue
            text = log_path.read_text(errors="replace")
            log_path.unlink()
            del running[key]
            if proc.returncode != 0:
                for other, _, _ in running.values():
                    other.kill()
                raise SystemExit(f"export of {key} failed (exit {proc.returncode}):\n{text[-4000:]}")
            path = out / f"{key}.onnx"
            done[key] = (time.time() - t0, bool(external_data_files(path)))
            log(f"exported {key} in {done[key][0]:.1f}s (own process)" + (" (external data)" if done[key][1] else ""))
        time.sleep(0.2)
    return done


def read_safetensors_header(path: Path) -> tuple[int, dict]:
    """(header length n, header JSON) of a safetensors file; the data section starts at 8 + n."""
    import json
    import struct

    size = path.stat().st_size
    with open(path, "rb") as f:
        raw = f.read(8)
        if len(raw) != 8:
            raise SystemExit(f"{path}: {size} bytes, not a safetensors file")
        n = struct.unpack("<Q", raw)[0]
        if n > min(size - 8, 100_000_000):
            raise SystemExit(f"{path}: header length {n} does not fit a {size}-byte file (not a safetensors file?)")
        try:
            return n, json.loads(f.read(n))
        except ValueError as e:
            raise SystemExit(f"{path}: unreadable safetensors header ({e})") from None


def check_fused_weights_file(path: Path, layout_head: bytes, dtype: str) -> int:
    """The file given to --fused-weights must be exactly what fused_graph.write_shared_weights writes for this
    transformer and dtype: every tensor name, dtype, shape and data offset as `weight_layout` plans them, and the
    same header length (the graphs store absolute offsets = 8 + header length + data offset). Raises SystemExit
    listing the differences otherwise. Returns the file size."""
    import json

    size = path.stat().st_size
    n, got = read_safetensors_header(path)
    want = json.loads(layout_head[8:])
    problems = []
    got_dtype = (got.get("__metadata__") or {}).get("dtype")
    if got_dtype != dtype:
        problems.append(f"written for T={got_dtype!r} (__metadata__.dtype), the export's --dtype is {dtype!r}")
    got_t = {k: v for k, v in got.items() if k != "__metadata__"}
    want_t = {k: v for k, v in want.items() if k != "__metadata__"}
    missing, extra = sorted(set(want_t) - set(got_t)), sorted(set(got_t) - set(want_t))
    if missing:
        problems.append(f"{len(missing)} tensors the graphs need are missing, e.g. {missing[:6]}")
    if extra:
        problems.append(f"{len(extra)} tensors the graphs do not know, e.g. {extra[:6]}")
    differ = [f"{k}: file {got_t[k]} != expected {want_t[k]}" for k in sorted(set(got_t) & set(want_t))
              if [got_t[k].get(f) for f in ("dtype", "shape", "data_offsets")]
              != [want_t[k][f] for f in ("dtype", "shape", "data_offsets")]]
    if differ:
        problems.append(f"{len(differ)} tensors differ in dtype/shape/offsets:\n    " + "\n    ".join(differ[:8]))
    if not problems and n != len(layout_head) - 8:
        problems.append(f"header length {n} != {len(layout_head) - 8} (the graphs' absolute offsets would be off)")
    end = 8 + n + max((v["data_offsets"][1] for v in got_t.values()), default=0)
    if not problems and size != end:
        problems.append(f"file size {size} != {end} = end of the last tensor (truncated or padded)")
    if problems:
        raise SystemExit(f"--fused-weights {path}: not the weights the fused denoiser graphs of this checkpoint's "
                         f"transformer expect ({len(want_t)} tensors, T={dtype}):\n  " + "\n  ".join(problems))
    return size


def place_fused_weights(src: Path, out: Path) -> str:
    """Moves `src` into the model directory as FUSED_WEIGHTS without copying it where possible (a rename on the
    same file system; the 14B model's 28.6 GB must not exist twice on the device's disk). Not a hard link: onnx's
    checker (and so this export's verification) refuses external data whose file has more than one link (its
    "hardlink attack" check). Returns what was done."""
    import os
    import shutil

    dst = out / FUSED_WEIGHTS
    if dst.exists() and os.path.samefile(src, dst):
        what = f"{dst} is the given file"
    else:
        if dst.exists() or dst.is_symlink():
            dst.unlink()  # stale from an earlier export
        try:
            os.replace(src, dst)
            what = f"moved (renamed) {src} -> {dst}"
        except OSError as e:  # another file system: shutil copies, then deletes the source
            log(f"rename {src} -> {dst} failed ({e}); copying it across file systems")
            shutil.move(str(src), str(dst))
            what = f"moved (copied, then the source deleted) {src} -> {dst}"
    if dst.stat().st_nlink > 1:
        raise SystemExit(f"{dst} has {dst.stat().st_nlink} hard links: onnx's checker refuses external data with "
                         "more than one; remove the other links (or copy the file) first")
    return what


def fused_denoisers_from_file(transformer, weights: Path, out: Path, dtype: str, height: int, width: int, seq: int,
                              stages: list[int]) -> dict:
    """`--fused-weights`: fused_graph.export_denoisers without writing the weights. The graphs are built from the
    module's structure alone (`transformer` may be on the meta device) and point into `weights`, which is checked
    against the layout the builder plans, then moved into `out` (`place_fused_weights`). Same summary as
    export_denoisers, with the file's sha256."""
    import onnx

    import fused_graph

    fused_graph.register_schemas()
    meta = fused_graph.describe(transformer)
    t0 = time.time()
    entries, head = fused_graph.weight_layout(transformer, dtype)
    size = check_fused_weights_file(weights, head, dtype)
    log(f"--fused-weights {weights}: {size} bytes, {len(entries)} tensors, layout as the builder expects; "
        + place_fused_weights(weights, out))
    index = {e.name: {"param": e.param, "dtype": fused_graph.ST_DTYPE[e.dtype], "shape": list(e.shape),
                      "offset": e.offset, "length": e.length} for e in entries}
    sha = sha256_file(out / FUSED_WEIGHTS)
    summary = {
        "dtype": dtype, "height": height, "width": width, "text_seq_len": seq, "layers": meta.layers,
        "shared_weights": {"file": FUSED_WEIGHTS, "sha256": sha, "bytes": size, "tensors": len(index),
                           "seconds": round(time.time() - t0, 2), "source": str(weights)},
        "graphs": {},
    }
    spec = contract(height, width, seq, meta.text_dim, meta.in_channels)
    model = None
    for s in stages:
        key = f"denoiser_stage{s}"
        path = out / f"{key}.onnx"
        model = fused_graph.build_stage(meta, index, s, height, width, seq, dtype)
        onnx.save(model, str(path))
        onnx.checker.check_model(str(path), full_check=True)
        ins, outs = onnx_io(path)
        want_in, want_out = spec[key]
        if ins != [(n, list(sh), d) for n, sh, d in want_in] or outs != [(n, list(sh), d) for n, sh, d in want_out]:
            raise RuntimeError(f"{key}: I/O {ins} -> {outs} differs from the contract {spec[key]}")
        if external_data_files(path) != [FUSED_WEIGHTS]:
            raise RuntimeError(f"{key}: external data {external_data_files(path)}")
        # Independent of weight_layout: every external tensor against the file's own header.
        if fused_graph.check_external_references(path, out / FUSED_WEIGHTS) != len(index):
            raise RuntimeError(f"{key}: does not reference every tensor of {FUSED_WEIGHTS}")
        summary["graphs"][key] = {"file": path.name, "sha256": sha256_file(path), "bytes": path.stat().st_size,
                                  "inputs": ins, "outputs": outs, "nodes": len(model.graph.node),
                                  "ops": fused_graph.op_census(model)}
    summary["per_block_ops"] = fused_graph.op_census(model, "blocks.0/") if model is not None else {}
    summary["per_block_nodes"] = sum(summary["per_block_ops"].values())
    return summary


def run_graphs(args, source: ModelSource, argv: list[str]) -> bool:
    import diffusers

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    dyn = None if args.dynamic_shifting is None else args.dynamic_shifting == "true"
    if args.tiny and dyn is None:
        dyn = True
    keys = GRAPH_ORDER if not args.only else [k for k in GRAPH_ORDER if k in args.only.split(",")]
    if args.skip:
        keys = [k for k in keys if k not in args.skip.split(",")]
    # --fused-weights: the checkpoint has no transformer weights (only its config.json); every process, the --jobs
    # workers included, builds the transformer on the meta device. Only the fused denoisers need it beyond its
    # config, and they take their weights from the file. A --jobs worker that exports no denoiser never needs
    # the weights either (the other graphs read only the transformer's config): meta too, instead of each of
    # them loading the whole transformer.
    on_meta = bool(args.fused_weights)
    meta_only = on_meta or (args.export_only and not any(k.startswith("denoiser_stage") for k in keys))
    transformer, vae, scheduler = load_models(source.dir, args.dtype, args.device, dyn, transformer_on_meta=meta_only)
    if scheduler.config.stages != STAGES:
        raise SystemExit(f"scheduler has {scheduler.config.stages} stages; the graphs are for {STAGES}")
    if tuple(transformer.config.patch_size) != (1, 2, 2):
        raise SystemExit(f"patch_size {transformer.config.patch_size} unsupported (must be (1, 2, 2))")
    text_dim = transformer.config.text_dim
    channels = vae.config.z_dim
    if transformer.config.in_channels != channels:
        raise SystemExit("transformer in_channels != vae z_dim")
    source_name = args.cholesky_source or ("probe" if args.tiny else "native")
    L, L_desc = block_noise_cholesky(scheduler, args.cholesky_device, source_name)
    log(f"block-noise Cholesky used ({L_desc}): {L.tolist()}")
    spec = contract(args.height, args.width, args.text_seq_len, text_dim, channels,
                    sigma_dtype=args.sigma_dtype.upper())
    if "vae_decoder_rgba8" in keys and "vae_decoder" not in keys and not (out / "vae_decoder.onnx").exists():
        raise SystemExit("vae_decoder_rgba8 is made from vae_decoder.onnx: export vae_decoder too")
    fused_mode = args.fused_attention
    if fused_mode:
        import fused
    # --fused-kernels: the denoisers are written by fused_graph.py (com.helios operators, one shared
    # safetensors weights file), not traced; every other graph is exported as before.
    fused_keys = [k for k in keys if k.startswith("denoiser_stage")] if args.fused_kernels else []
    if fused_keys:
        import fused_graph
    threshold = args.external_data_threshold
    all_denoisers = all(f"denoiser_stage{s}" in keys for s in range(STAGES))
    if (out / SHARED_DENOISER_DATA).exists() and all_denoisers:
        (out / SHARED_DENOISER_DATA).unlink()  # stale from an earlier export
    if not args.fused_kernels and (out / FUSED_WEIGHTS).exists() and all_denoisers:
        (out / FUSED_WEIGHTS).unlink()  # stale from an earlier --fused-kernels export
    exported = {}
    if args.fused_weights and not fused_keys and not args.export_only:
        log("--fused-weights ignored: no denoiser graph is exported")
    if fused_keys:
        t0 = time.time()
        if args.fused_weights:
            fused_summary = fused_denoisers_from_file(transformer, Path(args.fused_weights), out, args.dtype,
                                                      args.height, args.width, args.text_seq_len,
                                                      [int(k[-1]) for k in fused_keys])
        else:
            fused_summary = fused_graph.export_denoisers(transformer, out, args.dtype, args.height, args.width,
                                                         args.text_seq_len, stages=[int(k[-1]) for k in fused_keys])
        for key in fused_keys:
            exported[key] = (time.time() - t0, False)
        sw = fused_summary["shared_weights"]
        log(f"wrote fused denoisers {fused_keys} in {time.time() - t0:.1f}s: "
            f"{fused_summary['per_block_nodes']} nodes per block; {sw['file']} {sw['bytes'] / 1e6:.1f} MB "
            f"({sw['tensors']} tensors)")
    if args.jobs > 1 and not args.export_only:
        # Each key in its own process (the exporter is single-threaded Python; minutes per graph at full size).
        exported.update(export_in_subprocesses([k for k in keys if k != "vae_decoder_rgba8" and k not in exported],
                                               args, argv, out))
    for key in keys:
        if key in exported:
            continue
        ins, outs = spec[key]
        path = out / f"{key}.onnx"
        t0 = time.time()
        export_args = [a.to(args.device) for a in sample_inputs(ins, key, torch.Generator().manual_seed(args.seed))]
        module = build_modules(key, transformer, vae, scheduler, L, args.dtype).to(args.device)
        if key == "vae_decoder_rgba8":
            append_rgba8(out / "vae_decoder.onnx", path)
            external = bool(external_data_files(path))
        elif key == "vae_decoder" and args.fused_kernels:
            # com.helios::ChannelRmsNorm for every WanRMS_norm, the SiLU after it folded in (vae_fused.py).
            import vae_fused

            with vae_fused.vae_export_patches():
                external = export_one(module, export_args, [n for n, _, _ in ins], [n for n, _, _ in outs], path,
                                      args.opset, threshold, translation_table=vae_fused.translation_table(args.opset),
                                      optimize=not args.no_optimize_vae)
            log(f"fused VAE decoder: {vae_fused.fuse_file(path)}")
        elif key.startswith("denoiser_stage") and fused_mode:
            with fused.gpu_export_patches(fused_mode):
                external = export_one(module, export_args, [n for n, _, _ in ins], [n for n, _, _ in outs], path,
                                      args.opset, threshold,
                                      translation_table=fused.translation_table(fused_mode, transformer, args.opset),
                                      name_blocks=True)
        else:
            unoptimized_vae = args.no_optimize_vae and key.startswith("vae")
            external = export_one(module, export_args, [n for n, _, _ in ins], [n for n, _, _ in outs], path,
                                  args.opset, threshold, optimize=not unoptimized_vae)
            if unoptimized_vae:
                # What the optimizer would have folded: chunk() as SplitToSequence, which runs on the CPU under
                # onnxruntime's CUDA provider.
                import vae_fused

                log(f"{key}: {vae_fused.split_file(path)}")
        exported[key] = (time.time() - t0, external)
        log(f"exported {key} in {exported[key][0]:.1f}s" + (" (external data)" if external else ""))
    if args.export_only:
        return True
    shared = [k for k in keys if k.startswith("denoiser_stage") and exported[k][1]]
    if len(shared) > 1 and not args.no_share_weights:
        share_external_weights(out, shared, SHARED_DENOISER_DATA)
    gen = torch.Generator().manual_seed(args.seed + 1)
    results, graphs = [], {}
    for key in keys:
        path = out / f"{key}.onnx"
        # The fused denoisers are checked against the transformer itself (fused_graph.verify_for_export), and a
        # meta-device transformer (--fused-weights) cannot be moved to a device.
        module = None if key in fused_keys else build_modules(key, transformer, vae, scheduler, L,
                                                              args.dtype).to(args.device)
        run_ort = args.verify == "full" or (args.verify == "light" and not key.startswith("denoiser"))
        try:
            # The VAE and the stage-0 downsample stay fp32 whatever --dtype is (the reference runs them so).
            graph_dtype = "fp32" if key.startswith("vae") or key == "pyramid_downsample" else args.dtype
            if key in fused_keys:
                # onnxruntime's Python package cannot run com.helios operators: onnx.reference (small models).
                small = sum(p.numel() for p in transformer.parameters()) <= FUSED_REFERENCE_MAX_PARAMS
                r = fused_graph.verify_for_export(key, transformer, path, spec[key], args.dtype,
                                                  args.seed + 1 + int(key[-1]), run_ort and small and not on_meta)
                if on_meta:
                    r["notes"].append(f"--fused-weights: no weights in this process (transformer on the meta "
                                      f"device), so no numerical check here: checker + contract I/O + every "
                                      f"external tensor against {FUSED_WEIGHTS}'s header only; the numbers are "
                                      f"checked end to end by running the model (e.g. gpu_bench --compare)")
            else:
                r = verify_one(key, module, path, spec[key], graph_dtype, gen, run_ort, args.ort_provider,
                               args.device, reference_ops=fused.reference_ops() if fused_mode else None)
            if key.startswith("denoiser_stage") and fused_mode and key not in fused_keys:
                r["ops"] = fused.op_census(path)
                problems = fused.check_gpu_graph(path, fused_mode)
                r["notes"] += [f"not fit for the CUDA provider: {p}" for p in problems]
                r["ok"] = r["ok"] and not problems
                attn = {k: v for k, v in r["ops"].items() if "Attention" in k}
                r["notes"].append(f"fused attention nodes {attn}; ScatterND {r['ops'].get('ScatterND', 0)}, "
                                  f"Pad {r['ops'].get('Pad', 0)}, Softmax {r['ops'].get('Softmax', 0)}")
            if key == "vae_decoder_rgba8" and run_ort:
                r["notes"].append(check_rgba8_mapping(out, spec["vae_decoder"][0], args.seed))
        except Exception as e:  # a checker or onnxruntime failure is a verification failure
            r = {"key": key, "ok": False, "notes": [f"{type(e).__name__}: {e}"]}
        t_export = exported[key][0]
        data = external_data_files(path)
        r["bytes"] = path.stat().st_size + sum((out / d).stat().st_size for d in data
                                               if d not in (SHARED_DENOISER_DATA, FUSED_WEIGHTS))
        results.append(r)
        err = f"max_abs_err={r['max_abs_err']:.3e} max|ref|={r['max_abs_ref']:.3e} tol={r['tol']:.3e}" \
            if "max_abs_err" in r else ""
        log(f"{'OK  ' if r['ok'] else 'FAIL'} {key:24s} {r['bytes'] / 1e6:8.3f} MB  export {t_export:6.1f}s  {err}"
            + "".join(f"\n     {n}" for n in r["notes"] + [f"weights in {d}" for d in data]))
        if r["ok"]:
            gi, go = onnx_io(path)
            graphs[key] = {"file": path.name, "sha256": sha256_file(path), "inputs": gi, "outputs": go}
    if not all(r["ok"] for r in results):
        log("some graphs failed verification; manifest.ron not written")
        if args.dtype == "bf16" and any("NOT_IMPLEMENTED" in n for r in results for n in r["notes"]):
            log("hint: onnxruntime's CPU provider cannot run bf16 Conv/MatMul; verify with --ort-provider cuda "
                "(onnxruntime-gpu) or accept checker + I/O checks only for those graphs with --verify light")
        return False
    shared_weights = None
    if fused_keys:
        shared_weights = {"file": FUSED_WEIGHTS, "sha256": fused_summary["shared_weights"]["sha256"],
                          "graphs": fused_keys}
    if args.only and args.merge_manifest:
        path = merge_manifest_graphs(out, graphs)
        if shared_weights:
            record_shared_weights(out, shared_weights)
        log(f"added/replaced {sorted(graphs)} in {path}" + (" and its shared_weights" if shared_weights else ""))
        return True
    if args.only:
        log("--only given: manifest.ron not written (it must list every graph)")
        return True
    mean_list = [float(v) for v in vae.config.latents_mean]
    std_list = [float(v) for v in vae.config.latents_std]
    meta = {
        "name": args.name,
        "source": command_line(argv),
        "diffusers_version": diffusers.__version__,
        "opset": args.opset,
        "precision": PRECISION_RON[args.dtype],
        "height": args.height,
        "width": args.width,
        "latent_channels": channels,
        "vae_scale_factor_temporal": int(vae.config.scale_factor_temporal),
        "vae_scale_factor_spatial": int(vae.config.scale_factor_spatial),
        "scheduler": scheduler_meta(scheduler),
        "cholesky": [[float(v) for v in row] for row in L.tolist()],
        "latents_mean": mean_list,
        "latents_std": std_list,
        "embeddings": embeddings_meta(out, args.text_seq_len, text_dim),
        "text_encoder": text_encoder_meta(out, Path(args.text_encoder_dir), args.text_seq_len, text_dim)
        if args.text_encoder_dir else None,
        "shared_weights": shared_weights,
        "graphs": graphs,
    }
    path = write_manifest(out, meta)
    log(f"wrote {path}")
    return True


def canonicalize_safetensors(path: Path) -> None:
    """Rewrites a safetensors header with `__metadata__` sorted by key. safetensors serialises metadata from a
    hash map whose order changes per process, which would change the file's sha256 on every run. Only the
    JSON header is rewritten (compact, space-padded to 8 bytes as safetensors writes it); the tensor bytes and
    their offsets (relative to the data section) are unchanged."""
    import json
    import struct

    raw = path.read_bytes()
    n = struct.unpack("<Q", raw[:8])[0]
    header = json.loads(raw[8:8 + n].decode("utf-8"), object_pairs_hook=dict)
    if "__metadata__" in header:
        meta = header.pop("__metadata__")
        header = {"__metadata__": dict(sorted(meta.items())), **header}
    text = json.dumps(header, separators=(",", ":"), ensure_ascii=False).encode("utf-8")
    text += b" " * ((-(8 + len(text))) % 8)
    path.write_bytes(struct.pack("<Q", len(text)) + text + raw[8 + n:])


def read_prompts(path: Path) -> list[tuple[str, str]]:
    """`name: prompt text` lines; blank lines and `#` comments skipped; names unique."""
    items, seen = [], set()
    for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        if ":" not in line:
            raise SystemExit(f"{path}:{n}: expected `name: prompt text`")
        name, text = (part.strip() for part in line.split(":", 1))
        if not re.fullmatch(r"[A-Za-z0-9_]+", name) or name in seen or not text:
            raise SystemExit(f"{path}:{n}: bad or duplicate name `{name}` or empty text")
        seen.add(name)
        items.append((name, text))
    return items


def tiny_prompt_embedding(text: str, seq: int, dim: int) -> torch.Tensor:
    """Deterministic stand-in for a text encoder: N(0, 1) [seq, dim] from a generator seeded with the first
    8 bytes (little-endian) of sha256(utf-8 text). The same prompt always gives the same entry."""
    seed = int.from_bytes(hashlib.sha256(text.encode("utf-8")).digest()[:8], "little")
    gen = torch.Generator().manual_seed(seed)
    return torch.randn(seq, dim, generator=gen, dtype=torch.float32)


def encode_prompts_with_checkpoint(checkpoint: Path, prompts, seq: int, te_dtype: str, device: str):
    """Runs the checkpoint's UMT5 through the pipeline's own `encode_prompt` (zero-padded to `seq` rows)."""
    from diffusers import HeliosPyramidPipeline
    from transformers import AutoTokenizer, UMT5EncoderModel

    tokenizer = AutoTokenizer.from_pretrained(str(checkpoint), subfolder="tokenizer")
    text_encoder = UMT5EncoderModel.from_pretrained(
        str(checkpoint), subfolder="text_encoder", torch_dtype=DTYPES[te_dtype]
    ).to(device).eval()
    pipe = HeliosPyramidPipeline(tokenizer=tokenizer, text_encoder=text_encoder, vae=None, scheduler=None,
                                 transformer=None, is_distilled=True)
    result = {}
    with torch.no_grad():
        for name, text in prompts:
            embeds, _ = pipe.encode_prompt(
                prompt=text, do_classifier_free_guidance=False, num_videos_per_prompt=1,
                max_sequence_length=seq, device=torch.device(device),
            )
            result[name] = embeds[0].float().cpu().contiguous()
    return result, int(text_encoder.config.d_model)


def encode_prompts_minilm(prompts, seq: int):
    """helios-nano's text conditioning (tools/nano/minilm.py): the all-MiniLM-L6-v2 sentence embedding (masked
    mean of the last hidden state, L2-normalised) as a single row [1, 384]."""
    if seq != 1:
        raise SystemExit(f"--text-encoder minilm gives one row per prompt; --text-seq-len must be 1, not {seq}")
    sys.path.insert(0, str(REPO_ROOT / "tools" / "nano"))
    import minilm

    emb = minilm.embed([text for _, text in prompts])
    return {name: torch.from_numpy(emb[i][None].copy()) for i, (name, _) in enumerate(prompts)}, int(emb.shape[1])


def check_text_dim(checkpoint: Path, dim: int) -> None:
    cfg = checkpoint / "transformer" / "config.json"
    if cfg.exists():
        import json

        td = json.loads(cfg.read_text()).get("text_dim")
        if td is not None and td != dim:
            raise SystemExit(f"text encoder width {dim} != transformer text_dim {td}")


def run_embed(args, argv: list[str]) -> bool:
    from safetensors.torch import save_file

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    prompts = read_prompts(Path(args.prompts))
    if args.tiny:
        dim = TINY_TRANSFORMER["text_dim"]
        bank = {name: tiny_prompt_embedding(text, args.text_seq_len, dim) for name, text in prompts}
    elif args.text_encoder == "minilm":
        bank, dim = encode_prompts_minilm(prompts, args.text_seq_len)
        check_text_dim(Path(args.checkpoint), dim)
    else:
        bank, dim = encode_prompts_with_checkpoint(Path(args.checkpoint), prompts, args.text_seq_len,
                                                   args.text_encoder_dtype, args.device)
        check_text_dim(Path(args.checkpoint), dim)
    path = out / "embeddings.safetensors"
    save_file(bank, str(path), metadata={name: text for name, text in prompts})
    canonicalize_safetensors(path)
    # Check what was written.
    from safetensors import safe_open
    from safetensors.torch import load_file

    back = load_file(str(path))
    with safe_open(str(path), "pt") as f:
        ok_meta = f.metadata() == {name: text for name, text in prompts}
    ok = set(back) == set(bank) and all(torch.equal(back[k], bank[k]) for k in bank)
    ok &= all(list(v.shape) == [args.text_seq_len, dim] and v.dtype == torch.float32 for v in back.values())
    ok &= all(torch.isfinite(v).all() for v in back.values()) and ok_meta
    log(f"{'OK  ' if ok else 'FAIL'} embeddings.safetensors: {len(bank)} prompts x [{args.text_seq_len}, {dim}] "
        f"{path.stat().st_size / 1e6:.3f} MB")
    if ok and (out / "manifest.ron").exists() and args.command == "embed":
        text = (out / "manifest.ron").read_text()
        new = re.sub(r'(embeddings: \(\n\s+file: "[^"]*",\n\s+sha256: )"[0-9a-f]*"',
                     lambda m: m.group(1) + '"' + sha256_file(path) + '"', text, count=1)
        (out / "manifest.ron").write_text(new)
        log("updated the embeddings sha256 in manifest.ron")
        if args.text_encoder_dir:
            record_text_encoder(out, text_encoder_meta(out, Path(args.text_encoder_dir), args.text_seq_len, dim))
            log("recorded the text encoder in manifest.ron")
    return ok


def parse_args(argv):
    p = argparse.ArgumentParser(
        prog="export.py",
        description="Export Helios-Distilled (diffusers 0.42.1) to the ONNX graphs, prompt bank and manifest.ron "
                    "that bevy_helios loads (docs/graph-contract.md).",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    sub = p.add_subparsers(dest="command", required=True)

    def common(sp, graphs: bool, embed: bool):
        src = sp.add_mutually_exclusive_group(required=True)
        src.add_argument("--checkpoint", help="diffusers-format Helios checkpoint directory")
        src.add_argument("--tiny", action="store_true", help="tiny random-weight model (spec 3.4) from --seed")
        sp.add_argument("--seed", type=int, default=0, help="seed for tiny weights and verification inputs")
        sp.add_argument("--out", required=True, help="output model directory, e.g. models/helios-tiny")
        sp.add_argument("--text-seq-len", type=int, default=None,
                        help="prompt rows (tiny: 16; real: 512 = the pipeline's max_sequence_length)")
        sp.add_argument("--text-encoder-dir", default=None,
                        help="free-text prompts: a directory with text_encoder.onnx + tokenizer.json from "
                             "tools/text/export_text_encoder.py, copied into --out and recorded in manifest.ron "
                             "(needs one-row prompts, e.g. --text-encoder minilm; `embed` adds it to an existing "
                             "manifest.ron)")
        sp.add_argument("--device", default="cpu", choices=["cpu", "cuda"],
                        help="where torch runs the models (tracing on cuda failed with torch 2.11: no ONNX "
                             "lowering for aten._fused_rms_norm; cpu is the tested path for graphs)")
        if graphs:
            sp.add_argument("--name", default=None, help="model name in the manifest (default: --out basename)")
            sp.add_argument("--height", type=int, default=None, help="pixels, multiple of 64 (tiny 64, real 384)")
            sp.add_argument("--width", type=int, default=None, help="pixels, multiple of 64 (tiny 64, real 640)")
            sp.add_argument("--dtype", default="fp32", choices=list(DTYPES), help="transformer compute dtype")
            sp.add_argument("--opset", type=int, default=None,
                            help="ONNX opset (default 18; 22 for bf16, the first opset whose Conv takes bf16)")
            sp.add_argument("--ort-provider", default="cpu", choices=["cpu", "cuda"],
                            help="onnxruntime provider for verification (cuda needs onnxruntime-gpu; ORT's CPU "
                                 "provider has no bf16 Conv/MatMul kernels)")
            sp.add_argument("--dynamic-shifting", choices=["true", "false"], default=None,
                            help="scheduler use_dynamic_shifting (default: true for --tiny, else the checkpoint's "
                                 "scheduler config, true if it has none)")
            sp.add_argument("--cholesky-device", default="cpu", choices=["cpu", "cuda"],
                            help="device whose fp32 block-noise Cholesky factor is baked in and recorded")
            sp.add_argument("--cholesky-source", default=None, choices=["native", "probe"],
                            help="native: torch.linalg.cholesky on --cholesky-device, as sample_block_noise does; "
                                 "probe: the factor shared/design/helios-sampler.md 1.5 recorded for that device "
                                 "(default: probe for --tiny so it is machine-independent, native otherwise)")
            sp.add_argument("--save-checkpoint", default=None,
                            help="with --tiny: also keep the diffusers-format tiny checkpoint in this directory")
            sp.add_argument("--verify", default="full", choices=["full", "light", "io"],
                            help="full: onnxruntime run for every graph; light: not for the denoisers (a real 14B "
                                 "model on CPU, or bf16 without --ort-provider cuda); io: checker + contract I/O only")
            sp.add_argument("--external-data-threshold", type=int, default=EXTERNAL_DATA_BYTES,
                            help="weights above this many bytes go to ONNX external data; the denoiser stages "
                                 f"then share one {SHARED_DENOISER_DATA} (set 0 to test this with --tiny)")
            sp.add_argument("--only", default=None,
                            help="comma-separated graph keys to export (manifest.ron is then not written unless "
                                 "--merge-manifest)")
            sp.add_argument("--merge-manifest", action="store_true",
                            help="with --only: add/replace these graphs' entries in the existing manifest.ron")
            sp.add_argument("--skip", default=None,
                            help="comma-separated optional graph keys not to export (e.g. vae_encoder_image,"
                                 "vae_encoder_clip for a T2V benchmark); manifest.ron is written without them")
            sp.add_argument("--fused-attention", default=None, choices=["mha", "attn23"],
                            help="GPU denoisers: attention as com.microsoft::MultiHeadAttention (mha) or ONNX "
                                 "Attention (attn23, opset 23), RoPE without ScatterND, no bf16 Pad "
                                 "(tools/export/fused.py)")
            sp.add_argument("--fused-kernels", action="store_true",
                            help="GPU denoisers written by tools/export/fused_graph.py: each block as MatMul + "
                                 "MultiHeadAttention + com.helios fused operators (docs/fused-ops.md), weights in "
                                 f"one {FUSED_WEIGHTS} recorded as shared_weights in manifest.ron; verified "
                                 "with onnx.reference for small (tiny) models, checker + I/O otherwise")
            sp.add_argument("--fused-weights", default=None, metavar="FILE",
                            help="with --fused-kernels: the denoisers' weights already in the fused layout (e.g. "
                                 "tools/bench/reference.py --save-fused-weights), used instead of writing them: "
                                 "the transformer is built from <checkpoint>/transformer/config.json on the meta "
                                 "device (no weights loaded, none needed in the checkpoint), FILE's tensor names, "
                                 f"shapes and dtypes are checked against the graphs, and it is moved (renamed: "
                                 f"no copy on one file system) into --out as {FUSED_WEIGHTS}; its sha256 is recorded only up to 1 GiB. "
                                 "The fused denoisers then get checker + I/O checks only")
            sp.add_argument("--sigma-dtype", default=None, choices=["f32", "f64"],
                            help="dtype of the dmd_step graphs' sigma inputs (default f64 = the scheduler's exact "
                                 "values; f32 for --tiny, whose shipped graphs predate f64)")
            sp.add_argument("--jobs", type=int, default=1,
                            help="export up to this many graphs at once, each in its own process (each loads "
                                 "the model; the exporter itself is single-threaded)")
            sp.add_argument("--export-only", action="store_true", help=argparse.SUPPRESS)  # --jobs worker
            sp.add_argument("--no-share-weights", action="store_true",
                            help="keep one external data file per denoiser graph instead of one shared file "
                                 "(saves rewriting and hashing the weights: for throwaway benchmark exports)")
            sp.add_argument("--no-optimize-vae", action="store_true",
                            help="skip the onnxscript optimizer for the VAE graphs (minutes on the unrolled "
                                 "decoder; onnxruntime optimises at session creation)")
        if embed:
            sp.add_argument("--prompts", default=str(PROMPTS_FILE), help="`name: prompt text` lines")
            sp.add_argument("--text-encoder-dtype", default="bf16", choices=list(DTYPES),
                            help="UMT5 dtype (the reference runs it in bf16)")
            sp.add_argument("--text-encoder", default="checkpoint", choices=["checkpoint", "minilm"],
                            help="checkpoint: the checkpoint's UMT5 (Helios); minilm: the all-MiniLM-L6-v2 sentence "
                                 "embedding of tools/nano/minilm.py, one row (helios-nano; --text-seq-len defaults "
                                 "to 1)")

    common(sub.add_parser("graphs", help="write the ONNX graphs + manifest.ron",
                          formatter_class=argparse.ArgumentDefaultsHelpFormatter), True, False)
    common(sub.add_parser("embed", help="write embeddings.safetensors from the prompts file",
                          formatter_class=argparse.ArgumentDefaultsHelpFormatter), False, True)
    common(sub.add_parser("all", help="embed + graphs + manifest.ron",
                          formatter_class=argparse.ArgumentDefaultsHelpFormatter), True, True)
    args = p.parse_args(argv)
    if args.command in ("graphs", "all"):
        if args.save_checkpoint and not args.tiny:
            p.error("--save-checkpoint only applies to --tiny")
    else:
        args.height = args.width = 64
        args.name = None
    return args


def main(argv=None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = parse_args(argv)
    resolve_common(args)
    torch.set_grad_enabled(False)
    ok = True
    if args.command in ("embed", "all"):
        ok &= run_embed(args, argv)
    if ok and args.command in ("graphs", "all"):
        source = ModelSource(args)
        try:
            ok &= run_graphs(args, source, argv)
        finally:
            source.close()
    log("done" if ok else "FAILED")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
