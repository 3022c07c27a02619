"""`clipkit rerank`: score images against a caption with CLIP and keep the best."""
from __future__ import annotations

import argparse
import json
import sys

EPILOG = """\
examples:
  clipkit rerank samples/*.png --caption "a green pentagon" --top 4
  clipkit rerank a.jpg b.jpg c.jpg --caption "a photo of a dog" --top 1 --json
  clipkit rerank samples/ --caption "a red star"       # a folder stands for its image files

Unreadable images are reported on stderr and skipped; the exit status is 1 only when no
image could be scored, 2 for bad arguments or a model that cannot be loaded.
"""


from clipkit.commands._args import add_fast_flag, add_model_args, expand_images, model_spec, positive_int


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("rerank", help="score images against a caption and keep the top K",
                       description=__doc__, epilog=EPILOG,
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("images", nargs="+", metavar="IMAGE", help="image files (or folders of images)")
    p.add_argument("--caption", required=True)
    p.add_argument("--top", type=positive_int, default=None, help="how many to keep [all, sorted]")
    p.add_argument("--json", action="store_true", help="print JSON instead of a table")
    add_fast_flag(p)
    add_model_args(p)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from clipkit.rerank import Reranker

    images = expand_images(args.images)
    if not images:
        print(f"clipkit rerank: no image files in {' '.join(args.images)}", file=sys.stderr)
        return 1
    try:
        reranker = Reranker(model_spec(args), device=args.device, batch_size=args.batch_size,
                            fast=args.fast)
        result = reranker.rerank(images, args.caption, top_k=args.top, skip_unreadable=True)
    except (ValueError, TypeError, FileNotFoundError, RuntimeError, ImportError) as e:
        print(f"clipkit rerank: {e}", file=sys.stderr)
        return 2
    for where, reason in result.skipped:
        print(f"clipkit rerank: skipped {where}: {reason}", file=sys.stderr)
    if args.json:
        print(json.dumps({"caption": args.caption, "results": [
            {"image": str(img), "score": round(score, 6), "rank": r + 1}
            for r, (img, score) in enumerate(result)],
            "skipped": [{"image": w, "reason": r} for w, r in result.skipped]}, indent=2))
    else:
        print(f"caption: {args.caption}")
        for r, (img, score) in enumerate(result):
            print(f"{r + 1:>3}. {score:+.4f}  {img}")
    if not len(result):
        print(f"clipkit rerank: none of the {len(images)} images could be read", file=sys.stderr)
        return 1
    return 0
