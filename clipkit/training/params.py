"""Which parameters AdamW decays: one rule for every trainer, written as data.

Decoupled weight decay (Loshchilov & Hutter 2019) pulls weights towards zero; that
regularises matrices, but on a gain, a bias, an embedding table or CLIP's temperature it
only moves a quantity whose scale is meaningful. So matrices decay and the rest do not,
as in the CLIP paper's recipe (its appendix F) and nanoGPT's `configure_optimizers`.
"""
from __future__ import annotations

from dataclasses import dataclass

from torch import nn


@dataclass(frozen=True)
class DecayRule:
    """A parameter decays when it has at least `min_ndim` dimensions and its name neither
    contains one of `skip_if_contains` nor ends with one of `skip_if_endswith`.

    The defaults: gains, biases (1-D) never decay; "embeddings" are the token table, the
    positional embeddings and the class token (names containing `embedding`); the
    temperature is `logit_scale`. Projections (`text_projection`, `visual.proj`) are
    matrices and decay. The generator's `text_embed` / `image_embed` tables decay, as
    they always did there (their names do not contain `embedding`).
    """

    min_ndim: int = 2
    skip_if_contains: tuple[str, ...] = ("embedding",)
    skip_if_endswith: tuple[str, ...] = ("logit_scale",)

    def decays(self, name: str, param) -> bool:
        return (param.ndim >= self.min_ndim
                and not any(s in name for s in self.skip_if_contains)
                and not name.endswith(self.skip_if_endswith))


DECAY_RULE = DecayRule()


def param_groups(model: nn.Module, weight_decay: float, rule: DecayRule = DECAY_RULE) -> list[dict]:
    """Two AdamW groups, [decay, no decay], each in `named_parameters` order (frozen
    parameters are left out): the first with `weight_decay`, the second with 0."""
    decay, no_decay = [], []
    for name, p in model.named_parameters():
        if p.requires_grad:
            (decay if rule.decays(name, p) else no_decay).append(p)
    return [
        {"params": decay, "weight_decay": weight_decay},
        {"params": no_decay, "weight_decay": 0.0},
    ]
