"""Synthetic stand-ins for the MNIST variations: a development set that may steer training.

`eval_shipped.py` varies the 5,000 real MNIST digits (inverted, cropped and stretched, 8 x 8,
shifted, thick, thin, noisy); those images are for evaluation only. This script applies
the same eight functions (`MNIST_VARIATIONS`) to MNIST-style renderings of the synthetic
validation world instead: white-on-black digits drawn at 28 x 28 (`digit_eval_set(...,
image_size=28, style="mnist")`, fonts and pen strokes, 10 classes in turn), so runs and
checkpoints can be compared on the variations without looking at real digits. Zero-shot
top-1 with CLIP's single MNIST template, as the MNIST rows.

It is an easier set than real handwriting (the 2026-12-07 shipped model: 98.6-99.6% on every
row but 8 x 8, 88.0%; on MNIST 82-91%), so it tells where a model is weak, not what it will score
on MNIST.

    .venv/bin/python benchmarks/digit_proxy.py clipkit/weights/clipkit-synth.safetensors
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
GROUND_CUT = 40  # grey levels below this become 0


def proxy_images(n: int = 1000, seed: int = 0, split: str = "val"):
    """(uint8 (n, 28, 28) white-on-black digits, labels): the MNIST-style renders of `split`
    (the proxy set: val), grey, with a ground of exactly 0 (the cropping variations crop to
    the nonzero pixels, as on MNIST): the renders' ground noise (up to about 30 of 255) is
    cut at GROUND_CUT."""
    import numpy as np

    from clipkit.data.synth.evalsets import digit_eval_set

    es = digit_eval_set(n=n, seed=seed, image_size=28, split=split, style="mnist")
    raw = np.stack([np.asarray(im.convert("L")) for im in es.images])
    return np.where(raw < GROUND_CUT, 0, raw).astype(np.uint8), list(es.labels)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("model", help="a safetensors file (or any name/path clipkit.load accepts)")
    p.add_argument("-n", type=int, default=1000, help="renders [1000]")
    p.add_argument("--threads", type=int, default=2)
    args = p.parse_args(argv)

    import torch
    from PIL import Image

    import clipkit
    from benchmarks.eval_shipped import MNIST_TEMPLATE, MNIST_VARIATIONS, embed, zero_shot_logits
    from clipkit.data import synth
    from clipkit.evaluation.bench import classification_metrics

    torch.set_num_threads(args.threads)
    model, preprocess = clipkit.load(args.model)
    model.eval()
    raw, labels = proxy_images(args.n)
    y = torch.tensor(labels)
    classes = list(synth.DIGIT_CLASSNAMES)
    print(f"{args.model}: {args.n} MNIST-style renders of the val world, zero-shot top-1, single template")
    for name, vary in [("as it is", lambda x, seed: x), *MNIST_VARIATIONS.items()]:
        feats = embed(model, preprocess, [Image.fromarray(im) for im in vary(raw, 0)])
        acc = classification_metrics(zero_shot_logits(model, feats, classes, [MNIST_TEMPLATE]), y, 10)["acc1"]
        print(f"  {acc:6.1%}  {name}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
