"""Rendering speed of the synthetic world, per scene kind, in one process.

    python benchmarks/bench_synth.py [--n 2000] [--image-size 64] [--out benchmarks/results/synth.md]

Rendering must not be what limits training: a small CLIP on CPU consumes a few hundred
images a second, so the world should render well over that on one core.
"""
from __future__ import annotations

import argparse
import platform
import sys
import time

import numpy as np

from clipkit.data.synth import DEFAULT_MIX, SynthWorld


def bench(kind: str | None, n: int, image_size: int, repeats: int = 3) -> tuple[float, float]:
    """Best-of-`repeats` images per second, and ms per image, after a warm-up (fonts, caches)."""
    world = SynthWorld(seed=0, image_size=image_size, mix=None if kind is None else {kind: 1.0})
    for i in range(200):  # warm-up: glyph and font caches fill here, as in a long run
        world.sample(i)
    best = float("inf")
    for r in range(repeats):
        start = time.perf_counter()
        for i in range(n):
            world.sample(10_000 + r * n + i)
        best = min(best, time.perf_counter() - start)
    return n / best, 1000 * best / n


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--n", type=int, default=2000, help="samples per measurement")
    p.add_argument("--image-size", type=int, nargs="+", default=[64, 32])
    p.add_argument("--out", help="write a markdown table here")
    args = p.parse_args(argv)
    rows = []
    for size in args.image_size:
        for kind in [None, *DEFAULT_MIX]:
            rate, ms = bench(kind, args.n, size)
            name = "mix (default)" if kind is None else kind
            rows.append((size, name, rate, ms))
            print(f"{size:>4}px  {name:<14} {rate:8.0f} img/s  {ms:6.3f} ms/img", flush=True)
    if args.out:
        import torch

        lines = [
            "# Synthetic world: rendering speed",
            "",
            f"Command: `python benchmarks/bench_synth.py --n {args.n} "
            f"--image-size {' '.join(map(str, args.image_size))} --out {args.out}`",
            "",
            f"One process, one thread, best of 3 runs of {args.n} samples after a 200-sample warm-up. "
            f"Python {platform.python_version()}, numpy {np.__version__}, torch {torch.__version__}, "
            f"{platform.processor() or platform.machine()}; the machine was shared with other jobs, "
            "so these are lower bounds.",
            "",
            "| image size | scene kind | images/s | ms/image |",
            "| ---: | --- | ---: | ---: |",
            *[f"| {s} | {k} | {r:,.0f} | {m:.3f} |" for s, k, r, m in rows],
            "",
        ]
        with open(args.out, "w") as f:
            f.write("\n".join(lines))


if __name__ == "__main__":
    main(sys.argv[1:])
