"""`clipkit search`: the indexed images closest to a text or an image query."""
from __future__ import annotations

import argparse
import json
import sys

from clipkit.commands._args import add_model_flags, model_spec

EPILOG = """\
examples:
  clipkit search photos.idx "a red circle" -k 10
  clipkit search photos.idx --image query.png --json
  clipkit search photos.idx "a green pentagon" --sheet hits.png
  clipkit search big.idx "a dog on a beach" --ann        # faiss: pip install "clipkit[search]"

Search is exact (cosine similarity, a chunked matrix product) up to 2 million images and
approximate (a faiss index, built once and kept beside the index) above that or with --ann.
The query is encoded with the model the index was built with.
"""


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("search", help="search an index with a text or an image",
                       description=__doc__, epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("index", metavar="INDEX", help="index folder made by `clipkit index`")
    p.add_argument("text", nargs="?", help="text query")
    p.add_argument("--image", metavar="FILE", help="image query (instead of a text)")
    p.add_argument("-k", type=int, default=10, help="hits to show [10]")
    p.add_argument("--ann", action="store_true", help="approximate search with faiss, whatever the size")
    p.add_argument("--json", action="store_true", help='print [{"path": ..., "score": ...}, ...]')
    p.add_argument("--sheet", metavar="PNG", help="also write a contact sheet of the hits")
    add_model_flags(p, model_help="model for the query [the index's own]; must have the index's weights")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from clipkit.index import Index
    from clipkit.transforms import ImageLoadError

    if (args.text is None) == (args.image is None):
        print("clipkit search: give a text query or --image FILE (one of them)", file=sys.stderr)
        return 2
    if args.k < 1:
        print("clipkit search: -k must be >= 1", file=sys.stderr)
        return 2
    try:
        index = Index(args.index)
        hits = index.search(args.text, args.k, image=args.image, ann=True if args.ann else None,
                            model=model_spec(args))
    except ImportError as e:
        print(f"clipkit search: {e}", file=sys.stderr)
        return 2
    except (ValueError, TypeError, OSError, ImageLoadError) as e:
        print(f"clipkit search: {e}", file=sys.stderr)
        return 2
    if args.json:
        print(json.dumps([h.to_dict() for h in hits], indent=1, ensure_ascii=False))
    else:
        width = max((len(h.path) for h in hits), default=4)
        print(f"{'rank':>4}  {'score':>7}  path")
        for rank, h in enumerate(hits, 1):
            print(f"{rank:>4}  {h.score:7.4f}  {h.path:<{width}}")
    if args.sheet:
        index.contact_sheet(hits).save(args.sheet)
        if not args.json:
            print(f"contact sheet -> {args.sheet}")
    return 0

