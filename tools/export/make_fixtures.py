#!/usr/bin/env python3
"""Golden fixtures for the Rust sampler's parity tests (tests/fixtures/helios-tiny/).

Runs diffusers 0.42.1 `HeliosPyramidPipeline` itself (Helios-Distilled settings, fp32, CPU) on the tiny
checkpoint that `export.py all --tiny` saved, and records every intermediate the Rust sampler reproduces by
wrapping the pipeline's collaborators for the duration of the call: torch.randn / torch.rand (every random
draw, in order), the transformer's forward, the scheduler's set_timesteps / convert_flow_pred_to_x0 /
add_noise, the pipeline's sample_block_noise / prepare_latents / prepare_image_latents, F.interpolate in
the pipeline module, and vae.encode / vae.decode. Nothing of the pipeline is re-implemented; the recordings
are checked for self-consistency (call counts, draw order and shapes, the DMD update re-done in float64,
the ONNX graphs of the model directory on recorded inputs) before anything is written.

Writes:
  t2v.safetensors / t2v.ron   3-chunk text-to-video run (chunk 0 amplified)
  i2v.safetensors / i2v.ron   1-chunk image-to-video run from i2v_input.png (a generated gradient)
"""

from __future__ import annotations

import argparse
import re
import shlex
import sys
import types
from collections import defaultdict
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import export as ex  # noqa: E402  (same directory: model config, prompt bank, graph wrappers)

DEFAULT_MODEL = ex.REPO_ROOT / "models" / "helios-tiny"
DEFAULT_OUT = ex.REPO_ROOT / "tests" / "fixtures" / "helios-tiny"
MODEL_COMMAND = ("tools/.venv/bin/python tools/export/export.py all --tiny --seed 0 --out models/helios-tiny "
                 "--save-checkpoint tests/fixtures/helios-tiny/checkpoint")


class FixtureError(RuntimeError):
    pass


def check(cond: bool, what: str) -> None:
    if not cond:
        raise FixtureError(what)


def read_manifest_cholesky(model_dir: Path) -> torch.Tensor:
    text = (model_dir / "manifest.ron").read_text()
    m = re.search(r"block_noise_cholesky: (\[\[.*?\]\]),", text)
    check(m is not None, "manifest.ron has no block_noise_cholesky")
    rows = re.findall(r"\[([^\[\]]*)\]", m.group(1))
    return torch.tensor([[float(v) for v in r.split(",")] for r in rows], dtype=torch.float32)


class Recorder:
    """Wraps the pipeline's collaborators and files each tensor under chunk/stage/step keys."""

    def __init__(self, pipe, cholesky: torch.Tensor):
        self.pipe = pipe
        self.L = cholesky
        self.t: dict[str, torch.Tensor] = {}
        self.draws: list[tuple[str, torch.Tensor]] = []
        self.chunk = -1
        self.stage = -1
        self.step = -1
        self.calls = defaultdict(int)
        self.native_cholesky = None
        self._undo = []

    # -- bookkeeping -------------------------------------------------------------------------------------
    def put(self, key: str, value: torch.Tensor) -> None:
        check(key not in self.t, f"key {key} recorded twice")
        self.t[key] = value.detach().clone().cpu().contiguous()

    def pre(self) -> str:
        return f"chunk{self.chunk}"

    def spre(self) -> str:
        return f"chunk{self.chunk}.stage{self.stage}"

    def patch(self, obj, name, new):
        """Shadows obj.name (an instance attribute over a bound method, or a module global) until __exit__."""
        self._undo.append((obj, name, getattr(obj, name), name in vars(obj)))
        setattr(obj, name, new)

    def __enter__(self):
        pipe, rec = self.pipe, self
        from diffusers.pipelines.helios import pipeline_helios_pyramid as pmod

        real_randn, real_rand = torch.randn, torch.rand

        def randn(*a, **k):
            out = real_randn(*a, **k)
            rec.draws.append(("randn", out.detach().clone()))
            return out

        def rand(*a, **k):
            out = real_rand(*a, **k)
            rec.draws.append(("rand", out.detach().clone()))
            return out

        self.patch(torch, "randn", randn)
        self.patch(torch, "rand", rand)

        real_chol = torch.linalg.cholesky

        def cholesky(a, *args, **kw):
            # The manifest's factor is what the ONNX renoise graphs bake and the Rust sampler uses; the native
            # one is recorded (it fails on some CPUs, see export.py PROBE_CHOLESKY).
            try:
                native = real_chol(a, *args, **kw).cpu()
                rec.native_cholesky = "equal to the manifest's" if torch.equal(native, rec.L) else native.tolist()
            except torch.linalg.LinAlgError as e:
                rec.native_cholesky = "failed: " + str(e).splitlines()[0]
            return rec.L.to(a.device)

        self.patch(torch.linalg, "cholesky", cholesky)

        real_prepare = pipe.prepare_latents

        def prepare_latents(*a, **k):
            rec.chunk += 1
            rec.stage = -1
            out = real_prepare(*a, **k)
            check(rec.draws and torch.equal(rec.draws[-1][1], out), "prepare_latents output is not the last draw")
            rec.put(f"{rec.pre()}.draw.latent_noise", out)
            return out

        self.patch(pipe, "prepare_latents", prepare_latents)

        real_prepare_image = pipe.prepare_image_latents

        def prepare_image_latents(image, *a, **k):
            rec.put("image", image)
            lat, fake = real_prepare_image(image, *a, **k)
            rec.put("image_latents.clean", lat)
            rec.put("fake_image_latents.clean", fake)
            return lat, fake

        self.patch(pipe, "prepare_image_latents", prepare_image_latents)

        sched = pipe.scheduler
        real_set = sched.set_timesteps

        def set_timesteps(num_inference_steps, stage_index=None, device=None, sigmas=None, mu=None,
                          is_amplify_first_chunk=False):
            out = real_set(num_inference_steps, stage_index, device=device, sigmas=sigmas, mu=mu,
                           is_amplify_first_chunk=is_amplify_first_chunk)
            rec.stage = stage_index
            rec.step = -1
            rec.put(f"{rec.spre()}.timesteps", sched.timesteps.double())
            rec.put(f"{rec.spre()}.sigmas", sched.sigmas.double())
            rec.put(f"{rec.spre()}.mu", torch.tensor([mu], dtype=torch.float64))
            return out

        self.patch(sched, "set_timesteps", set_timesteps)

        real_block = pipe.sample_block_noise

        def sample_block_noise(*a, **k):
            n_before = len(rec.draws)
            out = real_block(*a, **k)
            check(len(rec.draws) == n_before + 1, "sample_block_noise made other than one draw")
            rec.put(f"{rec.pre()}.draw.block_noise_stage{rec.stage}", rec.draws[-1][1])
            rec.put(f"{rec.spre()}.block_noise", out.to(pipe.transformer.dtype))
            return out

        self.patch(pipe, "sample_block_noise", sample_block_noise)

        real_F = pmod.F

        class FProxy(types.ModuleType):
            def __getattr__(self, name):
                return getattr(real_F, name)

            @staticmethod
            def interpolate(x, *a, **k):
                out = real_F.interpolate(x, *a, **k)
                if k.get("mode") == "nearest":
                    f = ex.LATENT_FRAMES
                    rec.put(f"{rec.spre()}.upsampled", ex._images_as_frames(out, out.shape[0] // f, f))
                return out

        self.patch(pmod, "F", FProxy("F"))

        tf = pipe.transformer
        real_fwd = tf.forward

        def forward(*a, **k):
            rec.step += 1
            rec.calls[rec.chunk] += 1
            key = f"{rec.spre()}.step{rec.step}"
            out = real_fwd(*a, **k)
            rec.put(f"{key}.sample", k["hidden_states"])
            rec.put(f"{key}.timestep", k["timestep"])
            rec.put(f"{key}.velocity", out[0] if isinstance(out, tuple) else out.sample)
            for term in ("short", "mid", "long"):
                v = k[f"latents_history_{term}"]
                hk = f"{rec.pre()}.history.{term}"
                if hk in rec.t:
                    check(torch.equal(rec.t[hk], v), f"{hk} changed within the chunk")
                else:
                    rec.put(hk, v)
            return out

        self.patch(tf, "forward", forward)

        real_x0 = sched.convert_flow_pred_to_x0

        def convert_flow_pred_to_x0(*a, **k):
            out = real_x0(*a, **k)
            rec.put(f"{rec.spre()}.step{rec.step}.x0", out)
            return out

        self.patch(sched, "convert_flow_pred_to_x0", convert_flow_pred_to_x0)

        real_add = sched.add_noise

        def add_noise(original_samples, noise, *a, **k):
            out = real_add(original_samples, noise, *a, **k)
            rec.put(f"{rec.spre()}.step{rec.step}.next", out)
            sk = f"{rec.spre()}.start"
            if sk in rec.t:
                check(torch.equal(rec.t[sk], noise), f"{sk} changed within the stage")
            else:
                rec.put(sk, noise)
            return out

        self.patch(sched, "add_noise", add_noise)

        vae = pipe.vae
        real_decode, real_encode = vae.decode, vae.encode

        def decode(z, *a, **k):
            out = real_decode(z, *a, **k)
            rec.put(f"{rec.pre()}.decoder_input", z)
            rec.put(f"{rec.pre()}.video", out[0])
            return out

        self.encodes = []

        def encode(x, *a, **k):
            out = real_encode(x, *a, **k)
            dist = out.latent_dist if hasattr(out, "latent_dist") else out[0]
            rec.encodes.append((x.shape[2], dist.mean.detach().clone(), dist.logvar.detach().clone()))
            return out

        self.patch(vae, "decode", decode)
        self.patch(vae, "encode", encode)
        return self

    def __exit__(self, *exc):
        for obj, name, old, had_own in reversed(self._undo):
            if had_own:
                setattr(obj, name, old)
            else:
                delattr(obj, name)
        self._undo.clear()
        return False


def load_pipeline(checkpoint: Path):
    from diffusers import HeliosDMDScheduler, HeliosPyramidPipeline

    transformer, vae, _ = ex.load_models(checkpoint, "fp32", "cpu", True)
    scheduler = HeliosDMDScheduler(use_dynamic_shifting=True, time_shift_type="linear")
    pipe = HeliosPyramidPipeline(tokenizer=None, text_encoder=None, vae=vae, scheduler=scheduler,
                                 transformer=transformer, is_distilled=True)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def run_pipeline(pipe, L, prompt_embeds, seed, num_frames, image=None):
    kwargs = dict(prompt_embeds=prompt_embeds, height=64, width=64, num_frames=num_frames, guidance_scale=1.0,
                  pyramid_num_inference_steps_list=list(ex.PYRAMID_STEPS),
                  is_amplify_first_chunk=ex.AMPLIFY_FIRST_CHUNK,
                  generator=torch.Generator().manual_seed(seed), output_type="np")
    if image is not None:
        kwargs["image"] = image
    with Recorder(pipe, L) as rec:
        out = pipe(**kwargs).frames
    return rec, out


# ----------------------------------------------------------------------------------------------------------
# Consistency checks (all exact unless stated: they redo the pipeline's own float64/fp32 operations)
# ----------------------------------------------------------------------------------------------------------


def check_chunk(rec: Recorder, pipe, k: int, L: torch.Tensor, calls_expected: int) -> None:
    from diffusers.pipelines.helios.pipeline_helios_pyramid import calculate_shift

    t = rec.t
    c = f"chunk{k}"
    check(rec.calls[k] == calls_expected, f"{c}: {rec.calls[k]} transformer calls, expected {calls_expected}")
    n = len(t[f"{c}.stage0.timesteps"])
    check(n == (4 if k == 0 else 2), f"{c}: {n} steps per stage")
    h = w = 8
    for s in range(ex.STAGES):
        p = f"{c}.stage{s}"
        ts, sig, mu = t[f"{p}.timesteps"], t[f"{p}.sigmas"], t[f"{p}.mu"]
        check(ts.dtype == torch.float64 and sig.dtype == torch.float64, f"{p}: schedule not float64")
        check(len(ts) == n and len(sig) == n + 1 and sig[-1] == 0, f"{p}: schedule lengths")
        hs, ws = ex.stage_hw(h, w, max(s - 1, 0))  # mu counts the tokens before this stage's upsample
        check(float(mu[0]) == calculate_shift(ex.LATENT_FRAMES * hs * ws // 4), f"{p}: mu")
        start = t[f"{p}.start"]
        if s == 0:
            check(torch.equal(start, ex.PyramidDownsample()(t[f"{c}.draw.latent_noise"])), f"{p}: start != 2x down")
        else:
            prev = t[f"{c}.stage{s - 1}.step{n - 1}.x0"]
            check(torch.equal(t[f"{p}.upsampled"], torch.nn.functional.interpolate(
                ex._frames_as_images(prev), scale_factor=2, mode="nearest").reshape(1, 9, 16, 2 * prev.shape[3],
                2 * prev.shape[4]).permute(0, 2, 1, 3, 4)), f"{p}: upsampled")
            alpha, beta = ex.renoise_coefficients(pipe.scheduler, s)
            z = t[f"{c}.draw.block_noise_stage{s}"]
            check(list(z.shape) == [16 * 9 * prev.shape[3] * prev.shape[4], 4], f"{p}: z shape {list(z.shape)}")
            mine = ex.PyramidRenoise(L, alpha, beta, torch.float32)(prev, z)
            check(torch.equal(start, mine), f"{p}: start != alpha*up + beta*block_noise "
                                            f"(max diff {float((start - mine).abs().max()):.3e})")
        for i in range(n):
            q = f"{p}.step{i}"
            sample, v, x0 = t[f"{q}.sample"], t[f"{q}.velocity"], t[f"{q}.x0"]
            check(int(t[f"{q}.timestep"][0]) == int(ts[i]), f"{q}: timestep != floor(t_i)")
            if i == 0:
                check(torch.equal(sample, start), f"{q}: first sample != stage start")
            check(torch.equal(x0, (sample.double() - sig[i] * v.double()).float()), f"{q}: x0")
            if i < n - 1:
                nxt = t[f"{q}.next"]
                check(torch.equal(nxt, ((1 - sig[i + 1]) * x0.double() + sig[i + 1] * start.double()).float()),
                      f"{q}: next")
                check(torch.equal(nxt, t[f"{p}.step{i + 1}.sample"]), f"{q}: next != next step's sample")
            else:
                check(f"{q}.next" not in t, f"{q}: add_noise on the last step")
    result = t[f"{p}.step{n - 1}.x0"]
    t[f"{c}.result"] = result.clone()
    mean, inv_std = ex.latent_constants(pipe.vae)
    check(torch.equal(t[f"{c}.decoder_input"], result / inv_std + mean), f"{c}: decoder_input")
    check(list(t[f"{c}.video"].shape) == [1, 3, 33, 64, 64], f"{c}: video shape")


def check_history(t, k: int, anchor: torch.Tensor | None) -> None:
    """History window = last 19 of [19 zeros | results...]: long 16 | mid 2 | 1x 1; short = [anchor | 1x]."""
    buf = torch.cat([torch.zeros(1, 16, 19, 8, 8)] + [t[f"chunk{j}.result"] for j in range(k)], dim=2)[:, :, -19:]
    long_, mid, one = buf.split(list(ex.HISTORY_SIZES), dim=2)
    prefix = torch.zeros(1, 16, 1, 8, 8) if anchor is None else anchor
    check(torch.equal(t[f"chunk{k}.history.long"], long_), f"chunk{k}: history.long")
    check(torch.equal(t[f"chunk{k}.history.mid"], mid), f"chunk{k}: history.mid")
    check(torch.equal(t[f"chunk{k}.history.short"], torch.cat([prefix, one], dim=2)), f"chunk{k}: history.short")


def check_onnx(model_dir: Path, t: dict, chunk: int) -> dict:
    """Runs the model directory's graphs on recorded inputs: proves the fixture and the ONNX files share
    weights and constants. Returns max abs errors."""
    import onnxruntime as ort

    def run(name, feeds):
        so = ort.SessionOptions()
        so.log_severity_level = 3
        sess = ort.InferenceSession(str(model_dir / f"{name}.onnx"), so, providers=["CPUExecutionProvider"])
        return sess.run(None, {kk: vv.numpy() for kk, vv in feeds.items()})

    errs = {}
    c = f"chunk{chunk}"
    for s in range(ex.STAGES):
        q = f"{c}.stage{s}.step0"
        got = run(f"denoiser_stage{s}", {
            "hidden_states": t[f"{q}.sample"], "timestep": t[f"{q}.timestep"],
            "encoder_hidden_states": t["prompt_embeds"], "latents_history_short": t[f"{c}.history.short"],
            "latents_history_mid": t[f"{c}.history.mid"], "latents_history_long": t[f"{c}.history.long"]})[0]
        ref = t[f"{q}.velocity"].numpy()
        errs[f"denoiser_stage{s}"] = (float(np.abs(got - ref).max()), float(np.abs(ref).max()))
    got = run("vae_decoder", {"latents": t[f"{c}.result"]})[0]
    ref = t[f"{c}.video"].numpy()
    errs["vae_decoder"] = (float(np.abs(got - ref).max()), float(np.abs(ref).max()))
    for name, (err, mag) in errs.items():
        check(err <= 1e-4 * max(mag, 1e-3), f"ONNX {name} on recorded {c} inputs: max abs err {err:.3e}")
    return errs


# ----------------------------------------------------------------------------------------------------------
# Output
# ----------------------------------------------------------------------------------------------------------


def ron_value(v) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, int):
        return str(v)
    if isinstance(v, float):
        return ex.ron_float(v)
    if isinstance(v, str):
        return ex.ron_str(v)
    if isinstance(v, (list, tuple)):
        return "[" + ", ".join(ron_value(x) for x in v) + "]"
    raise TypeError(type(v))


def write_ron(path: Path, fields: dict) -> None:
    lines = ["("] + [f"    {k}: {ron_value(v)}," for k, v in fields.items()] + [")", ""]
    path.write_text("\n".join(lines))


def save(path: Path, tensors: dict, meta: dict) -> None:
    from safetensors.torch import load_file, save_file

    tensors = {k: v.contiguous() for k, v in sorted(tensors.items())}
    save_file(tensors, str(path), metadata={k: str(v) for k, v in meta.items()})
    ex.canonicalize_safetensors(path)  # deterministic bytes (safetensors' metadata order varies per run)
    back = load_file(str(path))
    check(set(back) == set(tensors) and all(torch.equal(back[k], tensors[k]) for k in tensors),
          f"{path.name} does not read back")


def versions() -> dict:
    import diffusers

    return {"torch_version": torch.__version__, "diffusers_version": diffusers.__version__}


def make_t2v(args, pipe, L, model_dir: Path, out: Path, bank, prompt_text) -> dict:
    embeds = bank[args.prompt][None]
    check(torch.equal(bank[args.prompt], ex.tiny_prompt_embedding(prompt_text, 16, 32)),
          "bank entry differs from the tiny hash embedding")
    rec, frames_np = run_pipeline(pipe, L, embeds, args.seed, args.num_frames)
    t = rec.t
    chunks = rec.chunk + 1
    check(chunks == 3, f"{chunks} chunks for num_frames {args.num_frames}")
    t["prompt_embeds"] = embeds.clone()
    kinds = [k for k, _ in rec.draws]
    check(kinds == ["randn"] * 3 * chunks, f"draws {kinds}: expected 3 randn per chunk")
    for k in range(chunks):
        shapes = [list(d.shape) for _, d in rec.draws[3 * k:3 * k + 3]]
        check(shapes == [[1, 16, 9, 8, 8], [576, 4], [2304, 4]], f"chunk{k} draw shapes {shapes}")
        check_chunk(rec, pipe, k, L, 12 if k == 0 else 6)
    anchor = t["chunk0.result"][:, :, 0:1]
    for k in range(chunks):
        check_history(t, k, None if k == 0 else anchor)
    frames_np = frames_np[0]
    check(frames_np.shape == (97, 64, 64, 3), f"pipeline output {frames_np.shape}")
    frames = np.round(255.0 * frames_np).astype(np.uint8)
    video = torch.cat([t[f"chunk{k}.video"] for k in range(chunks)], dim=2)[:, :, :97]
    mine = (video / 2 + 0.5).clamp(0, 1)[0].permute(1, 2, 3, 0).numpy()
    check(np.array_equal(mine, frames_np), "frames != trimmed concatenation of the chunk videos")
    t["frames"] = torch.from_numpy(frames)
    errs = check_onnx(model_dir, t, 1)
    meta = {"seed": args.seed, "num_frames": args.num_frames, "prompt": args.prompt}
    save(out / "t2v.safetensors", t, meta)
    fields = {
        "seed": args.seed, "num_frames": args.num_frames, "frames_out": 97, "chunks": chunks, "height": 64,
        "width": 64, "prompt": args.prompt, "prompt_text": prompt_text, "guidance_scale": 1.0,
        "amplify_first_chunk": ex.AMPLIFY_FIRST_CHUNK, "pyramid_steps": list(ex.PYRAMID_STEPS),
        "transformer_calls": [rec.calls[k] for k in range(chunks)],
        "draws_per_chunk": ["randn [1, 16, 9, 8, 8] latent_noise", "randn [576, 4] block_noise_stage1",
                            "randn [2304, 4] block_noise_stage2"],
        "block_noise_cholesky": [[float(v) for v in r] for r in L.tolist()],
        "native_cholesky": str(rec.native_cholesky),
        "model_manifest_sha256": ex.sha256_file(model_dir / "manifest.ron"),
        "onnx_max_abs_err_chunk1": [f"{n}: {e:.3e} (max |ref| {m:.3e})" for n, (e, m) in errs.items()],
        "model_command": MODEL_COMMAND, "fixture_command": args.command_line, **versions(),
    }
    write_ron(out / "t2v.ron", fields)
    return {"keys": len(t), "bytes": (out / "t2v.safetensors").stat().st_size, "onnx": errs,
            "native_cholesky": rec.native_cholesky}


def gradient_image(path: Path):
    from PIL import Image

    y, x = np.mgrid[0:64, 0:64]
    rgb = np.stack([x * 4, y * 4, (x + y) * 2], axis=-1).astype(np.uint8)
    Image.fromarray(rgb, "RGB").save(path)
    return Image.open(path).convert("RGB")


def make_i2v(args, pipe, L, out: Path, bank) -> dict:
    image = gradient_image(out / "i2v_input.png")
    embeds = bank[args.prompt][None]
    rec, frames_np = run_pipeline(pipe, L, embeds, args.seed, 33, image=image)
    t = rec.t
    check(rec.chunk == 0, "i2v: expected one chunk")
    kinds = [(k, list(d.shape)) for k, d in rec.draws]
    want = [("randn", [1, 16, 1, 8, 8]), ("randn", [1, 16, 9, 8, 8]), ("rand", [1]), ("randn", [1, 16, 1, 8, 8]),
            ("rand", [1]), ("randn", [1, 16, 1, 8, 8]), ("randn", [1, 16, 9, 8, 8]), ("randn", [576, 4]),
            ("randn", [2304, 4])]
    check(kinds == want, f"i2v draws {kinds}")
    for j, (_, d) in enumerate(rec.draws):
        t[f"draw{j}"] = d
    check([e[0] for e in rec.encodes] == [1, 33], "i2v: expected encodes of 1 and 33 frames")
    for name, (_, mean, logvar) in zip(("encode_image", "encode_clip"), rec.encodes):
        t[f"{name}.mean"], t[f"{name}.logvar"] = mean, logvar
    # Redo the pipeline's posterior samples and noising from the recorded draws (same torch ops: exact).
    mean_c, inv_std = ex.latent_constants(pipe.vae)
    d = [x for _, x in rec.draws]
    lat = (rec.encodes[0][1] + torch.exp(0.5 * rec.encodes[0][2]) * d[0] - mean_c) * inv_std
    fake = ((rec.encodes[1][1] + torch.exp(0.5 * rec.encodes[1][2]) * d[1] - mean_c) * inv_std)[:, :, -1:]
    check(torch.equal(lat, t["image_latents.clean"]), "i2v: image_latents.clean != normalised posterior sample")
    check(torch.equal(fake, t["fake_image_latents.clean"]), "i2v: fake_image_latents.clean")
    s_img = d[2] * (0.135 - 0.111) + 0.111
    s_fake = d[4] * (0.135 - 0.111) + 0.111
    noised = s_img * d[3] + (1 - s_img) * lat
    fake_noised = s_fake * d[5] + (1 - s_fake) * fake
    short = t["chunk0.history.short"]
    check(torch.equal(short[:, :, 0:1], noised), "i2v: short prefix != noised image latents")
    check(torch.equal(short[:, :, 1:2], fake_noised), "i2v: short 1x != noised fake latents")
    t["image_latents"], t["fake_image_latents"] = noised, fake_noised
    t["image_noise_sigma"], t["fake_image_noise_sigma"] = s_img, s_fake
    check(bool((t["chunk0.history.long"] == 0).all() and (t["chunk0.history.mid"] == 0).all()),
          "i2v: long/mid history not zero")
    check_chunk(rec, pipe, 0, L, 12)
    t["prompt_embeds"] = embeds.clone()
    frames = np.round(255.0 * frames_np[0]).astype(np.uint8)
    check(frames.shape == (33, 64, 64, 3), f"i2v output {frames.shape}")
    t["frames"] = torch.from_numpy(frames)
    save(out / "i2v.safetensors", t, {"seed": args.seed, "num_frames": 33, "prompt": args.prompt})
    write_ron(out / "i2v.ron", {
        "seed": args.seed, "num_frames": 33, "frames_out": 33, "chunks": 1, "height": 64, "width": 64,
        "prompt": args.prompt, "image": "i2v_input.png", "image_noise_sigma_range": [0.111, 0.135],
        "amplify_first_chunk": ex.AMPLIFY_FIRST_CHUNK, "pyramid_steps": list(ex.PYRAMID_STEPS),
        "transformer_calls": [rec.calls[0]],
        "draws": [f"draw{j}: {k} {s}" for j, (k, s) in enumerate(kinds)],
        "model_command": MODEL_COMMAND, "fixture_command": args.command_line, **versions(),
    })
    return {"keys": len(t), "bytes": (out / "i2v.safetensors").stat().st_size}


def main(argv=None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--checkpoint", default=str(DEFAULT_OUT / "checkpoint"),
                   help="tiny diffusers checkpoint saved by export.py --save-checkpoint")
    p.add_argument("--model", default=str(DEFAULT_MODEL), help="exported model dir (prompt bank, manifest, graphs)")
    p.add_argument("--out", default=str(DEFAULT_OUT), help="fixture directory")
    p.add_argument("--seed", type=int, default=42, help="torch.Generator seed of the pipeline call")
    p.add_argument("--num-frames", type=int, default=99, help="T2V frames asked for (99 = 3 chunks)")
    p.add_argument("--prompt", default="day", help="prompt bank entry used as prompt_embeds")
    p.add_argument("--skip-i2v", action="store_true", help="only write the T2V fixture")
    args = p.parse_args(argv)
    args.command_line = shlex.join(["tools/.venv/bin/python", ex.repo_relative(sys.argv[0])] + argv)
    torch.set_grad_enabled(False)
    torch.manual_seed(0)  # nothing should draw from the global generator; seeded anyway
    from safetensors import safe_open

    model_dir, out = Path(args.model), Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    with safe_open(str(model_dir / "embeddings.safetensors"), "pt") as f:
        bank = {k: f.get_tensor(k) for k in f.keys()}
        texts = f.metadata()
    L = read_manifest_cholesky(model_dir)
    pipe = load_pipeline(Path(args.checkpoint))
    try:
        r = make_t2v(args, pipe, L, model_dir, out, bank, texts[args.prompt])
        print(f"OK   t2v.safetensors: {r['keys']} tensors, {r['bytes'] / 1e6:.2f} MB; native Cholesky: "
              f"{r['native_cholesky']}")
        for name, (err, mag) in r["onnx"].items():
            print(f"     ONNX {name} on recorded chunk-1 inputs: max abs err {err:.3e} (max |ref| {mag:.3e})")
        if not args.skip_i2v:
            r = make_i2v(args, pipe, L, out, bank)
            print(f"OK   i2v.safetensors: {r['keys']} tensors, {r['bytes'] / 1e6:.2f} MB")
    except FixtureError as e:
        print(f"FAIL {e}")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
