#!/usr/bin/env python3
"""Turns train.py's output parts (nano_ckpt.tar.part0, part1, ...) back into a diffusers checkpoint directory
(model_index.json, transformer/, vae/, scheduler/, nano_meta.json; fp32 weights) for tools/export/export.py.

    tools/.venv/bin/python tools/nano/unpack.py RUN_DIR CHECKPOINT_DIR [--check]
"""

from __future__ import annotations

import argparse
import io
import json
import re
import sys
import tarfile
from pathlib import Path


def unpack(run_dir: Path, dest: Path) -> Path:
    parts = sorted(run_dir.glob("nano_ckpt.tar.part*"), key=lambda p: int(re.sub(r"\D", "", p.suffix) or 0))
    if not parts:
        raise SystemExit(f"no nano_ckpt.tar.part* in {run_dir}")
    idx = [int(re.sub(r"\D", "", p.suffix)) for p in parts]
    if idx != list(range(len(parts))):
        raise SystemExit(f"parts missing: found {[p.name for p in parts]}")
    data = b"".join(p.read_bytes() for p in parts)
    dest.mkdir(parents=True, exist_ok=True)
    with tarfile.open(fileobj=io.BytesIO(data), mode="r") as tar:
        for m in tar.getmembers():
            if m.name.startswith("/") or ".." in Path(m.name).parts or not (m.isfile() or m.isdir()):
                raise SystemExit(f"unexpected tar member {m.name}")
        tar.extractall(str(dest))
    return dest


def check(dest: Path) -> None:
    """Loads the checkpoint as export.py does and prints its shape facts."""
    import torch
    from diffusers import AutoencoderKLWan, HeliosTransformer3DModel

    tr = HeliosTransformer3DModel.from_pretrained(str(dest), subfolder="transformer", torch_dtype=torch.float32)
    vae = AutoencoderKLWan.from_pretrained(str(dest), subfolder="vae", torch_dtype=torch.float32)
    dtypes = {p.dtype for p in list(tr.parameters()) + list(vae.parameters())}
    meta = json.loads((dest / "nano_meta.json").read_text()) if (dest / "nano_meta.json").exists() else {}
    print(f"transformer {sum(p.numel() for p in tr.parameters()) / 1e6:.2f}M params, text_dim {tr.config.text_dim}; "
          f"vae z_dim {vae.config.z_dim}, latents_std {[round(v, 3) for v in vae.config.latents_std][:4]}...; "
          f"dtypes {sorted(str(d) for d in dtypes)}; transformer steps {meta.get('transformer_steps')}, "
          f"vae steps {meta.get('vae_steps')}, clips {meta.get('clips')}")


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("run_dir")
    p.add_argument("dest")
    p.add_argument("--check", action="store_true", help="load the models with diffusers afterwards")
    args = p.parse_args(argv)
    dest = unpack(Path(args.run_dir), Path(args.dest))
    print(f"unpacked {args.run_dir} -> {dest}")
    if args.check:
        check(dest)
    return 0


if __name__ == "__main__":
    sys.exit(main())
