"""clipkit.transforms: torchvision parity, mode conversion, EXIF, loading errors, user transforms.

The parity fixtures (tests/fixtures/preprocess/) were written by
tests/make_preprocess_fixture.py with torchvision in a separate venv; see its docstring
for what "expected" means per mode. Nothing here needs torchvision.
"""
from __future__ import annotations

import io
import json
import pickle
import struct
import warnings
import zlib
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from PIL import Image, ImageFile, ImageOps

from clipkit.models.config import CLIP_MEAN, CLIP_STD
from clipkit.transforms import (
    ImageLoadError, Preprocess, apply_transform, center_crop_box, ensure_image_tensor, image_transform,
    load_image, resized_size, resolve_transform, to_rgb,
)

FIXTURES = Path(__file__).parent / "fixtures" / "preprocess"
MANIFEST = json.loads((FIXTURES / "cases.json").read_text())
CASES = MANIFEST["cases"]


@pytest.fixture(scope="module")
def expected():
    """case -> torchvision's float tensor, rebuilt exactly from (uint8 crop, per-channel table)."""
    data = np.load(FIXTURES / "expected.npz")
    lut = torch.from_numpy(data["lut"])  # (3, 256)
    out = {}
    for case in CASES:
        u8 = torch.from_numpy(data[case].copy()).permute(2, 0, 1).long()  # (3, S, S)
        out[case] = lut[torch.arange(3)[:, None, None], u8]
    return out


def _rgb_pattern(w: int, h: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, size=(h, w, 3), dtype=np.uint8)


# ---------------------------------------------------------------------------
# parity with torchvision (fixtures)
# ---------------------------------------------------------------------------

def test_fixture_covers_every_mode_and_odd_size():
    modes = {c["mode"] for c in CASES.values()}
    assert {"1", "L", "LA", "P", "PA", "RGB", "RGBA", "CMYK", "YCbCr", "LAB", "I;16", "I;16B", "I", "F"} <= modes
    sizes = {tuple(c["source_size"]) for c in CASES.values() if c["mode"] == "RGB"}
    assert {(1, 1), (1, 300), (300, 1), (7, 5), (257, 999), (640, 480)} <= sizes
    assert {c["size"] for c in CASES.values()} >= {64, 224}
    assert tuple(MANIFEST["_mean"]) == CLIP_MEAN and tuple(MANIFEST["_std"]) == CLIP_STD
    assert "P_trns_index@64" in CASES and "P_trns_bytes@64" in CASES and "exif6@64" in CASES


@pytest.mark.parametrize("case", sorted(CASES))
def test_matches_torchvision(case, expected):
    spec = CASES[case]
    pre = Preprocess(spec["size"])
    with Image.open(FIXTURES / spec["file"]) as img:
        assert img.mode == spec["mode"]
        got = pre(img)
    want = expected[case]
    assert got.dtype == torch.float32 and got.shape == (3, spec["size"], spec["size"])
    assert (got - want).abs().max().item() <= 1e-6
    # a path goes through load_image and must give the same tensor
    assert torch.equal(pre(FIXTURES / spec["file"]), got)
    assert torch.equal(pre(str(FIXTURES / spec["file"])), got)


def test_bit_identical_to_torchvision(expected):
    """Stronger than the 1e-6 tolerance: the same float32 operations give the same bits
    (a multiply by 1/std instead of a divide by std would already fail here)."""
    for case, spec in CASES.items():
        assert torch.equal(Preprocess(spec["size"])(FIXTURES / spec["file"]), expected[case]), case


def test_fixture_detects_the_alternatives(expected):
    """The fixtures are sharp enough to catch the mistakes they are there for."""
    # half-up instead of round-half-even crop offset (69 - 64 = 5 -> 2.5)
    img = load_image(FIXTURES / "rgb_64x69.png")
    pre = Preprocess(64)
    shifted = pre(img.crop((0, 1, 64, 69)))  # what an offset of 3 would have given
    assert not torch.allclose(shifted, expected["rgb_64x69@64"])
    # OpenAI's drop-alpha conversion differs where the image is transparent...
    with Image.open(FIXTURES / "rgba.png") as rgba:
        dropped = pre(rgba.convert("RGB"))
    assert (dropped - expected["rgba@64"]).abs().max() > 0.5
    # ... but not on a fully opaque image
    with Image.open(FIXTURES / "rgba_opaque.png") as opaque:
        assert torch.equal(pre(opaque.convert("RGB")), expected["rgba_opaque@64"])
    # ignoring EXIF, or rotating the wrong way, gives another picture
    with Image.open(FIXTURES / "exif6.png") as raw:
        stripped = Image.fromarray(np.asarray(raw))  # same pixels, no EXIF
    assert not torch.allclose(pre(stripped), expected["exif6@64"])
    assert not torch.allclose(pre(stripped.transpose(Image.Transpose.ROTATE_90)), expected["exif6@64"])
    assert torch.equal(pre(stripped.transpose(Image.Transpose.ROTATE_270)), expected["exif6@64"])


# ---------------------------------------------------------------------------
# geometry
# ---------------------------------------------------------------------------

@pytest.mark.parametrize("w,h,size,want", [
    (640, 480, 224, (298, 224)),     # int(224 * 640 / 480) = int(298.67)
    (257, 999, 224, (224, 870)),     # int(870.66)
    (1, 300, 64, (64, 19200)),
    (300, 1, 64, (19200, 64)),
    (7, 5, 64, (89, 64)),            # int(89.6)
    (64, 64, 64, (64, 64)),
    (3, 7, 2, (2, 4)),               # int(4.67): truncation, not rounding
])
def test_resized_size(w, h, size, want):
    assert resized_size(w, h, size) == want


@pytest.mark.parametrize("w,h,want_top", [(64, 65, 0), (64, 67, 2), (64, 69, 2), (64, 71, 4), (64, 64, 0)])
def test_center_crop_rounds_half_to_even(w, h, want_top):
    # (h - 64) / 2 = 0.5, 1.5, 2.5, 3.5 -> Python's round: 0, 2, 2, 4
    left, top, right, bottom = center_crop_box(w, h, 64)
    assert (left, top, right - left, bottom - top) == (0, want_top, 64, 64)
    assert center_crop_box(h, w, 64)[0] == want_top


# ---------------------------------------------------------------------------
# to_rgb
# ---------------------------------------------------------------------------

def _modes_via_pil(rgb: np.ndarray) -> dict[str, Image.Image]:
    base = Image.fromarray(rgb)
    return {
        "1": base.convert("1"), "L": base.convert("L"), "P": base.quantize(17),
        "CMYK": base.convert("CMYK"), "YCbCr": base.convert("YCbCr"), "LAB": base.convert("LAB"),
        "HSV": base.convert("HSV"), "RGBX": base.convert("RGBX"),
        "CMYK_raw": Image.frombytes("CMYK", base.size, np.dstack([rgb, rgb[..., :1]]).tobytes()),
    }


@pytest.mark.parametrize("name", ["1", "L", "P", "CMYK", "YCbCr", "LAB", "HSV", "RGBX", "CMYK_raw"])
def test_to_rgb_is_pils_convert_for_opaque_modes(name):
    img = _modes_via_pil(_rgb_pattern(13, 9))[name]
    out = to_rgb(img)
    assert out.mode == "RGB" and out.size == (13, 9)
    assert np.array_equal(np.asarray(out), np.asarray(img.convert("RGB")))


def test_to_rgb_returns_rgb_input_itself():
    img = Image.fromarray(_rgb_pattern(5, 4))
    assert to_rgb(img) is img
    with pytest.raises(TypeError, match="PIL image"):
        to_rgb(np.zeros((4, 4, 3), np.uint8))


def _composite_ref(rgba: np.ndarray, bg=(255, 255, 255)) -> np.ndarray:
    c, a = rgba[..., :3].astype(np.int64), rgba[..., 3:].astype(np.int64)
    return ((c * a + np.asarray(bg) * (255 - a) + 127) // 255).astype(np.uint8)


def test_to_rgb_composites_alpha_onto_white():
    c, a = np.meshgrid(np.arange(256), np.arange(256))  # every (colour, alpha) pair
    rgba = np.stack([c, 255 - c, c // 2, a], -1).astype(np.uint8)
    img = Image.fromarray(rgba)
    out = np.asarray(to_rgb(img))
    assert np.array_equal(out, _composite_ref(rgba))
    assert (out[0] == 255).all()                        # alpha 0 -> white
    assert np.array_equal(out[255], rgba[255, :, :3])   # alpha 255 -> the colour
    # another background, and OpenAI's drop-alpha behaviour
    assert np.array_equal(np.asarray(to_rgb(img, background=(10, 20, 30))), _composite_ref(rgba, (10, 20, 30)))
    assert np.array_equal(np.asarray(to_rgb(img, background=None)), rgba[..., :3])


def test_to_rgb_alpha_modes():
    rng = np.random.default_rng(1)
    gray = rng.integers(0, 256, (6, 8), dtype=np.uint8)
    alpha = rng.integers(0, 256, (6, 8), dtype=np.uint8)
    alpha[0] = 0
    la = Image.fromarray(np.stack([gray, alpha], -1))
    assert la.mode == "LA"
    want = _composite_ref(np.asarray(la.convert("RGBA")))
    assert np.array_equal(np.asarray(to_rgb(la)), want)
    assert (np.asarray(to_rgb(la))[0] == 255).all()
    # premultiplied variants (PIL cannot convert La to RGB directly)
    la_pre = Image.frombytes("La", la.size, la.tobytes())
    assert to_rgb(la_pre).mode == "RGB" and (np.asarray(to_rgb(la_pre))[0] == 255).all()
    assert to_rgb(la_pre, background=None).mode == "RGB"
    rgba_pre = Image.fromarray(np.dstack([np.stack([gray] * 3, -1), alpha])).convert("RGBa")
    assert np.array_equal(np.asarray(to_rgb(rgba_pre)), _composite_ref(np.asarray(rgba_pre.convert("RGBA"))))
    # PA
    pa = Image.fromarray(_rgb_pattern(8, 6)).quantize(9).convert("PA")
    pa.putalpha(Image.fromarray(alpha))
    assert np.array_equal(np.asarray(to_rgb(pa)), _composite_ref(np.asarray(pa.convert("RGBA"))))


def test_to_rgb_palette_and_trns_transparency():
    p = Image.fromarray(_rgb_pattern(8, 6)).quantize(5)
    idx = np.asarray(p)
    p.info["transparency"] = int(idx[0, 0])          # one transparent palette entry
    out = np.asarray(to_rgb(p))
    assert (out[idx == idx[0, 0]] == 255).all()
    assert np.array_equal(out[idx != idx[0, 0]], np.asarray(p.convert("RGBA"))[idx != idx[0, 0]][:, :3])
    p.info["transparency"] = bytes([0, 64, 128, 192, 255])  # per-entry alpha
    assert np.array_equal(np.asarray(to_rgb(p)), _composite_ref(np.asarray(p.convert("RGBA"))))
    # tRNS colour on an RGB image
    rgb = _rgb_pattern(8, 6)
    rgb[2:4, 2:4] = (1, 2, 3)
    img = Image.fromarray(rgb)
    img.info["transparency"] = (1, 2, 3)
    out = np.asarray(to_rgb(img))
    assert (out[2:4, 2:4] == 255).all() and np.array_equal(out[0], rgb[0])


def _i16(values: np.ndarray, mode: str = "I;16") -> Image.Image:
    dtype = ">u2" if mode == "I;16B" else "<u2"
    return Image.frombytes(mode, (values.shape[1], values.shape[0]), values.astype(dtype).tobytes())


@pytest.mark.parametrize("mode", ["I;16", "I;16L", "I;16B"])
def test_to_rgb_scales_16bit_instead_of_clipping(mode):
    ramp = np.linspace(0, 65535, 512).round().astype(np.uint16).reshape(8, 64)
    img = _i16(ramp, mode)
    out = np.asarray(to_rgb(img))
    assert out.shape == (8, 64, 3) and (out[..., 0] == out[..., 2]).all()
    v = out[..., 0].ravel()
    assert v.min() == 0 and v.max() == 255 and (np.diff(v.astype(int)) >= 0).all()
    assert len(np.unique(v)) == 256                           # the whole 8-bit range is used
    assert np.array_equal(v, np.rint(ramp.ravel() / 257).astype(np.uint8))
    # PIL's own conversion clips: almost everything is white
    assert (np.asarray(img.convert("RGB"))[..., 0] == 255).mean() > 0.99


@settings(max_examples=40, deadline=None)
@given(st.lists(st.integers(0, 65535), min_size=1, max_size=48))
def test_to_rgb_16bit_is_round_v_over_257(values):
    arr = np.array(values, np.uint16)[None, :]
    got = np.asarray(to_rgb(_i16(arr)))[0, :, 0].astype(int)
    assert (np.abs(got - arr[0] / 257.0) <= 0.5).all()
    assert np.array_equal(np.asarray(to_rgb(_i16(arr, "I;16B"))), np.asarray(to_rgb(_i16(arr))))


def test_to_rgb_16bit_trns_and_rgba_palette():
    img = _i16(np.array([[0, 1000, 65535, 1000]], np.uint16))
    img.info["transparency"] = 1000                 # a PNG tRNS grey level
    assert np.asarray(to_rgb(img))[0, :, 0].tolist() == [0, 255, 255, 255]
    assert np.asarray(to_rgb(img, background=(0, 0, 0)))[0, :, 0].tolist() == [0, 0, 255, 0]
    p = Image.new("P", (2, 1))
    p.putpalette([10, 20, 30, 0, 40, 50, 60, 255], rawmode="RGBA")  # alpha in the palette itself
    p.putdata([0, 1])
    assert p.palette.mode == "RGBA" and "transparency" not in p.info
    assert np.asarray(to_rgb(p)).tolist() == [[[255, 255, 255], [40, 50, 60]]]


def _img_i(values) -> Image.Image:
    a = np.asarray(values, np.int64)[None, :]
    return Image.frombytes("I", (a.shape[1], 1), a.astype("<i4").tobytes())


def test_to_rgb_32bit_int_rules():
    def gray(values):
        return np.asarray(to_rgb(_img_i(values)))[0, :, 0].tolist()

    assert gray([-7, 0, 17, 255]) == [0, 0, 17, 255]                     # 8-bit data: as is
    assert gray([0, 256, 32896, 65535]) == [0, 1, 128, 255]              # 16-bit data: / 257
    assert gray([-(2**31), 0, 2**30, 2**31 - 1]) == [0, 0, 128, 255]     # 32-bit: * 255 / (2**31-1)


def _img_f(values) -> Image.Image:
    a = np.asarray(values, np.float32)[None, :]
    return Image.frombytes("F", (a.shape[1], 1), a.astype("<f4").tobytes())


def test_to_rgb_float_rules():
    def gray(values):
        return np.asarray(to_rgb(_img_f(values)))[0, :, 0].tolist()

    assert gray([0.0, 0.25, 0.5, 1.0]) == [0, 64, 128, 255]              # [0, 1] -> * 255
    assert gray([-3.0, 0.4, 2.0, 100.6, 300.0]) == [0, 0, 2, 101, 255]   # else clip to [0, 255]
    assert gray([np.nan, 0.5, 1.0]) == [0, 128, 255]                     # NaN -> 0 and ignored
    assert gray([np.inf, -np.inf, 7.0]) == [255, 0, 7]


# ---------------------------------------------------------------------------
# EXIF orientation
# ---------------------------------------------------------------------------

def _with_orientation(arr: np.ndarray, orientation: int, path: Path, fmt: str) -> Path:
    exif = Image.Exif()
    exif[0x0112] = orientation
    Image.fromarray(arr).save(path, fmt, exif=exif.tobytes(), **({"quality": 100} if fmt == "JPEG" else {}))
    return path


def test_exif_orientation_6_rotates_clockwise(tmp_path):
    arr = np.zeros((20, 40, 3), np.uint8)  # stored 40 wide x 20 high
    arr[:, :20] = (255, 0, 0)               # left half red
    arr[:, 20:] = (0, 0, 255)               # right half blue
    for fmt in ("PNG", "JPEG"):
        img = load_image(_with_orientation(arr, 6, tmp_path / f"o6.{fmt.lower()}", fmt))
        assert img.size == (20, 40) and img.mode == "RGB"     # displayed 20 wide x 40 high
        top, bottom = np.asarray(img)[5, 10], np.asarray(img)[35, 10]
        assert top[0] > 200 and top[2] < 50                   # stored left (red) is now on top
        assert bottom[2] > 200 and bottom[0] < 50
        assert img.getexif().get(0x0112) is None


def test_exif_is_applied_once(tmp_path):
    path = _with_orientation(_rgb_pattern(30, 20), 8, tmp_path / "o8.png", "PNG")
    pre = Preprocess(16)
    with Image.open(path) as raw:
        assert raw.size == (30, 20)
        from_pil = pre(raw)                    # a PIL image straight from Image.open
    upright = load_image(path)
    assert upright.size == (20, 30)
    assert torch.equal(pre(upright), from_pil)  # already upright: not rotated again
    assert torch.equal(pre(path), from_pil)
    want = Image.fromarray(_rgb_pattern(30, 20)).transpose(Image.Transpose.ROTATE_90)  # 8 = 90 ccw
    assert np.array_equal(np.asarray(upright), np.asarray(want))


def test_fixture_exif6_upright():
    with Image.open(FIXTURES / "exif6.png") as raw:
        img = load_image(FIXTURES / "exif6.png")
        assert raw.size == (40, 30) and img.size == (30, 40)
        assert np.array_equal(np.asarray(img), np.asarray(ImageOps.exif_transpose(raw).convert("RGB")))


# ---------------------------------------------------------------------------
# Preprocess object
# ---------------------------------------------------------------------------

def test_preprocess_pickles_and_reprs():
    pre = image_transform(64, mean=(0.5, 0.5, 0.5), std=(0.25, 0.25, 0.25))
    assert isinstance(pre, Preprocess)
    assert (pre.image_size, pre.mean, pre.std) == (64, (0.5, 0.5, 0.5), (0.25, 0.25, 0.25))
    back = pickle.loads(pickle.dumps(pre))
    assert back == pre and repr(back) == repr(pre)
    assert repr(pre) == "Preprocess(image_size=64, mean=(0.5, 0.5, 0.5), std=(0.25, 0.25, 0.25))"
    img = Image.fromarray(_rgb_pattern(80, 70))
    assert torch.equal(back(img), pre(img))
    assert Preprocess() == Preprocess(224, CLIP_MEAN, CLIP_STD) and Preprocess().mean == CLIP_MEAN


def test_preprocess_custom_stats_and_no_mutation():
    arr = _rgb_pattern(64, 64)
    img = Image.fromarray(arr)
    out = Preprocess(64, mean=(0, 0, 0), std=(1, 1, 1))(img)
    assert torch.equal(out, torch.from_numpy(arr).permute(2, 0, 1).float() / 255)   # no resize, no crop
    assert np.array_equal(np.asarray(img), arr) and img.mode == "RGB"


@pytest.mark.parametrize("bad", [0, -3, 2.5, True, "224"])
def test_preprocess_rejects_bad_size(bad):
    with pytest.raises(ValueError, match="image_size"):
        Preprocess(bad)


def test_preprocess_rejects_bad_inputs():
    with pytest.raises(ValueError, match="3 values"):
        Preprocess(32, mean=(0.5, 0.5))
    with pytest.raises(ValueError, match="std"):
        Preprocess(32, std=(1, 0, 1))
    pre = Preprocess(32)
    with pytest.raises(TypeError, match="already a tensor"):
        pre(torch.zeros(3, 32, 32))
    with pytest.raises(TypeError, match="PIL image or a file path"):
        pre(np.zeros((32, 32, 3), np.uint8))
    with pytest.raises(ValueError, match="empty image"):
        pre(Image.new("RGB", (0, 5)))


# ---------------------------------------------------------------------------
# user transforms and preprocessed tensors
# ---------------------------------------------------------------------------

def test_resolve_transform():
    assert resolve_transform(None, 48) == Preprocess(48)
    assert resolve_transform(None, 48, (0.1, 0.2, 0.3), (1, 2, 3)) == Preprocess(48, (0.1, 0.2, 0.3), (1, 2, 3))

    def mine(img):
        return torch.zeros(3, 48, 48)

    assert resolve_transform(mine, 48) is mine
    for bad in (42, "bicubic", [mine]):
        with pytest.raises(TypeError, match="callable"):
            resolve_transform(bad, 48)


def test_apply_transform_accepts_a_user_callable():
    calls = []

    class Compose:  # stands in for a user's torchvision Compose
        def __call__(self, img):
            calls.append(img.size)
            return torch.full((3, 16, 16), 0.5)

    img = Image.fromarray(_rgb_pattern(20, 20))
    out = apply_transform(Compose(), img, 16)
    assert calls == [(20, 20)] and torch.equal(out, torch.full((3, 16, 16), 0.5))
    assert torch.equal(apply_transform(None, img, 16), Preprocess(16)(img))
    with pytest.raises(TypeError, match="returned a Image"):
        apply_transform(lambda im: im, img, 16)
    with pytest.raises(ValueError, match=r"\(3, 16, 16\).*wrong resolution"):
        apply_transform(lambda im: torch.zeros(3, 32, 32), img, 16)
    with pytest.raises(TypeError, match="dtype torch.uint8"):
        apply_transform(lambda im: torch.zeros(3, 16, 16, dtype=torch.uint8), img, 16)


def test_ensure_image_tensor():
    one, batch = torch.zeros(3, 32, 32), torch.zeros(5, 3, 32, 32, dtype=torch.float16)
    assert ensure_image_tensor(one, 32) is one and ensure_image_tensor(batch, 32) is batch
    with pytest.raises(TypeError, match=r"floating-point tensor of shape \(3, 32, 32\) or \(B, 3, 32, 32\).*uint8"):
        ensure_image_tensor(torch.zeros(3, 32, 32, dtype=torch.uint8), 32)
    with pytest.raises(TypeError, match="got ndarray"):
        ensure_image_tensor(np.zeros((3, 32, 32), np.float32), 32)
    with pytest.raises(ValueError, match=r"got shape \(32, 32, 3\).*channels last"):
        ensure_image_tensor(torch.zeros(32, 32, 3), 32)
    with pytest.raises(ValueError, match=r"\(B, 3, 32, 32\); got shape \(2, 3, 64, 64\)"):
        ensure_image_tensor(torch.zeros(2, 3, 64, 64), 32)
    for shape in [(1, 32, 32), (32, 32), (1, 1, 3, 32, 32)]:
        with pytest.raises(ValueError, match="got shape"):
            ensure_image_tensor(torch.zeros(shape), 32)


# ---------------------------------------------------------------------------
# load_image errors
# ---------------------------------------------------------------------------

def _expect_load_error(path, *fragments):
    with pytest.raises(ImageLoadError) as info:
        load_image(path)
    err = info.value
    assert isinstance(err, ValueError)
    assert err.path == str(path) and str(path) in str(err)
    for frag in fragments:
        assert frag in str(err), (frag, str(err))
    return err


def test_load_image_missing_and_not_an_image(tmp_path):
    _expect_load_error(tmp_path / "missing.png", "file not found")
    _expect_load_error(tmp_path, "directory")
    (tmp_path / "notes.jpg").write_text("definitely not a JPEG")
    _expect_load_error(tmp_path / "notes.jpg", "not an image file")
    with pytest.raises(ImageLoadError, match="file not found"):
        Preprocess(32)(tmp_path / "missing.png")  # paths given to Preprocess too
    with pytest.raises(TypeError, match="file path"):
        load_image(Image.new("RGB", (2, 2)))


@pytest.mark.parametrize("fmt", ["PNG", "JPEG"])
def test_load_image_truncated(tmp_path, monkeypatch, fmt):
    monkeypatch.setattr(ImageFile, "LOAD_TRUNCATED_IMAGES", False)
    buf = io.BytesIO()
    Image.fromarray(_rgb_pattern(64, 48)).save(buf, fmt)
    path = tmp_path / f"cut.{fmt.lower()}"
    path.write_bytes(buf.getvalue()[: len(buf.getvalue()) * 2 // 3])
    with Image.open(path) as lazy:
        assert lazy.size == (64, 48)  # the header alone looks fine: only decoding fails
    _expect_load_error(path, "truncated")


def _png_header_only(width: int, height: int) -> bytes:
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IEND", b"")


def test_load_image_decompression_bomb(tmp_path):
    path = tmp_path / "bomb.png"
    path.write_bytes(_png_header_only(100_000, 100_000))  # 10 gigapixels claimed in 45 bytes
    assert Image.MAX_IMAGE_PIXELS is not None             # the guard is on (clipkit leaves it on)
    _expect_load_error(path, "10,000,000,000 pixels", "CLIPKIT_MAX_IMAGE_PIXELS=10000000000",
                       "PIL.Image.MAX_IMAGE_PIXELS = 10000000000")


def test_load_image_bomb_limit_lowered(monkeypatch):
    path = FIXTURES / "rgb_257x999.png"
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 257 * 999 // 3)   # image is 3x the limit
    _expect_load_error(path, "256,743 pixels", "more than the limit of 85,581", "MAX_IMAGE_PIXELS = 256743")


def test_load_image_refuses_between_one_and_two_times_the_limit(monkeypatch):
    # PIL alone decodes these (10000 x 10000 = 1.1x its default: 910 MB) with a warning
    path = FIXTURES / "rgb_257x999.png"
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 257 * 999 * 2 // 3)  # 1.5x the limit
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # and no warning on the way
        _expect_load_error(path, "256,743 pixels", "more than the limit")


def test_pixel_limit_from_the_environment(monkeypatch):
    path = FIXTURES / "rgb_257x999.png"
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", Image.MAX_IMAGE_PIXELS)  # restored afterwards
    monkeypatch.setenv("CLIPKIT_MAX_IMAGE_PIXELS", "100_000")
    _expect_load_error(path, "256,743 pixels", "limit of 100,000")
    monkeypatch.setenv("CLIPKIT_MAX_IMAGE_PIXELS", str(257 * 999))
    assert load_image(path).size == (257, 999)
    monkeypatch.setenv("CLIPKIT_MAX_IMAGE_PIXELS", "lots")
    with pytest.raises(ImageLoadError, match="not a number of pixels"):
        load_image(path)


def test_image_load_error_pickles():
    err = ImageLoadError(Path("/x/y.png"), "cannot load image /x/y.png: file not found")
    back = pickle.loads(pickle.dumps(err))
    assert back.path == "/x/y.png" and str(back) == str(err) and isinstance(back, ValueError)


def test_top_level_exports():
    import clipkit

    assert clipkit.Preprocess is Preprocess and clipkit.image_transform is image_transform
    assert clipkit.load_image is load_image
