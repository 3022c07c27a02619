"""The scikit-learn estimator: `zero_shot(...)` -> a fitted `ZeroShotClassifier` over
images, paths, tensors, datasets or precomputed embeddings."""
from __future__ import annotations

import os
import sys
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from sklearn.base import BaseEstimator, ClassifierMixin, TransformerMixin

from clipkit.encode import EncodedImages, encode_images, resolve_model
from clipkit.templates import default_templates_for, load_classnames
from clipkit.zeroshot.head import ZeroShotHead, build_head


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
