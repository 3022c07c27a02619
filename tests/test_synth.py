"""The synthetic world: determinism, captions that agree with what is drawn, held-out
pairs kept out of training, digits of every class, fonts and their fallback, DataLoader
workers, and the evaluation sets."""
from __future__ import annotations

import os
import pickle
import re
import shutil

import numpy as np
import pytest
import torch
from hypothesis import given, settings, strategies as st

from clipkit.data import synth
from clipkit.data.synth import (COLOUR_WORDS, HELDOUT_PAIRS, NUMBER_WORDS, POSITION_WORDS, RELATION_WORDS,
                                SHAPE_PLURALS, SHAPE_WORDS, SIZE_WORDS, SynthDataset, SynthWorld)


@pytest.fixture(scope="module")
def world():
    return SynthWorld(seed=0, image_size=64)


@pytest.fixture(scope="module")
def samples(world):
    return [world.sample(i) for i in range(1500)]


def pixels(image) -> np.ndarray:
    return np.asarray(image, np.int16)


# ---------------------------------------------------------------------------
# Determinism and the basic contract
# ---------------------------------------------------------------------------


def test_same_seed_and_index_give_the_same_sample(world):
    other = SynthWorld(seed=0, image_size=64)
    for i in (0, 1, 7, 123_456_789):
        a, b = world.sample(i), other.sample(i)
        assert np.array_equal(pixels(a.image), pixels(b.image))
        assert a.caption == b.caption and a.attrs == b.attrs
    # random access: the order of requests changes nothing
    assert np.array_equal(pixels(world.sample(5).image), pixels(SynthWorld().sample(5).image))


@settings(max_examples=15, deadline=None)
@given(st.integers(0, 2**40))
def test_any_index_renders_deterministically(i):
    a, b = SynthWorld(seed=3).sample(i), SynthWorld(seed=3).sample(i)
    assert np.array_equal(pixels(a.image), pixels(b.image)) and a.caption == b.caption


def test_different_seeds_and_splits_differ(world):
    for other in (SynthWorld(seed=1), SynthWorld(seed=0, split="val")):
        same = sum(np.array_equal(pixels(world.sample(i).image), pixels(other.sample(i).image))
                   for i in range(20))
        assert same == 0


def test_images_are_rgb_of_the_requested_size(samples):
    assert all(s.image.mode == "RGB" and s.image.size == (64, 64) for s in samples[:200])
    small = SynthWorld(image_size=32)
    for i in range(40):
        s = small.sample(i)
        assert s.image.size == (32, 32) and s.image.mode == "RGB"
        assert np.ptp(pixels(s.image)) > 40  # something is drawn


def test_every_kind_appears_in_the_default_mix(samples):
    kinds = [s.attrs["kind"] for s in samples]
    for kind, weight in synth.DEFAULT_MIX.items():
        share = kinds.count(kind) / len(kinds)
        assert abs(share - weight) < 0.05, (kind, share)


def test_bad_arguments_say_what_is_wrong():
    with pytest.raises(ValueError, match="split"):
        SynthWorld(split="test")
    with pytest.raises(ValueError, match="unknown scene kinds"):
        SynthWorld(mix={"dragons": 1.0})
    with pytest.raises(IndexError):
        SynthWorld().sample(-1)


def test_world_pickles_and_renders_the_same_after(world):
    clone = pickle.loads(pickle.dumps(world))
    for i in (3, 4):
        assert np.array_equal(pixels(clone.sample(i).image), pixels(world.sample(i).image))


# ---------------------------------------------------------------------------
# Captions agree with the attributes, through the synonym tables
# ---------------------------------------------------------------------------


def mentioned(caption: str, table: dict[str, tuple[str, ...]], plurals: bool = False) -> set[str]:
    found = set()
    for key, forms in table.items():
        forms = list(forms) + ([SHAPE_PLURALS[f] for f in forms] if plurals else [])
        if any(re.search(rf"\b{re.escape(f)}\b", caption) for f in forms):
            found.add(key)
    return found


def digits_mentioned(caption: str) -> set[int]:
    found = {int(d) for d in re.findall(r"\b\d\b", caption)}
    return found | {k for k, w in enumerate(NUMBER_WORDS) if re.search(rf"\b{w}\b", caption)}


def test_shape_captions_agree_with_attrs(samples):
    seen = 0
    for s in samples:
        a, cap = s.attrs, s.caption
        if a["kind"] != "shape":
            continue
        seen += 1
        colours, shapes = mentioned(cap, COLOUR_WORDS), mentioned(cap, SHAPE_WORDS, plurals=True)
        assert colours | shapes, cap
        assert colours <= {a["colour"]} and shapes <= {a["shape"]}, (cap, a)
        assert mentioned(cap, SIZE_WORDS) <= {a["size"]}, (cap, a)
        assert {p for p, forms in POSITION_WORDS.items() if any(f in cap for f in forms)} <= {a["position"]}
        assert not digits_mentioned(cap)
    assert seen > 200


def test_count_captions_agree_with_attrs(samples):
    for s in samples:
        a, cap = s.attrs, s.caption
        if a["kind"] != "count":
            continue
        assert len(a["objects"]) == a["count"]
        assert mentioned(cap, COLOUR_WORDS) == {a["colour"]}, cap
        assert mentioned(cap, SHAPE_WORDS, plurals=True) == {a["shape"]}, cap
        said = digits_mentioned(cap) | ({1} if "a single" in cap else set())
        assert said == {a["count"]}, (cap, a["count"])
        plural = any(re.search(rf"\b{SHAPE_PLURALS[f]}\b", cap) for f in SHAPE_WORDS[a["shape"]])
        assert plural == (a["count"] > 1), cap


_REL = "|".join(sorted((re.escape(f) for fs in RELATION_WORDS.values() for f in fs), key=len, reverse=True))
_NOUN = r"(?:a|an|the) (\w+) (plus sign|\w+)"
_RELATION_RE = re.compile(rf"{_NOUN} ({_REL}) {_NOUN}")


def canonical(word: str, table: dict[str, tuple[str, ...]]) -> str:
    return next(k for k, forms in table.items() if word in forms)


def test_relation_captions_agree_with_attrs_and_geometry(samples):
    seen = 0
    for s in samples:
        a = s.attrs
        if a["kind"] != "relation":
            continue
        seen += 1
        m = _RELATION_RE.search(s.caption)
        assert m, s.caption
        first = (canonical(m[1], COLOUR_WORDS), canonical(m[2], SHAPE_WORDS))
        rel = canonical(m[3], RELATION_WORDS)
        second = (canonical(m[4], COLOUR_WORDS), canonical(m[5], SHAPE_WORDS))
        pairs = list(zip(a["colours"], a["shapes"]))
        assert pairs[0] != pairs[1]
        if (first, second) == (pairs[0], pairs[1]):
            assert rel == a["relation"], s.caption
        else:
            assert (first, second) == (pairs[1], pairs[0]), s.caption
            assert rel == synth.INVERSE_RELATION[a["relation"]], s.caption
        # the geometry: the first object really is left of / above ... the second,
        # clearly (the offset across the axis is smaller than the gap along it)
        (xa, ya), (xb, yb) = a["objects"][0]["center"], a["objects"][1]["center"]
        along, across = {"left of": (xb - xa, yb - ya), "right of": (xa - xb, ya - yb),
                         "above": (yb - ya, xb - xa), "below": (ya - yb, xa - xb)}[a["relation"]]
        ea, eb = a["objects"][0]["extent"], a["objects"][1]["extent"]
        assert along >= (ea + eb) / 2 and abs(across) < along / 2, a
    assert seen > 100


def test_digit_captions_agree_with_attrs(samples):
    digits = [s for s in samples if s.attrs["kind"] == "digit"]
    assert len(digits) > 400
    for s in digits:
        a = s.attrs
        assert digits_mentioned(s.caption) == {a["digit"]}, (s.caption, a)
        assert mentioned(s.caption, COLOUR_WORDS) <= {a["colour"], a["background"]}, (s.caption, a)
        if "handwritten" in s.caption:
            assert a["font"] == synth.HAND
    assert {s.attrs["digit"] for s in digits} == set(range(10))


def test_evaluation_prompts_are_in_distribution(samples):
    captions = {s.caption for s in samples}
    assert any(re.fullmatch(r'a photo of the number: "\d"\.', c) for c in captions)
    colours, shapes = "|".join(synth.COLOURS), "|".join(synth.SHAPES)
    assert any(re.fullmatch(rf"a photo of a ({colours}) ({shapes})\.", c) for c in captions)
    assert synth.DIGIT_TEMPLATES[0] == 'a photo of the number: "{}".'
    assert "a photo of a {}." in synth.SHAPE_TEMPLATES
    # synonyms are used, but the canonical words dominate
    assert any("violet" in c or "turquoise" in c or "disc" in c for c in captions)


# ---------------------------------------------------------------------------
# What is drawn matches the attributes
# ---------------------------------------------------------------------------


def foreground(s) -> np.ndarray:
    """Pixels far from the background colour (read from the corners)."""
    img = pixels(s.image)
    corners = np.concatenate([img[:3, :3].reshape(-1, 3), img[-3:, -3:].reshape(-1, 3)])
    bg = np.median(corners, 0)
    return np.abs(img - bg).sum(-1) > 90


def test_shapes_are_drawn_in_their_colour_and_place():
    world = SynthWorld(seed=5, mix={"shape": 1.0})
    for i in range(150):
        s = world.sample(i)
        a, img = s.attrs, pixels(s.image)
        fg = foreground(s)
        assert fg.sum() > 20, a
        rgb = np.median(img[fg], 0)
        assert np.abs(rgb - a["objects"][0]["rgb"]).max() < 30, (rgb, a)
        ys, xs = np.nonzero(fg)
        cx, cy = xs.mean() / 64, ys.mean() / 64
        where = {"left": cx < 0.4, "right": cx > 0.6, "top": cy < 0.4, "bottom": cy > 0.6,
                 "centre": abs(cx - 0.5) < 0.1 and abs(cy - 0.5) < 0.1}[a["position"]]
        assert where, (a["position"], cx, cy)
        side = max(np.ptp(xs), np.ptp(ys)) / 64  # largest side of the drawn bbox
        assert (side > 0.38) if a["size"] == "large" else (side < 0.36), (a["size"], side)


def test_count_scenes_show_that_many_separate_objects():
    from scipy import ndimage  # scikit-learn's dependency

    world = SynthWorld(seed=2, mix={"count": 1.0})
    for i in range(100):
        s = world.sample(i)
        labels, _ = ndimage.label(foreground(s))
        blobs = (np.bincount(labels.ravel())[1:] >= 8).sum()  # a star's thin tip may break off
        assert blobs == s.attrs["count"], (s.caption, blobs)


def test_mnist_style_digits_are_white_on_black_and_centred():
    world = SynthWorld(seed=0, mix={"digit": 1.0})
    mnist = [s for s in (world.sample(i) for i in range(300)) if s.attrs["style"] == "mnist"]
    assert 0.4 < len(mnist) / 300 < 0.6  # about half of all digits
    for s in mnist:
        g = pixels(s.image).mean(-1)
        assert g[:4].max() < 40 and g[:, :4].max() < 40  # black border
        ink = g > 128
        ys, xs = np.nonzero(ink)
        assert abs(xs.mean() - 32) < 10 and abs(ys.mean() - 32) < 10
        assert 0.02 < ink.mean() < 0.35, ink.mean()  # MNIST: 0.13 of pixels above half (0.05-0.21)


def test_half_of_mnist_style_digits_are_drawn_at_28_pixels_and_upsampled():
    from PIL import Image

    world = SynthWorld(seed=1, mix={"digit": 1.0})
    mnist = [s for s in (world.sample(i) for i in range(300)) if s.attrs["style"] == "mnist"]
    low = [s for s in mnist if s.attrs["resolution"] == 28]
    assert {s.attrs["resolution"] for s in mnist} == {28, 64}
    assert 0.3 < len(low) / len(mnist) < 0.7

    def detail(s):  # what a 28-pixel round trip removes: fine detail above MNIST's resolution
        a = pixels(s.image)
        b = pixels(s.image.resize((28, 28), Image.BOX).resize((64, 64), Image.BICUBIC))
        return np.abs(a - b).mean()

    sharp = [s for s in mnist if s.attrs["resolution"] == 64]
    assert np.mean([detail(s) for s in low]) < 0.7 * np.mean([detail(s) for s in sharp])
    other = [s for s in (world.sample(i) for i in range(300, 400)) if s.attrs["style"] != "mnist"]
    assert all(s.attrs["resolution"] == 64 for s in other)


def test_digits_come_from_several_typefaces_and_pen_strokes(samples):
    fonts = {s.attrs["font"] for s in samples if s.attrs["kind"] == "digit"}
    assert synth.HAND in fonts and len(fonts) >= 5, fonts


# ---------------------------------------------------------------------------
# Held-out pairs
# ---------------------------------------------------------------------------


def pairs_drawn(sample) -> set[tuple[str, str]]:
    return {(o["colour"], o["shape"]) for o in sample.attrs.get("objects", [])}


def test_heldout_pairs_form_a_latin_square():
    assert len(HELDOUT_PAIRS) == len(synth.COLOURS) == len(synth.SHAPES)
    assert {c for c, _ in HELDOUT_PAIRS} == set(synth.COLOURS)
    assert {s for _, s in HELDOUT_PAIRS} == set(synth.SHAPES)


@pytest.mark.parametrize("split", ["train", "val"])
def test_training_splits_never_render_a_heldout_pair(split):
    world = SynthWorld(seed=11, split=split, mix={"shape": 1, "count": 1, "relation": 1})
    held, drawn = set(HELDOUT_PAIRS), set()
    for i in range(3000):
        drawn |= pairs_drawn(world.sample(i))
    assert not drawn & held
    assert drawn == set(synth.train_pairs())  # and every other pair does appear


def test_heldout_split_renders_only_heldout_pairs():
    world = SynthWorld(seed=0, split="heldout")
    drawn, kinds = set(), set()
    for i in range(400):
        s = world.sample(i)
        kinds.add(s.attrs["kind"])
        drawn |= pairs_drawn(s)
    assert kinds == {"shape", "count", "relation"}
    assert drawn == set(HELDOUT_PAIRS)


# ---------------------------------------------------------------------------
# Fonts
# ---------------------------------------------------------------------------


def test_font_fallback_when_no_font_file_is_found(monkeypatch):
    from clipkit.data.synth import world

    monkeypatch.setattr(world, "discover_fonts", lambda dirs=None: [])
    world = SynthWorld(seed=0, mix={"digit": 1.0}, hand_share=0.0)
    assert world.fonts == ((synth.PILLOW_DEFAULT_FONT, "Pillow default"),)
    for i in range(20):
        s = world.sample(i)
        assert s.attrs["font"] == synth.PILLOW_DEFAULT_FONT
        assert np.ptp(pixels(s.image)) > 100  # the digit is drawn
    assert SynthWorld(fonts=[]).fonts == world.fonts


def test_font_discovery_keeps_digit_fonts_and_rejects_symbol_fonts(tmp_path):
    import matplotlib

    ttf = os.path.join(os.path.dirname(matplotlib.__file__), "mpl-data", "fonts", "ttf")
    # Under innocent names, so that only the glyph checks can tell.
    for src, dst in [("DejaVuSans.ttf", "Alpha.ttf"), ("cmr10.ttf", "Beta.ttf"),
                     ("LastResortHE-Regular.ttf", "Gamma.ttf"), ("cmsy10.ttf", "Delta.ttf"),
                     ("DejaVuSansDisplay.ttf", "Epsilon.ttf")]:
        shutil.copy(os.path.join(ttf, src), tmp_path / dst)
    (tmp_path / "Broken.ttf").write_bytes(b"not a font")
    found = {os.path.basename(p) for p, _ in synth.discover_fonts([str(tmp_path)])}
    assert found == {"Alpha.ttf", "Beta.ttf"}


# ---------------------------------------------------------------------------
# Warping
# ---------------------------------------------------------------------------


def test_warp_without_distortion_is_a_pure_translation():
    rng = np.random.default_rng(0)
    mask = rng.random((20, 20)).astype(np.float32)
    out = synth._warp(mask, anchor=(10.0, 10.0), n=40, centre=(23.0, 17.0), scale=1.0, rotation=0.0,
                      shear=0.0, aspect=1.0, elastic=None)
    assert np.allclose(out[7:27, 13:33], mask, atol=1e-5)
    assert out.sum() == pytest.approx(mask.sum(), rel=1e-5)


def test_elastic_field_has_the_requested_size_and_is_smooth():
    dx, dy = synth._elastic_field(np.random.default_rng(0), 64, rms=3.0)
    assert np.sqrt((dx ** 2 + dy ** 2).mean() / 2) == pytest.approx(3.0, rel=1e-3)
    assert np.abs(np.diff(dx, axis=1)).max() < 1.0  # neighbours move together


# ---------------------------------------------------------------------------
# torch Dataset and workers
# ---------------------------------------------------------------------------


def test_dataset_with_two_workers_matches_direct_sampling():
    world = SynthWorld(seed=4, image_size=32)
    data = SynthDataset(world, length=12, transform=synth.to_tensor)
    loader = torch.utils.data.DataLoader(data, batch_size=3, num_workers=2, multiprocessing_context="spawn")
    images, captions = [], []
    for x, c in loader:
        images.append(x)
        captions += list(c)
    images = torch.cat(images)
    assert images.shape == (12, 3, 32, 32) and images.dtype == torch.float32
    for i in range(12):
        s = world.sample(i)
        assert captions[i] == s.caption
        assert torch.equal(images[i], synth.to_tensor(s.image))
    assert data.attrs(5) == world.sample(5).attrs
    with pytest.raises(IndexError):
        data[12]


def test_dataset_default_length_is_large_and_offset_shifts_the_stream():
    world = SynthWorld(seed=0)
    assert len(SynthDataset(world)) >= 2**24
    shifted = SynthDataset(world, offset=100)
    assert shifted[0][1] == world.sample(100).caption
    stream = world.iter_samples(start=7)
    assert [next(stream).caption for _ in range(3)] == [world.sample(i).caption for i in (7, 8, 9)]


# ---------------------------------------------------------------------------
# Evaluation sets
# ---------------------------------------------------------------------------


def test_colour_shape_eval_set_heldout():
    ev = synth.colour_shape_eval_set(n_per_pair=3, seed=0)
    assert len(ev) == 3 * len(HELDOUT_PAIRS)
    assert ev.classnames == synth.classnames_colour_shape() and len(ev.classnames) == 81
    assert "a photo of a {}." in ev.templates
    for label, attrs in zip(ev.labels, ev.attrs):
        assert ev.classnames[label] == f"{attrs['colour']} {attrs['shape']}"
        assert (attrs["colour"], attrs["shape"]) in HELDOUT_PAIRS
    assert {ev.classnames[y] for y in ev.labels} == set(synth.classnames_colour_shape(HELDOUT_PAIRS))
    # the signature the trainer calls, with seen pairs
    seen = synth.colour_shape_eval_set(n=144, seed=0, image_size=32, split="val")
    assert len(seen) == 144 and seen.images[0].size == (32, 32)
    assert not {(a["colour"], a["shape"]) for a in seen.attrs} & set(HELDOUT_PAIRS)


def test_digit_eval_set_is_balanced_and_labelled():
    ev = synth.digit_eval_set(n=40, seed=1, image_size=32, style="mnist")
    assert ev.classnames == [str(d) for d in range(10)] and ev.templates[0] == 'a photo of the number: "{}".'
    assert np.bincount(ev.labels).tolist() == [4] * 10
    assert all(a["digit"] == y and a["style"] == "mnist" for a, y in zip(ev.attrs, ev.labels))


def test_count_and_relation_eval_sets_carry_per_image_candidates():
    counts = synth.count_eval_set(n=8, seed=0)
    assert counts.classnames == ["one", "two", "three", "four"]
    for y, a, cands in zip(counts.labels, counts.attrs, counts.candidates):
        assert a["count"] == y + 1 and len(a["objects"]) == y + 1
        assert cands[y].startswith(NUMBER_WORDS[y + 1]) and a["colour"] in cands[y]
    rel = synth.relation_eval_set(n=8, seed=0)
    assert rel.classnames == list(synth.RELATIONS)
    for y, a, cands in zip(rel.labels, rel.attrs, rel.candidates):
        assert a["relation"] == rel.classnames[y]
        assert f" {a['relation']} " in cands[y] and cands[y].startswith(("a ", "an "))
