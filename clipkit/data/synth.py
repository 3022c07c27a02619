"""The synthetic world the shipped models are trained on: coloured shapes and digits.

Every sample is rendered from `(seed, split, index)` alone, so the stream is random-access,
the same on every run and safe to split across DataLoader workers or ranks. A sample
carries its image, a caption drawn from a small grammar, and its attributes as data.

Scenes (the `kind` attribute):

- `shape`: one coloured shape with a size (small/large) and a position (left, right, top,
  bottom, centre) on a neutral background: "a photo of a red circle.", "a small blue
  square on the left".
- `count`: one to four copies of the same coloured shape: "three red circles".
- `relation`: two different objects, one left of / right of / above / below the other:
  "a red circle left of a blue square", or the same scene said the other way round.
- `digit`: 0-9 from several typefaces and from procedural pen strokes, warped by a random
  affine map and an elastic field (Simard et al. 2003), thickened, blurred; half of them
  white on black and centred like MNIST (half of those drawn at MNIST's 28 pixels and
  upsampled bicubically, as a classifier sees an MNIST digit), the rest dark on light or
  coloured. That is the "classic" digit style, the shipped model's; `digit_style="robust"`
  draws most digits with real digits' variation instead (`clipkit.data.digit_styles`).

`sample(index, swap=...)` / `sample(index, recount=...)` draw a relation or count scene
with one fact changed and every other draw the same: the hard negatives of
`clipkit.data.negatives`.

The captions are the only supervision CLIP gets (Radford et al. 2021), so they are
written to make zero-shot evaluation in-distribution: the exact evaluation prompts
(`a photo of the number: "7".`, `a photo of a red star.`) are among the templates, and
synonyms ("violet", "disc", "seven") make the text tower generalise over wording.

Held-out combinations: `HELDOUT_PAIRS` are nine (colour, shape) pairs, one per colour and
one per shape, that the `train` and `val` splits never render, in any scene; the
`heldout` split renders only them. Zero-shot accuracy on them measures generalisation to
unseen attribute combinations.

Fonts are found once, in the process that builds the `SynthWorld` (matplotlib's bundled
DejaVu, STIX and Computer Modern, plus anything under /usr/share/fonts), and kept as a
list of paths: workers load them lazily from that list, so every process draws from the
same typefaces. With no usable font file, Pillow's built-in font stands in.

    world = SynthWorld(seed=0, image_size=64)
    s = world.sample(12345)            # Sample(image=<PIL RGB 64x64>, caption=..., attrs={...})
    data = SynthDataset(world, transform=to_tensor)   # map-style, DataLoader-ready
"""
from __future__ import annotations

import functools
import math
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterator, Sequence

import numpy as np
from PIL import Image, ImageDraw, ImageFilter, ImageFont

# ---------------------------------------------------------------------------
# Vocabulary
# ---------------------------------------------------------------------------

# Canonical colour names and their base RGB. Chosen to stay distinct after jitter at
# 64x64; neutral tones are left to the backgrounds (and "black" to digits).
COLOURS: dict[str, tuple[int, int, int]] = {
    "red": (215, 30, 35),
    "orange": (250, 135, 10),
    "yellow": (245, 225, 35),
    "green": (35, 165, 55),
    "cyan": (20, 205, 225),
    "blue": (35, 75, 230),
    "purple": (135, 45, 190),
    "pink": (250, 120, 190),
    "white": (245, 245, 245),
}

SHAPES: tuple[str, ...] = ("circle", "square", "triangle", "diamond", "pentagon", "hexagon",
                           "star", "heart", "cross")

# Unseen during training: a Latin square, each colour once and each shape once.
HELDOUT_PAIRS: tuple[tuple[str, str], ...] = (
    ("red", "star"),
    ("orange", "circle"),
    ("yellow", "cross"),
    ("green", "triangle"),
    ("cyan", "square"),
    ("blue", "hexagon"),
    ("purple", "diamond"),
    ("pink", "pentagon"),
    ("white", "heart"),
)

# Surface forms. The first entry is the canonical one; the others are paraphrases the
# captions use now and then. Tests read these tables to check captions against attrs.
COLOUR_WORDS: dict[str, tuple[str, ...]] = {
    "red": ("red", "scarlet"),
    "orange": ("orange",),
    "yellow": ("yellow",),
    "green": ("green",),
    "cyan": ("cyan", "turquoise"),
    "blue": ("blue",),
    "purple": ("purple", "violet"),
    "pink": ("pink",),
    "white": ("white",),
    "black": ("black",),  # digits only
}
SHAPE_WORDS: dict[str, tuple[str, ...]] = {
    "circle": ("circle", "disc"),
    "square": ("square",),
    "triangle": ("triangle",),
    "diamond": ("diamond", "rhombus"),
    "pentagon": ("pentagon",),
    "hexagon": ("hexagon",),
    "star": ("star",),
    "heart": ("heart",),
    "cross": ("cross", "plus sign"),
}
SHAPE_PLURALS: dict[str, str] = {
    "circle": "circles", "disc": "discs", "square": "squares", "triangle": "triangles",
    "diamond": "diamonds", "rhombus": "rhombuses", "pentagon": "pentagons",
    "hexagon": "hexagons", "star": "stars", "heart": "hearts", "cross": "crosses",
    "plus sign": "plus signs",
}
SIZE_WORDS: dict[str, tuple[str, ...]] = {"small": ("small", "little"), "large": ("large", "big")}
POSITION_WORDS: dict[str, tuple[str, ...]] = {
    "left": ("on the left", "at the left"),
    "right": ("on the right", "at the right"),
    "top": ("at the top", "near the top"),
    "bottom": ("at the bottom", "near the bottom"),
    "centre": ("in the centre", "in the middle"),
}
RELATIONS: tuple[str, ...] = ("left of", "right of", "above", "below")
INVERSE_RELATION = {"left of": "right of", "right of": "left of", "above": "below", "below": "above"}
RELATION_WORDS: dict[str, tuple[str, ...]] = {
    "left of": ("left of", "to the left of", "on the left of"),
    "right of": ("right of", "to the right of", "on the right of"),
    "above": ("above", "over"),
    "below": ("below", "under", "beneath"),
}
NUMBER_WORDS: tuple[str, ...] = ("zero", "one", "two", "three", "four", "five", "six", "seven",
                                 "eight", "nine")
DIGIT_CLASSNAMES: tuple[str, ...] = tuple(str(d) for d in range(10))
COUNT_CLASSNAMES: tuple[str, ...] = ("one", "two", "three", "four")

# Prompt templates, "{}" taking a class name. They are caption templates too, so a
# zero-shot head built from them asks in the words the model was trained on.
SHAPE_TEMPLATES: tuple[str, ...] = (
    "a photo of a {}.",
    "a {}.",
    "a {}",
    "{}",
    "an image of a {}.",
    "a picture of a {}.",
    "a drawing of a {}.",
    "a rendering of a {}.",
    "a {} on a plain background.",
    "a simple {}.",
    "there is a {}.",
    "a photo of the {}.",
)
DIGIT_TEMPLATES: tuple[str, ...] = (
    'a photo of the number: "{}".',  # the MNIST prompt of the CLIP paper
    "a photo of the number {}.",
    "a photo of the digit {}.",
    "the number {}",
    "the number {}.",
    "the digit {}",
    "number {}",
    "digit {}",
    "{}",
    "an image of the number {}.",
    "a picture of the digit {}.",
    "a drawing of the number {}.",
)
HAND_TEMPLATES: tuple[str, ...] = (
    "a handwritten {}",
    "a handwritten {}.",
    "a handwritten digit {}.",
    "a handwritten number {}",
    "a photo of a handwritten {}.",
)
PRINT_TEMPLATES: tuple[str, ...] = ("a printed {}", "a printed digit {}.", "the typed number {}")
COUNT_TEMPLATES: tuple[str, ...] = (
    "{}",
    "a photo of {}.",
    "there are {}.",
    "an image of {}.",
    "a picture with {}.",
)

SPLITS = {"train": 0, "val": 1, "heldout": 2}
MNIST_SIDE = 28  # MNIST's image side in pixels
DEFAULT_MIX: dict[str, float] = {"shape": 0.25, "count": 0.15, "relation": 0.15, "digit": 0.45}
# How digits are drawn: "classic" is the shipped model's world (renders are byte-identical
# to it); "robust" draws most digits with real digits' variation (`digit_styles`).
DIGIT_STYLES: tuple[str, ...] = ("classic", "robust")


def check_mix(mix: dict[str, float]) -> dict[str, float]:
    """A copy of `mix` (scene kind -> relative weight); ValueError names any unknown kind."""
    unknown = set(mix) - set(DEFAULT_MIX)
    if unknown:
        raise ValueError(f"unknown scene kinds {sorted(unknown)} in mix; expected {sorted(DEFAULT_MIX)}")
    return dict(mix)


def parse_mix(text: str) -> dict[str, float]:
    """"shape=0.4, digit=0.3" -> {"shape": 0.4, "digit": 0.3} (unnamed kinds get weight 0),
    checked by `check_mix`; ValueError for anything else."""
    mix = {}
    for part in text.split(","):
        name, sep, value = part.partition("=")
        try:
            if not sep:
                raise ValueError
            mix[name.strip()] = float(value)
        except ValueError:
            raise ValueError(f"expected KIND=WEIGHT[,KIND=WEIGHT...] (e.g. relation=0.25), got {text!r}") from None
    return check_mix(mix)


def classnames_colour_shape(pairs: Sequence[tuple[str, str]] | None = None) -> list[str]:
    """'red circle', 'red square', ... over every colour x shape (or the given pairs)."""
    pairs = all_pairs() if pairs is None else pairs
    return [f"{c} {s}" for c, s in pairs]


def all_pairs() -> list[tuple[str, str]]:
    return [(c, s) for c in COLOURS for s in SHAPES]


def train_pairs() -> list[tuple[str, str]]:
    """Every (colour, shape) pair the train and val splits may render."""
    held = set(HELDOUT_PAIRS)
    return [p for p in all_pairs() if p not in held]


def _plural(shape_word: str) -> str:
    return SHAPE_PLURALS[shape_word]


def _article(word: str) -> str:
    return "an" if word[0] in "aeiou" else "a"


# ---------------------------------------------------------------------------
# Fonts: found once per SynthWorld, loaded lazily per process
# ---------------------------------------------------------------------------

PILLOW_DEFAULT_FONT = "<pillow-default>"
HAND = "hand"  # the procedural pen-stroke "typeface"

# Symbol, math-extension and fallback fonts whose digit code points are not digits.
_FONT_DENYLIST = re.compile(r"(cmex|cmsy|cmmi|stixsiz|stixnonuni|lastresort|symbol|dingbat|"
                            r"emoji|wingding|webdings|math|icon|awesome|opensymbol|d050000l)",
                            re.IGNORECASE)


def font_dirs() -> list[str]:
    """Where fonts are looked for: matplotlib's bundled TTFs (a dependency, so always
    there) first, then the system font folders."""
    dirs = []
    try:
        import matplotlib

        dirs.append(os.path.join(os.path.dirname(matplotlib.__file__), "mpl-data", "fonts", "ttf"))
    except ImportError:
        pass
    dirs += ["/usr/share/fonts", "/usr/local/share/fonts", os.path.expanduser("~/.fonts")]
    return dirs


def discover_fonts(dirs: Sequence[str] | None = None) -> list[tuple[str, str]]:
    """(path, family) of every TTF/OTF under `dirs` whose digits render as digits.

    Files are deduplicated by name (matplotlib and the system both ship DejaVu) and
    returned sorted by name, so the list does not depend on the order of the scan.
    """
    return list(_discover_fonts(tuple(font_dirs() if dirs is None else dirs)))


@functools.lru_cache(maxsize=8)
def _discover_fonts(dirs: tuple[str, ...]) -> tuple[tuple[str, str], ...]:
    by_name: dict[str, str] = {}
    for d in dirs:
        if not os.path.isdir(d):
            continue
        for path in sorted(Path(d).rglob("*")):
            name = path.name.lower()
            if path.suffix.lower() in (".ttf", ".otf") and name not in by_name \
                    and not _FONT_DENYLIST.search(name):
                by_name[name] = str(path)
    found = []
    for name in sorted(by_name):
        path = by_name[name]
        try:
            font = ImageFont.truetype(path, 32)
        except OSError:
            continue
        if _renders_digits(font):
            family = font.getname()[0] or Path(path).stem
            if not _FONT_DENYLIST.search(family):
                found.append((path, family))
    return tuple(found)


def _renders_digits(font) -> bool:
    """True when 0-9 look like lining digits: all drawn, all different, heights alike,
    '1' no wider than '0', and '0' hollow. Rejects symbol fonts and fallback boxes."""
    masks = []
    for d in DIGIT_CLASSNAMES:
        im = Image.new("L", (64, 64), 0)
        ImageDraw.Draw(im).text((8, 8), d, fill=255, font=font)
        a = np.asarray(im) > 127
        if not a.any():
            return False
        ys, xs = np.nonzero(a)
        masks.append((a[ys.min():ys.max() + 1, xs.min():xs.max() + 1], np.ptp(ys) + 1, np.ptp(xs) + 1))
    shapes = [m[0].tobytes() + bytes(m[0].shape) for m in masks]
    if len(set(shapes)) < 10:
        return False
    heights = np.array([m[1] for m in masks], float)
    if heights.min() < 0.75 * np.median(heights) or heights.max() > 1.25 * np.median(heights):
        return False
    if masks[1][2] > masks[0][2]:
        return False
    middle = masks[0][0][masks[0][0].shape[0] // 2].astype(np.int8)  # the middle row of '0'
    return int((np.diff(middle) == 1).sum()) + int(middle[0]) >= 2  # crosses two walls: hollow


@functools.lru_cache(maxsize=512)
def _load_font(path: str, size: int):
    if path == PILLOW_DEFAULT_FONT:
        return ImageFont.load_default(size=size)
    return ImageFont.truetype(path, size)


# ---------------------------------------------------------------------------
# Geometry: the shapes as polygons in a unit box
# ---------------------------------------------------------------------------


@functools.lru_cache(maxsize=None)
def _unit_polygon(shape: str) -> np.ndarray:
    """Vertices (K, 2), x right, y down, centred, largest bbox side 1. None for circle."""
    def regular(n, start=-math.pi / 2):
        t = start + 2 * math.pi * np.arange(n) / n
        return np.stack([np.cos(t), np.sin(t)], 1)

    if shape == "square":
        v = np.array([[-1, -1], [1, -1], [1, 1], [-1, 1]], float)
    elif shape == "triangle":
        v = regular(3)
    elif shape == "diamond":
        v = np.array([[0, -1], [0.68, 0], [0, 1], [-0.68, 0]], float)
    elif shape == "pentagon":
        v = regular(5)
    elif shape == "hexagon":
        v = regular(6, start=0.0)  # flat top and bottom: unlike the pointy pentagon
    elif shape == "star":
        outer, inner = regular(5), 0.42 * regular(5, start=-math.pi / 2 + math.pi / 5)
        v = np.stack([outer, inner], 1).reshape(10, 2)  # alternate tips and notches
    elif shape == "heart":
        t = np.linspace(0, 2 * math.pi, 48, endpoint=False)
        v = np.stack([16 * np.sin(t) ** 3,
                      -(13 * np.cos(t) - 5 * np.cos(2 * t) - 2 * np.cos(3 * t) - np.cos(4 * t))], 1)
    elif shape == "cross":
        a = 0.34  # half the arm width
        v = np.array([[-a, -1], [a, -1], [a, -a], [1, -a], [1, a], [a, a], [a, 1], [-a, 1],
                      [-a, a], [-1, a], [-1, -a], [-a, -a]], float)
    else:
        raise ValueError(f"unknown shape {shape!r}; expected one of {SHAPES}")
    lo, hi = v.min(0), v.max(0)
    v = (v - (lo + hi) / 2) / (hi - lo).max()
    return v


def _draw_shape(draw: ImageDraw.ImageDraw, shape: str, cx: float, cy: float, extent: float,
                rotation: float, fill: tuple[int, int, int]) -> None:
    """Shape centred at (cx, cy) px, largest side `extent` px, rotated `rotation` radians."""
    if shape == "circle":
        r = extent / 2
        draw.ellipse([cx - r, cy - r, cx + r, cy + r], fill=fill)
        return
    v = _unit_polygon(shape) * extent
    c, s = math.cos(rotation), math.sin(rotation)
    v = v @ np.array([[c, s], [-s, c]])
    draw.polygon([(cx + x, cy + y) for x, y in v], fill=fill)


# ---------------------------------------------------------------------------
# Warping: affine + elastic displacement, bilinear sampling (numpy)
# ---------------------------------------------------------------------------


@functools.lru_cache(maxsize=16)
def _smoothing_basis(n: int, knots: int = 6) -> np.ndarray:
    """(n, knots) Gaussian RBF weights: noise on a knots x knots grid times this on both
    sides is a smooth random field, the Gaussian-filtered noise of Simard et al. (2003)
    at a fraction of the cost."""
    centres = np.linspace(-0.1, 1.1, knots) * n
    sigma = (centres[1] - centres[0]) * 0.8
    x = np.arange(n) + 0.5
    w = np.exp(-0.5 * ((x[:, None] - centres[None]) / sigma) ** 2)
    return (w / w.sum(1, keepdims=True)).astype(np.float32)


def _elastic_field(rng: np.random.Generator, n: int, rms: float) -> tuple[np.ndarray, np.ndarray]:
    """Two (n, n) displacement fields with root-mean-square `rms` pixels."""
    basis = _smoothing_basis(n)
    k = basis.shape[1]
    noise = rng.standard_normal((2, k, k)).astype(np.float32)
    dx, dy = basis @ noise[0] @ basis.T, basis @ noise[1] @ basis.T  # (n, n) each
    scale = rms / max(float(np.sqrt((dx * dx + dy * dy).mean() / 2)), 1e-6)
    return dx * scale, dy * scale


def _bilinear(img: np.ndarray, x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """img (H, W) sampled at pixel coordinates (x, y) (pixel centres at .5), zero outside."""
    h, w = img.shape
    pad = np.zeros((h + 3, w + 3), np.float32)  # one zero row/column before, two after
    pad[1:h + 1, 1:w + 1] = img
    x = np.clip(x + 0.5, 0.0, w + 1.0)  # index space of `pad`: centres at integers
    y = np.clip(y + 0.5, 0.0, h + 1.0)
    x0 = x.astype(np.int32)
    y0 = y.astype(np.int32)
    fx, fy = x - x0, y - y0
    flat = pad.ravel()
    i00 = y0 * (w + 3) + x0
    a, b = flat[i00], flat[i00 + 1]
    c, d = flat[i00 + w + 3], flat[i00 + w + 4]
    top = a + (b - a) * fx
    bottom = c + (d - c) * fx
    return top + (bottom - top) * fy


def _warp(mask: np.ndarray, anchor: tuple[float, float], n: int, centre: tuple[float, float],
          scale: float, rotation: float = 0.0, shear: float = 0.0, aspect: float = 1.0,
          elastic: tuple[np.ndarray, np.ndarray] | None = None) -> np.ndarray:
    """Render `mask` into an (n, n) image: its `anchor` lands on `centre` (output px), its
    pixels shrink by `scale` (mask px per output px), then rotation, shear, aspect and an
    elastic field displace it. Inverse mapping: for each output pixel, where to read."""
    c, s = math.cos(rotation), math.sin(rotation)
    forward = np.array([[c, -s], [s, c]]) @ np.array([[1.0, shear], [0.0, 1.0]]) @ np.diag([aspect, 1.0])
    inv = np.linalg.inv(forward) * scale  # output px -> mask px
    grid = np.arange(n, dtype=np.float32) + 0.5
    u = grid[None, :] - centre[0]  # (1, n)
    v = grid[:, None] - centre[1]  # (n, 1)
    if elastic is not None:
        u = u + elastic[0]
        v = v + elastic[1]
    sx = inv[0, 0] * u + inv[0, 1] * v + anchor[0]  # (n, n)
    sy = inv[1, 0] * u + inv[1, 1] * v + anchor[1]
    return _bilinear(mask, sx.astype(np.float32), sy.astype(np.float32))


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


def _pen_glyph(rng: np.random.Generator, digit: int, n: int, width: float) -> tuple[_Glyph, int]:
    """A jittered pen-stroke digit, drawn at 2x and reduced (antialiasing). `width` is the
    pen width as a fraction of the digit height. Returns the glyph and its variant."""
    variants = _PEN_DIGITS[digit]
    variant = int(rng.integers(len(variants)))
    height = 0.7 * n * 2  # drawn at 2x
    box_w = height * rng.uniform(0.55, 0.78)
    pad = n * 0.3
    size = int(2 * n)
    im = Image.new("L", (size, size), 0)
    draw = ImageDraw.Draw(im)
    pen = max(2, int(round(width * height)))
    for smooth, pts in variants[variant]:
        # Jitter each control point; less where there are many, or a round '0' turns polygonal.
        p = np.asarray(pts, float) + rng.normal(0, 0.035 if len(pts) <= 6 else 0.022, (len(pts), 2))
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


# ---------------------------------------------------------------------------
# Samples and the world
# ---------------------------------------------------------------------------


@dataclass
class Sample:
    """One rendered scene: a PIL RGB image, its caption, and what is in it."""

    image: Image.Image
    caption: str
    attrs: dict = field(default_factory=dict)


# Background tones by class; light backgrounds are kept away from light objects.
_BACKGROUNDS = {"dark": (0, 45), "gray": (100, 145), "light": (205, 255)}
_BG_ALLOWED = {"white": ("dark", "gray"), "yellow": ("dark", "gray"), "cyan": ("dark", "gray")}
_BG_NAMES = {"dark": "black", "gray": "gray", "light": "white"}


class SynthWorld:
    """The synthetic world: `sample(i)` renders sample i of a split, deterministically.

    seed: any non-negative int; different seeds give independent worlds.
    image_size: output side in pixels (square RGB images).
    split: "train" and "val" draw the same distribution from disjoint seed spaces and
        never render a held-out pair; "heldout" renders only `HELDOUT_PAIRS` (shape,
        count and relation scenes; no digits).
    mix: relative weights of the scene kinds (shape, count, relation, digit).
    fonts: font files for digits; None finds them (see `discover_fonts`); "bundled" uses
        only matplotlib's, so that a seed renders the same on every machine. An empty
        list, or no usable file found, falls back to Pillow's built-in font.
    hand_share: fraction of digits drawn with procedural pen strokes instead of a font.
    mnist_share: fraction of digits rendered MNIST-style (white on black, centred).
    digit_style: "classic" (the shipped model's world) or "robust": `digit_styles.ROBUST_SHARE`
        of the digits drawn at any scale, place, polarity, stroke width, resolution, ...
        (see `clipkit.data.digit_styles`), the rest as "classic" draws them.
    """

    def __init__(self, seed: int = 0, image_size: int = 64, split: str = "train",
                 mix: dict[str, float] | None = None, fonts: Sequence[str] | str | None = None,
                 hand_share: float = 0.45, mnist_share: float = 0.5, digit_style: str = "classic"):
        if split not in SPLITS:
            raise ValueError(f"unknown split {split!r}; expected one of {sorted(SPLITS)}")
        if digit_style not in DIGIT_STYLES:
            raise ValueError(f"unknown digit_style {digit_style!r}; expected one of {DIGIT_STYLES}")
        self.digit_style = digit_style
        if image_size < 16:
            raise ValueError(f"image_size {image_size} is too small to draw on; use 16 or more")
        self.seed, self.image_size, self.split = int(seed), int(image_size), split
        mix = check_mix(DEFAULT_MIX if mix is None else mix)
        if split == "heldout":
            mix.pop("digit", None)  # held-out pairs are about shapes
        self.kinds = tuple(k for k in DEFAULT_MIX if mix.get(k, 0) > 0)
        if not self.kinds:
            raise ValueError(f"mix {mix} leaves no scene kind with a positive weight")
        w = np.array([mix[k] for k in self.kinds], float)
        self.kind_cdf = tuple(np.cumsum(w / w.sum()))
        if fonts is None:
            found = discover_fonts()
        elif isinstance(fonts, str) and fonts == "bundled":  # the same on every machine
            found = discover_fonts(font_dirs()[:1])
        else:
            found = [(str(p), _family_of(str(p))) for p in fonts]
        if not found:
            found = [(PILLOW_DEFAULT_FONT, "Pillow default")]
        self.fonts: tuple[tuple[str, str], ...] = tuple(found)  # (path, family), plain data
        families = sorted({f for _, f in self.fonts})
        self.font_families: tuple[tuple[str, tuple[str, ...]], ...] = tuple(
            (fam, tuple(p for p, f in self.fonts if f == fam)) for fam in families)
        self.hand_share, self.mnist_share = float(hand_share), float(mnist_share)
        self.pairs = tuple(HELDOUT_PAIRS) if split == "heldout" else tuple(train_pairs())

    def __repr__(self) -> str:
        return (f"SynthWorld(seed={self.seed}, image_size={self.image_size}, split={self.split!r}, "
                f"kinds={self.kinds}, fonts={len(self.fonts)} files in {len(self.font_families)} families)")

    # -- randomness -------------------------------------------------------------

    def rng(self, index: int, stream: int = 0) -> np.random.Generator:
        """The generator of sample `index`: a function of (seed, split, stream, index) only."""
        if index < 0:
            raise IndexError(f"sample index must be non-negative, got {index}")
        return np.random.Generator(np.random.PCG64([self.seed, SPLITS[self.split], stream, int(index)]))

    # -- public sampling ---------------------------------------------------------

    def sample(self, index: int, **change) -> Sample:
        """Sample `index` of this world's stream; the same every time.

        `change` draws the same scene with one drawn fact replaced, every other draw the
        same (the hard negatives of `clipkit.data.negatives`): swap="relation" or
        swap="attributes" for a relation scene, recount=k for a count scene."""
        rng = self.rng(index)
        k = int(np.searchsorted(self.kind_cdf, rng.random(), side="right"))
        kind = self.kinds[min(k, len(self.kinds) - 1)]
        sample = self.render(kind, rng, **change)
        sample.attrs["index"] = int(index)
        return sample

    def iter_samples(self, start: int = 0) -> Iterator[Sample]:
        """sample(start), sample(start + 1), ... without end."""
        i = start
        while True:
            yield self.sample(i)
            i += 1

    def render(self, kind: str, rng: np.random.Generator, **fixed) -> Sample:
        """A scene of `kind` drawn with `rng`; `fixed` pins attributes (pair=(colour, shape),
        count=, relation=, digit=, style= ("mnist", "inverted", "colour", "robust")) for
        evaluation sets."""
        if kind == "shape":
            return self._shape_scene(rng, **fixed)
        if kind == "count":
            return self._count_scene(rng, **fixed)
        if kind == "relation":
            return self._relation_scene(rng, **fixed)
        if kind == "digit":
            return self._digit_scene(rng, **fixed)
        raise ValueError(f"unknown scene kind {kind!r}; expected one of {tuple(DEFAULT_MIX)}")

    # -- shared pieces -------------------------------------------------------------

    def _pair(self, rng, exclude: tuple[str, str] | None = None) -> tuple[str, str]:
        while True:
            pair = self.pairs[int(rng.integers(len(self.pairs)))]
            if pair != exclude:
                return pair

    @staticmethod
    def _jitter_colour(rng, name: str) -> tuple[int, int, int]:
        base = np.array(COLOURS[name], float) if name in COLOURS else np.zeros(3)
        if name == "white":
            rgb = np.full(3, rng.uniform(215, 255)) + rng.uniform(-8, 8, 3)
        elif name == "black":
            rgb = np.full(3, rng.uniform(0, 40)) + rng.uniform(-5, 5, 3)
        else:
            rgb = base * rng.uniform(0.9, 1.04) + rng.uniform(-12, 12, 3)
        return tuple(int(v) for v in np.clip(rgb, 0, 255))

    @staticmethod
    def _background(rng, colours: Sequence[str]) -> tuple[str, tuple[int, int, int]]:
        allowed = set(_BACKGROUNDS)
        for c in colours:
            allowed &= set(_BG_ALLOWED.get(c, _BACKGROUNDS))
        options = sorted(allowed)
        tone = options[int(rng.integers(len(options)))]
        lo, hi = _BACKGROUNDS[tone]
        level = rng.uniform(lo, hi)
        rgb = np.clip(level + rng.uniform(-10, 10, 3), 0, 255)
        return tone, tuple(int(v) for v in rgb)

    def _finish(self, rng, canvas: Image.Image, noise_max: float = 7.0) -> Image.Image:
        """Downsample the 2x canvas (antialiasing) and add a little sensor noise."""
        im = canvas.reduce(2) if canvas.width != self.image_size else canvas
        if noise_max > 0 and rng.random() < 0.6:
            im = _add_noise(rng, im, rng.uniform(1, noise_max))
        return im

    def _canvas(self, bg: tuple[int, int, int]) -> tuple[Image.Image, ImageDraw.ImageDraw]:
        canvas = Image.new("RGB", (2 * self.image_size, 2 * self.image_size), bg)
        return canvas, ImageDraw.Draw(canvas)

    @staticmethod
    def _rotation(rng, shape: str) -> float:
        # Small tilts only: a square turned 45 degrees is a diamond, a cross becomes an x.
        return 0.0 if shape == "circle" else float(rng.uniform(-0.26, 0.26))

    def _draw_objects(self, rng, objects: list[dict], bg_rgb) -> Image.Image:
        canvas, draw = self._canvas(bg_rgb)
        s = 2 * self.image_size
        for o in objects:
            _draw_shape(draw, o["shape"], o["center"][0] * s, o["center"][1] * s, o["extent"] * s,
                        o["rotation"], o["rgb"])
        return self._finish(rng, canvas)

    def _object(self, rng, pair, extent, center, size=None) -> dict:
        colour, shape = pair
        o = {"colour": colour, "shape": shape, "extent": float(extent),
             "center": (float(center[0]), float(center[1])), "rotation": self._rotation(rng, shape),
             "rgb": self._jitter_colour(rng, colour)}
        if size is not None:
            o["size"] = size
        return o

    # -- scenes ------------------------------------------------------------------

    def _shape_scene(self, rng, pair=None, size=None, position=None) -> Sample:
        colour, shape = pair if pair is not None else self._pair(rng)
        size = size or ("small", "large")[int(rng.integers(2))]
        position = position or tuple(POSITION_WORDS)[int(rng.integers(len(POSITION_WORDS)))]
        extent = rng.uniform(0.42, 0.58) if size == "large" else rng.uniform(0.22, 0.3)
        if position == "centre":
            cx, cy = 0.5 + rng.uniform(-0.04, 0.04, 2)
        else:
            along = 0.5 - extent / 2 - rng.uniform(0.02, 0.06)  # distance from the centre
            across = rng.uniform(-0.05, 0.05)
            cx, cy = {"left": (0.5 - along, 0.5 + across), "right": (0.5 + along, 0.5 + across),
                      "top": (0.5 + across, 0.5 - along), "bottom": (0.5 + across, 0.5 + along)}[position]
        obj = self._object(rng, (colour, shape), extent, (cx, cy), size)
        tone, bg = self._background(rng, [colour])
        image = self._draw_objects(rng, [obj], bg)
        attrs = {"kind": "shape", "colour": colour, "shape": shape, "size": size, "position": position,
                 "objects": [obj], "background": _BG_NAMES[tone]}
        return Sample(image, _shape_caption(rng, colour, shape, size, position), attrs)

    def _count_scene(self, rng, pair=None, count=None, recount=None) -> Sample:
        colour, shape = pair if pair is not None else self._pair(rng)
        count = int(count or rng.integers(1, 5))
        if recount is not None:  # a hard negative: drawn like the sample, with another count
            count = int(recount)
        extent = rng.uniform(0.17, 0.27)
        centers = _place(rng, count, extent)
        while centers is None:  # too crowded: shrink and retry
            extent *= 0.9
            centers = _place(rng, count, extent)
        objects = [self._object(rng, (colour, shape), extent * rng.uniform(0.95, 1.05), c) for c in centers]
        tone, bg = self._background(rng, [colour])
        image = self._draw_objects(rng, objects, bg)
        attrs = {"kind": "count", "colour": colour, "shape": shape, "count": count,
                 "objects": objects, "background": _BG_NAMES[tone]}
        return Sample(image, _count_caption(rng, colour, shape, count), attrs)

    def _relation_scene(self, rng, pairs=None, relation=None, swap=None) -> Sample:
        if pairs is None:
            a = self._pair(rng)
            pairs = (a, self._pair(rng, exclude=a))
        relation = relation or RELATIONS[int(rng.integers(4))]
        # A hard negative: the scene drawn like the sample, with the two objects' places
        # exchanged (the inverse relation) or their colours exchanged.
        if swap == "relation":
            relation = INVERSE_RELATION[relation]
        elif swap == "attributes":
            pairs = ((pairs[1][0], pairs[0][1]), (pairs[0][0], pairs[1][1]))
        elif swap is not None:
            raise ValueError(f"swap must be 'relation' or 'attributes', got {swap!r}")
        ea, eb = rng.uniform(0.22, 0.34, 2)
        # Along the relation's axis the two sit apart; across it they differ by less than
        # half that gap, so "left of" is never also plausibly "above".
        gap = (ea + eb) / 2 + rng.uniform(0.06, 0.16)
        lo = max(ea, eb) / 2 + 0.03
        first = rng.uniform(lo, 1 - lo - gap)
        second = first + gap
        mid = rng.uniform(0.5 - 0.12, 0.5 + 0.12)
        offset = rng.uniform(-0.4, 0.4) * gap / 2
        if relation in ("left of", "above"):
            pa, pb = (first, mid - offset), (second, mid + offset)
        else:
            pa, pb = (second, mid - offset), (first, mid + offset)
        if relation in ("above", "below"):  # swap axes: the relation runs along y
            pa, pb = pa[::-1], pb[::-1]
        objects = [self._object(rng, pairs[0], ea, pa), self._object(rng, pairs[1], eb, pb)]
        tone, bg = self._background(rng, [pairs[0][0], pairs[1][0]])
        image = self._draw_objects(rng, objects, bg)
        attrs = {"kind": "relation", "relation": relation, "colours": [p[0] for p in pairs],
                 "shapes": [p[1] for p in pairs], "objects": objects, "background": _BG_NAMES[tone]}
        return Sample(image, _relation_caption(rng, pairs[0], relation, pairs[1]), attrs)

    def _digit_scene(self, rng, digit=None, style=None) -> Sample:
        # A classic world draws nothing here, so its renders stay those of the shipped model.
        if style == "robust" or (style is None and self.digit_style == "robust"
                                 and rng.random() < _robust_share()):
            from clipkit.data.digit_styles import robust_digit_scene

            return robust_digit_scene(self, rng, digit)
        n = self.image_size
        digit = int(rng.integers(10)) if digit is None else int(digit)
        if style is None:
            r = rng.random()
            style = "mnist" if r < self.mnist_share else ("inverted" if r < self.mnist_share + 0.2 else "colour")
        # The glyph: pen strokes or a font (family first, so DejaVu's many files do not
        # outweigh a typeface with one).
        if rng.random() < self.hand_share:
            font = HAND
            glyph, variant = _pen_glyph(rng, digit, n, rng.uniform(0.10, 0.19))
        else:
            _, files = self.font_families[int(rng.integers(len(self.font_families)))]
            path = files[int(rng.integers(len(files)))]
            font = Path(path).stem if path != PILLOW_DEFAULT_FONT else PILLOW_DEFAULT_FONT
            # Pen width as a fraction of the digit height, like the pen strokes: Pillow's
            # stroke widens a light face, a bold face is left as it is.
            base = _font_glyph(path, digit, 0, n)
            target = rng.uniform(0.10, 0.19) * base.height
            stroke = int(np.clip(round((target - _font_weight(path, n)) / 2), 0, max(1, n // 16)))
            glyph, variant = _font_glyph(path, digit, stroke, n), None
        # Where and how big: MNIST puts the centre of mass of a digit about 20 pixels high
        # (0.7) in the middle of 28 pixels.
        if style == "mnist":
            height = rng.uniform(0.58, 0.78) * n
            anchor, centre = glyph.mass_centre, tuple(n / 2 + rng.normal(0, 0.015 * n, 2))
        else:
            height = rng.uniform(0.4, 0.8) * n
            room = (n - height) / 2 * 0.8
            anchor, centre = glyph.anchor, tuple(n / 2 + rng.uniform(-room, room, 2))
        elastic = _elastic_field(rng, n, rng.uniform(0.0, 0.05) * n) if rng.random() < 0.85 else None
        # Shear < 0 leans the top right, the usual handwritten slant.
        shape = dict(rotation=rng.normal(0, 0.12), shear=float(np.clip(rng.normal(-0.1, 0.18), -0.5, 0.3)),
                     aspect=rng.uniform(0.8, 1.15))
        alpha = _warp(glyph.mask, anchor, n, centre, glyph.height / height, elastic=elastic, **shape)
        # Keep the whole digit in the frame (MNIST leaves a margin): measure this rendering;
        # if it spills over, draw it again scaled down and moved in.
        margin = (0.1 if style == "mnist" else 0.03) * n  # MNIST: 4 of 28 pixels
        cols, rows = np.flatnonzero(alpha.max(0) > 0.1), np.flatnonzero(alpha.max(1) > 0.1)
        if len(cols):
            lo = np.array([cols[0], rows[0]], float)
            hi = np.array([cols[-1] + 1, rows[-1] + 1], float)
            if lo.min() < margin or hi.max() > n - margin:
                fit = min(1.0, *((n - 2 * margin) / (hi - lo)))
                c = np.asarray(centre)
                lo, hi = c + fit * (lo - c), c + fit * (hi - c)  # the box once scaled about centre
                shift = np.maximum(0, margin - lo) - np.maximum(0, hi - (n - margin))
                centre = tuple(c + shift)
                if elastic is not None:
                    elastic = (elastic[0] * fit, elastic[1] * fit)
                alpha = _warp(glyph.mask, anchor, n, centre, glyph.height / (height * fit),
                              elastic=elastic, **shape)
        alpha_im = Image.fromarray((np.clip(alpha, 0, 1) * 255 + 0.5).astype(np.uint8), "L")
        if rng.random() < 0.15:  # a thicker pen
            alpha_im = alpha_im.filter(ImageFilter.MaxFilter(3))
        blur = rng.uniform(0.0, 1.2) if style == "mnist" else rng.uniform(0.0, 0.8)
        if blur > 0.3:
            alpha_im = alpha_im.filter(ImageFilter.GaussianBlur(blur))
        # Colours.
        if style == "mnist":
            fg_name, bg_tone = "white", "dark"
            fg = (int(rng.uniform(225, 255)),) * 3
            bg = (0, 0, 0) if rng.random() < 0.7 else (int(rng.uniform(0, 25)),) * 3
        elif style == "inverted":
            fg_name, bg_tone = "black", "light"
            fg = self._jitter_colour(rng, "black")
            bg = tuple(int(v) for v in np.clip(rng.uniform(215, 255) + rng.uniform(-6, 6, 3), 0, 255))
        else:
            fg_name = tuple(COLOURS)[int(rng.integers(len(COLOURS)))]
            fg = self._jitter_colour(rng, fg_name)
            bg_tone, bg = self._background(rng, [fg_name])
        size = (n, n)
        image = Image.composite(Image.new("RGB", size, fg), Image.new("RGB", size, bg), alpha_im)
        resolution = n
        if style == "mnist" and n > MNIST_SIDE and rng.random() < 0.5:
            # MNIST digits are 28x28 images: a classifier sees them upsampled, with the
            # softness and pixel grid of that upsampling. Render half of these at 28
            # pixels and upsample them the way preprocessing does (bicubic).
            image = image.resize((MNIST_SIDE, MNIST_SIDE), Image.BOX).resize(size, Image.BICUBIC)
            resolution = MNIST_SIDE
        if style != "mnist" and rng.random() < 0.5:
            image = _add_noise(rng, image, rng.uniform(1, 6))
        attrs = {"kind": "digit", "digit": digit, "font": font, "style": style, "colour": fg_name,
                 "background": _BG_NAMES[bg_tone], "variant": variant, "resolution": resolution}
        return Sample(image, _digit_caption(rng, digit, font == HAND, fg_name, _BG_NAMES[bg_tone], style), attrs)


def _robust_share() -> float:
    from clipkit.data.digit_styles import ROBUST_SHARE

    return ROBUST_SHARE


def _add_noise(rng, image: Image.Image, sigma: float) -> Image.Image:
    """Gray Gaussian noise of `sigma` levels, the same on the three channels."""
    n = rng.normal(0, sigma, (image.height, image.width, 1)).astype(np.float32)
    a = np.asarray(image, np.float32) + n
    return Image.fromarray(np.clip(a + 0.5, 0, 255).astype(np.uint8), "RGB")


def _family_of(path: str) -> str:
    if path == PILLOW_DEFAULT_FONT:
        return "Pillow default"
    try:
        return ImageFont.truetype(path, 16).getname()[0] or Path(path).stem
    except OSError as e:
        raise ValueError(f"font file {path!r} cannot be read by FreeType ({e}); pass .ttf/.otf files") from e


def _place(rng, count: int, extent: float, tries: int = 60):
    """`count` centres (unit coords) inside the frame, at least 1.5 extents apart: a shape
    reaches at most 0.71 extents from its centre (a square's corner), so none touch."""
    lo, hi = extent / 2 + 0.03, 1 - extent / 2 - 0.03
    centers: list[tuple[float, float]] = []
    for _ in range(tries):
        c = rng.uniform(lo, hi, 2)
        if all((c[0] - x) ** 2 + (c[1] - y) ** 2 >= (1.5 * extent) ** 2 for x, y in centers):
            centers.append((float(c[0]), float(c[1])))
            if len(centers) == count:
                return centers
    return None


# ---------------------------------------------------------------------------
# Captions: a small grammar with paraphrases
# ---------------------------------------------------------------------------


def _pick(rng, options):
    return options[int(rng.integers(len(options)))]


def _word(rng, table: dict[str, tuple[str, ...]], key: str, p_synonym: float = 0.15) -> str:
    forms = table[key]
    if len(forms) > 1 and rng.random() < p_synonym:
        return forms[1 + int(rng.integers(len(forms) - 1))]
    return forms[0]


def _shape_caption(rng, colour, shape, size, position) -> str:
    c, s = _word(rng, COLOUR_WORDS, colour), _word(rng, SHAPE_WORDS, shape)
    r = rng.random()
    if r < 0.12:  # the evaluation prompt, word for word
        return f"a photo of a {colour} {shape}."
    if r < 0.5:  # a template filled with the class name, as a zero-shot head does
        return _pick(rng, SHAPE_TEMPLATES).format(f"{c} {s}")
    if r < 0.85:  # a description with size and/or position
        words = [c, s]
        if rng.random() < 0.6:
            words.insert(0, _word(rng, SIZE_WORDS, size, 0.3))
        phrase = " ".join(words)
        phrase = f"{_article(phrase)} {phrase}"
        if rng.random() < 0.6:
            phrase += " " + _pick(rng, POSITION_WORDS[position])
        return _pick(rng, ("{}", "{}.", "a photo of {}.", "an image of {}.", "there is {}."),).format(phrase)
    # partial captions: the shape alone or the colour alone
    if rng.random() < 0.6:
        return _pick(rng, SHAPE_TEMPLATES).format(s)
    return _pick(rng, ("a {} shape", "a {} object", "something {}", "a photo of a {} shape.")).format(c)


def _count_phrase(rng, colour: str, shape: str, count: int, numeral: bool | None = None) -> str:
    c, s = _word(rng, COLOUR_WORDS, colour), _word(rng, SHAPE_WORDS, shape)
    if numeral is None:
        numeral = rng.random() < 0.25
    number = str(count) if numeral else NUMBER_WORDS[count]
    if count == 1:
        if not numeral and rng.random() < 0.3:
            number = "a single"
        return f"{number} {c} {s}"
    return f"{number} {c} {_plural(s)}"


def _count_caption(rng, colour, shape, count) -> str:
    phrase = _count_phrase(rng, colour, shape, count)
    if count == 1 and rng.random() < 0.5:
        return _pick(rng, ("{}", "a photo of {}.", "there is {}.")).format(phrase)
    return _pick(rng, COUNT_TEMPLATES).format(phrase)


def _relation_caption(rng, a, relation, b) -> str:
    if rng.random() < 0.5:  # say it the other way round
        a, relation, b = b, INVERSE_RELATION[relation], a

    def noun(pair):
        c, s = _word(rng, COLOUR_WORDS, pair[0]), _word(rng, SHAPE_WORDS, pair[1])
        return f"{_article(c) if rng.random() < 0.7 else 'the'} {c} {s}"

    sentence = f"{noun(a)} {_word(rng, RELATION_WORDS, relation, 0.5)} {noun(b)}"
    return _pick(rng, ("{}", "{}.", "a photo of {}.", "an image of {}.", "{}")).format(sentence)


def _digit_caption(rng, digit, hand, colour, background, style) -> str:
    name = str(digit) if rng.random() < 0.65 else NUMBER_WORDS[digit]
    r = rng.random()
    if r < 0.15:
        return f'a photo of the number: "{digit}".'  # the MNIST prompt, word for word
    if r < 0.65:
        return _pick(rng, DIGIT_TEMPLATES).format(name)
    if r < 0.8:
        return _pick(rng, HAND_TEMPLATES if hand else PRINT_TEMPLATES).format(name)
    if style == "colour" or rng.random() < 0.5:
        c = _word(rng, COLOUR_WORDS, colour)
        a = _article(c)
        return _pick(rng, (f"{a} {c} {name} on a {background} background", f"the number {name} in {c}",
                           f"{a} {c} digit {name}", f"{a} {c} {name}"))
    return _pick(rng, (f"the number {name} on a {background} background",
                       f"a digit {name}, {colour} on {background}"))


# ---------------------------------------------------------------------------
# torch Dataset
# ---------------------------------------------------------------------------


def to_tensor(image: Image.Image):
    """PIL RGB -> float tensor (3, H, W) in [0, 1]; a transform for `SynthDataset`."""
    import torch

    return torch.from_numpy(np.asarray(image, np.float32) / 255.0).permute(2, 0, 1).contiguous()


try:
    from torch.utils.data import Dataset as _TorchDataset
except ImportError:  # pragma: no cover - torch is a dependency
    _TorchDataset = object


class SynthDataset(_TorchDataset):
    """Map-style dataset over a world: item i is `(transform(image), caption)` of sample i.

    The length is virtual (default 2**24, more than an hour of CPU training sees).
    Shuffling adds nothing, every index already being an independent random scene, and
    sequential indices avoid a shuffler's permutation of the whole length. Picklable: a
    worker gets the world's settings and loads fonts itself on first use.
    """

    def __init__(self, world: SynthWorld, length: int | None = None, transform: Callable | None = None,
                 offset: int = 0):
        self.world, self.transform, self.offset = world, transform, int(offset)
        self.length = int(2 ** 24 if length is None else length)

    def __len__(self) -> int:
        return self.length

    def sample(self, i: int) -> Sample:
        if not 0 <= i < self.length:
            raise IndexError(f"index {i} out of range for SynthDataset of length {self.length}")
        return self.world.sample(self.offset + i)

    def __getitem__(self, i: int):
        s = self.sample(int(i))
        return (s.image if self.transform is None else self.transform(s.image)), s.caption

    def attrs(self, i: int) -> dict:
        return self.sample(int(i)).attrs


# ---------------------------------------------------------------------------
# Evaluation sets
# ---------------------------------------------------------------------------


@dataclass
class EvalSet:
    """Images with integer labels into `classnames`, ready for a zero-shot head.

    templates: prompt templates to build the head with ("{}" takes a class name).
    candidates: for scene-dependent tasks (count, relation), per image one caption per
        class, aligned with `classnames`: score the image against its own candidates.
    """

    images: list[Image.Image]
    labels: list[int]
    classnames: list[str]
    templates: list[str]
    attrs: list[dict]
    candidates: list[list[str]] | None = None

    def __len__(self) -> int:
        return len(self.images)

    def __iter__(self):
        return iter(zip(self.images, self.labels))


_EVAL_STREAMS = {"colour_shape": 1, "digit": 2, "count": 3, "relation": 4}


def colour_shape_eval_set(n_per_pair: int | None = None, heldout_only: bool = True, seed: int = 0,
                          image_size: int = 64, *, n: int | None = None, split: str | None = None) -> EvalSet:
    """Single-object scenes labelled among all colour x shape class names ('red circle').

    Which pairs: `split="heldout"` (or heldout_only=True, the default) the nine
    `HELDOUT_PAIRS` the training world never shows; `split="val"` the training pairs
    (fresh scenes from the val seed space); `split="all"` every pair. Size: `n_per_pair`
    scenes per pair, or about `n` in total. Classes cycle, so every pair gets its share.
    """
    split = split or ("heldout" if heldout_only else "all")
    if split not in ("heldout", "val", "all"):
        raise ValueError(f"split must be 'heldout', 'val' or 'all', got {split!r}")
    pairs = {"heldout": list(HELDOUT_PAIRS), "all": all_pairs()}.get(split, train_pairs())
    if n_per_pair is None:
        n_per_pair = max(1, math.ceil((n or 10 * len(pairs)) / len(pairs)))
    classes = all_pairs()
    index = {p: k for k, p in enumerate(classes)}
    world = SynthWorld(seed=seed, image_size=image_size, split="heldout" if split == "heldout" else "val",
                       fonts=[PILLOW_DEFAULT_FONT])  # no digits drawn: skip the font scan
    images, labels, attrs = [], [], []
    for i in range(n_per_pair * len(pairs)):
        pair = pairs[i % len(pairs)]
        s = world.render("shape", world.rng(i, _EVAL_STREAMS["colour_shape"]), pair=pair)
        images.append(s.image)
        labels.append(index[pair])
        attrs.append(s.attrs)
    return EvalSet(images, labels, classnames_colour_shape(classes), list(SHAPE_TEMPLATES), attrs)


def digit_eval_set(n: int = 1000, seed: int = 0, image_size: int = 64, *, split: str = "val",
                   style: str | None = None, fonts: Sequence[str] | None = None) -> EvalSet:
    """Rendered digits, classes 0-9 in turn; `style` pins "mnist", "inverted", "colour" or
    "robust" (every digit with its own draw of `digit_styles`' variations)."""
    world = SynthWorld(seed=seed, image_size=image_size, split="val" if split == "heldout" else split,
                       fonts=fonts)
    images, labels, attrs = [], [], []
    for i in range(n):
        s = world.render("digit", world.rng(i, _EVAL_STREAMS["digit"]), digit=i % 10, style=style)
        images.append(s.image)
        labels.append(i % 10)
        attrs.append(s.attrs)
    return EvalSet(images, labels, list(DIGIT_CLASSNAMES), list(DIGIT_TEMPLATES), attrs)


def count_eval_set(n: int = 400, seed: int = 0, image_size: int = 64, *, split: str = "val") -> EvalSet:
    """One to four copies of a shape, counts in turn. Class names 'one'..'four'; each
    image's candidates say its own colour and shape ('two red circles')."""
    world = SynthWorld(seed=seed, image_size=image_size, split=split, fonts=[PILLOW_DEFAULT_FONT])
    images, labels, attrs, candidates = [], [], [], []
    for i in range(n):
        count = i % 4 + 1
        s = world.render("count", world.rng(i, _EVAL_STREAMS["count"]), count=count)
        images.append(s.image)
        labels.append(count - 1)
        attrs.append(s.attrs)
        c, sh = s.attrs["colour"], s.attrs["shape"]
        candidates.append([f"{NUMBER_WORDS[k]} {c} {sh if k == 1 else _plural(sh)}" for k in range(1, 5)])
    return EvalSet(images, labels, list(COUNT_CLASSNAMES), list(COUNT_TEMPLATES), attrs, candidates)


def relation_eval_set(n: int = 400, seed: int = 0, image_size: int = 64, *, split: str = "val") -> EvalSet:
    """Two objects; the label is where the first stands relative to the second. Each
    image's candidates are 'a red circle left of a blue square' for the four relations."""
    world = SynthWorld(seed=seed, image_size=image_size, split=split, fonts=[PILLOW_DEFAULT_FONT])
    images, labels, attrs, candidates = [], [], [], []
    for i in range(n):
        relation = RELATIONS[i % 4]
        s = world.render("relation", world.rng(i, _EVAL_STREAMS["relation"]), relation=relation)
        images.append(s.image)
        labels.append(i % 4)
        attrs.append(s.attrs)
        (ca, cb), (sa, sb) = s.attrs["colours"], s.attrs["shapes"]
        candidates.append([f"{_article(ca)} {ca} {sa} {r} {_article(cb)} {cb} {sb}" for r in RELATIONS])
    return EvalSet(images, labels, list(RELATIONS), ["a photo of {}.", "{}"], attrs, candidates)
