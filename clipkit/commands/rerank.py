"""`clipkit rerank`: score images against a caption with CLIP and keep the best."""
from __future__ import annotations

import argparse
import json
import sys

EPILOG = """\
examples:
  clipkit rerank samples/*.png --caption "a green pentagon" --top 4
  clipkit rerank a.jpg b.jpg c.jpg --caption "a photo of a dog" --top 1 --json
"""


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("rerank", help="score images against a caption and keep the top K",
                       description=__doc__, epilog=EPILOG,
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("images", nargs="+", metavar="IMAGE", help="image files")
    p.add_argument("--caption", required=True)
    p.add_argument("--top", type=int, default=None, help="how many to keep [all, sorted]")
    p.add_argument("--model", help="model name [shipped default]")
    p.add_argument("--checkpoint", help="weights file or Hugging Face folder (overrides --model)")
    p.add_argument("--json", action="store_true", help="print JSON instead of a table")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from clipkit.rerank import Reranker
    from clipkit.transforms import ImageLoadError

    reranker = Reranker(args.checkpoint or args.model)
    top = len(args.images) if args.top is None else args.top
    try:
        result = reranker.rerank(args.images, args.caption, top_k=top)
    except (ImageLoadError, ValueError) as e:
        print(f"clipkit rerank: {e}", file=sys.stderr)
        return 2
    if args.json:
        print(json.dumps({"caption": args.caption, "results": [
            {"image": str(img), "score": round(score, 6), "rank": r + 1}
            for r, (img, score) in enumerate(result)]}, indent=2))
    else:
        print(f"caption: {args.caption}")
        for r, (img, score) in enumerate(result):
            print(f"{r + 1:>3}. {score:+.4f}  {img}")
    return 0
