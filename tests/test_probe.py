"""Linear probe (the paper's C sweep); its features come from clipkit.encode (tests/test_features.py)."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from clipkit.evaluation.probe import PAPER_COARSE_CS, _stratified_split, linear_probe


def blobs(n_per_class, seed, dim=16, classes=3, spread=0.35):
    rng = np.random.default_rng(seed)
    centres = np.random.default_rng(99).normal(size=(classes, dim))
    X = np.concatenate([c + spread * rng.normal(size=(n_per_class, dim)) for c in centres])
    y = np.repeat(np.arange(classes), n_per_class)
    return X.astype(np.float32), y


def test_probe_separates_separable_features_and_follows_the_sweep():
    Xtr, ytr = blobs(40, seed=0)
    Xte, yte = blobs(20, seed=1)
    res = linear_probe(Xtr, ytr, Xte, yte)
    assert res.test_acc >= 0.95 and res.val_acc >= 0.95
    tried = [c for c, _ in res.search]
    # the paper's 7 coarse values come first, then 4 halvings (2 points each) to 1/8 decade
    assert tried[:7] == pytest.approx(list(PAPER_COARSE_CS))
    assert len(tried) == len(set(tried)) and 7 < len(tried) <= 15
    assert all(1e-6 * (1 - 1e-9) <= c <= 1e6 * (1 + 1e-9) for c in tried)
    eighths = np.log10(res.C) * 8
    assert eighths == pytest.approx(round(eighths), abs=1e-6)  # resolution: 8 steps per decade
    best = max(a for _, a in res.search)
    assert res.val_acc == best and min(c for c, a in res.search if a == best) == pytest.approx(res.C)
    # the returned classifier is refit on train + validation with the chosen C
    assert res.classifier.C == pytest.approx(res.C)
    assert res.classifier.score(Xte, yte) == res.test_acc
    assert list(res.classifier.classes_) == [0, 1, 2]


def test_probe_is_deterministic_and_takes_string_labels():
    Xtr, ytr = blobs(15, seed=2, dim=8, spread=1.0)  # overlapping: C matters
    names = np.array(["cat", "dog", "owl"])[ytr]
    a = linear_probe(Xtr, ytr, Xtr, ytr)
    b = linear_probe(torch.from_numpy(Xtr), torch.from_numpy(ytr), Xtr, ytr)
    assert a.search == b.search and a.C == b.C and a.test_acc == b.test_acc
    c = linear_probe(Xtr, names)
    assert c.search == a.search and c.C == a.C and c.test_acc is None
    assert set(c.classifier.classes_) == {"cat", "dog", "owl"}


def test_probe_with_given_validation_split_and_custom_grid():
    Xtr, ytr = blobs(20, seed=3)
    Xva, yva = blobs(10, seed=4)
    res = linear_probe(Xtr, ytr, val_features=Xva, val_labels=yva, Cs=[0.1, 10.0])
    tried = [c for c, _ in res.search]
    assert tried[:2] == pytest.approx([0.1, 10.0])
    assert all(0.1 * (1 - 1e-9) <= c <= 10.0 * (1 + 1e-9) for c in tried)


def test_probe_bad_inputs():
    X, y = blobs(5, seed=0)
    with pytest.raises(ValueError, match="at least two classes"):
        linear_probe(X, np.zeros(len(X), dtype=int))
    with pytest.raises(ValueError, match="15 training features but 14 labels"):
        linear_probe(X, y[:-1])
    with pytest.raises(ValueError, match="val_fraction"):
        linear_probe(X, y, val_fraction=1.5)
    with pytest.raises(ValueError, match="must be 2-d"):
        linear_probe(X[0], y)
    with pytest.raises(ValueError, match="Cs must be"):
        linear_probe(X, y, Cs=[])


def test_stratified_split_keeps_every_class_on_both_sides():
    y = np.array([0] * 10 + [1] * 3 + [2] * 2 + [3])
    train, val = _stratified_split(y, 0.2, seed=0)
    assert sorted(np.concatenate([train, val]).tolist()) == list(range(len(y)))
    assert set(y[val]) == {0, 1, 2} and set(y[train]) == {0, 1, 2, 3}
    assert (y[val] == 0).sum() == 2
    again = _stratified_split(y, 0.2, seed=0)
    assert np.array_equal(again[0], train) and np.array_equal(again[1], val)


def test_probe_extract_features_is_a_deprecated_alias_of_the_one_feature_path():
    """`clipkit.probe.extract_features` was public (in `__all__`); it now warns and is
    `clipkit.encode.extract_features`, which takes its arguments and returns the same type."""
    import importlib

    import clipkit.encode
    from clipkit.encode import EncodedImages
    from clipkit.models import create_model

    with pytest.warns(DeprecationWarning, match="clipkit.encode.extract_features"):
        old = importlib.import_module("clipkit.evaluation.probe").extract_features
    assert old is clipkit.encode.extract_features
    with pytest.warns(DeprecationWarning):
        from clipkit.probe import extract_features  # the old spelling
    torch.manual_seed(0)
    model = create_model("tiny-vit").eval()
    enc = extract_features(model, torch.randn(5, 3, 32, 32), batch_size=2, device="cpu", cache=False,
                           skip_unreadable=False, progress=False)
    assert isinstance(enc, EncodedImages) and enc.features.shape == (5, 32) and enc.indices == list(range(5))
    with pytest.raises(AttributeError):
        importlib.import_module("clipkit.evaluation.probe").no_such_name
