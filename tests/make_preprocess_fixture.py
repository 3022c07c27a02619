"""Write the preprocessing parity fixtures in tests/fixtures/preprocess/ (run by hand, not in CI).

torchvision has no working build for the CPU torch of the project's venv, so the
reference outputs are produced once in a second venv and committed;
`tests/test_transforms.py` only reads them:

    /work/oracle-venv/bin/python tests/make_preprocess_fixture.py   # torchvision 0.28, Pillow 13

Nothing here imports clipkit: the expected values come from torchvision and from the
conversion rules written out below, not from the code under test.

What "expected" means for a case (source image `src`, model resolution `S`):

    expected = Normalize(CLIP_MEAN, CLIP_STD)(ToTensor()(CenterCrop(S)(
                   Resize(S, interpolation=BICUBIC)(reference_rgb(src)))))

i.e. OpenAI's / open_clip's `_transform` (torchvision v1 transforms on a PIL image),
applied to `reference_rgb(src)`, the RGB image clipkit's documented conversion must give:

* RGB, L, 1, P (no transparency), CMYK, YCbCr, LAB: `src.convert("RGB")` - exactly
  what OpenAI's `_convert_image_to_rgb` does, so these cases are parity with the reference.
* Anything with transparency (LA, PA, RGBA, P with a transparent index or per-index alpha,
  L / RGB with a tRNS colour): PIL's own `src.convert("RGBA")` composited onto white,
  out = round((c*a + 255*(255 - a)) / 255) per channel. OpenAI drops the alpha instead;
  for fully opaque images the two agree (the `rgba_opaque` case checks that).
* I;16 / I;16B (16-bit): round(v / 257), so 0..65535 maps onto 0..255. PIL's convert
  clips everything above 255 to white; the reference here is our documented scaling.
* I (32-bit int): negatives -> 0; then as-is if max <= 255, round(v / 257) if
  max <= 65535, else round(v * 255 / (2**31 - 1)).
* F (float): NaN -> 0; round(v * 255) if every value is in [0, 1], else round(clip(v, 0, 255)).
  (Rounding is to nearest, ties to even.)
* exif6: `ImageOps.exif_transpose(src).convert("RGB")` (orientation 6 = rotate 90° cw).

The float tensor is stored losslessly and compactly as the uint8 (S, S, 3) image that
torchvision's Resize -> CenterCrop produces, plus `lut`, the (3, 256) table of what
ToTensor -> Normalize maps each byte value to in each channel (both transforms are
elementwise per channel); this script asserts that lut[c][u8] equals torchvision's full
float output bit for bit before saving. Files:

    *.png / *.tiff   source images (lossless; TIFF where PNG cannot hold the mode)
    cases.json       case name -> source file, S, source mode and size, reference rule
    expected.npz     `lut` and one `<case>` uint8 (S, S, 3) array per case
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import PIL
import torch
import torchvision
from PIL import Image, ImageOps
from torchvision import transforms as T

OUT = Path(__file__).parent / "fixtures" / "preprocess"
CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
WHITE = 255


# ---------------------------------------------------------------------------
# deterministic source images
# ---------------------------------------------------------------------------

def pattern(w: int, h: int, channels: int, seed: int) -> np.ndarray:
    """(h, w, channels) uint8: gradients, hard-edged random blocks and thin lines.

    Sharp edges make bicubic ringing and the exact crop offset visible; blocky content
    keeps the PNGs small.
    """
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:h, 0:w].astype(np.float64)
    out = np.empty((h, w, channels), np.float64)
    bs = max(6, min(w, h) // 24)  # bigger blocks on big images keep the PNGs small
    blocks = rng.integers(0, 256, size=(h // bs + 1, w // bs + 1, channels))
    for c in range(channels):
        grad = 255 * (0.5 + 0.5 * np.sin(2 * np.pi * (x / max(w, 2) * (c + 1) + y / max(h, 2) * (2 - c % 2))))
        out[..., c] = 0.5 * grad + 0.5 * blocks[(y // bs).astype(int), (x // bs).astype(int), c]
    out[::7, :, :] = 255 - out[::7, :, :]  # thin lines
    out[:, ::11, 0] = 0
    return np.clip(np.rint(out), 0, 255).astype(np.uint8)


def save(img: Image.Image, name: str, **kw) -> str:
    # libtiff would hand deflated YCbCr back as RGB and I;16B as I;16: those stay uncompressed
    if name.endswith(".tiff") and img.mode not in ("YCbCr", "I;16B"):
        kw.setdefault("compression", "tiff_adobe_deflate")  # lossless
    img.save(OUT / name, **kw)
    back = Image.open(OUT / name)
    back.load()
    assert back.mode == img.mode, (name, img.mode, back.mode)
    if img.mode == "P":
        assert np.array_equal(np.asarray(back), np.asarray(img))
        assert back.getpalette() == img.getpalette()
    elif img.mode == "PA":  # the TIFF writer keeps indices, palette and alpha
        assert np.array_equal(np.asarray(back), np.asarray(img)), name
    else:
        assert np.array_equal(np.asarray(back), np.asarray(img), equal_nan=img.mode == "F"), name
    assert back.info.get("transparency") == img.info.get("transparency") or "transparency" in kw
    return name


def make_sources() -> dict[str, str]:
    """Source name -> file name (written into OUT)."""
    s: dict[str, str] = {}
    # odd sizes (w x h) in RGB
    for w, h in [(1, 1), (1, 300), (300, 1), (7, 5), (257, 999), (640, 480), (64, 64), (64, 69), (65, 64)]:
        s[f"rgb_{w}x{h}"] = save(Image.fromarray(pattern(w, h, 3, seed=w * 1000 + h)), f"rgb_{w}x{h}.png")

    # every mode, 97 x 83 (downscaled to 64: exercises the antialiasing filter)
    w, h = 97, 83
    rgb = pattern(w, h, 3, seed=1)
    gray = pattern(w, h, 1, seed=2)[..., 0]
    alpha = pattern(w, h, 1, seed=3)[..., 0]
    alpha[:10] = 0      # fully transparent band
    alpha[-10:] = 255   # fully opaque band
    s["L"] = save(Image.fromarray(gray), "L.png")
    s["1"] = save(Image.fromarray(gray > 127), "1.png")
    s["LA"] = save(Image.fromarray(np.stack([gray, alpha], -1)), "LA.png")
    s["rgba"] = save(Image.fromarray(np.dstack([rgb, alpha])), "rgba.png")
    s["rgba_opaque"] = save(Image.fromarray(np.dstack([rgb, np.full_like(alpha, 255)])), "rgba_opaque.png")

    pal_img = Image.fromarray(rgb).quantize(colors=37, method=Image.Quantize.MEDIANCUT, dither=Image.Dither.NONE)
    s["P"] = save(pal_img, "P.png")
    p_idx = pal_img.copy()
    p_idx.info["transparency"] = 3
    s["P_trns_index"] = save(p_idx, "P_trns_index.png", transparency=3)
    p_bytes = pal_img.copy()
    per_index_alpha = bytes((i * 7) % 256 for i in range(37))
    p_bytes.info["transparency"] = per_index_alpha
    s["P_trns_bytes"] = save(p_bytes, "P_trns_bytes.png", transparency=per_index_alpha)
    pa = pal_img.convert("PA")
    pa.putalpha(Image.fromarray(alpha))
    s["PA"] = save(pa, "PA.tiff")

    trns_rgb = rgb.copy()
    trns_rgb[20:40, 30:60] = (12, 34, 56)
    rgb_trns = Image.fromarray(trns_rgb)
    rgb_trns.info["transparency"] = (12, 34, 56)
    s["RGB_trns"] = save(rgb_trns, "RGB_trns.png", transparency=(12, 34, 56))
    l_trns = Image.fromarray(gray)
    l_trns.info["transparency"] = int(gray[40, 40])
    s["L_trns"] = save(l_trns, "L_trns.png", transparency=int(gray[40, 40]))

    s["CMYK"] = save(Image.frombytes("CMYK", (w, h), pattern(w, h, 4, seed=4).tobytes()), "CMYK.tiff")
    s["YCbCr"] = save(Image.frombytes("YCbCr", (w, h), pattern(w, h, 3, seed=5).tobytes()), "YCbCr.tiff")
    s["LAB"] = save(Image.frombytes("LAB", (w, h), pattern(w, h, 3, seed=6).tobytes()), "LAB.tiff")

    # 16-bit: a full-range gradient plus structure, 0 and 65535 both present
    ramp = np.linspace(0, 65535, w * h).reshape(h, w)
    v16 = np.clip(np.rint(0.6 * ramp + 0.4 * gray.astype(np.float64) * 257), 0, 65535).astype(np.uint16)
    v16[0, 0], v16[-1, -1] = 0, 65535
    s["I16"] = save(Image.frombytes("I;16", (w, h), v16.astype("<u2").tobytes()), "I16.png")
    s["I16B"] = save(Image.frombytes("I;16B", (w, h), v16.astype(">u2").tobytes()), "I16B.tiff")

    s["I_8bit"] = save(Image.frombytes("I", (w, h), gray.astype("<i4").tobytes()), "I_8bit.tiff")
    s["I_16bit"] = save(Image.frombytes("I", (w, h), v16.astype("<i4").tobytes()), "I_16bit.tiff")
    big = (ramp / 65535 * (2**31 - 1)).astype(np.int64) - (2**26)   # some negatives
    big[-1, -1] = 2**31 - 1
    s["I_32bit"] = save(Image.frombytes("I", (w, h), big.astype("<i4").tobytes()), "I_32bit.tiff")

    unit = (gray.astype(np.float32) / 255.0) ** 1.3
    s["F_unit"] = save(Image.frombytes("F", (w, h), unit.astype("<f4").tobytes()), "F_unit.tiff")
    wide = gray.astype(np.float32) * 1.7 - 60.25
    wide[5, 5] = np.nan
    wide[6, 6] = np.inf
    wide[7, 7] = -np.inf
    s["F_wide"] = save(Image.frombytes("F", (w, h), wide.astype("<f4").tobytes()), "F_wide.tiff")

    # EXIF orientation 6: stored 40 x 30, displayed 30 x 40 (rotate 90 degrees clockwise)
    ex = Image.fromarray(pattern(40, 30, 3, seed=7))
    exif = Image.Exif()
    exif[0x0112] = 6
    s["exif6"] = save(ex, "exif6.png", exif=exif.tobytes())
    assert Image.open(OUT / "exif6.png").getexif().get(0x0112) == 6
    return s


# ---------------------------------------------------------------------------
# the documented RGB conversion (reference_rgb) and torchvision's pipeline
# ---------------------------------------------------------------------------

ALPHA_SOURCES = {"LA", "rgba", "rgba_opaque", "P_trns_index", "P_trns_bytes", "PA", "RGB_trns", "L_trns"}


def composite_on_white(img: Image.Image) -> tuple[Image.Image, str]:
    rgba = np.asarray(img.convert("RGBA")).astype(np.int64)
    c, a = rgba[..., :3], rgba[..., 3:]
    out = (c * a + WHITE * (255 - a) + 127) // 255   # exact round(x / 255); never a tie
    rule = "convert('RGBA') composited onto white: round((c*a + 255*(255-a))/255)"
    return Image.fromarray(out.astype(np.uint8)), rule


def gray_to_rgb(v: np.ndarray) -> Image.Image:
    return Image.fromarray(v.astype(np.uint8)).convert("RGB")


def reference_rgb(name: str, src: Image.Image) -> tuple[Image.Image, str]:
    if name in ALPHA_SOURCES:
        return composite_on_white(src)
    if name == "exif6":
        return ImageOps.exif_transpose(src).convert("RGB"), "ImageOps.exif_transpose(src).convert('RGB')"
    mode = src.mode
    if mode.startswith("I;16"):
        v = np.asarray(src).astype(np.int64)
        return gray_to_rgb(np.rint(v / 257.0)), "16-bit: round(v / 257)"
    if mode == "I":
        v = np.maximum(np.asarray(src).astype(np.int64), 0)
        if v.max() <= 255:
            return gray_to_rgb(v), "I: negatives -> 0; max <= 255: as is"
        if v.max() <= 65535:
            return gray_to_rgb(np.rint(v / 257.0)), "I: negatives -> 0; max <= 65535: round(v / 257)"
        return gray_to_rgb(np.rint(v * 255.0 / (2**31 - 1))), "I: negatives -> 0; round(v * 255 / (2**31 - 1))"
    if mode == "F":
        v = np.asarray(src).astype(np.float64)
        v = np.where(np.isnan(v), 0.0, v)
        if v.min() >= 0 and v.max() <= 1:
            return gray_to_rgb(np.rint(v * 255)), "F in [0, 1]: round(v * 255)"
        return gray_to_rgb(np.rint(np.clip(v, 0, 255))), "F: NaN -> 0, round(clip(v, 0, 255))"
    return src.convert("RGB"), "src.convert('RGB') (OpenAI's _convert_image_to_rgb)"


def lut() -> torch.Tensor:
    """(3, 256) float32: ToTensor -> Normalize of every byte value, per channel."""
    ramp = np.repeat(np.arange(256, dtype=np.uint8)[None, :, None], 3, axis=2)  # (1, 256, 3)
    t = T.Normalize(CLIP_MEAN, CLIP_STD)(T.ToTensor()(Image.fromarray(ramp)))
    return t[:, 0, :]


def main() -> None:
    OUT.mkdir(parents=True, exist_ok=True)
    for f in OUT.iterdir():
        f.unlink()
    sources = make_sources()
    table = lut()

    # (case name, source, S): S = 64 for most, 224 for a few
    cases = [(f"{src}@{S}", src, S) for src in sources for S in [64]]
    cases += [("rgb_640x480@224", "rgb_640x480", 224), ("rgb_257x999@224", "rgb_257x999", 224),
              ("rgb_7x5@224", "rgb_7x5", 224)]

    arrays = {"lut": table.numpy()}
    manifest = {"_versions": {"torchvision": torchvision.__version__, "torch": torch.__version__,
                              "Pillow": PIL.__version__},
                "_mean": CLIP_MEAN, "_std": CLIP_STD, "cases": {}}
    for case, src_name, S in cases:
        src = Image.open(OUT / sources[src_name])
        src.load()
        ref, rule = reference_rgb(src_name, src)
        geometric = T.Compose([T.Resize(S, interpolation=T.InterpolationMode.BICUBIC), T.CenterCrop(S)])
        full = T.Compose([geometric, T.ToTensor(), T.Normalize(CLIP_MEAN, CLIP_STD)])
        u8 = np.asarray(geometric(ref))
        expected = full(ref)
        assert u8.shape == (S, S, 3) and expected.shape == (3, S, S) and expected.dtype == torch.float32
        rebuilt = table[torch.arange(3)[:, None, None], torch.from_numpy(u8.copy()).permute(2, 0, 1).long()]
        assert torch.equal(rebuilt, expected), case   # the compact form is exact
        arrays[case] = u8
        manifest["cases"][case] = {"file": sources[src_name], "size": S, "mode": src.mode,
                                   "source_size": list(src.size), "reference_rgb": rule}
    np.savez_compressed(OUT / "expected.npz", **arrays)
    (OUT / "cases.json").write_text(json.dumps(manifest, indent=1) + "\n")
    total = sum(f.stat().st_size for f in OUT.iterdir())
    print(f"{len(cases)} cases, {len(sources)} sources, {total / 1e6:.2f} MB in {OUT}")


if __name__ == "__main__":
    main()
