"""Fixed evaluation sets (colour x shape, digits, counting, relations) from their own streams."""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Sequence

from PIL import Image

from clipkit.data.synth.fonts import PILLOW_DEFAULT_FONT
from clipkit.data.synth.vocab import (COUNT_CLASSNAMES, COUNT_TEMPLATES, DIGIT_CLASSNAMES, DIGIT_TEMPLATES, HELDOUT_PAIRS,
                                       NUMBER_WORDS, RELATIONS, SHAPE_TEMPLATES, _article, _plural, all_pairs,
                                       classnames_colour_shape, train_pairs)
from clipkit.data.synth.world import SynthWorld


# ---------------------------------------------------------------------------
# Evaluation sets
# ---------------------------------------------------------------------------


@dataclass
class EvalSet:
    """Images with integer labels into `classnames`, ready for a zero-shot head.

    templates: prompt templates to build the head with ("{}" takes a class name).
    candidates: for scene-dependent tasks (count, relation), per image one caption per
        class, aligned with `classnames`: score the image against its own candidates.
    """

    images: list[Image.Image]
    labels: list[int]
    classnames: list[str]
    templates: list[str]
    attrs: list[dict]
    candidates: list[list[str]] | None = None

    def __len__(self) -> int:
        return len(self.images)

    def __iter__(self):
        return iter(zip(self.images, self.labels))


_EVAL_STREAMS = {"colour_shape": 1, "digit": 2, "count": 3, "relation": 4}


def colour_shape_eval_set(n_per_pair: int | None = None, heldout_only: bool = True, seed: int = 0,
                          image_size: int = 64, *, n: int | None = None, split: str | None = None) -> EvalSet:
    """Single-object scenes labelled among all colour x shape class names ('red circle').

    Which pairs: `split="heldout"` (or heldout_only=True, the default) the nine
    `HELDOUT_PAIRS` the training world never shows; `split="val"` the training pairs
    (fresh scenes from the val seed space); `split="all"` every pair. Size: `n_per_pair`
    scenes per pair, or about `n` in total. Classes cycle, so every pair gets its share.
    """
    split = split or ("heldout" if heldout_only else "all")
    if split not in ("heldout", "val", "all"):
        raise ValueError(f"split must be 'heldout', 'val' or 'all', got {split!r}")
    pairs = {"heldout": list(HELDOUT_PAIRS), "all": all_pairs()}.get(split, train_pairs())
    if n_per_pair is None:
        n_per_pair = max(1, math.ceil((n or 10 * len(pairs)) / len(pairs)))
    classes = all_pairs()
    index = {p: k for k, p in enumerate(classes)}
    world = SynthWorld(seed=seed, image_size=image_size, split="heldout" if split == "heldout" else "val",
                       fonts=[PILLOW_DEFAULT_FONT])  # no digits drawn: skip the font scan
    images, labels, attrs = [], [], []
    for i in range(n_per_pair * len(pairs)):
        pair = pairs[i % len(pairs)]
        s = world.render("shape", world.rng(i, _EVAL_STREAMS["colour_shape"]), pair=pair)
        images.append(s.image)
        labels.append(index[pair])
        attrs.append(s.attrs)
    return EvalSet(images, labels, classnames_colour_shape(classes), list(SHAPE_TEMPLATES), attrs)


def digit_eval_set(n: int = 1000, seed: int = 0, image_size: int = 64, *, split: str = "val",
                   style: str | None = None, fonts: Sequence[str] | None = None) -> EvalSet:
    """Rendered digits, classes 0-9 in turn; `style` pins "mnist", "inverted", "colour",
    "robust" (every digit with its own draw of `digit_styles`' variations) or "robust-hard"
    (the same, stretched and low-resolution digits more often)."""
    world = SynthWorld(seed=seed, image_size=image_size, split="val" if split == "heldout" else split,
                       fonts=fonts)
    images, labels, attrs = [], [], []
    for i in range(n):
        s = world.render("digit", world.rng(i, _EVAL_STREAMS["digit"]), digit=i % 10, style=style)
        images.append(s.image)
        labels.append(i % 10)
        attrs.append(s.attrs)
    return EvalSet(images, labels, list(DIGIT_CLASSNAMES), list(DIGIT_TEMPLATES), attrs)


def count_eval_set(n: int = 400, seed: int = 0, image_size: int = 64, *, split: str = "val") -> EvalSet:
    """One to four copies of a shape, counts in turn. Class names 'one'..'four'; each
    image's candidates say its own colour and shape ('two red circles')."""
    world = SynthWorld(seed=seed, image_size=image_size, split=split, fonts=[PILLOW_DEFAULT_FONT])
    images, labels, attrs, candidates = [], [], [], []
    for i in range(n):
        count = i % 4 + 1
        s = world.render("count", world.rng(i, _EVAL_STREAMS["count"]), count=count)
        images.append(s.image)
        labels.append(count - 1)
        attrs.append(s.attrs)
        c, sh = s.attrs["colour"], s.attrs["shape"]
        candidates.append([f"{NUMBER_WORDS[k]} {c} {sh if k == 1 else _plural(sh)}" for k in range(1, 5)])
    return EvalSet(images, labels, list(COUNT_CLASSNAMES), list(COUNT_TEMPLATES), attrs, candidates)


def relation_eval_set(n: int = 400, seed: int = 0, image_size: int = 64, *, split: str = "val") -> EvalSet:
    """Two objects; the label is where the first stands relative to the second. Each
    image's candidates are 'a red circle left of a blue square' for the four relations."""
    world = SynthWorld(seed=seed, image_size=image_size, split=split, fonts=[PILLOW_DEFAULT_FONT])
    images, labels, attrs, candidates = [], [], [], []
    for i in range(n):
        relation = RELATIONS[i % 4]
        s = world.render("relation", world.rng(i, _EVAL_STREAMS["relation"]), relation=relation)
        images.append(s.image)
        labels.append(i % 4)
        attrs.append(s.attrs)
        (ca, cb), (sa, sb) = s.attrs["colours"], s.attrs["shapes"]
        candidates.append([f"{_article(ca)} {ca} {sa} {r} {_article(cb)} {cb} {sb}" for r in RELATIONS])
    return EvalSet(images, labels, list(RELATIONS), ["a photo of {}.", "{}"], attrs, candidates)
