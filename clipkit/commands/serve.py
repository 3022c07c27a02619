"""`clipkit serve`: a local web app to classify, generate and search images in the browser."""
from __future__ import annotations

import argparse
import os
import sys

from clipkit.commands._args import add_cache_flag, add_device_flag, add_model_flags, model_spec

EPILOG = """\
examples:
  clipkit serve                                  # classify and generate views; http://127.0.0.1:8000
  clipkit serve --index photos.idx               # and the search view over an index
  clipkit serve --index photos.idx --port 8080 --max-upload-mb 20
  clipkit serve --checkpoint my_weights.safetensors --device cuda --no-cache

Needs the serve extra: pip install "clipkit[serve]". It binds to 127.0.0.1 (this machine
only) unless --host says otherwise; the app has no authentication, so think twice before
--host 0.0.0.0.
"""


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("serve", help="a local web app: classify, generate and search in the browser",
                       description=__doc__, epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--index", metavar="INDEX", help="index folder for the search view (from `clipkit index`)")
    p.add_argument("--host", default="127.0.0.1", help="address to bind [127.0.0.1]")
    p.add_argument("--port", type=int, default=8000, help="port [8000]")
    add_model_flags(p, model_help="CLIP model for classify and generate [shipped default]")
    add_device_flag(p)
    add_cache_flag(p)
    p.add_argument("--generator", metavar="WEIGHTS", help="generator weights [the shipped generator]")
    p.add_argument("--max-upload-mb", type=float, default=8.0, help="largest request body accepted [8]")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    try:
        import uvicorn

        from clipkit.serve.app import create_app
    except ImportError as e:
        print(f'clipkit serve: {e.name or e} is missing: pip install "clipkit[serve]"', file=sys.stderr)
        return 2
    if not 0 <= args.port <= 65535 or args.max_upload_mb <= 0:
        print("clipkit serve: --port must lie in [0, 65535] and --max-upload-mb be positive", file=sys.stderr)
        return 2
    index = None
    if args.index:
        from clipkit.index import Index

        try:
            index = Index(args.index)
        except ValueError as e:
            print(f"clipkit serve: {e}", file=sys.stderr)
            return 2
    app = create_app(index, model=model_spec(args), generator=args.generator, device=args.device,
                     max_upload_bytes=int(args.max_upload_mb * 1024 * 1024))
    print(f"clipkit serve: http://{args.host}:{args.port}/  (Ctrl+C to stop)", file=sys.stderr)
    no_cache = os.environ.get("CLIPKIT_NO_CACHE")
    if args.no_cache:  # for the server's life: zero-shot heads are built afresh, nothing is written
        os.environ["CLIPKIT_NO_CACHE"] = "1"
    try:
        uvicorn.run(app, host=args.host, port=args.port, log_level="warning")
    finally:  # main() may be called from Python: leave the environment as it was
        if args.no_cache:
            if no_cache is None:
                os.environ.pop("CLIPKIT_NO_CACHE", None)
            else:
                os.environ["CLIPKIT_NO_CACHE"] = no_cache
    return 0
