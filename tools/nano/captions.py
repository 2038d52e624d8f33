#!/usr/bin/env python3
"""Precomputes the MiniLM embedding of every caption clips.py can produce (the training device has no network
and no transformers): writes tools/nano/.cache/captions.npz with `captions` (unicode [N]) and `embeddings`
(float32 [N, 384]). Also checks that every caption in tools/nano/prompts.txt is one of them.

    tools/.venv/bin/python tools/nano/captions.py
"""

from __future__ import annotations

import argparse
import hashlib
import sys
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
import clips  # noqa: E402

CACHE = HERE / ".cache" / "captions.npz"
PROMPTS = HERE / "prompts.txt"


def grammar_digest(captions: list[str]) -> str:
    return hashlib.sha256("\n".join(captions).encode()).hexdigest()


def read_bank(path: Path = PROMPTS) -> list[tuple[str, str]]:
    items = []
    for line in path.read_text(encoding="utf-8").splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            name, text = (s.strip() for s in line.split(":", 1))
            items.append((name, text))
    return items


def load(path: Path = CACHE) -> dict[str, np.ndarray]:
    """caption -> embedding [384] float32; errors if the cache does not match clips.py's grammar."""
    if not path.exists():
        raise SystemExit(f"{path} missing: run `tools/.venv/bin/python tools/nano/captions.py` first")
    z = np.load(path, allow_pickle=False)
    caps = [str(c) for c in z["captions"]]
    if caps != clips.all_captions():
        raise SystemExit(f"{path} is stale (clips.py's caption grammar changed): rerun tools/nano/captions.py")
    return dict(zip(caps, z["embeddings"].astype(np.float32)))


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", default=str(CACHE))
    args = p.parse_args(argv)
    caps = clips.all_captions()
    missing = [(n, t) for n, t in read_bank() if t not in set(caps)]
    if missing:
        raise SystemExit(f"prompts.txt captions outside the grammar: {missing}")
    import minilm

    t0 = time.time()
    emb = minilm.embed(caps)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    np.savez(out, captions=np.array(caps), embeddings=emb.astype(np.float32))
    print(f"wrote {out}: {len(caps)} captions x {emb.shape[1]} in {time.time() - t0:.1f}s, "
          f"{out.stat().st_size / 1e6:.2f} MB, grammar {grammar_digest(caps)[:12]}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
