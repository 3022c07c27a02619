"""clipkit: CLIP zero-shot classification, benchmarks and a DALL-E style generator.

Nothing heavy happens at import time: the public names below are resolved lazily
on first access (vocabularies, models and torch-heavy modules load when used).
"""
from __future__ import annotations

import importlib

__version__ = "0.1.0"

# public name -> module that defines it
_LAZY = {
    "Tokenizer": "clipkit.tokenizer",
    "tokenize": "clipkit.tokenizer",
    "get_tokenizer": "clipkit.tokenizer",
    "Preprocess": "clipkit.transforms",
    "image_transform": "clipkit.transforms",
    "load_image": "clipkit.transforms",
    "available_models": "clipkit.models",
    "create_model": "clipkit.models",
    "get_config": "clipkit.models",
    "CLIP": "clipkit.models",
    "load": "clipkit.checkpoints",
    "save": "clipkit.checkpoints",
    "zero_shot": "clipkit.zeroshot",
    "ZeroShotClassifier": "clipkit.zeroshot",
    "build_head": "clipkit.zeroshot",
    "Reranker": "clipkit.rerank",
    "export_onnx": "clipkit.models.onnx",
    "Index": "clipkit.index",
}

__all__ = ["__version__", *sorted(_LAZY)]


def __getattr__(name: str):
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'clipkit' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value  # cache: later lookups skip __getattr__
    return value


def __dir__():
    return sorted(set(globals()) | set(_LAZY))
