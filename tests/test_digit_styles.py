"""The robust digit style: every variation it claims is measured on the rendered pixels
(polarity, fill, position, resolution, stroke width, slant, jitter, blur, noise,
backgrounds); renders are deterministic per seed; and the classic world, the shipped
model's, renders byte-identically to what it rendered before the robust style existed."""
from __future__ import annotations

import hashlib

import numpy as np
import pytest

from clipkit.data import digit_styles as ds
from clipkit.data import synth
from clipkit.data.synth import SynthWorld

N = 64


@pytest.fixture(scope="module")
def robust_all():
    """400 robust digits (bundled fonts: the same on every machine)."""
    world = SynthWorld(seed=0, digit_style="robust", fonts="bundled")
    return [world.render("digit", world.rng(i, 7), style="robust") for i in range(400)]


@pytest.fixture(scope="module")
def robust(robust_all):
    """Those not stretched over the frame: their border is the ground, which the
    measurements below read the background from."""
    return [s for s in robust_all if not s.attrs["stretched"]]


def gray(s) -> np.ndarray:
    return ds.luma(np.asarray(s.image, np.float32))


def border(a: np.ndarray, k: int = 2) -> np.ndarray:
    return np.concatenate([a[:k].ravel(), a[-k:].ravel(), a[:, :k].ravel(), a[:, -k:].ravel()])


def ink_mask(s) -> np.ndarray:
    """Pixels more than half-way from the ground (the border's median) to the farthest."""
    d = np.abs(gray(s) - np.median(border(gray(s))))
    return d > 0.5 * d.max()


def clean(samples, backgrounds=("flat", "tinted")):
    return [s for s in samples if not s.attrs["blur"] and not s.attrs["noise"] and s.attrs["resolution"] == N
            and s.attrs["background_kind"] in backgrounds]


# ---------------------------------------------------------------------------
# Determinism; the classic world is untouched
# ---------------------------------------------------------------------------


def _digest(world, indices) -> str:
    h = hashlib.sha256()
    for i in indices:
        s = world.sample(i)
        h.update(np.asarray(s.image).tobytes())
        h.update(s.caption.encode())
    return h.hexdigest()


def test_classic_world_renders_are_byte_identical_to_the_shipped_models():
    """Digests taken before the robust style existed (bundled fonts; Pillow 13.0, numpy 2.4).
    A change of Pillow's rasteriser would also change them: then check the renders by eye
    and update, but a change of clipkit must never."""
    assert _digest(SynthWorld(seed=0, fonts="bundled"), range(200)) == \
        "3b430f924211fcfb2aab0fe39bbaffa0974b2d39c9a9a40194b6ab5bd7173e39"
    assert _digest(SynthWorld(seed=1, fonts="bundled", hand_share=1.0, mix={"digit": 1.0}), range(60)) == \
        "449696605d3716f6cccd26bce8ce593a19010a88eb0b3b21792de50c4941df0c"


def test_robust_renders_are_deterministic_per_seed():
    a = SynthWorld(seed=3, digit_style="robust", mix={"digit": 1.0}, fonts="bundled")
    b = SynthWorld(seed=3, digit_style="robust", mix={"digit": 1.0}, fonts="bundled")
    c = SynthWorld(seed=4, digit_style="robust", mix={"digit": 1.0}, fonts="bundled")
    for i in (0, 5, 99, 2 ** 33):
        sa, sb = a.sample(i), b.sample(i)
        assert np.array_equal(np.asarray(sa.image), np.asarray(sb.image)) and sa.caption == sb.caption
        assert sa.attrs == sb.attrs
    differ = sum(not np.array_equal(np.asarray(a.sample(i).image), np.asarray(c.sample(i).image)) for i in range(20))
    assert differ == 20


def test_robust_world_mixes_robust_and_classic_digits():
    world = SynthWorld(seed=0, digit_style="robust", mix={"digit": 1.0}, fonts="bundled")
    styles = [world.sample(i).attrs["style"] for i in range(300)]
    share = styles.count("robust") / len(styles)
    assert abs(share - ds.ROBUST_SHARE) < 0.08, share
    assert "mnist" in styles  # MNIST's own framing stays in the mix
    with pytest.raises(ValueError, match="digit_style"):
        SynthWorld(digit_style="fancy")


def test_robust_renders_are_unchanged_by_the_hard_style():
    """Adding "robust-hard" did not move the robust style's draws (digest taken before it existed)."""
    world = SynthWorld(seed=3, digit_style="robust", mix={"digit": 1.0}, fonts="bundled")
    assert _digest(world, range(150)) == "9c1da38de64d5c654289cbd75d166d315b657a29dca8928c6602e7d440a0b478"


def test_robust_hard_draws_stretched_and_small_digits_more_often():
    def stats(style):
        world = SynthWorld(seed=0, digit_style=style, fonts="bundled")
        got = [world.render("digit", world.rng(i, 8), style=style).attrs for i in range(400)]
        assert {a["style"] for a in got} == {style}
        reduced = [a["resolution"] for a in got if a["resolution"] < world.image_size]
        return (np.mean([a["stretched"] for a in got]), len(reduced) / len(got),
                np.mean([r <= ds.SMALL_SIDE for r in reduced]))

    stretched, low_res, small = stats("robust")
    h_stretched, h_low_res, h_small = stats("robust-hard")
    assert abs(stretched - ds.STRETCH_SHARE) < 0.05 and abs(h_stretched - ds.HARD_STRETCH_SHARE) < 0.07
    assert abs(low_res - ds.LOW_RES_SHARE) < 0.07 and abs(h_low_res - ds.HARD_LOW_RES_SHARE) < 0.07
    assert h_small > small + 0.15, (small, h_small)
    # a world of the hard style mixes it with classic digits, as the robust one does
    world = SynthWorld(seed=0, digit_style="robust-hard", mix={"digit": 1.0}, fonts="bundled")
    styles = [world.sample(i).attrs["style"] for i in range(200)]
    assert abs(styles.count("robust-hard") / 200 - ds.ROBUST_SHARE) < 0.1 and "robust" not in styles


def test_robust_captions_name_the_digit(robust_all):
    robust = robust_all
    from tests.test_synth import digits_mentioned, mentioned

    for s in robust:
        assert digits_mentioned(s.caption) == {s.attrs["digit"]}, (s.caption, s.attrs)
        assert mentioned(s.caption, synth.COLOUR_WORDS) <= {s.attrs["colour"], s.attrs["background"]}, s.caption
    assert {s.attrs["digit"] for s in robust} == set(range(10))


# ---------------------------------------------------------------------------
# Each variation, measured on the pixels
# ---------------------------------------------------------------------------


def test_both_polarities_and_they_are_what_the_pixels_show(robust):
    def measured(s):  # the ink: the pixels farthest from the ground (the border's median)
        d = gray(s) - np.median(border(gray(s)))
        far = np.abs(d) >= np.quantile(np.abs(d), 0.97)
        return "dark_on_light" if d[far].mean() < 0 else "light_on_dark"

    flat = [s for s in robust if s.attrs["background_kind"] != "gradient"]
    assert [measured(s) for s in flat] == [s.attrs["polarity"] for s in flat]
    # a gradient's far corner can outshine a faint, small digit on the border's median
    ramps = [s for s in robust if s.attrs["background_kind"] == "gradient"]
    assert np.mean([measured(s) == s.attrs["polarity"] for s in ramps]) > 0.95
    share = [s.attrs["polarity"] for s in robust].count("dark_on_light") / len(robust)
    assert 0.4 < share < 0.6, share


def test_digits_fill_30_to_100_percent_of_the_frame_anywhere_in_it(robust):
    sides, offsets = [], []
    for s in clean(robust):
        ys, xs = np.nonzero(ink_mask(s))
        side = max(np.ptp(xs) + 1, np.ptp(ys) + 1) / N
        assert abs(side - s.attrs["fill"]) < 0.07, (side, s.attrs["fill"])
        sides.append(side)
        offsets.append(np.hypot((xs.min() + xs.max() + 1) / 2 - N / 2, (ys.min() + ys.max() + 1) / 2 - N / 2) / N)
    assert len(sides) > 30
    assert min(sides) < 0.36 and max(sides) > 0.9, (min(sides), max(sides))
    assert np.mean(np.array(offsets) > 0.15) > 0.2  # off-centre, often
    fills = [s.attrs["fill"] for s in robust]
    assert min(fills) < 0.32 and max(fills) > 0.97


def test_low_resolution_images_have_the_rank_of_their_grid(robust):
    """An r x r image enlarged by a separable linear filter is A X B^T: rank <= r. Measured
    on the pixels: the (r+1)-th singular value vanishes next to the first."""
    low = [s for s in robust if s.attrs["resolution"] < N]
    assert {s.attrs["resolution"] for s in low} == set(ds.LOW_RESOLUTIONS)
    assert 0.25 < len(low) / len(robust) < 0.55
    for s in low:
        sv = np.linalg.svd(gray(s), compute_uv=False)
        assert sv[s.attrs["resolution"]] / sv[0] < 0.01, s.attrs
    full = [s for s in robust if s.attrs["resolution"] == N]
    assert np.median([(lambda v: v[8] / v[0])(np.linalg.svd(gray(s), compute_uv=False)) for s in full]) > 0.015


def test_thin_and_thick_strokes(robust):
    """Stroke width (twice the ink area over its outline) relative to the digit's height."""
    rel, pen = [], []
    for s in clean(robust):
        if s.attrs["morph"] is None:
            m = ink_mask(s)
            ys, _ = np.nonzero(m)
            rel.append(ds.stroke_width(m) / (np.ptp(ys) + 1))
            pen.append(s.attrs["stroke"])
    rel, pen = np.array(rel), np.array(pen)
    assert np.quantile(rel, 0.9) > 2.5 * np.quantile(rel, 0.1)
    assert rel[pen > ds.THICK].mean() > 1.8 * rel[pen < ds.THIN].mean()
    assert {"dilate", "erode", None} == {s.attrs["morph"] for s in robust}


def _bar(height=40, width=6):
    mask = np.zeros((height + 8, width + 8), np.float32)
    mask[4:-4, 4:-4] = 1.0
    return synth._crop_glyph(mask)


def test_place_glyph_gives_the_requested_fill_and_slant():
    bar = _bar()
    for fill in (0.3, 0.6, 1.0):
        box = ds.ink_box(ds.place_glyph(bar, N, fill, None))
        assert abs(max(box[2] - box[0], box[3] - box[1]) - fill * N) <= 2, (fill, box)
    box = ds.ink_box(ds.place_glyph(bar, N, 0.4, (14.0, 50.0)))
    assert abs((box[0] + box[2]) / 2 - 14) <= 1.5 and abs((box[1] + box[3]) / 2 - 50) <= 1.5
    for shear in (-0.45, 0.3):  # x' = x + shear * y, y down: < 0 leans the top to the right
        alpha = ds.place_glyph(bar, N, 0.8, None, shear=shear)
        ys, xs = np.nonzero(alpha > 0.5)
        slope = np.cov(xs, ys)[0, 1] / np.var(ys, ddof=1)
        assert slope == pytest.approx(shear, abs=0.06)


def test_stroke_jitter_makes_straight_edges_wavy():
    bar = _bar()
    rng = np.random.default_rng(0)

    def wobble(alpha):  # spread of the bar's centre line (per-row centroid) about a straight line
        rows = np.flatnonzero(alpha.sum(1) > 2)[3:-3]
        x = np.arange(N) + 0.5
        centres = np.array([(alpha[r] * x).sum() / alpha[r].sum() for r in rows])
        return np.std(centres - np.polyval(np.polyfit(rows, centres, 1), rows))

    straight = ds.place_glyph(bar, N, 0.8, None)
    wavy = ds.place_glyph(bar, N, 0.8, None, field=ds._jitter_field(rng, N, 1.5))
    assert wobble(straight) < 0.05 and wobble(wavy) > 0.4, (wobble(straight), wobble(wavy))


def test_blur_softens_edges(robust):
    def sharpness(s):  # the steepest step between neighbours, over the ink's contrast
        g = gray(s)
        contrast = np.abs(g - np.median(border(g))).max()
        return np.abs(np.diff(g, axis=1)).max() / contrast

    full = [s for s in robust if not s.attrs["noise"] and s.attrs["resolution"] == N]
    blurred = [sharpness(s) for s in full if s.attrs["blur"]]
    sharp = [sharpness(s) for s in full if not s.attrs["blur"]]
    assert len(blurred) > 10 and np.median(blurred) < 0.6 * np.median(sharp)


def test_noise_is_there_at_the_level_recorded(robust):
    def robust_std(a):  # from the median absolute deviation: ink on the border does not count
        return 1.4826 * np.median(np.abs(a - np.median(a)))

    flat = [s for s in robust if not s.attrs["blur"] and s.attrs["resolution"] == N
            and s.attrs["background_kind"] == "flat"]
    checked = 0
    for s in flat:
        ground = border(np.asarray(s.image, np.float32)[..., 0], 3)
        if not s.attrs["noise"]:
            assert robust_std(ground) < 1.0
        elif 45 < ground.mean() < 210:  # noise not clipped at 0 or 255
            assert robust_std(ground) == pytest.approx(s.attrs["noise"], rel=0.25, abs=2.5), s.attrs
            checked += 1
    assert checked >= 5 and len(flat) - checked >= 5


def test_backgrounds_flat_tinted_gradient_textured(robust):
    kinds = {k: [s for s in robust if s.attrs["background_kind"] == k and not s.attrs["noise"]
                 and not s.attrs["blur"] and s.attrs["resolution"] == N] for k in ds._BACKGROUND_KINDS}
    assert all(len(v) >= 8 for v in kinds.values()), {k: len(v) for k, v in kinds.items()}

    def ground(s):  # the border's pixels, ink (far from the median) left out
        rgb = np.concatenate([a.reshape(-1, 3) for a in (np.asarray(s.image, np.float32)[:3],
                                                         np.asarray(s.image, np.float32)[-3:])])
        keep = np.abs(ds.luma(rgb) - np.median(ds.luma(rgb))) < 40
        return rgb[keep]

    assert all(np.ptp(np.median(ground(s), 0)) <= 2 for s in kinds["flat"])  # grey
    assert np.median([np.ptp(np.median(ground(s), 0)) for s in kinds["tinted"]]) > 15  # a colour cast
    assert np.median([ds.luma(ground(s)).std() for s in kinds["flat"]]) < 0.5
    for k in ("gradient", "texture"):
        assert np.median([ds.luma(ground(s)).std() for s in kinds[k]]) > 4, k


def test_inks_are_grey_or_coloured(robust):
    names = {s.attrs["colour"] for s in robust}
    assert {"white", "black"} <= names and len(names & set(ds._DARK_INKS + ds._LIGHT_INKS)) >= 6


def test_digit_eval_set_pins_the_robust_style():
    es = synth.digit_eval_set(n=20, style="robust", fonts=[synth.PILLOW_DEFAULT_FONT])
    assert {a["style"] for a in es.attrs} == {"robust"} and es.labels == [i % 10 for i in range(20)]


def test_some_digits_are_cropped_and_stretched_over_the_frame(robust_all):
    stretched = [s for s in robust_all if s.attrs["stretched"]]
    assert 0.06 < len(stretched) / len(robust_all) < 0.2
    for s in clean(stretched, backgrounds=ds._BACKGROUND_KINDS):
        ys, xs = np.nonzero(ink_mask(s))
        assert min(np.ptp(xs) + 1, np.ptp(ys) + 1) >= 0.7 * N, s.attrs  # both sides span the frame
    # a '1' is tall and narrow; stretched, it is as wide as the frame
    bar = ds.place_glyph(_bar(), N, 0.5, None)
    wide = ds.stretch_to_fill(bar, ds.ink_box(bar), (N, N), (0, 0))
    assert ds.ink_box(wide) == (0, 0, N, N)


def test_the_mnist_variation_proxy_crops_to_the_ink_like_on_mnist():
    """benchmarks/digit_proxy.py: white-on-black renders on a ground of exactly 0, so the
    crop variations of eval_shipped find the ink's box; labels cycle through the digits."""
    from benchmarks.digit_proxy import proxy_images
    from benchmarks.eval_shipped import MNIST_VARIATIONS

    raw, labels = proxy_images(20)
    assert raw.shape == (20, 28, 28) and labels == [i % 10 for i in range(20)]
    corners = raw[:, [0, 0, -1, -1], [0, -1, 0, -1]]
    assert (corners == 0).all() and (raw.max(axis=(1, 2)) > 128).all()
    stretched = MNIST_VARIATIONS["cropped to content, filling the frame"](raw, 0)
    # stretched over the whole frame: ink reaches every border
    assert all((im[0].max() > 0 and im[-1].max() > 0 and im[:, 0].max() > 0 and im[:, -1].max() > 0)
               for im in stretched)


def test_eval_shipped_checks_its_input_files_before_evaluating(tmp_path, capsys):
    from benchmarks import eval_shipped

    for flag in ("--log", "--baseline"):
        with pytest.raises(SystemExit) as e:
            # a model path that does not exist either: the flag is checked first, before loading
            eval_shipped.main([str(tmp_path / "no-model.safetensors"), flag, str(tmp_path / "gone.json")])
        assert e.value.code == 2
        assert f"{flag} {tmp_path / 'gone.json'}: no such file" in capsys.readouterr().err
