"""Architectures as data: small typed configs and a registry of named models.

The nine OpenAI architectures (shapes from the CLIP paper / released checkpoints) and
the project's own shipped model. The registry also feeds the CLI's `--model` choices;
the tests register their tiny configs themselves (tests/conftest.py).
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

# CLIP's image normalisation (from the released preprocessing).
CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)


@dataclass(frozen=True)
class VisionConfig:
    """Image tower. `patch_size` set -> ViT; `patch_size=None` -> modified ResNet.

    For a ViT, `layers` is the number of transformer blocks and `width` the model
    width; for a ResNet, `layers` is the 4 stage depths and `width` the stem width
    (64 for RN50, the stages widen it 4x per stage up to width*32 channels).
    """

    image_size: int = 224
    width: int = 768
    layers: int | tuple[int, int, int, int] = 12
    heads: int = 12
    patch_size: int | None = 32
    mlp_ratio: float = 4.0

    @property
    def is_vit(self) -> bool:
        return self.patch_size is not None


@dataclass(frozen=True)
class TextConfig:
    """Text tower: a causal transformer pooled at the end-of-text token."""

    context_length: int = 77
    vocab_size: int = 49408
    width: int = 512
    heads: int = 8
    layers: int = 12


@dataclass(frozen=True)
class CLIPConfig:
    embed_dim: int = 512
    vision: VisionConfig = field(default_factory=VisionConfig)
    text: TextConfig = field(default_factory=TextConfig)
    quick_gelu: bool = True  # OpenAI's models were trained with QuickGELU
    image_mean: tuple[float, float, float] = CLIP_MEAN
    image_std: tuple[float, float, float] = CLIP_STD

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "CLIPConfig":
        d = dict(d)
        vision = dict(d.pop("vision"))
        if isinstance(vision.get("layers"), list):
            vision["layers"] = tuple(vision["layers"])
        text = d.pop("text")
        for key in ("image_mean", "image_std"):
            if key in d:
                d[key] = tuple(d[key])
        return cls(vision=VisionConfig(**vision), text=TextConfig(**text), **d)

    def replace(self, **overrides) -> "CLIPConfig":
        """A copy with top-level fields replaced; `None` values are ignored."""
        return dataclasses.replace(self, **{k: v for k, v in overrides.items() if v is not None})


def _vit(embed: int, image: int, width: int, layers: int, patch: int, text_width: int) -> CLIPConfig:
    return CLIPConfig(
        embed_dim=embed,
        vision=VisionConfig(image_size=image, width=width, layers=layers, heads=width // 64, patch_size=patch),
        text=TextConfig(width=text_width, heads=text_width // 64, layers=12),
    )


def _rn(embed: int, image: int, layers: tuple[int, int, int, int], width: int, text_width: int) -> CLIPConfig:
    # Attention-pool heads = width * 32 / 64 (the pooled feature has width * 32 channels).
    return CLIPConfig(
        embed_dim=embed,
        vision=VisionConfig(image_size=image, width=width, layers=layers, heads=width * 32 // 64, patch_size=None),
        text=TextConfig(width=text_width, heads=text_width // 64, layers=12),
    )


_REGISTRY: dict[str, CLIPConfig] = {
    # The nine OpenAI architectures.
    "RN50": _rn(1024, 224, (3, 4, 6, 3), 64, 512),
    "RN101": _rn(512, 224, (3, 4, 23, 3), 64, 512),
    "RN50x4": _rn(640, 288, (4, 6, 10, 6), 80, 640),
    "RN50x16": _rn(768, 384, (6, 8, 18, 8), 96, 768),
    "RN50x64": _rn(1024, 448, (3, 15, 36, 10), 128, 1024),
    "ViT-B/32": _vit(512, 224, 768, 12, 32, 512),
    "ViT-B/16": _vit(512, 224, 768, 12, 16, 512),
    "ViT-L/14": _vit(768, 224, 1024, 24, 14, 768),
    "ViT-L/14@336px": _vit(768, 336, 1024, 24, 14, 768),
    # The project's shipped default model (clipkit/weights/clipkit-synth.safetensors), trained
    # on the synthetic world only: 64 px images, 8 px patches, a short text context.
    "clipkit-synth": CLIPConfig(
        embed_dim=128,
        vision=VisionConfig(image_size=64, width=192, layers=4, heads=3, patch_size=8),
        text=TextConfig(context_length=32, width=192, heads=3, layers=4),
    ),
}

OPENAI_MODELS = ("RN50", "RN101", "RN50x4", "RN50x16", "RN50x64",
                 "ViT-B/32", "ViT-B/16", "ViT-L/14", "ViT-L/14@336px")


def register_config(name: str, config: CLIPConfig) -> None:
    """Add a named architecture (used for the project's shipped models)."""
    if name in _REGISTRY and _REGISTRY[name] != config:
        raise ValueError(f"a different config is already registered as {name!r}")
    _REGISTRY[name] = config


def available_models() -> list[str]:
    """Names accepted by `create_model` and `clipkit.load`."""
    return list(_REGISTRY)


def get_config(name: str) -> CLIPConfig:
    try:
        return _REGISTRY[name]
    except KeyError:
        raise ValueError(
            f"unknown model {name!r}; available: {', '.join(available_models())}"
        ) from None
