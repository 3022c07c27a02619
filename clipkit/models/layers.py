"""Shared transformer layers: norm -> activation -> attention -> MLP -> block -> stack.

One attention module serves the ViT, the text tower and the generator. Parameter
names follow OpenAI's CLIP (`attn.in_proj_weight`, `attn.out_proj`, `ln_1`,
`mlp.c_fc`, `mlp.c_proj`, `ln_2`, `resblocks`), so the released state dicts load
with `strict=True`. All tensors are batch-first: (B, T, C).
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

# ---------------------------------------------------------------------------
# Normalisation and activations
# ---------------------------------------------------------------------------


class LayerNorm(nn.LayerNorm):
    """LayerNorm computed in float32 and cast back.

    The reference computes LayerNorm in fp32 even when the rest of the model runs in
    fp16; doing the same keeps half/bfloat16 runs close to fp32 and avoids the
    "LayerNormKernelImpl not implemented for 'Half'" failure on CPU.
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dtype == torch.float32 and self.weight.dtype == torch.float32:
            return super().forward(x)
        weight = self.weight.float() if self.weight is not None else None
        bias = self.bias.float() if self.bias is not None else None
        out = F.layer_norm(x.float(), self.normalized_shape, weight, bias, self.eps)
        return out.to(x.dtype)


class QuickGELU(nn.Module):
    """x * sigmoid(1.702 x): the GELU approximation the OpenAI CLIP models were trained with."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * torch.sigmoid(1.702 * x)


# ---------------------------------------------------------------------------
# Attention
# ---------------------------------------------------------------------------


class KVCache:
    """Preallocated key/value buffers for one attention layer, written in place.

    Shapes stay static during decoding: buffers are (B, nh, max_len, hs) and each
    call to `update` writes the new positions and returns views of the filled part.
    """

    def __init__(self, batch: int, heads: int, max_len: int, head_dim: int,
                 dtype: torch.dtype = torch.float32, device: torch.device | str | None = None):
        self.k = torch.empty(batch, heads, max_len, head_dim, dtype=dtype, device=device)
        self.v = torch.empty(batch, heads, max_len, head_dim, dtype=dtype, device=device)
        self.length = 0

    @property
    def max_len(self) -> int:
        return self.k.shape[2]

    def update(self, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        start, end = self.length, self.length + k.shape[2]
        if end > self.max_len:
            raise ValueError(f"KV cache overflow: {end} positions > capacity {self.max_len}")
        self.k[:, :, start:end] = k
        self.v[:, :, start:end] = v
        self.length = end
        return self.k[:, :, :end], self.v[:, :, :end]

    def reset(self) -> None:
        self.length = 0


class PrefixKV:
    """Keys/values of earlier positions kept elsewhere, put in front of the new ones.

    The other thing `Attention(cache=...)` accepts: where a `KVCache` grows one sequence,
    a `PrefixKV` serves one layer of a batch of continuations, each row with its own
    prefix (e.g. a shared prompt prefix encoded once). `k`/`v` are (B, nh, P, hs); rows
    whose prefix is shorter than P are padded, and the caller's `attn_mask` must hide
    the padding. After the call `new_k`/`new_v` hold the new positions' keys/values
    (B, nh, T, hs), so they can serve as a later prefix.
    """

    def __init__(self, k: torch.Tensor, v: torch.Tensor):
        self.k, self.v = k, v
        self.new_k: torch.Tensor | None = None
        self.new_v: torch.Tensor | None = None

    def update(self, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        self.new_k, self.new_v = k, v
        return torch.cat([self.k, k], dim=2), torch.cat([self.v, v], dim=2)  # (B, nh, P + T, hs)


class Attention(nn.Module):
    """Multi-head self-attention: one fused qkv projection + `scaled_dot_product_attention`.

    Parameter names match `nn.MultiheadAttention` (in_proj_weight / in_proj_bias /
    out_proj) so OpenAI and open_clip checkpoints load unchanged, but the computation
    avoids MultiheadAttention's per-call weight copies (which made bf16 slower than
    fp32 on this CPU).

    `attn_mask` is a boolean mask (True = may attend) or an additive float mask,
    broadcastable to (B, nh, T_q, T_k). `cache` (a `KVCache` or a `PrefixKV`) supplies the
    keys/values of earlier positions; with one, `is_causal` must not be used (SDPA aligns
    its causal mask top-left); pass an explicit mask instead.
    """

    def __init__(self, dim: int, heads: int, bias: bool = True):
        super().__init__()
        if dim % heads:
            raise ValueError(f"width {dim} is not divisible by {heads} heads")
        self.dim, self.heads, self.head_dim = dim, heads, dim // heads
        self.in_proj_weight = nn.Parameter(torch.empty(3 * dim, dim))
        if bias:
            self.in_proj_bias = nn.Parameter(torch.zeros(3 * dim))
        else:
            self.register_parameter("in_proj_bias", None)
        self.out_proj = nn.Linear(dim, dim, bias=bias)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        nn.init.xavier_uniform_(self.in_proj_weight)  # as nn.MultiheadAttention does
        if self.in_proj_bias is not None:
            nn.init.zeros_(self.in_proj_bias)
            nn.init.zeros_(self.out_proj.bias)

    def forward(self, x: torch.Tensor, attn_mask: torch.Tensor | None = None,
                is_causal: bool = False, cache: KVCache | PrefixKV | None = None) -> torch.Tensor:
        B, T, C = x.shape
        qkv = F.linear(x, self.in_proj_weight, self.in_proj_bias)  # (B, T, 3C)
        q, k, v = qkv.view(B, T, 3, self.heads, self.head_dim).permute(2, 0, 3, 1, 4)  # 3 x (B, nh, T, hs)
        if cache is not None:
            if is_causal:
                raise ValueError("is_causal cannot be combined with a KV cache; pass an explicit attn_mask")
            k, v = cache.update(k, v)  # (B, nh, T_past + T, hs)
        y = F.scaled_dot_product_attention(q, k, v, attn_mask=attn_mask, is_causal=is_causal)
        y = y.transpose(1, 2).reshape(B, T, C)  # (B, T, C)
        return self.out_proj(y)

    def keys_values(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The keys and values `forward` would compute for x (B, T, C), without queries or
        output: 2/3 of the qkv projection, for positions that are only attended to."""
        B, T, C = x.shape
        bias = None if self.in_proj_bias is None else self.in_proj_bias[C:]
        kv = F.linear(x, self.in_proj_weight[C:], bias)  # (B, T, 2C)
        k, v = kv.view(B, T, 2, self.heads, self.head_dim).permute(2, 0, 3, 1, 4)  # 2 x (B, nh, T, hs)
        return k, v


def reference_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
                        attn_mask: torch.Tensor | None = None, is_causal: bool = False) -> torch.Tensor:
    """Plain softmax attention, written out. A test oracle only; models use SDPA."""
    scores = q @ k.transpose(-2, -1) / math.sqrt(q.shape[-1])  # (B, nh, Tq, Tk)
    if is_causal:
        Tq, Tk = scores.shape[-2:]
        keep = torch.ones(Tq, Tk, dtype=torch.bool, device=q.device).tril()
        scores = scores.masked_fill(~keep, float("-inf"))
    if attn_mask is not None:
        if attn_mask.dtype == torch.bool:
            scores = scores.masked_fill(~attn_mask, float("-inf"))
        else:
            scores = scores + attn_mask
    return scores.softmax(-1) @ v


# ---------------------------------------------------------------------------
# MLP, residual block, stack
# ---------------------------------------------------------------------------


class MLP(nn.Module):
    """c_fc -> activation -> c_proj (OpenAI's names)."""

    def __init__(self, dim: int, hidden: int, act_layer: type[nn.Module] = nn.GELU):
        super().__init__()
        self.c_fc = nn.Linear(dim, hidden)
        self.gelu = act_layer()
        self.c_proj = nn.Linear(hidden, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.c_proj(self.gelu(self.c_fc(x)))


class ResidualAttentionBlock(nn.Module):
    """Pre-LN transformer block: x + attn(ln_1(x)), then x + mlp(ln_2(x))."""

    def __init__(self, dim: int, heads: int, mlp_ratio: float = 4.0,
                 act_layer: type[nn.Module] = nn.GELU):
        super().__init__()
        self.ln_1 = LayerNorm(dim)
        self.attn = Attention(dim, heads)
        self.ln_2 = LayerNorm(dim)
        self.mlp = MLP(dim, int(dim * mlp_ratio), act_layer)

    def forward(self, x: torch.Tensor, attn_mask: torch.Tensor | None = None,
                is_causal: bool = False, cache: KVCache | PrefixKV | None = None) -> torch.Tensor:
        x = x + self.attn(self.ln_1(x), attn_mask=attn_mask, is_causal=is_causal, cache=cache)
        return x + self.mlp(self.ln_2(x))

    def keys_values(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """This block's attention keys/values for inputs x (B, T, C): what later positions
        attend to when x's own outputs are not needed (the last layer of a text tower)."""
        return self.attn.keys_values(self.ln_1(x))


class Transformer(nn.Module):
    """A stack of residual blocks under OpenAI's key name `resblocks`."""

    def __init__(self, width: int, layers: int, heads: int, mlp_ratio: float = 4.0,
                 act_layer: type[nn.Module] = nn.GELU):
        super().__init__()
        self.width, self.layers = width, layers
        self.resblocks = nn.ModuleList(
            ResidualAttentionBlock(width, heads, mlp_ratio, act_layer) for _ in range(layers)
        )

    def forward(self, x: torch.Tensor, attn_mask: torch.Tensor | None = None,
                is_causal: bool = False) -> torch.Tensor:
        for block in self.resblocks:
            x = block(x, attn_mask=attn_mask, is_causal=is_causal)
        return x
