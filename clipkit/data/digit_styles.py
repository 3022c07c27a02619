"""Digits the way real ones arrive: the `robust` digit style of the synthetic world.

The classic digit renderer (`SynthWorld(digit_style="classic")`, the first release's
world) draws MNIST's framing half of the time: a digit about 20 of 28 pixels high,
centred by its mass, light on black. A CLIP trained on it learns the framing as much as
the digit (the first release: 88% on MNIST as it is, 64% on the same digits cropped to
fill the frame). `SynthWorld(digit_style="robust")` draws `ROBUST_SHARE` of its digits here
instead, each with its own draw of every variation below (the rest still come from the
classic renderer, so MNIST's own framing stays in the mix):

- scale: the ink's bounding box fills 30-100% of the frame (its larger side); and
  `STRETCH_SHARE` of the digits cropped to their ink and stretched to fill 75-100% of the
  frame in both directions, aspect lost (how some pipelines frame a digit);
- position: anywhere the box fits (off-centre), a third of the time centred;
- polarity: light on dark or dark on light, half each;
- strokes: pen widths from a hairline to bold (5-32% of the digit height, log-uniform),
  then now and then a grey dilation (thicker) or erosion (thinner);
- slant (shear), rotation and aspect; elastic warps (Simard et al. 2003) and stroke
  jitter (a fine displacement field of a pixel or so);
- backgrounds: flat grey, tinted, a gradient, or a texture (smooth noise, stripes, checks);
- blur; low resolution (`LOW_RES_SHARE` of the images reduced to r x r pixels, r from 8
  to 28, and enlarged again bicubic, bilinear or nearest); Gaussian noise (at the
  low-resolution grid when the image was reduced, as a small camera would make it).

`SynthWorld(digit_style="robust-hard")` is the same with the stretched and the reduced
digits (small sides most) drawn more often (`HARD_STRETCH_SHARE`, `HARD_LOW_RES_SHARE`,
`SMALL_SIDE_WEIGHT`): the two variations the robust fine-tune still read worst.

Only renderings: no real digit image is ever read. Every draw comes from the sample's
generator, so a (seed, split, index) gives the same image on every run. The attributes
record what was drawn (`polarity`, `fill`, `resolution`, `stroke`, `morph`, `shear`,
`blur`, `noise`, `background_kind`, ...), and the tests measure each on the pixels.
"""
from __future__ import annotations

import math
from pathlib import Path

import numpy as np
from PIL import Image, ImageFilter

from clipkit.data import synth

# Share of a robust world's digit scenes drawn here; the others by the classic renderer.
ROBUST_SHARE = 0.65
LOW_RESOLUTIONS = (8, 10, 12, 14, 16, 20, 24, 28)  # sides an image is reduced to
STRETCH_SHARE = 0.12  # digits cropped to their ink and stretched over (most of) the frame
MIN_LOW_RES_INK = 5.5  # MNIST's 20 of 28 pixels reduced to 8 x 8 leave 5.7
LOW_RES_SHARE = 0.4  # digits reduced to one of LOW_RESOLUTIONS and enlarged again
# The "robust-hard" style: the robust style with the two variations the 2026-12-02 model read
# worst after its robust fine-tune (digits cropped and stretched to fill the frame; digits
# reduced to 8 x 8) drawn more often: a larger stretched share, a larger reduced share, and
# among the reductions the sides up to SMALL_SIDE weighted SMALL_SIDE_WEIGHT to 1.
HARD_STRETCH_SHARE = 0.3
HARD_LOW_RES_SHARE = 0.6
SMALL_SIDE, SMALL_SIDE_WEIGHT = 12, 3.0
FILL_RANGE = (0.3, 1.0)  # larger side of the ink's box over the frame side
PEN_RANGE = (0.05, 0.32)  # pen width over digit height, drawn log-uniformly
THIN, THICK = 0.085, 0.17  # pen widths below / above which a stroke is called thin / thick
_UPSAMPLERS = (("bicubic", Image.BICUBIC), ("bilinear", Image.BILINEAR), ("nearest", Image.NEAREST))
# Colours bright enough to read on a dark ground, and dark enough to read on a light one.
_LIGHT_INKS = ("yellow", "cyan", "pink", "orange", "white")
_DARK_INKS = ("red", "blue", "purple", "green")
_BACKGROUND_KINDS = ("flat", "tinted", "gradient", "texture")
_BACKGROUND_P = (0.35, 0.15, 0.2, 0.3)


def luma(rgb) -> np.ndarray:
    """ITU-R 601 luma of RGB values (..., 3), the weights PIL's "L" conversion uses."""
    return np.asarray(rgb, np.float32) @ np.array([0.299, 0.587, 0.114], np.float32)


# ---------------------------------------------------------------------------
# The glyph and its geometry
# ---------------------------------------------------------------------------


def _glyph(world, rng, digit: int, n: int, width: float):
    """A glyph with pen width `width` (fraction of the digit height): procedural pen
    strokes (`world.hand_share` of the time) or a font, its family drawn first."""
    if rng.random() < world.hand_share:
        glyph, variant = world.pen_glyph(rng, digit, n, width)
        return glyph, synth.HAND, variant
    _, files = world.font_families[int(rng.integers(len(world.font_families)))]
    path = files[int(rng.integers(len(files)))]
    font = Path(path).stem if path != synth.PILLOW_DEFAULT_FONT else synth.PILLOW_DEFAULT_FONT
    base = synth._font_glyph(path, digit, 0, n)
    # Pillow's stroke widens a light face up to the target; a face already bolder stays.
    stroke = int(np.clip(round((width * base.height - synth._font_weight(path, n)) / 2), 0, max(1, n // 8)))
    return synth._font_glyph(path, digit, stroke, n), font, None


def _jitter_field(rng, n: int, rms: float) -> tuple[np.ndarray, np.ndarray]:
    """A fine displacement field (14 x 14 knots; the elastic one has 6): wobbly strokes."""
    basis = synth._smoothing_basis(n, 14)
    k = basis.shape[1]
    noise = rng.standard_normal((2, k, k)).astype(np.float32)
    dx, dy = basis @ noise[0] @ basis.T, basis @ noise[1] @ basis.T  # (n, n) each
    scale = rms / max(float(np.sqrt((dx * dx + dy * dy).mean() / 2)), 1e-6)
    return dx * scale, dy * scale


def ink_box(alpha: np.ndarray, threshold: float = 0.25):
    """(x0, y0, x1, y1) of the pixels above `threshold` (x1, y1 exclusive), or None."""
    cols, rows = np.flatnonzero(alpha.max(0) > threshold), np.flatnonzero(alpha.max(1) > threshold)
    if not len(cols):
        return None
    return int(cols[0]), int(rows[0]), int(cols[-1]) + 1, int(rows[-1]) + 1


def place_glyph(glyph, n: int, fill: float, box_centre: tuple[float, float] | None,
                rotation: float = 0.0, shear: float = 0.0, aspect: float = 1.0,
                field: tuple[np.ndarray, np.ndarray] | None = None) -> np.ndarray:
    """The glyph's alpha (n, n) with its ink box's larger side `fill * n` and the box
    centred on `box_centre` (None: centred in the frame).

    A first pass without the displacement field measures the box of the distorted glyph at
    a known height; the second draws it at the height that gives the requested side,
    moved so the box lands where asked. The field then moves ink by a pixel or two, so
    the final box is close to, not exactly, the request (the caller measures it).
    """
    shape = dict(rotation=rotation, shear=shear, aspect=aspect)
    h1 = 0.5 * n
    probe = synth._warp(glyph.mask, glyph.anchor, n, (n / 2, n / 2), glyph.height / h1, **shape)
    box = ink_box(probe)
    if box is None:
        return probe
    x0, y0, x1, y1 = box
    grow = fill * n / max(x1 - x0, y1 - y0)  # output height = h1 * grow
    offset = np.array([(x0 + x1) / 2 - n / 2, (y0 + y1) / 2 - n / 2]) * grow  # box centre - anchor
    target = np.array([n / 2, n / 2] if box_centre is None else box_centre, float)
    centre = tuple(target - offset)
    return synth._warp(glyph.mask, glyph.anchor, n, centre, glyph.height / (h1 * grow), elastic=field, **shape)


def stretch_to_fill(alpha: np.ndarray, box: tuple[int, int, int, int], size: tuple[int, int],
                    corner: tuple[int, int]) -> np.ndarray:
    """The ink's box of `alpha` resized (bicubic, each axis on its own) to `size` (w, h)
    and put at `corner` (left, top) of an empty frame of the same side."""
    n = alpha.shape[0]
    x0, y0, x1, y1 = box
    w, h = size
    crop = Image.fromarray(np.ascontiguousarray(alpha[y0:y1, x0:x1], np.float32), "F")
    out = np.zeros_like(alpha)
    left, top = corner
    out[top:top + h, left:left + w] = np.clip(np.asarray(crop.resize((w, h), Image.BICUBIC)), 0, 1)[:n - top, :n - left]
    return out


def stroke_width(alpha: np.ndarray) -> float:
    """Mean stroke width in pixels of the ink (alpha > 0.5): twice the area over the
    outline length (a band of width w and length l has area w l and outline ~ 2 l)."""
    ink = alpha > 0.5
    edges = (ink[:, 1:] != ink[:, :-1]).sum() + (ink[1:] != ink[:-1]).sum()
    return float(2 * ink.sum() / max(int(edges), 1))


# ---------------------------------------------------------------------------
# Colours and backgrounds
# ---------------------------------------------------------------------------


def _ink(world, rng, polarity: str) -> tuple[str, np.ndarray]:
    """The ink's colour name and RGB: grey most of the time, a colour that reads on
    the ground otherwise."""
    if rng.random() < 0.6:
        if polarity == "light_on_dark":
            return "white", np.full(3, rng.uniform(175, 255), np.float32)
        return "black", np.full(3, rng.uniform(0, 80), np.float32)
    names = _LIGHT_INKS if polarity == "light_on_dark" else _DARK_INKS
    name = names[int(rng.integers(len(names)))]
    return name, np.asarray(world._jitter_colour(rng, name), np.float32)


def _background(rng, n: int, polarity: str, ink_luma: float) -> tuple[str, np.ndarray]:
    """(kind, RGB array (n, n, 3) float32): dark under light ink, light under dark ink,
    always at least 70 luma levels from the ink."""
    kind = _BACKGROUND_KINDS[int(rng.choice(len(_BACKGROUND_KINDS), p=_BACKGROUND_P))]
    if polarity == "light_on_dark":
        level = min(rng.uniform(0, 95), ink_luma - 70)
    else:
        level = max(rng.uniform(160, 255), ink_luma + 70)
    bg = np.full((n, n, 3), level, np.float32)
    if kind == "tinted":
        hue = np.asarray(synth.COLOURS[tuple(synth.COLOURS)[int(rng.integers(len(synth.COLOURS)))]], np.float32)
        bg += (hue - hue.mean()) * rng.uniform(0.2, 0.5)
    elif kind == "gradient":
        angle = rng.uniform(0, 2 * math.pi)
        t = np.arange(n, dtype=np.float32) / n - 0.5
        ramp = math.cos(angle) * t[None, :] + math.sin(angle) * t[:, None]  # (n, n) in about [-0.7, 0.7]
        bg += (rng.uniform(25, 70) * ramp)[..., None]
    elif kind == "texture":
        r = rng.random()
        if r < 0.5:  # blotches: smooth noise
            basis = synth._smoothing_basis(n, int(rng.integers(6, 17)))
            k = basis.shape[1]
            field = basis @ rng.standard_normal((k, k)).astype(np.float32) @ basis.T
            field /= max(float(field.std()), 1e-6)
            bg += (rng.uniform(8, 22) * field)[..., None]
        else:  # stripes or checks
            period = rng.uniform(4, 16)
            angle = rng.uniform(0, math.pi)
            y, x = np.mgrid[0:n, 0:n].astype(np.float32)
            wave = np.sin(2 * math.pi * (x * math.cos(angle) + y * math.sin(angle)) / period)
            if r >= 0.8:
                wave = wave * np.sin(2 * math.pi * (-x * math.sin(angle) + y * math.cos(angle)) / period)
            bg += (rng.uniform(10, 28) * wave)[..., None]
    # keep the contrast: clip the ground to its side of the ink
    if polarity == "light_on_dark":
        bg = np.minimum(bg, ink_luma - 60)
    else:
        bg = np.maximum(bg, ink_luma + 60)
    return kind, np.clip(bg, 0, 255)


def _tone_name(bg: np.ndarray) -> str:
    level = float(luma(bg.reshape(-1, 3)).mean())
    return "black" if level < 85 else ("white" if level > 170 else "gray")


# ---------------------------------------------------------------------------
# The scene
# ---------------------------------------------------------------------------


def _noise(rng, shape: tuple[int, int], sigma: float, colour: bool) -> np.ndarray:
    channels = 3 if colour else 1
    return rng.normal(0, sigma, (*shape, channels)).astype(np.float32)


def robust_digit_scene(world, rng, digit: int | None = None, hard: bool = False) -> synth.Sample:
    """A digit scene of the robust style, drawn with `rng` (see the module docstring).

    hard: the "robust-hard" style: HARD_STRETCH_SHARE of the digits stretched over the
    frame (instead of STRETCH_SHARE), HARD_LOW_RES_SHARE reduced (instead of LOW_RES_SHARE),
    small sides (<= SMALL_SIDE) SMALL_SIDE_WEIGHT times as likely as the others. The robust
    style's draws (hard=False) are unchanged.
    """
    n = world.image_size
    digit = int(rng.integers(10)) if digit is None else int(digit)
    width = math.exp(rng.uniform(math.log(PEN_RANGE[0]), math.log(PEN_RANGE[1])))
    glyph, font, variant = _glyph(world, rng, digit, n, width)

    # -- geometry: size, place, slant, warps
    fill = rng.uniform(*FILL_RANGE)
    rotation = float(rng.normal(0, 0.15))
    shear = float(np.clip(rng.normal(-0.1, 0.25), -0.6, 0.45))  # < 0 leans the top right
    aspect = float(rng.uniform(0.75, 1.25))
    elastic_rms = rng.uniform(0.0, 0.05) * fill * n if rng.random() < 0.85 else 0.0
    jitter_rms = rng.uniform(0.3, 1.0) * fill * n / 45 if rng.random() < 0.5 else 0.0
    field = None
    if elastic_rms > 0:
        field = synth._elastic_field(rng, n, elastic_rms)
    if jitter_rms > 0:
        jx, jy = _jitter_field(rng, n, jitter_rms)
        field = (jx, jy) if field is None else (field[0] + jx, field[1] + jy)
    side = fill * n  # where the box may go: it stays in the frame
    if rng.random() < 1 / 3:
        box_centre = tuple(n / 2 + rng.normal(0, 0.02 * n, 2))
    else:
        box_centre = tuple(rng.uniform(side / 2, n - side / 2, 2)) if side < n else (n / 2, n / 2)
    alpha = place_glyph(glyph, n, fill, box_centre, rotation, shear, aspect, field)
    box = ink_box(alpha)
    stretched = bool(rng.random() < (HARD_STRETCH_SHARE if hard else STRETCH_SHARE)) and box is not None
    if stretched:
        w, h = (n if rng.random() < 0.5 else int(round(n * rng.uniform(0.75, 1.0))) for _ in range(2))
        corner = (int(rng.integers(n - w + 1)), int(rng.integers(n - h + 1)))
        alpha = stretch_to_fill(alpha, box, (w, h), corner)
        box = ink_box(alpha)
    measured_fill = 0.0 if box is None else max(box[2] - box[0], box[3] - box[1]) / n

    # -- strokes: a grey dilation or erosion now and then (erosion only where it leaves a stroke)
    a_im = Image.fromarray((np.clip(alpha, 0, 1) * 255 + 0.5).astype(np.uint8), "L")
    morph = None
    r = rng.random()
    if r < 0.2:
        a_im, morph = a_im.filter(ImageFilter.MaxFilter(3)), "dilate"
    elif r < 0.4 and stroke_width(alpha) >= 3.5:
        a_im, morph = a_im.filter(ImageFilter.MinFilter(3)), "erode"
    alpha = np.asarray(a_im, np.float32) / 255.0

    # -- colours: ink on ground, either polarity
    polarity = "light_on_dark" if rng.random() < 0.5 else "dark_on_light"
    ink_name, ink = _ink(world, rng, polarity)
    ink_luma = float(luma(ink))
    bg_kind, bg = _background(rng, n, polarity, ink_luma)
    pressure = 1.0 + (rng.uniform(-0.15, 0.15) if rng.random() < 0.5 else 0.0)
    ink = np.clip(ink * pressure, 0, 255)
    a = alpha[..., None]
    image = bg * (1 - a) + ink[None, None] * a  # (n, n, 3)

    # -- degradations: blur, then low resolution (with its noise at that grid) or noise
    blur = rng.uniform(0.4, 1.8) if rng.random() < 0.3 else 0.0
    resolution = n
    if rng.random() < (HARD_LOW_RES_SHARE if hard else LOW_RES_SHARE):
        # the digit keeps at least MIN_LOW_RES_INK pixels of the reduced grid
        sides = [r for r in LOW_RESOLUTIONS if r * measured_fill >= MIN_LOW_RES_INK] or [LOW_RESOLUTIONS[-1]]
        if hard:
            weight = np.array([SMALL_SIDE_WEIGHT if r <= SMALL_SIDE else 1.0 for r in sides])
            resolution = int(sides[int(rng.choice(len(sides), p=weight / weight.sum()))])
        else:
            resolution = int(sides[int(rng.integers(len(sides)))])
    noise = rng.uniform(3, 32) if rng.random() < 0.5 else 0.0
    if resolution <= 12:  # a few pixels of digit: heavy noise would erase it
        noise *= 0.5
    colour_noise = bool(rng.random() < 0.3)
    im = Image.fromarray(np.clip(image + 0.5, 0, 255).astype(np.uint8), "RGB")
    if blur:
        im = im.filter(ImageFilter.GaussianBlur(blur))
    upsampler = None
    if resolution < n:
        small = im.resize((resolution, resolution), Image.BOX)
        if noise:
            arr = np.asarray(small, np.float32) + _noise(rng, (resolution, resolution), noise, colour_noise)
            small = Image.fromarray(np.clip(arr + 0.5, 0, 255).astype(np.uint8), "RGB")
        upsampler, method = _UPSAMPLERS[int(rng.choice(3, p=(0.6, 0.3, 0.1)))]
        im = small.resize((n, n), method)
    elif noise:
        arr = np.asarray(im, np.float32) + _noise(rng, (n, n), noise, colour_noise)
        im = Image.fromarray(np.clip(arr + 0.5, 0, 255).astype(np.uint8), "RGB")

    bg_name = _tone_name(bg)
    caption_style = "colour" if ink_name in synth.COLOURS and ink_name != "white" else "robust"
    caption = synth._digit_caption(rng, digit, font == synth.HAND, ink_name, bg_name, caption_style)
    attrs = {"kind": "digit", "digit": digit, "font": font, "style": "robust-hard" if hard else "robust",
             "colour": ink_name, "background": bg_name, "variant": variant, "resolution": resolution,
             "polarity": polarity, "fill": round(measured_fill, 4), "box": box, "stretched": stretched,
             "box_centre": (float(box_centre[0]), float(box_centre[1])), "stroke": round(width, 4),
             "morph": morph, "rotation": rotation, "shear": shear, "aspect": aspect,
             "elastic": float(elastic_rms), "jitter": float(jitter_rms), "background_kind": bg_kind,
             "blur": float(blur), "noise": float(noise), "upsampler": upsampler}
    return synth.Sample(im, caption, attrs)
