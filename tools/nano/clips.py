"""Procedural game-like clips for helios-nano: side-view scenes with parallax, weather and small animated props.

`make_clip(seed)` returns a `Clip`: uint8 frames [132, 64, 128, 3] (4 chunks of 33 frames, 24 fps), the
attributes of every chunk and one caption per chunk. Everything is numpy, vectorised over whole chunks, and
a pure function of the seed.

Attributes (see ATTRIBUTES):
  time     dawn | day | dusk | night      sky gradient, sun / moon, light level, stars, lit windows at night
  weather  clear | rain | snow | fog      streaks, flakes + white ground, low-contrast fog banks
  scene    forest | city | ocean          hills + pines / buildings + street / sea + waves + beach
  elements subset of campfire | character | portal
  camera   slow | fast                    parallax pan speed
With probability CHANGE_P a clip changes its time, weather or scene at one chunk boundary; each chunk's
caption describes that chunk. Captions come from a finite grammar (`caption`, `all_captions`) so that their
text embeddings can be precomputed (captions.py).
"""

from __future__ import annotations

import itertools
import math
from dataclasses import dataclass, field, replace

import numpy as np

H, W = 64, 128
CHUNK_FRAMES = 33
CHUNKS = 4
FPS = 24
CHANGE_P = 0.25
ELEMENT_P = 0.35

TIMES = ("dawn", "day", "dusk", "night")
WEATHERS = ("clear", "rain", "snow", "fog")
SCENES = ("forest", "city", "ocean")
ELEMENTS = ("campfire", "character", "portal")
CAMERAS = ("slow", "fast")
VARIANTS = 3
ATTRIBUTES = {"time": TIMES, "weather": WEATHERS, "scene": SCENES, "camera": CAMERAS}
SPEED = {"slow": 0.45, "fast": 2.2}  # near-layer pan, pixels per frame


@dataclass(frozen=True)
class Attrs:
    time: str
    weather: str
    scene: str
    elements: tuple[str, ...]  # subset of ELEMENTS, in ELEMENTS order
    camera: str


# ----------------------------------------------------------------------------------------------------------
# Captions: a finite grammar (3 variants per attribute combination)
# ----------------------------------------------------------------------------------------------------------

_SCENE_TXT = {"forest": ("a forest", "a pine forest"), "city": ("a city", "a city street"),
              "ocean": ("an ocean shore", "a beach by the sea")}
_TIME_TXT = {"dawn": ("at dawn", "at sunrise"), "day": ("at noon", "in daylight"), "dusk": ("at dusk", "at sunset"),
             "night": ("at night", "at night")}
_WEATHER_TXT = {"clear": ("", " under a clear sky"), "rain": (" in the rain", " in heavy rain"),
                "snow": (" in the snow", " in falling snow"), "fog": (" in the fog", " in thick fog")}
_ELEMENT_TXT = {"campfire": ("a campfire burning", "a crackling campfire"),
                "character": ("a character walking", "a hero walking"),
                "portal": ("a glowing portal", "a swirling magic portal")}
_CAMERA_TXT = {"slow": ("slow camera", "slow pan"), "fast": ("fast camera", "fast pan")}


def caption(a: Attrs, variant: int = 0) -> str:
    """Variant 0: canonical phrases; 1: synonyms; 2: canonical with a 'pixel art game, ' prefix."""
    s = 1 if variant == 1 else 0
    text = _SCENE_TXT[a.scene][s] + " " + _TIME_TXT[a.time][s] + _WEATHER_TXT[a.weather][s]
    if a.elements:
        text += ", " + " and ".join(_ELEMENT_TXT[e][s] for e in a.elements)
    text += ", " + _CAMERA_TXT[a.camera][s]
    return "pixel art game, " + text if variant == 2 else text


def all_attrs() -> list[Attrs]:
    subsets = [tuple(e for j, e in enumerate(ELEMENTS) if m >> j & 1) for m in range(8)]
    return [Attrs(t, w, s, el, c) for t, w, s, el, c in itertools.product(TIMES, WEATHERS, SCENES, subsets, CAMERAS)]


def all_captions() -> list[str]:
    """Every caption `make_clip` can produce (sorted, unique)."""
    return sorted({caption(a, v) for a in all_attrs() for v in range(VARIANTS)})


# ----------------------------------------------------------------------------------------------------------
# Sampling clip attributes
# ----------------------------------------------------------------------------------------------------------


@dataclass
class Clip:
    frames: np.ndarray                 # uint8 [CHUNKS * CHUNK_FRAMES, H, W, 3]
    attrs: list[Attrs]                 # per chunk
    captions: list[str]                # per chunk
    seed: int
    change: tuple[str, int] | None = None  # (attribute, first chunk with the new value)


def sample_attrs(rng: np.random.Generator) -> tuple[list[Attrs], tuple[str, int] | None]:
    els = tuple(e for e in ELEMENTS if rng.random() < ELEMENT_P)
    a = Attrs(str(rng.choice(TIMES)), str(rng.choice(WEATHERS)), str(rng.choice(SCENES)), els,
              str(rng.choice(CAMERAS)))
    per_chunk = [a] * CHUNKS
    change = None
    if rng.random() < CHANGE_P:
        attr = str(rng.choice(["time", "weather", "scene"]))
        k = int(rng.integers(1, CHUNKS))
        values = [v for v in ATTRIBUTES[attr] if v != getattr(a, attr)]
        b = replace(a, **{attr: str(rng.choice(values))})
        per_chunk = [a] * k + [b] * (CHUNKS - k)
        change = (attr, k)
    return per_chunk, change


def make_clip(seed: int, attrs: list[Attrs] | None = None, variant: int | None = None) -> Clip:
    """A deterministic clip from `seed`. `attrs` (one per chunk, or one for all) overrides the sampled ones."""
    rng = np.random.default_rng([seed, 7])
    sampled, change = sample_attrs(rng)
    if variant is None:
        variant = int(rng.integers(VARIANTS))
    if attrs is not None:
        sampled = list(attrs) if len(attrs) == CHUNKS else [attrs[0]] * CHUNKS
        change = None
    world = World(seed)
    frames = np.empty((CHUNKS * CHUNK_FRAMES, H, W, 3), np.uint8)
    for k in range(CHUNKS):
        sl = slice(k * CHUNK_FRAMES, (k + 1) * CHUNK_FRAMES)
        frames[sl] = to_uint8(render(world, sampled[k], k * CHUNK_FRAMES, CHUNK_FRAMES))
    return Clip(frames, sampled, [caption(a, variant) for a in sampled], seed, change)


def to_uint8(img: np.ndarray) -> np.ndarray:
    return np.clip(img * 255.0 + 0.5, 0, 255).astype(np.uint8)


# ----------------------------------------------------------------------------------------------------------
# Rendering
# ----------------------------------------------------------------------------------------------------------

def _c(*rgb):
    return np.array(rgb, np.float32) / 255.0


# Sky top / horizon colours, ambient light (multiplies albedo), sun (screen x, y, radius, colour).
PALETTE = {
    "dawn": dict(top=_c(70, 78, 150), hor=_c(255, 170, 130), light=_c(255, 215, 200), sun=(28, 35, 6, _c(255, 200, 120))),
    "day": dict(top=_c(40, 120, 230), hor=_c(175, 220, 255), light=_c(255, 255, 255), sun=(92, 10, 5, _c(255, 250, 210))),
    "dusk": dict(top=_c(45, 30, 100), hor=_c(255, 105, 45), light=_c(235, 150, 120), sun=(100, 37, 8, _c(255, 120, 50))),
    "night": dict(top=_c(4, 6, 22), hor=_c(22, 32, 75), light=_c(100, 115, 175), sun=(96, 12, 5, _c(235, 235, 215))),
}
OVERCAST = {"rain": (0.8, _c(105, 110, 120)), "snow": (0.6, _c(185, 190, 200)), "fog": (0.85, _c(175, 180, 185)),
            "clear": (0.0, _c(0, 0, 0))}
GROUND_Y = {"forest": 53.0, "city": 55.0, "ocean": 58.0}
PERIOD = 128.0  # world period of the props (campfire, portal): exactly one of each in view


class World:
    """Per-clip random tables (layout, noise phases); independent of the attributes so that a time or weather
    change keeps the same world."""

    def __init__(self, seed: int):
        r = np.random.default_rng([seed, 11])
        n = 4096
        self.u = r.random((16, n)).astype(np.float32)      # per-slot uniforms for procedural objects
        self.phase = r.random(32).astype(np.float32) * 2 * math.pi
        self.cam0 = float(r.uniform(0, 3000))
        self.stars = np.stack([r.uniform(0, W + 40, 60), r.uniform(0, 40, 60), r.uniform(0, 2 * math.pi, 60),
                               r.uniform(0.4, 1.0, 60)], 1).astype(np.float32)
        self.drops = np.stack([r.uniform(0, W + 60, 130), r.uniform(0, H + 8, 130), r.uniform(4.0, 6.0, 130)],
                              1).astype(np.float32)
        self.flakes = np.stack([r.uniform(0, W + 40, 150), r.uniform(0, H, 150), r.uniform(0.35, 0.9, 150),
                                r.uniform(0, 2 * math.pi, 150), (r.random(150) < 0.3).astype(np.float64)],
                               1).astype(np.float32)
        self.clouds = np.stack([r.uniform(0, 400, 6), r.uniform(4, 22, 6), r.uniform(8, 18, 6)], 1).astype(np.float32)
        self.fire_flicker = r.standard_normal(8).astype(np.float32)
        self.prop_off = float(r.uniform(0, PERIOD))
        self.char_x = float(r.uniform(30, 50))

    def slot(self, row: int, n: np.ndarray) -> np.ndarray:
        return self.u[row][np.mod(n, self.u.shape[1]).astype(np.int64)]


def _cov(d):
    """Anti-aliased coverage of a signed distance (pixels, positive inside)."""
    return np.clip(d + 0.5, 0.0, 1.0).astype(np.float32)


def _over(img, mask, color):
    """img = img * (1 - m) + color * m (mask broadcast to [T, H, W], colour [3] or [..., 3])."""
    m = np.asarray(mask, np.float32)[..., None]
    img *= 1.0 - m
    img += m * color
    return img


def _mix(a, b, f):
    return a + (b - a) * f


class Frame:
    """Geometry shared by the layers of one chunk render."""

    def __init__(self, world: World, a: Attrs, t0: int, T: int):
        self.world, self.a, self.T = world, a, T
        self.t = (t0 + np.arange(T, dtype=np.float32))[:, None, None]          # [T, 1, 1]
        self.Y = np.arange(H, dtype=np.float32)[None, :, None]                  # [1, H, 1]
        self.X = np.arange(W, dtype=np.float32)[None, None, :]                  # [1, 1, W]
        self.cam = world.cam0 + SPEED[a.camera] * self.t                        # [T, 1, 1]
        pal = PALETTE[a.time]
        k, grey = OVERCAST[a.weather]
        self.light = pal["light"] * (1.0 - 0.3 * k) + grey * 0.25 * k
        if a.time == "night":
            self.light = pal["light"] * (1.0 - 0.2 * k)
        self.fog = {"fog": 1.0}.get(a.weather, 0.0)
        self.fogc = _mix(grey, pal["hor"], 0.25) * (0.35 if a.time == "night" else 1.0)
        self.snow = a.weather == "snow"
        self.gy = GROUND_Y[a.scene]

    def u(self, parallax: float):
        return self.X + parallax * self.cam                                      # world x [T, 1, W]

    def lit(self, albedo, depth: float = 0.0):
        """Albedo under the ambient light, then fogged by depth (0 near .. 1 far)."""
        c = albedo * self.light
        if self.fog:
            c = _mix(c, self.fogc, 0.3 + 0.6 * depth)
        return c


def render(world: World, a: Attrs, t0: int, T: int) -> np.ndarray:
    """float32 [T, H, W, 3] in [0, 1] of frames t0 .. t0 + T - 1."""
    f = Frame(world, a, t0, T)
    img = np.empty((T, H, W, 3), np.float32)
    _sky(f, img)
    {"forest": _forest, "city": _city, "ocean": _ocean}[a.scene](f, img)
    for e in a.elements:
        {"campfire": _campfire, "character": _character, "portal": _portal}[e](f, img)
    if a.weather == "rain":
        _rain(f, img)
    elif a.weather == "snow":
        _snowfall(f, img)
    elif a.weather == "fog":
        _fog_banks(f, img)
    return np.clip(img, 0.0, 1.0, out=img)


# --- sky --------------------------------------------------------------------------------------------------

def _sky(f: Frame, img):
    a, w = f.a, f.world
    pal = PALETTE[a.time]
    k, grey = OVERCAST[a.weather]
    g = np.clip(f.Y[0, :, 0] / 44.0, 0, 1)[:, None] ** 1.3                   # [H, 1]
    sky = pal["top"] * (1 - g) + pal["hor"] * g                               # [H, 3]
    if k:
        sky = _mix(sky, grey * (0.3 if a.time == "night" else 1.0) * (0.6 + 0.4 * pal["light"]), k)
    img[:] = sky[None, :, None, :]
    # stars (night, not under cloud cover): twinkling, fixed in the sky
    if a.time == "night" and a.weather in ("clear", "snow"):
        s = w.stars
        xs = np.mod(s[:, 0] - 0.02 * f.cam[:, 0, 0][:, None], W + 40).astype(np.int64)  # [T, N]
        ys = s[:, 1].astype(np.int64)[None].repeat(f.T, 0)
        b = s[:, 3] * (0.55 + 0.45 * np.sin(0.35 * f.t[:, 0, 0][:, None] + s[:, 2]))
        b = b * (1.0 if a.weather == "clear" else 0.4)
        ok = xs < W
        ti = np.broadcast_to(np.arange(f.T)[:, None], xs.shape)
        buf = np.zeros((f.T, H, W), np.float32)
        np.add.at(buf, (ti[ok], ys[ok], xs[ok]), b[ok])
        _over(img, np.clip(buf, 0, 1), _c(255, 255, 235))
    # sun / moon with glow; dimmed by cloud cover
    sx, sy, sr, scol = pal["sun"]
    sx = sx - 0.03 * (f.cam - w.cam0)
    d = np.sqrt((f.X - sx) ** 2 + (f.Y - sy) ** 2)
    vis = {"clear": 1.0, "snow": 0.35, "fog": 0.25, "rain": 0.12}[a.weather]
    glow = np.exp(-(d / (sr * 2.5)) ** 2) * (0.45 if a.time != "night" else 0.25) * vis
    img += glow[..., None] * scol
    disc = _cov(sr - d) * vis
    if a.time == "night":  # crescent moon
        disc = disc * (1 - _cov(sr - np.sqrt((f.X - sx - 2.2) ** 2 + (f.Y - sy + 1.2) ** 2)) * 0.85)
    _over(img, disc, scol)
    # clouds drifting (not at night under clear sky: keep the stars)
    if a.weather == "clear" and a.time != "night":
        for cx, cy, cw in w.clouds:
            x = np.mod(cx - 0.08 * f.cam - 0.1 * f.t + 40, 400) - 40
            e = ((f.X - x) / cw) ** 2 + ((f.Y - cy) / (cw * 0.28)) ** 2
            e2 = ((f.X - x - cw * 0.4) / (cw * 0.6)) ** 2 + ((f.Y - cy + cw * 0.15) / (cw * 0.3)) ** 2
            m = np.maximum(_cov((1 - e) * 3), _cov((1 - e2) * 3)) * 0.85
            _over(img, m, _mix(_c(255, 255, 255), pal["hor"], 0.35) * (0.6 + 0.4 * pal["light"]))


# --- forest -----------------------------------------------------------------------------------------------

def _pines(f: Frame, img, parallax, period, hmin, hmax, base_y, albedo, depth, density, row0):
    u = f.u(parallax)
    ground = base_y
    cover = np.zeros((f.T, H, W), np.float32)
    snowcap = np.zeros_like(cover)
    shade = np.zeros_like(cover)
    for dn in (-1, 0, 1):
        n = np.floor(u / period) + dn
        present = f.world.slot(row0, n) < density
        cx = (n + 0.5) * period + (f.world.slot(row0 + 1, n) - 0.5) * period * 0.5
        h = hmin + f.world.slot(row0 + 2, n) * (hmax - hmin)
        top = ground - h
        dx = np.abs(u - cx)                                                    # [T, 1, W]
        rel = np.clip((f.Y - top) / np.maximum(h - 3, 1), 0, 1)               # [T, H, W] 0 top .. 1 bottom
        tier = (f.Y - top) / 4.0
        width = 0.42 * h * rel * (0.7 + 0.3 * (tier - np.floor(tier)))
        fol = _cov(width - dx) * (f.Y >= top) * (f.Y <= ground - 2.5) * present
        trunk = _cov(1.0 - dx) * (f.Y > ground - 3.5) * (f.Y <= ground + 0.5) * present
        cover = np.maximum(cover, np.maximum(fol, trunk))
        shade = np.where(fol > 0, (u < cx).astype(np.float32) * 0.0 + (u - cx > 0) * 0.25, shade)
        if f.snow:
            snowcap = np.maximum(snowcap, fol * ((tier - np.floor(tier)) < 0.35))
        shade = np.where(trunk > fol, -1.0, shade)
    col = np.where(shade[..., None] < 0, f.lit(_c(95, 65, 40), depth),
                   f.lit(albedo, depth) * (1 - shade[..., None]))
    if f.snow:
        col = _mix(col, f.lit(_c(235, 240, 250), depth), snowcap[..., None])
    _over(img, cover, col)


def _hills(f: Frame, img, parallax, base, amp, albedo, depth, ph):
    u = f.u(parallax)
    p = f.world.phase
    top = base + amp * (np.sin(u / 37.0 + p[ph]) + 0.5 * np.sin(u / 13.0 + p[ph + 1]))
    alb = _c(240, 243, 250) if f.snow else albedo
    m = _cov(f.Y - top)
    col = f.lit(alb, depth) * (1 - 0.12 * np.clip((f.Y - top) / 12, 0, 1))[..., None]
    _over(img, m, col)
    return top


def _forest(f: Frame, img):
    pal = PALETTE[f.a.time]
    far = _mix(_c(80, 120, 140), pal["hor"] * 0.8, 0.45)
    _hills(f, img, 0.12, 31.0, 4.0, far, 0.9, 0)
    _hills(f, img, 0.35, 41.0, 3.0, _c(60, 120, 70), 0.6, 2)
    _pines(f, img, 0.35, 9.0, 6, 10, 44.0, _c(35, 95, 60), 0.6, 0.7, 0)
    # ground
    u = f.u(1.0)
    gy = f.gy + 0.0 * u
    grass = _c(240, 244, 252) if f.snow else _c(80, 160, 60)
    m = _cov(f.Y - gy + 0.5)
    tuft = 0.85 + 0.15 * (np.sin(u * 1.7) > 0.6) * (0.3 if f.snow else 1.0)
    col = f.lit(grass, 0.0) * tuft[..., None] * (1 - 0.25 * np.clip((f.Y - gy) / 10, 0, 1))[..., None]
    _over(img, m, col)
    dirt = (f.Y > gy + 5) * (np.sin(u * 0.31 + f.Y * 0.9) > 0.7)
    _over(img, dirt * 0.5, f.lit(_c(120, 90, 60) if not f.snow else _c(200, 205, 220), 0.0))
    _pines(f, img, 1.0, 21.0, 13, 24, f.gy, _c(30, 110, 50), 0.0, 0.8, 4)


# --- city -------------------------------------------------------------------------------------------------

BUILDING_COLORS = [_c(150, 90, 80), _c(120, 120, 135), _c(170, 150, 110), _c(90, 105, 130), _c(140, 110, 150)]


def _city(f: Frame, img):
    a, w = f.a, f.world
    pal = PALETTE[a.time]
    night = a.time == "night"
    dusk = a.time in ("dusk", "dawn")
    # far skyline
    u = f.u(0.15)
    n = np.floor(u / 7.0)
    top = 42.0 - 4 - w.slot(8, n) * 16
    far = _mix(_c(70, 80, 110), pal["hor"] * 0.7, 0.5)
    m = _cov(f.Y - top)
    _over(img, m, f.lit(far, 0.9))
    if night:
        dots = m * (np.sin(u * 2.3) > 0.8) * (np.sin(f.Y * 2.9 + n) > 0.85)
        _over(img, dots * 0.8, _c(255, 220, 140))
    # buildings (mid layer)
    u = f.u(0.6)
    P = 22.0
    n = np.floor(u / P)
    bw = 14.0 + w.slot(9, n) * 6.0
    left = n * P + (P - bw) / 2
    bh = 16.0 + w.slot(10, n) * 24.0
    top = f.gy - bh
    lx = u - left                                                            # [T, 1, W]
    inside = (lx >= 0) & (lx < bw)
    body = inside * _cov(f.Y - top)                                          # [T, H, W]
    ci = np.floor(w.slot(11, n) * len(BUILDING_COLORS)).astype(np.int64)
    bcol = np.stack(BUILDING_COLORS)[ci]                                     # [T, 1, W, 3]
    col = f.lit(bcol, 0.4) * (1 - 0.25 * (lx > bw * 0.7))[..., None]
    _over(img, body, col)
    if f.snow:
        _over(img, inside * (f.Y >= top - 0.5) * (f.Y < top + 1.5), f.lit(_c(240, 244, 252), 0.4))
    ly = f.Y - top
    wx, wy = np.mod(lx - 2, 4.0), np.mod(ly - 3, 5.0)
    win = inside * (lx >= 2) * (lx < bw - 2) * (ly >= 3) * (ly < bh - 4) * (wx < 2) * (wy < 2.5)
    wid = n * 131 + np.floor((lx - 2) / 4) * 17 + np.floor((ly - 3) / 5) * 7
    lit_frac = 0.6 if night else 0.3 if dusk else 0.0
    on = f.world.slot(12, wid) < lit_frac
    wcol_off = f.lit(_c(60, 80, 110), 0.4) if not night else f.lit(_c(30, 35, 50), 0.4)
    glass = _c(150, 190, 230) * 0.6 if a.time == "day" else wcol_off
    _over(img, win * (1 - on), glass if a.time == "day" else wcol_off)
    if lit_frac:
        _over(img, win * on, _c(255, 215, 110) * (1.0 if night else 0.8))
    # street
    u = f.u(1.0)
    side = (f.Y >= f.gy) * (f.Y < f.gy + 2)
    road = f.Y >= f.gy + 2
    wet = 0.7 if a.weather == "rain" else 1.0
    _over(img, side, f.lit(_c(240, 244, 252) if f.snow else _c(150, 150, 150), 0.1))
    _over(img, road, f.lit(_c(225, 230, 240) if f.snow else _c(60, 60, 66), 0.1) * wet)
    dash = road * (np.abs(f.Y - (f.gy + 5.5)) < 0.6) * (np.mod(u, 12.0) < 6)
    _over(img, dash, f.lit(_c(230, 210, 90), 0.1))
    # street lamps
    lamp_x = np.floor(u / 48.0) * 48.0 + 24.0
    dx = u - lamp_x
    pole = _cov(0.6 - np.abs(dx)) * (f.Y > f.gy - 14) * (f.Y < f.gy + 1)
    _over(img, pole, f.lit(_c(50, 50, 55), 0.0))
    head = (np.abs(dx - 1.5) < 2) * (np.abs(f.Y - (f.gy - 14)) < 1)
    on = night or dusk or a.weather in ("fog", "rain")
    _over(img, head, _c(255, 230, 150) if on else f.lit(_c(80, 80, 80), 0.0))
    if on:
        glow = np.exp(-((dx - 1.5) ** 2 / 30 + (f.Y - (f.gy - 10)) ** 2 / 40)) * (0.35 if night else 0.18)
        img += glow[..., None] * _c(255, 210, 120)


# --- ocean ------------------------------------------------------------------------------------------------

def _ocean(f: Frame, img):
    a, w = f.a, f.world
    pal = PALETTE[a.time]
    hz = 34.0
    # distant islands
    u = f.u(0.1)
    n = np.floor(u / 90.0)
    c = (n + 0.5) * 90.0 + (w.slot(13, n) - 0.5) * 30
    hgt = (4 + w.slot(14, n) * 6) * (w.slot(15, n) < 0.7)
    top = hz - hgt * np.clip(1 - ((u - c) / 16.0) ** 2, 0, 1)
    m = _cov(f.Y - top) * (f.Y < hz)
    _over(img, m, f.lit(_mix(_c(60, 90, 90), pal["hor"] * 0.7, 0.5), 0.9))
    # sea with waves; rows further down scroll faster (parallax) and have longer waves
    rows = np.clip((f.Y - hz) / (H - hz), 0, 1)                              # [1, H, 1]
    par = 0.1 + 0.9 * rows
    uy = f.X + par * f.cam
    lam = 5.0 + 11.0 * rows
    rough = 1.6 if a.weather == "rain" else 1.0
    phase = uy / lam * 2 * math.pi + 0.22 * f.t * rough + f.Y * 1.7
    crest = (np.sin(phase) > 0.8) * (np.mod(f.Y, 2.0) < 1.0 + rows)
    sea = f.Y >= hz
    sea_far = _mix(_c(40, 90, 150), pal["hor"], 0.35)
    sea_near = _c(20, 70, 140)
    col = f.lit(_mix(sea_far, sea_near, rows[..., None]), 0.3)
    _over(img, sea, col)
    _over(img, sea * crest * 0.7, f.lit(_c(200, 230, 250), 0.3))
    # sun / moon glitter column
    sx, sy, sr, scol = pal["sun"]
    sxs = sx - 0.03 * (f.cam - w.cam0)
    spread = 2 + 8 * rows
    vis = {"clear": 1.0, "snow": 0.4, "fog": 0.2, "rain": 0.1}[a.weather]
    glit = sea * (np.abs(f.X - sxs) < spread) * (np.sin(phase * 1.7 + 1.0) > 0.3) * vis * 0.8
    _over(img, glit, scol)
    # beach with lapping shoreline
    u = f.u(1.0)
    shore = 54.0 + 1.3 * np.sin(0.13 * f.t + u / 23.0) + 0.5 * np.sin(u / 7.0)
    sand = _c(240, 244, 252) if f.snow else _c(225, 200, 140)
    _over(img, _cov(f.Y - shore), f.lit(sand, 0.0) * (1 - 0.15 * np.clip((f.Y - shore) / 10, 0, 1))[..., None])
    _over(img, _cov(1.0 - np.abs(f.Y - shore)) * 0.8, f.lit(_c(235, 245, 255), 0.0))
    # rocks and palms on the beach
    n = np.floor(u / 70.0)
    rc = (n + 0.5) * 70.0
    rock = _cov(1 - (((u - rc) / 5.0) ** 2 + ((f.Y - (f.gy + 3)) / 2.5) ** 2)) * (f.Y < f.gy + 3)
    _over(img, rock, f.lit(_c(110, 105, 100), 0.0))
    pc = (n + 0.5) * 70.0 + 30
    trunk = _cov(0.8 - np.abs(u - pc - 0.15 * (f.gy - f.Y))) * (f.Y > f.gy - 16) * (f.Y < f.gy)
    _over(img, trunk, f.lit(_c(120, 85, 50), 0.0))
    sway = 0.6 * np.sin(0.1 * f.t)
    tx, ty = pc + 2.4 + sway, f.gy - 16
    for ang in (-2.6, -1.9, -0.6, 0.1, -1.25):
        ex, ey = math.cos(ang), math.sin(ang)
        px, py = u - tx, f.Y - ty
        along = px * ex + py * ey
        perp = np.abs(-px * ey + py * ex - 0.04 * along ** 2)
        leaf = _cov(1.3 - perp) * (along > 0) * (along < 8)
        _over(img, leaf, f.lit(_c(230, 235, 245) if f.snow else _c(40, 130, 60), 0.0))


# --- props ------------------------------------------------------------------------------------------------

def _prop_x(f: Frame, offset: float):
    """Screen x of a prop repeating every PERIOD world pixels: [T, 1, 1]."""
    return np.mod(f.world.prop_off + offset - f.cam, PERIOD) - (PERIOD - W) / 2


def _campfire(f: Frame, img):
    t = f.t
    cx = _prop_x(f, 0.0)
    gy = f.gy
    ff = f.world.fire_flicker
    flick = 0.5 * np.sin(1.9 * t + ff[0]) + 0.35 * np.sin(3.7 * t + ff[1]) + 0.25 * np.sin(6.1 * t + ff[2])
    night = f.a.time == "night"
    glow = np.exp(-((f.X - cx) ** 2 + (f.Y - gy + 4) ** 2) / (2 * 9.0 ** 2)) * (0.5 if night else 0.22)
    img += (glow * (0.85 + 0.15 * flick))[..., None] * _c(255, 140, 40)
    dx = f.X - cx
    logs = (np.abs(f.Y - (gy - 0.8 + 0.25 * dx)) < 0.9) | (np.abs(f.Y - (gy - 0.8 - 0.25 * dx)) < 0.9)
    _over(img, logs * (np.abs(dx) < 5), f.lit(_c(100, 60, 30), 0.0) * 1.3)
    hf = 8.0 + 1.8 * flick                                                    # flame height [T, 1, 1]
    dy = (gy - 1.5) - f.Y                                                     # up from the embers
    rel = np.clip(dy / hf, 0, 1)
    sway = 1.0 * np.sin(0.8 * t + dy * 0.5 + ff[3]) * rel
    wid = 3.6 * (1 - rel) ** 0.6 * (1 + 0.18 * np.sin(dy * 1.3 - 1.1 * t))
    d = wid - np.abs(dx - sway)
    flame = _cov(d) * (dy >= -0.5) * (dy < hf)
    heat = np.clip(d / 2.5, 0, 1) * (1 - rel)
    col = _mix(_c(210, 40, 10), _c(255, 150, 30), np.clip(heat * 2, 0, 1)[..., None])
    col = _mix(col, _c(255, 245, 170), np.clip(heat * 2 - 1, 0, 1)[..., None])
    _over(img, flame, col)
    # sparks rising
    for i in range(4):
        ph = (0.7 * t + i * 4.0 + ff[4 + i] * 3) % 16.0
        sx = cx + 2.0 * np.sin(0.4 * t + i * 1.7 + ff[4 + i])
        sy = gy - hf - ph
        spark = _cov(0.7 - np.sqrt((f.X - sx) ** 2 + (f.Y - sy) ** 2)) * (1 - ph / 16.0)
        _over(img, spark, _c(255, 200, 80))


def _character(f: Frame, img):
    t = f.t
    fast = f.a.camera == "fast"
    cyc = 2 * math.pi * t / (6.0 if fast else 12.0)
    cx = f.world.char_x + 1.5 * np.sin(0.05 * t)
    foot = f.gy
    bob = 0.6 * np.abs(np.sin(cyc))
    light = np.maximum(f.light, 0.55)
    dx, y = f.X - cx, f.Y - (foot - bob)
    # legs swing in opposite phases
    for s in (1.0, -1.0):
        lx = dx - s * 1.6 * np.sin(cyc) * np.clip(-y / 5.0, 0, 1) * -1
        leg = _cov(0.8 - np.abs(lx - s * 0.6 - s * 1.6 * np.sin(cyc) * (1 + y / 5.0))) * (y > -5) * (y <= 0)
        _over(img, leg, _c(40, 45, 90) * light)
    body = _cov(2.0 - np.abs(dx)) * (y > -11) * (y <= -4.5)
    cape = _cov(-dx - 0.5) * _cov(dx + 2.0 + 2.5 * (y + 11) / 7 + 0.8 * np.sin(cyc + y)) * (y > -11) * (y <= -4)
    _over(img, np.maximum(body, cape), _c(205, 40, 45) * light)
    belt = _cov(2.0 - np.abs(dx)) * (np.abs(y + 6.5) < 0.5)
    _over(img, belt, _c(90, 60, 30) * light)
    head = _cov(2.0 - np.sqrt(dx ** 2 + (y + 13.2) ** 2))
    _over(img, head, _c(245, 205, 160) * light)
    hair = head * (y < -13.6) + _cov(2.0 - np.sqrt((dx + 0.8) ** 2 + (y + 13.9) ** 2)) * (dx < -0.5)
    _over(img, np.clip(hair, 0, 1), _c(70, 40, 20) * light)
    eye = (np.abs(dx - 1.0) < 0.5) * (np.abs(y + 13.3) < 0.5)
    _over(img, eye, _c(20, 20, 20))


def _portal(f: Frame, img):
    t = f.t
    cx = _prop_x(f, PERIOD / 2)
    cy = f.gy - 12.5
    a_, b_ = 6.5, 11.0
    dx, dy = f.X - cx, f.Y - cy
    r = np.sqrt((dx / a_) ** 2 + (dy / b_) ** 2)
    th = np.arctan2(dy / b_, dx / a_)
    night = f.a.time == "night"
    glow = np.exp(-(np.maximum(r - 1, 0) * 3.0) ** 2) * (0.55 if night else 0.3) * (1 - np.clip(1 - r, 0, 1) * 0.5)
    img += glow[..., None] * _c(150, 70, 255)
    swirl = 0.5 + 0.5 * np.sin(3 * th + 7 * r - 0.45 * t)
    inner = _cov((1 - r) * 8)
    col = _mix(_c(60, 10, 110), _c(220, 120, 255), swirl[..., None] ** 2)
    _over(img, inner * 0.9, col)
    ring = _cov((0.18 - np.abs(r - 1)) * 9)
    rc = _mix(_c(80, 220, 255), _c(210, 150, 255), (0.5 + 0.5 * np.sin(th * 2 + 0.3 * t))[..., None])
    _over(img, ring, rc)
    # orbiting sparkles
    for i in range(3):
        ang = 0.25 * t + i * 2 * math.pi / 3
        sx, sy = cx + 1.25 * a_ * np.cos(ang), cy + 1.25 * b_ * np.sin(ang)
        _over(img, _cov(0.8 - np.sqrt((f.X - sx) ** 2 + (f.Y - sy) ** 2)), _c(230, 250, 255))
    # stones at the base
    base = (np.abs(dx) < 7) * (f.Y > f.gy - 1.5) * (f.Y <= f.gy + 0.5)
    _over(img, base, f.lit(_c(110, 110, 120), 0.0))


# --- weather ----------------------------------------------------------------------------------------------

def _splat(f: Frame, xs, ys, val):
    """Adds `val` at integer pixel positions (arrays [T, N]) into a [T, H, W] buffer (out-of-frame dropped)."""
    xi, yi = np.floor(xs).astype(np.int64), np.floor(ys).astype(np.int64)
    ok = (xi >= 0) & (xi < W) & (yi >= 0) & (yi < H)
    ti = np.broadcast_to(np.arange(f.T)[:, None], xs.shape)
    buf = np.zeros((f.T, H, W), np.float32)
    np.add.at(buf, (ti[ok], yi[ok], xi[ok]), np.broadcast_to(val, xs.shape)[ok])
    return buf


def _rain(f: Frame, img):
    d = f.world.drops
    t = f.t[:, 0, 0][:, None]
    cam = f.cam[:, 0, 0][:, None]
    y = np.mod(d[:, 1] + d[:, 2] * t, H + 8) - 4
    x = np.mod(d[:, 0] - 0.3 * d[:, 2] * t - 0.9 * cam, W + 60) - 30
    buf = np.zeros((f.T, H, W), np.float32)
    for k in range(5):
        buf += _splat(f, x + 0.3 * k, y + k, 0.5)
    img *= 0.88 if f.a.time != "night" else 0.95
    _over(img, np.clip(buf, 0, 1), _c(190, 200, 225) * (0.5 if f.a.time == "night" else 1.0))


def _snowfall(f: Frame, img):
    s = f.world.flakes
    t = f.t[:, 0, 0][:, None]
    cam = f.cam[:, 0, 0][:, None]
    par = 0.4 + 0.6 * s[:, 4]
    y = np.mod(s[:, 1] + s[:, 2] * (1 + s[:, 4]) * t, H + 4) - 2
    x = np.mod(s[:, 0] + 1.8 * np.sin(0.08 * t + s[:, 3]) - par * cam, W + 40) - 20
    buf = _splat(f, x, y, 1.0)
    big = s[:, 4] > 0.5
    for ox, oy in ((1, 0), (0, 1), (1, 1)):
        buf += _splat(f, x[:, big] + ox, y[:, big] + oy, 1.0)
    col = _c(250, 252, 255) * (0.75 if f.a.time == "night" else 1.0)
    _over(img, np.clip(buf, 0, 1) * 0.95, col)


def _fog_banks(f: Frame, img):
    u = f.X + 0.3 * f.cam
    band = 0.5 + 0.5 * np.sin(u / 23.0 - 0.06 * f.t + f.Y / 7.0) * np.sin(u / 41.0 + 0.03 * f.t)
    m = (0.15 + 0.3 * band) * np.clip((f.Y - 10) / 30, 0.3, 1)
    _over(img, m, f.fogc)
