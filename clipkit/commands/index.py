"""`clipkit index`: embed every image under a folder into a searchable index (incremental)."""
from __future__ import annotations

import argparse
import sys

EPILOG = """\
examples:
  clipkit index photos/ --out photos.idx                 # first run embeds every image
  clipkit index photos/ --out photos.idx                 # later runs embed only new or changed files
  clipkit index photos/ --out photos.idx --rebuild --model ViT-B/32
  clipkit index photos/ --out photos.idx --rebuild --fast int8   # ONNX Runtime int8 image tower
  torchrun --nproc_per_node 4 -m clipkit index photos/ --out photos.idx   # files shared over 4 ranks

Images are found recursively by extension; files that cannot be read are reported and
skipped (and not retried until they change). An interrupted run resumes: finished shards
are kept. An index built with other weights is an error unless --rebuild is given.
Then: clipkit search photos.idx "a red circle".
"""


from clipkit.commands._args import add_fast_flag, add_model_args, model_spec, positive_int


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("index", help="embed the images of a folder into a search index",
                       description=__doc__, epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("root", metavar="DIR", help="folder of images (searched recursively)")
    p.add_argument("--out", required=True, metavar="INDEX", help="index folder to create or update")
    p.add_argument("--rebuild", action="store_true", help="start afresh (e.g. after changing the model)")
    p.add_argument("--chunk-size", type=positive_int, default=512, help="files per shard, the unit of resuming [512]")
    add_model_args(p, cache_flag=False)  # the index is its own store: no other cache is read
    add_fast_flag(p, "embed the images faster (recorded in the index: updates use the same setting)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from clipkit.index import Index

    try:
        report = Index.build(args.root, args.out, model_spec(args), batch_size=args.batch_size,
                             chunk_size=args.chunk_size, device=args.device, rebuild=args.rebuild,
                             progress=False if args.quiet else None, fast=args.fast)
    except (ValueError, TypeError, OSError, RuntimeError, ImportError) as e:  # ImportError: int8 without onnx
        print(f"clipkit index: {e}", file=sys.stderr)
        return 2
    if report.index is None:  # a torchrun rank other than 0
        return 0
    for path, reason in report.skipped:
        print(f"clipkit index: skipped {path}: {reason}", file=sys.stderr)
    print(f"{args.out}: {len(report.index)} images ({report.added} added, {report.kept} unchanged, "
          f"{report.removed} removed, {len(report.skipped)} unreadable) in {report.seconds:.1f} s")
    return 0
