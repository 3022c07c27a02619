"""`--fast bf16|int8` on bench, classify and rerank: the flag, and the same answers as fp32."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import clipkit
from clipkit.cli import build_parser, main

pytest.importorskip("onnxruntime")


@pytest.fixture(autouse=True)
def _cache(tmp_path, monkeypatch):
    monkeypatch.setenv("CLIPKIT_CACHE", str(tmp_path / "cache"))


@pytest.fixture(scope="module")
def shipped():
    return clipkit.load("clipkit-synth")


@pytest.fixture
def scene_files(tmp_path):
    from clipkit.data.synth import SynthWorld

    world = SynthWorld(seed=11, split="val")
    paths = []
    for i in range(6):
        path = tmp_path / f"scene{i}.png"
        world.sample(i).image.save(path)
        paths.append(str(path))
    return paths


def test_bench_fast_flag_keeps_a_bare_fast_meaning_bf16():
    parser = build_parser()
    base = ["bench", "--dataset", "mnist"]
    assert parser.parse_args(base).fast is None
    assert parser.parse_args(base + ["--fast"]).fast == "bf16"  # the old boolean flag
    assert parser.parse_args(base + ["--fast", "int8"]).fast == "int8"
    assert parser.parse_args(base + ["--fast", "bf16"]).fast == "bf16"
    with pytest.raises(SystemExit):
        parser.parse_args(base + ["--fast", "int4"])
    for cmd in (["classify", "a.png", "--labels", "x"], ["rerank", "a.png", "--caption", "x"]):
        assert parser.parse_args(cmd + ["--fast", "int8"]).fast == "int8"
        assert parser.parse_args(cmd).fast is None


def test_bench_int8_uses_onnxruntime_for_images_and_the_fp32_head(tmp_path):
    from clipkit.evaluation import bench
    from clipkit.data.datasets import mnist_idx
    from clipkit.models import create_model, fast_inference
    from clipkit.templates import load_templates
    from clipkit.transforms import image_transform
    from clipkit.zeroshot import build_head
    from tests.test_datasets import write_idx

    rng = np.random.default_rng(0)
    write_idx(tmp_path / "t10k-images-idx3-ubyte", rng.integers(0, 256, (21, 28, 28), dtype=np.uint8), gz=True)
    write_idx(tmp_path / "t10k-labels-idx1-ubyte", (np.arange(21) % 10).astype(np.uint8), gz=True)
    torch.manual_seed(0)
    tiny = create_model("tiny-vit").eval()
    result = bench.run_benchmark(dataset="mnist", root=str(tmp_path), model=tiny, templates="mnist",
                                 batch_size=8, progress=False, chunk_size=16, fast="int8")
    assert result["fast_path"]["backend"] == "onnxruntime" and result["fast_path"]["quantize"] == "int8"
    data = mnist_idx(tmp_path, transform=image_transform(tiny.config.vision.image_size))
    x = torch.stack([data[i][0] for i in range(len(data))])
    with torch.inference_mode():
        feats = fast_inference(tiny, backend="onnxruntime").encode_image(x, normalize=True)
        pred = build_head(tiny, data.classes, load_templates("mnist"), cache=False)(feats).argmax(1)
    acc = float((pred == torch.as_tensor(data.labels)).double().mean())
    assert result["metrics"]["acc1"] == pytest.approx(acc, abs=1e-12)


def test_classify_int8_agrees_with_fp32(scene_files, capsys):
    labels = ["red circle", "blue square", "green triangle", "yellow star", "purple cross"]
    first, probs = {}, {}
    for fast in (None, "int8", "bf16"):
        argv = ["classify", *scene_files, "--labels", *labels, "--json", "--top", "2", "--quiet"]
        assert main(argv + (["--fast", fast] if fast else [])) == 0
        results = json.loads(capsys.readouterr().out)["results"]
        first[fast] = [r["top"][0]["label"] for r in results]
        probs[fast] = np.array([r["top"][0]["probability"] for r in results])
    assert first["int8"] == first[None] and first["bf16"] == first[None]
    # logits are 100 x cosine: int8's ~4e-4 cosine changes move probabilities by a few points
    assert np.abs(probs["int8"] - probs[None]).max() < 0.1


def test_rerank_int8_scores_match_fp32(shipped, scene_files):
    from clipkit.models.ort import OnnxCLIP
    from clipkit.rerank import Reranker

    ref = Reranker(shipped)
    fast = Reranker(shipped, fast="int8")
    assert isinstance(fast.image_model, OnnxCLIP) and fast.model is ref.model  # captions stay on fp32
    a = ref.score(scene_files, "a red circle")
    b = fast.score(scene_files, "a red circle")
    assert torch.allclose(a, b, atol=5e-3) and a.argmax() == b.argmax()  # cosine scores, int8 images
    cos = F.cosine_similarity(ref.encode_images(scene_files), fast.encode_images(scene_files), dim=-1)
    assert cos.min() >= 0.999


def test_rerank_command_with_fast_int8(scene_files, capsys):
    assert main(["rerank", *scene_files, "--caption", "a red circle", "--top", "3", "--json", "--fast", "int8"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert [r["rank"] for r in out["results"]] == [1, 2, 3]
