"""Digit glyph masks: from font files, and procedural pen strokes (Catmull-Rom splines)."""
from __future__ import annotations

import functools
import math
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageDraw

from clipkit.data.synth.fonts import _load_font


# ---------------------------------------------------------------------------
# Digits: glyph masks from fonts, and procedural pen strokes
# ---------------------------------------------------------------------------


@dataclass(frozen=True)
class _Glyph:
    mask: np.ndarray  # (H, W) float32 in [0, 1]
    anchor: tuple[float, float]  # centre of the ink bbox, mask px
    height: float  # ink height, mask px
    mass_centre: tuple[float, float]  # centre of mass of the ink, mask px


_GLYPHS: dict[tuple, _Glyph] = {}


def _font_glyph(path: str, digit: int, stroke: int, n: int) -> _Glyph:
    """The digit drawn at em size n with Pillow's stroke, cropped; cached per process."""
    key = (path, digit, stroke, n)
    glyph = _GLYPHS.get(key)
    if glyph is None:
        font = _load_font(path, n)
        im = Image.new("L", (2 * n, 2 * n), 0)
        ImageDraw.Draw(im).text((n // 2, n // 3), str(digit), fill=255, font=font,
                                stroke_width=stroke, stroke_fill=255)
        glyph = _crop_glyph(np.asarray(im, np.float32) / 255.0)
        if len(_GLYPHS) < 20000:
            _GLYPHS[key] = glyph
    return glyph


@functools.lru_cache(maxsize=256)
def _font_weight(path: str, n: int) -> float:
    """Mean stroke width of the face's digits at em size n, in px: twice the ink area
    over the outline length (a long thin band of width w has area ~ w * perimeter / 2)."""
    widths = []
    for d in range(10):
        ink = _font_glyph(path, d, 0, n).mask > 0.5
        edges = (ink[:, 1:] != ink[:, :-1]).sum() + (ink[1:] != ink[:-1]).sum()
        widths.append(2 * ink.sum() / max(edges, 1))
    return float(np.mean(widths))


def _crop_glyph(a: np.ndarray) -> _Glyph:
    ys, xs = np.nonzero(a > 0.1)
    if len(ys) == 0:  # nothing drawn: a blank glyph, still a valid image
        return _Glyph(np.zeros((4, 4), np.float32), (2.0, 2.0), 4.0, (2.0, 2.0))
    y0, y1, x0, x1 = max(ys.min() - 2, 0), ys.max() + 3, max(xs.min() - 2, 0), xs.max() + 3
    crop = np.ascontiguousarray(a[y0:y1, x0:x1])
    anchor = ((xs.min() + xs.max() + 1) / 2 - x0, (ys.min() + ys.max() + 1) / 2 - y0)
    mass = crop.sum()
    mass_centre = (float((crop.sum(0) * (np.arange(crop.shape[1]) + 0.5)).sum() / mass),
                   float((crop.sum(1) * (np.arange(crop.shape[0]) + 0.5)).sum() / mass))
    return _Glyph(crop, anchor, float(ys.max() - ys.min() + 1), mass_centre)


def _arc(cx, cy, rx, ry, a0, a1, k=5):
    """k points along an ellipse arc, angles in degrees, 0 = right, 90 = down."""
    t = np.radians(np.linspace(a0, a1, k))
    return [(cx + rx * math.cos(a), cy + ry * math.sin(a)) for a in t]


# Pen-stroke digits in a unit box (x right, y down). Each variant is a list of strokes;
# a stroke is (smooth?, control points): smooth strokes pass through their points as a
# Catmull-Rom spline, others are polylines. Variants follow how people write: a '1'
# with or without a flag, open and closed '4', '7' with a bar, '9' with a straight stem.
_PEN_DIGITS: dict[int, list[list[tuple[bool, list[tuple[float, float]]]]]] = {
    0: [[(True, _arc(0.5, 0.5, 0.42, 0.5, -100, 265, 12))],
        [(True, _arc(0.5, 0.5, 0.36, 0.5, -80, 290, 12))]],
    1: [[(False, [(0.55, 0.0), (0.45, 1.0)])],
        [(False, [(0.38, 0.14), (0.6, 0.0), (0.5, 1.0)])],
        [(False, [(0.52, 0.0), (0.5, 1.0)])],
        [(False, [(0.36, 0.16), (0.58, 0.0), (0.55, 1.0)]), (False, [(0.3, 1.0), (0.8, 1.0)])]],
    2: [[(True, [(0.08, 0.25), (0.4, 0.0), (0.82, 0.12), (0.78, 0.45), (0.35, 0.78), (0.05, 1.0)]),
         (False, [(0.05, 1.0), (0.95, 0.97)])],
        [(True, [(0.1, 0.2), (0.5, 0.0), (0.88, 0.25), (0.6, 0.62), (0.1, 0.98), (0.2, 0.8),
                 (0.45, 0.92), (0.95, 1.0)])]],
    3: [[(True, [(0.1, 0.15), (0.5, 0.0), (0.85, 0.2), (0.72, 0.42), (0.35, 0.5)]),
         (True, [(0.35, 0.5), (0.82, 0.6), (0.88, 0.85), (0.5, 1.0), (0.08, 0.88)])],
        [(False, [(0.1, 0.02), (0.88, 0.02), (0.42, 0.42)]),
         (True, [(0.42, 0.42), (0.85, 0.58), (0.85, 0.88), (0.45, 1.0), (0.08, 0.85)])]],
    4: [[(False, [(0.68, 1.0), (0.68, 0.0), (0.05, 0.7), (0.95, 0.7)])],
        [(False, [(0.18, 0.0), (0.1, 0.6), (0.92, 0.6)]), (False, [(0.72, 0.05), (0.66, 1.0)])],
        [(False, [(0.25, 0.0), (0.05, 0.62), (0.95, 0.58)]), (False, [(0.75, 0.25), (0.7, 1.0)])]],
    5: [[(False, [(0.88, 0.0), (0.2, 0.0), (0.15, 0.45)]),
         (True, [(0.15, 0.45), (0.55, 0.37), (0.88, 0.6), (0.8, 0.9), (0.45, 1.0), (0.08, 0.88)])],
        [(False, [(0.2, 0.02), (0.15, 0.45)]), (False, [(0.2, 0.02), (0.88, 0.0)]),
         (True, [(0.15, 0.45), (0.6, 0.4), (0.9, 0.7), (0.55, 1.0), (0.1, 0.9)])]],
    6: [[(True, [(0.78, 0.02), (0.4, 0.15), (0.15, 0.5), (0.15, 0.82), (0.45, 1.0), (0.8, 0.85),
                 (0.8, 0.6), (0.5, 0.5), (0.17, 0.68)])],
        [(True, [(0.7, 0.0), (0.3, 0.35), (0.15, 0.75), (0.45, 1.0), (0.82, 0.8), (0.55, 0.55),
                 (0.2, 0.7)])]],
    7: [[(False, [(0.05, 0.02), (0.95, 0.02), (0.4, 1.0)])],
        [(False, [(0.05, 0.05), (0.95, 0.0), (0.45, 1.0)]), (False, [(0.3, 0.52), (0.82, 0.5)])],
        [(False, [(0.08, 0.12), (0.12, 0.02), (0.92, 0.02)]),
         (True, [(0.92, 0.02), (0.65, 0.4), (0.45, 1.0)])]],
    8: [[(True, [(0.5, 0.47), (0.15, 0.24), (0.5, 0.0), (0.85, 0.22), (0.5, 0.47), (0.1, 0.75),
                 (0.5, 1.0), (0.9, 0.75), (0.5, 0.47)])],
        [(True, _arc(0.5, 0.24, 0.3, 0.24, 90, 450, 9)), (True, _arc(0.5, 0.73, 0.4, 0.27, -90, 270, 9))]],
    9: [[(True, [(0.85, 0.25), (0.5, 0.0), (0.15, 0.2), (0.25, 0.45), (0.6, 0.45), (0.85, 0.25)]),
         (False, [(0.85, 0.2), (0.75, 1.0)])],
        [(True, [(0.85, 0.22), (0.45, 0.0), (0.12, 0.22), (0.4, 0.48), (0.84, 0.28)]),
         (True, [(0.85, 0.15), (0.82, 0.6), (0.6, 1.0)])]],
}


_CR_STEPS = 6  # spline points per segment


def _catmull_rom(points: np.ndarray, per_segment: int = _CR_STEPS) -> np.ndarray:
    """Dense points of the Catmull-Rom spline through `points` (K, 2): (K-1) * per_segment + 1
    points, the control points at every per_segment-th place."""
    p = np.concatenate([points[:1], points, points[-1:]])  # (K+2, 2): ends repeated
    p0, p1, p2, p3 = p[:-3, None], p[1:-2, None], p[2:-1, None], p[3:, None]  # (K-1, 1, 2) each
    t = np.linspace(0, 1, per_segment, endpoint=False)[None, :, None]  # (1, S, 1)
    curve = 0.5 * (2 * p1 + (p2 - p0) * t + (2 * p0 - 5 * p1 + 4 * p2 - p3) * t ** 2
                   + (3 * p1 - p0 - 3 * p2 + p3) * t ** 3)  # (K-1, S, 2)
    return np.concatenate([curve.reshape(-1, 2), points[-1:]])


def _skeleton(rng: np.random.Generator, digit: int, n: int) -> tuple[int, float, float]:
    """A pen digit's variant, and its height and width in pixels of the 2x drawing."""
    variant = int(rng.integers(len(_PEN_DIGITS[digit])))
    height = 0.7 * n * 2  # drawn at 2x
    return variant, height, height * rng.uniform(0.55, 0.78)


def _jittered(rng: np.random.Generator, pts, scale: float = 1.0) -> np.ndarray:
    """The control points, each moved by a small normal step (unit-box units, times
    `scale`); less where there are many, or a round '0' turns polygonal."""
    return np.asarray(pts, float) + rng.normal(0, (0.035 if len(pts) <= 6 else 0.022) * scale, (len(pts), 2))


def _pen_glyph(rng: np.random.Generator, digit: int, n: int, width: float) -> tuple[_Glyph, int]:
    """A jittered pen-stroke digit, drawn at 2x and reduced (antialiasing). `width` is the
    pen width as a fraction of the digit height. Returns the glyph and its variant."""
    variant, height, box_w = _skeleton(rng, digit, n)
    pad = n * 0.3
    size = int(2 * n)
    im = Image.new("L", (size, size), 0)
    draw = ImageDraw.Draw(im)
    pen = max(2, int(round(width * height)))
    for smooth, pts in _PEN_DIGITS[digit][variant]:
        p = _jittered(rng, pts)
        if smooth:
            p = _catmull_rom(p)
        xy = np.stack([pad + p[:, 0] * box_w, (size - height) / 2 + p[:, 1] * height], 1)
        draw.line(xy.ravel().tolist(), fill=255, width=pen)
        # Round caps and joins: discs at the ends and at every control point (between
        # them a dense spline bends so little that plain segments leave no gap).
        r = pen / 2 - 0.5
        for x, y in (xy if not smooth else xy[::_CR_STEPS]):
            draw.ellipse([x - r, y - r, x + r, y + r], fill=255)
        if smooth:
            x, y = xy[-1]
            draw.ellipse([x - r, y - r, x + r, y + r], fill=255)
    im = im.reduce(2)
    return _crop_glyph(np.asarray(im, np.float32) / 255.0), variant


# Handwriting-like pen strokes (`SynthWorld(pen="hand")`): the same skeletons as
# `_pen_glyph`, with the variation between two people's digits that a fixed skeleton and a
# small jitter lack: where the middle of the digit sits (a '9' with a small or a large head,
# an '8' top-heavy or bottom-heavy), top and bottom of unequal width, strokes that do not
# meet where the skeleton says (a '4' or '5' written in two movements), ends that stop
# short or overshoot, messier or neater hands, and a pen whose width changes along the
# stroke (pressure, thin starts and ends).
HAND_MIDDLE_SD = 0.45  # y -> y + m y (1 - y): the middle moves by m / 4 of the height
HAND_TAPER_SD = 0.35  # x -> 0.5 + (x - 0.5)(1 + t (y - 0.5)): top wider or narrower than bottom
HAND_MESSY = (0.6, 2.2)  # jitter scale over `_pen_glyph`'s, log-uniform
HAND_STROKE_SHIFT = 0.03  # SD of each stroke's own offset (unit-box units), times the mess
HAND_END = (-0.2, 0.3)  # first/last segment shortened or extended by this fraction
HAND_PRESSURE = 0.35  # largest relative change of the pen width along a stroke


def _resample(points: np.ndarray, step: float) -> np.ndarray:
    """Points along the polyline `points` (K, 2) at most `step` apart, the vertices kept."""
    out = [points[:1]]
    for a, b in zip(points[:-1], points[1:]):
        k = max(1, int(math.ceil(float(np.hypot(*(b - a))) / step)))
        t = np.arange(1, k + 1, dtype=float)[:, None] / k
        out.append(a + (b - a) * t)
    return np.concatenate(out)


def _disc_stroke(draw, xy: np.ndarray, radii: np.ndarray) -> None:
    """Ink the union of discs of `radii` at the points `xy` (a pen of varying width)."""
    for (x, y), r in zip(xy, radii):
        draw.ellipse([x - r, y - r, x + r, y + r], fill=255)


def _hand_glyph(rng: np.random.Generator, digit: int, n: int, width: float) -> tuple[_Glyph, int]:
    """A handwriting-like pen digit (see the constants above), drawn at 2x and reduced.
    `width` is the mean pen width as a fraction of the digit height. Returns the glyph and
    its variant (the skeleton of `_PEN_DIGITS[digit]`). The canvas (3n at 2x) leaves room
    for every warp and overshoot: no stroke is cut at its edge."""
    variant, height, box_w = _skeleton(rng, digit, n)
    size = int(3 * n)
    pad_x, pad_y = (size - box_w) / 2, (size - height) / 2
    middle = float(np.clip(rng.normal(0, HAND_MIDDLE_SD), -0.8, 0.8))
    taper = float(np.clip(rng.normal(0, HAND_TAPER_SD), -0.6, 0.6))
    messy = math.exp(rng.uniform(*np.log(HAND_MESSY)))
    pen = max(2.0, width * height)
    pressure = rng.uniform(0, HAND_PRESSURE)
    im = Image.new("L", (size, size), 0)
    draw = ImageDraw.Draw(im)
    for smooth, pts in _PEN_DIGITS[digit][variant]:
        p = _jittered(rng, pts, messy) + rng.normal(0, HAND_STROKE_SHIFT * messy, 2)
        if np.hypot(*(np.subtract(pts[0], pts[-1]))) > 0.02:  # an open stroke: its ends stop short or run on
            start, end = rng.uniform(*HAND_END, 2)
            p[0] = p[0] + (p[0] - p[1]) * start
            p[-1] = p[-1] + (p[-1] - p[-2]) * end
        if smooth:
            p = _catmull_rom(p)
        x, y = p[:, 0], p[:, 1]
        y = y + middle * np.clip(y, 0, 1) * (1 - np.clip(y, 0, 1))
        x = 0.5 + (x - 0.5) * (1 + taper * (y - 0.5))
        xy = _resample(np.stack([pad_x + x * box_w, pad_y + y * height], 1), max(0.75, pen / 6))
        s = np.linspace(0, 1, len(xy))
        phase, cycles = rng.uniform(0, 2 * math.pi), rng.uniform(0.5, 2.0)
        radii = pen / 2 * (1 + pressure * np.sin(2 * math.pi * cycles * s + phase))
        if rng.random() < 0.4:  # the pen lands and lifts: thinner ends
            radii = radii * np.clip(0.55 + 0.45 * np.minimum(s, 1 - s) / 0.12, 0.55, 1.0)
        _disc_stroke(draw, xy, np.maximum(radii - 0.5, 0.5))
    im = im.reduce(2)
    return _crop_glyph(np.asarray(im, np.float32) / 255.0), variant
