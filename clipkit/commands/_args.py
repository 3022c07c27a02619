"""Argument types, checks and flags the subcommands share.

The shared flags (--model/--checkpoint, --device, --batch-size, --quiet, --no-cache) are
defined once, below, and every command that takes one takes it from here. Where a command
lacks one, it does not apply: `index` is its own store (no --no-cache); `search` encodes one
query and `export` writes float32 graphs on the CPU (no --device, --batch-size); `train` and
`train-generator` build their model from --config and choose the device from torchrun/CUDA;
`generate`'s --checkpoint names generator weights (its CLIP is --rerank-model). Every bad value
is an argparse error: one line naming the flag and the value, exit status 2, before any
model is loaded or any image is encoded.
"""
from __future__ import annotations

import argparse
import os
from pathlib import Path

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff")


class OneLineParser(argparse.ArgumentParser):
    """An ArgumentParser whose errors are one line (`prog: error: ...; see prog --help`)."""

    def error(self, message: str):  # noqa: D401 - argparse's signature
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def _int_at_least(lo: int):
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected an integer, got {text!r}") from None
        if value < lo:
            raise argparse.ArgumentTypeError(f"must be >= {lo}, got {value}")
        return value

    parse.__name__ = f"int>={lo}"
    return parse


positive_int = _int_at_least(1)
nonnegative_int = _int_at_least(0)


def float_in(lo: float, hi: float | None = None, *, lo_open: bool = False):
    """A float in [lo, hi] (or (lo, hi] with `lo_open`)."""

    def parse(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
        if value != value or (value <= lo if lo_open else value < lo) or (hi is not None and value > hi):
            span = f"{'(' if lo_open else '['}{lo:g}, {'inf)' if hi is None else f'{hi:g}]'}"
            raise argparse.ArgumentTypeError(f"must lie in {span}, got {text}")
        return value

    parse.__name__ = "number"
    return parse


def device(text: str) -> str:
    """A torch device this build can use: 'cpu', 'cuda', 'cuda:1', 'mps'."""
    import torch

    try:
        dev = torch.device(text)
    except (RuntimeError, ValueError):
        raise argparse.ArgumentTypeError(f"not a device name: {text!r} (try cpu or cuda)") from None
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise argparse.ArgumentTypeError(f"{text!r} asked for, but this torch build has no CUDA GPU "
                                             f"available (torch {torch.__version__}); use --device cpu")
        if dev.index is not None and dev.index >= torch.cuda.device_count():
            raise argparse.ArgumentTypeError(f"{text!r}: only {torch.cuda.device_count()} CUDA device(s)")
    elif dev.type == "mps" and not (getattr(torch.backends, "mps", None) and torch.backends.mps.is_available()):
        raise argparse.ArgumentTypeError(f"{text!r} asked for, but MPS is not available; use --device cpu")
    elif dev.type not in ("cpu", "cuda", "mps"):
        raise argparse.ArgumentTypeError(f"unsupported device {text!r} (use cpu, cuda or mps)")
    return text


# ---------------------------------------------------------------------------
# The shared flags: every command takes each of these from here, where it applies
# ---------------------------------------------------------------------------

MODEL_HELP = "model name (see `clipkit bench --list-models`) [shipped default]"


def add_model_flags(p: argparse.ArgumentParser, *, model_help: str = MODEL_HELP) -> None:
    """--model NAME and --checkpoint PATH (which overrides it); `model_spec(args)` reads them."""
    p.add_argument("--model", help=model_help)
    p.add_argument("--checkpoint", help="weights file or Hugging Face folder (overrides --model)")


def model_spec(args: argparse.Namespace) -> str | None:
    """The model the flags of `add_model_flags` name: --checkpoint, else --model, else None."""
    return args.checkpoint or args.model


def add_device_flag(p: argparse.ArgumentParser) -> None:
    p.add_argument("--device", type=device, default="cpu", help="cpu, cuda, cuda:N or mps [cpu]")


def add_batch_size_flag(p: argparse.ArgumentParser, default: int = 64) -> None:
    p.add_argument("--batch-size", type=positive_int, default=default, help=f"images per batch [{default}]")


def add_cache_flag(p: argparse.ArgumentParser) -> None:
    p.add_argument("--no-cache", action="store_true", help="do not read or write the on-disk caches "
                                                           "(also CLIPKIT_NO_CACHE=1)")


def add_quiet_flag(p: argparse.ArgumentParser, *old_spellings: str) -> None:
    """--quiet (dest `quiet`); a command's older spellings (e.g. --no-progress) stay aliases."""
    note = f" ({', '.join(old_spellings)}: the older spelling)" if old_spellings else ""
    p.add_argument("--quiet", *old_spellings, dest="quiet", action="store_true", help=f"no progress output{note}")


def add_fast_flag(p: argparse.ArgumentParser, what: str = "encode the images faster") -> None:
    """--fast [bf16|int8] (a bare --fast means bf16): `clipkit.models.fast.fast_model`'s modes."""
    p.add_argument("--fast", nargs="?", const="bf16", choices=("bf16", "int8"), default=None,
                   help=f"{what}: bf16 (a bare --fast) = bfloat16 weights in torch, about 2x on CPUs with "
                        "AVX-512 BF16; int8 = ONNX Runtime with int8 weights (needs clipkit[onnx]), about 3x "
                        "for ViTs; embeddings within cosine 0.999 of fp32")


def add_model_args(p: argparse.ArgumentParser, *, batch_size: int = 64, device_flag: bool = True,
                   cache_flag: bool = True) -> None:
    """The flags every command that runs a CLIP model over a batch of inputs takes."""
    add_model_flags(p)
    add_batch_size_flag(p, batch_size)
    if device_flag:
        add_device_flag(p)
    if cache_flag:
        add_cache_flag(p)
    add_quiet_flag(p)


def expand_images(inputs: list[str]) -> list[str]:
    """Files as given; a folder stands for its image files (sorted, not recursive)."""
    from clipkit.data.datasets import IMAGE_EXTENSIONS

    out = []
    for item in inputs:
        path = Path(item)
        if path.is_dir():
            out += [str(p) for p in sorted(path.iterdir())
                    if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS]
        else:
            out.append(item)
    return out


def writable_output(path: str | os.PathLike, *, suffixes: tuple[str, ...] = ()) -> str:
    """`clipkit.utils.check_output_path` as an argparse type: checked before the work."""
    from clipkit.errors import OutputPathError
    from clipkit.utils import check_output_path

    try:
        check_output_path(path, suffixes=suffixes)
    except OutputPathError as e:
        raise argparse.ArgumentTypeError(str(e)) from None
    return str(path)


def image_output(text: str) -> str:
    return writable_output(text, suffixes=IMAGE_SUFFIXES)


def output_file(text: str) -> str:
    return writable_output(text)
