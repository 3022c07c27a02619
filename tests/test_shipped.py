"""The shipped default CLIP (clipkit/weights/clipkit-synth.safetensors) works offline."""
from __future__ import annotations

import numpy as np
import pytest
import torch

import clipkit
from clipkit.checkpoints import _PACKAGE_DIR, _SHIPPED
from clipkit.data.synth import SynthWorld
from clipkit.models import get_config


def test_shipped_file_is_in_the_package_and_small():
    path = _PACKAGE_DIR / _SHIPPED["clipkit-synth"]
    assert path.is_file(), f"the shipped weights are missing: {path}"
    assert path.stat().st_size <= 30 * 2**20


@pytest.fixture(scope="module")
def shipped():
    return clipkit.load("clipkit-synth")


def test_load_by_name_needs_no_network(shipped, monkeypatch, tmp_path):
    monkeypatch.setenv("CLIPKIT_CACHE", str(tmp_path))  # an empty cache: nothing to fall back on
    model, preprocess = clipkit.load("clipkit-synth", download=False)
    assert model.config == get_config("clipkit-synth")
    assert not model.training
    x = preprocess(SynthWorld(seed=3, split="val").sample(0).image)
    assert x.shape == (3, 64, 64)
    emb = model.encode_image(x[None], normalize=True)
    assert torch.allclose(emb.norm(dim=-1), torch.ones(1), atol=1e-5)
    assert list(model.state_dict()) == list(shipped[0].state_dict())


def _scene(colour, shape, index):
    world = SynthWorld(seed=11, split="val")
    return world.render("shape", world.rng(index, stream=9), pair=(colour, shape)).image


def test_default_model_tells_a_red_circle_from_a_blue_square(shipped):
    images = [_scene("red", "circle", i) for i in range(4)] + [_scene("blue", "square", i) for i in range(4)]
    clf = clipkit.zero_shot(["red circle", "blue square"], cache=False)  # no model named: the default
    assert clf.model_.config == get_config("clipkit-synth")
    pred = clf.predict(images)
    assert list(pred) == ["red circle"] * 4 + ["blue square"] * 4
    proba = clf.predict_proba(images)
    assert np.allclose(proba.sum(1), 1.0, atol=1e-5)


def test_results_name_the_default_model():
    from clipkit.evaluation.bench import _model_name

    assert _model_name(None, object()) == "clipkit-synth (default)"
    assert _model_name("ViT-B/32", object()) == "ViT-B/32"
