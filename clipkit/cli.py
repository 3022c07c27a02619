"""The `clipkit` command: argparse subcommands, one module each under clipkit/commands.

Each command module exposes `register(subparsers)`, which adds its parser and sets
`func` with `set_defaults`; heavy imports happen inside the command, not here, so
`clipkit --help` stays fast.
"""
from __future__ import annotations

import argparse
import importlib
import sys

from clipkit import __version__

# Order is the order shown in --help.
COMMANDS: tuple[str, ...] = ("classify", "prompts", "bench", "train", "generate", "rerank", "export")

EPILOG = """\
examples:
  clipkit --version
  clipkit COMMAND --help
"""


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="clipkit",
        description="CLIP zero-shot classification, benchmarks, training, generation and reranking.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"clipkit {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in COMMANDS:
        importlib.import_module(f"clipkit.commands.{name}").register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    func = getattr(args, "func", None)
    if func is None:
        parser.print_help()
        return 0
    try:
        return int(func(args) or 0)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
