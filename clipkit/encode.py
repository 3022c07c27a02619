"""The one way images become embeddings: any image input (paths, PIL images, arrays,
tensors, datasets, DataLoaders) -> batches -> L2-normalised embeddings, with a per-item
report of what could not be read; the one feature cache on disk; and the model a caller
names (a name, a path, a module, a (model, preprocess) pair, or the shipped default)
resolved to (model, preprocess).

- :func:`encode_images`: embeddings of any input, in one pass, nothing cached.
- :func:`extract_features`: the same embeddings computed in fixed chunks of the input,
  each chunk cached on disk (safetensors) as soon as it is done, keyed by the weights and
  a caller's key for the data and its preprocessing; an interrupted run resumes at the
  first missing chunk, and under ``torchrun`` the chunks are dealt over the ranks. A chunk
  is always batched the same way, so the features are identical cached or not, resumed or
  not, on one rank or many. The benchmark and the prompt-sensitivity report read their
  image features here.
"""
from __future__ import annotations

import contextlib
import hashlib
import json
import os
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["DEFAULT_MODEL", "EncodedImages", "encode_images", "extract_features", "resolve_model"]

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
# Images -> embeddings (the classifier, the reranker, the index, evaluation, training's evaluation)
# ---------------------------------------------------------------------------


@dataclass
class EncodedImages:
    """Normalised image embeddings of the items that could be read.

    `indices[i]` is the position in the input of row i; `labels` (aligned with the rows)
    is filled when the input yielded ``(image, label)`` pairs; `skipped` lists
    ``(position or path, reason)`` for items that could not be read. `encoded` counts the
    items read and encoded (kept or skipped) by this call (0 when every chunk came from the
    feature cache); `seconds` is the time the call took.
    """

    features: torch.Tensor  # (N, D) float32
    indices: list[int]
    labels: list | None = None
    skipped: list[tuple[Any, str]] = field(default_factory=list)
    encoded: int = 0
    seconds: float = 0.0


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


class _Guarded(torch.utils.data.Dataset):
    """Items `positions` of `X` as ``(position, item, None)``, or ``(position, None, reason)``
    when reading one fails; a Dataset so that DataLoader workers can read them."""

    def __init__(self, X, positions: range):
        self.X, self.positions = X, positions

    def __len__(self) -> int:
        return len(self.positions)

    def __getitem__(self, j: int):
        i = self.positions[j]
        try:
            return i, self.X[i], None
        except (OSError, ValueError) as e:  # a dataset failing to read item i
            return i, None, f"{type(e).__name__}: {e}"


def _read(X, positions: range, workers: int, batch_size: int):
    """``(position, item, error)`` in order; with `workers`, read in that many processes."""
    items = _Guarded(X, positions)
    if workers <= 0:
        yield from (items[j] for j in range(len(items)))
        return
    from torch.utils.data import DataLoader

    for batch in DataLoader(items, batch_size=batch_size, num_workers=workers, collate_fn=list):
        yield from batch


def _stream(X, preprocess, size: int, span: range | None = None, workers: int = 0, batch_size: int = 1
            ) -> Iterator[tuple[list[int], torch.Tensor | None, list | None, list]]:
    """Chunks of ``(positions, images (B, 3, S, S) or None, labels or None, unreadable)``.

    Per-item inputs come one at a time (B = 1, the caller batches); tensors and
    DataLoader batches come as they are. `span`: only these positions of a map-style
    input or tensor (default: all).
    """
    from torch.utils.data import DataLoader

    from clipkit.transforms import ensure_image_tensor

    if isinstance(X, torch.Tensor):
        ensure_image_tensor(X, size, what="the image tensor")
        batch = X if X.ndim == 4 else X[None]
        span = range(len(batch)) if span is None else span
        yield list(span), batch[span.start:span.stop], None, []
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
    for i, item, error in _read(X, range(len(X)) if span is None else span, workers, batch_size):
        if error is not None:
            yield [i], None, None, [(i, error)]
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


def encode_images(model: nn.Module, X, *, preprocess: Callable | None = None, batch_size: int = 64,
                  device: str | torch.device | None = None, skip_unreadable: bool = False,
                  progress: bool | None = None, workers: int = 0) -> EncodedImages:
    """L2-normalised image embeddings (N, D), float32 on CPU, of any image input.

    `X`: a list of PIL images / file paths / (3, S, S) tensors; a preprocessed float
    tensor (N, 3, S, S); a map-style dataset whose items are images or ``(image, label)``
    (e.g. a torchvision dataset with ``transform=None`` or a transform producing tensors);
    or a DataLoader yielding tensors or ``(tensors, labels)``. PIL images and paths go
    through `preprocess` (default: the model's CLIP preprocessing).

    An unreadable file raises an error naming it, unless ``skip_unreadable=True``, which
    lists it in ``.skipped`` and goes on. `workers` > 0 reads the items of a map-style
    input in that many DataLoader processes (decoding and the dataset's transform).
    For large inputs worth caching or sharing over ranks, see :func:`extract_features`.
    """
    return _encode(model, X, preprocess=preprocess, batch_size=batch_size, device=device,
                   skip_unreadable=skip_unreadable, progress=progress, workers=workers)


@torch.inference_mode()
def _encode(model: nn.Module, X, *, preprocess: Callable | None, batch_size: int, device, skip_unreadable: bool,
            progress: bool | None, workers: int = 0, span: range | None = None) -> EncodedImages:
    """:func:`encode_images` of the positions `span` of `X` (default: all of it)."""
    if batch_size < 1 or workers < 0:
        raise ValueError(f"batch_size must be >= 1 and workers >= 0, got {batch_size} and {workers}")
    t0 = time.perf_counter()
    size = model.config.vision.image_size
    if preprocess is None:
        from clipkit.transforms import image_transform

        cfg = model.config
        preprocess = image_transform(size, cfg.image_mean, cfg.image_std)
    device = _model_device(model) if device is None else torch.device(device)
    total = len(X) if hasattr(X, "__len__") and not isinstance(X, (str, os.PathLike)) else None
    if span is not None:
        total = len(span)

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
        seen = 0
        for positions, images, chunk_labels, bad in _stream(X, preprocess, size, span, workers, batch_size):
            bar.update(len(positions))
            seen += len(positions)
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
    return EncodedImages(features, indices, labels if have_labels else None, skipped, encoded=seen,
                         seconds=time.perf_counter() - t0)


# ---------------------------------------------------------------------------
# The feature cache: chunks of an input's embeddings, on disk and over ranks
# ---------------------------------------------------------------------------

CHUNK = 512  # items per cached chunk; also the unit of work per rank
FEATURE_FORMAT = 3  # bump when the chunk layout changes (3: one format for every input, EncodedImages)


def feature_cache_dir(model: nn.Module, cache_key: str, *, skip_unreadable: bool = False) -> Path | None:
    """The chunk folder of (these weights, `cache_key`, `skip_unreadable`) under
    ``$CLIPKIT_CACHE/features``, or None (one warning) when it cannot be created or written."""
    from clipkit.utils import usable_cache_dir, weights_fingerprint

    parts = {"format": FEATURE_FORMAT, "weights": weights_fingerprint(model), "data": cache_key,
             "skip_unreadable": bool(skip_unreadable)}
    return usable_cache_dir("features", hashlib.sha256(json.dumps(parts).encode()).hexdigest()[:32])


def _plain(v):
    """A JSON-safe stand-in for a label or a skipped item's position or path."""
    return v if isinstance(v, (int, float, str, bool)) or v is None else str(v)


def write_chunk(enc: EncodedImages, path: str | os.PathLike) -> None:
    """One chunk as safetensors: features and indices as tensors, integer labels as a
    tensor (other labels as JSON), the skip list as JSON in the metadata. Written to a
    temporary name and renamed: a reader sees all of it or nothing. A failed write warns
    once and is otherwise ignored (a full or read-only cache must not stop the work)."""
    from safetensors.torch import save_file

    path = Path(path)
    tensors = {"features": enc.features.float().contiguous(),
               "indices": torch.tensor(enc.indices, dtype=torch.long).reshape(-1)}
    meta = {"format": str(FEATURE_FORMAT), "skipped": json.dumps([[_plain(w), str(r)] for w, r in enc.skipped])}
    if enc.labels is None:
        meta["labels"] = "none"
    elif all(type(y) is int for y in enc.labels):
        tensors["labels"] = torch.tensor(enc.labels, dtype=torch.long).reshape(-1)
        meta["labels"] = "tensor"
    else:
        meta["labels"] = json.dumps([_plain(y) for y in enc.labels])
    tmp = path.with_name(f"{path.name}.tmp{os.getpid()}")
    try:
        save_file(tensors, str(tmp), metadata=meta)
        os.replace(tmp, path)
    except Exception as e:  # noqa: BLE001 - a full or read-only cache must not stop the work
        from clipkit.utils import warn_cache

        warn_cache(f"could not write the feature cache {path} ({type(e).__name__}: {e}); going on without it",
                   key="feature-cache-write")
        with contextlib.suppress(OSError):
            tmp.unlink()


def read_chunk(path: str | os.PathLike, *, rows: int | None = None, dim: int | None = None) -> EncodedImages:
    """A chunk written by :func:`write_chunk`, checked: format, dtypes, agreeing lengths
    (`rows` = items in the chunk, kept + skipped; `dim` = the embedding width), finite
    features. Anything else raises :class:`~clipkit.errors.CacheError` naming the file."""
    from safetensors import safe_open

    from clipkit.errors import CacheError

    path = Path(path)
    try:
        with safe_open(str(path), framework="pt") as f:
            meta = f.metadata() or {}
            tensors = {k: f.get_tensor(k) for k in f.keys()}
        fmt, kind = meta.get("format"), meta["labels"]
        skipped = json.loads(meta["skipped"])
        json_labels = json.loads(kind) if kind not in ("none", "tensor") else None
        feats, indices = tensors["features"], tensors["indices"]
    except Exception as e:  # noqa: BLE001 - any failure to parse the file means "not a valid chunk"
        raise CacheError(f"corrupt feature-cache chunk {path}: {type(e).__name__}: {str(e)[:200]}") from e
    problems = []
    if fmt != str(FEATURE_FORMAT):
        problems.append(f"format {fmt!r}, expected {FEATURE_FORMAT}")
    if feats.dtype != torch.float32 or feats.ndim != 2 or (dim is not None and feats.shape[1] != dim):
        problems.append(f"features of {feats.dtype} {tuple(feats.shape)}")
    n = len(feats)
    if indices.dtype != torch.int64 or indices.shape != (n,):
        problems.append(f"indices of {indices.dtype} {tuple(indices.shape)} for {n} rows")
    labels = None
    if kind == "tensor":
        t = tensors.get("labels")
        if t is None or t.dtype != torch.int64 or t.shape != (n,):
            problems.append(f"labels {None if t is None else (t.dtype, tuple(t.shape))} for {n} rows")
        else:
            labels = t.tolist()
    elif kind != "none":
        if not isinstance(json_labels, list) or len(json_labels) != n:
            problems.append(f"a label list that does not have {n} entries")
        labels = json_labels
    if not isinstance(skipped, list) or not all(
            isinstance(x, list) and len(x) == 2 and isinstance(x[0], (int, str)) and isinstance(x[1], str)
            for x in skipped):
        problems.append("a malformed skip list")
    elif rows is not None and n + len(skipped) != rows:
        problems.append(f"{n} rows + {len(skipped)} skipped, expected {rows} images")
    if not problems and not bool(torch.isfinite(feats).all()):
        problems.append("non-finite features")
    if problems:
        raise CacheError(f"corrupt feature-cache chunk {path}: {'; '.join(problems)}")
    return EncodedImages(feats, indices.tolist(), labels, [(w, r) for w, r in skipped])


def _length(X) -> int | None:
    """How many items a sliceable input holds (a tensor, a list, a map-style dataset), else None."""
    from torch.utils.data import DataLoader

    if isinstance(X, torch.Tensor):
        return len(X) if X.ndim == 4 else 1
    if isinstance(X, DataLoader) or not (hasattr(X, "__len__") and hasattr(X, "__getitem__")):
        return None
    return len(X)


def _concat(parts: list[EncodedImages], dim: int) -> EncodedImages:
    """Chunks in input order -> one EncodedImages."""
    kept = [p for p in parts if len(p.indices)]
    if len({p.labels is None for p in kept}) > 1:
        raise ValueError("some items are (image, label) pairs and some are not")
    return EncodedImages(
        features=torch.cat([p.features for p in parts]) if parts else torch.empty(0, dim),
        indices=[i for p in parts for i in p.indices],
        labels=None if not kept or kept[0].labels is None else [y for p in kept for y in p.labels],
        skipped=[s for p in parts for s in p.skipped],
    )


def extract_features(model: nn.Module, X, *, preprocess: Callable | None = None, batch_size: int = 64,
                     workers: int = 0, device: str | torch.device | None = None, cache_key: str | None = None,
                     cache: bool = True, skip_unreadable: bool = False, progress: bool | None = None,
                     chunk_size: int = CHUNK, dist_ctx=None,
                     stop_after_chunks: int | None = None) -> EncodedImages | None:
    """:func:`encode_images` of `X`, computed chunk by chunk (`chunk_size` items) and cached.

    With `cache_key` (a string that identifies the data *and its preprocessing*, e.g. a
    dataset's file hash and its transform), each chunk is cached under
    ``$CLIPKIT_CACHE/features``, keyed by it, the model's weights and `skip_unreadable`;
    a later call reads what is there and encodes only the missing chunks.
    ``cache=False`` or ``CLIPKIT_NO_CACHE=1`` turns that off. `dist_ctx` (a
    :class:`clipkit.distributed.DistInfo` of a joined process group) deals the chunks over
    the ranks round-robin and gathers them on rank 0: the result there, None on the other
    ranks. `stop_after_chunks` stops after encoding that many chunks (InterruptedError;
    tests resuming). Inputs that cannot be sliced (a DataLoader, an iterator) are one chunk.
    """
    from clipkit.distributed import DistInfo
    from clipkit.errors import CacheError
    from clipkit.utils import cache_enabled, progress_bar, warn_cache

    if batch_size < 1 or chunk_size < 1 or workers < 0:
        raise ValueError(f"batch_size and chunk_size must be >= 1 and workers >= 0; got {batch_size}, "
                         f"{chunk_size}, {workers}")
    ctx = dist_ctx or DistInfo()
    if isinstance(X, (str, os.PathLike)) or (_is_image_like(X) and not isinstance(X, torch.Tensor)):
        X = [X]  # one image
    n = _length(X)
    chunks = [None] if n is None else [range(s, min(s + chunk_size, n)) for s in range(0, n, chunk_size)]
    mine = chunks[ctx.rank::ctx.world]
    folder = None
    if cache_key is not None and cache_enabled(cache):
        folder = feature_cache_dir(model, cache_key, skip_unreadable=skip_unreadable)
    dim = model.config.embed_dim
    kwargs = dict(preprocess=preprocess, batch_size=batch_size, device=device, skip_unreadable=skip_unreadable,
                  workers=workers)
    parts: list[EncodedImages] = []
    t0, encoded, done_now = time.perf_counter(), 0, 0
    show = progress if ctx.main else False
    total = None if n is None else sum(len(c) for c in mine)
    with progress_bar(total, unit="img", desc="image features", progress=show if n is not None else False,
                      min_items=4 * batch_size) as bar:
        for span in mine:
            name = "chunk_all" if span is None else f"chunk_{span.start:09d}_{span.stop:09d}"
            path = folder / f"{name}.safetensors" if folder is not None else None
            part = None
            if path is not None and path.exists():
                try:
                    part = read_chunk(path, rows=None if span is None else len(span), dim=dim)
                except CacheError as e:
                    warn_cache(f"{e}; recomputing it", key=str(path))
            if part is None:
                if stop_after_chunks is not None and done_now >= stop_after_chunks:
                    raise InterruptedError(f"stopped after {done_now} chunks (stop_after_chunks)")
                part = _encode(model, X, span=span, progress=show if span is None else False, **kwargs)
                if path is not None:
                    write_chunk(part, path)
                encoded += part.encoded
                done_now += 1
            parts.append(part)
            bar.update(0 if span is None else len(span))
    seconds = time.perf_counter() - t0
    if ctx.world > 1:
        import torch.distributed as dist

        gathered: list[Any] = [None] * ctx.world
        dist.all_gather_object(gathered, {"parts": parts, "seconds": seconds, "encoded": encoded})
        if not ctx.main:
            return None
        by_start = {}
        for r, g in enumerate(gathered):
            for span, p in zip(chunks[r::ctx.world], g["parts"]):
                by_start[span.start if span is not None else 0] = p
        parts = [by_start[span.start if span is not None else 0] for span in chunks]
        seconds = max(g["seconds"] for g in gathered)
        encoded = sum(g["encoded"] for g in gathered)
    out = _concat(parts, dim)
    out.encoded, out.seconds = encoded, seconds
    return out
