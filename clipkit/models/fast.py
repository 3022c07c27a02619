"""The opt-in CPU fast path for inference: bfloat16 weights, fused attention, channels-last.

    fast = clipkit.models.fast_inference(model)      # a converted copy; `model` is untouched
    emb = fast.encode_image(x, normalize=True)       # bfloat16 embeddings, cosine >= 0.999 to fp32

What it does, and why each part:

- weights converted to bfloat16 once, ahead of time. CPUs with AVX-512 BF16 (or AMX) run
  bf16 matmuls at about twice the fp32 rate; converting once avoids autocast's per-call
  casts of every weight, which made autocast slower than fp32 for image towers here.
  LayerNorm still computes in fp32 (`layers.LayerNorm`), and the final normalisation runs
  in fp32, which keeps the embeddings within cosine 0.999 of fp32 (tested on random and
  on the shipped trained weights in `tests/test_fast.py`).
- attention already runs through `scaled_dot_product_attention` (fused kernels) in both
  paths; the fast copy is put in eval mode with gradients off so nothing records autograd.
- ResNet towers get channels-last weights and inputs (NHWC), the layout oneDNN's
  convolutions prefer; ViTs have one convolution and gain nothing from it.

The embeddings are bfloat16: call `.float()` before comparing them with fp32 features.
Build zero-shot heads with the fp32 model (text is encoded once); use the fast copy for
the images, as `clipkit bench --fast` does.

`backend="onnxruntime"` is the other fast path (`clipkit.models.ort`): the towers exported
to ONNX and run by ONNX Runtime with int8 weights, faster again for ViT image towers
(figures in benchmarks/results/towers.md). `--fast bf16` / `--fast int8` on the commands
pick one of the two (`fast_model`).
"""
from __future__ import annotations

import copy

import torch
from torch import nn


def _to_channels_last(module: nn.Module, args):
    (x, *rest) = args
    if isinstance(x, torch.Tensor) and x.ndim == 4:
        x = x.contiguous(memory_format=torch.channels_last)
    return (x, *rest)


def fast_inference(model: nn.Module, dtype: torch.dtype = torch.bfloat16, *,
                   channels_last: bool | None = None, inplace: bool = False,
                   backend: str = "torch", quantize: str | None = None, threads: int | None = None) -> nn.Module:
    """A copy of a CLIP model (or `model` itself with `inplace=True`) set up for fast inference.

    dtype: weight dtype, bfloat16 by default (float16 also works; float32 keeps the weights
        and only applies the layout and eval settings).
    channels_last: NHWC layout for the image tower's convolutions; default True for
        modified-ResNet towers, False for ViTs.
    backend="onnxruntime": the towers exported to ONNX once (cached by the weights'
        fingerprint) and run by ONNX Runtime, `quantize="int8"` (default; dynamic int8
        MatMul weights, the fastest image path here) or `"fp32"`; returns a
        `clipkit.models.ort.OnnxCLIP` with the same `encode_image`/`encode_text`.
        Needs `pip install "clipkit[onnx]"`. `threads`: ONNX Runtime threads [torch's].
    """
    if backend == "onnxruntime":
        from clipkit.models.ort import onnx_inference

        return onnx_inference(model, quantize or "int8", threads=threads)
    if backend != "torch":
        raise ValueError(f"backend must be 'torch' or 'onnxruntime', got {backend!r}")
    if quantize is not None:
        raise ValueError("quantize applies to backend='onnxruntime'; the torch backend converts the weights to `dtype`")
    if not isinstance(model, nn.Module) or not hasattr(model, "visual") or not hasattr(model, "config"):
        raise TypeError(f"expected a clipkit CLIP model, got {type(model).__name__}")
    if dtype not in (torch.bfloat16, torch.float16, torch.float32):
        raise ValueError(f"dtype must be torch.bfloat16, torch.float16 or torch.float32, got {dtype}")
    fast = model if inplace else copy.deepcopy(model)
    fast.eval().requires_grad_(False)
    fast.to(dtype)
    if channels_last is None:
        channels_last = not model.config.vision.is_vit
    if channels_last:
        fast.visual.to(memory_format=torch.channels_last)
        fast.visual.register_forward_pre_hook(_to_channels_last)
    fast.fast_path = {"dtype": str(dtype).replace("torch.", ""), "channels_last": bool(channels_last)}
    return fast


FAST_MODES = ("bf16", "int8")


def fast_mode(mode: str | bool | None) -> str | None:
    """A `--fast` value in its one spelling: None/False -> None, True -> "bf16", a mode of
    `FAST_MODES` as it is; anything else is a ValueError."""
    if mode is None or mode is False:
        return None
    if mode is True:
        return "bf16"
    if mode in FAST_MODES:
        return mode
    raise ValueError(f"fast must be one of {FAST_MODES}, got {mode!r}")


def fast_model(model: nn.Module, mode: str | bool | None) -> nn.Module:
    """What `--fast MODE` means on the commands: None/False -> `model` itself; "bf16" (or
    True) -> the torch copy with bfloat16 weights; "int8" -> ONNX Runtime with int8 weights."""
    mode = fast_mode(mode)
    if mode is None:
        return model
    if mode == "bf16":
        return fast_inference(model)
    return fast_inference(model, backend="onnxruntime", quantize="int8")
