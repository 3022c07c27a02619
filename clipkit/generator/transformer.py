"""The DALL·E transformer: one decoder-only stream [text tokens ; image tokens].

Ramesh et al. 2021, section 2.2 and appendix B. The text is the caption in the shared
CLIP tokenizer's BPE ids, framed with start/end tokens and padded to `text_len` with a
*different* learned padding token per position; the image is the dVAE's `grid × grid`
codes in raster order, each embedded with a learned row and a learned column embedding.

Token ids the model takes ("generator ids"):
    [0, 49408)                    CLIP BPE ids (49406 start, 49407 end of text)
    PAD_BASE + p, p < text_len    the padding token of text position p
Pads lie outside the BPE range on purpose: CLIP pads with 0, but 0 is a real token
("!"), and a generator trained on 0-padding would learn "!" as the end of every caption.
`text_from_clip_ids` turns the tokenizer's framed, zero-padded rows into generator ids.

Attention (one boolean mask per layer, True = may attend, applied by the shared
`layers.Attention`): text positions attend causally to text; image positions attend to
all text and to earlier image tokens by the layer's pattern:
    row     the previous grid + 1 image positions in raster order, itself included
            (qi − grid ≤ ki ≤ qi): the rest of its own row so far, plus the tail of the
            row above down to the token just above it
    column  the same column, rows above and its own (the paper transposes the image
            states to make this a row pattern; a mask does the same without the copy)
    conv    a causal conv_kernel × conv_kernel window centred on it (paper: 11×11 on 32×32)
    full    every earlier image token (dense causal attention)
Layer rule (paper, appendix B.1): layer i (1-based) is column if (i − 2) mod 4 == 0, else
row, so row, column, row, row, row, column, …; the last layer is `last_layer`: "full" by
default (dense: a small model on an 8x8 grid loses nothing by it), or "conv" as in the paper's final layer. `attn_pattern` overrides the
rule with an explicit tuple. Masks depend only on the config: they are built once, as
buffers, and a query at position t reads row t of its layer's mask, so cached decoding
sees exactly the keys that full recomputation sees.

Outputs: the hidden state at position t predicts token t + 1. Two heads: a text head over
the text vocabulary for predictions of text tokens, and an image head over the
`image_vocab` codes for predictions of image tokens (from the last text position on).
Keeping them apart means sampling an image position can only ever choose an image code
(one public implementation filtered top-k over text and image ids together).

A compact text vocabulary (`text_vocab` < 49408) stores which BPE ids the model knows in
the buffer `text_bpe_ids` (index 0 is the unknown-word token); a small model trained on
the synthetic world's ~200 words saves 2 × 49408 × width parameters that way.
"""
from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from clipkit.models.layers import KVCache, LayerNorm, ResidualAttentionBlock

BPE_VOCAB = 49408  # ids of the shared CLIP tokenizer
PAD_BASE = BPE_VOCAB  # the pad of text position p is PAD_BASE + p
SOT, EOT = 49406, 49407
MASK_TYPES = ("row", "column", "conv", "full")

# ---------------------------------------------------------------------------
# Config
# ---------------------------------------------------------------------------


@dataclass(frozen=True)
class TransformerConfig:
    """Architecture of the transformer. Defaults: the project's small model for 64×64 images."""

    # Text positions, start and end tokens included. The synthetic world's captions are at
    # most ~20 BPE tokens; the paper used 256 for web captions.
    text_len: int = 32
    # Text ids embedded and predicted: 49408 = the whole CLIP BPE; fewer = a compact
    # vocabulary listed in the `text_bpe_ids` buffer (see `set_text_vocab`).
    text_vocab: int = BPE_VOCAB
    image_vocab: int = 512  # the dVAE's codebook size
    grid_size: int = 8  # image tokens per side: 64×64 pixels / 8× dVAE downsampling
    width: int = 256
    layers: int = 8
    heads: int = 8  # 32 channels per head
    mlp_ratio: float = 4.0
    last_layer: str = "full"  # "full" (dense causal) or "conv" (the paper)
    conv_kernel: int = 5  # ~ the paper's 11 of 32 codes, scaled to an 8-code grid; odd
    attn_pattern: tuple[str, ...] | None = None  # explicit per-layer mask types (tests, ablations)

    def __post_init__(self):
        if self.last_layer not in MASK_TYPES:
            raise ValueError(f"last_layer must be one of {MASK_TYPES}, got {self.last_layer!r}")
        if self.conv_kernel % 2 != 1:
            raise ValueError(f"conv_kernel must be odd, got {self.conv_kernel}")
        if self.text_len < 2:
            raise ValueError("text_len must leave room for the start and end tokens")
        if not 1 <= self.text_vocab <= BPE_VOCAB:
            raise ValueError(f"text_vocab must lie in [1, {BPE_VOCAB}], got {self.text_vocab}")
        if self.attn_pattern is not None:
            if len(self.attn_pattern) != self.layers:
                raise ValueError(f"attn_pattern has {len(self.attn_pattern)} entries for {self.layers} layers")
            bad = [t for t in self.attn_pattern if t not in MASK_TYPES]
            if bad:
                raise ValueError(f"unknown mask types {bad}; expected {MASK_TYPES}")

    @property
    def image_len(self) -> int:
        return self.grid_size * self.grid_size

    @property
    def seq_len(self) -> int:
        return self.text_len + self.image_len

    @property
    def compact_vocab(self) -> bool:
        return self.text_vocab < BPE_VOCAB

    def layer_types(self) -> tuple[str, ...]:
        if self.attn_pattern is not None:
            return tuple(self.attn_pattern)
        types = ["column" if (i - 2) % 4 == 0 else "row" for i in range(1, self.layers + 1)]
        types[-1] = self.last_layer
        return tuple(types)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "TransformerConfig":
        d = dict(d)
        if d.get("attn_pattern") is not None:
            d["attn_pattern"] = tuple(d["attn_pattern"])
        return cls(**d)


# ---------------------------------------------------------------------------
# Masks
# ---------------------------------------------------------------------------


def build_mask(kind: str, text_len: int, grid_size: int, conv_kernel: int = 5) -> torch.Tensor:
    """Boolean (T, T) attention mask, T = text_len + grid², True = may attend."""
    if kind not in MASK_TYPES:
        raise ValueError(f"unknown mask type {kind!r}; expected {MASK_TYPES}")
    L, g = text_len, grid_size
    pos = torch.arange(L + g * g)
    q, k = pos[:, None], pos[None, :]  # (T, 1), (1, T)
    causal = k <= q
    qi, ki = q - L, k - L  # image indices (negative on text positions)
    if kind == "row":
        image_rule = qi - ki <= g
    elif kind == "column":
        image_rule = (qi % g) == (ki % g)
    elif kind == "conv":
        r = conv_kernel // 2
        image_rule = ((qi // g - ki // g).abs() <= r) & ((qi % g - ki % g).abs() <= r)
    else:  # full
        image_rule = torch.ones_like(causal)
    image_q = (k < L) | ((k >= L) & causal & image_rule)
    return torch.where(q < L, causal, image_q)


# ---------------------------------------------------------------------------
# Text ids
# ---------------------------------------------------------------------------


def text_from_clip_ids(ids: torch.Tensor, text_len: int) -> torch.Tensor:
    """Framed, zero-padded CLIP token rows (N, ctx) -> generator ids (N, text_len).

    Everything after the end-of-text token becomes the per-position pad PAD_BASE + p; a
    0 before it stays a 0 (the token "!"). Rows longer than text_len must have been
    tokenized with context_length=text_len (the tokenizer then keeps the end token).
    """
    if ids.dim() == 1:
        ids = ids[None]
    if ids.shape[1] > text_len:
        if bool((ids[:, text_len:] != 0).any()):
            raise ValueError(f"token rows are longer than text_len={text_len}: tokenize with "
                             f"context_length={text_len}")
        ids = ids[:, :text_len]
    elif ids.shape[1] < text_len:
        ids = F.pad(ids, (0, text_len - ids.shape[1]))
    ids = ids.long()
    is_eot = ids == EOT
    if not bool(is_eot.any(1).all()):
        raise ValueError("every row needs an end-of-text token (49407): pass framed tokenizer output")
    end = is_eot.int().argmax(1)  # first end token per row
    pos = torch.arange(text_len, device=ids.device)
    return torch.where(pos[None] > end[:, None], PAD_BASE + pos[None], ids)


def null_text(batch: int, text_len: int, device=None) -> torch.Tensor:
    """The unconditional text: all padding (what classifier-free guidance conditions on)."""
    return (PAD_BASE + torch.arange(text_len, device=device)).expand(batch, text_len).clone()


def build_text_vocab(captions: Sequence[str], tokenizer) -> list[int]:
    """Sorted BPE ids used by `captions`, plus the start and end tokens (for `set_text_vocab`)."""
    ids = {SOT, EOT}
    for text in captions:
        ids.update(tokenizer.encode(text))
    return sorted(ids)


# ---------------------------------------------------------------------------
# Model
# ---------------------------------------------------------------------------


class DALLETransformer(nn.Module):
    """Sparse-attention decoder over [text ; image] (see the module docstring)."""

    def __init__(self, config: TransformerConfig | None = None):
        super().__init__()
        self.config = cfg = config or TransformerConfig()
        C = cfg.width
        # rows: text ids (BPE or compact), then one padding token per text position
        self.text_embed = nn.Embedding(cfg.text_vocab + cfg.text_len, C)
        self.text_pos = nn.Parameter(torch.empty(cfg.text_len, C))
        self.image_embed = nn.Embedding(cfg.image_vocab, C)
        self.image_row = nn.Parameter(torch.empty(cfg.grid_size, C))
        self.image_col = nn.Parameter(torch.empty(cfg.grid_size, C))
        self.blocks = nn.ModuleList(ResidualAttentionBlock(C, cfg.heads, cfg.mlp_ratio, nn.GELU)
                                    for _ in range(cfg.layers))
        self.ln_final = LayerNorm(C)
        self.text_head = nn.Linear(C, cfg.text_vocab, bias=False)
        self.image_head = nn.Linear(C, cfg.image_vocab, bias=False)

        types = cfg.layer_types()
        kinds = sorted(set(types), key=MASK_TYPES.index)
        self.layer_types = types
        self.mask_index = tuple(kinds.index(t) for t in types)
        masks = torch.stack([build_mask(k, cfg.text_len, cfg.grid_size, cfg.conv_kernel) for k in kinds])
        self.register_buffer("masks", masks, persistent=False)  # (n_kinds, T, T)
        if cfg.compact_vocab:
            # index j of the text vocabulary stands for BPE id text_bpe_ids[j]; j = 0 is unknown
            self.register_buffer("text_bpe_ids", torch.full((cfg.text_vocab,), -1, dtype=torch.long))
        self.register_buffer("text_lut", torch.empty(0, dtype=torch.long), persistent=False)
        self._build_lut()
        self.register_load_state_dict_post_hook(lambda module, _incompatible: module._build_lut())
        self.init_weights()

    # -- set-up ---------------------------------------------------------------

    def init_weights(self) -> None:
        """GPT-2 style: N(0, 0.02) everywhere, residual output projections scaled by 1/√(2·layers)."""
        std = 0.02
        for p in (self.text_embed.weight, self.text_pos, self.image_embed.weight, self.image_row, self.image_col,
                  self.text_head.weight, self.image_head.weight):
            nn.init.normal_(p, std=std)
        for block in self.blocks:
            nn.init.normal_(block.attn.in_proj_weight, std=std)
            nn.init.normal_(block.mlp.c_fc.weight, std=std)
            for proj in (block.attn.out_proj, block.mlp.c_proj):
                nn.init.normal_(proj.weight, std=std / math.sqrt(2 * self.config.layers))
            for b in (block.attn.in_proj_bias, block.attn.out_proj.bias, block.mlp.c_fc.bias, block.mlp.c_proj.bias):
                nn.init.zeros_(b)

    def set_text_vocab(self, bpe_ids: Sequence[int]) -> None:
        """Fix the compact vocabulary: the BPE ids (e.g. `build_text_vocab(captions)`) the model
        knows; any other id reads as the unknown token. Needs config.text_vocab ≥ len + 1."""
        if not self.config.compact_vocab:
            raise ValueError("this model embeds the whole BPE vocabulary (text_vocab=49408)")
        ids = sorted(set(int(i) for i in bpe_ids))
        if len(ids) + 1 > self.config.text_vocab:
            raise ValueError(f"{len(ids)} BPE ids + the unknown token do not fit text_vocab={self.config.text_vocab}")
        if ids and (ids[0] < 0 or ids[-1] >= BPE_VOCAB):
            raise ValueError(f"BPE ids must lie in [0, {BPE_VOCAB})")
        table = torch.full((self.config.text_vocab,), -1, dtype=torch.long)
        table[1:len(ids) + 1] = torch.tensor(ids, dtype=torch.long)
        self.text_bpe_ids.copy_(table)
        self._build_lut()

    def _build_lut(self) -> None:
        """generator id -> row of text_embed (and, below text_vocab, class of text_head)."""
        cfg = self.config
        n = PAD_BASE + cfg.text_len
        device = self.masks.device
        if cfg.compact_vocab:
            lut = torch.zeros(n, dtype=torch.long, device=device)  # unknown
            known = self.text_bpe_ids[self.text_bpe_ids >= 0]
            j = torch.nonzero(self.text_bpe_ids >= 0).flatten()
            lut[known] = j
            lut[PAD_BASE:] = cfg.text_vocab + torch.arange(cfg.text_len, device=device)
        else:
            lut = torch.arange(n, device=device)  # BPE ids are rows; pads follow at PAD_BASE
        self.text_lut = lut

    @property
    def vocab_ready(self) -> bool:
        return not self.config.compact_vocab or bool((self.text_bpe_ids >= 0).any())

    # -- embeddings -------------------------------------------------------------

    def embed_text(self, text: torch.Tensor) -> torch.Tensor:
        """Generator text ids (B, text_len) -> (B, text_len, C)."""
        L = self.config.text_len
        if text.dim() != 2 or text.shape[1] != L:
            raise ValueError(f"expected text ids (B, {L}), got shape {tuple(text.shape)}")
        if int(text.min()) < 0 or int(text.max()) >= PAD_BASE + L:
            raise ValueError(f"text ids must lie in [0, {PAD_BASE + L}) (BPE ids, then the pads); "
                             "use text_from_clip_ids on tokenizer output")
        if not self.vocab_ready:
            raise RuntimeError("compact text vocabulary not set: call set_text_vocab(bpe_ids) or load weights")
        return self.text_embed(self.text_lut[text]) + self.text_pos  # (B, L, C)

    def embed_image(self, codes: torch.Tensor, start: int = 0) -> torch.Tensor:
        """Codes (B, n) at image positions start .. start+n−1 -> (B, n, C)."""
        g = self.config.grid_size
        idx = torch.arange(start, start + codes.shape[1], device=codes.device)
        return self.image_embed(codes) + self.image_row[idx // g] + self.image_col[idx % g]  # (B, n, C)

    # -- the stack ---------------------------------------------------------------

    def run_blocks(self, x: torch.Tensor, start: int = 0, caches: Sequence[KVCache] | None = None) -> torch.Tensor:
        """Hidden states for positions start .. start+T−1 (earlier ones must be in `caches`)."""
        end = start + x.shape[1]
        if caches is None:
            if start != 0:
                raise ValueError("start > 0 needs the key/value caches of the earlier positions")
            caches = [None] * len(self.blocks)
        elif caches[0].length != start:
            raise ValueError(f"caches hold {caches[0].length} positions, expected {start}")
        for block, m, cache in zip(self.blocks, self.mask_index, caches):
            # row `t` of the layer's mask: which keys (cached or new) position t may see
            x = block(x, attn_mask=self.masks[m, start:end, :end], cache=cache)
        return self.ln_final(x)

    def forward(self, text: torch.Tensor, image: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """Full pass over [text ; image], image (B, n) with 0 ≤ n ≤ grid².

        Returns (text_logits (B, L−1, text_vocab), predictions of text[:, 1:];
                 image_logits (B, min(n+1, N), image_vocab), [:, i] predicting image[:, i]
                 from the text and image[:, :i]).
        """
        L, N = self.config.text_len, self.config.image_len
        x = self.embed_text(text)
        if image is not None and image.shape[1]:
            if image.shape[1] > N:
                raise ValueError(f"{image.shape[1]} image tokens, the grid has {N}")
            inputs = image[:, :N - 1]  # the last token predicts nothing
            x = torch.cat([x, self.embed_image(inputs)], dim=1)  # (B, L + n', C)
        h = self.run_blocks(x)
        return self.text_head(h[:, :L - 1]), self.image_head(h[:, L - 1:])

    def loss(self, text: torch.Tensor, image: torch.Tensor,
             text_weight: float = 1 / 8) -> tuple[torch.Tensor, dict[str, float]]:
        """text_weight · CE(text) + (1 − text_weight) · CE(image), each averaged over its own
        tokens (the paper's 1/8 and 7/8). Pad targets (and unknown words) are not text tokens."""
        text_logits, image_logits = self(text, image)
        target = text[:, 1:]
        ignore = target >= PAD_BASE
        classes = self.text_lut[target]
        if self.config.compact_vocab:
            ignore = ignore | (classes == 0)
        classes = classes.masked_fill(ignore, -100)
        n_text = int((~ignore).sum())
        text_ce = (F.cross_entropy(text_logits.reshape(-1, text_logits.shape[-1]).float(), classes.reshape(-1),
                                   ignore_index=-100) if n_text else text_logits.sum() * 0)
        image_ce = F.cross_entropy(image_logits.reshape(-1, image_logits.shape[-1]).float(), image.reshape(-1))
        total = text_weight * text_ce + (1 - text_weight) * image_ce
        return total, {"text_ce": text_ce.item(), "image_ce": image_ce.item(), "text_tokens": n_text}

    # -- cached decoding -----------------------------------------------------------

    def new_caches(self, batch: int, dtype: torch.dtype | None = None, device=None) -> list[KVCache]:
        """One preallocated key/value cache per layer, long enough for a whole image."""
        p = self.image_head.weight
        cfg = self.config
        return [KVCache(batch, cfg.heads, cfg.seq_len - 1, cfg.width // cfg.heads,
                        dtype=dtype or p.dtype, device=device or p.device) for _ in self.blocks]

    def prefill(self, text: torch.Tensor, caches: Sequence[KVCache],
                image_prefix: torch.Tensor | None = None) -> torch.Tensor:
        """Run the text (and an optional image prefix (B, P)) once into empty caches;
        returns the logits (B, K) of image token P."""
        x = self.embed_text(text)
        if image_prefix is not None and image_prefix.shape[1]:
            x = torch.cat([x, self.embed_image(image_prefix)], dim=1)
        return self.image_head(self.run_blocks(x, 0, caches)[:, -1])

    def step(self, codes: torch.Tensor, index: int, caches: Sequence[KVCache]) -> torch.Tensor:
        """Feed image token `index` (codes (B,)); returns the logits (B, K) of token index + 1.
        Costs one position per layer: the earlier keys and values come from `caches`."""
        x = self.embed_image(codes[:, None], index)  # (B, 1, C)
        return self.image_head(self.run_blocks(x, self.config.text_len + index, caches)[:, -1])
