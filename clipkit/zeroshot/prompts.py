"""Prompts -> text embeddings: every (class, template) prompt encoded once, exactly, by the
fastest exact path (shared prompt prefixes, or batches cut at their longest prompt), and
CLIP's per-class average of them."""
from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from clipkit.encode import _eval_mode, _model_device
from clipkit.templates import default_templates_for, fill


# ---------------------------------------------------------------------------
# Prompt encoding
# ---------------------------------------------------------------------------


def _dedupe_rows(ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(unique rows in first-seen order, inverse index) of an integer matrix.

    A dict over each row's bytes: O(N), about 10x faster than torch.unique(dim=0), which
    sorts.
    """
    a = np.ascontiguousarray(ids.numpy())
    rows = a.view(np.dtype((np.void, a.shape[1] * a.itemsize))).ravel().tolist()
    first: dict[bytes, int] = {}
    inverse = np.fromiter((first.setdefault(r, len(first)) for r in rows), dtype=np.int64, count=len(rows))
    keep = np.empty(len(first), dtype=np.int64)
    keep[inverse[::-1]] = np.arange(len(rows) - 1, -1, -1)  # the first occurrence wins
    return ids[torch.from_numpy(keep)], torch.from_numpy(inverse)


@torch.inference_mode()
def encode_prompts(model: nn.Module, prompts: Sequence[str], *, tokenizer=None, batch_size: int = 64,
                   fast: bool | str = True, device: str | torch.device | None = None,
                   progress: bool | None = None) -> torch.Tensor:
    """L2-normalised text embeddings (P, D), float32 on CPU, one row per prompt, in order.

    ``fast=True`` (default, ``"prefix"``): tokenise once at the model's context length and
    encode each distinct shared prefix once (`clipkit.models.prefix`: the causal tower's
    keys/values over "a photo of a" serve every prompt that starts so), each prompt's own
    tokens batched by length; a model without a clipkit text tower falls back to
    ``"length"``: each distinct token sequence once, longest first, each batch cut after
    its longest prompt. ``fast=False``: every prompt at the full context length, in
    order, duplicates and all - the references' way, kept as the test oracle and the
    benchmark baseline. All three agree to float32 rounding.
    Prompts longer than the context are truncated by the tokenizer, with its warning.
    """
    if fast not in (True, False, "prefix", "length"):
        raise ValueError(f"fast must be True, False, 'prefix' or 'length', got {fast!r}")
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    if tokenizer is None:
        from clipkit.tokenizer import get_tokenizer

        tokenizer = get_tokenizer()
    device = _model_device(model) if device is None else torch.device(device)
    ctx = model.config.text.context_length
    ids = tokenizer(list(prompts), context_length=ctx)  # (P, ctx), zero padded
    if fast in (True, "prefix") and len(ids):
        from clipkit.models.prefix import encode_text_shared_prefix, supports_shared_prefix

        if supports_shared_prefix(model) and device == _model_device(model):
            from clipkit.utils import progress_bar

            with progress_bar(len(ids), unit="prompt", desc="encoding prompts", progress=progress,
                              min_items=8 * batch_size) as bar, _eval_mode(model):
                emb = encode_text_shared_prefix(model, ids.to(device), progress=bar.update)
            return F.normalize(emb.float(), dim=-1).cpu()
    if not fast:
        unique, inverse = ids, None
        order = torch.arange(len(ids))
        lengths = torch.full((len(ids),), ctx)
    else:
        unique, inverse = _dedupe_rows(ids)  # (U, ctx), (P,)
        # end-of-text is the largest id, so argmax finds the read-out position
        lengths = unique.argmax(dim=1) + 1  # (U,)
        order = torch.argsort(lengths, descending=True, stable=True)  # longest first: memory errors show early
    out: torch.Tensor | None = None
    from clipkit.utils import progress_bar

    with progress_bar(len(unique), unit="prompt", desc="encoding prompts", progress=progress,
                      min_items=8 * batch_size) as bar:
        for start in range(0, len(unique), batch_size):
            idx = order[start:start + batch_size]
            length = int(lengths[idx].max())
            emb = model.encode_text(unique[idx, :length].to(device))  # (B, D)
            emb = F.normalize(emb.float(), dim=-1).cpu()
            if out is None:
                out = torch.empty(len(unique), emb.shape[1])
            out[idx] = emb
            bar.update(len(idx))
    if out is None:
        raise ValueError("no prompts to encode")
    return out if inverse is None else out[inverse]


def class_embeddings(model: nn.Module, classnames: Sequence[str], templates: Sequence[str], *,
                     tokenizer=None, batch_size: int = 64, fast: bool | str = True,
                     device: str | torch.device | None = None, progress: bool | None = None) -> torch.Tensor:
    """Normalised embedding of every (class, template) prompt: (C, T, D), float32 on CPU."""
    prompts = [fill(t, c) for c in classnames for t in templates]  # class-major: row c*T + t
    emb = encode_prompts(model, prompts, tokenizer=tokenizer, batch_size=batch_size, fast=fast,
                         device=device, progress=progress)
    return emb.view(len(classnames), len(templates), -1)  # (C, T, D)


def head_from_embeddings(embeddings: torch.Tensor, subset: Sequence[int] | None = None) -> torch.Tensor:
    """CLIP's class weights from per-prompt embeddings (C, T, D): the mean over templates
    (or the given subset of template indices) of the normalised embeddings, renormalised."""
    if subset is not None:
        embeddings = embeddings[:, list(subset)]
    return F.normalize(embeddings.mean(dim=1), dim=-1)  # (C, D)


def default_templates(dataset) -> str:
    """The template set CLIP used for a class set or dataset name; ``"simple"`` otherwise."""
    return default_templates_for(dataset)
