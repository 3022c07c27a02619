"""Benchmark engine: metrics by hand, zero-shot on IDX files, caching and resume,
bad files, and 2 processes (torchrun, gloo) == 1 process."""
from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pytest
import torch

from clipkit.evaluation import bench
from clipkit.models import create_model
from tests.test_datasets import write_idx


@pytest.fixture(autouse=True)
def _cache(tmp_path, monkeypatch):
    monkeypatch.setenv("CLIPKIT_CACHE", str(tmp_path / "cache"))


@pytest.fixture(scope="module")
def tiny():
    torch.manual_seed(0)
    return create_model("tiny-vit").eval()


@pytest.fixture
def mnist_root(tmp_path):
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, size=(37, 28, 28), dtype=np.uint8)
    labels = (np.arange(37) % 10).astype(np.uint8)
    write_idx(tmp_path / "t10k-images-idx3-ubyte", images, gz=True)
    write_idx(tmp_path / "t10k-labels-idx1-ubyte", labels, gz=True)
    return tmp_path


def test_metrics_match_hand_computation():
    logits = torch.tensor([
        [0.9, 0.1, 0.0, -1.0],   # true 0, pred 0
        [0.2, 0.5, 0.3, -1.0],   # true 0, pred 1
        [0.1, 0.2, 0.7, -1.0],   # true 1, pred 2
        [0.0, 0.6, 0.4, -1.0],   # true 1, pred 1
        [0.3, 0.3, 0.4, -1.0],   # true 2, pred 2
    ])
    labels = torch.tensor([0, 0, 1, 1, 2])
    m = bench.classification_metrics(logits, labels, num_classes=4)
    assert m["acc1"] == pytest.approx(3 / 5)
    assert m["acc5"] == 1.0  # 4 classes: top-4 always holds the label
    # per-class recall: class 0 1/2, class 1 1/2, class 2 1/1; class 3 has no images
    assert m["per_class_accuracy"][:3] == pytest.approx([0.5, 0.5, 1.0])
    assert m["per_class_accuracy"][3] is None
    assert m["mean_per_class_recall"] == pytest.approx((0.5 + 0.5 + 1.0) / 3)
    assert m["confusion"][0] == [1, 1, 0, 0] and m["confusion"][1] == [0, 1, 1, 0]
    top2 = bench.classification_metrics(logits[:4, :2], labels[:4], num_classes=2)
    assert top2["acc5"] == 1.0
    with pytest.raises(ValueError, match="4 classes"):
        bench.classification_metrics(logits[:, :3], labels, num_classes=4)


def test_zero_shot_run_equals_hand_computation(tiny, mnist_root, tmp_path):
    out = tmp_path / "r.json"
    result = bench.run_benchmark(dataset="mnist", root=str(mnist_root), model=tiny, templates="mnist",
                                 batch_size=8, out=out, progress=False, chunk_size=16)
    on_disk = json.loads(out.read_text())
    assert on_disk["metrics"] == result["metrics"]
    assert set(result["metrics"]) == {"acc1", "acc5", "mean_per_class_recall"}
    assert result["n_evaluated"] == 37 and result["skipped"] == []
    assert (tmp_path / "r.confusion.png").stat().st_size > 0
    assert {"torch", "clipkit"} <= set(result["versions"])

    # by hand: preprocess each digit, encode, head from the same templates, argmax
    from clipkit.data.datasets import mnist_idx
    from clipkit.templates import load_templates
    from clipkit.transforms import image_transform
    from clipkit.zeroshot import build_head

    data = mnist_idx(mnist_root, transform=image_transform(tiny.config.vision.image_size))
    with torch.no_grad():
        feats = tiny.encode_image(torch.stack([data[i][0] for i in range(len(data))]), normalize=True)
        head = build_head(tiny, data.classes, load_templates("mnist"), cache=False)
        pred = head(feats).argmax(1)
    acc = float((pred == torch.as_tensor(data.labels)).double().mean())
    assert result["metrics"]["acc1"] == pytest.approx(acc, abs=1e-12)


def test_features_cached_and_resume(tiny, mnist_root):
    from clipkit.data.datasets import mnist_idx
    from clipkit.transforms import image_transform

    from clipkit.encode import extract_features

    data = mnist_idx(mnist_root, transform=image_transform(tiny.config.vision.image_size))
    opts = dict(batch_size=8, progress=False, chunk_size=10, cache_key=f"{data.key()}|{data.transform!r}")
    straight = extract_features(tiny, data, cache=False, **opts)
    with pytest.raises(InterruptedError):
        extract_features(tiny, data, stop_after_chunks=2, **opts)
    resumed = extract_features(tiny, data, **opts)
    assert resumed.encoded == 37 - 20  # the first two chunks came from the cache
    assert torch.equal(resumed.features, straight.features)
    assert resumed.labels == straight.labels and resumed.indices == straight.indices == list(range(37))
    again = extract_features(tiny, data, **opts)
    assert again.encoded == 0 and torch.equal(again.features, straight.features)


def test_corrupt_files_are_skipped_and_reported(tiny, tmp_path):
    from PIL import Image

    root = tmp_path / "folder"
    for cls in ("cat", "dog"):
        (root / cls).mkdir(parents=True)
        for k in range(3):
            Image.new("RGB", (20, 20), (k * 50, 0, 0)).save(root / cls / f"{k}.png")
    (root / "cat" / "bad.jpg").write_bytes(b"\xff\xd8\xff\xe0 truncated")
    (root / "dog" / "readme.txt").write_text("hello")
    result = bench.run_benchmark(dataset="folder", root=str(root), model=tiny, batch_size=4, progress=False)
    # readme.txt is not an image file: not counted, not "skipped"; bad.jpg is an unreadable image
    assert result["n_images"] == 7 and result["n_evaluated"] == 6
    assert [os.path.basename(s["path"]) for s in result["skipped"]] == ["bad.jpg"]


def test_nothing_readable_raises_with_the_skipped_files(tiny, tmp_path):
    from clipkit.errors import NothingReadError

    root = tmp_path / "folder"
    (root / "cat").mkdir(parents=True)
    (root / "cat" / "bad.png").write_bytes(b"\x89PNG not really")
    with pytest.raises(NothingReadError, match="none of the 1 images") as e:
        bench.run_benchmark(dataset="folder", root=str(root), model=tiny, progress=False)
    assert isinstance(e.value, ValueError)  # callers catching ValueError keep working
    assert [os.path.basename(where) for where, _ in e.value.skipped] == ["bad.png"]


def test_bad_root_fails_at_once_with_layouts(tiny, tmp_path):
    from clipkit.data.datasets import DatasetLayoutError

    with pytest.raises(DatasetLayoutError, match="Kaggle"):
        bench.run_benchmark(dataset="imagenet", root=str(tmp_path), model=tiny)


@pytest.mark.slow
def test_two_processes_equal_one(tiny, mnist_root, tmp_path):
    """torchrun with 2 CPU processes on gloo gives the same results as 1 process."""
    from clipkit.checkpoints import save

    ckpt = tmp_path / "tiny.safetensors"
    save(tiny, ckpt)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": os.getcwd()}
    outs = {}
    for n in (1, 2):
        out = tmp_path / f"r{n}.json"
        cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", str(n),
               "--master_addr", "127.0.0.1", "--master_port", str(29500 + n + os.getpid() % 500),
               "-m", "clipkit", "bench", "--dataset", "mnist", "--root", str(mnist_root),
               "--checkpoint", str(ckpt), "--templates", "mnist", "--batch-size", "8", "--chunk-size", "8",
               "--out", str(out), "--no-cache", "--quiet"]
        proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=240)
        assert proc.returncode == 0, proc.stderr[-3000:]
        outs[n] = json.loads(out.read_text())
    assert outs[2]["world_size"] == 2 and outs[1]["world_size"] == 1
    assert outs[1]["metrics"] == outs[2]["metrics"]
    assert outs[1]["per_class_accuracy"] == outs[2]["per_class_accuracy"]


@pytest.mark.slow
def test_two_processes_with_nothing_readable_both_exit_1(tiny, tmp_path):
    """No rank waits at a barrier rank 0 will never reach: both say so and exit 1."""
    from clipkit.checkpoints import save

    ckpt = tmp_path / "tiny.safetensors"
    save(tiny, ckpt)
    root = tmp_path / "folder"
    for cls in ("cat", "dog"):
        (root / cls).mkdir(parents=True)
        for k in range(3):
            (root / cls / f"{k}.png").write_bytes(b"\x89PNG not really")
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": os.getcwd()}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2",
           "--master_addr", "127.0.0.1", "--master_port", str(29000 + os.getpid() % 400),
           "-m", "clipkit", "bench", "--dataset", "folder", "--root", str(root), "--checkpoint", str(ckpt),
           "--batch-size", "2", "--chunk-size", "2", "--no-cache", "--quiet"]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=240)
    assert proc.returncode == 1, proc.stderr[-3000:]
    # no rank hung at a barrier or lost its peer (torchrun's own launcher traceback, which
    # reports the child's exit status, is not ours)
    assert "gloo" not in proc.stderr and "RuntimeError" not in proc.stderr, proc.stderr[-3000:]
    # once the first rank exits, torchrun stops the other: at least one says why
    assert "clipkit bench: none of the 6 images" in proc.stderr


def test_fast_path_run_uses_bf16_image_features_and_an_fp32_head(tiny, mnist_root):
    from clipkit.data.datasets import mnist_idx
    from clipkit.models import fast_inference
    from clipkit.templates import load_templates
    from clipkit.transforms import image_transform
    from clipkit.zeroshot import build_head

    result = bench.run_benchmark(dataset="mnist", root=str(mnist_root), model=tiny, templates="mnist",
                                 batch_size=8, progress=False, chunk_size=16, fast=True)
    assert result["fast_path"] == {"dtype": "bfloat16", "channels_last": False}
    data = mnist_idx(mnist_root, transform=image_transform(tiny.config.vision.image_size))
    with torch.no_grad():
        x = torch.stack([data[i][0] for i in range(len(data))])
        feats = fast_inference(tiny).encode_image(x, normalize=True).float()
        head = build_head(tiny, data.classes, load_templates("mnist"), cache=False)
        pred = head(feats).argmax(1)
    acc = float((pred == torch.as_tensor(data.labels)).double().mean())
    assert result["metrics"]["acc1"] == pytest.approx(acc, abs=1e-12)
    assert all(p.dtype == torch.float32 for p in tiny.parameters())  # the caller's model is untouched


def test_names_the_one_feature_cache_replaced_say_where_they_went():
    from clipkit.evaluation import bench

    with pytest.raises(AttributeError, match=r"extract_features is gone: use clipkit.encode.extract_features"):
        bench.extract_features  # noqa: B018
    with pytest.raises(AttributeError, match="has no attribute 'nonsense'"):
        bench.nonsense  # noqa: B018
