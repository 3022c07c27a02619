"""Fonts: found once per SynthWorld (matplotlib's bundled faces and /usr/share/fonts),
loaded lazily per process; Pillow's built-in font when none is usable."""
from __future__ import annotations

import functools
import os
import re
from pathlib import Path
from typing import Sequence

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from clipkit.data.synth.vocab import DIGIT_CLASSNAMES


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


