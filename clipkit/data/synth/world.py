"""`Sample` and `SynthWorld`: every scene rendered from (seed, split, index) alone."""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator, Sequence

import numpy as np
from PIL import Image, ImageDraw, ImageFilter, ImageFont

from clipkit.data.synth.captions import _count_caption, _digit_caption, _relation_caption, _shape_caption
from clipkit.data.synth.fonts import HAND, PILLOW_DEFAULT_FONT, discover_fonts, font_dirs
from clipkit.data.synth.geometry import _draw_shape, _elastic_field, _warp
from clipkit.data.synth.glyphs import _font_glyph, _font_weight, _hand_glyph, _pen_glyph
from clipkit.data.synth.vocab import (COLOURS, DEFAULT_MIX, DIGIT_STYLES, HELDOUT_PAIRS, INVERSE_RELATION, MNIST_SIDE,
                                       PEN_STYLES, POSITION_WORDS, RELATIONS, SPLITS, check_mix, train_pairs)


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
    pen: how those pen strokes are drawn: "plain" (the first two releases' world) or "hand"
        (handwriting-like: proportions, stroke placement, ends and pen pressure vary;
        `glyphs._hand_glyph`).
    mnist_share: fraction of digits rendered MNIST-style (white on black, centred).
    digit_style: "classic" (the first release's world), "robust" or "robust-hard".
        "robust": `digit_styles.ROBUST_SHARE` of the digits drawn at any scale, place,
        polarity, stroke width, resolution, ... (see `clipkit.data.digit_styles`), the rest
        as "classic" draws them; "robust-hard": the same with stretched and low-resolution
        digits drawn more often.
    """

    def __init__(self, seed: int = 0, image_size: int = 64, split: str = "train",
                 mix: dict[str, float] | None = None, fonts: Sequence[str] | str | None = None,
                 hand_share: float = 0.45, mnist_share: float = 0.5, digit_style: str = "classic",
                 pen: str = "plain"):
        if split not in SPLITS:
            raise ValueError(f"unknown split {split!r}; expected one of {sorted(SPLITS)}")
        if digit_style not in DIGIT_STYLES:
            raise ValueError(f"unknown digit_style {digit_style!r}; expected one of {DIGIT_STYLES}")
        self.digit_style = digit_style
        if pen not in PEN_STYLES:
            raise ValueError(f"unknown pen {pen!r}; expected one of {PEN_STYLES}")
        self.pen = pen
        if not 0.0 <= hand_share <= 1.0:
            raise ValueError(f"hand_share must be in [0, 1], got {hand_share}")
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

    def pen_glyph(self, rng, digit: int, n: int, width: float):
        """A pen-stroke digit glyph in this world's `pen` style, and its variant."""
        return (_hand_glyph if self.pen == "hand" else _pen_glyph)(rng, digit, n, width)

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
        count=, relation=, digit=, style= ("mnist", "inverted", "colour", "robust", "robust-hard")) for
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
        # A classic world draws nothing here, so its renders stay those the first release saw.
        if style is None and self.digit_style != "classic" and rng.random() < _robust_share():
            style = self.digit_style  # this digit is drawn in the world's robust style
        if style in ("robust", "robust-hard"):
            from clipkit.data.digit_styles import robust_digit_scene

            return robust_digit_scene(self, rng, digit, hard=style == "robust-hard")
        n = self.image_size
        digit = int(rng.integers(10)) if digit is None else int(digit)
        if style is None:
            r = rng.random()
            style = "mnist" if r < self.mnist_share else ("inverted" if r < self.mnist_share + 0.2 else "colour")
        # The glyph: pen strokes or a font (family first, so DejaVu's many files do not
        # outweigh a typeface with one).
        if rng.random() < self.hand_share:
            font = HAND
            glyph, variant = self.pen_glyph(rng, digit, n, rng.uniform(0.10, 0.19))
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


