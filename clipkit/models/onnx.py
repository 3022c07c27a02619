"""ONNX export of the two towers, fp32 and int8, with a JSON that says what they are.

    clipkit.export_onnx(model, "out/")       # image.onnx, text.onnx, image.int8.onnx, text.int8.onnx,
                                             # clipkit_onnx.json
    clipkit export clipkit-synth --onnx out/ # the same from the command line

The graphs:

- `image.onnx`: `images` float32 (batch, 3, S, S), preprocessed as the JSON's
  `preprocessing` says -> `embeddings` float32 (batch, D), not normalised.
- `text.onnx`: `ids` int64 (batch, length), 1 <= length <= context, token ids as
  `clipkit.tokenize` gives them (zero padded) -> `embeddings` (batch, D), not normalised.
  The tower is causal and reads out at each row's end-of-text token (its argmax), so
  the ids may be cut after the longest prompt: the result does not change.
- `*.int8.onnx`: the same graphs with ONNX Runtime's dynamic quantization
  (`onnxruntime.quantization.quantize_dynamic`): the weights of every MatMul/Gemm stored
  as int8 with one scale per output channel (`per_channel=False`: one per tensor), the
  activations quantized per call from their observed range. Per channel costs nothing
  in speed here and kept the first shipped model's MNIST predictions closer to fp32 (99.64%
  agreement against 99.56%, benchmarks/results/towers.md). Convolutions stay fp32 (ViT's patchify
  is one small convolution; ResNet towers gain little, see benchmarks/results/towers.md).
  Image embeddings keep cosine >= 0.999 to fp32 (tests/test_onnx.py).

Export uses torch's TorchScript-based exporter (`dynamo=False`): it needs only `onnx`,
keeps the batch and text length dynamic through the argmax read-out, and matches torch
to float32 rounding. Requires the optional extra: `pip install "clipkit[onnx]"`.
"""
from __future__ import annotations

import contextlib
import copy
import json
import logging
import os
import warnings
from collections.abc import Sequence
from pathlib import Path

import torch
from torch import nn

__all__ = ["export_onnx", "quantize_graph", "read_manifest", "require_onnx", "MANIFEST", "OPSET",
           "EXPORT_FORMAT"]

OPSET = 17  # LayerNormalization is a single op from 17 on
MANIFEST = "clipkit_onnx.json"
EXPORT_FORMAT = 1  # bump when the graphs or the JSON change: cached exports stop matching
INSTALL_HINT = 'pip install "clipkit[onnx]"'


def require_onnx():
    """(onnx, onnxruntime), or an ImportError that says how to install them."""
    try:
        import onnx
        import onnxruntime
    except ImportError as e:
        raise ImportError(f"ONNX export and the onnxruntime backend need onnx and onnxruntime "
                          f"({e.name or e} is missing): {INSTALL_HINT}") from None
    return onnx, onnxruntime


# ---------------------------------------------------------------------------
# The towers as modules with one tensor in and one out
# ---------------------------------------------------------------------------


class _ImageTower(nn.Module):
    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.model.encode_image(images)


class _TextTower(nn.Module):
    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        return self.model.encode_text(ids)


@contextlib.contextmanager
def _quiet():
    """Silence the exporter's and quantizer's chatter (tracer warnings about the input
    checks, the legacy-exporter notice, quantization's pre-processing advice)."""
    root = logging.getLogger()
    level = root.level
    root.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield
    finally:
        root.setLevel(level)


def _export_tower(model: nn.Module, tower: str, path: Path, opset: int) -> None:
    cfg = model.config
    if tower == "image":
        S = cfg.vision.image_size
        module, name = _ImageTower(model), "images"
        example = torch.zeros(2, 3, S, S)
        axes = {name: {0: "batch"}, "embeddings": {0: "batch"}}
    else:
        T = min(8, cfg.text.context_length)
        module, name = _TextTower(model), "ids"
        example = torch.ones(2, T, dtype=torch.long)
        example[:, -1] = cfg.text.vocab_size - 1  # an end-of-text-like read-out position
        axes = {name: {0: "batch", 1: "length"}, "embeddings": {0: "batch"}}
    with _quiet(), torch.no_grad():
        torch.onnx.export(module, (example,), str(path), dynamo=False, opset_version=opset,
                          input_names=[name], output_names=["embeddings"], dynamic_axes=axes,
                          do_constant_folding=True)


def quantize_graph(src: str | os.PathLike, dst: str | os.PathLike, *, per_channel: bool = True) -> dict:
    """Dynamic int8 quantization of an fp32 graph's MatMul/Gemm weights; returns its description."""
    require_onnx()
    from onnxruntime.quantization import QuantType, quantize_dynamic

    with _quiet():
        quantize_dynamic(str(src), str(dst), weight_type=QuantType.QInt8, per_channel=per_channel,
                         op_types_to_quantize=["MatMul", "Gemm"])
    return {"method": "dynamic", "library": "onnxruntime.quantization.quantize_dynamic",
            "weights": "int8, symmetric, " + ("per output channel" if per_channel else "per tensor"),
            "activations": "uint8, range measured per call", "ops": ["MatMul", "Gemm"]}


# ---------------------------------------------------------------------------
# Export
# ---------------------------------------------------------------------------


def _manifest(model: nn.Module, opset: int) -> dict:
    import onnx
    import onnxruntime

    from clipkit import __version__
    from clipkit.utils import weights_fingerprint

    cfg = model.config
    scale = getattr(model, "logit_scale", None)
    return {
        "format": EXPORT_FORMAT,
        "clipkit": __version__,
        "torch": torch.__version__,
        "onnx": onnx.__version__,
        "onnxruntime": onnxruntime.__version__,
        "opset": opset,
        "weights_fingerprint": weights_fingerprint(model),
        "config": cfg.to_dict(),
        "logit_scale": None if scale is None else float(scale.detach().float()),
        "preprocessing": {
            "image_size": cfg.vision.image_size, "resize": "bicubic, shorter side to image_size",
            "crop": "center, image_size x image_size", "channels": "RGB, [0, 1]",
            "mean": list(cfg.image_mean), "std": list(cfg.image_std), "layout": "NCHW float32",
        },
        "tokenizer": {"kind": "CLIP byte-level BPE (clipkit.tokenize)", "context_length": cfg.text.context_length,
                      "start_of_text": 49406, "end_of_text": 49407, "pad": 0,
                      "read_out": "argmax of each row (the end-of-text token)"},
        "inputs": {"image": {"name": "images", "shape": ["batch", 3, cfg.vision.image_size, cfg.vision.image_size],
                             "dtype": "float32"},
                   "text": {"name": "ids", "shape": ["batch", "length"], "dtype": "int64",
                            "length": f"1..{cfg.text.context_length}"}},
        "outputs": {"name": "embeddings", "shape": ["batch", cfg.embed_dim], "dtype": "float32",
                    "normalized": False},
        "graphs": {},
        "quantization": None,
    }


def export_onnx(model: nn.Module, directory: str | os.PathLike, *, quantize: bool = True,
                per_channel: bool = True, towers: Sequence[str] = ("image", "text"),
                opset: int = OPSET) -> dict:
    """Write the towers of a clipkit CLIP model to `directory` as ONNX graphs (fp32, and int8
    with `quantize=True`) and `clipkit_onnx.json` describing them; returns that JSON's dict.

    `per_channel`: int8 weights with one scale per output channel (default) or per tensor.
    `towers`: which towers ("image", "text"). The model is not changed (a float32 copy
    is exported when its weights are in another dtype or on another device).
    """
    require_onnx()
    if not isinstance(model, nn.Module) or not hasattr(model, "visual") or not hasattr(model, "config"):
        raise TypeError(f"expected a clipkit CLIP model, got {type(model).__name__}")
    towers = list(dict.fromkeys(towers))
    bad = sorted(set(towers) - {"image", "text"})
    if bad or not towers:
        raise ValueError(f"towers must be some of 'image', 'text'; got {list(towers)}")
    first = next(model.parameters())
    if first.dtype != torch.float32 or first.device.type != "cpu":
        model = copy.deepcopy(model).float().cpu()
    out = Path(directory)
    out.mkdir(parents=True, exist_ok=True)
    manifest = _manifest(model, opset)
    was_training = model.training
    model.eval()
    try:
        for tower in towers:
            fp32 = out / f"{tower}.onnx"
            _export_tower(model, tower, fp32, opset)
            manifest["graphs"].setdefault(tower, {})["fp32"] = fp32.name
            if quantize:
                int8 = out / f"{tower}.int8.onnx"
                manifest["quantization"] = quantize_graph(fp32, int8, per_channel=per_channel)
                manifest["graphs"][tower]["int8"] = int8.name
    finally:
        model.train(was_training)
    text = json.dumps(manifest, indent=2) + "\n"
    (out / MANIFEST).write_text(text, encoding="utf-8")
    return json.loads(text)  # exactly what the file says (lists, not tuples)


def read_manifest(directory: str | os.PathLike) -> dict:
    """The JSON of an export folder; ValueError naming the folder when absent or unusable."""
    path = Path(directory) / MANIFEST
    try:
        manifest = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ValueError(f"{directory} holds no ONNX export ({MANIFEST} is missing): "
                         "write one with clipkit.export_onnx or `clipkit export MODEL --onnx DIR`") from None
    except (OSError, ValueError) as e:
        raise ValueError(f"cannot read {path}: {e}") from None
    if not isinstance(manifest, dict) or manifest.get("format") != EXPORT_FORMAT:
        raise ValueError(f"{path} is not a clipkit ONNX export of format {EXPORT_FORMAT}; export it again")
    return manifest
