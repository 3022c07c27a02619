"""Parity with the reference implementations, on random weights of real shapes.

- Hugging Face `transformers.CLIPModel` (live, in CI): ViT-B/32 in its real shape and two
  small ViT shapes (QuickGELU and exact GELU). HF's weights are converted to OpenAI keys by
  `clipkit.checkpoints.hf_to_openai`, loaded into clipkit's CLIP with strict=True, and
  image/text embeddings and logits are compared in fp32.
- open_clip 3.3.0 (committed fixtures, tests/make_resnet_fixture.py): a small modified
  ResNet and a small ViT, every parameter and BatchNorm statistic random.

If every layer agrees to float32 rounding on random weights, it agrees on the released
ones. Max abs diffs measured when this was written are in the asserts' comments.
"""
from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from safetensors import safe_open
from safetensors.torch import load_file

from clipkit.checkpoints import hf_config_to_clip, hf_to_openai
from clipkit.models import CLIP, CLIPConfig, TextConfig, VisionConfig

SOT, EOT = 49406, 49407
FIXTURES = Path(__file__).parent / "fixtures" / "resnet"

from tests.test_models import make_ids  # noqa: E402  (rows of SOT, random tokens, EOT, padding)



def max_diff(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).abs().max())


# ---------------------------------------------------------------------------
# Hugging Face parity
# ---------------------------------------------------------------------------

# (clipkit config, HF activation name)
HF_SHAPES = {
    "ViT-B/32": (CLIPConfig(
        embed_dim=512,
        vision=VisionConfig(image_size=224, width=768, layers=12, heads=12, patch_size=32),
        text=TextConfig(width=512, heads=8, layers=12)), "quick_gelu"),
    "small-quickgelu": (CLIPConfig(
        embed_dim=48,
        vision=VisionConfig(image_size=48, width=64, layers=2, heads=4, patch_size=8),
        text=TextConfig(width=64, heads=2, layers=3)), "quick_gelu"),
    "small-gelu": (CLIPConfig(
        embed_dim=40, quick_gelu=False,
        vision=VisionConfig(image_size=32, width=96, layers=3, heads=3, patch_size=16),
        text=TextConfig(width=32, heads=4, layers=2)), "gelu"),
}


def build_hf(cfg: CLIPConfig, act: str, seed: int):
    transformers = pytest.importorskip("transformers")
    v, t = cfg.vision, cfg.text
    hf_cfg = transformers.CLIPConfig(
        text_config=dict(vocab_size=t.vocab_size, hidden_size=t.width, intermediate_size=4 * t.width,
                         num_attention_heads=t.heads, num_hidden_layers=t.layers,
                         max_position_embeddings=t.context_length, hidden_act=act,
                         bos_token_id=SOT, eos_token_id=EOT, pad_token_id=0),
        vision_config=dict(hidden_size=v.width, intermediate_size=int(v.width * v.mlp_ratio),
                           num_attention_heads=v.heads, num_hidden_layers=v.layers,
                           image_size=v.image_size, patch_size=v.patch_size, hidden_act=act),
        projection_dim=cfg.embed_dim,
    )
    torch.manual_seed(seed)
    model = transformers.CLIPModel(hf_cfg).eval()
    model.set_attn_implementation("eager")  # the written-out softmax: an independent oracle
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():  # HF initialises norms to (1, 0) and biases to 0: randomise those too
        for name, p in model.named_parameters():
            if name == "logit_scale":
                p.fill_(math.log(42.0))
            elif p.ndim == 1 and "norm" in name and name.endswith("weight"):
                p.copy_(1 + 0.2 * torch.randn(p.shape, generator=g))
            elif p.ndim == 1:
                p.copy_(0.05 * torch.randn(p.shape, generator=g))
    return model


def _projected(pooled: torch.Tensor, projection: torch.nn.Linear) -> torch.Tensor:
    # transformers 5's CLIPModel.forward stores the projected embedding in the towers'
    # pooler_output (get_*_features overwrite it); transformers 4 stored the pooled state.
    import transformers
    return pooled if int(transformers.__version__.split(".")[0]) >= 5 else projection(pooled)


def _hf_features(out) -> torch.Tensor:
    # transformers 5 returns an output object whose pooler_output is the projected embedding;
    # transformers 4 returned the tensor itself.
    return out if isinstance(out, torch.Tensor) else out.pooler_output


@pytest.mark.parametrize("shape", list(HF_SHAPES))
def test_parity_with_hugging_face(shape):
    cfg, act = HF_SHAPES[shape]
    hf = build_hf(cfg, act, seed=len(shape))
    hf_config = hf.config.to_dict()
    assert hf_config_to_clip(hf_config) == cfg
    state = hf_to_openai(hf.state_dict(), hf_config)
    with torch.device("meta"):
        model = CLIP(cfg)
    model.load_state_dict(state, strict=True, assign=True)  # shares HF's tensors, no copy
    model.eval()

    g = torch.Generator().manual_seed(7)
    S = cfg.vision.image_size
    images = torch.randn(2, 3, S, S, generator=g)
    ids = make_ids([6, 19, 77], seed=7)
    with torch.no_grad():
        out = hf(input_ids=ids, pixel_values=images)  # one pass gives embeddings and logits
        hf_img = _projected(out.vision_model_output.pooler_output, hf.visual_projection)
        hf_txt = _projected(out.text_model_output.pooler_output, hf.text_projection)
        hf_logits = out.logits_per_image
        img, txt = model.encode_image(images), model.encode_text(ids)
        logits_per_image, logits_per_text = model.logits(F.normalize(img, dim=-1), F.normalize(txt, dim=-1))
        fast = model.encode_text(ids[:2, :19])  # the fast path: rows 0-1 cut at their longest prompt
    assert img.shape == hf_img.shape == (2, cfg.embed_dim)
    assert txt.shape == hf_txt.shape == (3, cfg.embed_dim)
    assert hf_img.abs().max() > 0.1 and hf_txt.abs().max() > 0.1  # not a degenerate comparison
    # measured (max abs): ViT-B/32 image 1.9e-6, text 2.2e-6, logits 1.9e-6; small shapes <= 1.7e-6 / 5.4e-6
    assert max_diff(img, hf_img) <= 1e-5
    assert max_diff(txt, hf_txt) <= 1e-5
    assert max_diff(logits_per_image, hf_logits) <= 1e-4  # logits are ~42x the cosines
    assert max_diff(logits_per_text, hf_logits.t()) <= 1e-4
    assert max_diff(fast, hf_txt[:2]) <= 1e-5
    torch.testing.assert_close(out.image_embeds, F.normalize(img, dim=-1), atol=1e-6, rtol=0)
    if shape != "ViT-B/32":  # HF's public feature API agrees too (skipped at full size: time)
        with torch.no_grad():
            assert max_diff(_hf_features(hf.get_image_features(pixel_values=images)), img) <= 1e-5
            assert max_diff(_hf_features(hf.get_text_features(input_ids=ids)), txt) <= 1e-5


# ---------------------------------------------------------------------------
# open_clip parity (fixtures)
# ---------------------------------------------------------------------------


def load_fixture(name: str):
    path = FIXTURES / f"openclip_{name}_weights.safetensors"
    with safe_open(str(path), "pt") as f:
        config = CLIPConfig.from_dict(json.loads(f.metadata()["config"]))
    model = CLIP(config)
    model.load_state_dict(load_file(str(path)), strict=True)
    return model.eval(), load_file(str(FIXTURES / f"openclip_{name}_io.safetensors"))


@pytest.mark.parametrize("name", ["rn", "vit"])
def test_parity_with_open_clip_fixture(name):
    model, io = load_fixture(name)
    assert model.config.vision.is_vit == (name == "vit")
    with torch.no_grad():
        img = model.encode_image(io["images"])
        txt = model.encode_text(io["ids"])
        logits_per_image, _ = model(io["images"], io["ids"])
        longest = int(io["ids"][:2].argmax(dim=1).max()) + 1
        fast = model.encode_text(io["ids"][:2, :longest])
    assert (io["image_features"][0] - io["image_features"][1]).norm() > 0.1 * io["image_features"][0].norm()
    # measured (max abs): rn image 2.4e-6, text 0, logits 4.8e-6; vit image 4.8e-7, text 0, logits 9.5e-7
    assert max_diff(img, io["image_features"]) <= 1e-5
    assert max_diff(txt, io["text_features"]) <= 1e-5
    assert max_diff(logits_per_image, io["logits_per_image"]) <= 1e-4
    assert max_diff(fast, io["text_features"][:2]) <= 1e-5


def test_open_clip_fixture_resnet_layout():
    """The fixture is open_clip's own state dict: the shortcut keys are downsample.0 (conv) / .1 (bn)."""
    with safe_open(str(FIXTURES / "openclip_rn_weights.safetensors"), "pt") as f:
        keys = set(f.keys())
    assert "visual.layer1.0.downsample.0.weight" in keys and "visual.layer1.0.downsample.1.running_var" in keys
    assert "visual.layer1.1.downsample.0.weight" not in keys  # identity shortcut
    assert {"visual.attnpool.q_proj.weight", "visual.attnpool.c_proj.bias", "logit_scale"} <= keys
