"""`clipkit export`: a model's image and text towers as ONNX graphs (fp32 and int8)."""
from __future__ import annotations

import argparse
import json
import sys

from clipkit.commands._args import add_model_flags, model_spec

EPILOG = """\
examples:
  clipkit export clipkit-synth --onnx synth-onnx/
  clipkit export ViT-B/32 --onnx vit-b32/ --per-tensor
  clipkit export my_weights.safetensors --onnx out/ --towers image --no-int8
  clipkit export --checkpoint my_weights.safetensors --onnx out/     # the same, with the shared flag

Writes image.onnx and text.onnx (dynamic batch; the text graph also takes any length up
to the context, reading out at each row's end-of-text token), their int8 versions
(ONNX Runtime dynamic quantization of the MatMul weights) and clipkit_onnx.json: the
config, the preprocessing, the tokenizer facts, the weights' fingerprint, the opset and
how the int8 graphs were quantized. Needs: pip install "clipkit[onnx]".
"""


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("export", help="export the towers as ONNX graphs (fp32 and int8)",
                       description=__doc__, epilog=EPILOG,
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("model_arg", nargs="?", metavar="MODEL",
                   help="model name, weights file or Hugging Face folder (or --model / --checkpoint)")
    add_model_flags(p, model_help="model name (see `clipkit bench --list-models`), as MODEL")
    p.add_argument("--onnx", required=True, metavar="DIR", help="output folder (created if needed)")
    p.add_argument("--towers", default="image,text", help="comma list of: image, text [image,text]")
    p.add_argument("--no-int8", action="store_true", help="write only the fp32 graphs")
    p.add_argument("--per-tensor", action="store_true",
                   help="int8 weights with one scale per tensor (default: per output channel)")
    p.add_argument("--json", action="store_true", help="print the export's JSON")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    spec = model_spec(args)
    if (spec is None) == (args.model_arg is None):
        print("clipkit export: name the model once: MODEL, --model NAME or --checkpoint PATH", file=sys.stderr)
        return 2
    spec = spec if spec is not None else args.model_arg
    towers = [t.strip() for t in args.towers.split(",") if t.strip()]
    bad = sorted(set(towers) - {"image", "text"})
    if bad or not towers:
        print(f"clipkit export: --towers takes image and/or text, got {args.towers!r}", file=sys.stderr)
        return 2
    try:
        from clipkit.models.onnx import export_onnx, require_onnx

        require_onnx()  # before loading any weights
        from clipkit.checkpoints import load

        model, _ = load(spec)
        manifest = export_onnx(model, args.onnx, quantize=not args.no_int8, per_channel=not args.per_tensor,
                               towers=towers)
    except ImportError as e:
        print(f"clipkit export: {e}", file=sys.stderr)
        return 2
    except (ValueError, TypeError, FileNotFoundError, OSError, RuntimeError) as e:
        print(f"clipkit export: {e}", file=sys.stderr)
        return 2
    if args.json:
        print(json.dumps(manifest, indent=2))
        return 0
    for tower, graphs in manifest["graphs"].items():
        for precision, name in graphs.items():
            print(f"{tower:5s} {precision:4s} {args.onnx.rstrip('/')}/{name}")
    print(f"weights {manifest['weights_fingerprint'][:16]}, opset {manifest['opset']}"
          + (f", int8: {manifest['quantization']['method']} ({manifest['quantization']['weights']})"
             if manifest["quantization"] else ""))
    return 0
