"""The zero-shot head: CLIP's class weights as a bias-free linear layer over normalised image
embeddings, built from prompts and cached on disk."""
from __future__ import annotations

import contextlib
import hashlib
import json
import os
from collections.abc import Sequence
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from clipkit.encode import _model_device
from clipkit.templates import default_templates_for, load_classnames, load_templates
from clipkit.utils import cache_enabled
from clipkit.zeroshot.prompts import class_embeddings, head_from_embeddings

# Bump when the head's arithmetic or file layout changes: old cache entries stop matching.
HEAD_FORMAT_VERSION = 1


def _logit_scale(model: nn.Module) -> float:
    """exp(logit_scale), clipped at 100 as CLIP does; 100 for a model without one."""
    scale = getattr(model, "logit_scale", None)
    if scale is None:
        return 100.0
    return float(torch.as_tensor(scale).detach().float().exp().clamp(max=100.0))


# ---------------------------------------------------------------------------
# The head
# ---------------------------------------------------------------------------


class ZeroShotHead(nn.Module):
    """Logits = exp(logit_scale) * normalize(image_features) @ weight.T.

    `linear` is a bias-free ``nn.Linear(D, C)`` whose rows are the class embeddings;
    `logit_scale` is a buffer holding the temperature itself (already exponentiated).
    Image features may be raw or normalised (they are normalised here; for unit vectors
    that is a no-op up to rounding).
    """

    def __init__(self, weight: torch.Tensor, logit_scale: float = 100.0,
                 classnames: Sequence[str] = (), templates: Sequence[str] = ()):
        super().__init__()
        C, D = weight.shape
        self.linear = nn.Linear(D, C, bias=False)
        with torch.no_grad():
            self.linear.weight.copy_(weight)
        self.linear.weight.requires_grad_(False)
        self.register_buffer("logit_scale", torch.tensor(float(logit_scale)))
        self.classnames = list(classnames)
        self.templates = list(templates)

    @property
    def weight(self) -> torch.Tensor:
        return self.linear.weight

    def forward(self, image_features: torch.Tensor) -> torch.Tensor:
        x = F.normalize(image_features.to(self.linear.weight.dtype), dim=-1)  # (N, D)
        return self.logit_scale * self.linear(x)  # (N, C)

    def extra_repr(self) -> str:
        return f"classes={len(self.classnames)}, templates={len(self.templates)}, logit_scale={float(self.logit_scale):.4g}"


def _head_cache_key(model: nn.Module, tokenizer, context_length: int, templates: Sequence[str],
                    classnames: Sequence[str]) -> str:
    from clipkit.utils import weights_fingerprint

    parts = {
        "format": HEAD_FORMAT_VERSION,
        "weights": weights_fingerprint(model),
        "tokenizer": tokenizer.fingerprint,
        "context_length": int(context_length),
        "templates": list(templates),
        "classnames": list(classnames),
    }
    return hashlib.sha256(json.dumps(parts, ensure_ascii=False).encode("utf-8")).hexdigest()


def _cache_read(path: Path, shape: tuple[int, int]) -> tuple[torch.Tensor, dict[str, str]] | None:
    """(weight, metadata) of a cached head, or None when absent, unreadable or of another shape."""
    from safetensors import SafetensorError, safe_open

    try:
        with safe_open(str(path), framework="pt") as f:
            metadata = f.metadata() or {}
            weight = f.get_tensor("weight")
    except FileNotFoundError:
        return None
    except (OSError, SafetensorError, KeyError, ValueError) as e:
        if path.exists():
            from clipkit.utils import warn_cache

            warn_cache(f"ignoring the unreadable head cache entry {path} ({type(e).__name__}: {e}); "
                       "rebuilding it", key=str(path))
        return None  # rebuild (and overwrite)
    if tuple(weight.shape) != shape or weight.dtype != torch.float32:
        return None
    return weight, metadata


def _cache_write(path: Path, weight: torch.Tensor, metadata: dict[str, str]) -> None:
    """Atomic: write a temporary file next to the target, then rename over it."""
    from safetensors.torch import save_file

    tmp = path.with_name(f"{path.name}.{os.getpid()}.part")
    try:
        save_file({"weight": weight.contiguous()}, str(tmp), metadata=metadata)
        os.replace(tmp, path)
    except Exception as e:  # noqa: BLE001 - a read-only or full cache must not stop classification
        from clipkit.utils import warn_cache

        warn_cache(f"could not write the head cache {path} ({type(e).__name__}: {e}); going on without it",
                   key="head-cache-write")
        with contextlib.suppress(OSError):
            tmp.unlink()


def build_head(model: nn.Module, classnames, templates=None, *, tokenizer=None, batch_size: int = 64,
               cache: bool = True, progress: bool | None = None, device: str | torch.device | None = None,
               fast: bool | str = True) -> ZeroShotHead:
    """The zero-shot head for `classnames` (a list, a set name or a file) and `templates`
    (a list, a set name or a file; default: the set CLIP used for a named class set, else
    ``"simple"``), on the model's device (or `device`).

    ``cache=False`` or the environment variable ``CLIPKIT_NO_CACHE=1`` skips the disk
    cache (``$CLIPKIT_CACHE/heads``). By default shared prompt prefixes are encoded once
    (``fast=True``, see :func:`encode_prompts`); ``fast="length"`` encodes each prompt
    whole, ``fast=False`` every prompt at the full context length (the slow reference
    path). All give the same weights to float rounding.
    """
    if templates is None:
        templates = default_templates_for(classnames)
    names = load_classnames(classnames)  # a list, a set name or a file; checked (and warned about) once
    temps = load_templates(templates)
    if tokenizer is None:
        from clipkit.tokenizer import get_tokenizer

        tokenizer = get_tokenizer()
    ctx = model.config.text.context_length
    shape = (len(names), model.config.embed_dim)

    import warnings

    from clipkit.tokenizer import TruncationWarning

    weight = path = None
    truncated = ""  # the tokenizer's warning about prompts cut to the context, kept with the head
    if cache_enabled(cache):
        from clipkit.utils import usable_cache_dir

        folder = usable_cache_dir("heads")
        if folder is not None:
            path = folder / f"{_head_cache_key(model, tokenizer, ctx, temps, names)}.safetensors"
            hit = _cache_read(path, shape)
            if hit is not None:
                weight, metadata = hit
                truncated = metadata.get("truncated", "")
                if truncated:  # the prompts are not tokenized again: say it again
                    warnings.warn(truncated, TruncationWarning, stacklevel=2)
    if weight is None:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always", TruncationWarning)
            emb = class_embeddings(model, names, temps, tokenizer=tokenizer, batch_size=batch_size, fast=fast,
                                   device=device, progress=progress)
        for w in caught:  # pass every warning on; remember the truncation ones
            if issubclass(w.category, TruncationWarning):
                truncated = "; ".join(filter(None, [truncated, str(w.message)]))
            warnings.warn_explicit(w.message, w.category, w.filename, w.lineno)
        weight = head_from_embeddings(emb)
        if path is not None:
            _cache_write(path, weight, {"format": str(HEAD_FORMAT_VERSION), "classes": str(len(names)),
                                        "templates": str(len(temps)), "truncated": truncated})
    head = ZeroShotHead(weight, _logit_scale(model), names, temps)
    return head.to(_model_device(model) if device is None else device)


