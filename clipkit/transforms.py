"""CLIP image preprocessing on PIL + numpy + torch (no torchvision needed).

`Preprocess(S)` turns one image into the (3, S, S) float tensor CLIP's image tower takes,
exactly (bit for bit) as OpenAI's / open_clip's `_transform` does with torchvision:

    Resize(S, BICUBIC) -> CenterCrop(S) -> convert to RGB -> ToTensor -> Normalize(mean, std)

* Resize: the short side becomes S and the long side `int(S * long / short)` (torchvision's
  expression, truncation included), with PIL's own `Image.resize(..., BICUBIC)`, which is
  what torchvision calls for PIL images (PIL always antialiases when downscaling).
* CenterCrop: offsets `int(round((H - S) / 2.0))` - Python's round, so half-way offsets go
  to the even number (a 69-pixel side cropped to 64 starts at row 2, not 3).
* ToTensor / Normalize: `uint8 -> float32 / 255`, then `(x - mean) / std` in float32 with
  the same operations, so the results are identical, not merely close.

Where clipkit deliberately differs from the reference (OpenAI converts with a bare
`img.convert("RGB")` before the tensor step):

* EXIF orientation is applied first (`ImageOps.exif_transpose`), so a phone photo stored
  sideways is seen upright. Images without an orientation tag are unaffected.
* Transparency is composited onto white instead of being dropped. Dropping alpha shows
  whatever colour the transparent pixels happen to hold (often black, sometimes garbage);
  white is what a viewer shows. Fully opaque images give exactly the reference result;
  `to_rgb(img, background=None)` reproduces the reference's drop-alpha behaviour.
* 16-bit, 32-bit integer and float images are scaled into 0..255 (PIL's convert clips
  them, so a 16-bit photo comes out almost all white). See `to_rgb` for the rules.

Every other mode (1, L, P, CMYK, YCbCr, LAB, HSV, RGBX) converts with PIL's own
`convert("RGB")`, which is the reference behaviour.

A user's own transform (e.g. a torchvision `Compose`) is accepted wherever clipkit
preprocesses: see `resolve_transform` / `apply_transform`; already-preprocessed tensors
are checked by `ensure_image_tensor`.
"""
from __future__ import annotations

import os
import re
import warnings
from typing import Any, Callable, Sequence

import numpy as np
import torch
from PIL import Image, ImageOps

from clipkit.errors import ClipkitError
from clipkit.models.config import CLIP_MEAN, CLIP_STD

__all__ = [
    "Preprocess", "image_transform", "to_rgb", "load_image", "ImageLoadError",
    "resolve_transform", "apply_transform", "ensure_image_tensor", "resized_size", "center_crop_box",
    "to_tensor",
]

WHITE = (255, 255, 255)
_ALPHA_MODES = ("LA", "La", "PA", "RGBA", "RGBa")
_EXIF_ORIENTATION = 0x0112


# ---------------------------------------------------------------------------
# errors
# ---------------------------------------------------------------------------

class ImageLoadError(ClipkitError, ValueError):
    """An image file could not be read. `path` is the file; the message names it and the cause."""

    def __init__(self, path: Any, message: str):
        super().__init__(message)
        self.path = os.fspath(path) if isinstance(path, os.PathLike) else path
        self.message = message

    def __reduce__(self):  # picklable across DataLoader workers despite the 2-argument __init__
        return type(self), (self.path, self.message)


# ---------------------------------------------------------------------------
# mode conversion
# ---------------------------------------------------------------------------

def _has_transparency(img: Image.Image) -> bool:
    """Alpha band, transparent palette entries or a tRNS colour (what PIL's RGBA conversion honours)."""
    if img.mode in _ALPHA_MODES or "transparency" in img.info:
        return True
    return img.mode == "P" and img.palette is not None and img.palette.mode == "RGBA"


def _gray_to_8bit(img: Image.Image) -> np.ndarray:
    """(H, W) uint8 for the high-depth single-channel modes I;16*, I and F (rules in `to_rgb`)."""
    mode = img.mode
    v = np.asarray(img)
    if v.size == 0:
        return np.zeros(v.shape, np.uint8)
    if mode.startswith("I;16"):
        # round(v / 257): 65535 -> 255 exactly; integer form of round-half-up (no ties exist)
        return ((v.astype(np.uint32) + 128) // 257).astype(np.uint8)
    if mode == "I":
        v = np.maximum(v.astype(np.int64), 0)
        top = int(v.max())
        if top <= 255:  # 8-bit data in a 32-bit container (e.g. `img.convert("I")`)
            return v.astype(np.uint8)
        if top <= 65535:  # 16-bit data (older Pillow opened 16-bit PNGs as mode I)
            return ((v + 128) // 257).astype(np.uint8)
        return np.rint(v * (255.0 / (2**31 - 1))).astype(np.uint8)
    if mode == "F":
        v = np.nan_to_num(v.astype(np.float64), nan=0.0, posinf=255.0, neginf=0.0)
        if v.min() >= 0.0 and v.max() <= 1.0:
            v = v * 255.0
        return np.rint(np.clip(v, 0.0, 255.0)).astype(np.uint8)
    raise AssertionError(mode)


def _composite(rgba: Image.Image, background: Sequence[int]) -> Image.Image:
    """RGBA -> RGB over a solid background: round((c*a + bg*(255 - a)) / 255), exact."""
    out = Image.new("RGB", rgba.size, tuple(background))
    out.paste(rgba, mask=rgba)  # PIL blends with an exactly rounded divide by 255
    return out


def to_rgb(img: Image.Image, *, background: Sequence[int] | None = WHITE) -> Image.Image:
    """Any PIL mode -> an RGB image (the input itself when it is already plain RGB).

    * 1, L, P, CMYK, YCbCr, LAB, HSV, RGBX: PIL's `img.convert("RGB")` (the reference).
    * Transparency (LA, La, PA, RGBA, RGBa, P with transparent entries, L/RGB with a tRNS
      colour): PIL's `convert("RGBA")`, then composited onto `background` (white):
      round((c*a + bg*(255 - a)) / 255). `background=None` drops the alpha instead, as
      OpenAI's `convert("RGB")` does.
    * I;16, I;16L, I;16B, I;16N (16-bit): round(v / 257), so 0..65535 fills 0..255 (PIL's
      convert would clip every value above 255 to white). A tRNS grey level is honoured.
    * I (32-bit signed): negatives -> 0; then values are used as they are when the maximum
      is <= 255 (8-bit data), scaled by round(v / 257) when it is <= 65535 (16-bit data),
      else by round(v * 255 / (2**31 - 1)). The scale depends on the image's maximum, which
      is the only way to tell 8-, 16- and 32-bit data apart in this mode.
    * F (32-bit float): NaN -> 0, +inf -> 255, -inf -> 0; round(v * 255) when every value
      is in [0, 1], else round(clip(v, 0, 255)). An all-0/1 float image counts as [0, 1].

    Rounding is to nearest. Gray results are replicated into the three channels.
    EXIF orientation is not touched here (`load_image` and `Preprocess` apply it).
    """
    if not isinstance(img, Image.Image):
        raise TypeError(f"to_rgb expects a PIL image, got {type(img).__name__}")
    mode = img.mode
    if mode == "RGB" and "transparency" not in img.info:
        return img
    if mode.startswith("I;16") or mode in ("I", "F"):
        gray = Image.fromarray(_gray_to_8bit(img))
        trns = img.info.get("transparency")
        if background is not None and isinstance(trns, int) and mode != "F":
            alpha = np.where(np.asarray(img) == trns, 0, 255).astype(np.uint8)
            gray.putalpha(Image.fromarray(alpha))
            return _composite(gray.convert("RGBA"), background)
        return gray.convert("RGB")
    if _has_transparency(img):
        if background is None:
            if mode == "La":  # PIL has no direct La -> RGB conversion
                img = _la_to_rgba(img)
            return img.convert("RGB")
        rgba = _la_to_rgba(img) if mode == "La" else img.convert("RGBA")
        return _composite(rgba, background)
    try:
        return img.convert("RGB")
    except ValueError as e:
        raise ValueError(f"cannot convert a PIL image of mode {mode!r} to RGB: {e}") from e


def _la_to_rgba(img: Image.Image) -> Image.Image:
    """Premultiplied La -> straight RGBA, by way of PIL's RGBa (premultiplied) conversion."""
    lum, alpha = img.split()
    return Image.merge("RGBa", (lum, lum, lum, alpha)).convert("RGBA")


def _upright(img: Image.Image) -> Image.Image:
    """Apply the EXIF orientation tag, if any (a no-op, and no copy, without one)."""
    try:
        orientation = img.getexif().get(_EXIF_ORIENTATION, 1)
    except Exception:  # unreadable EXIF must not make an otherwise fine image unusable
        return img
    if orientation in (2, 3, 4, 5, 6, 7, 8):
        return ImageOps.exif_transpose(img)
    return img


# ---------------------------------------------------------------------------
# loading
# ---------------------------------------------------------------------------

_BOMB_PIXELS = re.compile(r"\((\d+) pixels\)")


def max_image_pixels() -> int | None:
    """The largest image `load_image` decodes, in pixels (None: no limit).

    PIL's `PIL.Image.MAX_IMAGE_PIXELS` (89,478,485 by default, about 9,459 x 9,459),
    or the environment variable ``CLIPKIT_MAX_IMAGE_PIXELS`` when set (a number, or
    ``none`` for no limit), which then also becomes PIL's limit for this process.
    """
    env = os.environ.get("CLIPKIT_MAX_IMAGE_PIXELS", "").strip().replace("_", "").replace(",", "")
    if env:
        if env.lower() in ("none", "0", "off"):
            Image.MAX_IMAGE_PIXELS = None
        else:
            try:
                value = int(env)
            except ValueError:
                raise ImageLoadError("CLIPKIT_MAX_IMAGE_PIXELS", f"CLIPKIT_MAX_IMAGE_PIXELS={env!r} is not a "
                                     "number of pixels (or 'none')") from None
            Image.MAX_IMAGE_PIXELS = value
    return Image.MAX_IMAGE_PIXELS


def _bomb_message(path: str, pixels: int | None) -> str:
    limit = Image.MAX_IMAGE_PIXELS
    size = f"{pixels:,} pixels" if pixels is not None else "its pixel count"
    want = pixels if pixels is not None else "N"
    return (f"cannot load image {path}: {size} is more than the limit of {limit:,} pixels "
            f"(a decompression-bomb guard), so it is not decoded. If you trust the file, raise the "
            f"limit: CLIPKIT_MAX_IMAGE_PIXELS={want} in the environment, or "
            f"PIL.Image.MAX_IMAGE_PIXELS = {want} in Python")


def _describe(e: BaseException) -> str:
    if isinstance(e, FileNotFoundError):
        return "file not found"
    if isinstance(e, IsADirectoryError):
        return "it is a directory, not an image file"
    if isinstance(e, PermissionError):
        return "permission denied"
    if isinstance(e, Image.UnidentifiedImageError):
        return "not an image file, or a format PIL cannot read"
    text = str(e) or type(e).__name__
    if "truncated" in text.lower():
        return f"truncated file (PIL: {text})"
    return f"the file is corrupt or truncated ({type(e).__name__}: {text})"


def load_image(path: str | os.PathLike) -> Image.Image:
    """Read an image file fully, apply its EXIF orientation and convert it to RGB (`to_rgb`).

    Decoding happens here (`img.load()`), so truncated or corrupt files fail now, with an
    `ImageLoadError` (a ValueError) naming the file and the cause, rather than later in
    the middle of a batch. The same goes for missing files, files that are not images and
    decompression bombs.

    Decompression bombs: an image of more pixels than :func:`max_image_pixels` (PIL's
    `MAX_IMAGE_PIXELS`, 89.5 million by default; ``CLIPKIT_MAX_IMAGE_PIXELS`` overrides
    it) is refused from its header, before anything is decoded, with an `ImageLoadError`
    saying how to raise the limit. `PIL.ImageFile.LOAD_TRUNCATED_IMAGES` is respected.
    """
    if not isinstance(path, (str, os.PathLike)):
        raise TypeError(f"load_image expects a file path (str or os.PathLike), got {type(path).__name__}")
    name = os.fspath(path)
    limit = max_image_pixels()
    try:
        # Between 1x and 2x its limit PIL would decode with a warning; the check below
        # refuses such files from the header instead, so its warning is never wanted.
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            with Image.open(name) as img:
                if limit is not None and img.width * img.height > limit:
                    raise ImageLoadError(name, _bomb_message(name, img.width * img.height))
                img.load()
                img = _upright(img)
    except ImageLoadError:
        raise
    except Image.DecompressionBombError as e:
        found = _BOMB_PIXELS.search(str(e))
        raise ImageLoadError(name, _bomb_message(name, int(found.group(1)) if found else None)) from e
    except Exception as e:  # noqa: BLE001 - every decoder failure becomes one clear error
        raise ImageLoadError(name, f"cannot load image {name}: {_describe(e)}") from e
    try:
        return to_rgb(img)
    except ValueError as e:  # a mode PIL can read but not convert
        raise ImageLoadError(name, f"cannot load image {name}: {e}") from e


def to_tensor(image: Image.Image | str | os.PathLike, size: int | None = None) -> torch.Tensor:
    """The one PIL -> tensor converter without normalisation: an image (or a path, read with
    `load_image`) -> (3, H, W) float32 in [0, 1], resized bicubically to size x size if
    given (no crop). Used by the synthetic world's datasets, the generator and the judge;
    CLIP's own preprocessing (resize, crop, normalise) is `Preprocess`."""
    if isinstance(image, (str, os.PathLike)):
        image = load_image(image)
    image = to_rgb(image)
    if size is not None and image.size != (size, size):
        image = image.resize((size, size), Image.BICUBIC)
    return torch.from_numpy(np.asarray(image, np.float32) / 255.0).permute(2, 0, 1).contiguous()


# ---------------------------------------------------------------------------
# geometry: torchvision's Resize(int) and CenterCrop arithmetic
# ---------------------------------------------------------------------------

def resized_size(width: int, height: int, size: int) -> tuple[int, int]:
    """(w, h) after torchvision's `Resize(size)`: short side -> size, long side truncated."""
    short, long = (width, height) if width <= height else (height, width)
    new_long = int(size * long / short)  # torchvision's expression, float division and all
    return (size, new_long) if width <= height else (new_long, size)


def center_crop_box(width: int, height: int, size: int) -> tuple[int, int, int, int]:
    """(left, top, right, bottom) of torchvision's `CenterCrop(size)` on an image >= size."""
    top = int(round((height - size) / 2.0))
    left = int(round((width - size) / 2.0))
    return left, top, left + size, top + size


# ---------------------------------------------------------------------------
# the transform
# ---------------------------------------------------------------------------

def _check_stats(name: str, values) -> tuple[float, float, float]:
    try:
        out = tuple(float(v) for v in values)
    except TypeError:
        raise TypeError(f"{name} must be 3 numbers (one per RGB channel), got {values!r}") from None
    if len(out) != 3:
        raise ValueError(f"{name} must have 3 values (one per RGB channel), got {len(out)}: {values!r}")
    return out


class Preprocess:
    """PIL image (any mode) or image path -> normalized float32 tensor (3, S, S), CLIP-style.

    Bit-identical to torchvision's `Resize(S, BICUBIC) -> CenterCrop(S) -> ToTensor ->
    Normalize(mean, std)` on the RGB image; before that, EXIF orientation is applied and the
    image converted with `to_rgb` (paths are read with `load_image`). Plain attributes
    only, so it pickles into DataLoader workers.
    """

    def __init__(self, image_size: int = 224, mean: Sequence[float] = CLIP_MEAN,
                 std: Sequence[float] = CLIP_STD):
        if isinstance(image_size, bool) or not isinstance(image_size, (int, np.integer)) or image_size < 1:
            raise ValueError(f"image_size must be a positive int, got {image_size!r}")
        self.image_size = int(image_size)
        self.mean = _check_stats("mean", mean)
        self.std = _check_stats("std", std)
        if any(s == 0 for s in self.std):
            raise ValueError(f"std must not contain 0, got {self.std}")

    def __call__(self, img: Image.Image | str | os.PathLike) -> torch.Tensor:
        if isinstance(img, (str, os.PathLike)):
            img = load_image(img)
        elif isinstance(img, Image.Image):
            if 0 in img.size:
                raise ValueError(f"cannot preprocess an empty image of size {img.width}x{img.height}")
            img = to_rgb(_upright(img))
        else:
            raise TypeError(f"Preprocess expects a PIL image or a file path, got {type(img).__name__}"
                            + (" (already a tensor? pass it to the model as is)"
                               if isinstance(img, torch.Tensor) else ""))
        S = self.image_size
        w, h = img.size
        if w == 0 or h == 0:
            raise ValueError(f"cannot preprocess an empty image of size {w}x{h}")
        new_size = resized_size(w, h, S)
        if new_size != (w, h):
            img = img.resize(new_size, Image.Resampling.BICUBIC)
        # Resize made the short side S, so the crop lies inside the image (no padding case)
        pixels = np.asarray(img.crop(center_crop_box(*new_size, S)))  # (S, S, 3) uint8
        x = torch.from_numpy(pixels.transpose(2, 0, 1).copy())  # (3, S, S) uint8, writable
        # same float32 operations as ToTensor + Normalize, so the same bits
        x = x.to(torch.float32).div_(255)
        mean = torch.tensor(self.mean, dtype=torch.float32).view(3, 1, 1)
        std = torch.tensor(self.std, dtype=torch.float32).view(3, 1, 1)
        return x.sub_(mean).div_(std)

    def __repr__(self) -> str:
        return f"Preprocess(image_size={self.image_size}, mean={self.mean}, std={self.std})"

    def __eq__(self, other) -> bool:
        if not isinstance(other, Preprocess):
            return NotImplemented
        return (self.image_size, self.mean, self.std) == (other.image_size, other.mean, other.std)

    def __hash__(self) -> int:
        return hash((Preprocess, self.image_size, self.mean, self.std))


def image_transform(image_size: int, mean: Sequence[float] = CLIP_MEAN,
                    std: Sequence[float] = CLIP_STD) -> Preprocess:
    """The CLIP evaluation transform for a model of input resolution `image_size`."""
    return Preprocess(image_size, mean, std)


# ---------------------------------------------------------------------------
# user transforms and preprocessed tensors
# ---------------------------------------------------------------------------

def resolve_transform(transform: Callable | None, image_size: int, mean: Sequence[float] = CLIP_MEAN,
                      std: Sequence[float] = CLIP_STD) -> Callable:
    """`Preprocess(image_size, mean, std)` for None, else the user's callable, unchanged."""
    if transform is None:
        return Preprocess(image_size, mean, std)
    if not callable(transform):
        raise TypeError(f"transform must be a callable taking a PIL image and returning a (3, {image_size}, "
                        f"{image_size}) float tensor (e.g. a torchvision Compose), or None for clipkit's "
                        f"CLIP preprocessing; got {type(transform).__name__}: {transform!r:.80}")
    return transform


def ensure_image_tensor(x: Any, image_size: int, what: str = "image tensor") -> torch.Tensor:
    """Check `x` is preprocessed pixels: floating point, (3, S, S) or (B, 3, S, S). Returns it.

    TypeError for a non-tensor or a non-float dtype, ValueError for a wrong shape; the
    message names what was expected.
    """
    S = image_size
    expected = f"a floating-point tensor of shape (3, {S}, {S}) or (B, 3, {S}, {S})"
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"{what} must be {expected}; got {type(x).__name__}")
    if not torch.is_floating_point(x):
        hint = (" - these look like raw pixels: pass PIL images or paths, or convert and normalize "
                "them first (clipkit.image_transform)") if x.dtype == torch.uint8 else ""
        raise TypeError(f"{what} must be {expected}; got dtype {x.dtype}{hint}")
    shape = tuple(x.shape)
    if not ((x.ndim == 3 and shape == (3, S, S)) or (x.ndim == 4 and shape[1:] == (3, S, S))):
        hint = ""
        if x.ndim in (3, 4) and shape[-1] == 3 and shape[-3:-1] == (S, S):
            hint = " - channels last? use x.permute(2, 0, 1) (or (0, 3, 1, 2) for a batch)"
        elif x.ndim in (3, 4) and shape[-3] == 3:
            hint = f" - wrong resolution: this model takes {S}x{S} images"
        raise ValueError(f"{what} must be {expected}; got shape {shape}{hint}")
    return x


def apply_transform(transform: Callable | None, img: Any, image_size: int) -> torch.Tensor:
    """Run `resolve_transform(transform, image_size)` on `img` and check its output.

    A user's transform must return a float tensor (3, S, S); anything else is a clear
    TypeError / ValueError here instead of a shape error deep inside the model.
    """
    fn = resolve_transform(transform, image_size)
    out = fn(img)
    if not isinstance(out, torch.Tensor):
        raise TypeError(f"transform {fn!r:.80} returned a {type(out).__name__}, expected a (3, {image_size}, "
                        f"{image_size}) float tensor (missing ToTensor()/Normalize?)")
    return ensure_image_tensor(out, image_size, what=f"the output of transform {fn!r:.80}")
