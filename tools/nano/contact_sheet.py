#!/usr/bin/env python3
"""Contact sheets of clips: rows = clips, columns = frames over time, each row captioned.

    tools/.venv/bin/python tools/nano/contact_sheet.py --procedural docs/nano/procedural.png
    tools/.venv/bin/python tools/nano/contact_sheet.py --seeds 0-11 out.png     # random clips

`sheet(rows, ...)` is also used by train.py for its preview (it falls back to captionless numpy + png.py
when PIL is missing).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import clips  # noqa: E402
from clips import Attrs  # noqa: E402

LABEL_H = 12


def sheet(rows: list[tuple[np.ndarray, str]], columns: list[int] | None = None, scale: int = 2,
          ncols: int = 8, pad: int = 2) -> np.ndarray:
    """rows: (uint8 frames [T, H, W, 3], caption). Returns a uint8 [h, w, 3] image (captions need PIL)."""
    T, h, w, _ = rows[0][0].shape
    cols = columns if columns is not None else [round(i * (T - 1) / (ncols - 1)) for i in range(ncols)]
    cw, ch = w * scale, h * scale
    width = len(cols) * (cw + pad) + pad
    row_h = LABEL_H + ch + pad
    img = np.full((pad + len(rows) * row_h, width, 3), 24, np.uint8)
    for r, (frames, _) in enumerate(rows):
        y = pad + r * row_h + LABEL_H
        for c, t in enumerate(cols):
            fr = frames[min(t, len(frames) - 1)]
            fr = fr.repeat(scale, 0).repeat(scale, 1)
            x = pad + c * (cw + pad)
            img[y:y + ch, x:x + cw] = fr
    try:
        from PIL import Image, ImageDraw

        im = Image.fromarray(img)
        d = ImageDraw.Draw(im)
        for r, (_, text) in enumerate(rows):
            d.text((pad + 2, pad + r * row_h), text, fill=(235, 235, 235))
        for c, t in enumerate(cols):
            d.text((pad + c * (cw + pad) + cw - 26, pad + LABEL_H), f"t{t}", fill=(255, 255, 255))
        img = np.asarray(im)
    except ImportError:
        pass
    return img


def save_png(img: np.ndarray, path: str | Path) -> None:
    try:
        from PIL import Image

        Image.fromarray(img).save(str(path), optimize=True)
    except ImportError:
        from png import write_png

        write_png(path, img)


def procedural_rows() -> list[tuple[np.ndarray, str]]:
    """Clips covering every attribute value (and two prompt changes)."""
    A = Attrs
    specs = [
        [A("dawn", "clear", "forest", ("campfire",), "slow")],
        [A("day", "clear", "forest", ("character",), "slow")],
        [A("dusk", "clear", "forest", ("portal",), "slow")],
        [A("night", "clear", "forest", ("campfire", "character"), "slow")],
        [A("day", "rain", "city", (), "fast")],
        [A("night", "rain", "city", ("character",), "slow")],
        [A("dusk", "snow", "city", ("campfire",), "slow")],
        [A("day", "fog", "city", ("portal",), "fast")],
        [A("dawn", "clear", "ocean", ("character",), "slow")],
        [A("day", "clear", "ocean", (), "fast")],
        [A("dusk", "fog", "ocean", ("portal",), "slow")],
        [A("night", "snow", "ocean", ("campfire",), "slow")],
        [A("day", "snow", "forest", ("character", "portal"), "fast")],
        [A("night", "rain", "forest", ("campfire",), "fast")],
        [A("night", "clear", "city", ("portal",), "slow")],
    ]
    rows = []
    for i, attrs in enumerate(specs):
        c = clips.make_clip(100 + i, attrs=attrs, variant=0)
        rows.append((c.frames[:clips.CHUNK_FRAMES], c.captions[0]))
    return rows


def change_rows() -> list[tuple[np.ndarray, str]]:
    A = Attrs
    rows = []
    for i, (a, attr, val, k) in enumerate([
        (A("day", "clear", "forest", ("character",), "slow"), "time", "night", 2),
        (A("dusk", "clear", "city", (), "slow"), "weather", "rain", 1),
    ]):
        from dataclasses import replace

        b = replace(a, **{attr: val})
        c = clips.make_clip(200 + i, attrs=[a] * k + [b] * (clips.CHUNKS - k), variant=0)
        rows.append((c.frames, f"change at chunk {k}: '{c.captions[0]}' -> '{c.captions[-1]}'"))
    return rows


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("out")
    p.add_argument("--procedural", action="store_true", help="one clip per attribute value (+ two changes)")
    p.add_argument("--seeds", default="0-7", help="random clips from these seeds (a-b or comma list)")
    p.add_argument("--scale", type=int, default=2)
    args = p.parse_args(argv)
    if args.procedural:
        step = 4
        rows = procedural_rows()
        img1 = sheet(rows, columns=list(range(0, 8 * step, step)), scale=args.scale)
        crow = change_rows()
        img2 = sheet(crow, columns=list(range(0, clips.CHUNKS * clips.CHUNK_FRAMES, 17)), scale=1)
        w = max(img1.shape[1], img2.shape[1])
        pad = lambda im: np.pad(im, ((0, 0), (0, w - im.shape[1]), (0, 0)), constant_values=24)  # noqa: E731
        img = np.concatenate([pad(img1), pad(img2)], 0)
    else:
        if "-" in args.seeds:
            a, b = args.seeds.split("-")
            seeds = list(range(int(a), int(b) + 1))
        else:
            seeds = [int(s) for s in args.seeds.split(",")]
        rows = []
        for s in seeds:
            c = clips.make_clip(s)
            rows.append((c.frames, " | ".join(dict.fromkeys(c.captions))))
        img = sheet(rows, scale=1, ncols=12)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    save_png(img, args.out)
    print(f"wrote {args.out} {img.shape[1]}x{img.shape[0]}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
