"""Throughput of clipkit's CLIP preprocessing (`clipkit.transforms.Preprocess`).

Times, per image, on synthetic photos of a few sizes (JPEG files in a temporary folder):

* `Preprocess(S)(pil_image)` - resize, crop, tensor, normalize on a decoded image;
* `Preprocess(S)(path)` - the same plus `load_image` (decode, EXIF, RGB conversion);
* torchvision's `Resize(S, BICUBIC) -> CenterCrop -> RGB -> ToTensor -> Normalize` (open_clip's
  `_transform`) on the decoded image, when torchvision can be imported, together with a
  check that both give the same tensor.

One thread (as in a DataLoader worker). torchvision cannot be imported in the project's
venv; run the script with a venv that has it for the comparison:

    .venv/bin/python benchmarks/bench_preprocess.py [--size 224] [--count 50]
    /work/oracle-venv/bin/python benchmarks/bench_preprocess.py   # + torchvision
"""
from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from clipkit.models.config import CLIP_MEAN, CLIP_STD  # noqa: E402
from clipkit.transforms import Preprocess  # noqa: E402


def torchvision_transform(size: int):
    try:
        from torchvision import transforms as T
    except Exception:  # noqa: BLE001 - absent or broken: no comparison
        return None
    return T.Compose([T.Resize(size, interpolation=T.InterpolationMode.BICUBIC), T.CenterCrop(size),
                      lambda im: im.convert("RGB"), T.ToTensor(), T.Normalize(CLIP_MEAN, CLIP_STD)])


def per_image_ms(fn, items, repeats: int = 3) -> float:
    runs = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        for item in items:
            fn(item)
        runs.append((time.perf_counter() - t0) / len(items) * 1e3)
    return statistics.median(runs)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--size", type=int, default=224, help="model resolution S [224]")
    p.add_argument("--count", type=int, default=30, help="images per source size [30]")
    args = p.parse_args(argv)
    torch.set_num_threads(1)
    rng = np.random.default_rng(0)
    pre, tv = Preprocess(args.size), torchvision_transform(args.size)
    print(f"S={args.size}, {args.count} images per row, 1 thread, torch {torch.__version__}, "
          f"Pillow {Image.__version__}, torchvision {'yes' if tv else 'not importable'}")
    print("| source | Preprocess(PIL) ms | Preprocess(path) ms | torchvision ms | identical |")
    print("| --- | --- | --- | --- | --- |")
    with tempfile.TemporaryDirectory() as tmp:
        for w, h in [(640, 480), (1024, 768), (500, 375), (1920, 1080)]:
            paths, images = [], []
            for i in range(args.count):
                small = rng.integers(0, 256, (h // 16, w // 16, 3), dtype=np.uint8)
                img = Image.fromarray(small).resize((w, h), Image.Resampling.BILINEAR)  # photo-like smoothness
                path = Path(tmp) / f"{w}x{h}_{i}.jpg"
                img.save(path, quality=90)
                paths.append(path)
                images.append(Image.open(path).convert("RGB"))
            ms_pil = per_image_ms(pre, images)
            ms_path = per_image_ms(pre, paths)
            if tv is not None:
                ms_tv = f"{per_image_ms(tv, images):.2f}"
                same = all(torch.equal(pre(im), tv(im)) for im in images)
            else:
                ms_tv, same = "-", "-"
            print(f"| {w}x{h} | {ms_pil:.2f} | {ms_path:.2f} | {ms_tv} | {same} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
