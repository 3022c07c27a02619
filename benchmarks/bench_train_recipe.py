"""What a training step costs with the world and objective of a recipe: the classic run
(the first release's), the robust one (robust digits, a relation-heavier mix, hard
negatives) and the current release's fine-tune (robust-hard digits, the hand pen, hard
negatives, resolution consistency), on the shipped architecture, in fp32 and bf16. Used to
size the next run to the time budget.

    python benchmarks/bench_train_recipe.py [--samples 512] [--steps 3] [--threads 2] \\
        [--precisions fp32 bf16] [--out benchmarks/results/train_recipe.md]

Per recipe: data cost (render + preprocess + tokenise, one process, per sample), rows a
256-sample batch becomes (hard negatives add rows), and the time of a training step on
those rows in each of `--precisions` (median of `--steps`, the precisions taking turns step
by step, after one warm-up step each). The machine may be shared: compare ratios measured
back to back more than absolute times. Whether bf16 autocast is faster than fp32 depends on
the CPU's bfloat16 matrix kernels: measure before choosing `clipkit train --precision`.
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # `python benchmarks/...` from the root

import torch  # noqa: E402

from benchmarks._machine import cpu_name, load_average  # noqa: E402
from clipkit.data.synth import SynthWorld  # noqa: E402
from clipkit.models import create_model, get_config  # noqa: E402
from clipkit.tokenizer import get_tokenizer  # noqa: E402
from clipkit.training.contrastive import Consistency  # noqa: E402
from clipkit.train import ContrastiveModel, SynthPairs, TrainConfig, collate_pairs, make_optimizer, train_step  # noqa: E402
from clipkit.transforms import image_transform  # noqa: E402

ROBUST_MIX = {"shape": 0.2, "count": 0.15, "relation": 0.25, "digit": 0.4}
RELEASE_MIX = {"shape": 0.25, "count": 0.15, "relation": 0.2, "digit": 0.4}
RECIPES = {  # name -> (SynthWorld keywords, hard negatives, resolution-consistency weight)
    "classic": ({}, False, 0.0),
    "robust digits + mix + hard negatives": ({"mix": ROBUST_MIX, "digit_style": "robust"}, True, 0.0),
    # the 2026-12-07 (fourth session) release's fine-tune (CLIPKIT_SYNTH_CARD.md)
    "robust-hard, hand pen 0.7, hard negatives, consistency 0.5":
        ({"mix": RELEASE_MIX, "digit_style": "robust-hard", "pen": "hand", "hand_share": 0.7}, True, 0.5),
}


def measure(samples: int, steps: int, batch: int = 256, precisions=("bf16",)) -> list[dict]:
    config = get_config("clipkit-synth")
    tokenizer = get_tokenizer()
    preprocess = image_transform(config.vision.image_size, config.image_mean, config.image_std)
    torch.manual_seed(0)
    clip = create_model(config)
    model = ContrastiveModel(clip)
    optimizer = make_optimizer(clip, TrainConfig(lr=1e-4))
    rows = []
    for name, (world_kw, negatives, weight) in RECIPES.items():
        # as clipkit.train builds it: a quarter of the batch also fed reduced (8 px here)
        consistency = Consistency(weight, count=batch // 4, side=8) if weight else None
        world = SynthWorld(seed=0, image_size=config.vision.image_size, split="train", **world_kw)
        data = SynthPairs(world, preprocess, tokenizer, config.text.context_length, negatives)
        for i in range(50):  # warm-up: font and glyph caches
            data[i]
        start = time.perf_counter()
        items = [data[i] for i in range(1000, 1000 + max(samples, batch))]
        data_ms = 1000 * (time.perf_counter() - start) / len(items)
        images, ids = collate_pairs(items[:batch])
        times = {p: [] for p in precisions}
        for precision in precisions:  # warm-up
            train_step(model, clip, images, ids, optimizer, precision=precision, uneven=negatives,
                       consistency=consistency)
        for _ in range(steps):
            for precision in precisions:
                start = time.perf_counter()
                train_step(model, clip, images, ids, optimizer, precision=precision, uneven=negatives,
                           consistency=consistency)
                times[precision].append(time.perf_counter() - start)
        for precision in precisions:
            step_s = sorted(times[precision])[len(times[precision]) // 2]
            rows.append({"recipe": name, "precision": precision, "data_ms": data_ms, "rows": images.shape[0],
                         "step_s": step_s})
            print(f"{name}, {precision}: {data_ms:.2f} ms/sample, {images.shape[0]} rows per {batch} samples, "
                  f"{step_s:.2f} s/step", flush=True)
    return rows


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--samples", type=int, default=512, help="samples rendered to time the data")
    p.add_argument("--steps", type=int, default=3, help="timed training steps per recipe")
    p.add_argument("--threads", type=int, default=2, help="torch threads for the steps")
    p.add_argument("--precisions", nargs="+", choices=("fp32", "bf16"), default=["fp32", "bf16"],
                   help="training-step precisions to time, in turn (default: fp32 bf16)")
    p.add_argument("--out", help="write a markdown table here")
    args = p.parse_args(argv)
    if args.steps < 1 or args.samples < 1 or args.threads < 1:
        p.error("--steps, --samples and --threads must be >= 1")
    torch.set_num_threads(args.threads)
    load_before = load_average()
    rows = measure(args.samples, args.steps, precisions=args.precisions)
    load_after = load_average()
    base = rows[0]
    if args.out:
        lines = [
            "# Training cost per step: the recipes, fp32 and bf16",
            "",
            f"Command: `python benchmarks/bench_train_recipe.py --samples {args.samples} --steps {args.steps} "
            f"--threads {args.threads} --precisions {' '.join(args.precisions)} --out {args.out}`",
            "",
            f"`clipkit-synth`, batch 256 samples, {args.threads} torch threads; data in one process; the "
            f"precisions took turns step by step (median of {args.steps}). CPU {cpu_name()}, torch "
            f"{torch.__version__}, load average {load_before} before, {load_after} after "
            "(above the thread count: shared, so compare the ratios).",
            "",
            "| recipe | precision | data ms/sample | rows per 256 samples | s/step | step time vs first row |",
            "| --- | --- | ---: | ---: | ---: | ---: |",
            *[f"| {r['recipe']} | {r['precision']} | {r['data_ms']:.2f} | {r['rows']} | {r['step_s']:.2f} | "
              f"{r['step_s'] / base['step_s']:.2f} |" for r in rows],
            "",
        ]
        with open(args.out, "w") as f:
            f.write("\n".join(lines))


if __name__ == "__main__":
    main(sys.argv[1:])
