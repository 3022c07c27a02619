"""Shared fixtures, and the tiny architectures every test builds (registered here, not in
the public registry: they have no weights and no use outside the tests)."""
from __future__ import annotations

import pytest
import torch

from clipkit.models.config import CLIPConfig, TextConfig, VisionConfig, register_config

# Every code path of both tower families, a few thousand parameters.
TINY_CONFIGS = {
    "tiny-vit": CLIPConfig(
        embed_dim=32,
        vision=VisionConfig(image_size=32, width=64, layers=2, heads=2, patch_size=8),
        text=TextConfig(context_length=77, width=64, heads=2, layers=2),
    ),
    "tiny-rn": CLIPConfig(
        embed_dim=32,
        vision=VisionConfig(image_size=64, width=8, layers=(1, 1, 1, 1), heads=4, patch_size=None),
        text=TextConfig(context_length=77, width=64, heads=2, layers=2),
    ),
}
for _name, _config in TINY_CONFIGS.items():
    register_config(_name, _config)


@pytest.fixture
def one_thread():
    """Tiny models gain nothing from threads, and on a shared 2-core machine two OpenMP
    threads per process made training tests 3-10x slower."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(autouse=True)
def _private_cache(tmp_path, monkeypatch):
    """Every test gets its own empty cache folder (never the user's ~/.cache/clipkit), with
    caching on unless the test turns it off."""
    monkeypatch.setenv("CLIPKIT_CACHE", str(tmp_path / "cache"))
    monkeypatch.delenv("CLIPKIT_NO_CACHE", raising=False)


@pytest.fixture(scope="session")
def checkpoint(tmp_path_factory) -> str:
    """A saved tiny-vit (safetensors, config in the metadata): loadable by path from the CLI
    and from subprocesses, which do not see the tests' registry."""
    from clipkit.checkpoints import save
    from clipkit.models import create_model

    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("ckpt") / "tiny.safetensors"
    save(create_model("tiny-vit"), path)
    return str(path)
