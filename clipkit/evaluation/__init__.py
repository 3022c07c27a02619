"""Evaluation: how good a model's embeddings are, on labelled images.

- :mod:`clipkit.evaluation.bench`: the benchmark runner behind ``clipkit bench``
  (zero-shot or linear-probe over MNIST, ImageNet or a folder; top-1, top-5, mean
  per-class recall, per-class accuracy, the confusion matrix, images/s; torchrun).
- :mod:`clipkit.evaluation.probe`: the CLIP paper's linear probe (logistic regression,
  C searched on a validation split).
- :mod:`clipkit.evaluation.sensitivity`: prompt sensitivity (accuracy per template, the
  ensemble, a greedy template subset) behind ``clipkit prompts``.

Image features come from :func:`clipkit.encode.extract_features`, the one cached path
from images to embeddings; nothing here encodes images itself. The submodules load on
import of their own names: importing this package does no work.
"""
