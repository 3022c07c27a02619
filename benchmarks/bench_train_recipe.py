"""What a training step costs with the world and objective of a recipe: the classic run
(the shipped model's) against the robust one (robust digits, a relation-heavier mix, hard
negatives), on the shipped architecture. Used to size the next run to the time budget.

    python benchmarks/bench_train_recipe.py [--samples 512] [--steps 3] [--threads 2] \\
        [--out benchmarks/results/train_recipe.md]

Per recipe: data cost (render + preprocess + tokenise, one process, per sample), rows a
256-sample batch becomes (hard negatives add rows), and the time of a bf16 training step
on those rows (mean of `--steps` after one warm-up). The machine may be shared: compare
the recipes' ratio, measured back to back, more than the absolute times.
"""
from __future__ import annotations

import argparse
import platform
import sys
import time

import torch

from clipkit.data.synth import SynthWorld
from clipkit.models import create_model, get_config
from clipkit.tokenizer import get_tokenizer
from clipkit.train import ContrastiveModel, SynthPairs, TrainConfig, collate_pairs, make_optimizer, train_step
from clipkit.transforms import image_transform

ROBUST_MIX = {"shape": 0.2, "count": 0.15, "relation": 0.25, "digit": 0.4}
RECIPES = {  # name -> (SynthWorld keywords, hard negatives)
    "classic": ({}, False),
    "robust digits + mix + hard negatives": ({"mix": ROBUST_MIX, "digit_style": "robust"}, True),
}


def measure(samples: int, steps: int, batch: int = 256) -> list[dict]:
    config = get_config("clipkit-synth")
    tokenizer = get_tokenizer()
    preprocess = image_transform(config.vision.image_size, config.image_mean, config.image_std)
    torch.manual_seed(0)
    clip = create_model(config)
    model = ContrastiveModel(clip)
    optimizer = make_optimizer(clip, TrainConfig(lr=1e-4))
    rows = []
    for name, (world_kw, negatives) in RECIPES.items():
        world = SynthWorld(seed=0, image_size=config.vision.image_size, split="train", **world_kw)
        data = SynthPairs(world, preprocess, tokenizer, config.text.context_length, negatives)
        for i in range(50):  # warm-up: font and glyph caches
            data[i]
        start = time.perf_counter()
        items = [data[i] for i in range(1000, 1000 + max(samples, batch))]
        data_ms = 1000 * (time.perf_counter() - start) / len(items)
        images, ids = collate_pairs(items[:batch])
        train_step(model, clip, images, ids, optimizer, precision="bf16", uneven=negatives)  # warm-up
        start = time.perf_counter()
        for _ in range(steps):
            train_step(model, clip, images, ids, optimizer, precision="bf16", uneven=negatives)
        step_s = (time.perf_counter() - start) / steps
        rows.append({"recipe": name, "data_ms": data_ms, "rows": images.shape[0], "step_s": step_s})
        print(f"{name}: {data_ms:.2f} ms/sample, {images.shape[0]} rows per {batch} samples, "
              f"{step_s:.2f} s/step", flush=True)
    return rows


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--samples", type=int, default=512, help="samples rendered to time the data")
    p.add_argument("--steps", type=int, default=3, help="timed training steps per recipe")
    p.add_argument("--threads", type=int, default=2, help="torch threads for the steps")
    p.add_argument("--out", help="write a markdown table here")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    rows = measure(args.samples, args.steps)
    base = rows[0]
    if args.out:
        lines = [
            "# Training cost per step: classic recipe vs the robust one",
            "",
            f"Command: `python benchmarks/bench_train_recipe.py --samples {args.samples} --steps {args.steps} "
            f"--threads {args.threads} --out {args.out}`",
            "",
            f"`clipkit-synth`, batch 256 samples, bf16 autocast, {args.threads} torch threads; data in one "
            f"process. torch {torch.__version__}, {platform.machine()}; the machine was shared with other "
            "jobs: the ratio column, measured back to back, is the figure to use.",
            "",
            "| recipe | data ms/sample | rows per 256 samples | s/step | step time vs classic |",
            "| --- | ---: | ---: | ---: | ---: |",
            *[f"| {r['recipe']} | {r['data_ms']:.2f} | {r['rows']} | {r['step_s']:.2f} | "
              f"{r['step_s'] / base['step_s']:.2f} |" for r in rows],
            "",
        ]
        with open(args.out, "w") as f:
            f.write("\n".join(lines))


if __name__ == "__main__":
    main(sys.argv[1:])
