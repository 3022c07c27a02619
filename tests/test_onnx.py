"""ONNX export (fp32 == torch, int8 close) and the onnxruntime backend of fast_inference."""
from __future__ import annotations

import json
import sys

import pytest
import torch
import torch.nn.functional as F

import clipkit
from clipkit.models import create_model, fast_inference

pytest.importorskip("onnxruntime")
pytest.importorskip("onnx")

from clipkit.models import ort as ort_backend  # noqa: E402
from clipkit.models.onnx import MANIFEST, OPSET, export_onnx  # noqa: E402
from clipkit.models.ort import OnnxCLIP  # noqa: E402
from clipkit.utils import weights_fingerprint  # noqa: E402

PROMPTS = ["a red circle", "a photo of the number: \"7\".", "x",
           "two small blue squares next to a large green triangle on a white background"]


def _cos(a, b):
    return F.cosine_similarity(a.float(), b.float(), dim=-1)


@pytest.fixture(scope="module", params=["tiny-vit", "tiny-rn"])
def tiny_export(request, tmp_path_factory):
    torch.manual_seed(0)
    model = create_model(request.param).eval()
    if request.param == "tiny-rn":  # random BatchNorm statistics and gains: no zero-init identity blocks
        with torch.no_grad():
            for m in model.visual.modules():
                if isinstance(m, torch.nn.BatchNorm2d):
                    m.running_mean.normal_(0, 0.1)
                    m.bias.normal_(0, 0.1)
                    m.running_var.uniform_(0.5, 1.5)
                    m.weight.uniform_(0.5, 1.5)
    folder = tmp_path_factory.mktemp(request.param)
    manifest = export_onnx(model, folder)
    return model, folder, manifest


@pytest.fixture(scope="module")
def shipped_export(tmp_path_factory):
    model, preprocess = clipkit.load("clipkit-synth")
    folder = tmp_path_factory.mktemp("synth")
    export_onnx(model, folder)
    return model, preprocess, folder


def test_fp32_export_matches_torch_on_tiny_models(tiny_export):
    model, folder, _ = tiny_export
    onnx_model = OnnxCLIP(folder, "fp32")
    S = model.image_size
    g = torch.Generator().manual_seed(1)
    with torch.inference_mode():
        for batch in (1, 5):  # the graph was traced at batch 2: the batch axis is dynamic
            x = torch.randn(batch, 3, S, S, generator=g)
            torch.testing.assert_close(onnx_model.encode_image(x), model.encode_image(x), atol=1e-4, rtol=1e-4)
        ids = clipkit.tokenize(PROMPTS, context_length=model.context_length)
        ref = model.encode_text(ids)
        for length in (ids.shape[1], 20, int(ids.argmax(1).max()) + 1):  # dynamic length, read out at end-of-text
            torch.testing.assert_close(onnx_model.encode_text(ids[:, :length]), ref, atol=1e-4, rtol=1e-4)
        torch.testing.assert_close(onnx_model.encode_text(ids, normalize=True), F.normalize(ref, dim=-1),
                                   atol=1e-4, rtol=1e-4)


def test_int8_export_keeps_cosine_on_tiny_models(tiny_export):
    model, folder, manifest = tiny_export
    int8 = OnnxCLIP(folder, "int8")
    x = torch.randn(8, 3, model.image_size, model.image_size, generator=torch.Generator().manual_seed(2))
    with torch.inference_mode():
        assert _cos(int8.encode_image(x), model.encode_image(x)).min() >= 0.999
    assert manifest["quantization"]["method"] == "dynamic"
    assert set(manifest["graphs"]["image"]) == {"fp32", "int8"}


def test_manifest_describes_the_export(tiny_export):
    model, folder, manifest = tiny_export
    on_disk = json.loads((folder / MANIFEST).read_text())
    assert on_disk == manifest
    assert manifest["weights_fingerprint"] == weights_fingerprint(model)
    assert manifest["opset"] == OPSET
    assert clipkit.models.CLIPConfig.from_dict(manifest["config"]) == model.config
    pre = manifest["preprocessing"]
    assert pre["image_size"] == model.image_size and pre["mean"] == list(model.config.image_mean)
    assert manifest["inputs"]["text"]["shape"] == ["batch", "length"]
    for graphs in manifest["graphs"].values():
        for name in graphs.values():
            assert (folder / name).is_file()
    import onnx

    graph = onnx.load(str(folder / "text.onnx"), load_external_data=False).graph
    dims = [d.dim_param or d.dim_value for d in graph.input[0].type.tensor_type.shape.dim]
    assert dims == ["batch", "length"]


def test_shipped_model_fp32_matches_and_int8_keeps_cosine(shipped_export):
    from clipkit.data.synth import SynthWorld

    model, preprocess, folder = shipped_export
    world = SynthWorld(seed=5, split="val")
    x = torch.stack([preprocess(world.sample(i).image) for i in range(24)])
    ids = clipkit.tokenize(PROMPTS, context_length=model.context_length)
    fp32, int8 = OnnxCLIP(folder, "fp32"), OnnxCLIP(folder, "int8")
    with torch.inference_mode():
        ref_img, ref_txt = model.encode_image(x), model.encode_text(ids)
        torch.testing.assert_close(fp32.encode_image(x), ref_img, atol=1e-4, rtol=1e-4)
        torch.testing.assert_close(fp32.encode_text(ids), ref_txt, atol=1e-4, rtol=1e-4)
        assert _cos(int8.encode_image(x), ref_img).min() >= 0.999
        assert _cos(int8.encode_text(ids), ref_txt).min() >= 0.999


def test_backend_exports_once_and_caches_by_weights(tmp_path, monkeypatch):
    monkeypatch.setenv("CLIPKIT_CACHE", str(tmp_path / "cache"))
    monkeypatch.delenv("CLIPKIT_NO_CACHE", raising=False)
    torch.manual_seed(3)
    model = create_model("tiny-vit").eval()
    fast = fast_inference(model, backend="onnxruntime", quantize="int8")
    assert isinstance(fast, OnnxCLIP) and fast.fast_path["quantize"] == "int8"
    assert fast.directory.parent == tmp_path / "cache" / "onnx"
    assert fast.directory.name.startswith(weights_fingerprint(model)[:32])
    exports = []
    monkeypatch.setattr(ort_backend, "export_onnx", lambda *a, **k: exports.append(a) or export_onnx(*a, **k))
    again = fast_inference(model, backend="onnxruntime", quantize="fp32")  # the cached graphs
    assert exports == [] and again.directory == fast.directory
    with torch.no_grad():
        model.logit_scale.add_(0.5)  # other weights: another export
    other = fast_inference(model, backend="onnxruntime")
    assert len(exports) == 1 and other.directory != fast.directory
    # cache keys of features: source weights + precision, never the torch model's own
    keys = {weights_fingerprint(m) for m in (fast, again, other, model)}
    assert len(keys) == 4
    x = torch.randn(3, 3, 32, 32)
    with torch.inference_mode():
        torch.testing.assert_close(again.encode_image(x), model.encode_image(x), atol=1e-4, rtol=1e-4)


def test_unwritable_cache_falls_back_to_a_temporary_folder_with_one_warning(tmp_path, monkeypatch):
    blocker = tmp_path / "not-a-folder"
    blocker.write_text("a file where the cache folder should be")
    monkeypatch.setenv("CLIPKIT_CACHE", str(blocker))
    monkeypatch.delenv("CLIPKIT_NO_CACHE", raising=False)
    monkeypatch.setattr(ort_backend, "_warned_fallback", False)
    model = create_model("tiny-vit").eval()
    with pytest.warns(RuntimeWarning, match="ONNX cache not writable") as record:
        fast = fast_inference(model, backend="onnxruntime")
        fast_inference(model, backend="onnxruntime")
    assert len([w for w in record if "ONNX cache" in str(w.message)]) == 1
    assert not str(fast.directory).startswith(str(blocker))
    x = torch.randn(2, 3, 32, 32)
    with torch.inference_mode():
        assert _cos(fast.encode_image(x), model.encode_image(x)).min() >= 0.999


def test_backend_in_zero_shot_and_image_encoding(tmp_path, monkeypatch):
    from clipkit.zeroshot import encode_images, encode_prompts

    monkeypatch.setenv("CLIPKIT_CACHE", str(tmp_path))
    torch.manual_seed(4)
    model = create_model("tiny-vit").eval()
    fp32 = fast_inference(model, backend="onnxruntime", quantize="fp32")
    torch.testing.assert_close(encode_prompts(fp32, PROMPTS), encode_prompts(model, PROMPTS), atol=1e-5, rtol=1e-5)
    x = torch.randn(4, 3, 32, 32)
    torch.testing.assert_close(encode_images(fp32, x).features, encode_images(model, x).features,
                               atol=1e-5, rtol=1e-5)
    with pytest.raises(ValueError, match="shape"):
        fp32.encode_image(torch.randn(2, 3, 16, 16))
    with pytest.raises(ValueError, match="context_length"):
        fp32.encode_text(torch.arange(1, 81)[None])  # end-of-text (the argmax) at position 80


def test_missing_onnxruntime_is_one_line_saying_how_to_install(monkeypatch, tmp_path, capsys):
    monkeypatch.setitem(sys.modules, "onnxruntime", None)
    model = create_model("tiny-vit")
    with pytest.raises(ImportError, match=r'pip install "clipkit\[onnx\]"'):
        fast_inference(model, backend="onnxruntime")
    with pytest.raises(ImportError, match=r'pip install "clipkit\[onnx\]"'):
        clipkit.export_onnx(model, tmp_path)
    from clipkit.cli import main

    assert main(["export", "tiny-vit", "--onnx", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and 'pip install "clipkit[onnx]"' in err[0]


def test_export_command_writes_graphs_and_json(tmp_path, capsys):
    from clipkit.cli import main

    model = create_model("tiny-rn")
    weights = clipkit.save(model, tmp_path / "tiny-rn.safetensors")
    out = tmp_path / "onnx"
    assert main(["export", str(weights), "--onnx", str(out), "--towers", "image", "--no-int8"]) == 0
    manifest = json.loads((out / MANIFEST).read_text())
    assert manifest["graphs"] == {"image": {"fp32": "image.onnx"}} and manifest["quantization"] is None
    assert manifest["weights_fingerprint"] == weights_fingerprint(model)
    assert "image fp32" in capsys.readouterr().out
    assert main(["export", str(weights), "--onnx", str(out), "--towers", "audio"]) == 2
    assert main(["export", str(tmp_path / "missing.safetensors"), "--onnx", str(out)]) == 2
    assert len(capsys.readouterr().err.strip().splitlines()) == 2  # one line per failure


def test_export_command_takes_the_shared_model_flags(tmp_path, capsys):
    from clipkit.cli import main

    model = create_model("tiny-rn")
    weights = clipkit.save(model, tmp_path / "tiny-rn.safetensors")
    out = tmp_path / "onnx"
    assert main(["export", "--checkpoint", str(weights), "--onnx", str(out), "--towers", "image", "--no-int8"]) == 0
    assert json.loads((out / MANIFEST).read_text())["weights_fingerprint"] == weights_fingerprint(model)
    capsys.readouterr()
    for argv in ([], [str(weights), "--model", "ViT-B/32"]):  # no model, or two
        assert main(["export", *argv, "--onnx", str(out)]) == 2
        assert capsys.readouterr().err.strip() == ("clipkit export: name the model once: MODEL, --model NAME "
                                                   "or --checkpoint PATH")


def test_backend_arguments_are_checked():
    model = create_model("tiny-vit")
    with pytest.raises(ValueError, match="backend"):
        fast_inference(model, backend="tensorrt")
    with pytest.raises(ValueError, match="quantize"):
        fast_inference(model, quantize="int8")  # the torch backend has no int8 path
    with pytest.raises(ValueError, match="quantize"):
        fast_inference(model, backend="onnxruntime", quantize="int4")


def test_a_model_made_under_inference_mode_exports(tmp_path):
    with torch.inference_mode():
        torch.manual_seed(5)
        model = create_model("tiny-vit").eval()
        manifest = export_onnx(model, tmp_path, towers=("image",), quantize=False)
    assert manifest["weights_fingerprint"] == weights_fingerprint(model.state_dict())
    x = torch.randn(2, 3, 32, 32)
    with torch.inference_mode():
        torch.testing.assert_close(OnnxCLIP(tmp_path, "fp32").encode_image(x), model.encode_image(x),
                                   atol=1e-4, rtol=1e-4)
