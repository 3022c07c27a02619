"""Peak memory of reading hostile files: what a 1 MB zip bomb dressed as a TorchScript
checkpoint and a 10,000 x 10,000 image make clipkit allocate before it refuses them.

Each case runs in a fresh process; its peak RSS (ru_maxrss) is reported next to the
peak of a process that only imports clipkit, and the error it printed.

    python benchmarks/bench_hostile_files.py --out benchmarks/results/reliability.md
"""
from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
import zipfile
from pathlib import Path

import torch

CASES = {
    "import clipkit only": "import clipkit, clipkit.checkpoints, clipkit.transforms",
    "clipkit.load(1 MB zip, one storage declaring 1 GiB)":
        "import clipkit; clipkit.load({bomb!r})",
    "clipkit.load_image(10,000 x 10,000 PNG)":
        "import clipkit; clipkit.load_image({big!r})",
}


def make_bomb(folder: Path) -> Path:
    """A real TorchScript archive whose one 1 GiB buffer of zeros is re-zipped deflated."""

    class M(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.register_buffer("big", torch.zeros(1 << 28))  # 1 GiB of float32 zeros

        def forward(self, x):
            return x

    plain = folder / "plain.pt"
    torch.jit.script(M()).save(str(plain))
    bomb = folder / "bomb.pt"
    with zipfile.ZipFile(plain) as zin, zipfile.ZipFile(bomb, "w", zipfile.ZIP_DEFLATED, compresslevel=9) as zout:
        for info in zin.infolist():
            with zin.open(info) as src, zout.open(info.filename, "w", force_zip64=True) as dst:
                while chunk := src.read(1 << 24):
                    dst.write(chunk)
    plain.unlink()
    return bomb


def make_big_image(folder: Path) -> Path:
    from PIL import Image

    path = folder / "big.png"
    Image.new("L", (10_000, 10_000), 0).save(path)
    return path


_REPORT = ("import atexit, resource, sys\n"
           "atexit.register(lambda: print('PEAK_KB', resource.getrusage(resource.RUSAGE_SELF).ru_maxrss, "
           "file=sys.stderr))\n")


def peak_rss(code: str) -> tuple[float, str, float]:
    """(peak RSS in MB, the last line of the error, seconds) of `python -c code`; the child
    reports its own peak at exit (atexit runs after an uncaught error too)."""
    t0 = time.perf_counter()
    proc = subprocess.run([sys.executable, "-c", _REPORT + code], capture_output=True, text=True,
                          env={**os.environ, "OMP_NUM_THREADS": "1"})
    seconds = time.perf_counter() - t0
    lines = proc.stderr.strip().splitlines()
    peak = [float(line.split()[1]) / 1024 for line in lines if line.startswith("PEAK_KB")]
    errors = [line for line in lines if not line.startswith("PEAK_KB")]
    return (peak[0] if peak else float("nan")), (errors[-1] if errors else "(no error: it loaded)"), seconds


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", help="write a Markdown table here")
    p.add_argument("--make", help=argparse.SUPPRESS)  # internal: write the files into this folder
    args = p.parse_args(argv)
    if args.make:
        make_bomb(Path(args.make))
        make_big_image(Path(args.make))
        return 0
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        # made in another process: Linux keeps a process's peak RSS across fork and exec, so
        # a parent that once held the 1 GiB buffer would report it for every child
        subprocess.run([sys.executable, __file__, "--make", tmp], check=True)
        bomb, big = folder / "bomb.pt", folder / "big.png"
        sizes = {"bomb": bomb.stat().st_size, "big": big.stat().st_size}
        rows = []
        for name, code in CASES.items():
            mb, err, seconds = peak_rss(code.format(bomb=str(bomb), big=str(big)))
            rows.append((name, mb, seconds, err))
            print(f"{name}: peak {mb:.0f} MB, {seconds:.1f} s; {err[:160]}")
    lines = [
        "# Hostile files: peak memory before refusal",
        "",
        f"Command: `python benchmarks/bench_hostile_files.py --out benchmarks/results/reliability.md`; "
        f"the bomb is {sizes['bomb'] / 1e6:.2f} MB on disk, the PNG {sizes['big'] / 1e6:.2f} MB. "
        "Peak RSS of a fresh process per case (ru_maxrss).",
        "",
        "| case | peak RSS (MB) | seconds | what it printed |",
        "| --- | --- | --- | --- |",
        *[f"| {n} | {mb:.0f} | {s:.1f} | {e[:200].replace('|', '/')} |" for n, mb, s, e in rows],
        "",
    ]
    if args.out:
        Path(args.out).write_text("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
