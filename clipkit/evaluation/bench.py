"""Benchmarks: zero-shot and linear-probe evaluation over a dataset, as clip_benchmark
reports them (top-1, top-5, mean per-class recall), plus per-class accuracy, a confusion
matrix, images/s and the files skipped.

Image features come from :func:`clipkit.encode.extract_features`: computed in fixed
chunks of the dataset, each cached on disk as soon as it is done, keyed by (weights,
dataset, preprocessing). So a second run with other templates, or a linear probe after a
zero-shot run, re-encodes nothing, and an interrupted run resumes at the first missing
chunk. Under `torchrun` the chunks are dealt round-robin over the ranks and gathered on
rank 0; because a chunk is always batched the same way, features (and so results) are
identical to a 1-process run.
"""
from __future__ import annotations

import json
import platform
import time
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch

from clipkit.distributed import process_group
from clipkit.encode import CHUNK


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
    from clipkit.encode import extract_features, resolve_model

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
    enc = extract_features(image_model, data, batch_size=batch_size, workers=workers, device=device,
                           cache_key=f"{data.key()}|{preprocess!r}", cache=cache, skip_unreadable=True,
                           progress=progress, chunk_size=chunk_size, dist_ctx=ctx,
                           stop_after_chunks=_stop_after_chunks)
    kept = len(enc.labels or []) if ctx.main else 0
    if ctx.world > 1:  # every rank learns whether rank 0 has anything to evaluate
        box = [kept]
        torch.distributed.broadcast_object_list(box, src=0)
        kept = box[0]
    if kept == 0:  # every rank raises (an error tears the group down, so none may wait at its barrier)
        from clipkit.errors import NothingReadError

        raise NothingReadError(f"none of the {len(data)} images ({data.description or dataset}) could be read",
                               list(enc.skipped) if ctx.main else [])
    if not ctx.main:
        return None  # process_group() waits for rank 0's evaluation, then leaves
    features = enc.features
    labels = torch.as_tensor(enc.labels, dtype=torch.long)

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
            logits = head(features.to(device)).float().cpu()
        metrics = classification_metrics(logits, labels, len(data.classes))
        result["templates"] = template_list
    else:
        from clipkit.evaluation.probe import linear_probe

        train_idx, test_idx = _stratified_split(labels, train_fraction, seed)
        probe = linear_probe(features[train_idx].numpy(), labels[train_idx].numpy(),
                             features[test_idx].numpy(), labels[test_idx].numpy())
        logits = torch.from_numpy(probe.classifier.decision_function(features[test_idx].numpy()))
        full = torch.full((len(test_idx), len(data.classes)), -torch.inf, dtype=logits.dtype)
        full[:, torch.as_tensor(probe.classifier.classes_, dtype=torch.long)] = logits
        metrics = classification_metrics(full, labels[test_idx], len(data.classes))
        result["probe"] = {"C": probe.C, "val_acc": probe.val_acc, "train_images": len(train_idx),
                           "test_images": len(test_idx)}
    confusion = metrics.pop("confusion")
    per_class = metrics.pop("per_class_accuracy")
    total = time.perf_counter() - t_start
    result["metrics"] = metrics
    result["per_class_accuracy"] = dict(zip(data.classes, per_class))
    result["n_images"] = len(data)
    result["n_evaluated"] = int(len(labels))
    result["skipped"] = [{"path": where, "reason": reason} for where, reason in enc.skipped]
    result["timing"] = {
        "total_s": round(total, 3),
        "features_s": round(enc.seconds, 3),
        "images_encoded": enc.encoded,
        "images_per_s": round(enc.encoded / enc.seconds, 2) if enc.encoded else None,
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


_MOVED = {  # names this module had before the one feature cache (clipkit.encode) replaced them
    "extract_features": "clipkit.encode.extract_features (returns EncodedImages)",
    "Features": "clipkit.encode.EncodedImages",
    "read_chunk": "clipkit.encode.read_chunk", "write_chunk": "clipkit.encode.write_chunk",
}


def __getattr__(name: str):
    if name in _MOVED:
        raise AttributeError(f"clipkit.evaluation.bench.{name} is gone: use {_MOVED[name]}")
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
