"""Exact text embeddings for many prompts at once, through their shared prefixes.

The text tower is causal: the hidden state at position t depends only on tokens 0..t.
Prompts that start with the same tokens ("a bad photo of a", "a photo of the number:")
therefore share every layer's keys and values over that prefix, exactly. A zero-shot
head's prompts are templates x class names, so most of each prompt is shared:

1. each distinct token sequence, cut at its read-out position (the end-of-text token,
   the row's argmax, as `CLIP.encode_text` reads it), goes into a radix tree: a
   *segment* is a run of tokens from one branching point to the next, and its *prefix*
   is its ancestors' segments end to end;
2. segments are encoded level by level (parents first), batched by segment length:
   each row runs only its own tokens through the blocks, attending to its prefix's
   keys/values (gathered from a pool, padded, masked) and causally to its own tokens;
3. segments with children leave their keys/values in the pool; a segment that ends at
   a read-out position gives that prompt's embedding (ln_final, projection). In the last
   layer only the read-out position runs the whole block; the others need just their
   keys/values (`ResidualAttentionBlock.keys_values`), which saves 5/6 of that layer for
   three positions in four.

On the 80,000 ImageNet prompts (80 templates x 1000 classes, 79,840 distinct) the tree
has 328k token positions, against 768k in batches cut at their longest prompt and 6.2M
at 77 tokens each. The blocks are the tower's own (`layers.PrefixKV` feeds them the
prefix through the attention's cache hook), so the result equals `model.encode_text` to
float32 rounding (tests/test_prefix.py). Memory: the pool holds the keys/values of the
positions that have children; the sorted sequences are split into chunks so that it
stays under `max_pool_bytes` (a chunk recomputes the few prefixes it shares with the
previous one).
"""
from __future__ import annotations

import contextlib
from collections.abc import Callable, Sequence

import torch
from torch.nn.attention import SDPBackend, sdpa_kernel

from clipkit.models.layers import PrefixKV

__all__ = ["encode_text_shared_prefix", "supports_shared_prefix"]


def supports_shared_prefix(model) -> bool:
    """True for a model whose text tower this module can run (clipkit's `CLIP`)."""
    return all(hasattr(model, a) for a in ("token_embedding", "positional_embedding", "transformer",
                                          "ln_final", "text_projection"))


def _lcp(a: Sequence[int], b: Sequence[int], start: int = 0) -> int:
    """Length of the common prefix of a and b, known to be at least `start`."""
    i, n = start, min(len(a), len(b))
    while i < n and a[i] == b[i]:
        i += 1
    return i


# ---------------------------------------------------------------------------
# The radix tree over sorted, distinct sequences
# ---------------------------------------------------------------------------


class _Tree:
    """Segments of a radix tree, in arrays indexed by segment id.

    parent: segment id or -1; start: position of the segment's first token (= its
    prefix length); tokens: its own tokens; out: the output row read at its last
    position, or -1; level: depth in the tree; slot: first pool slot of its keys/values
    when it has children, else -1.
    """

    def __init__(self, seqs: Sequence[tuple[int, ...]], rows: Sequence[int]):
        self.parent: list[int] = []
        self.start: list[int] = []
        self.tokens: list[tuple[int, ...]] = []
        self.out: list[int] = []
        self.level: list[int] = []
        has_children: list[bool] = []
        stack = [(0, len(seqs), 0, -1)]  # (lo, hi, depth, parent): seqs[lo:hi] share seqs[lo][:depth]
        while stack:
            lo, hi, depth, par = stack.pop()
            first = seqs[lo]
            # sorted range: its common prefix is that of its first and last sequences
            end = len(first) if hi - lo == 1 else _lcp(first, seqs[hi - 1], depth)
            node = par
            if end > depth:  # else: a branching point right at `depth`, no tokens of its own
                node = len(self.parent)
                self.parent.append(par)
                self.start.append(depth)
                self.tokens.append(first[depth:end])
                self.out.append(-1)
                self.level.append(self.level[par] + 1 if par >= 0 else 0)
                has_children.append(False)
                if par >= 0:
                    has_children[par] = True
            if len(first) == end:  # the first sequence ends here (it sorts before its extensions)
                self.out[node] = rows[lo]
                lo += 1
            i = lo
            while i < hi:  # children: runs of equal token at position `end`
                tok, j = seqs[i][end], i + 1
                while j < hi and seqs[j][end] == tok:
                    j += 1
                stack.append((i, j, end, node))
                i = j
        self.slot = []
        n = 0
        for s, kids in enumerate(has_children):
            self.slot.append(n if kids else -1)
            n += len(self.tokens[s]) if kids else 0
        self.n_slots = n

    def prefix_slots(self) -> list[list[int] | None]:
        """For each segment with children: the pool slots of its prefix and its own tokens."""
        full: list[list[int] | None] = [None] * len(self.parent)
        for s in sorted(range(len(self.parent)), key=self.level.__getitem__):
            if self.slot[s] < 0:
                continue
            p = self.parent[s]
            base = full[p] if p >= 0 else []
            full[s] = base + list(range(self.slot[s], self.slot[s] + len(self.tokens[s])))
        return full


def _chunks(seqs: Sequence[tuple[int, ...]], max_slots: int) -> list[tuple[int, int]]:
    """[lo, hi) ranges of the sorted sequences whose trees need at most about `max_slots` pool
    slots (a sequence adds the shared positions it does not share with the one before)."""
    bounds, lo, used = [], 0, 0
    for i, s in enumerate(seqs):
        prev = _lcp(seqs[i - 1], s) if i > lo else 0
        nxt = _lcp(s, seqs[i + 1]) if i + 1 < len(seqs) else 0
        need = max(0, nxt - prev)
        if used + need > max_slots and i > lo:
            bounds.append((lo, i))
            lo, used = i, _lcp(s, seqs[i + 1]) if i + 1 < len(seqs) else 0
        else:
            used += need
    bounds.append((lo, len(seqs)))
    return bounds


# ---------------------------------------------------------------------------
# Running the tower over the tree
# ---------------------------------------------------------------------------


def _run_tree(model, tree: _Tree, out: torch.Tensor, batch_tokens: int) -> None:
    blocks = model.transformer.resblocks
    width = model.ln_final.normalized_shape[0]
    heads = blocks[0].attn.heads
    dtype, device = model.text_projection.dtype, model.text_projection.device
    kpool = torch.empty(len(blocks), tree.n_slots, width, dtype=dtype, device=device)  # (L, slots, C)
    vpool = torch.empty_like(kpool)
    full = tree.prefix_slots()

    groups: dict[tuple[int, int], list[int]] = {}
    for s in range(len(tree.parent)):
        groups.setdefault((tree.level[s], len(tree.tokens[s])), []).append(s)
    for (_, S), segs in sorted(groups.items()):  # parents (lower levels) first
        segs.sort(key=tree.start.__getitem__)  # similar prefix lengths together: little padding
        rows = max(1, batch_tokens // S)
        for i in range(0, len(segs), rows):
            batch = segs[i:i + rows]
            B = len(batch)
            tok = torch.tensor([tree.tokens[s] for s in batch], device=device)  # (B, S)
            start = torch.tensor([tree.start[s] for s in batch], device=device)  # (B,) = prefix lengths
            P = int(start.max())
            pos = start[:, None] + torch.arange(S, device=device)  # (B, S)
            x = model.token_embedding(tok) + model.positional_embedding[pos].to(dtype)  # (B, S, C)
            causal = torch.ones(S, S, dtype=torch.bool, device=device).tril()
            if P:
                idx = torch.zeros(B, P, dtype=torch.long)
                for r, s in enumerate(batch):
                    if tree.start[s]:
                        idx[r, :tree.start[s]] = torch.tensor(full[tree.parent[s]])
                idx = idx.view(-1).to(device)  # (B*P,)
                seen = torch.arange(P, device=device) < start[:, None]  # (B, P): real prefix, not padding
                mask = torch.cat([seen[:, None, :].expand(B, S, P), causal.expand(B, S, S)], dim=2)[:, None]
            else:
                mask = causal  # (S, S): no prefix
            keep = [r for r, s in enumerate(batch) if tree.slot[s] >= 0]
            if keep:
                slots = torch.cat([torch.arange(tree.slot[batch[r]], tree.slot[batch[r]] + S) for r in keep])
                keep_t = torch.tensor(keep, device=device)
                slots = slots.to(device)
            last = len(blocks) - 1
            for layer, block in enumerate(blocks):
                if P:
                    k = kpool[layer].index_select(0, idx).view(B, P, heads, -1).transpose(1, 2)  # (B, nh, P, hs)
                    v = vpool[layer].index_select(0, idx).view(B, P, heads, -1).transpose(1, 2)
                else:
                    k = v = x.new_empty(B, heads, 0, width // heads)
                if layer < last:
                    kv = PrefixKV(k, v)
                    x = block(x, attn_mask=mask, cache=kv)  # (B, S, C)
                    new_k, new_v = kv.new_k, kv.new_v  # (B, nh, S, hs)
                else:
                    # Last layer: only the read-out (last) position's output is used; the
                    # earlier positions need just their keys/values (for it and for children).
                    own_k, own_v = block.keys_values(x[:, :S - 1])  # (B, nh, S-1, hs)
                    kv = PrefixKV(torch.cat([k, own_k], 2), torch.cat([v, own_v], 2))
                    x = block(x[:, S - 1:], attn_mask=mask[..., S - 1:, :], cache=kv)  # (B, 1, C)
                    new_k, new_v = torch.cat([own_k, kv.new_k], 2), torch.cat([own_v, kv.new_v], 2)
                if keep:
                    kpool[layer][slots] = new_k.transpose(1, 2)[keep_t].reshape(-1, width)  # (b*S, C)
                    vpool[layer][slots] = new_v.transpose(1, 2)[keep_t].reshape(-1, width)
            reads = [(r, tree.out[s]) for r, s in enumerate(batch) if tree.out[s] >= 0]
            if reads:
                r_idx = torch.tensor([r for r, _ in reads], device=device)
                o_idx = torch.tensor([o for _, o in reads], device=device)
                out[o_idx] = model.ln_final(x[r_idx, -1]) @ model.text_projection  # (b, D)


@torch.inference_mode()
def encode_text_shared_prefix(model, ids: torch.Tensor, *, batch_tokens: int = 2048,
                              max_pool_bytes: int = 256 << 20,
                              progress: Callable[[int], None] | None = None) -> torch.Tensor:
    """`model.encode_text(ids)` (un-normalised, in the model's dtype), computed once per shared prefix.

    ids: (N, T) token ids as the tokenizer returns them; each row is read at its argmax
    (the end-of-text token). Duplicated rows are encoded once. `batch_tokens`: new tokens
    per forward call; `max_pool_bytes`: the prefix keys/values kept at once;
    `progress(n)` is called as rows of `ids` are finished, with how many.
    """
    if not supports_shared_prefix(model):
        raise TypeError(f"expected a clipkit CLIP model (a text tower to run), got {type(model).__name__}")
    if not isinstance(ids, torch.Tensor) or ids.ndim != 2 or torch.is_floating_point(ids):
        raise ValueError("ids must be an integer tensor of shape [N, T]")
    N = ids.shape[0]
    lengths = (ids.argmax(dim=1) + 1).tolist()
    first: dict[tuple[int, ...], int] = {}
    inverse = [first.setdefault(tuple(r[:n]), len(first)) for r, n in zip(ids.tolist(), lengths)]
    seqs = sorted(first)
    rows = [first[s] for s in seqs]
    dtype, device = model.text_projection.dtype, model.text_projection.device
    out = torch.empty(len(seqs), model.text_projection.shape[1], dtype=dtype, device=device)
    blocks = model.transformer.resblocks
    slot_bytes = 2 * len(blocks) * model.ln_final.normalized_shape[0] * model.text_projection.element_size()
    copies = [0] * len(seqs)  # rows of `ids` per distinct sequence
    for u in inverse:
        copies[u] += 1
    # SDPA's math kernel: twice the CPU flash kernel's speed on these many tiny attentions
    # (queries of a few tokens, keys of a few dozen), measured on ImageNet's leaf batches.
    with sdpa_kernel([SDPBackend.MATH]) if device.type == "cpu" else contextlib.nullcontext():
        for lo, hi in _chunks(seqs, max(1, max_pool_bytes // slot_bytes)):
            _run_tree(model, _Tree(seqs[lo:hi], rows[lo:hi]), out, batch_tokens)
        if progress is not None:
            progress(sum(copies[r] for r in rows[lo:hi]))
    if N == 0:
        return out
    return out[torch.tensor(inverse, device=device)]
