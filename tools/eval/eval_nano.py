#!/usr/bin/env python3
"""Evaluates helios-nano as the game runs it: frames come from our Rust runtime (`helios-tools batch-generate`),
measures are computed on those frames.

    cargo build --release --no-default-features --features tools --bin helios-tools --target-dir target/core
    tools/.venv/bin/python tools/eval/eval_nano.py --model models/helios-nano \
        --bin target/core/release/helios-tools        # ~16 min on 2 cores (11 generation, 4.5 measure)

1. The measure: a softmax-regression classifier per attribute (time of day, weather, scene, camera speed) on
   colour / texture / motion statistics of a chunk's frames (`features`). It is trained on procedural clips
   (tools/nano/clips.py) passed through the model's own VAE (encode -> decode with the exported ONNX graphs),
   so it sees the same blur as generated frames; its accuracy on held-out procedural clips is reported as the
   measure's own ceiling.
2. Conditioning accuracy: for each attribute, >= 50 generated clips whose captions cycle through its values
   (other attributes random), 2 chunks each; accuracy per chunk index.
3. Drift: 60 s streams (44 chunks of 33 frames at 24 fps) with a fixed prompt; the measure (per generated
   chunk; a chunk counts in the 10 s window its first frame falls in) and the mean luminance per window.
4. Prompt change: streams that switch one attribute at chunk 3; which chunk the classifier flips at.
5. Speed: per-chunk denoise and decode seconds reported by the runtime (this machine's CPU).
6. A contact sheet of generated clips for every prompt of the model's bank.

Writes OUT/* (raw frames, jobs, timings) and DOCS/eval.json, DOCS/eval.md, DOCS/generated.png.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO / "tools" / "nano"))
import clips  # noqa: E402
from clips import Attrs  # noqa: E402

CHUNK = clips.CHUNK_FRAMES
H, W = clips.H, clips.W
MEASURED = ("time", "weather", "scene", "camera")


# ----------------------------------------------------------------------------------------------------------
# The measure
# ----------------------------------------------------------------------------------------------------------


def features(frames: np.ndarray) -> np.ndarray:
    """Statistics of one chunk, uint8 [T, H, W, 3] -> float vector. Regions: 4 horizontal bands x 4 columns."""
    f = frames.astype(np.float32) / 255.0
    T = f.shape[0]
    luma = f @ np.array([0.299, 0.587, 0.114], np.float32)
    mx, mn = f.max(-1), f.min(-1)
    sat = (mx - mn) / (mx + 1e-3)
    bands = np.array_split(np.arange(H), 4)
    cols = np.array_split(np.arange(W), 4)
    out = []
    for b in bands:
        for c in cols:
            cell = f[:, b][:, :, c]
            out += list(cell.mean((0, 1, 2)))                       # mean RGB
            out.append(luma[:, b][:, :, c].std())                   # contrast
    dx = np.abs(np.diff(luma, axis=2))
    dy = np.abs(np.diff(luma, axis=1))
    dt = np.abs(np.diff(luma, axis=0)) if T > 1 else np.zeros_like(luma[:1])
    white = ((luma > 0.8) & (sat < 0.15)).astype(np.float32)
    for b in bands:
        bb = b[b < H - 1]
        out += [dx[:, b].mean(), dy[:, bb].mean(), dt[:, b].mean(), sat[:, b].mean(), white[:, b].mean(),
                luma[:, b].mean()]
    # motion split by spatial frequency: a horizontal pan moves edges, falling particles flicker everywhere
    out += [dt.mean(), np.abs(np.diff(dx, axis=0)).mean() if T > 1 else 0.0, dx.mean() / (dy.mean() + 1e-4)]
    return np.asarray(out, np.float32)


class Softmax:
    """Multinomial logistic regression with L2, trained by full-batch gradient descent on standardised features."""

    def __init__(self, classes: tuple[str, ...]):
        self.classes = classes

    def fit(self, X: np.ndarray, y: np.ndarray, l2: float = 1e-3, steps: int = 3000, lr: float = 0.5):
        self.mu, self.sd = X.mean(0), X.std(0) + 1e-6
        Z = (X - self.mu) / self.sd
        n, d = Z.shape
        k = len(self.classes)
        Wt = np.zeros((d, k), np.float64)
        b = np.zeros(k, np.float64)
        Y = np.eye(k)[y]
        for _ in range(steps):
            logits = Z @ Wt + b
            logits -= logits.max(1, keepdims=True)
            p = np.exp(logits)
            p /= p.sum(1, keepdims=True)
            g = (p - Y) / n
            Wt -= lr * (Z.T @ g + l2 * Wt)
            b -= lr * g.sum(0)
        self.W, self.b = Wt, b
        return self

    def predict(self, X: np.ndarray) -> np.ndarray:
        return np.argmax(((X - self.mu) / self.sd) @ self.W + self.b, axis=1)


def vae_roundtrip(model_dir: Path, manifest: dict, frames: np.ndarray, sessions: dict) -> np.ndarray:
    """uint8 [33, H, W, 3] -> encode (mean) -> normalise -> decode -> uint8, with the exported graphs."""
    import onnxruntime as ort

    if not sessions:
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = os.cpu_count() or 1
        for key in ("vae_encoder_clip", "vae_decoder"):
            sessions[key] = ort.InferenceSession(str(model_dir / f"{key}.onnx"), opts,
                                                 providers=["CPUExecutionProvider"])
    video = frames.astype(np.float32).transpose(3, 0, 1, 2)[None] / 127.5 - 1.0
    mean = sessions["vae_encoder_clip"].run(None, {"video": video})[0]
    lm = np.asarray(manifest["latents_mean"], np.float32).reshape(1, -1, 1, 1, 1)
    ls = np.asarray(manifest["latents_std"], np.float32).reshape(1, -1, 1, 1, 1)
    out = sessions["vae_decoder"].run(None, {"latents": (mean - lm) / ls})[0][0]
    return np.round(np.clip(out * 0.5 + 0.5, 0, 1) * 255).astype(np.uint8).transpose(1, 2, 3, 0)


def read_manifest_constants(model_dir: Path) -> dict:
    text = (model_dir / "manifest.ron").read_text()
    out = {}
    for key in ("latents_mean", "latents_std"):
        m = re.search(rf"{key}: \[([^\]]*)\]", text)
        out[key] = [float(v) for v in m.group(1).split(",") if v.strip()]
    out["bank"] = {}
    return out


def train_measure(model_dir: Path, n_clips: int, seed: int) -> tuple[dict, dict]:
    """Classifiers per attribute, and their held-out accuracy on VAE-roundtripped procedural chunks."""
    manifest = read_manifest_constants(model_dir)
    sessions: dict = {}
    X, labels = [], {a: [] for a in MEASURED}
    t0 = time.time()
    rng = np.random.default_rng(seed)
    for i in range(n_clips):
        a = Attrs(str(rng.choice(clips.TIMES)), str(rng.choice(clips.WEATHERS)), str(rng.choice(clips.SCENES)),
                  tuple(e for e in clips.ELEMENTS if rng.random() < clips.ELEMENT_P), str(rng.choice(clips.CAMERAS)))
        k = int(rng.integers(clips.CHUNKS))
        chunk = clips.to_uint8(clips.render(clips.World(10_000 + i), a, k * CHUNK, CHUNK))
        X.append(features(vae_roundtrip(model_dir, manifest, chunk, sessions)))
        for attr in MEASURED:
            labels[attr].append(clips.ATTRIBUTES[attr].index(getattr(a, attr)))
    X = np.stack(X)
    print(f"measure: {n_clips} procedural chunks through the VAE in {time.time() - t0:.0f}s", flush=True)
    n_train = int(0.8 * n_clips)
    models, held_out = {}, {}
    for attr in MEASURED:
        y = np.asarray(labels[attr])
        m = Softmax(clips.ATTRIBUTES[attr]).fit(X[:n_train], y[:n_train])
        held_out[attr] = float((m.predict(X[n_train:]) == y[n_train:]).mean())
        models[attr] = Softmax(clips.ATTRIBUTES[attr]).fit(X, y)
    return models, held_out


# ----------------------------------------------------------------------------------------------------------
# Jobs for the Rust batch generator
# ----------------------------------------------------------------------------------------------------------


def random_attrs(rng, **fixed) -> Attrs:
    a = dict(time=str(rng.choice(clips.TIMES)), weather=str(rng.choice(clips.WEATHERS)),
             scene=str(rng.choice(clips.SCENES)),
             elements=tuple(e for e in clips.ELEMENTS if rng.random() < clips.ELEMENT_P),
             camera=str(rng.choice(clips.CAMERAS)))
    a.update(fixed)
    return Attrs(**a)


def make_jobs(per_attr: int, drift_chunks: int, seed: int, bank: list[str]) -> dict:
    rng = np.random.default_rng(seed)
    jobs = {"accuracy": [], "drift": [], "flip": [], "sheet": []}
    for attr in MEASURED:
        values = clips.ATTRIBUTES[attr]
        n = -(-per_attr // len(values)) * len(values)
        for i in range(n):
            a = random_attrs(rng, **{attr: values[i % len(values)]})
            cap = clips.caption(a, int(rng.integers(clips.VARIANTS)))
            jobs["accuracy"].append(dict(id=f"acc_{attr}_{i:03d}", seed=1000 + i, chunks=2, prompt=cap,
                                         attr=attr, value=getattr(a, attr), attrs=a.__dict__))
    drift = [Attrs("day", "clear", "forest", ("character",), "slow"),
             Attrs("night", "rain", "city", (), "slow"),
             Attrs("dusk", "snow", "ocean", ("campfire",), "fast")]
    for i, a in enumerate(drift):
        jobs["drift"].append(dict(id=f"drift_{i}", seed=7 + i, chunks=drift_chunks, prompt=clips.caption(a),
                                  attrs=a.__dict__))
    flips = [(Attrs("day", "clear", "forest", (), "slow"), "time", "night"),
             (Attrs("night", "clear", "city", (), "slow"), "time", "day"),
             (Attrs("dusk", "clear", "ocean", (), "slow"), "weather", "snow"),
             (Attrs("day", "rain", "forest", (), "slow"), "weather", "clear"),
             (Attrs("day", "clear", "forest", (), "slow"), "scene", "city"),
             (Attrs("dawn", "fog", "city", (), "slow"), "scene", "ocean")]
    for i, (a, attr, value) in enumerate(flips):
        b = Attrs(**{**a.__dict__, attr: value})
        jobs["flip"].append(dict(id=f"flip_{i}", seed=50 + i, chunks=6, prompt=clips.caption(a), switch_at=3,
                                 prompt_after=clips.caption(b), attr=attr, before=getattr(a, attr), after=value))
    for i, name in enumerate(bank):
        jobs["sheet"].append(dict(id=f"sheet_{name}", seed=300 + i, chunks=2, prompt=name))
    return jobs


def write_jobs(path: Path, jobs: dict) -> None:
    lines = []
    for group in jobs.values():
        for j in group:
            f = [j["id"], str(j["seed"]), str(j["chunks"]), j["prompt"]]
            if "switch_at" in j:
                f += [str(j["switch_at"]), j["prompt_after"]]
            lines.append("\t".join(f))
    path.write_text("\n".join(lines) + "\n")


def load_frames(out: Path, job_id: str) -> np.ndarray:
    raw = np.fromfile(out / f"{job_id}.rgb", np.uint8)
    return raw.reshape(-1, H, W, 3)


def bank_names(model_dir: Path) -> list[str]:
    names = []
    for line in (REPO / "tools" / "nano" / "prompts.txt").read_text().splitlines():
        if line.strip() and not line.startswith("#"):
            names.append(line.split(":", 1)[0].strip())
    return names


# ----------------------------------------------------------------------------------------------------------
# Report
# ----------------------------------------------------------------------------------------------------------


def evaluate(out: Path, jobs: dict, models: dict) -> dict:
    res: dict = {"accuracy": {}, "drift": [], "flip": []}
    for attr in MEASURED:
        rows = [j for j in jobs["accuracy"] if j["attr"] == attr]
        per_chunk = [[], []]
        confusion = {v: {u: 0 for u in clips.ATTRIBUTES[attr]} for v in clips.ATTRIBUTES[attr]}
        for j in rows:
            fr = load_frames(out, j["id"])
            for k in range(2):
                pred = models[attr].classes[models[attr].predict(features(fr[k * CHUNK:(k + 1) * CHUNK])[None])[0]]
                per_chunk[k].append(pred == j["value"])
                if k == 1:
                    confusion[j["value"]][pred] += 1
        res["accuracy"][attr] = dict(clips=len(rows), chunk0=float(np.mean(per_chunk[0])),
                                     chunk1=float(np.mean(per_chunk[1])),
                                     both=float(np.mean(per_chunk[0] + per_chunk[1])), confusion_chunk1=confusion)
    window_s = 10.0
    for j in jobs["drift"]:
        fr = load_frames(out, j["id"])
        # classify whole generated chunks (the unit the model makes); a chunk belongs to the 10 s window its
        # first frame falls in
        per_window: dict[int, list] = {}
        for k in range(len(fr) // CHUNK):
            ch = fr[k * CHUNK:(k + 1) * CHUNK]
            x = features(ch)[None]
            preds = {attr: models[attr].classes[models[attr].predict(x)[0]] for attr in MEASURED}
            luma = float((ch.astype(np.float32) @ np.array([0.299, 0.587, 0.114], np.float32)).mean() / 255)
            per_window.setdefault(int(k * CHUNK / clips.FPS // window_s), []).append((preds, luma))
        windows = []
        for w, items in sorted(per_window.items()):
            windows.append(dict(t0=w * window_s, t1=min((w + 1) * window_s, len(fr) / clips.FPS), chunks=len(items),
                                luma=float(np.mean([lu for _, lu in items])),
                                **{f"{attr}_ok": float(np.mean([p[attr] == j["attrs"][attr] for p, _ in items]))
                                   for attr in MEASURED}))
        res["drift"].append(dict(id=j["id"], prompt=j["prompt"], seconds=len(fr) / clips.FPS, windows=windows))
    for j in jobs["flip"]:
        fr = load_frames(out, j["id"])
        m = models[j["attr"]]
        preds = [m.classes[m.predict(features(fr[k * CHUNK:(k + 1) * CHUNK])[None])[0]] for k in range(j["chunks"])]
        first_after = next((k for k in range(j["switch_at"], j["chunks"]) if preds[k] == j["after"]), None)
        res["flip"].append(dict(id=j["id"], attr=j["attr"], before=j["before"], after=j["after"],
                                switch_at=j["switch_at"], predictions=preds,
                                flips_at=first_after,
                                chunks_late=None if first_after is None else first_after - j["switch_at"]))
    return res


def speed(out: Path) -> dict:
    rows = [line.split("\t") for line in (out / "timings.tsv").read_text().splitlines()[1:]]
    first = [(float(d), float(v)) for _, k, d, v in rows if k == "0"]
    steady = [(float(d), float(v)) for _, k, d, v in rows if k != "0"]

    def fps(pairs, decode=True):
        t = np.median([d + (v if decode else 0.0) for d, v in pairs])
        return float(CHUNK / t), float(t)

    return dict(steady_fps_with_decode=fps(steady)[0], steady_fps_without_decode=fps(steady, False)[0],
                steady_chunk_s=fps(steady)[1], steady_denoise_s=float(np.median([d for d, _ in steady])),
                steady_decode_s=float(np.median([v for _, v in steady])), first_chunk_s=fps(first)[1],
                chunks_timed=len(rows))


def markdown(res: dict, held_out: dict, spd: dict, meta: dict) -> str:
    L = ["# helios-nano evaluation", "", f"Generated by `tools/eval/eval_nano.py` on {meta['date']} "
         f"({meta['cpu']}, {meta['threads']} threads), model `{meta['model']}`, frames from the Rust runtime "
         "(`helios-tools batch-generate`, ONNX Runtime CPU).", "",
         "## Conditioning accuracy", "",
         "Classifier on frame statistics, trained on procedural clips passed through the model's VAE; "
         "`ceiling` = its accuracy on held-out procedural chunks.", "",
         "| attribute | classes | generated clips | chunk 0 | chunk 1 | both | ceiling |", "|---|---|---|---|---|---|---|"]
    for attr, r in res["accuracy"].items():
        L.append(f"| {attr} | {', '.join(clips.ATTRIBUTES[attr])} | {r['clips']} | {r['chunk0']:.1%} | "
                 f"{r['chunk1']:.1%} | {r['both']:.1%} | {held_out[attr]:.1%} |")
    L += ["", "## Drift over 60 s (fraction of chunks classified as the prompt says, per 10 s window)", ""]
    for d in res["drift"]:
        L += [f"`{d['prompt']}` ({d['seconds']:.1f} s)", "",
              "| window | chunks | mean luma | " + " | ".join(MEASURED) + " |", "|---|---|---|" + "---|" * len(MEASURED)]
        for w in d["windows"]:
            L.append(f"| {w['t0']:.0f}-{w['t1']:.1f} s | {w['chunks']} | {w['luma']:.3f} | " +
                     " | ".join(f"{w[a + '_ok']:.0%}" for a in MEASURED) + " |")
        L.append("")
    L += ["## Prompt change at chunk 3", "", "| attribute | from -> to | per-chunk prediction | flips at chunk |",
          "|---|---|---|---|"]
    for f in res["flip"]:
        L.append(f"| {f['attr']} | {f['before']} -> {f['after']} | {' '.join(f['predictions'])} | "
                 f"{f['flips_at'] if f['flips_at'] is not None else 'never'} |")
    L += ["", "## CPU speed (median over the chunks above; 33 frames a chunk)", "",
          f"- steady chunk: {spd['steady_chunk_s'] * 1000:.0f} ms = **{spd['steady_fps_with_decode']:.1f} generated FPS** "
          f"with VAE decode; denoise alone {spd['steady_denoise_s'] * 1000:.0f} ms = "
          f"{spd['steady_fps_without_decode']:.1f} FPS; decode {spd['steady_decode_s'] * 1000:.0f} ms",
          f"- first chunk (amplified, 12 forwards): {spd['first_chunk_s'] * 1000:.0f} ms",
          f"- {spd['chunks_timed']} chunks timed", ""]
    return "\n".join(L)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default=str(REPO / "models" / "helios-nano"))
    ap.add_argument("--bin", default=str(REPO / "target" / "release" / "helios-tools"),
                    help="the helios-tools binary (run as `BIN batch-generate`)")
    ap.add_argument("--out", default=str(REPO / "out" / "eval"))
    ap.add_argument("--docs", default=str(REPO / "docs" / "nano"))
    ap.add_argument("--per-attr", type=int, default=50)
    ap.add_argument("--drift-chunks", type=int, default=44)
    ap.add_argument("--measure-clips", type=int, default=300)
    ap.add_argument("--reuse", action="store_true", help="skip generation, reuse OUT's frames")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    model_dir, out, docs = Path(args.model), Path(args.out), Path(args.docs)
    out.mkdir(parents=True, exist_ok=True)
    docs.mkdir(parents=True, exist_ok=True)
    bank = bank_names(model_dir)
    jobs = make_jobs(args.per_attr, args.drift_chunks, args.seed, bank)
    write_jobs(out / "jobs.tsv", jobs)
    if not args.reuse:
        t0 = time.time()
        subprocess.run([args.bin, "batch-generate", "--model", str(model_dir), "--jobs", str(out / "jobs.tsv"), "--out", str(out)],
                       check=True)
        print(f"generation: {time.time() - t0:.0f}s", flush=True)
    models, held_out = train_measure(model_dir, args.measure_clips, args.seed + 1)
    res = evaluate(out, jobs, models)
    spd = speed(out)
    meta = dict(date=time.strftime("%Y-%m-%d"), cpu=platform.processor() or platform.machine(),
                threads=os.cpu_count(), model=str(model_dir.relative_to(REPO) if model_dir.is_absolute() and
                                                   REPO in model_dir.parents else model_dir))
    (docs / "eval.json").write_text(json.dumps(dict(meta=meta, measure_ceiling=held_out, speed=spd, **res), indent=1))
    (docs / "eval.md").write_text(markdown(res, held_out, spd, meta))
    sys.path.insert(0, str(REPO / "tools" / "nano"))
    import contact_sheet

    rows = [(load_frames(out, j["id"]), f"{j['prompt']}: {model_dir.name}") for j in jobs["sheet"]]
    contact_sheet.save_png(contact_sheet.sheet(rows, ncols=8), docs / "generated.png")
    print((docs / "eval.md").read_text())


if __name__ == "__main__":
    main()
