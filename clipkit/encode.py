"""The one way images become embeddings: any image input (paths, PIL images, arrays,
tensors, datasets, DataLoaders) -> batches -> L2-normalised embeddings, with a per-item
report of what could not be read; and the model a caller names (a name, a path, a module,
a (model, preprocess) pair, or the shipped default) resolved to (model, preprocess)."""
from __future__ import annotations

import contextlib
import os
import sys
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any, Callable

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["DEFAULT_MODEL", "EncodedImages", "encode_images", "resolve_model"]

# The model used when none is named: the project's own small CLIP, trained on the synthetic
# world and shipped inside the package (clipkit/weights/clipkit-synth.safetensors, see the
# model card beside it). Set to None to force callers to name a model.
DEFAULT_MODEL: str | None = "clipkit-synth"

_NO_MODEL_MESSAGE = (
    "no model given and no default model is shipped yet: pass model='ViT-B/32' (with its weights "
    "available), a checkpoint path, a CLIP module, or a (model, preprocess) pair"
)


# ---------------------------------------------------------------------------
# Small helpers: the model's device, eval mode
# ---------------------------------------------------------------------------


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


