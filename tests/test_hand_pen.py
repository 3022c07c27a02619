"""Handwriting-like pen strokes (`SynthWorld(pen="hand")`, `glyphs._hand_glyph`): the disc
pen draws what a plain stroke of that width is; every digit comes out inked, whole (no
stroke cut at the canvas edge), deterministic per seed, at the pen width asked; the
variation it claims (proportions, messier hands) is measured on the masks. (The plain
pen's worlds, the shipped model's, are pinned by golden digests in test_digit_styles.)"""
from __future__ import annotations

import numpy as np
import pytest
from PIL import Image, ImageDraw

from clipkit.data import digit_styles as ds
from clipkit.data.synth import SynthWorld
from clipkit.data.synth.glyphs import _PEN_DIGITS, _disc_stroke, _hand_glyph, _pen_glyph, _resample

N = 64


def test_resample_keeps_the_vertices_and_spaces_points_at_most_step():
    pts = np.array([[0.0, 0.0], [10.0, 0.0], [10.0, 3.0]])
    out = _resample(pts, 0.75)
    gaps = np.hypot(*np.diff(out, axis=0).T)
    assert gaps.max() <= 0.75 + 1e-9 and gaps.min() > 0
    for v in pts:
        assert np.isclose(np.hypot(*(out - v).T), 0).any()
    assert np.allclose(out[0], pts[0]) and np.allclose(out[-1], pts[-1])


def test_disc_pen_of_constant_width_draws_the_capsule_around_the_segment():
    """The straightforward computation: a pixel is ink when its centre lies within r of
    the segment. Discs every 0.75 px along it ink the same pixels but along the edge.
    (Pillow's pixel centres sit on integer coordinates and its ellipse box includes both
    ends, a half pixel more than the radius: `_hand_glyph` passes r - 0.5, as here.)"""
    a, b, r = np.array([12.0, 20.0]), np.array([50.0, 41.0]), 5.0
    im = Image.new("L", (64, 64), 0)
    points = _resample(np.stack([a, b]), 0.75)
    _disc_stroke(ImageDraw.Draw(im), points, np.full(len(points), r - 0.5))
    ys, xs = np.mgrid[0:64, 0:64].astype(float)
    p = np.stack([xs, ys], -1)
    t = np.clip(((p - a) @ (b - a)) / ((b - a) @ (b - a)), 0, 1)
    dist = np.hypot(*(p - (a + t[..., None] * (b - a))).transpose(2, 0, 1))
    drawn = np.asarray(im) > 127
    inside, outside = dist < r - 1.0, dist > r + 1.0
    assert drawn[inside].all() and not drawn[outside].any()


@pytest.mark.parametrize("digit", range(10))
def test_every_digit_and_variant_is_inked_and_deterministic(digit):
    seen = set()
    for seed in range(40):
        g, variant = _hand_glyph(np.random.default_rng(seed), digit, N, 0.12)
        again, _ = _hand_glyph(np.random.default_rng(seed), digit, N, 0.12)
        assert np.array_equal(g.mask, again.mask)
        # the skeleton's height; a full-height stroke may run on by 30% at each end (HAND_END)
        assert 0.5 * 0.7 * N < g.height < 1.75 * 0.7 * N
        assert (g.mask > 0.5).sum() > 40
        # the crop leaves a 2-pixel margin unless the ink reached the canvas edge (cut off there)
        m = g.mask
        assert max(m[:2].max(), m[-2:].max(), m[:, :2].max(), m[:, -2:].max()) <= 0.1
        seen.add(variant)
    assert seen == set(range(len(_PEN_DIGITS[digit])))


def test_pen_width_follows_the_request():
    def width(w):
        return np.mean([ds.stroke_width(_hand_glyph(np.random.default_rng(s), d, N, w)[0].mask)
                        for s in range(4) for d in range(10)])

    thin, thick = width(0.06), width(0.24)
    height = 0.7 * N
    assert abs(thin - 0.06 * height) < 1.5  # px; the mean pen width, pressure averaging out
    assert 2.5 < thick / thin < 5.5


def _vertical_mass(glyph_fn, digit: int) -> np.ndarray:
    """Centre of mass of the ink, as a fraction of the ink height from its top."""
    out = []
    for s in range(150):
        g, _ = glyph_fn(np.random.default_rng(s), digit, N, 0.12)
        rows = np.flatnonzero(g.mask.max(1) > 0.25)
        out.append((g.mass_centre[1] - rows[0]) / (rows[-1] + 1 - rows[0]))
    return np.array(out)


def test_hand_pen_varies_the_digits_proportions_more_than_the_plain_pen():
    """A '9' with a small or a large head, an '8' top- or bottom-heavy: where the ink's mass
    sits varies, between hands, well beyond the plain pen's control-point jitter."""
    for digit in (8, 9, 3):
        assert _vertical_mass(_hand_glyph, digit).std() > 1.5 * _vertical_mass(_pen_glyph, digit).std()


@pytest.mark.parametrize("style", ["classic", "robust-hard"])
def test_hand_world_draws_hand_pen_digits(style):
    """With every digit drawn by the pen, the hand world's pen digits are `_hand_glyph`'s:
    the same digits as the plain world's, drawn otherwise (the hand pen takes more draws
    from the scene's generator, so what follows the glyph is drawn anew too)."""
    a = SynthWorld(seed=3, mix={"digit": 1.0}, fonts="bundled", hand_share=1.0, digit_style=style)
    b = SynthWorld(seed=3, mix={"digit": 1.0}, fonts="bundled", hand_share=1.0, digit_style=style, pen="hand")
    differ = 0
    for i in range(10):
        sa, sb = a.sample(i), b.sample(i)
        assert sa.attrs["digit"] == sb.attrs["digit"] and sa.attrs["font"] == sb.attrs["font"] == "hand"
        differ += sa.image.tobytes() != sb.image.tobytes()
    assert differ == 10


def test_bad_pen_arguments_say_what_is_wrong():
    with pytest.raises(ValueError, match="unknown pen 'quill'"):
        SynthWorld(pen="quill")
    with pytest.raises(ValueError, match=r"hand_share must be in \[0, 1\]"):
        SynthWorld(hand_share=1.5)


def test_train_flags_reach_the_config():
    from clipkit.commands.train import build_parser, config_from_args

    cfg = config_from_args(build_parser().parse_args(["--pen", "hand", "--hand-share", "0.6"]))
    assert (cfg.pen, cfg.hand_share) == ("hand", 0.6)
    default = config_from_args(build_parser().parse_args([]))
    assert (default.pen, default.hand_share) == ("plain", 0.45)
    with pytest.raises(SystemExit):
        build_parser().parse_args(["--hand-share", "1.2"])
