"""The attribute judge: shapes, determinism, save/load, matches() logic, input forms."""
from __future__ import annotations

import pytest
import torch
from PIL import Image

from clipkit.data.synth import COLOURS, HELDOUT_PAIRS, SHAPES
from benchmarks.judge import Judge, JudgeConfig, JudgeNet, images_to_tensor, render_labelled, train_judge

TINY = JudgeConfig(image_size=16, channels=(4, 8))


@pytest.fixture(scope="module")
def data():
    torch.set_num_threads(1)
    train = render_labelled(64, stream=900, image_size=32, config=TINY)
    val = render_labelled(27, stream=901, image_size=32, config=TINY)
    return train, val


@pytest.fixture(scope="module")
def trained(data):
    return train_judge(TINY, epochs=2, batch_size=16, seed=3, data=data)


def test_render_labelled_cycles_pairs_with_labels(data):
    images, colour, shape = data[0]
    assert images.shape == (64, 3, 32, 32) and images.dtype == torch.uint8
    assert colour.shape == shape.shape == (64,)
    # pairs in turn, all 81 of them (held-out pairs included): sample 0 is (red, circle),
    # sample 1 (red, square), ...
    assert (list(COLOURS)[colour[0]], SHAPES[shape[0]]) == ("red", "circle")
    assert (list(COLOURS)[colour[1]], SHAPES[shape[1]]) == ("red", "square")
    some = render_labelled(3, stream=5, pairs=HELDOUT_PAIRS[:3], image_size=32, config=TINY)
    got = [(list(COLOURS)[c], SHAPES[s]) for c, s in zip(some[1].tolist(), some[2].tolist())]
    assert got == list(HELDOUT_PAIRS[:3])
    again = render_labelled(3, stream=5, pairs=HELDOUT_PAIRS[:3], image_size=32, config=TINY)
    assert torch.equal(some[0], again[0])


def test_net_output_shapes_and_backward():
    torch.manual_seed(0)
    net = JudgeNet(TINY)
    x = torch.rand(5, 3, 16, 16, requires_grad=True)
    c, s = net(x)
    assert c.shape == (5, len(COLOURS)) and s.shape == (5, len(SHAPES))
    (c.sum() + s.sum()).backward()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in net.parameters())


def test_training_is_deterministic_and_reports_accuracy(data, trained):
    again = train_judge(TINY, epochs=2, batch_size=16, seed=3, data=data)
    for (k, a), b in zip(trained.judge.net.state_dict().items(), again.judge.net.state_dict().values()):
        assert torch.equal(a, b), k
    val = trained.judge.metrics_["val"]
    assert set(val) == {"colour", "shape", "joint", "n"} and val["n"] == 27
    assert 0 <= val["joint"] <= min(val["colour"], val["shape"]) <= 1


def test_predict_shapes_and_input_forms(data, trained):
    judge = trained.judge
    images = data[1][0][:4]  # uint8 (4, 3, 32, 32)
    pil = [Image.fromarray(a.permute(1, 2, 0).numpy()) for a in images]
    preds = judge.predict(pil)
    assert len(preds) == 4
    assert all(c in COLOURS and s in SHAPES for c, s in preds)
    assert judge.predict(images) == preds  # uint8 tensor
    assert judge.predict(images.float() / 255) == preds  # float tensor in [0, 1]
    assert judge.predict(pil[:1]) == preds[:1]  # batched == single
    with pytest.raises(ValueError, match="empty"):
        judge.predict([])
    with pytest.raises(TypeError, match="PIL"):
        judge.predict(["not an image"])


def test_images_to_tensor_downsamples_by_box_average():
    x = torch.zeros(1, 3, 4, 4)
    x[..., :2, :2] = 1.0
    y = images_to_tensor(x, 2)
    assert y.shape == (1, 3, 2, 2)
    torch.testing.assert_close(y[0, 0], torch.tensor([[1.0, 0.0], [0.0, 0.0]]))


def test_save_load_round_trip(tmp_path, data, trained):
    path = trained.judge.save(tmp_path / "judge.safetensors")
    loaded = Judge.load(path)
    assert loaded.config == TINY
    assert loaded.metrics_ == trained.judge.metrics_
    images = data[1][0]
    for a, b in zip(trained.judge.logits(images), loaded.logits(images)):
        torch.testing.assert_close(a, b, rtol=0, atol=0)
    with pytest.raises(FileNotFoundError, match="python -m benchmarks.judge"):
        Judge.load(tmp_path / "missing.safetensors")


def test_load_rejects_other_safetensors(tmp_path):
    from safetensors.torch import save_file

    save_file({"w": torch.zeros(2)}, tmp_path / "other.safetensors", metadata={"format": "something"})
    with pytest.raises(ValueError, match="not a clipkit judge file"):
        Judge.load(tmp_path / "other.safetensors")


def test_matches_logic_on_hand_made_predictions():
    judge = Judge(JudgeNet(TINY))
    colours, shapes = list(COLOURS), list(SHAPES)
    c = torch.tensor([colours.index("red"), colours.index("red"), colours.index("blue"), colours.index("blue")])
    s = torch.tensor([shapes.index("star"), shapes.index("circle"), shapes.index("star"), shapes.index("circle")])
    assert judge.matches_indices(c, s, "red", "star").tolist() == [True, False, False, False]
    assert judge.matches_indices(c, s, "blue", "circle").tolist() == [False, False, False, True]
    with pytest.raises(ValueError, match="unknown colour"):
        judge.matches_indices(c, s, "magenta", "star")
    with pytest.raises(ValueError, match="unknown shape"):
        judge.matches_indices(c, s, "red", "oval")


def test_matches_agrees_with_predict(data, trained):
    judge = trained.judge
    images = data[1][0]
    preds = judge.predict(images)
    colour, shape = preds[0]
    got = judge.matches(images, colour, shape)
    assert got.dtype == torch.bool and got.shape == (len(images),)
    assert got.tolist() == [p == (colour, shape) for p in preds]


def _rerank_gain_module():
    import importlib.util
    from pathlib import Path

    path = Path(__file__).resolve().parents[1] / "benchmarks" / "rerank_gain.py"
    spec = importlib.util.spec_from_file_location("rerank_gain", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_rerank_gain_estimators_equal_enumeration_of_subsets():
    """top-1 of N and oracle of N are the averages over every N-subset of the n samples."""
    import itertools

    rg = _rerank_gain_module()
    g = torch.Generator().manual_seed(1)
    matches = (torch.rand(9, generator=g) < 0.4).int().tolist()
    scores = torch.rand(9, generator=g).tolist()
    for N in (1, 2, 4, 9):
        subsets = list(itertools.combinations(range(9), N))
        best = [matches[max(sub, key=lambda i: scores[i])] for sub in subsets]
        anyof = [max(matches[i] for i in sub) for sub in subsets]
        assert rg.top1_of_n(matches, scores, N) == pytest.approx(sum(best) / len(subsets), abs=1e-12)
        assert rg.oracle_of_n(matches, N) == pytest.approx(sum(anyof) / len(subsets), abs=1e-12)
    assert rg.top1_of_n(matches, scores, 1) == pytest.approx(sum(matches) / 9)
    with pytest.raises(ValueError, match="N must lie"):
        rg.top1_of_n(matches, scores, 10)


def test_shipped_judge_names_fresh_renders():
    from benchmarks.judge import default_weights_path, load_default

    if not default_weights_path().is_file():
        pytest.skip(f"no shipped judge at {default_weights_path()}")
    judge = load_default()
    assert judge.metrics_["val"]["joint"] >= 0.97  # what it was shipped with
    images, colour, shape = render_labelled(162, stream=7, seed=12345)  # every pair twice, unseen renders
    assert judge.evaluate(images, colour, shape)["joint"] >= 0.95


def test_random_blur_is_a_normalised_gaussian_whose_width_follows_max_sigma():
    from benchmarks.judge import _random_blur

    x = torch.zeros(64, 3, 31, 31)
    x[:, :, 15, 15] = 1.0
    flat = torch.full((4, 3, 16, 16), 0.25)
    for sigma in (1.0, 3.0):
        y = _random_blur(x, torch.Generator().manual_seed(0), p=1.0, max_sigma=sigma)
        assert torch.allclose(y.sum((-1, -2)), torch.ones(64, 3), atol=1e-5)  # mass kept
        assert torch.allclose(y, y.flip(-1), atol=1e-6) and torch.allclose(y, y.transpose(-1, -2), atol=1e-6)
        # the spread (std of the blurred impulse) reaches, and stays under, max_sigma
        w = y[:, 0].sum(1)
        pos = torch.arange(31.0) - 15
        std = (w * pos ** 2).sum(1).sqrt()
        assert std.max() <= sigma + 1e-3 and std.max() > 0.8 * sigma
        assert torch.allclose(_random_blur(flat, torch.Generator(), p=1.0, max_sigma=sigma), flat)
    y = _random_blur(x, torch.Generator().manual_seed(0), p=0.0, max_sigma=3.0)
    assert torch.allclose(y, x, atol=1e-6)  # p = 0: untouched
