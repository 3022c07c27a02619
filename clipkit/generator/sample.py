"""Sampling image codes from the transformer: KV cache, temperature, top-k / top-p,
classifier-free guidance, image-prompted completion.

Each new image token costs one position per layer: the text (and any image prefix) is
run once into preallocated `KVCache`s, then every step feeds one token. With guidance the
conditional and the unconditional (all-padding text) streams are two halves of one
batch: 2B rows, each row its own cache, so the unconditional stream never reads the
conditional stream's keys and values. The cache is used at every guidance scale.

Randomness: one `torch.Generator` per sample row draws one uniform number per step and
the token is read off the inverse CDF. A row's draws therefore depend only on its own
generator: sample j of a caption is the same whether it is drawn alone or in a batch of
64, and with any other captions beside it.
"""
from __future__ import annotations

from typing import Callable, Sequence

import torch

from clipkit.generator.transformer import DALLETransformer, null_text

__all__ = ["filter_logits", "sample_codes", "row_generators"]


def filter_logits(logits: torch.Tensor, top_k: int | None = None, top_p: float | None = None) -> torch.Tensor:
    """Set logits outside the top k and outside the nucleus of mass top_p to −inf.

    top_k keeps the k largest (ties at the k-th value are kept too); top_p keeps the
    smallest set of highest-probability entries whose mass reaches top_p (the most likely
    entry always stays). Applied to image-code logits only: the image head has no text ids.
    """
    if top_k is not None:
        if top_k < 1:
            raise ValueError(f"top_k must be ≥ 1, got {top_k}")
        if top_k < logits.shape[-1]:
            kth = torch.topk(logits, top_k, dim=-1).values[..., -1:]  # (B, 1)
            logits = logits.masked_fill(logits < kth, float("-inf"))
    if top_p is not None:
        if not 0 < top_p <= 1:
            raise ValueError(f"top_p must lie in (0, 1], got {top_p}")
        if top_p < 1:
            sorted_logits, order = torch.sort(logits, dim=-1, descending=True)
            probs = sorted_logits.float().softmax(-1)
            before = probs.cumsum(-1) - probs  # mass of strictly more likely entries
            drop_sorted = before >= top_p
            drop_sorted[..., 0] = False
            drop = torch.zeros_like(drop_sorted).scatter(-1, order, drop_sorted)
            logits = logits.masked_fill(drop, float("-inf"))
    return logits


def row_generators(seed: int, rows: int, first: int = 0) -> list[torch.Generator]:
    """Independent generators for sample rows first .. first+rows−1 of a seed."""
    import numpy as np

    out = []
    for j in range(first, first + rows):
        state = np.random.SeedSequence([int(seed), j]).generate_state(2, dtype=np.uint32)
        out.append(torch.Generator().manual_seed(int(state[0]) << 32 | int(state[1])))
    return out


def _draw(probs: torch.Tensor, generators: Sequence[torch.Generator] | torch.Generator | None) -> torch.Tensor:
    """One index per row of probs (B, K) by inverse CDF on one uniform per row."""
    B = probs.shape[0]
    if isinstance(generators, torch.Generator) or generators is None:
        u = torch.rand(B, generator=generators, dtype=torch.float64)
    else:
        u = torch.cat([torch.rand(1, generator=g, dtype=torch.float64) for g in generators])
    cdf = probs.double().cumsum(-1)  # (B, K)
    v = (u * cdf[:, -1]).to(cdf.device)[:, None]
    # the first index whose cdf exceeds v: zero-probability entries are never chosen
    idx = torch.searchsorted(cdf, v, right=True).squeeze(1)
    return idx.clamp_max(probs.shape[-1] - 1)


@torch.no_grad()
def sample_codes(model: DALLETransformer, text: torch.Tensor, *, temperature: float = 1.0,
                 top_k: int | None = None, top_p: float | None = None, guidance: float = 1.0,
                 image_prefix: torch.Tensor | None = None,
                 generators: Sequence[torch.Generator] | torch.Generator | None = None,
                 use_cache: bool = True,
                 on_step: Callable[[int, torch.Tensor], None] | None = None) -> torch.Tensor:
    """Sample image codes (B, grid²) for text rows (B, text_len) of generator ids.

    temperature: logits are divided by it; 0 picks the most likely code.
    top_k, top_p: filtering over the image codes (see `filter_logits`).
    guidance: classifier-free guidance scale s; logits = u + s · (c − u) from the
        conditional (c) and unconditional (u, all-padding text) streams. 1 = plain
        conditional sampling (the unconditional stream is skipped).
    image_prefix: (B, P) codes to keep (e.g. the top rows of an image); sampling continues
        at image position P.
    generators: one torch.Generator per row (see `row_generators`), or one for all rows.
    use_cache: False recomputes the whole prefix at every step (the slow reference path).
    on_step: called as on_step(i, logits) with the guided logits (B, K) of image token i,
        before temperature and filtering.
    """
    cfg = model.config
    B, N = text.shape[0], cfg.image_len
    if isinstance(generators, Sequence) and not isinstance(generators, torch.Generator) and len(generators) != B:
        raise ValueError(f"{len(generators)} generators for {B} rows")
    if temperature < 0:
        raise ValueError(f"temperature must be ≥ 0, got {temperature}")
    device = model.image_head.weight.device
    text = text.to(device)
    codes = torch.zeros(B, N, dtype=torch.long, device=device)
    start = 0
    if image_prefix is not None:
        image_prefix = image_prefix.to(device).long()
        if image_prefix.dim() == 1:
            image_prefix = image_prefix[None].expand(B, -1)
        if image_prefix.shape[0] != B or image_prefix.shape[1] > N:
            raise ValueError(f"image_prefix must be (B={B}, P ≤ {N}), got {tuple(image_prefix.shape)}")
        start = image_prefix.shape[1]
        codes[:, :start] = image_prefix
    if start == N:
        return codes

    guided = guidance != 1.0
    # rows 0..B−1: the captions; rows B..2B−1: the unconditional stream (its own caches)
    stream_text = torch.cat([text, null_text(B, cfg.text_len, device)]) if guided else text
    rows = stream_text.shape[0]

    def guide(logits: torch.Tensor) -> torch.Tensor:
        if not guided:
            return logits
        cond, uncond = logits[:B], logits[B:]
        return uncond + guidance * (cond - uncond)

    def pick(i: int, logits: torch.Tensor) -> torch.Tensor:
        logits = guide(logits.float())
        if on_step is not None:
            on_step(i, logits)
        if temperature == 0:
            return logits.argmax(-1)
        logits = filter_logits(logits / temperature, top_k, top_p)
        return _draw(logits.softmax(-1), generators)

    if use_cache:
        caches = model.new_caches(rows)
        prefix = codes[:, :start]
        if guided:
            prefix = torch.cat([prefix, prefix])
        logits = model.prefill(stream_text, caches, prefix)
        for i in range(start, N):
            tok = pick(i, logits)
            codes[:, i] = tok
            if i + 1 < N:
                logits = model.step(torch.cat([tok, tok]) if guided else tok, i, caches)
    else:
        for i in range(start, N):
            prefix = codes[:, :i]
            if guided:
                prefix = torch.cat([prefix, prefix])
            _, image_logits = model(stream_text, prefix)
            codes[:, i] = pick(i, image_logits[:, i])
    return codes
