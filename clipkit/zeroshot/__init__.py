"""Zero-shot classification: class names + prompt templates -> a linear head over image embeddings.

CLIP's procedure (paper section 3.1.4 and its ImageNet notebook): fill every template
with every class name, encode each prompt with the text tower, L2-normalise each
embedding, average them per class and normalise again. The (C, D) result is the weight of
a bias-free linear layer over normalised image embeddings; logits are that product times
the model's temperature exp(logit_scale) (100 for the released models).

Speed, exactly: prompts are tokenised once, duplicates are encoded once,
and prompts are sorted by length and encoded in batches cut at the batch's longest
prompt. The text tower is causal and reads out at the end-of-text token, so the padding
it skips cannot change the result. Heads are cached on disk, keyed by the weights, the
tokenizer, the templates and the class names.

Three layers of API:

- :func:`build_head` -> :class:`ZeroShotHead`, an ``nn.Module`` (features -> logits);
- :func:`zero_shot` -> :class:`ZeroShotClassifier`, a fitted scikit-learn classifier over
  images, paths, tensors, datasets or precomputed embeddings;
- :func:`encode_images` / :func:`encode_prompts`, the batching helpers everything shares.

The package, one job per module: `prompts` (prompts -> embeddings, exactly and fast),
`head` (the head and its disk cache), `classifier` (the scikit-learn estimator). Images
-> embeddings and model resolution live in :mod:`clipkit.encode`, shared by every part
of clipkit that embeds images; their names are re-exported here.
"""
from __future__ import annotations

from clipkit.encode import (DEFAULT_MODEL, EncodedImages, _eval_mode, _model_device,
                            encode_images, resolve_model)
from clipkit.zeroshot.classifier import ClassificationResult, ZeroShotClassifier, zero_shot
from clipkit.zeroshot.head import (HEAD_FORMAT_VERSION, ZeroShotHead, _head_cache_key, _logit_scale,
                                   build_head)
from clipkit.zeroshot.prompts import class_embeddings, default_templates, encode_prompts, head_from_embeddings

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
