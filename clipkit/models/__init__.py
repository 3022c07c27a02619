"""Model architectures: shared layers, the towers, the CLIP model and the config registry."""
from clipkit.models.clip import (  # noqa: F401
    CLIP, AttentionPool2d, Bottleneck, ModifiedResNet, VisionTransformer, create_model,
)
from clipkit.models.fast import fast_inference  # noqa: F401
from clipkit.models.config import (  # noqa: F401
    CLIPConfig, TextConfig, VisionConfig, available_models, get_config, register_config,
)

__all__ = [
    "CLIP", "create_model", "fast_inference", "available_models", "get_config", "register_config",
    "CLIPConfig", "VisionConfig", "TextConfig",
    "VisionTransformer", "ModifiedResNet", "Bottleneck", "AttentionPool2d",
]
