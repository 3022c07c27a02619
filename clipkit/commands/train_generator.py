"""`clipkit train-generator`: train the DALL·E-style generator on the synthetic world,
stage by stage (the dVAE, then the transformer). Parses the arguments and calls
`clipkit.generator.train.run_stage`."""
from __future__ import annotations

import argparse

from clipkit.commands._args import float_in, positive_int

EPILOG = """\
examples (the shipped generator's recipe, clipkit/weights/GENERATOR_CARD.md):
  clipkit train-generator --stage dvae --config synth-vq --steps 6500 --lr 2e-3 --threads 2 --out runs/gen
  clipkit train-generator --stage transformer --config synth-vq --steps 6000 --lr 1e-3 --precision bf16 \
      --mix shape=0.5,count=0.15,relation=0.15,digit=0.2 --threads 2 --out runs/gen
  clipkit train-generator --stage dvae --config synth-32 --steps 3000 --lr 3e-3 --kl-weight 0.02 --out runs/g32
  clipkit train-generator --stage transformer ... --resume        # continue from <out>/<stage>-last.pt
"""


def parse_mix(text: str) -> dict[str, float]:
    """"shape=0.4,digit=0.3" -> {"shape": 0.4, "digit": 0.3} (`clipkit.data.synth.parse_mix`
    as an argparse type)."""
    from clipkit.data import synth

    try:
        return synth.parse_mix(text)
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e)) from None


def generator_config(name: str) -> str:
    """A registered generator architecture (checked when given: importing the configs loads
    torch, which `clipkit --help` should not wait for)."""
    from clipkit.generator.configs import GENERATOR_CONFIGS

    if name not in GENERATOR_CONFIGS:
        raise argparse.ArgumentTypeError(f"unknown config {name!r}; choose from {', '.join(sorted(GENERATOR_CONFIGS))}")
    return name


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("train-generator", help="train the DALL·E-style generator (dVAE, then transformer)",
                       description=__doc__, epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_arguments(p)
    p.set_defaults(func=run)


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--stage", choices=("dvae", "transformer"), required=True)
    p.add_argument("--config", type=generator_config, default="synth-mini",
                   help="architecture: a name of clipkit.generator.configs.GENERATOR_CONFIGS [synth-mini]")
    p.add_argument("--steps", type=positive_int, required=True, help="total steps (the schedules' length)")
    p.add_argument("--stop-at", type=positive_int, help="stop early at this step (resume later with --resume)")
    p.add_argument("--out", required=True, help="run folder: checkpoints, corpus, exported weights")
    p.add_argument("--resume", action="store_true",
                   help="continue from <out>/<stage>-last.pt (or an older <stage>-last.safetensors)")
    p.add_argument("--batch-size", type=positive_int)
    p.add_argument("--lr", type=float_in(0.0, lo_open=True))
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--checkpoint-every", type=positive_int, default=250)
    p.add_argument("--log-every", type=positive_int, default=25)
    p.add_argument("--corpus", type=positive_int, default=60000, help="transformer stage: synthetic pairs to encode")
    p.add_argument("--dvae", help="transformer stage: dVAE weights [<out>/dvae.safetensors]")
    p.add_argument("--recon-loss", choices=("logit_laplace", "mse"), help="dVAE stage: override the config's")
    p.add_argument("--kl-weight", type=float_in(0.0),
                   help="dVAE stage: final KL weight β [6.6, the paper's, for the logit-Laplace loss in nats; "
                        "a squared-error loss is ~100× smaller and needs β ~0.1]")
    p.add_argument("--precision", choices=("fp32", "bf16"), default="fp32",
                   help="bf16: autocast the forward passes to bfloat16 (weights stay float32; about 2x "
                        "faster matrix products on CPUs with AVX-512 BF16) [fp32]")
    p.add_argument("--threads", type=positive_int, help="torch threads")
    p.add_argument("--mix", type=parse_mix, metavar="KIND=W,...",
                   help="scene-kind weights of the synthetic world, e.g. shape=0.4,count=0.15,relation=0.15,"
                        "digit=0.3 [the world's default mix]")


def run(args: argparse.Namespace) -> int:
    from clipkit.generator.train import run_stage

    kwargs = {k: v for k, v in vars(args).items() if k not in ("func", "command", "stage")}
    run_stage(args.stage, **kwargs)
    return 0
