#!/usr/bin/env python3
"""Fine-tune helios-nano's VAE *decoder* on full 33-frame chunks (9 latent frames), encoder frozen.

The shipped VAE was last trained on 9- and 17-frame segments, so its causal decoder never saw latent frames
5..8 of a 33-frame chunk, and generated chunks turn hazy towards their end. This tool fine-tunes decoder +
post_quant_conv on whole chunks; the encoder (and so the latents the transformer was trained on) is untouched.
The torch checkpoint is not in the repository: the weights come out of, and go back into, the shipped ONNX files.

Subcommands (the device has torch + CUDA but no onnx/onnxruntime, so the ONNX work happens here):

  prepare   (here)    ONNX initializers of vae_decoder.onnx + vae_encoder_clip.onnx -> OUT/vae_nano.safetensors
                      (every VAE tensor, config in the metadata); checks the rebuilt torch decoder/encoder against
                      onnxruntime, and that writing the unchanged weights back reproduces the shipped files.
  train     (device)  procedural clips (clips.py, worker processes) -> frozen encoder (posterior mean, normalised
                      with the manifest's latents_mean/std) -> decoder trained on whole chunks: L1 + MSE +
                      image-gradient L1 (train.py's VAE loss without the KL), AdamW, warmup + cosine, bf16
                      autocast on CUDA, wall-clock budget. Per-frame-index sharpness / error on held-out clips
                      before and after. Writes OUT/decoder_ft.safetensors, stats.json, train.log, loss.png, preview.png.
  finalize  (here)    decoder_ft.safetensors -> a copy of the model dir (--model-out, default OUT/helios-nano) with
                      vae_decoder.onnx(.data) and vae_decoder_rgba8.onnx rewritten (same initializer names/shapes/
                      offsets) and their sha256 updated in manifest.ron; onnxruntime vs torch on the new graph;
                      per-frame stats with onnxruntime, shipped vs new; OUT/install/ holds the files to copy.
  all       (here)    prepare -> train -> finalize under OUT/{prepared,train,final} (use with --smoke on the CPU).

    tools/.venv/bin/python tools/nano/finetune_decoder.py prepare --out .nano-ft
    python3 tools/nano/finetune_decoder.py train --weights .nano-ft/vae_nano.safetensors --device cuda --out $OUT
    tools/.venv/bin/python tools/nano/finetune_decoder.py finalize --run RUN_DIR --out /tmp/nano-ft-final
    tools/.venv/bin/python tools/nano/finetune_decoder.py all --smoke --device cpu --out /tmp/nano-ft-smoke

train needs torch, numpy, diffusers (no onnx, no network); prepare/finalize need onnx + onnxruntime too.
"""

from __future__ import annotations

T_START = __import__("time").time()

import argparse  # noqa: E402
import hashlib  # noqa: E402
import json  # noqa: E402
import math  # noqa: E402
import multiprocessing as mp  # noqa: E402
import os  # noqa: E402
import re  # noqa: E402
import shutil  # noqa: E402
import struct  # noqa: E402
import sys  # noqa: E402
import threading  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(REPO / "tools" / "eval"))

import clips  # noqa: E402
from sharpness import laplacian_variance  # noqa: E402

NANO_VAE = dict(base_dim=16, z_dim=16, dim_mult=[1, 2, 4, 4], num_res_blocks=1, temperal_downsample=[False, True, True])
DECODER_PREFIXES = ("decoder.", "post_quant_conv.")
ENCODER_PREFIXES = ("encoder.", "quant_conv.")
ONNX_PREFIX = "vae."
CF = clips.CHUNK_FRAMES          # 33
LF = (CF - 1) // 4 + 1          # 9 latent frames
H, W = clips.H, clips.W
PREPARED = "vae_nano.safetensors"
TRAINED = "decoder_ft.safetensors"
DECODER_GRAPHS = ("vae_decoder", "vae_decoder_rgba8")
HELD_OUT_BASE = 7_700_000_000   # held-out clip seeds (train.py used seed * 1_000_003 + i, seeds 0..2)
TRAIN_BASE = 5_500_000_000
TOL = 1e-3

LOG_FILE: Path | None = None


def log(msg: str) -> None:
    line = f"[{time.time() - T_START:7.1f}s] {msg}"
    print(line, flush=True)
    if LOG_FILE is not None:
        with open(LOG_FILE, "a") as f:
            f.write(line + "\n")


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


# ----------------------------------------------------------------------------------------------------------
# safetensors (F32 only) without the safetensors package: 8-byte header length, JSON header, raw data
# ----------------------------------------------------------------------------------------------------------


def write_safetensors(path: Path, tensors: dict[str, np.ndarray], metadata: dict[str, str]) -> None:
    header, blobs, off = {}, [], 0
    for k in sorted(tensors):
        a = np.ascontiguousarray(tensors[k], dtype=np.float32)
        b = a.tobytes()
        header[k] = {"dtype": "F32", "shape": list(a.shape), "data_offsets": [off, off + len(b)]}
        blobs.append(b)
        off += len(b)
    header["__metadata__"] = metadata
    hb = json.dumps(header, separators=(",", ":")).encode()
    hb += b" " * ((-len(hb)) % 8)
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "wb") as f:
        f.write(struct.pack("<Q", len(hb)))
        f.write(hb)
        for b in blobs:
            f.write(b)
    os.replace(tmp, path)


def read_safetensors(path: Path) -> tuple[dict[str, np.ndarray], dict[str, str]]:
    data = Path(path).read_bytes()
    (n,) = struct.unpack("<Q", data[:8])
    header = json.loads(data[8:8 + n])
    meta = header.pop("__metadata__", {})
    base = 8 + n
    out = {}
    for k, v in header.items():
        if v["dtype"] != "F32":
            raise SystemExit(f"{path}: {k} has dtype {v['dtype']}, expected F32")
        a, b = v["data_offsets"]
        out[k] = np.frombuffer(data[base + a:base + b], dtype=np.float32).reshape(v["shape"]).copy()
    return out, meta


# ----------------------------------------------------------------------------------------------------------
# Model: the diffusers AutoencoderKLWan with the nano config, and the exported decoder's wrapper
# ----------------------------------------------------------------------------------------------------------


def build_vae(cfg: dict, state: dict[str, np.ndarray] | None = None):
    import torch
    from diffusers import AutoencoderKLWan

    vae = AutoencoderKLWan(**cfg).float().eval()
    if state is not None:
        sd = vae.state_dict()
        missing = sorted(set(sd) - set(state))
        extra = sorted(set(state) - set(sd))
        if missing or extra:
            raise SystemExit(f"state dict mismatch: missing {missing[:8]} extra {extra[:8]}")
        for k, v in sd.items():
            if tuple(v.shape) != tuple(state[k].shape):
                raise SystemExit(f"{k}: shape {tuple(state[k].shape)} != model {tuple(v.shape)}")
        vae.load_state_dict({k: torch.from_numpy(np.array(v, np.float32)) for k, v in state.items()}, strict=True)
    return vae


class LatentDecoder:
    """tools/export/export.py VaeDecoder: `latents / latents_std + latents_mean` (latents_std holds 1/std, as
    the pipeline's variable does) then AutoencoderKLWan.decode of the whole chunk (clamped to [-1, 1])."""

    def __init__(self, vae, mean: list[float], std: list[float], device):
        import torch

        z = len(mean)
        self.vae = vae
        self.mean = torch.tensor(mean, dtype=torch.float32).view(1, z, 1, 1, 1).to(device)
        self.inv_std = 1.0 / torch.tensor(std, dtype=torch.float32).view(1, z, 1, 1, 1).to(device)

    def __call__(self, latents):
        z = latents.float() / self.inv_std + self.mean
        return self.vae.decode(z, return_dict=False)[0]

    def normalise(self, raw):
        return (raw.float() - self.mean) * self.inv_std


def to_video(u8: np.ndarray, device):
    """uint8 [B, T, H, W, 3] -> float [B, 3, T, H, W] in [-1, 1]."""
    import torch

    x = torch.from_numpy(np.ascontiguousarray(u8)).to(device, non_blocking=True)
    return x.permute(0, 4, 1, 2, 3).float().div_(127.5).sub_(1.0)


def to_u8(video) -> np.ndarray:
    """[B, 3, T, H, W] in [-1, 1] -> uint8 [B, T, H, W, 3] as the runtime maps it (round half even)."""
    import torch

    v = torch.round((video.float() * 0.5 + 0.5).clamp(0, 1) * 255.0).to(torch.uint8)
    return v.permute(0, 2, 3, 4, 1).cpu().numpy()


def frame_weights(first: float, ramp: int, n: int = CF) -> np.ndarray:
    """Loss weight per frame index: `first` on frame 0, falling linearly to 1 over the next `ramp` frames.

    The causal decoder starts every chunk from zero temporal context, so frame 0 is the softest frame of each
    chunk (and a plain mean loss weighs it 1/33); weighting it is how the second fine-tune sharpens it."""
    w = np.ones(n, np.float32)
    for i in range(min(ramp + 1, n)):
        w[i] = first + (1.0 - first) * i / (ramp + 1) if ramp > 0 else (first if i == 0 else 1.0)
    return w


def recon_loss(rec, x, grad_weight: float, weights=None, lap_weight: float = 0.0):
    """train.py vae_loss's reconstruction terms: L1 + MSE + grad_weight * image-gradient L1 (x and y), plus
    lap_weight * L1 of the 4-neighbour Laplacian (what the sharpness table measures). Each term is a weighted mean
    over frame indices (`weights` [T], default uniform)."""
    r, t = rec.float(), x.float()
    d = r - t
    if weights is None:
        weights = d.new_ones(d.shape[2])
    w = weights / weights.sum()

    def per_frame(v):  # [B, C, T, h, w] -> [T]
        return v.mean(dim=(0, 1, 3, 4))

    l1_pf = per_frame(d.abs())
    loss = (w * (l1_pf + per_frame(d.pow(2)))).sum()
    if grad_weight > 0:
        gx = per_frame(((r[..., 1:] - r[..., :-1]) - (t[..., 1:] - t[..., :-1])).abs())
        gy = per_frame(((r[..., 1:, :] - r[..., :-1, :]) - (t[..., 1:, :] - t[..., :-1, :])).abs())
        loss = loss + grad_weight * (w * (gx + gy)).sum()
    if lap_weight > 0:
        def lap(v):
            return (v[..., 1:-1, :-2] + v[..., 1:-1, 2:] + v[..., :-2, 1:-1] + v[..., 2:, 1:-1]
                    - 4.0 * v[..., 1:-1, 1:-1])
        loss = loss + lap_weight * (w * per_frame((lap(r) - lap(t)).abs())).sum()
    return loss, l1_pf.detach().mean(), l1_pf.detach()


# ----------------------------------------------------------------------------------------------------------
# ONNX side (prepare / finalize; needs onnx + onnxruntime)
# ----------------------------------------------------------------------------------------------------------


def read_manifest(model: Path) -> dict:
    text = (model / "manifest.ron").read_text()
    out = {}
    for key in ("latents_mean", "latents_std"):
        m = re.search(rf"\n    {key}: \[([^\]]*)\]", text)
        out[key] = [float(v) for v in m.group(1).split(",") if v.strip()]
    for key in ("latent_channels", "latent_frames_per_chunk", "height", "width"):
        out[key] = int(re.search(rf"\n    {key}: (\d+),", text).group(1))
    return out


def onnx_params(path: Path, prefixes: tuple[str, ...]) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
    """(VAE parameters with the `vae.` prefix stripped, other initializers) of an ONNX file."""
    import onnx
    from onnx import numpy_helper

    m = onnx.load(str(path), load_external_data=False)
    params, other = {}, {}
    for t in m.graph.initializer:
        arr = numpy_helper.to_array(t, base_dir=str(path.parent))
        if t.name.startswith(ONNX_PREFIX):
            key = t.name[len(ONNX_PREFIX):]
            if not key.startswith(prefixes):
                raise SystemExit(f"{path.name}: unexpected parameter {t.name}")
            params[key] = arr
        else:
            other[t.name] = arr
    for node in m.graph.node:
        if node.op_type == "Constant" and node.output and node.output[0].startswith(ONNX_PREFIX):
            raise SystemExit(f"{path.name}: parameter {node.output[0]} is a Constant node (not handled)")
    return params, other


def ort_session(path: Path, threads: int = 0):
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.log_severity_level = 3
    if threads:
        so.intra_op_num_threads = threads
    return ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])


def check_decoder_vs_ort(vae, cfg: dict, graph: Path, seed: int, what: str) -> float:
    """Torch decoder (fp32, CPU) vs onnxruntime on `graph` for seeded N(0, 1) normalised latents."""
    import torch

    g = torch.Generator().manual_seed(seed)
    lat = torch.randn(1, cfg["z_dim"], LF, H // 8, W // 8, generator=g)
    dec = LatentDecoder(vae, cfg["latents_mean"], cfg["latents_std"], "cpu")
    with torch.no_grad():
        ref = dec(lat).numpy()
    got = ort_session(graph).run(None, {"latents": lat.numpy()})[0]
    err = float(np.abs(ref.astype(np.float64) - got).max())
    log(f"{what}: torch decoder vs onnxruntime {graph.name}: max abs err {err:.3e} (max |out| "
        f"{float(np.abs(ref).max()):.3f}, tolerance {TOL:g})")
    if not np.isfinite(got).all() or err > TOL:
        raise SystemExit(f"{what}: torch and onnxruntime disagree ({err:.3e} > {TOL:g})")
    return err


def check_encoder_vs_ort(vae, graph: Path, seed: int) -> float:
    import torch

    fr = clips.make_clip(seed).frames[:CF]
    x = to_video(fr[None], "cpu")
    with torch.no_grad():
        dist = vae.encode(x).latent_dist
        ref = dist.mean.numpy()
    got = ort_session(graph).run(None, {"video": x.numpy()})[0]
    err = float(np.abs(ref.astype(np.float64) - got).max())
    tol = TOL * max(1.0, float(np.abs(ref).max()))
    log(f"torch encoder (posterior mean) vs onnxruntime {graph.name} on a procedural chunk: max abs err {err:.3e} "
        f"(max |mean| {float(np.abs(ref).max()):.3f}, tolerance {tol:.1e})")
    if err > tol:
        raise SystemExit("encoder: torch and onnxruntime disagree")
    return err


def cmd_prepare(args) -> int:
    global LOG_FILE
    model = Path(args.model)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    LOG_FILE = out / "prepare.log"
    LOG_FILE.write_text("")
    man = read_manifest(model)
    dec, dec_other = onnx_params(model / "vae_decoder.onnx", DECODER_PREFIXES)
    enc, _ = onnx_params(model / "vae_encoder_clip.onnx", ENCODER_PREFIXES)
    enc_img, _ = onnx_params(model / "vae_encoder_image.onnx", ENCODER_PREFIXES)
    rgba, _ = onnx_params(model / "vae_decoder_rgba8.onnx", DECODER_PREFIXES)
    # latents_mean / latents_std (1/std) are initializers of the decoder graph: de-normalisation is inside it.
    g_mean = dec_other["latents_mean"].reshape(-1).astype(np.float64)
    g_std = 1.0 / dec_other["latents_std"].reshape(-1).astype(np.float64)
    dm = float(np.abs(g_mean - man["latents_mean"]).max())
    ds = float(np.abs(g_std - man["latents_std"]).max() / np.abs(man["latents_std"]).max())
    log(f"decoder graph de-normalises: latents / latents_std + latents_mean; graph vs manifest: mean max diff "
        f"{dm:.2e}, std max rel diff {ds:.2e}")
    if dm > 1e-6 or ds > 1e-6:
        raise SystemExit("the decoder graph's latent constants differ from manifest.ron")
    cfg = dict(NANO_VAE, latents_mean=man["latents_mean"], latents_std=man["latents_std"])
    if man["latent_channels"] != cfg["z_dim"] or man["latent_frames_per_chunk"] != LF or (man["height"], man["width"]) != (H, W):
        raise SystemExit(f"manifest geometry {man} is not helios-nano's")
    vae = build_vae(cfg)
    sd = {k: v.detach().numpy() for k, v in vae.state_dict().items()}
    state = {}
    for name, src, prefixes in (("decoder", dec, DECODER_PREFIXES), ("encoder", enc, ENCODER_PREFIXES)):
        want = [k for k in sd if k.startswith(prefixes)]
        missing = [k for k in want if k not in src]
        extra = [k for k in src if k not in sd]
        bad = [k for k in want if k in src and tuple(src[k].shape) != tuple(sd[k].shape)]
        if missing or extra or bad:
            raise SystemExit(f"{name}: missing {missing} extra {extra} shape mismatch {bad}")
        state.update({k: src[k].astype(np.float32) for k in want})
        log(f"{name}: all {len(want)} parameters found with matching shapes "
            f"({sum(src[k].size for k in want) / 1e6:.3f}M values)")
    if sorted(state) != sorted(sd):
        raise SystemExit(f"parameters not covered: {sorted(set(sd) - set(state))}")
    for other_name, other in (("vae_encoder_image", enc_img), ("vae_decoder_rgba8", rgba)):
        ref = enc if other_name.startswith("vae_encoder") else dec
        # (the one-frame image encoder has no use for the temporal downsamplers' time_conv: a subset)
        same = set(other) <= set(ref) and all(np.array_equal(other[k], ref[k]) for k in other)
        log(f"{other_name}: its {len(other)} parameters equal those of the graph they were checked against: {same}")
        if not same:
            raise SystemExit(f"{other_name} holds different weights")
    vae = build_vae(cfg, state)
    err_dec = check_decoder_vs_ort(vae, cfg, model / "vae_decoder.onnx", args.seed, "shipped decoder")
    err_enc = check_encoder_vs_ort(vae, model / "vae_encoder_clip.onnx", args.seed)
    # The writer: the unchanged weights written back must reproduce the shipped files byte for byte.
    with tempfile_dir(out / "tmp-writeback") as tmp:
        write_decoder_graphs(model, tmp, {k: v for k, v in state.items() if k.startswith(DECODER_PREFIXES)})
        same = {f: sha256_file(tmp / f) == sha256_file(model / f)
                for f in ("vae_decoder.onnx", "vae_decoder.onnx.data", "vae_decoder_rgba8.onnx")}
    log(f"write-back of the unchanged weights reproduces the shipped files byte for byte: {same}")
    if not all(same.values()):
        raise SystemExit("the ONNX writer does not round-trip the shipped files")
    meta = {"config": json.dumps(cfg), "model": str(model),
            "source_sha256": json.dumps({f: sha256_file(model / f) for f in
                                         ("vae_decoder.onnx", "vae_decoder.onnx.data", "vae_encoder_clip.onnx",
                                          "vae_encoder_clip.onnx.data", "manifest.ron")}),
            "check": json.dumps({"decoder_max_abs_err": err_dec, "encoder_max_abs_err": err_enc})}
    write_safetensors(out / PREPARED, state, meta)
    log(f"wrote {out / PREPARED} ({(out / PREPARED).stat().st_size / 2**20:.2f} MiB, {len(state)} tensors)")
    return 0


class tempfile_dir:
    def __init__(self, path: Path):
        self.path = Path(path)

    def __enter__(self):
        if self.path.exists():
            shutil.rmtree(self.path)
        self.path.mkdir(parents=True)
        return self.path

    def __exit__(self, *exc):
        shutil.rmtree(self.path, ignore_errors=True)


def write_decoder_graphs(model: Path, dest: Path, dec_state: dict[str, np.ndarray]) -> dict:
    """Writes dest/{vae_decoder.onnx, vae_decoder.onnx.data, vae_decoder_rgba8.onnx}: the shipped files with
    every `vae.decoder.*` / `vae.post_quant_conv.*` initializer replaced (inline ones in each graph, external
    ones in place in the shared data file, same offsets). Everything else stays byte for byte."""
    import onnx

    data = bytearray((model / "vae_decoder.onnx.data").read_bytes())
    written: dict[tuple[int, int], bytes] = {}
    report = {}
    for g in DECODER_GRAPHS:
        m = onnx.load(str(model / f"{g}.onnx"), load_external_data=False)
        seen = set()
        n_inline = n_ext = 0
        for t in m.graph.initializer:
            if not t.name.startswith(ONNX_PREFIX):
                continue
            key = t.name[len(ONNX_PREFIX):]
            if key not in dec_state:
                raise SystemExit(f"{g}: no new value for {t.name}")
            arr = np.ascontiguousarray(dec_state[key], dtype=np.float32)
            if t.data_type != onnx.TensorProto.FLOAT or list(t.dims) != list(arr.shape):
                raise SystemExit(f"{g}: {t.name} is {t.data_type}/{list(t.dims)}, new value {arr.shape}")
            raw = arr.tobytes()
            if t.data_location == onnx.TensorProto.EXTERNAL:
                info = {e.key: e.value for e in t.external_data}
                if info["location"] != "vae_decoder.onnx.data":
                    raise SystemExit(f"{g}: {t.name} lives in {info['location']}")
                off, length = int(info.get("offset", 0)), int(info["length"])
                if length != len(raw):
                    raise SystemExit(f"{g}: {t.name}: {length} bytes on disk, {len(raw)} new")
                if (off, length) in written and written[(off, length)] != raw:
                    raise SystemExit(f"{g}: {t.name}: the shared data range holds something else")
                data[off:off + length] = raw
                written[(off, length)] = raw
                n_ext += 1
            else:
                if len(t.float_data):
                    del t.float_data[:]
                t.raw_data = raw
                n_inline += 1
            seen.add(key)
        if seen != set(dec_state):
            raise SystemExit(f"{g}: parameters not in the graph: {sorted(set(dec_state) - seen)[:8]}")
        onnx.save(m, str(dest / f"{g}.onnx"))
        report[g] = {"inline": n_inline, "external": n_ext}
    (dest / "vae_decoder.onnx.data").write_bytes(bytes(data))
    return report


def update_manifest(src: Path, dst: Path, hashes: dict[str, str], data_files: dict[str, tuple[str, int]]) -> list[str]:
    """manifest.ron with the sha256 of the given graph keys replaced, and of the given external-data files where
    the manifest lists them (`external_data: [(file: "...", sha256: "...", bytes: N), ...]`); every other byte
    unchanged."""
    text = src.read_text()
    changed = []
    for key, sha in hashes.items():
        pat = re.compile(r'(\n        "' + re.escape(key) + r'": \(\n            file: "[^"]*",\n            sha256: ")'
                         r'([0-9a-f]*)(")')
        ms = pat.findall(text)
        if len(ms) != 1:
            raise SystemExit(f"manifest.ron: graph entry {key} found {len(ms)} times")
        if ms[0][1] != sha:
            changed.append(key)
        text = pat.sub(lambda m: m.group(1) + sha + m.group(3), text, count=1)
    for name, (sha, size) in data_files.items():
        pat = re.compile(r'(\(file: "' + re.escape(name) + r'", sha256: ")([0-9a-f]*)(", bytes: )(\d+)(\))')
        ms = pat.findall(text)
        if len(ms) > 1:
            raise SystemExit(f"manifest.ron: {name} listed {len(ms)} times")
        if not ms:
            continue
        if int(ms[0][3]) != size:
            raise SystemExit(f"manifest.ron: {name} has {ms[0][3]} bytes there, {size} now")
        if ms[0][1] != sha:
            changed.append(name)
        text = pat.sub(lambda m: m.group(1) + sha + m.group(3) + m.group(4) + m.group(5), text, count=1)
    dst.write_text(text)
    return changed


def ort_frame_stats(model: Path, new_model: Path, n_clips: int, n_chunks: int, threads: int) -> dict:
    """Held-out procedural chunks through onnxruntime: shipped encoder -> shipped decoder vs new decoder."""
    enc = ort_session(model / "vae_encoder_clip.onnx", threads)
    decs = {"before": ort_session(model / "vae_decoder.onnx", threads),
            "after": ort_session(new_model / "vae_decoder.onnx", threads)}
    man = read_manifest(model)
    lm = np.asarray(man["latents_mean"], np.float32).reshape(1, -1, 1, 1, 1)
    ls = np.asarray(man["latents_std"], np.float32).reshape(1, -1, 1, 1, 1)
    acc = {"source": [], "before": [], "after": [], "mae_before": [], "mae_after": []}
    for i in range(n_clips):
        fr_all = clips.make_clip(HELD_OUT_BASE + i).frames
        for k in range(n_chunks):
            fr = fr_all[k * CF:(k + 1) * CF]
            video = fr.astype(np.float32).transpose(3, 0, 1, 2)[None] / 127.5 - 1.0
            lat = (enc.run(None, {"video": video})[0] - lm) / ls
            acc["source"].append(laplacian_variance(fr))
            for name, sess in decs.items():
                out = sess.run(None, {"latents": lat})[0][0]
                rec = np.round(np.clip(out * 0.5 + 0.5, 0, 1) * 255).astype(np.uint8).transpose(1, 2, 3, 0)
                acc[name].append(laplacian_variance(rec))
                acc[f"mae_{name}"].append(np.abs(rec.astype(np.float64) - fr).mean(axis=(1, 2, 3)))
    return summarize({k: np.mean(v, 0) for k, v in acc.items()}, n_chunks=len(acc["source"]))


def cmd_finalize(args) -> int:
    global LOG_FILE
    import torch

    model = Path(args.model)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    LOG_FILE = out / "finalize.log"
    LOG_FILE.write_text("")
    run = Path(args.run)
    src = run / TRAINED if run.is_dir() else run
    new, meta = read_safetensors(src)
    cfg = json.loads(meta["config"])
    base = json.loads(meta["source_sha256"])
    for f in ("vae_decoder.onnx", "vae_decoder.onnx.data"):
        if sha256_file(model / f) != base[f]:
            raise SystemExit(f"{model / f} is not the file the weights were prepared from (sha256 differs)")
    man = read_manifest(model)
    if man["latents_mean"] != cfg["latents_mean"] or man["latents_std"] != cfg["latents_std"]:
        raise SystemExit("latent constants differ between the run and the model's manifest")
    # The full VAE: frozen encoder from the shipped encoder graph, new decoder from the run.
    enc, _ = onnx_params(model / "vae_encoder_clip.onnx", ENCODER_PREFIXES)
    state = {k: v for k, v in enc.items()}
    state.update(new)
    vae = build_vae(cfg, state)
    want = {k for k in vae.state_dict() if k.startswith(DECODER_PREFIXES)}
    if set(new) != want:
        raise SystemExit(f"{src.name}: decoder tensors differ from the model's: {sorted(set(new) ^ want)[:8]}")
    old, _ = onnx_params(model / "vae_decoder.onnx", DECODER_PREFIXES)
    delta = max(float(np.abs(new[k] - old[k]).max()) for k in want)
    rel = math.sqrt(sum(float(((new[k] - old[k]) ** 2).sum()) for k in want) / sum(float((old[k] ** 2).sum()) for k in want))
    log(f"{src}: {len(new)} decoder tensors; max |new - shipped| {delta:.3e}, relative L2 change {rel:.3e}")
    dest = Path(args.model_out) if args.model_out else out / "helios-nano"
    if dest.resolve() == model.resolve():
        raise SystemExit("--model-out must not be the shipped model dir (copy from OUT/install instead)")
    if dest.exists():
        shutil.rmtree(dest)
    shutil.copytree(model, dest)
    rep = write_decoder_graphs(model, dest, new)
    parts = [f"{g}.onnx ({r['inline']} inline + {r['external']} external)" for g, r in rep.items()]
    log(f"rewrote {', '.join(parts)} and vae_decoder.onnx.data in {dest}")
    hashes = {g: sha256_file(dest / f"{g}.onnx") for g in DECODER_GRAPHS}
    data_file = dest / "vae_decoder.onnx.data"
    data_hash = (sha256_file(data_file), data_file.stat().st_size)
    changed = update_manifest(model / "manifest.ron", dest / "manifest.ron", hashes,
                              {"vae_decoder.onnx.data": data_hash})
    short = {g: h[:12] for g, h in hashes.items()}
    listed = "vae_decoder.onnx.data" in changed
    log(f"manifest.ron: sha256 updated for {changed} ({short}, data {data_hash[0][:12]}"
        + ("" if listed else "; this manifest does not list external-data hashes") + ")")
    # Everything else in the copy must be byte-identical to the shipped model.
    for p in sorted(model.iterdir()):
        if p.name in ("vae_decoder.onnx", "vae_decoder.onnx.data", "vae_decoder_rgba8.onnx", "manifest.ron"):
            continue
        if sha256_file(p) != sha256_file(dest / p.name):
            raise SystemExit(f"{p.name} changed in the copy")
    import onnx

    for g in DECODER_GRAPHS:
        onnx.checker.check_model(str(dest / f"{g}.onnx"), full_check=True)
    _, other_old = onnx_params(model / "vae_decoder.onnx", DECODER_PREFIXES)
    _, other_new = onnx_params(dest / "vae_decoder.onnx", DECODER_PREFIXES)
    if set(other_old) != set(other_new) or not all(np.array_equal(other_old[k], other_new[k]) for k in other_old):
        raise SystemExit("non-parameter initializers changed")
    err = check_decoder_vs_ort(vae, cfg, dest / "vae_decoder.onnx", args.seed, "fine-tuned decoder")
    # vae_decoder_rgba8: bytes must equal the byte mapping of the new vae_decoder's video exactly.
    g = torch.Generator().manual_seed(args.seed + 7)
    lat = torch.randn(1, cfg["z_dim"], LF, H // 8, W // 8, generator=g).numpy()
    video = ort_session(dest / "vae_decoder.onnx").run(None, {"latents": lat})[0]
    rgba = ort_session(dest / "vae_decoder_rgba8.onnx").run(None, {"latents": lat})[0]
    want_rgb = to_u8(torch.from_numpy(video))[0]
    if rgba.shape != (CF, H, W, 4) or not np.array_equal(rgba[..., :3], want_rgb) or not (rgba[..., 3] == 255).all():
        raise SystemExit("vae_decoder_rgba8 does not match vae_decoder's video")
    log("vae_decoder_rgba8: bytes equal the new vae_decoder's video mapped to RGBA8 exactly")
    stats = None
    if args.eval_clips > 0:
        t0 = time.time()
        stats = ort_frame_stats(model, dest, args.eval_clips, args.held_out_chunks, args.threads)
        log(f"onnxruntime per-frame stats on {stats['n_chunks']} held-out chunks ({time.time() - t0:.0f}s):")
        print_table(stats)
    runtime = None
    if args.bin and Path(args.bin).exists():
        # The Rust runtime loads the new dir (manifest hashes verified) and makes one chunk of frames.
        import subprocess

        rt = out / "runtime-check"
        rt.mkdir(exist_ok=True)
        (rt / "jobs.tsv").write_text("check\t1\t1\tday\n")
        t0 = time.time()
        r = subprocess.run([args.bin, "batch-generate", "--model", str(dest), "--jobs", str(rt / "jobs.tsv"), "--out", str(rt)],
                           capture_output=True, text=True)
        n = (rt / "check.rgb").stat().st_size if (rt / "check.rgb").exists() else 0
        if r.returncode != 0 or n != CF * H * W * 3:
            raise SystemExit(f"the Rust runtime failed on {dest}: rc {r.returncode}, {n} bytes\n{r.stdout}{r.stderr}")
        runtime = f"{Path(args.bin).name} loaded {dest} and made {n // (H * W * 3)} frames ({time.time() - t0:.1f}s)"
        log(f"runtime check: {runtime}")
        shutil.rmtree(rt)
    else:
        log(f"runtime check skipped: no binary at {args.bin} (cargo build --no-default-features --features tools --bin helios-tools)")
    inst = out / "install"
    if inst.exists():
        shutil.rmtree(inst)
    inst.mkdir()
    files = ["vae_decoder.onnx", "vae_decoder.onnx.data", "vae_decoder_rgba8.onnx", "manifest.ron"]
    for f in files:
        shutil.copy2(dest / f, inst / f)
    res = {"run": str(src), "model": str(model), "model_out": str(dest), "ort_vs_torch_max_abs_err": err,
           "max_abs_weight_change": delta, "relative_l2_weight_change": rel, "sha256": hashes,
           "data_sha256": data_hash[0], "install_files": files, "ort_frame_stats": stats,
           "runtime_check": runtime}
    (out / "finalize.json").write_text(json.dumps(res, indent=1))
    log(f"install: cp {inst}/{{{','.join(files)}}} {model}/   (or use --model {dest} directly)")
    return 0


# ----------------------------------------------------------------------------------------------------------
# Training (device)
# ----------------------------------------------------------------------------------------------------------


def _gen_clip(seed: int):
    return clips.make_clip(seed).frames


class ClipStore:
    """Clips from a process pool (forked before CUDA is touched), collected by a background thread."""

    def __init__(self, pool, seeds: list[int]):
        self.frames: list[np.ndarray] = []
        self.lock = threading.Lock()
        self.stop = threading.Event()
        self.pool = pool
        self.it = pool.imap(_gen_clip, seeds)
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self):
        while not self.stop.is_set():
            try:
                fr = self.it.next(timeout=0.5)
            except mp.TimeoutError:
                continue
            except StopIteration:
                break
            with self.lock:
                self.frames.append(fr)

    def __len__(self):
        with self.lock:
            return len(self.frames)

    def wait_for(self, n: int, timeout: float):
        t = time.time()
        while len(self) < n and time.time() - t < timeout and self.thread.is_alive():
            time.sleep(0.05)

    def finish(self):
        self.stop.set()
        self.thread.join(timeout=5)
        self.pool.terminate()
        self.pool.join()


def lr_at(base: float, step: int, progress: float, warmup: int) -> float:
    """Linear warmup over `warmup` steps, then cosine to 10 % over the phase's time (train.py's schedule)."""
    w = min(1.0, (step + 1) / warmup)
    return base * w * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * min(max(progress, 0.0), 1.0))))


def summarize(series: dict[str, np.ndarray], n_chunks: int) -> dict:
    res = {k: [float(x) for x in v] for k, v in series.items()}
    res["n_chunks"] = n_chunks
    for k in ("source", "before", "after"):
        if k in series:
            v = series[k]
            res[f"{k}_last_over_first"] = float(v[-1] / v[0])
            res[f"{k}_last8_over_first8"] = float(v[-8:].mean() / v[:8].mean())
    for k in ("mae_before", "mae_after"):
        if k in series:
            res[f"{k}_mean"] = float(series[k].mean())
            res[f"{k}_last8"] = float(series[k][-8:].mean())
    return res


def print_table(s: dict) -> None:
    has_after = "after" in s
    log("frame | source lapvar | before lapvar | " + ("after lapvar | " if has_after else "")
        + "before MAE | " + ("after MAE" if has_after else ""))
    for t in range(CF):
        row = f"{t:5d} | {s['source'][t]:12.1f} | {s['before'][t]:13.1f} | "
        if has_after:
            row += f"{s['after'][t]:12.1f} | "
        row += f"{s['mae_before'][t]:10.2f} | "
        if has_after:
            row += f"{s['mae_after'][t]:9.2f}"
        log(row)
    msg = (f"lapvar last/first: source {s['source_last_over_first']:.3f}, before {s['before_last_over_first']:.3f}"
           + (f", after {s['after_last_over_first']:.3f}" if has_after else "")
           + f"; mean 25..32 / 0..7: before {s['before_last8_over_first8']:.3f}"
           + (f", after {s['after_last8_over_first8']:.3f}" if has_after else "")
           + f"; MAE (0..255) mean before {s['mae_before_mean']:.2f}"
           + (f", after {s['mae_after_mean']:.2f}" if has_after else "")
           + f", frames 25..32 before {s['mae_before_last8']:.2f}"
           + (f", after {s['mae_after_last8']:.2f}" if has_after else ""))
    log(msg)


def held_out_eval(vae, dec: "LatentDecoder", held: list[np.ndarray], device, batch: int, n_chunks: int):
    """Per frame index (uint8 frames as the runtime makes them): lapvar of source / reconstruction and MAE.
    fp32 (as onnxruntime runs the graphs), encoder posterior mean, normalised, decoded chunk by chunk."""
    import torch

    chunks = np.concatenate([h.reshape(clips.CHUNKS, CF, H, W, 3)[:n_chunks] for h in held])
    src, rec_l, mae = [], [], []
    with torch.no_grad():
        for i in range(0, len(chunks), batch):
            fr = chunks[i:i + batch]
            x = to_video(fr, device)
            lat = dec.normalise(vae.encode(x).latent_dist.mean)
            rec = to_u8(dec(lat))
            for a, b in zip(fr, rec):
                src.append(laplacian_variance(a))
                rec_l.append(laplacian_variance(b))
                mae.append(np.abs(b.astype(np.float64) - a).mean(axis=(1, 2, 3)))
    return np.mean(src, 0), np.mean(rec_l, 0), np.mean(mae, 0), rec


def cmd_train(args, origin: float | None = None) -> int:
    global LOG_FILE
    origin = T_START if origin is None else origin
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    LOG_FILE = out / "train.log"
    LOG_FILE.write_text("")
    budget = args.budget_s
    state, meta = read_safetensors(Path(args.weights))
    cfg = json.loads(meta["config"])
    log(f"finetune_decoder train: {vars(args)}")
    # Clip pool before CUDA is initialised (fork).
    pool = mp.get_context("fork").Pool(args.workers)
    held = pool.map(_gen_clip, [HELD_OUT_BASE + i for i in range(args.held_out)])
    seeds = [TRAIN_BASE + args.seed * 1_000_003 + i for i in range(args.max_clips)]
    store = ClipStore(pool, seeds)
    log(f"data: {len(held)} held-out clips; generating up to {args.max_clips} training clips with {args.workers} workers")

    import torch

    device = torch.device(args.device)
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
        torch.backends.cudnn.benchmark = True
    torch.manual_seed(args.seed)
    vae = build_vae(cfg, state).to(device)
    dec = LatentDecoder(vae, cfg["latents_mean"], cfg["latents_std"], device)
    train_params = [p for n, p in vae.named_parameters() if n.startswith(DECODER_PREFIXES)]
    for n, p in vae.named_parameters():
        p.requires_grad_(n.startswith(DECODER_PREFIXES))
    n_train = sum(p.numel() for p in train_params)
    log(f"vae {sum(p.numel() for p in vae.parameters()) / 1e6:.3f}M params, training decoder + post_quant_conv "
        f"({n_train / 1e6:.3f}M); encoder frozen; device {device}"
        + (f" ({torch.cuda.get_device_name(device)})" if device.type == "cuda" else ""))
    amp = torch.autocast("cuda", dtype=torch.bfloat16) if device.type == "cuda" and not args.fp32 else None

    def autocast():
        return amp if amp is not None else torch.autocast("cpu", enabled=False)

    # BEFORE: the shipped decoder on the held-out chunks.
    t = time.time()
    vae.eval()
    src_lap, before_lap, before_mae, _ = held_out_eval(vae, dec, held, device, args.eval_batch, args.held_out_chunks)
    log(f"held-out before: {len(held) * args.held_out_chunks} chunks in {time.time() - t:.1f}s; lapvar frame 0 "
        f"{before_lap[0]:.1f} -> frame 32 {before_lap[-1]:.1f} (source {src_lap[0]:.1f} -> {src_lap[-1]:.1f}); "
        f"MAE {before_mae.mean():.2f}")

    opt = torch.optim.AdamW(train_params, lr=args.lr, betas=(0.9, 0.99), weight_decay=args.weight_decay)
    rng = np.random.default_rng(args.seed + 1)
    gen = torch.Generator(device=device).manual_seed(args.seed + 2)
    lat_cache: dict[int, torch.Tensor] = {}

    def latents_for(idx: np.ndarray, ks: np.ndarray, frames: list[np.ndarray]):
        """Normalised posterior means [B, 16, 9, h, w] of (clip, chunk) pairs; each clip's 4 chunks are encoded
        once with the frozen encoder (autocast as train.py's encode_clips) and cached on the device."""
        need = [int(i) for i in sorted(set(idx.tolist())) if int(i) not in lat_cache]
        for j in range(0, len(need), max(1, args.encode_batch // clips.CHUNKS)):
            part = need[j:j + max(1, args.encode_batch // clips.CHUNKS)]
            fr = np.stack([frames[i] for i in part]).reshape(len(part) * clips.CHUNKS, CF, H, W, 3)
            with torch.no_grad(), autocast():
                mu = vae.encode(to_video(fr, device)).latent_dist.mean.float()
            mu = dec.normalise(mu).view(len(part), clips.CHUNKS, *mu.shape[1:])
            for i, m in zip(part, mu):
                lat_cache[i] = m
        return torch.stack([lat_cache[int(i)][int(k)] for i, k in zip(idx, ks)])

    crop = None
    if args.crop:
        crop = tuple(int(v) for v in args.crop.lower().split("x"))
        if not (0 < crop[0] <= H // 8 and 0 < crop[1] <= W // 8):
            raise SystemExit(f"--crop {args.crop}: latent window must fit {H // 8}x{W // 8}")
    store.wait_for(max(2, min(args.batch, 16)), timeout=180)
    if len(store) == 0:
        raise SystemExit("no clips were generated")
    t0 = time.time()
    deadline = origin + budget - args.reserve_s
    span = max(deadline - t0, 1e-3)
    losses, step = [], 0
    acc = torch.zeros(2, device=device)
    acc_pf = torch.zeros(CF, device=device)
    fw = torch.tensor(frame_weights(args.frame0_weight, args.frame0_ramp), device=device)
    log(f"loss weight per frame index: {[round(float(v), 2) for v in fw[:6]]} ... 1.0; laplacian L1 x{args.lap_weight}")
    acc_n = 0
    vae.train()
    while time.time() < deadline or step < args.min_steps:
        if step >= args.max_steps > 0:
            break
        with store.lock:
            frames = store.frames
            n = len(frames)
            idx = rng.integers(0, n, args.batch)
            ks = rng.integers(0, clips.CHUNKS, args.batch)
            seg = np.stack([frames[i][k * CF:(k + 1) * CF] for i, k in zip(idx, ks)])
        lat = latents_for(idx, ks, frames)
        if crop:  # the same random latent window (and its pixels) for the whole batch
            oy = int(rng.integers(0, H // 8 - crop[0] + 1))
            ox = int(rng.integers(0, W // 8 - crop[1] + 1))
            lat = lat[..., oy:oy + crop[0], ox:ox + crop[1]]
            seg = seg[:, :, 8 * oy:8 * (oy + crop[0]), 8 * ox:8 * (ox + crop[1])]
        if args.latent_noise > 0:
            s = torch.rand(lat.shape[0], 1, 1, 1, 1, device=device, generator=gen) * args.latent_noise
            lat = lat + s * torch.randn(lat.shape, device=device, generator=gen)
        x = to_video(seg, device)
        for g in opt.param_groups:
            g["lr"] = lr_at(args.lr, step, (time.time() - t0) / span, args.warmup)
        try:
            with autocast():
                rec = dec(lat)
            loss, l1, pf = recon_loss(rec, x, args.grad_weight, fw, args.lap_weight)
            opt.zero_grad(set_to_none=True)
            loss.backward()
        except torch.cuda.OutOfMemoryError:
            if step > 5 or args.batch <= 2:
                raise
            rec = loss = l1 = pf = None
            opt.zero_grad(set_to_none=True)
            torch.cuda.empty_cache()
            args.batch //= 2
            log(f"out of memory at step {step}: batch -> {args.batch}")
            continue
        torch.nn.utils.clip_grad_norm_(train_params, 1.0)
        opt.step()
        step += 1
        if step == 3 and device.type == "cuda":
            log(f"peak CUDA memory after 3 steps: {torch.cuda.max_memory_allocated(device) / 2**30:.1f} GiB")
        acc += torch.stack([loss.detach(), l1.detach()])
        acc_pf += pf
        acc_n += 1
        if step % args.log_every == 0 or step == 1:
            a = (acc / acc_n).tolist()
            pfa = (acc_pf / acc_n).tolist()
            rec_ = {"step": step, "t": round(time.time() - origin, 2), "loss": a[0], "l1": a[1],
                    "lr": opt.param_groups[0]["lr"], "clips": len(store),
                    "l1_first8": float(np.mean(pfa[:8])), "l1_last8": float(np.mean(pfa[-8:]))}
            losses.append(rec_)
            if step % (args.log_every * 5) == 0 or step == 1:
                log(f"step {step}: loss {a[0]:.4f} l1 {a[1]:.4f} (frames 0..7 {rec_['l1_first8']:.4f}, 25..32 "
                    f"{rec_['l1_last8']:.4f}) lr {rec_['lr']:.2e} clips {len(store)} "
                    f"({step / (time.time() - t0):.2f} steps/s)")
            acc.zero_()
            acc_pf.zero_()
            acc_n = 0
    train_s = time.time() - t0
    store.finish()
    vae.eval()
    log(f"train: {step} steps of {args.batch} x {CF}-frame chunks in {train_s:.1f}s; {len(store)} clips, "
        f"{len(lat_cache)} encoded")
    # Save first, then evaluate.
    new = {n: p.detach().float().cpu().numpy() for n, p in vae.state_dict().items() if n.startswith(DECODER_PREFIXES)}
    if not all(np.isfinite(v).all() for v in new.values()):
        raise SystemExit("non-finite decoder weights")
    meta_out = dict(meta, train=json.dumps({"steps": step, "batch": args.batch, "lr": args.lr, "train_s": train_s,
                                            "clips": len(store), "seed": args.seed}))
    write_safetensors(out / TRAINED, new, meta_out)
    log(f"wrote {out / TRAINED} ({(out / TRAINED).stat().st_size / 2**20:.2f} MiB)")
    t = time.time()
    _, after_lap, after_mae, _ = held_out_eval(vae, dec, held, device, args.eval_batch, args.held_out_chunks)
    stats = summarize({"source": src_lap, "before": before_lap, "after": after_lap, "mae_before": before_mae,
                       "mae_after": after_mae}, n_chunks=len(held) * args.held_out_chunks)
    log(f"held-out after ({time.time() - t:.1f}s), torch fp32, per frame index:")
    print_table(stats)
    (out / "stats.json").write_text(json.dumps({"args": vars(args), "steps": step, "train_s": train_s,
                                                "held_out": stats, "losses": losses}, indent=0))
    try:
        write_plots(out, losses, stats, vae, dec, held if args.preview else [], device, Path(args.weights))
    except Exception as e:  # noqa: BLE001
        log(f"plots failed: {type(e).__name__}: {e}")
    files = sorted(p.name for p in out.iterdir())
    sizes = {p.name: p.stat().st_size for p in out.iterdir()}
    log(f"done in {time.time() - origin:.1f}s: " + ", ".join(f"{f} {sizes[f] / 2**20:.2f} MiB" for f in files))
    if len(files) > 8 or max(sizes.values()) > 16 * 2**20:
        log("WARNING: output exceeds the device's return limits (8 files, 16 MiB each)")
        return 1
    return 0


def write_plots(out: Path, losses: list, stats: dict, vae, dec, held, device, weights: Path) -> None:
    import png
    import torch
    from contact_sheet import save_png, sheet

    if losses:
        xs = [r["step"] for r in losses]
        panels = [("decoder fine-tune loss", {"loss": (xs, [r["loss"] for r in losses]),
                                              "l1": (xs, [r["l1"] for r in losses])}),
                  ("held-out lapvar per frame index", {k: (list(range(CF)), stats[k]) for k in ("source", "before", "after")})]
        png.plot_curves(panels, out / "loss.png")
    # preview: source / before (shipped, re-created from the prepared weights) / after, two held-out chunks
    if not held:
        return
    rows = []
    state0, meta = read_safetensors(weights)
    vae0 = build_vae(json.loads(meta["config"]), state0).to(device)
    dec0 = LatentDecoder(vae0, dec.mean.flatten().tolist(), (1.0 / dec.inv_std).flatten().tolist(), device)
    for h in held[:2]:
        fr = h[CF:2 * CF]
        with torch.no_grad():
            x = to_video(fr[None], device)
            lat = dec.normalise(vae.encode(x).latent_dist.mean)
            rows += [(fr, "source"), (to_u8(dec0(lat))[0], "shipped decoder"), (to_u8(dec(lat))[0], "fine-tuned decoder")]
    save_png(sheet(rows, scale=1, columns=[0, 4, 8, 12, 16, 20, 24, 28, 30, 32]), out / "preview.png")


def cmd_all(args) -> int:
    out = Path(args.out)
    prep = argparse.Namespace(**vars(args))
    prep.out = str(out / "prepared")
    rc = cmd_prepare(prep)
    if rc:
        return rc
    tr = argparse.Namespace(**vars(args))
    tr.out = str(out / "train")
    tr.weights = str(out / "prepared" / PREPARED)
    rc = cmd_train(tr, origin=time.time())
    if rc:
        return rc
    fin = argparse.Namespace(**vars(args))
    fin.out = str(out / "final")
    fin.run = str(out / "train")
    fin.model_out = args.model_out
    return cmd_finalize(fin)


SMOKE = dict(budget_s=45.0, workers=2, max_clips=6, batch=1, held_out=1, held_out_chunks=1, eval_batch=1,
             encode_batch=4, reserve_s=20.0, log_every=1, min_steps=3, eval_clips=1, warmup=2, crop="4x8",
             preview=False)


def parse_args(argv):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="cmd", required=True)

    def common(sp, out_default):
        sp.add_argument("--out", default=out_default, help="everything is written under this directory")
        sp.add_argument("--seed", type=int, default=0)
        sp.add_argument("--smoke", action="store_true", help="tiny CPU run (~2-3 min for `all`)")

    def model_arg(sp):
        sp.add_argument("--model", default=str(REPO / "models" / "helios-nano"), help="the shipped model dir")

    def train_args(sp):
        sp.add_argument("--device", default=None, help="cuda | cpu (default: cuda if available)")
        sp.add_argument("--budget-s", type=float, default=480.0, help="wall clock of train, from process start")
        sp.add_argument("--reserve-s", type=float, default=40.0, help="kept for the final save + held-out eval")
        sp.add_argument("--batch", type=int, default=32, help="33-frame chunks per step")
        sp.add_argument("--lr", type=float, default=4e-4)
        sp.add_argument("--warmup", type=int, default=50)
        sp.add_argument("--weight-decay", type=float, default=0.0)
        sp.add_argument("--grad-weight", type=float, default=1.0, help="image-gradient L1 weight (train.py: 1.0)")
        sp.add_argument("--frame0-weight", type=float, default=1.0,
                        help="loss weight of each chunk's frame 0 (1: uniform; the causal start is the softest frame)")
        sp.add_argument("--frame0-ramp", type=int, default=0, help="frames over which the weight falls back to 1")
        sp.add_argument("--lap-weight", type=float, default=0.0, help="weight of the Laplacian L1 term")
        sp.add_argument("--latent-noise", type=float, default=0.0,
                        help="max std of Gaussian noise added to the normalised latents (0: exact posterior means)")
        sp.add_argument("--workers", type=int, default=max(1, min(13, (os.cpu_count() or 2) - 3)))
        sp.add_argument("--max-clips", type=int, default=6000)
        sp.add_argument("--held-out", type=int, default=24, help="held-out clips (x 4 chunks) for the stats")
        sp.add_argument("--encode-batch", type=int, default=64, help="33-frame chunks per encoder batch")
        sp.add_argument("--eval-batch", type=int, default=16)
        sp.add_argument("--min-steps", type=int, default=0, help="steps run even past the deadline")
        sp.add_argument("--max-steps", type=int, default=0, help="stop after this many steps (0: budget only)")
        sp.add_argument("--log-every", type=int, default=10)
        sp.add_argument("--fp32", action="store_true", help="no bf16 autocast on CUDA")
        sp.add_argument("--no-preview", dest="preview", action="store_false", help="skip preview.png")
        sp.add_argument("--crop", default="", help="train on a random latent window HxW (e.g. 4x8; --smoke); "
                        "default: whole 8x16 chunks")

    def held_args(sp):
        sp.add_argument("--held-out-chunks", type=int, default=clips.CHUNKS, choices=range(1, clips.CHUNKS + 1),
                        help="chunks of each held-out clip used for the per-frame stats")

    def finalize_args(sp):
        sp.add_argument("--model-out", default=None, help="the rewritten model dir (default OUT/helios-nano)")
        sp.add_argument("--eval-clips", type=int, default=6, help="held-out clips for the onnxruntime stats (0: skip)")
        sp.add_argument("--threads", type=int, default=os.cpu_count() or 1)
        sp.add_argument("--bin", default=str(REPO / "target" / "debug" / "helios-tools"),
                        help="helios-tools binary (run as `BIN batch-generate`) for a load-and-generate check of "
                             "the new dir ('' to skip)")

    sp = sub.add_parser("prepare", help="ONNX -> vae_nano.safetensors (+ torch vs onnxruntime checks)")
    common(sp, str(REPO / ".nano-ft"))
    model_arg(sp)
    sp = sub.add_parser("train", help="fine-tune the decoder (the device step)")
    common(sp, "out/nano-ft")
    sp.add_argument("--weights", default=str(REPO / ".nano-ft" / PREPARED), help="prepare's output")
    train_args(sp)
    held_args(sp)
    sp = sub.add_parser("finalize", help="write the new decoder into a copy of the model dir")
    common(sp, "out/nano-ft-final")
    model_arg(sp)
    sp.add_argument("--run", required=True, help="train's output dir (or its decoder_ft.safetensors)")
    finalize_args(sp)
    held_args(sp)
    sp = sub.add_parser("all", help="prepare -> train -> finalize under OUT")
    common(sp, "out/nano-ft-all")
    model_arg(sp)
    train_args(sp)
    finalize_args(sp)
    held_args(sp)
    args = p.parse_args(argv)
    if args.smoke:
        for k, v in SMOKE.items():
            if hasattr(args, k) and f"--{k.replace('_', '-')}" not in argv:
                setattr(args, k, v)
    if hasattr(args, "device") and args.device is None:
        import torch

        args.device = "cuda" if torch.cuda.is_available() else "cpu"
    return args


def main(argv=None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = parse_args(argv)
    import torch

    torch.manual_seed(args.seed)
    np.random.seed(args.seed % 2**32)
    if args.cmd == "prepare":
        return cmd_prepare(args)
    if args.cmd == "train":
        return cmd_train(args)
    if args.cmd == "finalize":
        return cmd_finalize(args)
    return cmd_all(args)


if __name__ == "__main__":
    try:
        sys.exit(main())
    except SystemExit:
        raise
    except BaseException as e:  # noqa: BLE001
        log(f"FAILED: {type(e).__name__}: {e}")
        raise
