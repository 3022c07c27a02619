"""`clipkit train`: contrastive training on the synthetic world (one process or torchrun).

Thin wrapper: parses the arguments into a `clipkit.train.TrainConfig` and calls
`clipkit.train.train`; `torchrun -m clipkit train` is the distributed spelling.
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

from clipkit.commands._args import OneLineParser, add_quiet_flag, float_in, nonnegative_int, positive_int

EPILOG = """\
examples:
  clipkit train --config clipkit-synth --steps 3000 --batch-size 128 --out runs/synth
  clipkit train --out runs/synth --resume                    # continue where it stopped
  clipkit train --init clipkit-synth --digit-style robust --steps 1500 --lr 3e-4 --out runs/ft   # fine-tune
  torchrun --nproc_per_node=2 -m clipkit train --config clipkit-synth --steps 100 --out runs/t
  clipkit train --digit-style robust --hard-negatives --mix shape=0.2,count=0.15,relation=0.25,digit=0.4 ...

The log (OUT/log.jsonl) has one JSON line per --log-every steps: step, loss (the
contrastive loss; with --resolution-consistency the unweighted term follows as
consistency_kl), in-batch image->text and text->image accuracy, lr, logit scale,
samples/s; and zero-shot accuracy on the synthetic validation world every --eval-every
steps (its digits drawn with the plain pen, whatever --pen says). On --resume, lines a
stopped run wrote after its last checkpoint are moved to OUT/log.discarded.jsonl, since
those steps are trained again. (Runs before 2026-12-07 logged loss + WEIGHT x the term as
loss.)
"""

# Flag -> TrainConfig field. Every flag defaults to None so that `--resume` can tell
# the values given on the command line (which override) from the saved ones.
_FIELDS = {
    "config": "config", "out": "out", "steps": "steps", "batch_size": "batch_size", "lr": "lr",
    "warmup": "warmup", "min_lr_ratio": "min_lr_ratio", "weight_decay": "weight_decay",
    "precision": "precision", "workers": "workers", "seed": "seed", "data_seed": "data_seed",
    "log_every": "log_every", "eval_every": "eval_every", "eval_size": "eval_size",
    "save_every": "save_every", "stop_at": "stop_at",
    "digit_style": "digit_style", "mix": "mix", "hard_negatives": "hard_negatives", "init": "init",
    "resolution_consistency": "resolution_consistency", "pen": "pen", "hand_share": "hand_share",
}
# clipkit.data.synth.DIGIT_STYLES and PEN_STYLES (not imported: no work at start-up)
DIGIT_STYLES = ("classic", "robust", "robust-hard")
PEN_STYLES = ("plain", "hand")


def parse_mix(text: str) -> dict[str, float]:
    """'shape=0.2,count=0.15,relation=0.25,digit=0.4' -> {kind: weight} (`clipkit.data.synth.parse_mix` as an argparse type)."""
    from clipkit.data import synth

    try:
        return synth.parse_mix(text)
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e)) from None


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", help="model: a registered name (default clipkit-synth) or a JSON file "
                                    "of a CLIPConfig")
    p.add_argument("--out", help="run folder: checkpoint.pt, log.jsonl, model.safetensors (default runs/clip)")
    p.add_argument("--steps", type=positive_int, help="total optimiser steps (default 1000)")
    p.add_argument("--batch-size", type=positive_int, help="global batch over all ranks (default 128)")
    p.add_argument("--lr", type=float_in(0.0, lo_open=True), help="peak learning rate (default 5e-4)")
    p.add_argument("--warmup", type=nonnegative_int, help="linear warm-up steps before the cosine decay (default 100)")
    p.add_argument("--min-lr-ratio", type=float_in(0.0, 1.0), help="final lr as a fraction of the peak (default 0)")
    p.add_argument("--weight-decay", type=float_in(0.0), help="AdamW decoupled weight decay on matrices (default 0.2)")
    p.add_argument("--precision", choices=("fp32", "bf16"), help="bf16 = autocast, fp32 master weights "
                                                                 "(default fp32)")
    p.add_argument("--workers", type=nonnegative_int, help="DataLoader processes rendering the world (default 0)")
    p.add_argument("--seed", type=int, help="model initialisation seed (default 0)")
    p.add_argument("--data-seed", type=int, help="synthetic world seed (default 0)")
    p.add_argument("--log-every", type=positive_int, help="steps per log line (default 10)")
    p.add_argument("--eval-every", type=nonnegative_int, help="zero-shot validation every N steps; 0 = at the end only")
    p.add_argument("--eval-size", type=nonnegative_int, help="images per validation task; 0 disables it (default 200)")
    p.add_argument("--save-every", type=nonnegative_int, help="checkpoint every N steps; 0 = at the end only")
    p.add_argument("--stop-at", type=positive_int, help="stop (and checkpoint) after this step; --resume later")
    p.add_argument("--digit-style", choices=DIGIT_STYLES,
                   help="how the world draws digits: classic (the first release's) or robust (any scale, place, "
                        "polarity, stroke width, slant, background, blur, resolution, noise), or robust-hard (robust "
                        "with digits stretched over the frame and reduced to 8-12 pixels drawn more often) "
                        "(default classic)")
    p.add_argument("--mix", type=parse_mix, metavar="KIND=W,...",
                   help="scene kinds' weights, e.g. shape=0.2,count=0.15,relation=0.25,digit=0.4 "
                        "(default: the world's, shape=0.25,count=0.15,relation=0.15,digit=0.45)")
    p.add_argument("--pen", choices=PEN_STYLES,
                   help="how pen-stroke digits are drawn: plain (the first two releases') or hand (handwriting-like: "
                        "the digit's proportions, where strokes meet, stroke ends and pen pressure vary) "
                        "(default plain)")
    p.add_argument("--hand-share", type=float_in(0.0, 1.0), metavar="SHARE",
                   help="share of digits drawn with pen strokes instead of a font (default 0.45)")
    p.add_argument("--hard-negatives", action=argparse.BooleanOptionalAction, default=None,
                   help="NegCLIP hard negatives: each relation and count scene brings the same scene with the "
                        "places, colours or count changed, image and caption, into the batch (default off)")
    p.add_argument("--resolution-consistency", type=float_in(0.0), metavar="WEIGHT",
                   help="add WEIGHT x a consistency term: a quarter of each batch's images is also fed reduced "
                        "to 8, 12 or 16 pixels a side and enlarged back, and should rank the batch's captions "
                        "as its original does (KL divergence); ViT image towers only; 0 = off (default 0)")
    p.add_argument("--init", metavar="WEIGHTS",
                   help="fine-tune: start from these weights (a file or name clipkit.load reads; their "
                        "architecture replaces --config); the optimiser and the schedule start afresh")
    p.add_argument("--resume", nargs="?", const=True, default=None, metavar="CHECKPOINT",
                   help="continue from OUT/checkpoint.pt (or CHECKPOINT) with its saved settings; "
                        "flags given now override them")
    add_quiet_flag(p, "--no-progress")


def build_parser() -> argparse.ArgumentParser:
    """The parser of `torchrun -m clipkit.train` (same flags as `clipkit train`)."""
    p = OneLineParser(prog="clipkit.train", description=__doc__.splitlines()[0],
                                epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_arguments(p)
    return p


def register(subparsers) -> None:
    p = subparsers.add_parser("train", help="contrastive training on the synthetic world",
                              description=__doc__.splitlines()[0], epilog=EPILOG,
                              formatter_class=argparse.RawDescriptionHelpFormatter)
    add_arguments(p)
    p.set_defaults(func=run)


def config_from_args(args: argparse.Namespace):
    """TrainConfig: defaults, then (with --resume) the saved settings, then the flags given."""
    from clipkit.train import TrainConfig, load_checkpoint

    values = TrainConfig().to_dict()
    if args.resume:
        out = args.out or values["out"]
        path = Path(out) / "checkpoint.pt" if args.resume is True else Path(args.resume)
        values.update(load_checkpoint(path, kind="clip")["train_config"])
    for flag, field in _FIELDS.items():
        value = getattr(args, flag, None)
        if value is not None:
            values[field] = value
    values["progress"] = not args.quiet
    return TrainConfig(**values)


def run(args: argparse.Namespace) -> int:
    from clipkit.train import train

    cfg = config_from_args(args)
    record = train(cfg, resume=args.resume)
    if record:
        print(json.dumps(record))
    return 0
