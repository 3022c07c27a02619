"""Benchmarks: zero-shot and linear-probe evaluation over a dataset, as clip_benchmark
reports them (top-1, top-5, mean per-class recall), plus per-class accuracy, a confusion
matrix, images/s and the files skipped.

Image features are computed in fixed chunks of the dataset and each chunk is cached on
disk as soon as it is done, keyed by (weights, dataset, preprocessing). So a second run
with other templates, or a linear probe after a zero-shot run, re-encodes nothing, and
an interrupted run resumes at the first missing chunk. Under `torchrun` the chunks are
dealt round-robin over the ranks and gathered on rank 0; because a chunk is always
batched the same way, features (and so results) are identical to a 1-process run.
"""
from __future__ import annotations

import hashlib
import json
import os
import platform
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch
import torch.distributed as dist

from clipkit.distributed import DistInfo, process_group

CHUNK = 512  # images per cached chunk; also the unit of work per rank
FEATURE_FORMAT = 2  # bump when the feature cache layout changes (2: safetensors chunks)


# ---------------------------------------------------------------------------
# Features
# ---------------------------------------------------------------------------


@dataclass
class Features:
    """Normalized image features of a dataset; rows of skipped files are absent."""

    features: torch.Tensor  # (N_kept, D) float32
    labels: torch.Tensor  # (N_kept,)
    indices: torch.Tensor  # (N_kept,) dataset indices
    skipped: list[dict] = field(default_factory=list)  # [{"path", "reason"}]
    seconds: float = 0.0  # time spent encoding in this run (0 when all cached)
    encoded: int = 0  # images encoded in this run


def _preprocess_key(transform) -> str:
    return repr(transform)


def feature_cache_key(model, dataset, transform) -> str:
    from clipkit.utils import weights_fingerprint

    return hashlib.sha256("|".join([
        f"v{FEATURE_FORMAT}", weights_fingerprint(model), dataset.key(), _preprocess_key(transform),
    ]).encode()).hexdigest()[:32]


def feature_cache_dir(model, dataset, transform) -> Path | None:
    """The chunk folder of this (weights, dataset, preprocessing), or None (one warning)
    when the cache cannot be created or written."""
    from clipkit.utils import usable_cache_dir

    return usable_cache_dir("features", feature_cache_key(model, dataset, transform))


def write_chunk(part: dict, path: Path) -> None:
    """A chunk as safetensors (features, labels, indices; the skip list in the metadata),
    written to a temporary name and renamed: a reader sees all of it or nothing."""
    from safetensors.torch import save_file

    tmp = path.with_name(f"{path.name}.tmp{os.getpid()}")
    tensors = {k: part[k].contiguous() for k in ("features", "labels", "indices")}
    try:
        save_file(tensors, str(tmp), metadata={"format": str(FEATURE_FORMAT),
                                                "skipped": json.dumps(part["skipped"])})
        os.replace(tmp, path)
    except Exception as e:  # noqa: BLE001 - a full or read-only cache must not stop the benchmark
        from clipkit.utils import warn_cache

        warn_cache(f"could not write the feature cache {path} ({type(e).__name__}: {e}); going on without it",
                   key="feature-cache-write")
        try:
            tmp.unlink()
        except OSError:
            pass


def read_chunk(path: str | Path, *, rows: int | None = None, dim: int | None = None) -> dict:
    """A chunk written by :func:`write_chunk`, checked: the three tensors, their dtypes and
    agreeing lengths (`rows` = images in the chunk, readable + skipped; `dim` = the
    embedding width). Anything else raises :class:`~clipkit.errors.CacheError` naming the file."""
    from safetensors import safe_open

    from clipkit.errors import CacheError

    path = Path(path)
    try:
        with safe_open(str(path), framework="pt") as f:
            meta = f.metadata() or {}
            part = {k: f.get_tensor(k) for k in ("features", "labels", "indices")}
        skipped = json.loads(meta["skipped"])
        fmt = meta.get("format")
    except Exception as e:  # noqa: BLE001 - any failure to parse the file means "not a valid chunk"
        raise CacheError(f"corrupt feature-cache chunk {path}: {type(e).__name__}: {str(e)[:200]}") from e
    feats, labels, indices = part["features"], part["labels"], part["indices"]
    problems = []
    if fmt != str(FEATURE_FORMAT):
        problems.append(f"format {fmt!r}, expected {FEATURE_FORMAT}")
    if feats.dtype != torch.float32 or feats.ndim != 2 or (dim is not None and feats.shape[1] != dim):
        problems.append(f"features of {feats.dtype} {tuple(feats.shape)}")
    if labels.dtype != torch.int64 or indices.dtype != torch.int64 or labels.shape != (len(feats),) \
            or indices.shape != (len(feats),):
        problems.append(f"labels {tuple(labels.shape)} / indices {tuple(indices.shape)} for {len(feats)} rows")
    if not isinstance(skipped, list) or not all(isinstance(x, dict) and {"path", "reason"} <= set(x)
                                                for x in skipped):
        problems.append("a malformed skip list")
    elif rows is not None and len(feats) + len(skipped) != rows:
        problems.append(f"{len(feats)} rows + {len(skipped)} skipped, expected {rows} images")
    if not problems and not bool(torch.isfinite(feats).all()):
        problems.append("non-finite features")
    if problems:
        raise CacheError(f"corrupt feature-cache chunk {path}: {'; '.join(problems)}")
    return {"features": feats, "labels": labels, "indices": indices, "skipped": skipped}


@torch.inference_mode()
def _encode_chunk(model, dataset, start: int, stop: int, batch_size: int, workers: int, device) -> dict:
    from clipkit.data.datasets import Indexed, collate_skipping

    loader = torch.utils.data.DataLoader(
        Indexed(dataset, range(start, stop)), batch_size=batch_size, num_workers=workers,
        collate_fn=collate_skipping, shuffle=False)
    feats, labels, indices, skipped = [], [], [], []
    for idx, images, ys, bad in loader:
        skipped += [{"path": s.path, "reason": s.reason} for s in bad]
        if images is None:
            continue
        feats.append(model.encode_image(images.to(device), normalize=True).float().cpu())
        labels.append(ys)
        indices.append(idx)
    dim = model.config.embed_dim
    return {
        "features": torch.cat(feats) if feats else torch.empty(0, dim),
        "labels": torch.cat(labels) if labels else torch.empty(0, dtype=torch.long),
        "indices": torch.cat(indices) if indices else torch.empty(0, dtype=torch.long),
        "skipped": skipped,
    }


def extract_features(model, dataset, *, batch_size: int = 64, workers: int = 0, cache: bool = True,
                     progress: bool | None = None, device: str = "cpu", dist_ctx: DistInfo | None = None,
                     stop_after_chunks: int | None = None, chunk_size: int = CHUNK) -> Features | None:
    """Encode every image of `dataset` (items `(image_tensor, label)`), chunk by chunk.

    Returns the features on rank 0 (None on other ranks). `stop_after_chunks` stops
    early after encoding that many chunks (used to test resuming).
    """
    from clipkit.errors import CacheError
    from clipkit.utils import cache_enabled, progress_bar, warn_cache

    ctx = dist_ctx or DistInfo()
    n = len(dataset)
    chunks = [(s, min(s + chunk_size, n)) for s in range(0, n, chunk_size)]
    mine = chunks[ctx.rank::ctx.world]
    folder = feature_cache_dir(model, dataset, getattr(dataset, "transform", None)) if cache_enabled(cache) else None
    model = model.eval()
    dim = model.config.embed_dim
    results: dict[int, dict] = {}
    t0, encoded, done_now = time.perf_counter(), 0, 0
    bar = progress_bar(sum(b - a for a, b in mine), unit="img", desc="image features",
                       progress=progress if ctx.main else False)
    for start, stop in mine:
        path = folder / f"chunk_{start:09d}_{stop:09d}.safetensors" if folder else None
        part = None
        if path is not None and path.exists():
            try:
                part = read_chunk(path, rows=stop - start, dim=dim)
            except CacheError as e:
                warn_cache(f"{e}; recomputing it", key=str(path))
        if part is None:
            if stop_after_chunks is not None and done_now >= stop_after_chunks:
                bar.close()
                raise InterruptedError(f"stopped after {done_now} chunks (stop_after_chunks)")
            part = _encode_chunk(model, dataset, start, stop, batch_size, workers, device)
            if path is not None:
                write_chunk(part, path)
            encoded += stop - start
            done_now += 1
        results[start] = part
        bar.update(stop - start)
    bar.close()
    seconds = time.perf_counter() - t0
    local = [results[s] for s, _ in mine]
    if ctx.world > 1:
        gathered: list[Any] = [None] * ctx.world
        dist.all_gather_object(gathered, {"parts": local, "seconds": seconds, "encoded": encoded})
        if not ctx.main:
            return None
        parts = {}
        for r, g in enumerate(gathered):
            for (s, _), p in zip(chunks[r::ctx.world], g["parts"]):
                parts[s] = p
        seconds = max(g["seconds"] for g in gathered)
        encoded = sum(g["encoded"] for g in gathered)
        ordered = [parts[s] for s, _ in chunks]
    else:
        ordered = local
    return Features(
        features=torch.cat([p["features"] for p in ordered]) if ordered else torch.empty(0, model.config.embed_dim),
        labels=torch.cat([p["labels"] for p in ordered]) if ordered else torch.empty(0, dtype=torch.long),
        indices=torch.cat([p["indices"] for p in ordered]) if ordered else torch.empty(0, dtype=torch.long),
        skipped=[s for p in ordered for s in p["skipped"]],
        seconds=seconds, encoded=encoded,
    )


# ---------------------------------------------------------------------------
# Metrics
# ---------------------------------------------------------------------------


def classification_metrics(logits: torch.Tensor, labels: torch.Tensor, num_classes: int) -> dict:
    """acc1, acc5, mean per-class recall (balanced accuracy), per-class accuracy, confusion."""
    labels = labels.long()
    n = len(labels)
    if n == 0:
        raise ValueError("no images were evaluated (all skipped?)")
    if logits.ndim != 2 or logits.shape[1] != num_classes:
        raise ValueError(f"logits of shape {tuple(logits.shape)} do not score {num_classes} classes")
    k = min(5, num_classes)
    topk = logits.topk(k, dim=1).indices  # (N, k)
    pred = topk[:, 0]
    confusion = torch.zeros(num_classes, num_classes, dtype=torch.long)
    confusion.index_put_((labels, pred), torch.ones_like(labels), accumulate=True)
    support = confusion.sum(1)
    present = support > 0
    per_class = torch.where(present, confusion.diag().double() / support.clamp(min=1), torch.nan)
    return {
        "acc1": float((pred == labels).double().mean()),
        "acc5": float((topk == labels[:, None]).any(1).double().mean()),
        "mean_per_class_recall": float(per_class[present].mean()),
        "per_class_accuracy": [None if torch.isnan(v) else float(v) for v in per_class],
        "confusion": confusion.tolist(),
    }


def plot_confusion(confusion: Sequence[Sequence[int]], classes: Sequence[str], path: str | Path,
                   title: str = "") -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    cm = np.asarray(confusion, dtype=float)
    norm = cm / np.maximum(cm.sum(1, keepdims=True), 1)
    size = max(4.0, 0.28 * len(classes) + 2)
    fig, ax = plt.subplots(figsize=(size, size))
    ax.imshow(norm, cmap="Blues", vmin=0, vmax=1)
    ax.set_xticks(range(len(classes)), classes, rotation=90, fontsize=7)
    ax.set_yticks(range(len(classes)), classes, fontsize=7)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    if len(classes) <= 20:
        for i in range(len(classes)):
            for j in range(len(classes)):
                if cm[i, j]:
                    ax.text(j, i, int(cm[i, j]), ha="center", va="center", fontsize=7,
                            color="white" if norm[i, j] > 0.5 else "black")
    ax.set_title(title or "confusion (row-normalised)")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


# ---------------------------------------------------------------------------
# The benchmark
# ---------------------------------------------------------------------------


def versions() -> dict:
    import clipkit

    out = {"clipkit": clipkit.__version__, "torch": torch.__version__, "python": platform.python_version()}
    for name in ("numpy", "sklearn", "PIL"):
        try:
            out[name] = __import__(name).__version__
        except Exception:  # pragma: no cover - optional
            pass
    return out


def run_benchmark(*, dataset: str = "mnist", root: str | None = None, split: str = "test",
                  task: str = "zeroshot", model: Any = None, templates: Any = None,
                  batch_size: int = 64, workers: int = 0, out: str | Path | None = None,
                  confusion_png: str | Path | None = None, cache: bool = True,
                  progress: bool | None = None, device: str = "cpu",
                  train_fraction: float = 0.5, seed: int = 0,
                  chunk_size: int = CHUNK, fast: bool | str | None = None,
                  _stop_after_chunks: int | None = None) -> dict | None:
    """Evaluate a model on a dataset; returns the results dict on rank 0 (None elsewhere).

    `fast="bf16"` (or True) encodes the images with `clipkit.models.fast_inference` (bfloat16
    weights, channels-last ResNets), `fast="int8"` with its ONNX Runtime backend (int8
    weights); the zero-shot head is still built with the fp32 text tower.
    """
    if task not in ("zeroshot", "linear-probe"):
        raise ValueError(f"task must be 'zeroshot' or 'linear-probe', got {task!r}")
    if batch_size < 1 or chunk_size < 1 or workers < 0:
        raise ValueError(f"batch_size and chunk_size must be >= 1 and workers >= 0; got {batch_size}, "
                         f"{chunk_size}, {workers}")
    if out is not None:  # before any work: a run must never end unable to write its result
        from clipkit.utils import check_output_path

        check_output_path(out)
    with process_group() as ctx:
        return _run(ctx, dataset, root, split, task, model, templates, batch_size, workers, out, confusion_png,
                    cache, progress, device, train_fraction, seed, chunk_size, fast, _stop_after_chunks)


def _run(ctx, dataset, root, split, task, model, templates, batch_size, workers, out, confusion_png, cache,
         progress, device, train_fraction, seed, chunk_size, fast, _stop_after_chunks) -> dict | None:
    from clipkit.data.datasets import open_dataset
    from clipkit.models.fast import fast_model
    from clipkit.utils import weights_fingerprint
    from clipkit.encode import resolve_model

    t_start = time.perf_counter()
    data = open_dataset(dataset, root, split)  # fails at once on a bad root or layout
    template_list = None
    if task == "zeroshot":  # a bad template set fails now, not after encoding every image
        from clipkit.templates import load_templates
        from clipkit.zeroshot import default_templates

        template_list = load_templates(templates if templates is not None else default_templates(dataset))
    clip, preprocess = resolve_model(model, device=device)
    clip = clip.eval()
    data.transform = preprocess
    image_model = fast_model(clip, fast)
    feats = extract_features(image_model, data, batch_size=batch_size, workers=workers, cache=cache,
                             progress=progress, device=device, dist_ctx=ctx,
                             stop_after_chunks=_stop_after_chunks, chunk_size=chunk_size)
    if not ctx.main:
        return None  # process_group() waits for rank 0's evaluation, then leaves

    result: dict[str, Any] = {
        "dataset": dataset,
        "data": data.description,
        "split": split,
        "model": _model_name(model, clip),
        "pretrained": weights_fingerprint(clip)[:16],
        "task": task,
        "fast_path": getattr(image_model, "fast_path", None),
        "world_size": ctx.world,
    }
    t_eval = time.perf_counter()
    if task == "zeroshot":
        from clipkit.zeroshot import build_head

        head = build_head(clip, data.classes, template_list, cache=cache, progress=progress, device=device)
        with torch.inference_mode():
            logits = head(feats.features.to(device)).float().cpu()
        metrics = classification_metrics(logits, feats.labels, len(data.classes))
        result["templates"] = template_list
    else:
        from clipkit.evaluation.probe import linear_probe

        train_idx, test_idx = _stratified_split(feats.labels, train_fraction, seed)
        probe = linear_probe(feats.features[train_idx].numpy(), feats.labels[train_idx].numpy(),
                             feats.features[test_idx].numpy(), feats.labels[test_idx].numpy())
        logits = torch.from_numpy(probe.classifier.decision_function(feats.features[test_idx].numpy()))
        full = torch.full((len(test_idx), len(data.classes)), -torch.inf, dtype=logits.dtype)
        full[:, torch.as_tensor(probe.classifier.classes_, dtype=torch.long)] = logits
        metrics = classification_metrics(full, feats.labels[test_idx], len(data.classes))
        result["probe"] = {"C": probe.C, "val_acc": probe.val_acc, "train_images": len(train_idx),
                           "test_images": len(test_idx)}
    confusion = metrics.pop("confusion")
    per_class = metrics.pop("per_class_accuracy")
    total = time.perf_counter() - t_start
    result["metrics"] = metrics
    result["per_class_accuracy"] = dict(zip(data.classes, per_class))
    result["n_images"] = len(data)
    result["n_evaluated"] = int(len(feats.labels))
    result["skipped"] = feats.skipped
    result["timing"] = {
        "total_s": round(total, 3),
        "features_s": round(feats.seconds, 3),
        "images_encoded": feats.encoded,
        "images_per_s": round(feats.encoded / feats.seconds, 2) if feats.encoded else None,
        "eval_s": round(time.perf_counter() - t_eval, 3),
    }
    result["versions"] = versions()
    if confusion_png is None and out is not None and len(data.classes) <= 100:
        confusion_png = Path(out).with_suffix(".confusion.png")
    try:  # the metrics are computed: a failing write must not lose them (the caller prints them)
        if confusion_png is not None:
            if len(data.classes) > 100:
                raise ValueError(f"a confusion-matrix PNG is drawn for up to 100 classes, not {len(data.classes)}")
            plot_confusion(confusion, data.classes, confusion_png, title=f"{dataset} {task}")
            result["confusion_png"] = str(confusion_png)
        if out is not None:
            Path(out).write_text(json.dumps(result, indent=2))
    except (OSError, ValueError) as e:
        import warnings

        result["write_error"] = f"{type(e).__name__}: {e}"
        warnings.warn(f"could not write the results ({e}); the metrics are printed instead", RuntimeWarning,
                      stacklevel=2)
    return result


def _model_name(model, clip) -> str:
    """What the results JSON calls the model: the name or path given, else the default's name."""
    if isinstance(model, (str, Path)):
        return str(model)
    if model is None:
        from clipkit.encode import DEFAULT_MODEL

        return f"{DEFAULT_MODEL} (default)"
    return getattr(clip, "name", None) or type(clip).__name__


def _stratified_split(labels: torch.Tensor, train_fraction: float, seed: int):
    g = np.random.default_rng(seed)
    labels = labels.numpy()
    train, test = [], []
    for c in np.unique(labels):
        idx = np.flatnonzero(labels == c)
        g.shuffle(idx)
        k = int(round(len(idx) * train_fraction))
        train += idx[:k].tolist()
        test += idx[k:].tolist()
    return torch.tensor(sorted(train)), torch.tensor(sorted(test))
