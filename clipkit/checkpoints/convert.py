"""Pure `state_dict -> state_dict` converters to OpenAI key names (open_clip wrappers,
Hugging Face CLIP) and the architecture inferred from a state dict's shapes."""
from __future__ import annotations

import math
import re
from typing import Any, Mapping

import torch

from clipkit.checkpoints.errors import CheckpointError
from clipkit.models.config import CLIPConfig, TextConfig, VisionConfig, available_models, get_config

StateDict = dict[str, torch.Tensor]


# ---------------------------------------------------------------------------
# Converters: state dict -> state dict, OpenAI key names
# ---------------------------------------------------------------------------

# Entries in released or reference checkpoints that are not weights of the model.
_NON_WEIGHT_KEYS = ("input_resolution", "context_length", "vocab_size")
_NON_WEIGHT_SUFFIXES = ("attn_mask", "position_ids")


def unwrap_state_dict(obj: Any) -> StateDict:
    """The state dict inside a training checkpoint, without `module.` prefixes.

    open_clip saves `{"epoch", "name", "state_dict", "optimizer", ...}`; other trainers
    use `"model"`. Non-tensor entries are dropped.
    """
    if isinstance(obj, Mapping):
        for key in ("state_dict", "model", "model_state_dict"):
            inner = obj.get(key)
            if isinstance(inner, Mapping) and any(isinstance(v, torch.Tensor) for v in inner.values()):
                obj = inner
                break
    if not isinstance(obj, Mapping):
        raise CheckpointError(f"expected a state dict (a mapping of names to tensors), got {type(obj).__name__}")
    out: StateDict = {}
    for key, value in obj.items():
        if isinstance(key, str) and isinstance(value, torch.Tensor):
            out[key.removeprefix("module.") if key.startswith("module.") else key] = value
    if not out:
        raise CheckpointError("the checkpoint holds no tensors")
    return out


def clean_state_dict(state_dict: Mapping[str, torch.Tensor]) -> StateDict:
    """Drop entries that are not weights: OpenAI's three integer attributes, attention
    masks (rebuilt by the model) and position-id buffers."""
    return {
        k: v for k, v in state_dict.items()
        if k not in _NON_WEIGHT_KEYS and not k.endswith(_NON_WEIGHT_SUFFIXES)
    }


def _expect_shape(sd: Mapping[str, torch.Tensor], key: str, shape: tuple[int, ...], source: str = "") -> torch.Tensor:
    if key not in sd:
        raise CheckpointError(f"{source}missing key {key!r}")
    t = sd[key]
    if tuple(t.shape) != tuple(shape):
        raise CheckpointError(f"{source}{key!r} has shape {tuple(t.shape)}, expected {tuple(shape)}")
    return t


def _hf_value(cfg: Mapping, key: str, default):
    value = cfg.get(key)
    return default if value is None else value


def hf_config_to_clip(hf_config: Mapping[str, Any]) -> CLIPConfig:
    """A CLIPConfig from a Hugging Face CLIP `config.json` (defaults as HF's)."""
    model_type = hf_config.get("model_type", "clip")
    if model_type != "clip":
        raise CheckpointError(f"Hugging Face model_type {model_type!r} is not a CLIP model (expected 'clip')")
    v = hf_config.get("vision_config") or {}
    t = hf_config.get("text_config") or {}
    acts = {_hf_value(v, "hidden_act", "quick_gelu"), _hf_value(t, "hidden_act", "quick_gelu")}
    if len(acts) != 1 or not acts <= {"quick_gelu", "gelu"}:
        raise CheckpointError(f"unsupported Hugging Face hidden_act {sorted(acts)}; clipkit supports quick_gelu or gelu in both towers")
    for tower, cfg in (("vision", v), ("text", t)):
        eps = _hf_value(cfg, "layer_norm_eps", 1e-5)
        if abs(eps - 1e-5) > 1e-12:
            raise CheckpointError(f"Hugging Face {tower}_config.layer_norm_eps = {eps}; clipkit's layers use 1e-5")
    v_width = _hf_value(v, "hidden_size", 768)
    t_width = _hf_value(t, "hidden_size", 512)
    t_inter = _hf_value(t, "intermediate_size", 2048)
    if t_inter != 4 * t_width:
        raise CheckpointError(f"text tower intermediate_size {t_inter} is not 4 x hidden_size {t_width}, which clipkit's text tower assumes")
    return CLIPConfig(
        embed_dim=_hf_value(hf_config, "projection_dim", 512),
        vision=VisionConfig(
            image_size=_hf_value(v, "image_size", 224),
            width=v_width,
            layers=_hf_value(v, "num_hidden_layers", 12),
            heads=_hf_value(v, "num_attention_heads", 12),
            patch_size=_hf_value(v, "patch_size", 32),
            mlp_ratio=_hf_value(v, "intermediate_size", 3072) / v_width,
        ),
        text=TextConfig(
            context_length=_hf_value(t, "max_position_embeddings", 77),
            vocab_size=_hf_value(t, "vocab_size", 49408),
            width=t_width,
            heads=_hf_value(t, "num_attention_heads", 8),
            layers=_hf_value(t, "num_hidden_layers", 12),
        ),
        quick_gelu=acts == {"quick_gelu"},
    )


def _hf_block(src: Mapping[str, torch.Tensor], hf: str, oa: str, width: int, used: set[str]) -> StateDict:
    """One HF encoder layer -> one OpenAI residual block (q, k, v fused in that order)."""
    def take(key: str, shape: tuple[int, ...]) -> torch.Tensor:
        used.add(hf + key)
        return _expect_shape(src, hf + key, shape, "Hugging Face checkpoint: ")

    out: StateDict = {
        oa + "attn.in_proj_weight": torch.cat([take(f"self_attn.{p}_proj.weight", (width, width)) for p in "qkv"]),
        oa + "attn.in_proj_bias": torch.cat([take(f"self_attn.{p}_proj.bias", (width,)) for p in "qkv"]),
        oa + "attn.out_proj.weight": take("self_attn.out_proj.weight", (width, width)),
        oa + "attn.out_proj.bias": take("self_attn.out_proj.bias", (width,)),
        oa + "ln_1.weight": take("layer_norm1.weight", (width,)),
        oa + "ln_1.bias": take("layer_norm1.bias", (width,)),
        oa + "ln_2.weight": take("layer_norm2.weight", (width,)),
        oa + "ln_2.bias": take("layer_norm2.bias", (width,)),
    }
    hidden = src.get(hf + "mlp.fc1.weight")
    if hidden is None:
        raise CheckpointError(f"Hugging Face checkpoint: missing key {hf + 'mlp.fc1.weight'!r}")
    hidden = hidden.shape[0]
    out[oa + "mlp.c_fc.weight"] = take("mlp.fc1.weight", (hidden, width))
    out[oa + "mlp.c_fc.bias"] = take("mlp.fc1.bias", (hidden,))
    out[oa + "mlp.c_proj.weight"] = take("mlp.fc2.weight", (width, hidden))
    out[oa + "mlp.c_proj.bias"] = take("mlp.fc2.bias", (width,))
    return out


def _count_layers(keys, pattern: str) -> int:
    rx = re.compile(pattern)
    return len({m.group(1) for k in keys if (m := rx.match(k))})


def hf_to_openai(state_dict: Mapping[str, torch.Tensor], hf_config: Mapping[str, Any] | None = None) -> StateDict:
    """Hugging Face `CLIPModel` keys -> OpenAI keys (ViT image towers only).

    HF splits the fused attention input projection into q/k/v Linears (concatenated back
    here, q-k-v order), renames norms and MLPs, and stores the two projections as Linear
    weights, which are transposed back into OpenAI's `x @ proj` matrices. With
    `hf_config`, every shape is checked against it.
    """
    src = {k: v for k, v in state_dict.items() if not k.endswith("position_ids")}
    if "vision_model.embeddings.patch_embedding.weight" not in src:
        if any(k.startswith("vision_model.") for k in src):
            raise CheckpointError("Hugging Face checkpoint without a ViT patch embedding: only ViT image towers exist in Hugging Face CLIP")
        raise CheckpointError("not a Hugging Face CLIPModel state dict (no vision_model.* keys)")
    cfg = hf_config_to_clip(hf_config) if hf_config is not None else None
    used: set[str] = set()

    def take(key: str, shape: tuple[int, ...] | None = None) -> torch.Tensor:
        used.add(key)
        if key not in src:
            raise CheckpointError(f"Hugging Face checkpoint: missing key {key!r}")
        return _expect_shape(src, key, shape, "Hugging Face checkpoint: ") if shape is not None else src[key]

    conv = take("vision_model.embeddings.patch_embedding.weight")
    v_width, patch = conv.shape[0], conv.shape[-1]
    t_width = take("text_model.final_layer_norm.weight").shape[0]
    if cfg is not None:
        vc, tc = cfg.vision, cfg.text
        _expect_shape(src, "vision_model.embeddings.patch_embedding.weight", (vc.width, 3, vc.patch_size, vc.patch_size))
        _expect_shape(src, "text_model.final_layer_norm.weight", (tc.width,))
    v_layers = _count_layers(src, r"vision_model\.encoder\.layers\.(\d+)\.")
    t_layers = _count_layers(src, r"text_model\.encoder\.layers\.(\d+)\.")
    if cfg is not None and (v_layers, t_layers) != (cfg.vision.layers, cfg.text.layers):
        raise CheckpointError(
            f"Hugging Face checkpoint has {v_layers} vision / {t_layers} text layers; "
            f"config.json says {cfg.vision.layers} / {cfg.text.layers}"
        )
    pos_rows = take("vision_model.embeddings.position_embedding.weight").shape[0]
    if cfg is not None:
        grid = cfg.vision.image_size // cfg.vision.patch_size
        _expect_shape(src, "vision_model.embeddings.position_embedding.weight", (grid * grid + 1, v_width))
    embed = take("visual_projection.weight").shape[0]
    if cfg is not None:
        embed = cfg.embed_dim
    vocab = take("text_model.embeddings.token_embedding.weight").shape[0]
    context = take("text_model.embeddings.position_embedding.weight").shape[0]
    if cfg is not None:
        vocab, context = cfg.text.vocab_size, cfg.text.context_length

    out: StateDict = {
        "visual.conv1.weight": conv,
        "visual.class_embedding": take("vision_model.embeddings.class_embedding", (v_width,)),
        "visual.positional_embedding": take("vision_model.embeddings.position_embedding.weight", (pos_rows, v_width)),
        "visual.ln_pre.weight": take("vision_model.pre_layrnorm.weight", (v_width,)),
        "visual.ln_pre.bias": take("vision_model.pre_layrnorm.bias", (v_width,)),
        "visual.ln_post.weight": take("vision_model.post_layernorm.weight", (v_width,)),
        "visual.ln_post.bias": take("vision_model.post_layernorm.bias", (v_width,)),
        # nn.Linear stores (out, in); OpenAI multiplies x @ proj with proj (in, out).
        "visual.proj": take("visual_projection.weight", (embed, v_width)).t().contiguous(),
        "token_embedding.weight": take("text_model.embeddings.token_embedding.weight", (vocab, t_width)),
        "positional_embedding": take("text_model.embeddings.position_embedding.weight", (context, t_width)),
        "ln_final.weight": take("text_model.final_layer_norm.weight", (t_width,)),
        "ln_final.bias": take("text_model.final_layer_norm.bias", (t_width,)),
        "text_projection": take("text_projection.weight", (embed, t_width)).t().contiguous(),
    }
    if "logit_scale" in src:
        out["logit_scale"] = take("logit_scale")
    for i in range(v_layers):
        out.update(_hf_block(src, f"vision_model.encoder.layers.{i}.", f"visual.transformer.resblocks.{i}.", v_width, used))
    for i in range(t_layers):
        out.update(_hf_block(src, f"text_model.encoder.layers.{i}.", f"transformer.resblocks.{i}.", t_width, used))
    leftover = sorted(set(src) - used)
    if leftover:
        raise CheckpointError(
            f"Hugging Face checkpoint has {len(leftover)} keys with no OpenAI equivalent: {leftover[:10]}"
        )
    return out


def _is_hf_state_dict(sd: Mapping[str, Any]) -> bool:
    return any(k.startswith(("vision_model.", "text_model.")) for k in sd)


# ---------------------------------------------------------------------------
# Architecture inference
# ---------------------------------------------------------------------------


def _isqrt_exact(n: int, what: str) -> int:
    r = math.isqrt(n)
    if r * r != n:
        raise CheckpointError(f"{what} has {n} positions, not a square grid")
    return r


def infer_config(state_dict: Mapping[str, torch.Tensor]) -> tuple[CLIPConfig, str | None]:
    """The architecture from the shapes of an OpenAI-keyed state dict, and the registry
    name whose config equals it (None for a custom architecture).

    Head counts are not visible in the shapes: like the reference loader we take
    width / 64 (ViT, text) and width * 32 / 64 (ResNet attention pool). Pass `arch=`
    to `load` for models that differ.
    """
    sd = state_dict
    for key in ("text_projection", "positional_embedding", "token_embedding.weight", "ln_final.weight"):
        if key not in sd:
            raise CheckpointError(f"not a CLIP state dict: missing {key!r} (keys start: {sorted(sd)[:5]})")
    embed_dim = sd["text_projection"].shape[1]
    text_width = sd["ln_final.weight"].shape[0]
    text_layers = _count_layers(sd, r"transformer\.resblocks\.(\d+)\.attn\.in_proj_weight$")
    text_hidden = sd.get("transformer.resblocks.0.mlp.c_fc.weight")
    if text_hidden is not None and text_hidden.shape[0] != 4 * text_width:
        raise CheckpointError(f"text MLP width {text_hidden.shape[0]} is not 4 x {text_width}; unsupported")
    text = TextConfig(
        context_length=sd["positional_embedding"].shape[0],
        vocab_size=sd["token_embedding.weight"].shape[0],
        width=text_width,
        heads=max(text_width // 64, 1),
        layers=text_layers,
    )
    if "visual.proj" in sd:
        for key in ("visual.conv1.weight", "visual.positional_embedding"):
            if key not in sd:
                raise CheckpointError(f"ViT state dict (it has 'visual.proj') without {key!r}")
        conv = sd["visual.conv1.weight"]  # (width, 3, patch, patch)
        width, patch = conv.shape[0], conv.shape[-1]
        grid = _isqrt_exact(sd["visual.positional_embedding"].shape[0] - 1, "visual.positional_embedding")
        hidden = sd.get("visual.transformer.resblocks.0.mlp.c_fc.weight")
        vision = VisionConfig(
            image_size=patch * grid,
            width=width,
            layers=_count_layers(sd, r"visual\.transformer\.resblocks\.(\d+)\.attn\.in_proj_weight$"),
            heads=max(width // 64, 1),
            patch_size=patch,
            mlp_ratio=hidden.shape[0] / width if hidden is not None else 4.0,
        )
        vis_embed = sd["visual.proj"].shape[1]
    else:
        if "visual.layer1.0.conv1.weight" not in sd or "visual.attnpool.positional_embedding" not in sd:
            raise CheckpointError(
                "not a CLIP state dict: neither a ViT ('visual.proj') nor a ResNet "
                "('visual.layer1.0.conv1.weight', 'visual.attnpool.positional_embedding') image tower"
            )
        layers = tuple(
            len({k.split(".")[2] for k in sd if k.startswith(f"visual.layer{b}.")}) for b in (1, 2, 3, 4)
        )
        width = sd["visual.layer1.0.conv1.weight"].shape[0]
        grid = _isqrt_exact(sd["visual.attnpool.positional_embedding"].shape[0] - 1, "visual.attnpool.positional_embedding")
        vision = VisionConfig(
            image_size=grid * 32,  # the stem and the three strided stages downsample 32x
            width=width,
            layers=layers,
            heads=width * 32 // 64,
            patch_size=None,
        )
        c_proj = sd.get("visual.attnpool.c_proj.weight")
        vis_embed = c_proj.shape[0] if c_proj is not None else embed_dim
    if vis_embed != embed_dim:
        raise CheckpointError(f"image embedding width {vis_embed} differs from text embedding width {embed_dim}")
    config = CLIPConfig(embed_dim=embed_dim, vision=vision, text=text)
    name = next((n for n in available_models() if get_config(n) == config), None)
    return config, name


def _describe(config: CLIPConfig, name: str | None) -> str:
    if name:
        return name
    v = config.vision
    kind = f"ViT patch {v.patch_size}" if v.is_vit else f"ResNet layers {tuple(v.layers)}"
    return (f"custom CLIP ({kind}, width {v.width}, image {v.image_size}, embed {config.embed_dim}, "
            f"text width {config.text.width} x {config.text.layers} layers)")


