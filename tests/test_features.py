"""The one cached feature path, clipkit.encode.extract_features: the features the two
older paths gave (bench's chunked loader, probe's encode_images), the chunk cache (hits,
keys, labels of any kind), workers, and inputs that cannot be sliced."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from clipkit.encode import encode_images, extract_features, read_chunk
from clipkit.models import create_model


@pytest.fixture(scope="module")
def tiny():
    torch.manual_seed(0)
    return create_model("tiny-vit").eval()


def _folder(root, n=7):
    rng = np.random.default_rng(0)
    for c in ("a", "b", "c"):
        (root / c).mkdir(parents=True)
        for i in range(n):
            Image.fromarray(rng.integers(0, 256, (40, 40, 3), dtype=np.uint8)).save(root / c / f"{i}.png")
    (root / "b" / "bad.png").write_bytes(b"not a png")
    return root


def _counting(monkeypatch, model):
    calls = []
    original = model.encode_image
    monkeypatch.setattr(model, "encode_image", lambda x, *a, **k: calls.append(len(x)) or original(x, *a, **k))
    return calls, original


@torch.inference_mode()
def _old_bench_features(model, data, batch_size, chunk_size):
    """What bench.extract_features computed: per chunk, DataLoader batches of positions with
    the unreadable items dropped, each encoded with normalize=True."""
    from clipkit.data.datasets import Indexed, collate_skipping

    feats, labels, skipped = [], [], []
    for start in range(0, len(data), chunk_size):
        loader = torch.utils.data.DataLoader(Indexed(data, range(start, min(start + chunk_size, len(data)))),
                                             batch_size=batch_size, collate_fn=collate_skipping)
        for _, images, ys, bad in loader:
            skipped += [(s.path, s.reason) for s in bad]
            if images is not None:
                feats.append(model.encode_image(images, normalize=True).float())
                labels += ys.tolist()
    return torch.cat(feats), labels, skipped


def test_unified_path_gives_the_old_features_and_reads_its_cache(tiny, tmp_path, monkeypatch):
    from clipkit.data.datasets import image_folder
    from clipkit.transforms import image_transform

    tf = image_transform(tiny.config.vision.image_size)
    data = image_folder(_folder(tmp_path / "d"), tf)  # 22 files, one unreadable
    old, old_labels, old_skipped = _old_bench_features(tiny, data, batch_size=4, chunk_size=8)
    calls, _ = _counting(monkeypatch, tiny)
    opts = dict(batch_size=4, chunk_size=8, skip_unreadable=True, progress=False, cache_key="folder-v1")
    first = extract_features(tiny, data, **opts)
    assert torch.equal(first.features, old) and first.labels == old_labels and first.skipped == old_skipped
    assert first.encoded == 22 and len(first.indices) == 21
    assert len(list((tmp_path / "cache" / "features").rglob("chunk_*.safetensors"))) == 3
    n_calls = len(calls)
    again = extract_features(tiny, data, **opts)
    assert len(calls) == n_calls and again.encoded == 0  # every chunk from the cache
    assert torch.equal(again.features, old) and again.labels == old_labels and again.skipped == old_skipped
    assert again.indices == first.indices
    # the uncached adapter (what probe.extract_features returned without a key), batched the same way
    paths = [p for p, _ in data.samples]
    plain = encode_images(tiny, paths, preprocess=tf, batch_size=4, skip_unreadable=True, progress=False)
    unified = extract_features(tiny, paths, preprocess=tf, batch_size=4, skip_unreadable=True, progress=False)
    assert torch.equal(unified.features, plain.features) and unified.indices == plain.indices
    assert unified.skipped == plain.skipped and unified.labels is None
    torch.testing.assert_close(plain.features, old)  # the same images, decoded by the other reader
    # DataLoader workers read the items: the same features
    with_workers = extract_features(tiny, data, **{**opts, "cache_key": None}, workers=1)
    assert torch.equal(with_workers.features, old) and with_workers.skipped == old_skipped


def test_cache_is_keyed_by_key_weights_and_batches_like_encode_images(monkeypatch):
    torch.manual_seed(0)
    model = create_model("tiny-vit").eval()
    calls, original = _counting(monkeypatch, model)
    images = torch.randn(7, 3, 32, 32)

    class Pairs(torch.utils.data.Dataset):
        def __len__(self):
            return 7

        def __getitem__(self, i):
            return images[i], int(i % 3)

    first = extract_features(model, Pairs(), batch_size=3, cache_key="pairs-v1")
    assert calls == [3, 3, 1]
    assert first.labels == [0, 1, 2, 0, 1, 2, 0] and first.features.shape == (7, 32)
    with torch.no_grad():
        expected = torch.nn.functional.normalize(original(images), dim=-1)
    torch.testing.assert_close(first.features, expected, rtol=1e-5, atol=1e-5)

    again = extract_features(model, Pairs(), batch_size=3, cache_key="pairs-v1")
    assert calls == [3, 3, 1]  # from the cache
    assert torch.equal(again.features, first.features) and again.labels == first.labels
    extract_features(model, Pairs(), batch_size=4, cache_key="pairs-v2")
    assert calls == [3, 3, 1, 4, 3]  # another key: encoded again
    extract_features(model, Pairs(), batch_size=7, cache_key="pairs-v1", cache=False)
    assert calls[-1] == 7
    extract_features(model, Pairs(), batch_size=7)  # no key: nothing cached
    assert calls[-1] == 7 and len(calls) == 7
    with torch.no_grad():
        model.visual.ln_post.bias.add_(0.1)  # other weights: the old entry no longer matches
    changed = extract_features(model, Pairs(), batch_size=7, cache_key="pairs-v1")
    assert len(calls) == 8 and not torch.equal(changed.features, first.features)


def test_any_labels_and_unsliceable_inputs_go_through_the_cache(tiny, tmp_path):
    images = torch.randn(5, 3, 32, 32)
    named = [(images[i], ["cat", "dog"][i % 2]) for i in range(5)]
    first = extract_features(tiny, named, batch_size=2, chunk_size=2, cache_key="named")
    again = extract_features(tiny, named, batch_size=2, chunk_size=2, cache_key="named")
    assert again.encoded == 0 and again.labels == first.labels == ["cat", "dog", "cat", "dog", "cat"]
    assert torch.equal(again.features, first.features)
    chunk = sorted((tmp_path / "cache" / "features").rglob("chunk_*"))[0]
    assert read_chunk(chunk, rows=2, dim=32).labels == ["cat", "dog"]

    loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(images), batch_size=2)
    whole = extract_features(tiny, loader, cache_key="loader")
    assert whole.indices == list(range(5)) and whole.labels is None
    assert torch.equal(whole.features, encode_images(tiny, images).features)
    cached = extract_features(tiny, loader, cache_key="loader")
    assert cached.encoded == 0 and torch.equal(cached.features, whole.features)
    one = extract_features(tiny, images[0])  # a single image
    assert one.indices == [0] and one.features.shape == (1, 32)
    torch.testing.assert_close(one.features, whole.features[:1])  # a batch of 1: equal up to rounding
