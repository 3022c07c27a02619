"""Zero-shot classification: class names + prompt templates -> a linear head over image embeddings.

CLIP's procedure (paper section 3.1.4 and its ImageNet notebook): fill every template
with every class name, encode each prompt with the text tower, L2-normalise each
embedding, average them per class and normalise again. The (C, D) result is the weight of
a bias-free linear layer over normalised image embeddings; logits are that product times
the model's temperature exp(logit_scale) (100 for the released models).

Speed, exactly (see DESIGN.md): prompts are tokenised once, duplicates are encoded once,
and prompts are sorted by length and encoded in batches cut at the batch's longest
prompt. The text tower is causal and reads out at the end-of-text token, so the padding
it skips cannot change the result. Heads are cached on disk, keyed by the weights, the
tokenizer, the templates and the class names.

Three layers of API:

- :func:`build_head` -> :class:`ZeroShotHead`, an ``nn.Module`` (features -> logits);
- :func:`zero_shot` -> :class:`ZeroShotClassifier`, a fitted scikit-learn classifier over
  images, paths, tensors, datasets or precomputed embeddings;
- :func:`encode_images` / :func:`encode_prompts`, the batching helpers everything shares.
"""
from __future__ import annotations

import contextlib
import hashlib
import json
import os
import sys
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
import torch.nn.functional as F
from sklearn.base import BaseEstimator, ClassifierMixin, TransformerMixin
from torch import nn

from clipkit.templates import default_templates_for, fill, load_classnames, load_templates

__all__ = [
    "DEFAULT_MODEL",
    "ZeroShotHead",
    "ZeroShotClassifier",
    "ClassificationResult",
    "EncodedImages",
    "build_head",
    "class_embeddings",
    "head_from_embeddings",
    "encode_prompts",
    "encode_images",
    "resolve_model",
    "default_templates",
    "zero_shot",
]

# The model used when none is named: the project's own small CLIP, trained on the synthetic
# world and shipped inside the package (clipkit/weights/clipkit-synth.safetensors, see the
# model card beside it). Set to None to force callers to name a model.
DEFAULT_MODEL: str | None = "clipkit-synth"

# Bump when the head's arithmetic or file layout changes: old cache entries stop matching.
HEAD_FORMAT_VERSION = 1

_NO_MODEL_MESSAGE = (
    "no model given and no default model is shipped yet: pass model='ViT-B/32' (with its weights "
    "available), a checkpoint path, a CLIP module, or a (model, preprocess) pair"
)


# ---------------------------------------------------------------------------
# Small helpers: progress bars, the cache switch, the model's device
# ---------------------------------------------------------------------------


def _cache_enabled(cache: bool) -> bool:
    from clipkit.utils import cache_enabled

    return cache_enabled(cache)


def _model_device(model: nn.Module) -> torch.device:
    try:
        return next(model.parameters()).device
    except StopIteration:
        return torch.device("cpu")


@contextlib.contextmanager
def _eval_mode(model: nn.Module):
    """Eval mode for the duration (ResNet towers have BatchNorm), then the caller's mode back."""
    was_training = model.training
    model.eval()
    try:
        yield
    finally:
        model.train(was_training)


def _logit_scale(model: nn.Module) -> float:
    """exp(logit_scale), clipped at 100 as CLIP does; 100 for a model without one."""
    scale = getattr(model, "logit_scale", None)
    if scale is None:
        return 100.0
    return float(torch.as_tensor(scale).detach().float().exp().clamp(max=100.0))


def default_templates(dataset) -> str:
    """The template set CLIP used for a class set or dataset name; ``"simple"`` otherwise."""
    return default_templates_for(dataset)


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
    if _cache_enabled(cache):
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


# ---------------------------------------------------------------------------
# Models
# ---------------------------------------------------------------------------


def resolve_model(model=None, device: str | torch.device | None = "cpu") -> tuple[nn.Module, Callable]:
    """(model, preprocess) from a name or path (``clipkit.load``), a ``(model, preprocess)``
    pair, a CLIP module, or None (the shipped default, :data:`DEFAULT_MODEL`)."""
    preprocess = None
    if isinstance(model, tuple):
        if len(model) != 2:
            raise ValueError(f"model as a tuple must be (model, preprocess), got {len(model)} items")
        model, preprocess = model
    if model is None:
        if DEFAULT_MODEL is None:
            raise ValueError(_NO_MODEL_MESSAGE)
        model = DEFAULT_MODEL
    if isinstance(model, (str, os.PathLike)):
        from clipkit.checkpoints import load

        model, loaded = load(model, device=device or "cpu")
        preprocess = preprocess or loaded
    if not isinstance(model, nn.Module) or not hasattr(model, "encode_image") or not hasattr(model, "config"):
        raise TypeError(f"model must be a CLIP module, a (model, preprocess) pair, a name or a path; "
                        f"got {type(model).__name__}")
    if device is not None:
        model = model.to(device)
    if preprocess is None:
        from clipkit.transforms import image_transform

        cfg = model.config
        preprocess = image_transform(cfg.vision.image_size, cfg.image_mean, cfg.image_std)
    return model, preprocess


# ---------------------------------------------------------------------------
# Images -> embeddings (shared by the classifier, the linear probe and the CLI)
# ---------------------------------------------------------------------------


@dataclass
class EncodedImages:
    """Normalised image embeddings of the items that could be read.

    `indices[i]` is the position in the input of row i; `labels` (aligned with the rows)
    is filled when the input yielded ``(image, label)`` pairs; `skipped` lists
    ``(position or path, reason)`` for items that could not be read.
    """

    features: torch.Tensor
    indices: list[int]
    labels: list | None = None
    skipped: list[tuple[Any, str]] = field(default_factory=list)


class _Unreadable(Exception):
    def __init__(self, where, reason: str):
        super().__init__(reason)
        self.where, self.reason = where, reason


def _is_image_like(x) -> bool:
    from PIL import Image

    return isinstance(x, (str, os.PathLike, Image.Image)) or (isinstance(x, torch.Tensor) and x.ndim == 3)


def _load_one(item, preprocess, size: int, position) -> torch.Tensor:
    """One image (PIL, path or (3, S, S) tensor) -> (3, S, S) float tensor; _Unreadable if
    a file cannot be read."""
    from PIL import Image

    from clipkit.transforms import apply_transform, ensure_image_tensor, load_image

    if isinstance(item, torch.Tensor):
        ensure_image_tensor(item, size, what=f"image {position}")
        if item.ndim != 3:
            raise ValueError(f"image {position} is a batch of shape {tuple(item.shape)}; expected one "
                             f"image (3, {size}, {size})")
        return item
    if isinstance(item, (str, os.PathLike)):
        try:
            item = load_image(item)
        except (OSError, ValueError) as e:
            raise _Unreadable(os.fspath(item), str(e)) from e
    if isinstance(item, Image.Image):
        return apply_transform(preprocess, item, size)
    skipped = _as_skipped(item)
    if skipped is not None:
        raise _Unreadable(skipped.path, skipped.reason)
    raise TypeError(f"item {position} is a {type(item).__name__}; expected a PIL image, a file path, "
                    f"or a preprocessed (3, {size}, {size}) float tensor")


def _as_skipped(item):
    """The dataset readers' stand-in for a file that could not be read, if `item` is one."""
    mod = sys.modules.get("clipkit.data.datasets")
    return item if mod is not None and isinstance(item, mod.Skipped) else None


def _plain_label(y):
    if isinstance(y, torch.Tensor) and y.ndim == 0:
        return y.item()
    if isinstance(y, np.generic):
        return y.item()
    return y


def _stream(X, preprocess, size: int) -> Iterator[tuple[list[int], torch.Tensor | None, list | None, list]]:
    """Chunks of ``(positions, images (B, 3, S, S) or None, labels or None, unreadable)``.

    Per-item inputs come one at a time (B = 1, the caller batches); tensors and
    DataLoader batches come as they are.
    """
    from torch.utils.data import DataLoader

    from clipkit.transforms import ensure_image_tensor

    if isinstance(X, torch.Tensor):
        ensure_image_tensor(X, size, what="the image tensor")
        batch = X if X.ndim == 4 else X[None]
        yield list(range(len(batch))), batch, None, []
        return
    if isinstance(X, DataLoader):
        pos = 0
        for b, batch in enumerate(X):
            labels = None
            if isinstance(batch, (list, tuple)) and batch and (
                    (isinstance(batch[0], torch.Tensor) and batch[0].ndim == 4)
                    or (len(batch) == 2 and isinstance(batch[0], (list, tuple)))):
                # (images, labels, ...) as default_collate makes it, or [images] (TensorDataset)
                if len(batch) >= 2:
                    labels = [_plain_label(y) for y in batch[1]]
                batch = batch[0]
            if isinstance(batch, torch.Tensor):
                ensure_image_tensor(batch, size, what=f"DataLoader batch {b}")
                n = len(batch)
                yield list(range(pos, pos + n)), batch, labels, []
            else:  # a list of images (a custom collate_fn)
                items = list(batch)
                for j, item in enumerate(items):
                    yield from _one(item, labels[j] if labels is not None else None, pos + j, preprocess, size)
                n = len(items)
            pos += n
        return
    if isinstance(X, (str, os.PathLike)) or _is_image_like(X):
        X = [X]  # one image
    if not hasattr(X, "__len__") or not hasattr(X, "__getitem__"):
        X = list(X)
    for i in range(len(X)):
        try:
            item = X[i]
        except (OSError, ValueError) as e:  # a dataset failing to read item i
            yield [i], None, None, [(i, f"{type(e).__name__}: {e}")]
            continue
        label = None
        if isinstance(item, (tuple, list)) and len(item) >= 2:
            item, label = item[0], _plain_label(item[1])
        yield from _one(item, label, i, preprocess, size)


def _one(item, label, position, preprocess, size):
    try:
        tensor = _load_one(item, preprocess, size, position)
    except _Unreadable as e:
        where = e.where if e.where is not None else position
        yield [position], None, None, [(where, e.reason)]
        return
    yield [position], tensor[None], None if label is None else [label], []


@torch.inference_mode()
def encode_images(model: nn.Module, X, *, preprocess: Callable | None = None, batch_size: int = 64,
                  device: str | torch.device | None = None, skip_unreadable: bool = False,
                  progress: bool | None = None) -> EncodedImages:
    """L2-normalised image embeddings (N, D), float32 on CPU, of any image input.

    `X`: a list of PIL images / file paths / (3, S, S) tensors; a preprocessed float
    tensor (N, 3, S, S); a map-style dataset whose items are images or ``(image, label)``
    (e.g. a torchvision dataset with ``transform=None`` or a transform producing tensors);
    or a DataLoader yielding tensors or ``(tensors, labels)``. PIL images and paths go
    through `preprocess` (default: the model's CLIP preprocessing).

    An unreadable file raises an error naming it, unless ``skip_unreadable=True``, which
    lists it in ``.skipped`` and goes on.
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    size = model.config.vision.image_size
    if preprocess is None:
        from clipkit.transforms import image_transform

        cfg = model.config
        preprocess = image_transform(size, cfg.image_mean, cfg.image_std)
    device = _model_device(model) if device is None else torch.device(device)
    total = len(X) if hasattr(X, "__len__") and not isinstance(X, (str, os.PathLike)) else None

    feats: list[torch.Tensor] = []
    indices: list[int] = []
    labels: list = []
    have_labels: bool | None = None
    skipped: list[tuple[Any, str]] = []
    pending: list[torch.Tensor] = []
    pending_idx: list[int] = []
    from clipkit.utils import progress_bar

    def flush():
        if pending:
            batch = torch.cat(pending)  # (B, 3, S, S)
            for chunk in batch.split(batch_size):
                emb = model.encode_image(chunk.to(device))
                feats.append(F.normalize(emb.float(), dim=-1).cpu())
            indices.extend(pending_idx)
            pending.clear()
            pending_idx.clear()

    with _eval_mode(model), progress_bar(total, unit="img", desc="encoding images", progress=progress,
                                         min_items=4 * batch_size if total is not None else 1 << 62) as bar:
        for positions, images, chunk_labels, bad in _stream(X, preprocess, size):
            bar.update(len(positions))
            for where, reason in bad:
                if not skip_unreadable:
                    from clipkit.transforms import ImageLoadError

                    raise ImageLoadError(where, f"cannot read image {where}: {reason}")
                skipped.append((where, reason))
            if images is None:
                continue
            if have_labels is None:
                have_labels = chunk_labels is not None
            elif have_labels != (chunk_labels is not None):
                raise ValueError(f"item {positions[0]}: some items are (image, label) pairs and some are not")
            if chunk_labels is not None:
                labels.extend(chunk_labels)
            pending.append(images)
            pending_idx.extend(positions)
            if len(pending_idx) >= batch_size:
                flush()
        flush()
    if feats:
        features = torch.cat(feats)
    else:
        features = torch.empty(0, model.config.embed_dim)
    return EncodedImages(features, indices, labels if have_labels else None, skipped)


# ---------------------------------------------------------------------------
# scikit-learn classifier
# ---------------------------------------------------------------------------


@dataclass
class ClassificationResult:
    """What :meth:`ZeroShotClassifier.classify_files` found: one entry per readable input.

    `items[i]` is ``(input, [(class name, probability), ...])`` best first, for the input
    at `indices[i]`; `skipped` lists ``(path or position, reason)``.
    """

    items: list[tuple[Any, list[tuple[str, float]]]]
    indices: list[int]
    probabilities: np.ndarray
    skipped: list[tuple[Any, str]]

    @property
    def predictions(self) -> list[str]:
        return [top[0][0] for _, top in self.items]

    def to_dict(self) -> dict:
        return {
            "results": [{"input": str(x), "top": [{"label": n, "probability": p} for n, p in top]}
                        for x, top in self.items],
            "skipped": [{"input": str(w), "reason": r} for w, r in self.skipped],
        }


class ZeroShotClassifier(ClassifierMixin, TransformerMixin, BaseEstimator):
    """CLIP zero-shot classification as a scikit-learn classifier.

    ``fit()`` builds the head from `classnames` and `templates` (no training examples
    are used; ``fit`` takes no ``X``). With ``classnames=None``, the distinct values of
    ``y`` (sorted, as scikit-learn does) are the class names, so ``fit(None, y)`` works
    in a pipeline with string labels. ``classes_`` holds the labels ``predict`` returns.

    ``X`` for ``predict``/``predict_proba``/``decision_function``/``transform``/``score``:

    - images: a list of PIL images or file paths, a preprocessed float tensor
      (N, 3, S, S), a map-style dataset of images or ``(image, label)``, a DataLoader;
    - precomputed image embeddings: a 2-d float array or tensor (N, D), D = the model's
      embedding width (raw or normalised).

    An unreadable file makes ``predict`` raise an error naming it (one output per input is
    scikit-learn's contract); :meth:`classify_files` skips it instead and lists it.
    ``decision_function`` returns (N, C) logits also for two classes.

    ``fast="bf16"`` or ``"int8"`` encodes the images with `clipkit.models.fast.fast_model`
    (bfloat16 weights, or ONNX Runtime with int8 weights); the head is built with the
    model as given.
    """

    def __init__(self, classnames=None, templates=None, model=None, *, device="cpu", batch_size=64,
                 cache=True, progress=None, fast=None):
        self.classnames = classnames
        self.templates = templates
        self.model = model
        self.device = device
        self.batch_size = batch_size
        self.cache = cache
        self.progress = progress
        self.fast = fast

    # -- fitting --------------------------------------------------------------

    def fit(self, X=None, y=None):
        """Build the head; returns self.

        No training examples are used (zero-shot). `X`, if given, is only validated:
        numeric `X` must be image embeddings of the model's width, other `X` (images) is
        ignored. `y`, if given, must hold class labels; it supplies the class names when
        ``classnames`` is None.
        """
        clip, preprocess = resolve_model(self.model, self.device)
        dim = int(clip.config.embed_dim)
        n_samples = None
        if X is not None:  # checked (2-d, finite, not empty), not used; its width is checked at predict
            feats = _numeric_features(_numpy_images_as_tensor(X), None, clip.config.vision.image_size)
            n_samples = None if feats is None else len(feats)
        if y is not None:
            y = _check_labels(y)
            if n_samples is not None and len(y) != n_samples:
                raise ValueError(f"X has {n_samples} samples but y has {len(y)} labels; they must match")
        if self.classnames is not None:
            import warnings

            from clipkit.templates import SingleClassWarning

            with warnings.catch_warnings():  # build_head below says it, once
                warnings.simplefilter("ignore", SingleClassWarning)
                names = load_classnames(self.classnames)
            classes = np.asarray(names)
        elif y is not None:
            classes = np.unique(y)
            names = [str(c) for c in classes]
        else:
            raise ValueError("no class names: pass classnames=[...] (or a set name such as 'imagenet'), "
                             "or fit(None, y) with y holding the label names")
        templates = self.templates if self.templates is not None else default_templates_for(self.classnames)
        self.head_ = build_head(clip, names, templates, batch_size=self.batch_size, cache=self.cache,
                                progress=self.progress, device=self.device)
        self.classes_ = classes
        self.templates_ = list(self.head_.templates)
        from clipkit.models.fast import fast_model

        self.model_ = fast_model(clip, self.fast)  # the images' encoder; the head above used `clip`
        self.preprocess_ = preprocess
        self.n_features_in_ = dim
        return self

    @property
    def head(self) -> ZeroShotHead:
        """The fitted head, a torch module: normalised features (N, D) -> logits (N, C)."""
        self._check_fitted()
        return self.head_

    def _check_fitted(self):
        from sklearn.utils.validation import check_is_fitted

        check_is_fitted(self, "head_")

    def __sklearn_tags__(self):
        tags = super().__sklearn_tags__()
        tags.target_tags.required = False  # classnames give the classes; y is optional
        tags.input_tags.allow_nan = False
        return tags

    # -- inputs ------------------------------------------------------------------

    def _features(self, X, skip_unreadable: bool = False) -> EncodedImages:
        """Normalised features of X (float32, on the model's device for the head)."""
        self._check_fitted()
        X = _numpy_images_as_tensor(X)
        feats = _numeric_features(X, self.n_features_in_, self.model_.config.vision.image_size)
        if feats is not None:
            return EncodedImages(F.normalize(feats, dim=-1), list(range(len(feats))))
        enc = encode_images(self.model_, X, preprocess=self.preprocess_, batch_size=self.batch_size,
                            device=self.device, skip_unreadable=skip_unreadable, progress=self.progress)
        if not len(enc.features) and not enc.skipped:
            raise ValueError("X is empty: no images to classify")
        return enc

    @torch.inference_mode()
    def _logits(self, features: torch.Tensor) -> torch.Tensor:
        head = self.head_
        return head(features.to(head.weight.device)).float().cpu()

    # -- scikit-learn API ------------------------------------------------------------

    def transform(self, X) -> np.ndarray:
        """Normalised image embeddings (N, D), float32."""
        return self._features(X).features.numpy()

    def decision_function(self, X) -> np.ndarray:
        """Logits (N, C) = exp(logit_scale) * cosine similarity with each class."""
        return self._logits(self._features(X).features).numpy()

    def predict_proba(self, X) -> np.ndarray:
        """Softmax of the logits over the classes (N, C), float64."""
        return torch.softmax(self._logits(self._features(X).features).double(), dim=1).numpy()

    def predict(self, X) -> np.ndarray:
        """The most likely class label for each input (N,)."""
        logits = self._logits(self._features(X).features)  # checks fitted first
        return self.classes_[logits.argmax(dim=1).numpy()]

    def predict_topk(self, X, k: int = 5) -> tuple[np.ndarray, np.ndarray]:
        """The k most likely labels (N, k) and their probabilities (N, k), best first."""
        self._check_fitted()
        k = _check_k(k, len(self.classes_))
        probs = torch.softmax(self._logits(self._features(X).features).double(), dim=1)
        top_p, top_i = probs.topk(k, dim=1)
        return self.classes_[top_i.numpy()], top_p.numpy()

    def score(self, X, y, sample_weight=None) -> float:
        """Accuracy. `y` holds class labels (as in ``classes_``) or integer class indices."""
        from sklearn.metrics import accuracy_score

        y = np.asarray(y)
        pred = self.predict(X)
        if y.dtype.kind in "iu" and self.classes_.dtype.kind not in "iu":
            if len(y) and (y.min() < 0 or y.max() >= len(self.classes_)):
                raise ValueError(f"integer labels must be class indices in [0, {len(self.classes_)})")
            y = self.classes_[y]
        return float(accuracy_score(y, pred, sample_weight=sample_weight))

    # -- batch mode ----------------------------------------------------------------

    def classify_files(self, X, k: int = 5) -> ClassificationResult:
        """Top-k labels for every readable input; unreadable files are skipped and listed
        (also in ``self.skipped_``) instead of raising. For the CLI's batch mode."""
        self._check_fitted()
        k = _check_k(k, len(self.classes_))
        enc = self._features(X, skip_unreadable=True)
        self.skipped_ = list(enc.skipped)
        if len(enc.features):
            probs = torch.softmax(self._logits(enc.features).double(), dim=1)
        else:
            probs = torch.empty(0, len(self.classes_), dtype=torch.float64)
        top_p, top_i = probs.topk(k, dim=1)
        inputs = _input_names(X)
        items = []
        for row, pos in enumerate(enc.indices):
            top = [(str(self.classes_[j]), float(p)) for j, p in zip(top_i[row].tolist(), top_p[row].tolist())]
            items.append((inputs[pos] if inputs is not None else pos, top))
        return ClassificationResult(items, list(enc.indices), probs.numpy(), list(enc.skipped))


def _input_names(X) -> list | None:
    """Printable names of list inputs (paths as given; other items by position)."""
    if isinstance(X, (str, os.PathLike)):
        return [os.fspath(X)]
    if isinstance(X, (list, tuple)):
        return [os.fspath(x) if isinstance(x, (str, os.PathLike)) else i for i, x in enumerate(X)]
    return None


def _check_k(k, n_classes: int) -> int:
    if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or k < 1:
        raise ValueError(f"k must be a positive int, got {k!r}")
    return int(min(k, n_classes))


def _numpy_images_as_tensor(X):
    """Preprocessed images given as a float numpy array (N, 3, S, S) -> a tensor; X otherwise."""
    if isinstance(X, np.ndarray) and X.ndim in (3, 4) and X.dtype.kind == "f":
        return torch.from_numpy(np.ascontiguousarray(X))
    return X


def _numeric_features(X, dim: int | None, image_size: int) -> torch.Tensor | None:
    """X as float32 image embeddings (N, D) if it is numeric data; None if X is images.

    Numeric input goes through scikit-learn's ``check_array`` (2-d, finite, real, not
    empty; its messages) and must have the model's embedding width D.
    """
    from sklearn.utils import check_array

    if isinstance(X, torch.Tensor):
        if X.ndim in (3, 4):
            return None  # image tensor(s): validated on the image path
        X = X.detach().cpu().float().numpy()
    elif _is_sparse(X):
        raise TypeError(f"sparse input is not supported: X must be a dense array of image embeddings "
                        f"(N, {dim}) or images")
    elif not (isinstance(X, np.ndarray) or hasattr(X, "__array__")
              or (isinstance(X, (list, tuple)) and len(X) and _is_number_row(X[0]))):
        return None
    arr = check_array(X, dtype="numeric", ensure_2d=True, ensure_all_finite=True, input_name="X")
    if dim is not None and arr.shape[1] != dim:
        raise ValueError(f"X has {arr.shape[1]} features, but {ZeroShotClassifier.__name__} is expecting "
                         f"{dim} features as input (image embeddings of the model's width), or images "
                         f"(N, 3, {image_size}, {image_size})")
    return torch.from_numpy(np.array(arr, dtype=np.float32))  # a writable copy


def _check_labels(y) -> np.ndarray:
    """y as 1-d class labels (scikit-learn's checks and messages)."""
    from sklearn.utils import assert_all_finite, column_or_1d
    from sklearn.utils.multiclass import check_classification_targets

    y = column_or_1d(np.asarray(y), warn=True)
    if y.dtype.kind in "fc":
        assert_all_finite(y, input_name="y")
    check_classification_targets(y)
    return y


def _is_number_row(x) -> bool:
    """A row of numbers (one embedding), as opposed to an image or a file path."""
    if isinstance(x, torch.Tensor):
        return x.ndim == 1
    return (isinstance(x, (list, tuple, np.ndarray)) and len(x) > 0
            and isinstance(x[0], (int, float, np.number)) and not isinstance(x[0], bool))


def _is_sparse(X) -> bool:
    mod = sys.modules.get("scipy.sparse")
    return mod is not None and mod.issparse(X)


# ---------------------------------------------------------------------------
# One call
# ---------------------------------------------------------------------------


def zero_shot(classnames, templates=None, model=None, *, device: str = "cpu", batch_size: int = 64,
              cache: bool = True, progress: bool | None = None, fast: str | None = None) -> ZeroShotClassifier:
    """A fitted :class:`ZeroShotClassifier`.

    `classnames`: a list, a set name (``imagenet``, ``mnist``, ``cifar10``, ``cifar100``)
    or a file; `templates`: a list, a set name or a file (default: CLIP's set for a named
    class set, else ``"a photo of a {}."``); `model`: a name or path (``clipkit.load``), a
    ``(model, preprocess)`` pair or a CLIP module; `fast`: ``"bf16"`` or ``"int8"`` for a
    faster image encoder (see :class:`ZeroShotClassifier`).

        >>> clf = zero_shot(["cat", "dog"], model="ViT-B/32")      # doctest: +SKIP
        >>> clf.predict(["cat.jpg"])                               # doctest: +SKIP
    """
    clf = ZeroShotClassifier(classnames, templates, model, device=device, batch_size=batch_size,
                             cache=cache, progress=progress, fast=fast)
    return clf.fit()
