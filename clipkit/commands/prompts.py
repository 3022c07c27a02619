"""`clipkit prompts`: how zero-shot accuracy depends on the prompt templates.

Reports every template's accuracy alone, the ensemble's (CLIP's average of all), the
mean and spread, and a greedy forward-selected subset, on labelled images: a folder of
class sub-folders (ROOT/<class>/<image>), or image files labelled by their parent folder.
Writes prompt_sensitivity.json and prompt_sensitivity.png to --out-dir.
"""
from __future__ import annotations

import argparse
import sys

EPILOG = """\
examples:
  clipkit prompts shapes_val/                        # class names from the sub-folder names
  clipkit prompts cifar_val/ --classes cifar10 --out-dir reports/cifar10
  clipkit prompts digits/ --classes mnist --templates my_digit_templates.txt
  clipkit prompts photos/ --templates imagenet --max-templates 7 --model ViT-B/32

Folder names must be class names (underscores read as spaces). Default templates: the
class set's own (e.g. cifar10's 18), else the 80 ImageNet templates.
"""


from clipkit.commands._args import add_model_args, model_spec, positive_int


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("prompts", help="prompt-template sensitivity report on labelled images",
                       description=__doc__, epilog=EPILOG,
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("inputs", nargs="+", metavar="FOLDER_OR_IMAGE",
                   help="a folder of class sub-folders, or image files inside class folders")
    p.add_argument("--classes", metavar="SET|FILE", help="class names [the sub-folder names]")
    p.add_argument("--templates", metavar="SET|FILE", help="templates to compare [the class set's, else imagenet]")
    p.add_argument("--max-templates", type=positive_int, default=None, help="largest greedy subset [no limit]")
    p.add_argument("--out-dir", default=".", help="where the JSON and PNG go [.]")
    add_model_args(p, cache_flag=False)  # the report encodes every prompt afresh: no cache
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from clipkit.data.datasets import DatasetLayoutError
    from clipkit.evaluation.sensitivity import sensitivity_report

    try:
        report = sensitivity_report(args.inputs, args.classes, args.templates, model_spec(args),
                                    out_dir=args.out_dir, max_templates=args.max_templates,
                                    batch_size=args.batch_size, device=args.device,
                                    progress=False if args.quiet else None)
    except (ValueError, TypeError, FileNotFoundError, RuntimeError, DatasetLayoutError) as e:
        print(f"clipkit prompts: {e}", file=sys.stderr)
        return 2
    for s in report["skipped"]:
        print(f"clipkit prompts: skipped {s['input']}: {s['reason']}", file=sys.stderr)
    g = report["greedy"]
    print(f"{report['n_images']} images, {report['n_classes']} classes, {len(report['templates'])} templates")
    print(f"ensemble of all templates: {100 * report['ensemble_accuracy']:.2f}%")
    print(f"single template: mean {100 * report['mean_accuracy']:.2f}% +- {100 * report['std_accuracy']:.2f}, "
          f"best {100 * report['max_accuracy']:.2f}% ({report['best_template']!r}), "
          f"worst {100 * report['min_accuracy']:.2f}% ({report['worst_template']!r})")
    print(f"greedy subset of {len(g['templates'])}: {100 * g['accuracy']:.2f}%")
    for t in g["templates"]:
        print(f"  {t}")
    print(f"report: {report['files']['json']}, chart: {report['files']['png']}")
    return 0
