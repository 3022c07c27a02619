"""`clipkit classify`: zero-shot classification of image files from class names."""
from __future__ import annotations

import argparse
import json
import sys

EPILOG = """\
examples:
  clipkit classify cat.jpg dog.png --labels cat dog "hot air balloon"
  clipkit classify photos/ --classes imagenet --top 5 --model ViT-B/32
  clipkit classify digits/*.png --classes mnist --json
  clipkit classify shapes/*.png --labels "red square" "blue circle" --templates my_templates.txt
  clipkit classify img.jpg --classes classes.txt --checkpoint weights.safetensors --no-cache

--classes takes a set name (imagenet, mnist, cifar10, cifar100) or a file with one class
name per line; --templates a set name (imagenet, imagenet7, simple, mnist, cifar10,
cifar100) or a file with one template per line, '{}' marking the class name. A folder
given as IMAGE stands for the image files in it. Unreadable images are reported on
stderr and skipped; the exit status is 1 only when no image could be classified.
"""


from clipkit.commands._args import add_fast_flag, add_model_args, expand_images, model_spec, positive_int


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("classify", help="zero-shot classify images from class names",
                       description=__doc__, epilog=EPILOG,
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("images", nargs="+", metavar="IMAGE", help="image files (or folders of images)")
    which = p.add_mutually_exclusive_group(required=True)
    which.add_argument("--labels", nargs="+", metavar="NAME", help="the class names")
    which.add_argument("--classes", metavar="SET|FILE",
                       help="a class-name set (imagenet, mnist, cifar10, cifar100) or a file")
    p.add_argument("--templates", metavar="SET|FILE",
                   help="prompt templates [the class set's own, else 'a photo of a {}.']")
    p.add_argument("--top", type=positive_int, default=5, metavar="K", help="labels shown per image [5]")
    p.add_argument("--json", action="store_true", help="print JSON instead of a table")
    add_fast_flag(p)
    add_model_args(p)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from clipkit.zeroshot import zero_shot

    images = expand_images(args.images)
    if not images:
        print(f"clipkit classify: no image files in {' '.join(args.images)}", file=sys.stderr)
        return 1
    try:
        clf = zero_shot(args.labels if args.labels else args.classes, args.templates,
                        model=model_spec(args), device=args.device, batch_size=args.batch_size,
                        cache=not args.no_cache, progress=False if args.quiet else None, fast=args.fast)
    except (ValueError, TypeError, FileNotFoundError, RuntimeError, ImportError) as e:
        print(f"clipkit classify: {e}", file=sys.stderr)
        return 2
    result = clf.classify_files(images, k=args.top)
    for where, reason in result.skipped:
        print(f"clipkit classify: skipped {where}: {reason}", file=sys.stderr)
    if args.json:
        out = result.to_dict()
        out["classes"] = len(clf.classes_)
        out["templates"] = clf.templates_
        print(json.dumps(out, indent=2, ensure_ascii=False))
    else:
        width = max((len(name) for _, top in result.items for name, _ in top), default=0)
        for item, top in result.items:
            print(item)
            for rank, (name, prob) in enumerate(top, 1):
                print(f"  {rank:>2}. {name:<{width}}  {100 * prob:6.2f}%")
    if not result.items:
        print(f"clipkit classify: none of the {len(images)} images could be read", file=sys.stderr)
        return 1
    return 0
