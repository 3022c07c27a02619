"""Hard negatives for contrastive training (NegCLIP: Yuksekgonul et al., ICLR 2023, "When
and why vision-language models behave like bags-of-words, and what to do about it").

A CLIP trained on captions can match "a red circle left of a blue square" without reading
the word order: in a batch of random scenes no other caption names the same two objects,
so the contrastive loss never asks which is where. NegCLIP adds, for each caption, the
same caption with its order or attributes swapped as an extra negative, and an image of
that other scene to the batch. The synthetic world can do better than text surgery: it
draws the counterfactual scene itself, with every random draw of the sample the same
except the one fact (`SynthWorld.sample(index, **change)`), so the negative image and
caption differ from the sample in that fact only:

- relation scenes: the two objects' places exchanged ("a red circle right of a blue
  square"), or, half of the time when allowed, their colours exchanged ("a blue circle
  left of a red square"; the two-object attribute swap). A colour swap that would render a
  held-out (colour, shape) pair, or that changes nothing (same colours), becomes a place swap;
- count scenes: one object more or fewer ("two red circles" for "three red circles").

Shape and digit scenes get none. The swapped pair (image', caption') is a true pair of its
own: appended to the batch, its caption is a hard negative for the sample's image and its
image one for the sample's caption, which is all the loss needs (see `clipkit.train`).
The choice of swap is drawn from a stream of its own, so it too depends only on
(seed, split, index).
"""
from __future__ import annotations

from clipkit.data.synth import Sample, SynthWorld

NEGATIVE_KINDS = ("relation", "count")
_STREAM = 5  # the generator stream of the swap choice (1-4 are the evaluation sets)


def swap_for(world: SynthWorld, index: int, attrs: dict) -> dict | None:
    """The change that turns sample `index` (with attributes `attrs`) into its hard
    negative, as keywords for `SynthWorld.sample`; None for kinds that have none."""
    kind = attrs["kind"]
    if kind not in NEGATIVE_KINDS:
        return None
    rng = world.rng(index, _STREAM)
    if kind == "count":
        count = attrs["count"]
        options = [c for c in (count - 1, count + 1) if 1 <= c <= 4]
        return {"recount": options[int(rng.integers(len(options)))]}
    (ca, cb), (sa, sb) = attrs["colours"], attrs["shapes"]
    allowed = ca != cb and (cb, sa) in world.pairs and (ca, sb) in world.pairs
    if rng.random() < 0.5 and allowed:
        return {"swap": "attributes"}
    return {"swap": "relation"}


def hard_negative(world: SynthWorld, index: int, sample: Sample | None = None) -> Sample | None:
    """The hard negative of sample `index` (pass the sample if you have it, to save a
    render), or None. Its attrs say what changed: `negative_of` (the index) and `change`."""
    if sample is None:
        sample = world.sample(index)
    change = swap_for(world, index, sample.attrs)
    if change is None:
        return None
    negative = world.sample(index, **change)
    negative.attrs["negative_of"] = int(index)
    negative.attrs["change"] = dict(change)
    return negative
