"""The opt-in fast path (bf16 weights, channels-last ResNets) equals fp32 to cosine 0.999."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

import clipkit
from clipkit.data.synth import SynthWorld
from clipkit.models import create_model, fast_inference


def _cosines(a, b):
    return F.cosine_similarity(a.float(), b.float(), dim=-1)


@pytest.mark.parametrize("name", ["tiny-vit", "tiny-rn"])
def test_fast_path_matches_fp32_on_random_weights(name):
    torch.manual_seed(0)
    model = create_model(name).eval()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    fast = fast_inference(model)
    size = model.config.vision.image_size
    x = torch.randn(6, 3, size, size)
    ids = clipkit.tokenize(["a red circle", "two blue squares", "the number 7"])
    with torch.inference_mode():
        ref_img, got_img = model.encode_image(x, normalize=True), fast.encode_image(x, normalize=True)
        ref_txt, got_txt = model.encode_text(ids, normalize=True), fast.encode_text(ids, normalize=True)
    assert got_img.dtype == torch.bfloat16
    assert _cosines(ref_img, got_img).min() >= 0.999
    assert _cosines(ref_txt, got_txt).min() >= 0.999
    # the original model is untouched: still fp32, same values
    assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items())
    assert fast.fast_path["channels_last"] == (name == "tiny-rn")


def test_channels_last_alone_is_exact_for_resnets():
    torch.manual_seed(1)
    model = create_model("tiny-rn").eval()
    fast = fast_inference(model, torch.float32, channels_last=True)
    x = torch.randn(3, 3, 64, 64)
    with torch.inference_mode():
        torch.testing.assert_close(fast.encode_image(x), model.encode_image(x), atol=1e-5, rtol=1e-5)


def test_fast_path_matches_fp32_on_the_shipped_trained_weights():
    model, preprocess = clipkit.load("clipkit-synth")
    fast = fast_inference(model)
    world = SynthWorld(seed=5, split="val")
    x = torch.stack([preprocess(world.sample(i).image) for i in range(32)])
    with torch.inference_mode():
        cos = _cosines(model.encode_image(x, normalize=True), fast.encode_image(x, normalize=True))
    assert cos.min() >= 0.999


def test_fast_path_rejects_what_it_cannot_convert():
    with pytest.raises(TypeError, match="CLIP model"):
        fast_inference(torch.nn.Linear(2, 2))
    with pytest.raises(ValueError, match="dtype"):
        fast_inference(create_model("tiny-vit"), torch.int8)
