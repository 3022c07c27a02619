"""The CLIP model: a ViT or modified-ResNet image tower, a causal text tower, one logit scale.

Reads top to bottom in dependency order: ViT -> modified ResNet (bottleneck, attention
pooling, the net) -> the CLIP model (text tower inline) -> `create_model`.

State-dict keys are exactly OpenAI's (`visual.conv1.weight`, `visual.attnpool.q_proj.weight`,
`transformer.resblocks.0.attn.in_proj_weight`, `text_projection`, `logit_scale`, ...), so the
released checkpoints load with `strict=True`. The arithmetic is the reference's too
(QuickGELU for the OpenAI models, pre-LN blocks, class-token / attention-pool pooling,
end-of-text pooling of the text tower), checked against Hugging Face `transformers` and
open_clip in `tests/test_parity_hf.py`.

All tensors are batch-first. The models run in whatever dtype their weights have
(`model.half()` / `model.to(torch.bfloat16)` work on CPU too): inputs are cast to the weight
dtype on entry, LayerNorm runs in fp32 internally (see `layers.LayerNorm`).
"""
from __future__ import annotations

import math
from collections import OrderedDict

import torch
import torch.nn.functional as F
from torch import nn

from clipkit.models.config import CLIPConfig, get_config
from clipkit.models.layers import LayerNorm, QuickGELU, Transformer

# ---------------------------------------------------------------------------
# Image tower 1: Vision Transformer
# ---------------------------------------------------------------------------


class VisionTransformer(nn.Module):
    """ViT as in CLIP: patchify -> [class] + positions -> ln_pre -> blocks -> ln_post -> proj.

    The extra `ln_pre` before the blocks is the one change the paper makes to the
    standard ViT ("adding an additional layer normalization to the combined patch and
    position embeddings before the transformer").
    """

    def __init__(self, image_size: int, patch_size: int, width: int, layers: int, heads: int,
                 output_dim: int, mlp_ratio: float = 4.0, act_layer: type[nn.Module] = QuickGELU):
        super().__init__()
        if image_size % patch_size:
            raise ValueError(f"image size {image_size} is not a multiple of the patch size {patch_size}")
        self.image_size, self.patch_size = image_size, patch_size
        grid = image_size // patch_size
        self.conv1 = nn.Conv2d(3, width, kernel_size=patch_size, stride=patch_size, bias=False)
        self.class_embedding = nn.Parameter(torch.empty(width))
        self.positional_embedding = nn.Parameter(torch.empty(grid * grid + 1, width))
        self.ln_pre = LayerNorm(width)
        self.transformer = Transformer(width, layers, heads, mlp_ratio, act_layer)
        self.ln_post = LayerNorm(width)
        self.proj = nn.Parameter(torch.empty(width, output_dim))
        self.init_weights()

    def init_weights(self) -> None:
        # As the reference: embeddings and projection ~ N(0, width^-1/2); the blocks keep
        # the layers' defaults (xavier-uniform qkv, PyTorch's Linear init), LayerNorm (1, 0).
        std = self.conv1.out_channels ** -0.5
        nn.init.normal_(self.class_embedding, std=std)
        nn.init.normal_(self.positional_embedding, std=std)
        nn.init.normal_(self.proj, std=std)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.conv1(x.to(self.conv1.weight.dtype))  # (B, width, g, g)
        x = x.flatten(2).transpose(1, 2)  # (B, g*g, width)
        cls = self.class_embedding.to(x.dtype).expand(x.shape[0], 1, -1)  # (B, 1, width)
        x = torch.cat([cls, x], dim=1) + self.positional_embedding.to(x.dtype)  # (B, 1+g*g, width)
        x = self.transformer(self.ln_pre(x))
        return self.ln_post(x[:, 0]) @ self.proj  # (B, output_dim)


# ---------------------------------------------------------------------------
# Image tower 2: modified ResNet (paper, section 2.4)
# ---------------------------------------------------------------------------


class Bottleneck(nn.Module):
    """ResNet-D style bottleneck with anti-aliased downsampling.

    Every convolution has stride 1; where the block downsamples, an average pool of the
    stride's size comes before `conv3` and before the 1x1 convolution of the shortcut
    ("antialiased rect-2 blur pooling", Zhang 2019, as the paper puts it). The shortcut's
    submodules are named "-1" (pool, no weights), "0" (conv), "1" (bn) so the checkpoint
    keys are `downsample.0.weight` and `downsample.1.*`, as in the released weights.
    """

    expansion = 4

    def __init__(self, inplanes: int, planes: int, stride: int = 1):
        super().__init__()
        out = planes * self.expansion
        self.conv1 = nn.Conv2d(inplanes, planes, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.avgpool = nn.AvgPool2d(stride) if stride > 1 else nn.Identity()
        self.conv3 = nn.Conv2d(planes, out, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(out)
        self.downsample = None
        if stride > 1 or inplanes != out:
            self.downsample = nn.Sequential(OrderedDict([
                ("-1", nn.AvgPool2d(stride)),  # identity for stride 1
                ("0", nn.Conv2d(inplanes, out, 1, bias=False)),
                ("1", nn.BatchNorm2d(out)),
            ]))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # In-place ReLU / add on BatchNorm outputs: BatchNorm's backward does not need its
        # output, so this is autograd-safe and saves memory traffic.
        out = F.relu(self.bn1(self.conv1(x)), inplace=True)
        out = F.relu(self.bn2(self.conv2(out)), inplace=True)
        out = self.bn3(self.conv3(self.avgpool(out)))  # (B, 4*planes, H/stride, W/stride)
        out += x if self.downsample is None else self.downsample(x)
        return F.relu(out, inplace=True)


class AttentionPool2d(nn.Module):
    """Attention pooling in place of global average pooling (paper, section 2.4).

    A single multi-head attention layer whose query is the mean of the feature map and
    whose keys/values are the mean token plus every spatial position, all with learned
    positions. Separate q/k/v/c projections under OpenAI's names; the attention itself
    is `scaled_dot_product_attention` with a one-token query.
    """

    def __init__(self, spatial: int, dim: int, heads: int, output_dim: int):
        super().__init__()
        if dim % heads:
            raise ValueError(f"attention-pool width {dim} is not divisible by {heads} heads")
        self.heads = heads
        self.positional_embedding = nn.Parameter(torch.empty(spatial * spatial + 1, dim))
        self.k_proj = nn.Linear(dim, dim)
        self.q_proj = nn.Linear(dim, dim)
        self.v_proj = nn.Linear(dim, dim)
        self.c_proj = nn.Linear(dim, output_dim)
        self.init_weights()

    def init_weights(self) -> None:
        # As the reference: positions ~ N(0, 1/dim); projection weights ~ N(0, dim^-1/2);
        # biases keep nn.Linear's default.
        dim = self.c_proj.in_features
        nn.init.normal_(self.positional_embedding, std=dim ** -0.5)
        for lin in (self.q_proj, self.k_proj, self.v_proj, self.c_proj):
            nn.init.normal_(lin.weight, std=dim ** -0.5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, C, H, W = x.shape
        nh, hs = self.heads, C // self.heads
        x = x.flatten(2).transpose(1, 2)  # (B, HW, C)
        x = torch.cat([x.mean(dim=1, keepdim=True), x], dim=1)  # (B, 1+HW, C)
        x = x + self.positional_embedding.to(x.dtype)
        q = self.q_proj(x[:, :1]).view(B, 1, nh, hs).transpose(1, 2)  # (B, nh, 1, hs)
        k = self.k_proj(x).view(B, -1, nh, hs).transpose(1, 2)  # (B, nh, 1+HW, hs)
        v = self.v_proj(x).view(B, -1, nh, hs).transpose(1, 2)  # (B, nh, 1+HW, hs)
        y = F.scaled_dot_product_attention(q, k, v)  # (B, nh, 1, hs)
        return self.c_proj(y.transpose(1, 2).reshape(B, C))  # (B, output_dim)


class ModifiedResNet(nn.Module):
    """CLIP's ResNet: 3-conv stem + avg pool, 4 stages of anti-aliased bottlenecks, attention pool.

    `width` is the stem width; stage i has `width * 2**i` planes and outputs 4x that, so
    the final feature map has `width * 32` channels at 1/32 of the input resolution.
    """

    def __init__(self, layers: tuple[int, int, int, int], output_dim: int, heads: int,
                 image_size: int = 224, width: int = 64):
        super().__init__()
        if image_size % 32:
            raise ValueError(f"a modified ResNet needs an image size divisible by 32, got {image_size}")
        self.image_size = image_size
        # Stem: three 3x3 convolutions (the first with stride 2) instead of one 7x7, then
        # an average pool instead of a max pool.
        self.conv1 = nn.Conv2d(3, width // 2, 3, stride=2, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(width // 2)
        self.conv2 = nn.Conv2d(width // 2, width // 2, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(width // 2)
        self.conv3 = nn.Conv2d(width // 2, width, 3, padding=1, bias=False)
        self.bn3 = nn.BatchNorm2d(width)
        self.avgpool = nn.AvgPool2d(2)
        self._inplanes = width
        self.layer1 = self._make_layer(width, layers[0])
        self.layer2 = self._make_layer(width * 2, layers[1], stride=2)
        self.layer3 = self._make_layer(width * 4, layers[2], stride=2)
        self.layer4 = self._make_layer(width * 8, layers[3], stride=2)
        self.attnpool = AttentionPool2d(image_size // 32, width * 32, heads, output_dim)
        self.init_weights()

    def _make_layer(self, planes: int, blocks: int, stride: int = 1) -> nn.Sequential:
        layers = [Bottleneck(self._inplanes, planes, stride)]
        self._inplanes = planes * Bottleneck.expansion
        layers += [Bottleneck(self._inplanes, planes) for _ in range(1, blocks)]
        return nn.Sequential(*layers)

    def init_weights(self) -> None:
        # As the reference: the last BatchNorm of every residual branch starts at zero, so
        # each block starts as the identity; convolutions keep PyTorch's default.
        for stage in (self.layer1, self.layer2, self.layer3, self.layer4):
            for block in stage:
                nn.init.zeros_(block.bn3.weight)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x.to(self.conv1.weight.dtype)
        x = F.relu(self.bn1(self.conv1(x)), inplace=True)  # (B, width/2, S/2, S/2)
        x = F.relu(self.bn2(self.conv2(x)), inplace=True)
        x = F.relu(self.bn3(self.conv3(x)), inplace=True)  # (B, width, S/2, S/2)
        x = self.avgpool(x)  # (B, width, S/4, S/4)
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))  # (B, 32*width, S/32, S/32)
        return self.attnpool(x)  # (B, output_dim)


# ---------------------------------------------------------------------------
# CLIP: image tower + text tower + temperature
# ---------------------------------------------------------------------------


class CLIP(nn.Module):
    """Contrastive image-text model (Radford et al. 2021).

    `encode_image(images)` -> (B, D) and `encode_text(ids)` -> (B, D) return the projected
    embeddings (unit norm with `normalize=True`); `forward(images, ids)` returns
    `(logits_per_image, logits_per_text)` = exp(logit_scale) * cosine similarities.

    The text tower's modules sit directly on the model (`token_embedding`,
    `positional_embedding`, `transformer`, `ln_final`, `text_projection`) because that is
    where the released checkpoints keep them.
    """

    def __init__(self, config: CLIPConfig):
        super().__init__()
        self.config = config
        vc, tc = config.vision, config.text
        act_layer = QuickGELU if config.quick_gelu else nn.GELU
        if vc.is_vit:
            if not isinstance(vc.layers, int):
                raise ValueError(f"a ViT tower needs an int number of layers, got {vc.layers!r}")
            self.visual = VisionTransformer(vc.image_size, vc.patch_size, vc.width, vc.layers, vc.heads,
                                            config.embed_dim, vc.mlp_ratio, act_layer)
        else:
            if isinstance(vc.layers, int) or len(vc.layers) != 4:
                raise ValueError(f"a ResNet tower needs 4 stage depths, got {vc.layers!r}")
            self.visual = ModifiedResNet(tuple(vc.layers), config.embed_dim, vc.heads, vc.image_size, vc.width)

        # Text tower: a causal transformer read out at the end-of-text token.
        self.token_embedding = nn.Embedding(tc.vocab_size, tc.width)
        self.positional_embedding = nn.Parameter(torch.empty(tc.context_length, tc.width))
        self.transformer = Transformer(tc.width, tc.layers, tc.heads, 4.0, act_layer)
        self.ln_final = LayerNorm(tc.width)
        self.text_projection = nn.Parameter(torch.empty(tc.width, config.embed_dim))

        # Temperature of the contrastive softmax, learned in log space; the paper starts it
        # at 0.07 (scale 1/0.07) and the released models end at the clip value 100.
        self.logit_scale = nn.Parameter(torch.tensor(math.log(1 / 0.07)))
        self.init_text_weights()

    def init_text_weights(self) -> None:
        """The reference's text-tower initialisation (the image towers initialise themselves).

        Residual-branch outputs are scaled down by sqrt(2 * layers) (two branches per block),
        as GPT-2 does, so the residual stream's variance stays put with depth.
        """
        width, layers = self.transformer.width, self.transformer.layers
        attn_std = width ** -0.5
        proj_std = width ** -0.5 * (2 * layers) ** -0.5
        fc_std = (2 * width) ** -0.5
        nn.init.normal_(self.token_embedding.weight, std=0.02)
        nn.init.normal_(self.positional_embedding, std=0.01)
        for block in self.transformer.resblocks:
            nn.init.normal_(block.attn.in_proj_weight, std=attn_std)
            nn.init.normal_(block.attn.out_proj.weight, std=proj_std)
            nn.init.normal_(block.mlp.c_fc.weight, std=fc_std)
            nn.init.normal_(block.mlp.c_proj.weight, std=proj_std)
        nn.init.normal_(self.text_projection, std=width ** -0.5)

    # -- properties ----------------------------------------------------------

    @property
    def image_size(self) -> int:
        return self.config.vision.image_size

    @property
    def context_length(self) -> int:
        return self.config.text.context_length

    @property
    def dtype(self) -> torch.dtype:
        return self.text_projection.dtype

    # -- encoders ------------------------------------------------------------

    def encode_image(self, images: torch.Tensor, normalize: bool = False) -> torch.Tensor:
        """Preprocessed images (B, 3, S, S), float -> embeddings (B, D) in the model's dtype."""
        if not isinstance(images, torch.Tensor):
            raise TypeError(f"images must be a tensor (B, 3, {self.image_size}, {self.image_size}); "
                            f"got {type(images).__name__}: preprocess them first (clipkit.image_transform)")
        if not torch.is_floating_point(images):
            raise TypeError(f"images must be a floating-point tensor (normalized pixels), got {images.dtype}; "
                            "preprocess them first (clipkit.image_transform)")
        S = self.image_size
        if images.ndim != 4 or tuple(images.shape[1:]) != (3, S, S):
            raise ValueError(f"expected images of shape [B, 3, {S}, {S}], got {list(images.shape)}")
        features = self.visual(images)
        return _l2_normalize(features) if normalize else features

    def encode_text(self, ids: torch.Tensor, normalize: bool = False) -> torch.Tensor:
        """Token ids (B, T), T <= context_length -> embeddings (B, D) in the model's dtype.

        The tower is causal and reads out at the end-of-text token (the largest id in each
        row), so ids cut after the batch's longest prompt (T < 77) give the same embedding
        as the full 77-token encoding, in a fraction of the time.
        """
        if not isinstance(ids, torch.Tensor):
            raise TypeError(f"ids must be a tensor of token ids, got {type(ids).__name__}; tokenize first")
        if torch.is_floating_point(ids) or torch.is_complex(ids) or ids.dtype == torch.bool:
            raise TypeError(f"ids must be an integer tensor of token ids, got {ids.dtype}")
        if ids.ndim != 2:
            raise ValueError(f"expected ids of shape [B, T], got {list(ids.shape)} (use ids[None] for one prompt)")
        ctx = self.context_length
        if ids.shape[1] > ctx and ids.device.type != "meta":
            ids = _cut_padding(ids, ctx)
        B, T = ids.shape
        if not 0 < T <= ctx:
            raise ValueError(f"ids have {T} tokens per row; the text tower takes 1 to {ctx}: tokenize with "
                             f"context_length={ctx} (and truncate=True for long prompts)")
        if ids.device.type != "meta" and ids.numel():
            lo, hi = int(ids.min()), int(ids.max())
            if lo < 0 or hi >= self.config.text.vocab_size:
                raise ValueError(f"token ids must lie in [0, {self.config.text.vocab_size}), got [{lo}, {hi}]")
        x = self.token_embedding(ids) + self.positional_embedding[:T].to(self.dtype)  # (B, T, width)
        x = self.transformer(x, is_causal=True)  # (B, T, width)
        x = x[torch.arange(B, device=x.device), ids.argmax(dim=-1)]  # (B, width): end-of-text token
        features = self.ln_final(x) @ self.text_projection  # (B, D)
        return _l2_normalize(features) if normalize else features

    # -- logits --------------------------------------------------------------

    def logits(self, image_features: torch.Tensor, text_features: torch.Tensor
               ) -> tuple[torch.Tensor, torch.Tensor]:
        """(logits_per_image (N_img, N_txt), logits_per_text (N_txt, N_img)) from NORMALIZED features.

        The scale is exp(logit_scale), clipped at 100 as in training (the paper's clip).
        """
        scale = self.logit_scale.exp().clamp(max=100.0).to(image_features.dtype)
        logits_per_image = scale * image_features @ text_features.t()  # (N_img, N_txt)
        return logits_per_image, logits_per_image.t()

    def forward(self, images: torch.Tensor, ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.logits(self.encode_image(images, normalize=True), self.encode_text(ids, normalize=True))


def _cut_padding(ids: torch.Tensor, ctx: int) -> torch.Tensor:
    """ids (B, T > ctx) -> (B, ctx) when every position past `ctx` is padding (id 0).

    Exact for the causal tower: it reads out at end-of-text, which then lies inside the
    first `ctx` positions, and no earlier position attends to later ones. A row with real
    tokens past the context keeps the clear error.
    """
    tail = ids[:, ctx:]  # (B, T - ctx)
    if bool((tail != 0).any()):
        row = int((tail != 0).any(dim=1).nonzero()[0])
        used = int((ids[row] != 0).nonzero()[-1]) + 1
        raise ValueError(f"prompt {row} has {used} tokens, more than the text tower's context of {ctx}: "
                         f"tokenize with context_length={ctx}, truncate=True to cut it (keeping end-of-text)")
    return ids[:, :ctx]


def _l2_normalize(x: torch.Tensor) -> torch.Tensor:
    """x / ||x|| along the last dim, computed in fp32 (accurate for half/bfloat16 features)."""
    return F.normalize(x.float(), dim=-1).to(x.dtype)


# ---------------------------------------------------------------------------
# Factory
# ---------------------------------------------------------------------------


def create_model(name_or_config: str | CLIPConfig, **overrides) -> CLIP:
    """A randomly initialised CLIP from a registered name ("ViT-B/32", "clipkit-synth", ...) or a config.

    `overrides` replace top-level `CLIPConfig` fields (e.g. `quick_gelu=False`); overrides
    that are None are ignored. Weights: `clipkit.load` / `clipkit.checkpoints`.
    """
    if isinstance(name_or_config, CLIPConfig):
        config = name_or_config
    elif isinstance(name_or_config, str):
        config = get_config(name_or_config)
    else:
        raise TypeError(f"expected a model name or a CLIPConfig, got {type(name_or_config).__name__}")
    fields = set(CLIPConfig.__dataclass_fields__)
    unknown = sorted(set(overrides) - fields)
    if unknown:
        raise TypeError(f"unknown CLIPConfig field(s) {unknown}; valid: {sorted(fields)}")
    return CLIP(config.replace(**overrides))
