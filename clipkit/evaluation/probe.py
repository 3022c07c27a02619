"""Linear probe: logistic regression on frozen image embeddings (the CLIP paper's appendix A.3).

The paper's protocol: features from the image encoder, scikit-learn's L-BFGS logistic
regression with at most 1,000 iterations, and the L2 strength chosen on a validation
split by a parametric binary search: start from the 7 values 1e-6, 1e-4, ..., 1e6 and
repeatedly halve the interval around the best value until the resolution is 8 steps
per decade. Then the chosen model is refit on train + validation and scored on test.

scikit-learn's ``C`` is the inverse of the L2 strength; the paper's grid is symmetric in
log space, so the same grid serves for ``C``.
"""
from __future__ import annotations

import contextlib
import hashlib
import json
import os
import warnings
from dataclasses import dataclass, field
from typing import Any, Callable

import numpy as np
import torch
from torch import nn

from clipkit.encode import EncodedImages, encode_images
from clipkit.utils import cache_enabled

__all__ = ["extract_features", "linear_probe", "ProbeResult", "PAPER_COARSE_CS", "FEATURES_FORMAT_VERSION"]

# The paper's starting points: every second decade from 1e-6 to 1e6.
PAPER_COARSE_CS = tuple(10.0 ** e for e in range(-6, 7, 2))
FEATURES_FORMAT_VERSION = 1


# ---------------------------------------------------------------------------
# Features
# ---------------------------------------------------------------------------


def extract_features(model: nn.Module, X, *, preprocess: Callable | None = None, batch_size: int = 64,
                     device: str | torch.device | None = None, cache_key: str | None = None,
                     cache: bool = True, skip_unreadable: bool = False,
                     progress: bool | None = None) -> EncodedImages:
    """Normalised image embeddings (and labels, for ``(image, label)`` items) of `X`.

    Accepts what :func:`clipkit.encode.encode_images` accepts. With `cache_key` (a string
    that identifies the data *and its preprocessing*, e.g. a dataset's file hash), the
    result is cached on disk under ``$CLIPKIT_CACHE/features``, keyed by it and the
    model's weights; ``cache=False`` or ``CLIPKIT_NO_CACHE=1`` turns that off.
    """
    path = None
    if cache_key is not None and cache_enabled(cache):
        from clipkit.utils import usable_cache_dir, weights_fingerprint

        parts = {"format": FEATURES_FORMAT_VERSION, "weights": weights_fingerprint(model), "data": cache_key,
                 "skip_unreadable": bool(skip_unreadable)}
        key = hashlib.sha256(json.dumps(parts).encode()).hexdigest()
        folder = usable_cache_dir("features")  # None (one warning) when it cannot be used
        path = folder / f"{key}.pt" if folder is not None else None
        cached = _read_features(path) if path is not None else None
        if cached is not None:
            return cached
    enc = encode_images(model, X, preprocess=preprocess, batch_size=batch_size, device=device,
                        skip_unreadable=skip_unreadable, progress=progress)
    if path is not None:
        _write_features(path, enc)
    return enc


def _read_features(path) -> EncodedImages | None:
    try:
        d = torch.load(path, map_location="cpu", weights_only=True)
        return EncodedImages(d["features"], list(d["indices"]), d["labels"],
                             [tuple(s) for s in d["skipped"]])
    except FileNotFoundError:
        return None
    except Exception as e:  # noqa: BLE001 - a corrupt entry of any kind: say so, recompute
        from clipkit.utils import warn_cache

        warn_cache(f"ignoring the unreadable feature cache entry {path} ({type(e).__name__}); recomputing it",
                   key=str(path))
        return None


def _write_features(path, enc: EncodedImages) -> None:
    def plain(v):
        return v if isinstance(v, (int, float, str, bool)) or v is None else str(v)

    payload = {
        "features": enc.features.contiguous(),
        "indices": [int(i) for i in enc.indices],
        "labels": None if enc.labels is None else [plain(y) for y in enc.labels],
        "skipped": [[plain(w), str(r)] for w, r in enc.skipped],
    }
    tmp = path.with_name(f"{path.name}.{os.getpid()}.part")
    try:
        torch.save(payload, tmp)
        os.replace(tmp, path)
    except Exception as e:  # noqa: BLE001 - a full or read-only cache must not stop the probe
        from clipkit.utils import warn_cache

        warn_cache(f"could not write the feature cache {path} ({type(e).__name__}: {e}); going on without it",
                   key="probe-cache-write")
        with contextlib.suppress(OSError):
            tmp.unlink()


# ---------------------------------------------------------------------------
# The probe
# ---------------------------------------------------------------------------


@dataclass
class ProbeResult:
    """The chosen ``C``, its validation accuracy, the test accuracy (None without a test
    set), the classifier refit on train + validation, and every ``(C, val_acc)`` tried in
    the order tried."""

    C: float
    val_acc: float
    test_acc: float | None
    classifier: Any
    search: list[tuple[float, float]] = field(default_factory=list)
    not_converged: int = 0

    def to_dict(self) -> dict:
        return {"C": self.C, "val_acc": self.val_acc, "test_acc": self.test_acc,
                "search": [{"C": c, "val_acc": a} for c, a in self.search],
                "not_converged": self.not_converged}


def _as_numpy(x, name: str, ndim: int) -> np.ndarray:
    if isinstance(x, torch.Tensor):
        x = x.detach().cpu().numpy()
    x = np.asarray(x)
    if x.ndim != ndim:
        raise ValueError(f"{name} must be {ndim}-d, got shape {x.shape}")
    return x


def _stratified_split(y: np.ndarray, val_fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Per class, a seeded shuffle; round(n * val_fraction) to validation, at least one
    example of every class with 2 or more stays in each part."""
    rng = np.random.default_rng(seed)
    train, val = [], []
    for c in np.unique(y):
        idx = np.flatnonzero(y == c)
        rng.shuffle(idx)
        k = int(round(len(idx) * val_fraction))
        if len(idx) >= 2:
            k = min(max(k, 1), len(idx) - 1)
        else:
            k = 0
        val.extend(idx[:k])
        train.extend(idx[k:])
    return np.sort(np.asarray(train, dtype=np.int64)), np.sort(np.asarray(val, dtype=np.int64))


def linear_probe(train_features, train_labels, test_features=None, test_labels=None, *,
                 val_fraction: float = 0.2, Cs=None, steps_per_decade: int = 8, max_iter: int = 1000,
                 seed: int = 0, val_features=None, val_labels=None) -> ProbeResult:
    """Fit the paper's linear probe and report validation and test accuracy.

    The validation split is `val_features`/`val_labels` if given, else a stratified
    `val_fraction` of the training set (seeded: the run is deterministic). `Cs` replaces
    the coarse grid (default :data:`PAPER_COARSE_CS`); the search then halves the log-step
    around the best value until it is 1/`steps_per_decade` decade. Ties go to the smaller
    C (stronger regularisation).
    """
    from sklearn.exceptions import ConvergenceWarning
    from sklearn.linear_model import LogisticRegression

    Xtr = _as_numpy(train_features, "train_features", 2)
    ytr = _as_numpy(train_labels, "train_labels", 1)
    if len(Xtr) != len(ytr):
        raise ValueError(f"{len(Xtr)} training features but {len(ytr)} labels")
    if len(np.unique(ytr)) < 2:
        raise ValueError("the linear probe needs at least two classes in the training labels")
    if val_features is not None:
        Xfit, yfit = Xtr, ytr
        Xval = _as_numpy(val_features, "val_features", 2)
        yval = _as_numpy(val_labels, "val_labels", 1)
    else:
        if not 0 < val_fraction < 1:
            raise ValueError(f"val_fraction must be in (0, 1), got {val_fraction}")
        fit_idx, val_idx = _stratified_split(ytr, val_fraction, seed)
        if not len(val_idx):
            raise ValueError("no validation examples: every class has a single training example; "
                             "pass val_features/val_labels")
        Xfit, yfit, Xval, yval = Xtr[fit_idx], ytr[fit_idx], Xtr[val_idx], ytr[val_idx]

    not_converged = 0

    def fit(C: float, X, y):
        nonlocal not_converged
        clf = LogisticRegression(C=C, solver="lbfgs", max_iter=max_iter)
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always", ConvergenceWarning)
            clf.fit(X, y)
        not_converged += sum(issubclass(w.category, ConvergenceWarning) for w in caught)
        return clf

    scores: dict[float, float] = {}
    search: list[tuple[float, float]] = []

    def evaluate(log_c: float) -> None:
        log_c = round(log_c, 6)  # grid points computed two ways must coincide
        if not lo <= log_c <= hi:
            return  # the sweep stays inside the coarse grid's range
        if log_c not in scores:
            acc = float(fit(10.0 ** log_c, Xfit, yfit).score(Xval, yval))
            scores[log_c] = acc
            search.append((10.0 ** log_c, acc))

    def best() -> float:
        return max(scores, key=lambda lc: (scores[lc], -lc))  # highest accuracy, then smaller C

    coarse = sorted(float(np.log10(c)) for c in (Cs if Cs is not None else PAPER_COARSE_CS))
    if not coarse or any(not np.isfinite(c) for c in coarse):
        raise ValueError("Cs must be a non-empty list of positive numbers")
    lo, hi = round(coarse[0], 6), round(coarse[-1], 6)
    if lo == hi:  # a single C: refine within one decade either side
        lo, hi = lo - 1, hi + 1
    for lc in coarse:
        evaluate(lc)
    step = (coarse[-1] - coarse[0]) / max(len(coarse) - 1, 1) if len(coarse) > 1 else 1.0
    target = 1.0 / steps_per_decade
    while step > target + 1e-9:
        step /= 2
        centre = best()
        evaluate(centre - step)
        evaluate(centre + step)

    log_c = best()
    C = 10.0 ** log_c
    final = fit(C, np.concatenate([Xfit, Xval]), np.concatenate([yfit, yval]))
    test_acc = None
    if test_features is not None:
        Xte = _as_numpy(test_features, "test_features", 2)
        yte = _as_numpy(test_labels, "test_labels", 1)
        test_acc = float(final.score(Xte, yte))
    return ProbeResult(C=C, val_acc=scores[log_c], test_acc=test_acc, classifier=final, search=search,
                       not_converged=not_converged)
