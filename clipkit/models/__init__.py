"""Model architectures: shared layers, the towers, the CLIP model and the config registry."""
from clipkit.models.config import (  # noqa: F401
    CLIPConfig, TextConfig, VisionConfig, available_models, get_config, register_config,
)
