"""Checkpoint formats: OpenAI TorchScript archives (restricted unpickler), plain and
open_clip state dicts, Hugging Face folders (parity with transformers), safetensors,
architecture inference for the nine OpenAI models, and the errors users see."""
from __future__ import annotations

import pickle
import warnings
import zipfile

import pytest
import torch
from safetensors.torch import save_file

import clipkit
from benchmarks._released import Released as _Released
from clipkit import checkpoints as ck
from clipkit.models import CLIPConfig, TextConfig, VisionConfig, create_model, get_config
from clipkit.models.config import OPENAI_MODELS

EXTRAS = ("input_resolution", "context_length", "vocab_size")


def _inputs(config: CLIPConfig, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    S = config.vision.image_size
    images = torch.randn(2, 3, S, S, generator=g)
    ids = torch.randint(1, 1000, (2, 9), generator=g)
    eot = config.text.vocab_size - 1  # the largest id marks end-of-text
    ids[0, 5], ids[1, 8] = eot, eot
    ids[0, 6:] = 0
    return images, ids


def _embeddings(model, config):
    images, ids = _inputs(config)
    with torch.no_grad():
        return model.encode_image(images), model.encode_text(ids)


def _assert_same_model(loaded, reference, config, atol=0.0):
    a_img, a_txt = _embeddings(loaded, config)
    b_img, b_txt = _embeddings(reference, config)
    torch.testing.assert_close(a_img, b_img, atol=atol, rtol=0)
    torch.testing.assert_close(a_txt, b_txt, atol=atol, rtol=0)


def _random_model(name_or_config, seed=0):
    torch.manual_seed(seed)
    model = create_model(name_or_config).eval()
    with torch.no_grad():  # BatchNorm statistics and zero-initialised weights become informative
        for p in model.state_dict().values():
            if p.is_floating_point():
                p.copy_(torch.randn_like(p) * 0.2 + (1.0 if p.ndim == 1 and p.numel() > 1 else 0.0))
            if p.is_floating_point() and p.ndim == 1:
                p.abs_()  # running_var and LayerNorm scales stay positive
    return model


def _trace(model, released=False) -> torch.jit.ScriptModule:
    """A TorchScript archive like the released ones: a traced module with OpenAI key names."""
    images, ids = _inputs(model.config)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        if released:
            return torch.jit.trace(_Released(model), images[:1], check_trace=False)
        return torch.jit.trace_module(model, {"encode_image": (images[:1],), "encode_text": (ids[:1],)},
                                      check_trace=False)


# ---------------------------------------------------------------------------
# Architecture inference
# ---------------------------------------------------------------------------


@pytest.mark.parametrize("name", OPENAI_MODELS)
def test_infer_config_recognises_each_openai_architecture(name):
    with torch.device("meta"):
        sd = create_model(name).state_dict()
    config, found = ck.infer_config(sd)
    assert found == name
    assert config == get_config(name)


def test_infer_config_custom_architecture_has_no_name():
    custom = CLIPConfig(embed_dim=48, vision=VisionConfig(image_size=48, width=128, layers=3, heads=2, patch_size=16,
                                                          mlp_ratio=2.0),
                        text=TextConfig(context_length=20, vocab_size=500, width=64, heads=1, layers=1))
    with torch.device("meta"):
        sd = create_model(custom).state_dict()
    config, found = ck.infer_config(sd)
    assert found is None
    assert config == custom


def test_infer_config_rejects_a_non_clip_state_dict():
    with pytest.raises(ck.CheckpointError, match="not a CLIP state dict"):
        ck.infer_config({"fc.weight": torch.zeros(3, 3)})


# ---------------------------------------------------------------------------
# OpenAI TorchScript archives
# ---------------------------------------------------------------------------


@pytest.mark.parametrize("arch", ["tiny-vit", "tiny-rn"])
def test_torchscript_archive_read_without_torchscript(tmp_path, arch):
    model = _random_model(arch)
    reference = {k: v.clone() for k, v in model.state_dict().items()}
    released = _Released(model)
    path = tmp_path / "model.pt"
    _trace(model, released=True).save(str(path))

    raw = ck.read_torchscript_archive(path)
    assert set(raw) == set(released.state_dict()) == set(reference) | set(EXTRAS) | {
        "transformer.resblocks.0.attn_mask"}
    for key, value in released.state_dict().items():
        assert raw[key].dtype == value.dtype and torch.equal(raw[key], value), key

    sd, config = ck.load_state_dict(path)
    assert config is None
    assert set(sd) == set(reference)  # the non-weight entries are gone
    assert all(torch.equal(sd[k], reference[k]) for k in reference)

    loaded, preprocess = clipkit.load(path, arch=arch)
    assert not loaded.training
    _assert_same_model(loaded, _random_model(arch), get_config(arch))


def test_fp16_archive_runs_in_fp32_on_cpu_unless_dtype_given(tmp_path):
    model = _random_model("tiny-vit")
    traced = _trace(model)
    traced.half()  # the released archives hold fp16 weights
    path = tmp_path / "half.pt"
    traced.save(str(path))
    assert {t.dtype for t in ck.read_torchscript_archive(path).values()} == {torch.float16}

    loaded, _ = clipkit.load(path, arch="tiny-vit")
    assert {p.dtype for p in loaded.parameters()} == {torch.float32}
    reference = _random_model("tiny-vit").half().float()  # same fp16-rounded weights, in fp32
    _assert_same_model(loaded, reference, get_config("tiny-vit"))

    bf16, _ = clipkit.load(path, arch="tiny-vit", dtype=torch.bfloat16)
    assert {p.dtype for p in bf16.parameters()} == {torch.bfloat16}


def _archive_with_pickle(tmp_path, payload: bytes):
    path = tmp_path / "evil.pt"
    with zipfile.ZipFile(path, "w") as zf:
        zf.writestr("evil/data.pkl", payload)
        zf.writestr("evil/constants.pkl", pickle.dumps(()))
        zf.writestr("evil/code/__torch__.py", "")
    return path


class _RunsCode:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):  # unpickling calls open(marker, "w"): a file appears if code runs
        return (open, (self.marker, "w"))


def test_restricted_unpickler_refuses_any_other_global(tmp_path):
    marker = tmp_path / "pwned"
    path = _archive_with_pickle(tmp_path, pickle.dumps({"w": _RunsCode(str(marker))}, protocol=2))
    with pytest.raises(ck.CheckpointError, match=r"references io\.open.*refusing") as info:
        ck.read_torchscript_archive(path)
    assert str(path) in str(info.value)
    with pytest.raises(ck.CheckpointError):
        clipkit.load(path)
    assert not marker.exists()


def test_restricted_unpickler_checks_storage_sizes(tmp_path):
    model = _random_model("tiny-vit")
    path = tmp_path / "model.pt"
    _trace(model).save(str(path))
    bad = tmp_path / "truncated.pt"
    with zipfile.ZipFile(path) as src, zipfile.ZipFile(bad, "w") as dst:
        for info in src.infolist():
            data = src.read(info)
            if "/data/" in info.filename and info.filename.endswith("/0"):
                data = data[:-4]
            dst.writestr(info, data)
    with pytest.raises(ck.CheckpointError, match="storage 0 holds"):
        ck.read_torchscript_archive(bad)


# ---------------------------------------------------------------------------
# Plain, open_clip and pickled-module checkpoints
# ---------------------------------------------------------------------------


def test_plain_state_dict(tmp_path):
    model = _random_model("tiny-rn")
    path = tmp_path / "plain.pt"
    torch.save(model.state_dict(), path)
    loaded, _ = clipkit.load(path, arch="tiny-rn")
    _assert_same_model(loaded, model, model.config)


def test_open_clip_checkpoint_wrappers_and_prefixes(tmp_path):
    model = _random_model("tiny-vit")
    sd = {f"module.{k}": v for k, v in model.state_dict().items()}  # saved from DDP
    sd["module.transformer.resblocks.0.attn_mask"] = torch.zeros(77, 77)
    for wrapper in ("state_dict", "model"):
        path = tmp_path / f"{wrapper}.pt"
        torch.save({"epoch": 32, "name": "run", wrapper: sd, "optimizer": {"lr": 1e-3}}, path)
        loaded_sd, config = ck.load_state_dict(path)
        assert config is None and set(loaded_sd) == set(model.state_dict())
        loaded, _ = clipkit.load(path, arch="tiny-vit")
        _assert_same_model(loaded, model, model.config)


def test_pickled_module_needs_trust_pickle(tmp_path):
    model = _random_model("tiny-vit")
    path = tmp_path / "module.pt"
    torch.save(model, path)  # a whole pickled nn.Module
    with pytest.raises(ck.UnsafeCheckpointError) as info:
        clipkit.load(path, arch="tiny-vit")
    message = str(info.value)
    assert str(path) in message and "arbitrary code" in message and "trust_pickle=True" in message
    loaded, _ = clipkit.load(path, arch="tiny-vit", trust_pickle=True)
    _assert_same_model(loaded, model, model.config)


# ---------------------------------------------------------------------------
# safetensors (the project's format)
# ---------------------------------------------------------------------------


def test_save_then_load_keeps_the_config(tmp_path):
    model = _random_model("tiny-vit")  # 2 heads at width 64: not inferable from shapes
    path = clipkit.save(model, tmp_path / "tiny.safetensors")
    sd, config = ck.load_state_dict(path)
    assert config == model.config
    loaded, preprocess = clipkit.load(path)
    assert loaded.config == model.config
    from PIL import Image
    pixels = preprocess(Image.new("RGB", (50, 40), (200, 30, 30)))
    assert tuple(pixels.shape) == (3, 32, 32)  # the model's own resolution
    _assert_same_model(loaded, model, model.config)


def test_save_in_float16_halves_the_file_and_loads_as_float32(tmp_path):
    model = _random_model("tiny-vit")
    full = clipkit.save(model, tmp_path / "full.safetensors")
    half = clipkit.save(model, tmp_path / "half.safetensors", dtype=torch.float16)
    assert half.stat().st_size < 0.6 * full.stat().st_size
    sd, _ = ck.load_state_dict(half)
    assert all(v.dtype == torch.float16 for v in sd.values() if v.is_floating_point())
    loaded, _ = clipkit.load(half)
    assert all(p.dtype == torch.float32 for p in loaded.parameters())
    for key, value in model.state_dict().items():
        expected = value.to(torch.float16).float() if value.is_floating_point() else value
        assert torch.equal(loaded.state_dict()[key], expected), key


def test_safetensors_without_metadata_infers_the_architecture(tmp_path):
    custom = CLIPConfig(embed_dim=32, vision=VisionConfig(image_size=32, width=64, layers=1, heads=1, patch_size=16),
                        text=TextConfig(vocab_size=49408, width=64, heads=1, layers=1))
    model = _random_model(custom)
    path = tmp_path / "bare.safetensors"
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(path))
    loaded, _ = clipkit.load(path)
    assert loaded.config == custom
    _assert_same_model(loaded, model, custom)


# ---------------------------------------------------------------------------
# Hugging Face folders, checked against transformers itself
# ---------------------------------------------------------------------------


@pytest.fixture(scope="module")
def hf_model():
    transformers = pytest.importorskip("transformers")

    def make(hidden_act):
        torch.manual_seed(0)
        config = transformers.CLIPConfig(
            text_config=dict(hidden_size=64, intermediate_size=256, num_attention_heads=2, num_hidden_layers=2,
                             vocab_size=49408, max_position_embeddings=77, hidden_act=hidden_act),
            vision_config=dict(hidden_size=64, intermediate_size=128, num_attention_heads=4, num_hidden_layers=2,
                               image_size=32, patch_size=8, hidden_act=hidden_act),
            projection_dim=24,
        )
        model = transformers.CLIPModel(config).eval()
        with torch.no_grad():  # biases and norms away from their (0, 1) init
            for name, p in model.named_parameters():
                if p.ndim == 1:
                    p.add_(torch.randn_like(p) * 0.1)
        return model

    return make


def _hf_features(out):
    return out.pooler_output if hasattr(out, "pooler_output") else out


@pytest.mark.parametrize("weights,hidden_act", [("safetensors", "quick_gelu"), ("bin", "gelu")])
def test_hugging_face_folder_matches_transformers(tmp_path, hf_model, weights, hidden_act):
    hf = hf_model(hidden_act)
    folder = tmp_path / "hf"
    hf.save_pretrained(folder, safe_serialization=weights == "safetensors")
    if weights == "bin":  # transformers 5 always writes safetensors: make the legacy layout by hand
        (folder / "model.safetensors").unlink(missing_ok=True)
        sd = {k: v for k, v in hf.state_dict().items()}
        torch.save(sd, folder / "pytorch_model.bin")
    assert (folder / ("model.safetensors" if weights == "safetensors" else "pytorch_model.bin")).is_file()

    model, _ = clipkit.load(folder)
    assert model.config.quick_gelu == (hidden_act == "quick_gelu")
    assert model.config.vision.heads == 4 and model.config.text.heads == 2  # from config.json, not guessed
    images, ids = _inputs(model.config)
    with torch.no_grad():
        ours_img, ours_txt = model.encode_image(images), model.encode_text(ids)
        ref_img = _hf_features(hf.get_image_features(pixel_values=images))
        ref_txt = _hf_features(hf.get_text_features(input_ids=ids))
    torch.testing.assert_close(ours_img, ref_img, atol=1e-5, rtol=0)
    torch.testing.assert_close(ours_txt, ref_txt, atol=1e-5, rtol=0)
    torch.testing.assert_close(model.logit_scale, hf.logit_scale.detach(), atol=0, rtol=0)


def test_hugging_face_weights_file_without_its_folder(tmp_path, hf_model):
    hf = hf_model("quick_gelu")
    path = tmp_path / "hf.safetensors"
    save_file({k: v.contiguous() for k, v in hf.state_dict().items()}, str(path))
    sd, config = ck.load_state_dict(path)  # HF key names are recognised and converted
    assert config is None and "visual.transformer.resblocks.1.attn.in_proj_weight" in sd
    model, _ = clipkit.load(path, arch=ck.hf_config_to_clip(hf.config.to_dict()))  # heads from HF's config
    images, _ = _inputs(model.config)
    with torch.no_grad():
        ref = _hf_features(hf.get_image_features(pixel_values=images))
        torch.testing.assert_close(model.encode_image(images), ref, atol=1e-5, rtol=0)


def test_hf_to_openai_checks_shapes_against_config(hf_model):
    hf = hf_model("quick_gelu")
    config = hf.config.to_dict()
    sd = hf.state_dict()
    openai = ck.hf_to_openai(sd, config)
    w = sd["vision_model.encoder.layers.0.self_attn.q_proj.weight"]
    assert torch.equal(openai["visual.transformer.resblocks.0.attn.in_proj_weight"][:64], w)
    assert torch.equal(openai["text_projection"], sd["text_projection.weight"].t())
    config["vision_config"]["num_hidden_layers"] = 3
    with pytest.raises(ck.CheckpointError, match="config.json says 3"):
        ck.hf_to_openai(sd, config)
    with pytest.raises(ck.CheckpointError, match="only ViT"):
        ck.hf_to_openai({k: v for k, v in sd.items() if "patch_embedding" not in k}, hf.config.to_dict())


# ---------------------------------------------------------------------------
# Errors
# ---------------------------------------------------------------------------


def test_mismatch_lists_missing_and_unexpected_keys(tmp_path):
    sd = _random_model("tiny-vit").state_dict()
    del sd["ln_final.bias"]
    sd["visual.extra.weight"] = torch.zeros(2)
    path = tmp_path / "broken.pt"
    torch.save(sd, path)
    with pytest.raises(ck.CheckpointError) as info:
        clipkit.load(path, arch="tiny-vit")
    message = str(info.value)
    assert str(path) in message and "tiny-vit" in message
    assert "1 missing keys: ['ln_final.bias']" in message
    assert "1 unexpected keys: ['visual.extra.weight']" in message

    # A ViT checkpoint against a ResNet architecture: many keys, the first ten and totals.
    with pytest.raises(ck.CheckpointError) as info:
        clipkit.load(path, arch="tiny-rn")
    message = str(info.value)
    assert "and " in message and "more" in message and "tiny-rn (given by arch=)" in message

    # Without arch=, the message names the architecture that was guessed.
    torch.save(_random_model("tiny-vit").state_dict() | {"visual.extra.weight": torch.zeros(2)}, path)
    with pytest.raises(ck.CheckpointError, match="guessed from the weights' shapes"):
        clipkit.load(path)


def test_unknown_format_names_file_and_formats(tmp_path):
    path = tmp_path / "weights.bin"
    path.write_bytes(b"GGUF not a checkpoint at all")
    with pytest.raises(ck.CheckpointError) as info:
        clipkit.load(path)
    assert str(path) in str(info.value) and "safetensors" in str(info.value) and "TorchScript" in str(info.value)


def test_missing_files_and_names(tmp_path):
    with pytest.raises(FileNotFoundError, match="nowhere.pt"):
        clipkit.load(tmp_path / "nowhere.pt")
    with pytest.raises(FileNotFoundError) as info:
        clipkit.load("tiny-vit")  # a registry name without published weights
    assert str(tmp_path / "cache" / "tiny-vit.safetensors") in str(info.value)


def test_registry_name_with_a_cached_or_shipped_file(tmp_path, monkeypatch):
    model = _random_model("tiny-rn")
    clipkit.save(model, tmp_path / "cache" / "tiny-rn.safetensors")
    loaded, _ = clipkit.load("tiny-rn")
    _assert_same_model(loaded, model, model.config)

    other = _random_model("tiny-vit", seed=3)
    shipped = clipkit.save(other, tmp_path / "pkg" / "weights" / "tiny.safetensors")
    monkeypatch.setitem(ck._SHIPPED, "tiny-vit", str(shipped))
    loaded, _ = clipkit.load("tiny-vit")
    _assert_same_model(loaded, other, other.config)


def test_plain_state_dict_of_a_named_model_uses_its_registered_config(tmp_path):
    model = _random_model("tiny-vit")  # heads=2: shapes alone would guess 1
    (tmp_path / "cache").mkdir()
    torch.save(model.state_dict(), tmp_path / "cache" / "tiny-vit.pt")
    loaded, _ = clipkit.load("tiny-vit")
    assert loaded.config == get_config("tiny-vit")
    _assert_same_model(loaded, model, model.config)
