"""The CLIP model and the shared layers.

- every registered architecture, built on the meta device: parameter count and the exact
  OpenAI state-dict key set (names and shapes), derived independently from the config;
- the tiny models (one per image tower): forward, backward, no NaN, unit-norm embeddings,
  the text fast path (ids cut at the longest prompt) == the 77-token encoding, batched ==
  single, logits == 100 * cosine, half/bfloat16 weights, input validation;
- the shared attention against the written-out softmax oracle, and the KV cache against
  full causal attention.
Parity with reference implementations lives in tests/test_parity_hf.py.
"""
from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

import clipkit
from clipkit.models import CLIP, CLIPConfig, TextConfig, VisionConfig, available_models, create_model, get_config
from clipkit.models.config import OPENAI_MODELS
from clipkit.models.layers import Attention, KVCache, ResidualAttentionBlock, reference_attention

SOT, EOT = 49406, 49407

# Parameter counts of the released models (OpenAI's notebook prints 151,277,313 for
# ViT-B/32; the others counted from open_clip 3.3.0's modules, which load OpenAI's
# state dicts strictly).
OPENAI_PARAM_COUNTS = {
    "RN50": 102_007_137, "RN101": 119_688_033, "RN50x4": 178_300_601, "RN50x16": 290_979_217,
    "RN50x64": 623_258_305, "ViT-B/32": 151_277_313, "ViT-B/16": 149_620_737,
    "ViT-L/14": 427_616_513, "ViT-L/14@336px": 427_944_193,
}
# Number of state-dict entries (BatchNorm buffers included), from open_clip 3.3.0.
OPENAI_KEY_COUNTS = {
    "RN50": 489, "RN101": 795, "RN50x4": 669, "RN50x16": 921, "RN50x64": 1353,
    "ViT-B/32": 302, "ViT-B/16": 302, "ViT-L/14": 446, "ViT-L/14@336px": 446,
}


# ---------------------------------------------------------------------------
# The expected OpenAI state dict of a config, written out independently
# ---------------------------------------------------------------------------


def _block_shapes(prefix: str, w: int, hidden: int) -> dict[str, tuple]:
    return {
        f"{prefix}.ln_1.weight": (w,), f"{prefix}.ln_1.bias": (w,),
        f"{prefix}.attn.in_proj_weight": (3 * w, w), f"{prefix}.attn.in_proj_bias": (3 * w,),
        f"{prefix}.attn.out_proj.weight": (w, w), f"{prefix}.attn.out_proj.bias": (w,),
        f"{prefix}.ln_2.weight": (w,), f"{prefix}.ln_2.bias": (w,),
        f"{prefix}.mlp.c_fc.weight": (hidden, w), f"{prefix}.mlp.c_fc.bias": (hidden,),
        f"{prefix}.mlp.c_proj.weight": (w, hidden), f"{prefix}.mlp.c_proj.bias": (w,),
    }


def _bn_shapes(prefix: str, c: int) -> dict[str, tuple]:
    return {f"{prefix}.weight": (c,), f"{prefix}.bias": (c,), f"{prefix}.running_mean": (c,),
            f"{prefix}.running_var": (c,), f"{prefix}.num_batches_tracked": ()}


def expected_state_shapes(cfg: CLIPConfig) -> dict[str, tuple]:
    """OpenAI's key -> shape for a config (the layout of the released checkpoints)."""
    v, t, D = cfg.vision, cfg.text, cfg.embed_dim
    s: dict[str, tuple] = {}
    if v.is_vit:
        W, g = v.width, v.image_size // v.patch_size
        s["visual.conv1.weight"] = (W, 3, v.patch_size, v.patch_size)
        s["visual.class_embedding"] = (W,)
        s["visual.positional_embedding"] = (g * g + 1, W)
        s.update({"visual.ln_pre.weight": (W,), "visual.ln_pre.bias": (W,)})
        for i in range(v.layers):
            s.update(_block_shapes(f"visual.transformer.resblocks.{i}", W, int(W * v.mlp_ratio)))
        s.update({"visual.ln_post.weight": (W,), "visual.ln_post.bias": (W,), "visual.proj": (W, D)})
    else:
        w = v.width
        s["visual.conv1.weight"] = (w // 2, 3, 3, 3)
        s.update(_bn_shapes("visual.bn1", w // 2))
        s["visual.conv2.weight"] = (w // 2, w // 2, 3, 3)
        s.update(_bn_shapes("visual.bn2", w // 2))
        s["visual.conv3.weight"] = (w, w // 2, 3, 3)
        s.update(_bn_shapes("visual.bn3", w))
        inplanes = w
        for stage, depth in enumerate(v.layers):
            planes = w * 2 ** stage
            for b in range(depth):
                p = f"visual.layer{stage + 1}.{b}"
                s[f"{p}.conv1.weight"] = (planes, inplanes, 1, 1)
                s.update(_bn_shapes(f"{p}.bn1", planes))
                s[f"{p}.conv2.weight"] = (planes, planes, 3, 3)
                s.update(_bn_shapes(f"{p}.bn2", planes))
                s[f"{p}.conv3.weight"] = (4 * planes, planes, 1, 1)
                s.update(_bn_shapes(f"{p}.bn3", 4 * planes))
                if b == 0:  # stride 2 (stages 2-4) or a change of width (stage 1)
                    s[f"{p}.downsample.0.weight"] = (4 * planes, inplanes, 1, 1)
                    s.update(_bn_shapes(f"{p}.downsample.1", 4 * planes))
                inplanes = 4 * planes
        C, g = 32 * w, v.image_size // 32
        s["visual.attnpool.positional_embedding"] = (g * g + 1, C)
        for name in ("k_proj", "q_proj", "v_proj"):
            s.update({f"visual.attnpool.{name}.weight": (C, C), f"visual.attnpool.{name}.bias": (C,)})
        s.update({"visual.attnpool.c_proj.weight": (D, C), "visual.attnpool.c_proj.bias": (D,)})
    s["token_embedding.weight"] = (t.vocab_size, t.width)
    s["positional_embedding"] = (t.context_length, t.width)
    for i in range(t.layers):
        s.update(_block_shapes(f"transformer.resblocks.{i}", t.width, 4 * t.width))
    s.update({"ln_final.weight": (t.width,), "ln_final.bias": (t.width,),
              "text_projection": (t.width, D), "logit_scale": ()})
    return s


@pytest.mark.parametrize("name", available_models())
def test_architecture_on_meta_matches_openai_layout(name):
    cfg = get_config(name)
    with torch.device("meta"):
        model = create_model(name)
    assert isinstance(model, CLIP) and model.config == cfg
    state = model.state_dict()
    got = {k: tuple(v.shape) for k, v in state.items()}
    want = expected_state_shapes(cfg)
    assert sorted(set(got) - set(want)) == [] and sorted(set(want) - set(got)) == []
    assert got == want
    n_params = sum(p.numel() for p in model.parameters())
    n_buffers = sum(math.prod(shape) for k, shape in want.items() if "running_" in k or "num_batches" in k)
    assert n_params == sum(math.prod(shape) for shape in want.values()) - n_buffers
    if name in OPENAI_PARAM_COUNTS:
        assert n_params == OPENAI_PARAM_COUNTS[name]
        assert len(state) == OPENAI_KEY_COUNTS[name]
    assert model.image_size == cfg.vision.image_size


def test_openai_registry_shapes_are_the_released_ones():
    assert set(OPENAI_MODELS) <= set(available_models())
    with torch.device("meta"):
        vit, rn = create_model("ViT-L/14@336px"), create_model("RN50x4")
    assert vit.visual.positional_embedding.shape == (24 * 24 + 1, 1024)
    assert vit.text_projection.shape == (768, 768)
    assert rn.visual.attnpool.positional_embedding.shape == (9 * 9 + 1, 2560)
    assert rn.visual.attnpool.heads == 40 and rn.image_size == 288


def test_create_model_api():
    assert clipkit.create_model is create_model and clipkit.CLIP is CLIP
    with torch.device("meta"):
        m = clipkit.create_model("ViT-B/32")
        assert m.config == get_config("ViT-B/32")
        m = create_model(get_config("tiny-vit"), quick_gelu=False, embed_dim=None)  # None is dropped
    assert m.config.quick_gelu is False and m.config.embed_dim == get_config("tiny-vit").embed_dim
    assert isinstance(m.transformer.resblocks[0].mlp.gelu, torch.nn.GELU)
    with pytest.raises(ValueError, match="unknown model"):
        create_model("ViT-Z/99")
    with pytest.raises(TypeError, match="unknown CLIPConfig field"):
        create_model("tiny-vit", heads=3)
    with pytest.raises(TypeError):
        create_model(42)


# ---------------------------------------------------------------------------
# Tiny models: behaviour
# ---------------------------------------------------------------------------


def make_ids(lengths, context=77, seed=0):
    """Rows [SOT, random tokens, EOT, 0...] with the given lengths (SOT and EOT counted)."""
    g = torch.Generator().manual_seed(seed)
    ids = torch.zeros(len(lengths), context, dtype=torch.long)
    for i, n in enumerate(lengths):
        ids[i, 0] = SOT
        ids[i, 1:n - 1] = torch.randint(1, SOT, (n - 2,), generator=g)
        ids[i, n - 1] = EOT
    return ids


TINY = ["tiny-vit", "tiny-rn"]


@pytest.fixture(scope="module", params=TINY)
def tiny(request):
    torch.manual_seed(0)
    return create_model(request.param).eval()


def _images(model, n=3, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, 3, model.image_size, model.image_size, generator=g)


@torch.no_grad()
def test_initialisation_follows_the_reference(tiny):
    w = tiny.transformer.width
    assert float(tiny.logit_scale) == pytest.approx(math.log(1 / 0.07))
    assert float(tiny.token_embedding.weight.std()) == pytest.approx(0.02, rel=0.05)
    assert float(tiny.positional_embedding.std()) == pytest.approx(0.01, rel=0.1)
    assert float(tiny.text_projection.std()) == pytest.approx(w ** -0.5, rel=0.1)
    block = tiny.transformer.resblocks[0]
    assert float(block.attn.in_proj_weight.std()) == pytest.approx(w ** -0.5, rel=0.05)
    proj_std = w ** -0.5 * (2 * tiny.transformer.layers) ** -0.5
    assert float(block.mlp.c_proj.weight.std()) == pytest.approx(proj_std, rel=0.05)
    assert float(block.mlp.c_fc.weight.std()) == pytest.approx((2 * w) ** -0.5, rel=0.05)
    if tiny.config.vision.is_vit:
        W = tiny.config.vision.width
        assert float(tiny.visual.positional_embedding.std()) == pytest.approx(W ** -0.5, rel=0.1)
    else:
        for stage in (tiny.visual.layer1, tiny.visual.layer4):
            assert torch.count_nonzero(stage[0].bn3.weight) == 0  # residual branches start at zero
        C = tiny.visual.attnpool.c_proj.in_features
        assert float(tiny.visual.attnpool.q_proj.weight.std()) == pytest.approx(C ** -0.5, rel=0.05)


def test_forward_backward_no_nan(tiny):
    model = create_model(tiny.config).train()
    images, ids = _images(model, 4), make_ids([5, 9, 14, 77])
    logits_per_image, logits_per_text = model(images, ids)
    assert logits_per_image.shape == (4, 4) and torch.equal(logits_per_text, logits_per_image.t())
    labels = torch.arange(4)
    loss = (F.cross_entropy(logits_per_image, labels) + F.cross_entropy(logits_per_text, labels)) / 2
    assert torch.isfinite(loss)
    loss.backward()
    for name, p in model.named_parameters():
        assert p.grad is not None, name
        assert torch.isfinite(p.grad).all(), name
    for name in ("logit_scale", "text_projection", "token_embedding.weight", "positional_embedding",
                 "transformer.resblocks.0.attn.in_proj_weight", "visual.conv1.weight"):
        assert model.get_parameter(name).grad.abs().sum() > 0, name


def test_embeddings_shapes_and_unit_norm(tiny):
    D = tiny.config.embed_dim
    with torch.no_grad():
        img = tiny.encode_image(_images(tiny), normalize=True)
        txt = tiny.encode_text(make_ids([4, 12, 30]), normalize=True)
        raw = tiny.encode_image(_images(tiny))
    assert img.shape == (3, D) and txt.shape == (3, D)
    assert torch.isfinite(img).all() and torch.isfinite(txt).all()
    torch.testing.assert_close(img.norm(dim=-1), torch.ones(3), atol=1e-6, rtol=0)
    torch.testing.assert_close(txt.norm(dim=-1), torch.ones(3), atol=1e-6, rtol=0)
    torch.testing.assert_close(F.normalize(raw, dim=-1), img, atol=1e-6, rtol=0)
    assert not torch.allclose(img[0], img[1])  # the image matters


def test_text_fast_path_equals_full_context(tiny):
    ids = make_ids([3, 9, 17, 11], seed=1)
    longest = int(ids.argmax(dim=1).max()) + 1  # 17
    with torch.no_grad():
        full = tiny.encode_text(ids)
        short = tiny.encode_text(ids[:, :longest])
        shorter_still = tiny.encode_text(ids[:2, :9])
    assert (full - short).abs().max() <= 1e-5
    assert (full[:2] - shorter_still).abs().max() <= 1e-5
    # and the tokens after end-of-text really are ignored
    noisy = ids.clone()
    noisy[:, longest:] = torch.randint(1, SOT, (4, 77 - longest))
    with torch.no_grad():
        assert (tiny.encode_text(noisy) - full).abs().max() <= 1e-5


def test_pooling_reads_the_end_of_text_token(tiny):
    ids = make_ids([6, 6], seed=2)
    ids[1, 3] = ids[0, 3] + 1  # differs before EOT -> different embedding
    with torch.no_grad():
        a, b = tiny.encode_text(ids)
    assert (a - b).abs().max() > 1e-4


def test_batched_equals_single(tiny):
    images, ids = _images(tiny, 3, seed=3), make_ids([5, 20, 77], seed=3)
    with torch.no_grad():
        batch_img, batch_txt = tiny.encode_image(images), tiny.encode_text(ids)
        for i in range(3):
            assert (tiny.encode_image(images[i:i + 1])[0] - batch_img[i]).abs().max() <= 1e-5
            assert (tiny.encode_text(ids[i:i + 1])[0] - batch_txt[i]).abs().max() <= 1e-5


def test_logits_are_100_times_cosine(tiny):
    model = create_model(tiny.config).eval()
    images, ids = _images(model, 2), make_ids([5, 8, 13])
    with torch.no_grad():
        model.logit_scale.fill_(math.log(100))
        logits_per_image, logits_per_text = model(images, ids)
        cos = F.cosine_similarity(model.encode_image(images)[:, None], model.encode_text(ids)[None], dim=-1)
        torch.testing.assert_close(logits_per_image, 100 * cos, atol=1e-4, rtol=1e-5)
        torch.testing.assert_close(logits_per_text, 100 * cos.t(), atol=1e-4, rtol=1e-5)
        model.logit_scale.fill_(math.log(1000))  # the scale is clipped at 100
        torch.testing.assert_close(model(images, ids)[0], logits_per_image)
        model.logit_scale.fill_(math.log(10))
        torch.testing.assert_close(model(images, ids)[0], 10 * cos, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_precision_weights_run_on_cpu(tiny, dtype):
    model = create_model(tiny.config).eval()
    images, ids = _images(model, 2), make_ids([5, 16])
    with torch.no_grad():
        ref_img, ref_txt = model.encode_image(images, True), model.encode_text(ids, True)
        model.to(dtype)
        img, txt = model.encode_image(images, True), model.encode_text(ids, True)  # fp32 images are cast
        logits, _ = model(images, ids)
    assert img.dtype == txt.dtype == logits.dtype == dtype
    assert F.cosine_similarity(img.float(), ref_img, dim=-1).min() > 0.99
    assert F.cosine_similarity(txt.float(), ref_txt, dim=-1).min() > 0.99


def test_input_validation(tiny):
    S = tiny.image_size
    with pytest.raises(ValueError, match=rf"\[B, 3, {S}, {S}\]"):
        tiny.encode_image(torch.zeros(1, 3, S + 1, S + 1))
    with pytest.raises(ValueError, match=rf"\[B, 3, {S}, {S}\]"):
        tiny.encode_image(torch.zeros(3, S, S))
    with pytest.raises(ValueError, match=rf"\[B, 3, {S}, {S}\]"):
        tiny.encode_image(torch.zeros(1, S, S, 3))
    with pytest.raises(TypeError, match="floating-point"):
        tiny.encode_image(torch.zeros(1, 3, S, S, dtype=torch.uint8))
    with pytest.raises(TypeError, match="tensor"):
        tiny.encode_image([[0.0]])
    with pytest.raises(TypeError, match="integer"):
        tiny.encode_text(make_ids([5]).float())
    with pytest.raises(TypeError, match="integer"):
        tiny.encode_text(make_ids([5]) > 0)
    with pytest.raises(ValueError, match=r"\[B, T\]"):
        tiny.encode_text(make_ids([5])[0])
    overflow = torch.zeros(1, 78, dtype=torch.long)
    overflow[0, 77] = 49407  # a real token past the context
    with pytest.raises(ValueError, match="context of 77"):
        tiny.encode_text(overflow)
    padded = torch.cat([make_ids([5]), torch.zeros(1, 40, dtype=torch.long)], dim=1)  # (1, 117): padding only
    with torch.no_grad():  # trailing padding past the context is cut: exact for the causal tower
        torch.testing.assert_close(tiny.encode_text(padded), tiny.encode_text(make_ids([5])), rtol=0, atol=0)
    with pytest.raises(ValueError, match="token ids must lie in"):
        tiny.encode_text(torch.full((1, 5), 49408))
    with pytest.raises(ValueError):
        tiny(torch.zeros(2, 3, S, S + 1), make_ids([5]))
    with torch.no_grad():  # int32 ids are fine
        torch.testing.assert_close(tiny.encode_text(make_ids([5]).int()), tiny.encode_text(make_ids([5])))


# ---------------------------------------------------------------------------
# Shared layers
# ---------------------------------------------------------------------------


def _attention_oracle(attn: Attention, x: torch.Tensor, **mask) -> torch.Tensor:
    B, T, C = x.shape
    q, k, v = F.linear(x, attn.in_proj_weight, attn.in_proj_bias).split(C, dim=-1)
    split = lambda t: t.view(B, T, attn.heads, attn.head_dim).transpose(1, 2)  # noqa: E731  (B, nh, T, hs)
    y = reference_attention(split(q), split(k), split(v), **mask)  # (B, nh, T, hs)
    return attn.out_proj(y.transpose(1, 2).reshape(B, T, C))


def test_attention_matches_reference_causal_and_masked():
    torch.manual_seed(0)
    attn = Attention(32, 4)
    torch.nn.init.normal_(attn.in_proj_bias, std=0.1)
    x = torch.randn(2, 9, 32)
    with torch.no_grad():
        torch.testing.assert_close(attn(x), _attention_oracle(attn, x), atol=1e-6, rtol=1e-5)
        torch.testing.assert_close(attn(x, is_causal=True), _attention_oracle(attn, x, is_causal=True),
                                   atol=1e-6, rtol=1e-5)
        keep = torch.rand(2, 1, 9, 9) > 0.3
        keep[..., 0] = True  # every query sees something
        torch.testing.assert_close(attn(x, attn_mask=keep), _attention_oracle(attn, x, attn_mask=keep),
                                   atol=1e-6, rtol=1e-5)
        additive = torch.randn(9, 9)
        torch.testing.assert_close(attn(x, attn_mask=additive), _attention_oracle(attn, x, attn_mask=additive),
                                   atol=1e-6, rtol=1e-5)
        # causal == an explicit lower-triangular mask, and the future does not leak
        tril = torch.ones(9, 9, dtype=torch.bool).tril()
        torch.testing.assert_close(attn(x, is_causal=True), attn(x, attn_mask=tril), atol=1e-6, rtol=1e-5)
        y = x.clone()
        y[:, 5:] = torch.randn(2, 4, 32)
        torch.testing.assert_close(attn(y, is_causal=True)[:, :5], attn(x, is_causal=True)[:, :5])


def test_kv_cache_incremental_equals_full_causal():
    torch.manual_seed(0)
    block = ResidualAttentionBlock(32, 4).eval()
    x = torch.randn(2, 11, 32)
    with torch.no_grad():
        full = block(x, is_causal=True)
        cache = KVCache(2, 4, 16, 8)
        prefix = 4
        outs = [block(x[:, :prefix], attn_mask=torch.ones(prefix, prefix, dtype=torch.bool).tril(), cache=cache)]
        for t in range(prefix, 11):  # one token at a time: it may see everything cached
            outs.append(block(x[:, t:t + 1], cache=cache))
        assert cache.length == 11
        assert (torch.cat(outs, dim=1) - full).abs().max() <= 1e-5
        with pytest.raises(ValueError, match="overflow"):
            block(torch.randn(2, 6, 32), cache=cache)
        with pytest.raises(ValueError, match="is_causal"):
            block(x[:, :1], is_causal=True, cache=KVCache(2, 4, 16, 8))
