"""Linear probe: logistic regression on frozen image embeddings (the CLIP paper's appendix A.3).

The paper's protocol: features from the image encoder, scikit-learn's L-BFGS logistic
regression with at most 1,000 iterations, and the L2 strength chosen on a validation
split by a parametric binary search: start from the 7 values 1e-6, 1e-4, ..., 1e6 and
repeatedly halve the interval around the best value until the resolution is 8 steps
per decade. Then the chosen model is refit on train + validation and scored on test.

scikit-learn's ``C`` is the inverse of the L2 strength; the paper's grid is symmetric in
log space, so the same grid serves for ``C``.

The probe takes features, not images: get them from :func:`clipkit.encode.extract_features`
(cached on disk with a `cache_key`) or :func:`clipkit.encode.encode_images`.
"""
from __future__ import annotations

import warnings
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

__all__ = ["linear_probe", "ProbeResult", "PAPER_COARSE_CS"]

# The paper's starting points: every second decade from 1e-6 to 1e6.
PAPER_COARSE_CS = tuple(10.0 ** e for e in range(-6, 7, 2))


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


def __getattr__(name: str):
    # `extract_features` was public here (in `__all__`) until the one feature path moved to
    # `clipkit.encode`; the old name keeps working, with a warning. Its arguments are a
    # subset of the new function's, and it returns the same `EncodedImages`.
    if name == "extract_features":
        warnings.warn("clipkit.probe.extract_features moved to clipkit.encode.extract_features; "
                      "import it from there", DeprecationWarning, stacklevel=2)
        from clipkit.encode import extract_features

        return extract_features
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
