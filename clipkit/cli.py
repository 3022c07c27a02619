"""The `clipkit` command: argparse subcommands, one module each under clipkit/commands.

Each command module exposes `register(subparsers)`, which adds its parser and sets
`func` with `set_defaults`; heavy imports happen inside the command, not here, so
`clipkit --help` stays fast.
"""
from __future__ import annotations

import argparse
import importlib
import os
import sys

from clipkit import __version__
from clipkit.commands._args import OneLineParser

# Order is the order shown in --help.
COMMANDS: tuple[str, ...] = ("classify", "prompts", "bench", "train", "train-generator", "generate", "rerank",
                             "index", "search", "serve", "export")

EPILOG = """\
examples:
  clipkit --version
  clipkit COMMAND --help

Errors are one line on stderr with exit status 2; set CLIPKIT_DEBUG=1 for a traceback.
"""


def build_parser() -> argparse.ArgumentParser:
    parser = OneLineParser(
        prog="clipkit",
        description="CLIP zero-shot classification, benchmarks, training, generation and reranking.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"clipkit {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in COMMANDS:
        importlib.import_module(f"clipkit.commands.{name.replace('-', '_')}").register(sub)
    return parser


def _one_line_warning(message, category, filename, lineno, line=None) -> str:
    """Warnings as the CLI prints them: `clipkit: warning: ...`, one line, no source."""
    return f"clipkit: warning: {message}\n"


def main(argv: list[str] | None = None) -> int:
    import warnings

    formatwarning = warnings.formatwarning
    if not os.environ.get("CLIPKIT_DEBUG"):
        warnings.formatwarning = _one_line_warning
    try:
        return _main(argv)
    finally:
        warnings.formatwarning = formatwarning  # main() may be called from Python: leave no trace


def _main(argv: list[str] | None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    func = getattr(args, "func", None)
    if func is None:
        parser.print_help()
        return 0
    from clipkit.errors import ClipkitError

    try:
        return int(func(args) or 0)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except ClipkitError as e:
        # Bad input the library recognised (a file it cannot read, weights it refuses, an
        # unreachable download): one line, no traceback. CLIPKIT_DEBUG=1 shows it.
        if os.environ.get("CLIPKIT_DEBUG"):
            raise
        print(f"clipkit {args.command}: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
