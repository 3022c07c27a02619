"""`clipkit generate`: draw images for a caption with the DALL·E-style generator, save a grid."""
from __future__ import annotations

import argparse
import sys

from clipkit.commands._args import add_quiet_flag, float_in, image_output, positive_int

EPILOG = """\
examples:
  clipkit generate "a green pentagon" -n 16 --out grid.png
  clipkit generate "a red circle above a blue square" -n 64 --top 8 --out best.png   # CLIP reranking
  clipkit generate "the number seven" -n 16 --seed 3 --temperature 0.9 --guidance 3 --out sevens.png
  clipkit generate "a small blue star" --checkpoint runs/gen/generator.safetensors --save-dir samples/
"""


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("generate", help="generate images from a caption (DALL·E-style), optionally CLIP-reranked",
                       description=__doc__, epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_arguments(p)
    p.set_defaults(func=run)


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("caption", help="what to draw")
    p.add_argument("-n", type=positive_int, default=16, help="images to draw [16]")
    p.add_argument("--out", type=image_output, default="grid.png", help="grid image to write (.png, .jpg, ...) [grid.png]")
    p.add_argument("--save-dir", help="also save every kept image as a PNG in this folder")
    p.add_argument("--seed", type=int, default=0, help="image j of a seed is the same for any -n [0]")
    p.add_argument("--temperature", type=float_in(0.0), default=1.0, help="sampling temperature; 0 = greedy [1.0]")
    p.add_argument("--filter-top-k", type=positive_int, help="sample among the K most likely image codes per step")
    p.add_argument("--top-p", type=float_in(0.0, 1.0, lo_open=True),
                   help="sample from the nucleus of this probability mass, in (0, 1]")
    p.add_argument("--guidance", type=float_in(0.0), help="classifier-free guidance scale; 1 = off [the model's]")
    p.add_argument("--top", type=positive_int, metavar="K", help="rerank with CLIP and keep the best K (needs a CLIP model)")
    p.add_argument("--rerank-model", help="CLIP model name or checkpoint for --top [the shipped default]")
    p.add_argument("--checkpoint", help="generator weights (.safetensors) [the shipped model]")
    p.add_argument("--batch-size", type=positive_int, default=64, help="sampling rows per batch [64]")
    p.add_argument("--scale", type=positive_int, help="upscale each image in the grid by this factor "
                                                      "[cells of about 128 pixels: 2 for 64-pixel images, 4 for 32]")
    p.add_argument("--cols", type=positive_int, help="grid columns [√n]")
    add_quiet_flag(p)


def run(args: argparse.Namespace) -> int:
    from clipkit.generator.generator import Generator, load_default, make_grid

    try:
        gen = Generator.load(args.checkpoint) if args.checkpoint else load_default()
    except (FileNotFoundError, ValueError, OSError) as e:
        print(f"clipkit generate: {e}", file=sys.stderr)
        return 2
    reranker = None
    if args.top is not None:
        if args.top > args.n:
            print(f"clipkit generate: --top {args.top} keeps more images than -n {args.n} draws", file=sys.stderr)
            return 2
        from clipkit.rerank import Reranker  # lazy: CLIP loads only when reranking

        try:
            reranker = Reranker(args.rerank_model, tokenizer=gen.tokenizer)
        except (FileNotFoundError, ValueError, RuntimeError) as e:
            print(f"clipkit generate: cannot load a CLIP model for --top: {e}", file=sys.stderr)
            return 2
    images = gen.generate(args.caption, n=args.n, seed=args.seed, temperature=args.temperature,
                          filter_top_k=args.filter_top_k, top_p=args.top_p, guidance=args.guidance,
                          rerank=reranker, top_k=args.top, batch_size=args.batch_size,
                          progress=False if args.quiet else None)
    labels = None if images.scores is None else [f"{s:.3f}" for s in images.scores]
    scale = args.scale or max(1, 128 // max(images[0].size))
    grid = make_grid(list(images), cols=args.cols, scale=scale, labels=labels)
    grid.save(args.out)
    if args.save_dir:
        from pathlib import Path

        folder = Path(args.save_dir)
        folder.mkdir(parents=True, exist_ok=True)
        for rank, (img, j) in enumerate(zip(images, images.indices)):
            img.save(folder / f"{rank:03d}-sample{j}.png")
    what = f"best {len(images)} of {args.n} by CLIP" if reranker is not None else f"{len(images)} images"
    print(f"{args.caption!r}: {what} -> {args.out}")
    if labels:
        for rank, (j, s) in enumerate(zip(images.indices, images.scores)):
            print(f"{rank + 1:>3}. {s:+.4f}  sample {j}")
    return 0
