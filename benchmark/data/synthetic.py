"""Procedurally generated shape images in several rendering styles: the embedded benchmark.

Nothing can be downloaded where clipbench runs, so the benchmark ships its own data: 20 shape
classes (the first 15 "known", the last 5 "unknown" to the open-set protocol) drawn in four
rendering styles (``STYLES``: photo, sketch, painting, clipart). The tiny CLIP is pre-trained on
all four, as CLIP's web data covers every style. The benchmark's domains (``DOMAINS``) are
shifted variants it never saw: each renders one style and then applies a shift of the whole
domain (a colour cast, ageing, dusk light, fog, clutter; ``SHIFTS``), the kind of change that
normalisation and prompt adaptation can act on. ``DOMAINS[:4]`` are the target domains; the last,
``fog``, is a labelled validation domain for model selection that is never a target.

Every shape is a signed distance field evaluated on the pixel grid, and each style turns that
distance into pixels (fill, outline, rough edges, textures). Per-pixel work uses only IEEE
arithmetic and ``sqrt`` (no vectorised transcendental functions, no BLAS), and randomness comes
from a ``numpy`` ``Generator`` seeded from ``(seed, domain index)``, so that the same call gives
the same bytes on any machine with the same ``numpy``.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np

CLASSES: list[str] = [
    "circle",
    "square",
    "triangle",
    "ring",
    "heart",
    "diamond",
    "crescent",
    "flower",
    "house",
    "semicircle",
    "hourglass",
    "pentagon",
    "frame",
    "bone",
    "zigzag",
    "star",
    "cross",
    "arrow",
    "hexagon",
    "lightning",
]
"""Class names in pinned order; ``CLASSES[:15]`` are the known classes, ``CLASSES[15:]`` unknown.

The tiny model is pre-trained on all 20 (as CLIP has seen most concepts); "unknown" means only
that the prompts never name them. The split was picked so that the thin-stroke classes (frame,
bone, zigzag), which shifted styles drift towards, are known, keeping the OOD score informative
on every style. Reordering changes every rendered image and needs new weights."""

STYLES: list[str] = ["photo", "sketch", "painting", "clipart"]
"""Rendering styles, all seen in pre-training (``benchmark.tools.pretrain_tiny``)."""

DOMAIN_RECIPES: dict[str, tuple[str, str]] = {
    "photo": ("photo", "dusk"),
    "sketch": ("sketch", "aged"),
    "painting": ("painting", "cast"),
    "clipart": ("clipart", "clutter"),
    "fog": ("painting", "fog"),
}
"""Each domain of the benchmark: (rendering style, shift). ``fog`` (foggy paintings) is the validation domain."""

DOMAINS: list[str] = list(DOMAIN_RECIPES)
"""The benchmark's domains, in order: four targets, then the validation domain."""

NUM_KNOWN: int = 15
"""How many leading entries of ``CLASSES`` the open-set protocol names to the model."""

_F = np.float32
_MAX_TILT = math.radians(35.0)
"""Largest rotation of a shape; upright-ish shapes keep the tiny model's pre-training cheap."""
_Vec = list[tuple[float, float]]


def _regular(k: int, r: float, phase_deg: float = 90.0) -> _Vec:
    """Vertices of a regular ``k``-gon of circumradius ``r`` with a vertex at ``phase_deg``."""
    return [
        (r * math.cos(math.radians(phase_deg + 360.0 * i / k)), r * math.sin(math.radians(phase_deg + 360.0 * i / k)))
        for i in range(k)
    ]


def _star_vertices(points: int, outer: float, inner: float) -> _Vec:
    """Vertices of a star polygon alternating between the outer and inner radius."""
    out = []
    for i in range(2 * points):
        r = outer if i % 2 == 0 else inner
        a = math.radians(90.0 + 180.0 * i / points)
        out.append((r * math.cos(a), r * math.sin(a)))
    return out


def _heart_vertices(k: int = 48) -> _Vec:
    """Vertices of the classic parametric heart curve, scaled into the unit disc."""
    out = []
    for i in range(k):
        t = 2.0 * math.pi * i / k
        x = 16.0 * math.sin(t) ** 3
        y = 13.0 * math.cos(t) - 5.0 * math.cos(2 * t) - 2.0 * math.cos(3 * t) - math.cos(4 * t)
        out.append((x / 17.0, y / 17.0 + 0.15))
    return out


def _polygon(px: np.ndarray, py: np.ndarray, verts: _Vec) -> np.ndarray:
    """Exact signed distance to a simple polygon (negative inside), arithmetic only."""
    d = (px - _F(verts[0][0])) ** 2 + (py - _F(verts[0][1])) ** 2
    sign = np.ones_like(px)
    for i in range(len(verts)):
        vix, viy = _F(verts[i][0]), _F(verts[i][1])
        vjx, vjy = _F(verts[i - 1][0]), _F(verts[i - 1][1])
        ex, ey = vjx - vix, vjy - viy
        wx, wy = px - vix, py - viy
        t = np.clip((wx * ex + wy * ey) / (ex * ex + ey * ey), _F(0), _F(1))
        bx, by = wx - ex * t, wy - ey * t
        d = np.minimum(d, bx * bx + by * by)
        c1, c2, c3 = py >= viy, py < vjy, ex * wy > ey * wx
        sign = np.where((c1 & c2 & c3) | (~c1 & ~c2 & ~c3), -sign, sign)
    return sign * np.sqrt(d)


def _disc(px: np.ndarray, py: np.ndarray, cx: float, cy: float, r: float) -> np.ndarray:
    """Signed distance to a disc."""
    return np.sqrt((px - _F(cx)) ** 2 + (py - _F(cy)) ** 2) - _F(r)


def _box(px: np.ndarray, py: np.ndarray, hx: float, hy: float, cx: float = 0.0, cy: float = 0.0) -> np.ndarray:
    """Signed distance to an axis-aligned box with half sizes ``hx``, ``hy``."""
    qx = np.abs(px - _F(cx)) - _F(hx)
    qy = np.abs(py - _F(cy)) - _F(hy)
    outside = np.sqrt(np.maximum(qx, 0) ** 2 + np.maximum(qy, 0) ** 2)
    return outside + np.minimum(np.maximum(qx, qy), 0)


_TRIANGLE = _regular(3, 1.0)
_STAR = _star_vertices(5, 1.0, 0.45)
_HEART = _heart_vertices()
_ARROW = [(-0.9, -0.2), (0.15, -0.2), (0.15, -0.6), (0.9, 0.0), (0.15, 0.6), (0.15, 0.2), (-0.9, 0.2)]
_DIAMOND = [(0.0, 1.0), (0.62, 0.0), (0.0, -1.0), (-0.62, 0.0)]
_HEXAGON = _regular(6, 0.9, 0.0)
_HOUSE = [(-0.65, -0.85), (0.65, -0.85), (0.65, 0.1), (0.85, 0.1), (0.0, 0.9), (-0.85, 0.1), (-0.65, 0.1)]
_HOURGLASS = [(-0.7, 0.9), (0.7, 0.9), (0.1, 0.0), (0.7, -0.9), (-0.7, -0.9), (-0.1, 0.0)]
_PENTAGON = _regular(5, 0.92)
_ZIGZAG = [(-0.9, -0.3), (-0.45, 0.3), (0.0, -0.3), (0.45, 0.3), (0.9, -0.3)]
_LIGHTNING = [(0.15, 1.0), (-0.55, -0.05), (-0.05, -0.05), (-0.3, -1.0), (0.55, 0.15), (0.05, 0.15), (0.45, 1.0)]


def _polyline(px: np.ndarray, py: np.ndarray, points: _Vec, half_width: float) -> np.ndarray:
    """Signed distance to a thick open polyline (a stroke of the given half width)."""
    d = None
    for (ax, ay), (bx, by) in zip(points[:-1], points[1:]):
        ex, ey = _F(bx - ax), _F(by - ay)
        wx, wy = px - _F(ax), py - _F(ay)
        t = np.clip((wx * ex + wy * ey) / (ex * ex + ey * ey), _F(0), _F(1))
        seg = (wx - ex * t) ** 2 + (wy - ey * t) ** 2
        d = seg if d is None else np.minimum(d, seg)
    return np.sqrt(d) - _F(half_width)


def _bone(px: np.ndarray, py: np.ndarray) -> np.ndarray:
    """A bar with two round knobs at each end."""
    d = _box(px, py, 0.62, 0.13)
    for cx in (-0.62, 0.62):
        for cy in (-0.2, 0.2):
            d = np.minimum(d, _disc(px, py, cx, cy, 0.23))
    return d


def _flower(px: np.ndarray, py: np.ndarray) -> np.ndarray:
    """Five round petals around a round centre."""
    d = _disc(px, py, 0.0, 0.0, 0.3)
    for cx, cy in _regular(5, 0.52):
        d = np.minimum(d, _disc(px, py, cx, cy, 0.36))
    return d


_SHAPES: dict[str, Callable[[np.ndarray, np.ndarray], np.ndarray]] = {
    "circle": lambda x, y: _disc(x, y, 0.0, 0.0, 0.85),
    "square": lambda x, y: _box(x, y, 0.7, 0.7),
    "triangle": lambda x, y: _polygon(x, y, _TRIANGLE),
    "star": lambda x, y: _polygon(x, y, _STAR),
    "cross": lambda x, y: np.minimum(_box(x, y, 0.9, 0.28), _box(x, y, 0.28, 0.9)),
    "ring": lambda x, y: np.abs(_disc(x, y, 0.0, 0.0, 0.68)) - _F(0.22),
    "heart": lambda x, y: _polygon(x, y, _HEART),
    "arrow": lambda x, y: _polygon(x, y, _ARROW),
    "diamond": lambda x, y: _polygon(x, y, _DIAMOND),
    "hexagon": lambda x, y: _polygon(x, y, _HEXAGON),
    "crescent": lambda x, y: np.maximum(_disc(x, y, 0.0, 0.0, 0.9), -_disc(x, y, 0.45, 0.2, 0.72)),
    "flower": _flower,
    "house": lambda x, y: np.maximum(_polygon(x, y, _HOUSE), -_box(x, y, 0.17, 0.3, 0.0, -0.55)),
    "semicircle": lambda x, y: np.maximum(_disc(x, y + _F(0.35), 0.0, 0.0, 0.95), -(y + _F(0.35))),
    "hourglass": lambda x, y: _polygon(x, y, _HOURGLASS),
    "pentagon": lambda x, y: _polygon(x, y, _PENTAGON),
    "frame": lambda x, y: np.maximum(_box(x, y, 0.8, 0.8), -_box(x, y, 0.5, 0.5)),
    "bone": _bone,
    "zigzag": lambda x, y: _polyline(x, y, _ZIGZAG, 0.14),
    "lightning": lambda x, y: _polygon(x, y, _LIGHTNING),
}


def _hsv(h: np.ndarray, s: np.ndarray, v: np.ndarray) -> np.ndarray:
    """HSV in [0, 1] to RGB, shape ``(n, 1, 1, 3)`` ready to broadcast over images."""
    h6 = (h % 1.0) * 6.0
    i = np.floor(h6).astype(np.int64) % 6
    f = h6 - np.floor(h6)
    p, q, t = v * (1 - s), v * (1 - f * s), v * (1 - (1 - f) * s)
    table = np.stack([np.stack(c, -1) for c in [(v, t, p), (q, v, p), (p, v, t), (p, q, v), (t, p, v), (v, p, q)]])
    rgb = table[i, np.arange(len(h))]
    return rgb.astype(_F)[:, None, None, :]


def _smooth_noise(rng: np.random.Generator, n: int, size: int, grid: int, channels: int) -> np.ndarray:
    """Low-frequency noise ``(n, size, size, channels)``: a coarse Gaussian grid, bilinearly upsampled."""
    coarse = rng.standard_normal((n, grid, grid, channels)).astype(_F)
    pos = (np.arange(size, dtype=_F) + _F(0.5)) * _F((grid - 1) / size)
    i0 = np.minimum(np.floor(pos).astype(np.int64), grid - 2)
    w = pos - i0.astype(_F)
    rows = coarse[:, i0] * (1 - w)[None, :, None, None] + coarse[:, i0 + 1] * w[None, :, None, None]
    return rows[:, :, i0] * (1 - w)[None, None, :, None] + rows[:, :, i0 + 1] * w[None, None, :, None]


def _blur(img: np.ndarray) -> np.ndarray:
    """Separable [1, 2, 1] / 4 blur over the two spatial axes of ``(n, h, w, c)``."""
    p = np.pad(img, ((0, 0), (1, 1), (0, 0), (0, 0)), mode="edge")
    img = (p[:, :-2] + 2 * p[:, 1:-1] + p[:, 2:]) * _F(0.25)
    p = np.pad(img, ((0, 0), (0, 0), (1, 1), (0, 0)), mode="edge")
    return (p[:, :, :-2] + 2 * p[:, :, 1:-1] + p[:, :, 2:]) * _F(0.25)


def _col(x: np.ndarray) -> np.ndarray:
    """Per-image scalars ``(n,)`` as ``(n, 1, 1)`` float32 to broadcast over pixels."""
    return np.asarray(x, dtype=_F)[:, None, None]


def _photo(
    rng: np.random.Generator, d: np.ndarray, gx: np.ndarray, gy: np.ndarray, lx: np.ndarray, ly: np.ndarray, k: float
) -> np.ndarray:
    """Source style: shaded, filled shape (darker rim, varied contrast) on a soft two-colour
    gradient with mild sensor noise."""
    n, size = d.shape[0], d.shape[1]
    c1 = _hsv(rng.random(n), rng.uniform(0.05, 0.35, n), rng.uniform(0.35, 0.95, n))
    c2 = _hsv(rng.random(n), rng.uniform(0.05, 0.35, n), rng.uniform(0.35, 0.95, n))
    phi = rng.uniform(0, 2 * math.pi, n)
    cphi = _col([math.cos(a) for a in phi])
    sphi = _col([math.sin(a) for a in phi])
    g = ((gx * cphi + gy * sphi + 1.5) / 3)[..., None]
    bg = c1 * (1 - g) + c2 * g
    vbg = bg.mean(axis=(1, 2, 3))
    vfg = np.where(vbg > 0.6, vbg - rng.uniform(0.3, 0.55, n), vbg + rng.uniform(0.25, 0.45, n))
    vfg = np.where(rng.random(n) < 0.3, rng.uniform(0.3, 1.0, n), vfg)
    fg = _hsv(rng.random(n), rng.uniform(0.45, 0.95, n), np.clip(vfg, 0.08, 1.0))
    psi = rng.uniform(0, 2 * math.pi, n)
    shade = 1 + _F(0.18) * (lx * _col([math.cos(a) for a in psi]) + ly * _col([math.sin(a) for a in psi]))
    rim = np.clip(_F(1) + d / _col(rng.uniform(1.5, 3.0, n) * k), 0, 1) * _col(rng.uniform(0.0, 0.45, n))
    a = np.clip(_F(0.5) - d, 0, 1)[..., None]
    img = bg * (1 - a) + fg * (shade * (1 - rim))[..., None] * a
    img = _blur(img)
    return img + _F(0.02) * rng.standard_normal((n, size, size, 1)).astype(_F)


def _sketch(
    rng: np.random.Generator, d: np.ndarray, gx: np.ndarray, gy: np.ndarray, lx: np.ndarray, ly: np.ndarray, k: float
) -> np.ndarray:
    """Shaky pen outline on grainy paper, a quarter hatched and half pencil-shaded inside: no colour."""
    n, size = d.shape[0], d.shape[1]
    paper = _hsv(rng.uniform(0.05, 0.15, n), rng.uniform(0.0, 0.12, n), rng.uniform(0.85, 1.0, n))
    ink = _hsv(rng.uniform(0.55, 0.7, n), rng.uniform(0.0, 0.5, n), rng.uniform(0.0, 0.35, n))
    wobble = _smooth_noise(rng, n, size, 6, 1)[..., 0] * _col(rng.uniform(0.4, 1.2, n) * k)
    dw = d + wobble
    width = _col(rng.uniform(0.6, 1.6, n) * k)
    pressure = np.clip(_F(0.85) + _F(0.15) * _smooth_noise(rng, n, size, 5, 1)[..., 0], 0.55, 1.0)
    line = np.clip(width + _F(0.5) - np.abs(dw), 0, 1) * pressure
    phi = rng.uniform(0, math.pi, n)
    period = _col(rng.uniform(3.0, 5.0, n) * k)
    proj = (gx * _col([math.cos(a) for a in phi]) + gy * _col([math.sin(a) for a in phi])) * _F(size / 2)
    stripes = ((proj / period) % 1.0) < 0.35
    inside = (dw < 0).astype(_F)
    mode = rng.random(n)
    hatch = (stripes.astype(_F) * inside) * _col(np.where(mode < 0.25, 0.6, 0.0))
    shading = inside * _col(np.where(mode > 0.5, rng.uniform(0.35, 0.75, n), 0.0))
    a = np.maximum(np.maximum(line, hatch), shading)[..., None]
    img = paper * (1 - a) + ink * a
    return img + _F(0.035) * rng.standard_normal((n, size, size, 1)).astype(_F)


def _painting(
    rng: np.random.Generator, d: np.ndarray, gx: np.ndarray, gy: np.ndarray, lx: np.ndarray, ly: np.ndarray, k: float
) -> np.ndarray:
    """Textured fill with ragged edges over a blotchy, colourful canvas (contrast kept), softened."""
    n, size = d.shape[0], d.shape[1]
    vbase = rng.uniform(0.3, 0.9, n)
    base = _hsv(rng.random(n), rng.uniform(0.3, 0.7, n), vbase)
    bg = base + _F(0.06) * _smooth_noise(rng, n, size, 4, 3) + _F(0.06) * _smooth_noise(rng, n, size, 12, 3)
    contrast = rng.uniform(0.3, 0.55, n)
    vfg = np.where(vbase > 0.6, vbase - contrast, vbase + contrast)
    fg = _hsv(rng.random(n), rng.uniform(0.4, 0.9, n), np.clip(vfg, 0.05, 1.0))
    tex = fg + _F(0.1) * _smooth_noise(rng, n, size, 10, 3)
    rough = d + _smooth_noise(rng, n, size, 8, 1)[..., 0] * _F(1.2 * k)
    a = np.clip(_F(0.5) - rough / _F(1.5 * k), 0, 1)[..., None]
    img = _blur(bg * (1 - a) + tex * a)
    return img + _F(0.03) * rng.standard_normal((n, size, size, 1)).astype(_F)


def _clipart(
    rng: np.random.Generator, d: np.ndarray, gx: np.ndarray, gy: np.ndarray, lx: np.ndarray, ly: np.ndarray, k: float
) -> np.ndarray:
    """Flat vivid fill, mostly with a black outline, on a plain white or pastel background."""
    n = d.shape[0]
    white = rng.random(n) < 0.5
    bg = _hsv(rng.random(n), np.where(white, 0.0, rng.uniform(0.15, 0.3, n)), np.full(n, 0.97))
    hue = rng.integers(0, 8, n) / 8.0 + rng.uniform(-0.02, 0.02, n)
    fill = _hsv(hue, rng.uniform(0.85, 1.0, n), rng.uniform(0.85, 1.0, n))
    width = _col(np.where(rng.random(n) < 0.25, -1.0, rng.uniform(0.5, 2.0, n)) * k)
    a_fill = np.clip(_F(0.5) - d, 0, 1)[..., None]
    a_line = np.clip(width + _F(0.5) - np.abs(d), 0, 1)[..., None]
    return (bg * (1 - a_fill) + fill * a_fill) * (1 - a_line)


_STYLES = {"photo": _photo, "sketch": _sketch, "painting": _painting, "clipart": _clipart}


def _dusk(rng: np.random.Generator, img: np.ndarray, d: np.ndarray, k: float) -> np.ndarray:
    """Evening light: darker, gamma-compressed, blue-tinted, with sensor noise."""
    n, size = img.shape[0], img.shape[1]
    tint = np.array([0.72, 0.82, 1.12], dtype=_F)
    out = (img ** _F(1.5)) * _F(0.7) * tint + _F(0.04)
    return out + _F(0.035) * rng.standard_normal((n, size, size, 1)).astype(_F)


def _aged(rng: np.random.Generator, img: np.ndarray, d: np.ndarray, k: float) -> np.ndarray:
    """Yellowed paper and faded ink: contrast halved towards a warm paper tone, blotches."""
    n, size = img.shape[0], img.shape[1]
    paper = np.array([0.86, 0.78, 0.55], dtype=_F)
    blotch = _F(0.06) * _smooth_noise(rng, n, size, 5, 1)
    return _F(0.65) * img * np.array([1.0, 0.93, 0.75], dtype=_F) + _F(0.35) * paper + blotch


def _cast(rng: np.random.Generator, img: np.ndarray, d: np.ndarray, k: float) -> np.ndarray:
    """A strong colour cast: the channels mixed by a fixed matrix (reds to purple, blues to green)."""
    mix = np.array([[0.55, 0.15, 0.35], [0.1, 0.45, 0.45], [0.45, 0.45, 0.1]], dtype=_F)
    return img @ mix.T


def _clutter(rng: np.random.Generator, img: np.ndarray, d: np.ndarray, k: float) -> np.ndarray:
    """Small distracting blobs and bars of random colours scattered over the picture."""
    n, size = img.shape[0], img.shape[1]
    coords = (np.arange(size, dtype=_F) + _F(0.5)) * _F(2.0 / size) - _F(1)
    gx = np.broadcast_to(coords[None, None, :], (n, size, size))
    gy = np.broadcast_to(-coords[None, :, None], (n, size, size))
    out = img.copy()
    for _ in range(5):
        cx, cy = _col(rng.uniform(-0.95, 0.95, n)), _col(rng.uniform(-0.95, 0.95, n))
        r = _col(rng.uniform(0.05, 0.12, n))
        disc = np.sqrt((gx - cx) ** 2 + (gy - cy) ** 2) - r
        bar = _box(gx - cx, gy - cy, 0.22, 0.035)
        shape = np.where(_col(rng.random(n) < 0.5) > 0, disc, bar)
        a = np.clip(_F(0.5) - shape * _F(size / 2), 0, 1)[..., None] * _F(0.9)
        colour = _hsv(rng.random(n), rng.uniform(0.6, 1.0, n), rng.uniform(0.3, 0.9, n))
        out = out * (1 - a) + colour * a
    return out


def _fog(rng: np.random.Generator, img: np.ndarray, d: np.ndarray, k: float) -> np.ndarray:
    """Fog: the picture washed out towards a light grey, with film grain."""
    n, size = img.shape[0], img.shape[1]
    out = _F(0.5) * img + _F(0.5) * np.array([0.78, 0.8, 0.82], dtype=_F)
    return out + _F(0.05) * rng.standard_normal((n, size, size, 1)).astype(_F)


SHIFTS = {"none": None, "dusk": _dusk, "aged": _aged, "cast": _cast, "clutter": _clutter, "fog": _fog}
"""Whole-domain shifts applied after rendering (``none`` for pre-training images)."""


def render_style(
    style: str, n_per_class: int, seed: int, size: int = 64, shift: str = "none", stream: int = 0
) -> tuple[np.ndarray, np.ndarray]:
    """Render ``n_per_class`` images of every class in ``CLASSES`` in ``style``, then apply ``shift``.

    Returns ``(images, labels)``: uint8 ``(20 * n_per_class, size, size, 3)`` and int64 class
    indices, sorted by class. Each image draws its own position, scale, rotation, colours, stroke
    widths and background. The generator is seeded from ``(seed, stream)``, so different streams
    of one seed never share draws and the result is a pure function of the arguments.
    """
    if style not in _STYLES:
        raise ValueError(f"unknown style {style!r}; valid styles: {', '.join(STYLES)}")
    if shift not in SHIFTS:
        raise ValueError(f"unknown shift {shift!r}; valid shifts: {', '.join(SHIFTS)}")
    if n_per_class < 1 or size < 8:
        raise ValueError(f"need n_per_class >= 1 and size >= 8, got {n_per_class} and {size}")
    rng = np.random.Generator(np.random.PCG64(np.random.SeedSequence([seed, stream])))
    n, k = n_per_class, size / 64.0
    coords = (np.arange(size, dtype=_F) + _F(0.5)) * _F(2.0 / size) - _F(1)
    gx = np.broadcast_to(coords[None, None, :], (n, size, size))
    gy = np.broadcast_to(-coords[None, :, None], (n, size, size))
    images = np.empty((len(CLASSES) * n, size, size, 3), dtype=np.uint8)
    for c, name in enumerate(CLASSES):
        cx, cy = _col(rng.uniform(-0.2, 0.2, n)), _col(rng.uniform(-0.2, 0.2, n))
        scale = rng.uniform(0.5, 0.75, n)
        theta = rng.uniform(-_MAX_TILT, _MAX_TILT, n)
        cos_t, sin_t = _col([math.cos(t) for t in theta]), _col([math.sin(t) for t in theta])
        dx, dy = gx - cx, gy - cy
        inv = _col(1.0 / scale)
        lx = (dx * cos_t + dy * sin_t) * inv
        ly = (dy * cos_t - dx * sin_t) * inv
        dist = _SHAPES[name](lx, ly) * _col(scale * size / 2.0)
        img = _STYLES[style](rng, dist, gx, gy, lx, ly, k)
        if SHIFTS[shift] is not None:
            img = SHIFTS[shift](rng, np.clip(img, 0, 1), dist, k)
        images[c * n : (c + 1) * n] = np.clip(img * _F(255) + _F(0.5), 0, 255).astype(np.uint8)
    labels = np.repeat(np.arange(len(CLASSES), dtype=np.int64), n)
    return images, labels


def render(domain: str, n_per_class: int, seed: int, size: int = 64) -> tuple[np.ndarray, np.ndarray]:
    """Render one domain of the benchmark (its style and shift, ``DOMAIN_RECIPES``); see ``render_style``.

    The draws are seeded from ``(seed, 100 + the domain's index)``: pre-training images use the
    streams of the styles (0-3), so no benchmark image is ever a pre-training image.
    """
    if domain not in DOMAIN_RECIPES:
        raise ValueError(f"unknown domain {domain!r}; valid domains: {', '.join(DOMAINS)}")
    style, shift = DOMAIN_RECIPES[domain]
    return render_style(style, n_per_class, seed, size, shift, stream=100 + DOMAINS.index(domain))
