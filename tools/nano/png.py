"""Dependency-free PNG writing and line plots (numpy + zlib): the training device may lack PIL/matplotlib."""

from __future__ import annotations

import struct
import zlib
from pathlib import Path

import numpy as np


def write_png(path: str | Path, img: np.ndarray) -> None:
    """uint8 [h, w, 3] RGB -> PNG file."""
    img = np.ascontiguousarray(img, dtype=np.uint8)
    h, w, _ = img.shape
    raw = b"".join(b"\x00" + img[y].tobytes() for y in range(h))

    def chunk(tag: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + tag + data + struct.pack(">I", zlib.crc32(tag + data) & 0xFFFFFFFF)

    png = b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, 8, 2, 0, 0, 0))
    png += chunk(b"IDAT", zlib.compress(raw, 9)) + chunk(b"IEND", b"")
    Path(path).write_bytes(png)


COLORS = [(230, 80, 60), (60, 140, 230), (60, 180, 90), (200, 150, 40), (160, 90, 200), (90, 90, 90)]


def _line(img, x0, y0, x1, y1, color):
    n = int(max(abs(x1 - x0), abs(y1 - y0))) + 1
    xs = np.linspace(x0, x1, n).round().astype(int)
    ys = np.linspace(y0, y1, n).round().astype(int)
    ok = (xs >= 0) & (xs < img.shape[1]) & (ys >= 0) & (ys < img.shape[0])
    img[ys[ok], xs[ok]] = color


def plot_curves(panels: list[tuple[str, dict[str, tuple[list[float], list[float]]]]], path: str | Path,
                w: int = 640, h: int = 300) -> None:
    """One panel per (title, {series: (x, y)}); log10 y axis, light grid. Titles/legends drawn if PIL exists."""
    img = np.full((h * len(panels), w, 3), 255, np.uint8)
    labels = []
    for p, (title, series) in enumerate(panels):
        top, left, right, bottom = p * h + 22, 50, w - 10, p * h + h - 20
        ys_all = [v for _, (_, ys) in series.items() for v in ys if v > 0 and np.isfinite(v)]
        xs_all = [v for _, (xs, _) in series.items() for v in xs]
        if not ys_all or not xs_all:
            labels.append((p * h + 4, left, title + " (no data)"))
            continue
        lo, hi = np.log10(min(ys_all)), np.log10(max(ys_all))
        if hi - lo < 1e-6:
            lo, hi = lo - 0.5, hi + 0.5
        x_lo, x_hi = min(xs_all), max(xs_all) if max(xs_all) > min(xs_all) else min(xs_all) + 1
        for d in range(int(np.floor(lo)), int(np.ceil(hi)) + 1):
            for m in (1, 2, 5):
                v = np.log10(m) + d
                if lo <= v <= hi:
                    yy = bottom - (v - lo) / (hi - lo) * (bottom - top)
                    img[int(yy), left:right] = (225, 225, 225) if m > 1 else (190, 190, 190)
                    if m == 1 or hi - lo < 1.5:
                        labels.append((int(yy) - 6, 2, f"{m}e{d}"))
        img[top:bottom + 1, left] = 0
        img[bottom, left:right] = 0
        for i, (name, (xs, ys)) in enumerate(series.items()):
            col = COLORS[i % len(COLORS)]
            pts = [(left + (x - x_lo) / (x_hi - x_lo) * (right - left),
                    bottom - (np.log10(y) - lo) / (hi - lo) * (bottom - top))
                   for x, y in zip(xs, ys) if y > 0 and np.isfinite(y)]
            for a, b in zip(pts, pts[1:]):
                _line(img, a[0], a[1], b[0], b[1], col)
            labels.append((p * h + 4, left + 200 + 80 * i, name, col))
        labels.append((p * h + 4, left, title))
        labels.append((bottom + 4, left, f"{x_lo:g}"))
        labels.append((bottom + 4, right - 60, f"{x_hi:g}"))
    try:
        from PIL import Image, ImageDraw

        im = Image.fromarray(img)
        d = ImageDraw.Draw(im)
        for lab in labels:
            d.text((lab[1], lab[0]), lab[2], fill=lab[3] if len(lab) > 3 else (0, 0, 0))
        im.save(str(path))
    except ImportError:
        write_png(path, img)
