"""Shapes as polygons in a unit box, and warping: affine + elastic displacement with
bilinear sampling (numpy)."""
from __future__ import annotations

import functools
import math

import numpy as np
from PIL import ImageDraw

from clipkit.data.synth.vocab import SHAPES


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


