"""Reranker: scores are cosines of normalized embeddings; ordering; hook; bad input."""
from __future__ import annotations

import pytest
import torch
from PIL import Image

from clipkit.models import create_model
from clipkit.rerank import Reranker, reranked
from clipkit.transforms import ImageLoadError, image_transform


@pytest.fixture(scope="module")
def reranker():
    torch.manual_seed(0)
    model = create_model("tiny-vit").eval()
    return Reranker((model, image_transform(model.config.vision.image_size)))


def _saved(images, folder):
    """The images written as PNGs into `folder`; their paths, in order."""
    paths = []
    for i, im in enumerate(images):
        paths.append(folder / f"{i}.png")
        im.save(paths[-1])
    return paths


def _images(n, seed=0):
    g = torch.Generator().manual_seed(seed)
    return [Image.fromarray((torch.rand(40, 48, 3, generator=g) * 255).byte().numpy()) for _ in range(n)]


def test_scores_equal_hand_computed_cosines(reranker):
    images = _images(5)
    caption = "a red circle"
    model, pre = reranker.model, reranker.preprocess
    with torch.no_grad():
        img = model.encode_image(torch.stack([pre(i) for i in images]))
        txt = model.encode_text(reranker.tokenizer([caption]))
    expected = torch.nn.functional.cosine_similarity(img, txt.expand_as(img), dim=1)
    got = reranker.score(images, caption)
    assert got.shape == (5,)
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-5)
    matrix = reranker.score(images, [caption, "two blue squares"])
    assert matrix.shape == (5, 2)
    torch.testing.assert_close(matrix[:, 0], got, atol=1e-6, rtol=1e-6)


def test_rerank_returns_top_k_sorted(reranker):
    images = _images(8, seed=1)
    result = reranker.rerank(images, "a green pentagon", top_k=3)
    all_scores = reranker.score(images, "a green pentagon")
    assert len(result) == 3
    assert result.scores == sorted(result.scores, reverse=True)
    assert result.scores[0] == pytest.approx(float(all_scores.max()), abs=1e-6)
    assert [images[i] for i in result.indices] == result.images


def test_ties_keep_input_order(reranker):
    img = _images(1, seed=2)[0]
    same = [img, img.copy(), img.copy(), img.copy()]
    result = reranker.rerank(same, "a cat", top_k=4)
    assert result.indices == [0, 1, 2, 3]


def test_several_captions_at_once(reranker):
    groups = [_images(3, seed=3), _images(4, seed=4)]
    results = reranker.rerank(groups, ["a red circle", "a blue square"], top_k=2)
    assert [r.caption for r in results] == ["a red circle", "a blue square"]
    assert all(len(r) == 2 for r in results)
    with pytest.raises(ValueError, match="2 captions but 1 image groups"):
        reranker.rerank(groups[:1], ["a", "b"], top_k=1)


def test_tensor_and_path_inputs(reranker, tmp_path):
    images = _images(2, seed=5)
    paths = _saved(images, tmp_path)
    from_paths = reranker.score(paths, "x")
    from_tensor = reranker.score(torch.stack([reranker.preprocess(i) for i in images]), "x")
    torch.testing.assert_close(from_paths, from_tensor)


def test_bad_input(reranker, tmp_path):
    with pytest.raises(ValueError, match="empty"):
        reranker.score([], "x")
    everything = reranker.rerank(_images(2), "x", top_k=3)  # more than given: all of them, ranked
    assert len(everything) == 2 and everything.scores == sorted(everything.scores, reverse=True)
    assert sorted(everything.indices) == [0, 1]
    with pytest.raises(ValueError, match="positive integer"):
        reranker.rerank(_images(2), "x", top_k=0)
    bad = tmp_path / "broken.png"
    bad.write_bytes(b"not a png")
    with pytest.raises(ImageLoadError, match="broken.png"):
        reranker.score([bad], "x")
    with pytest.raises(ValueError):
        reranker.score(torch.zeros(2, 3, 7, 7), "x")


def test_wrapper_with_stub_generator(reranker):
    calls = []

    def stub(prompt, n):
        calls.append((prompt, n))
        return _images(n, seed=6)

    best = reranked(stub, reranker, n=6, top_k=2)("a yellow star")
    assert calls == [("a yellow star", 6)]
    assert len(best) == 2 and best.scores[0] >= best.scores[1]
    expected = reranker.rerank(_images(6, seed=6), "a yellow star", top_k=2)
    assert best.indices == expected.indices

    class Output:  # like a diffusers pipeline output
        def __init__(self, images):
            self.images = images

    one_at_a_time = reranked(lambda prompt: Output(_images(1, seed=len(calls))), reranker, n=3, top_k=1)
    assert len(one_at_a_time("a cat")) == 1
    with pytest.raises(ValueError, match="larger than n"):
        reranked(stub, reranker, n=2, top_k=3)


def test_skip_unreadable_reports_and_ranks_the_rest(reranker, tmp_path):
    paths = _saved(_images(3, seed=9), tmp_path)
    bad = tmp_path / "truncated.png"
    bad.write_bytes(paths[0].read_bytes()[:40])
    mixed = [paths[0], bad, paths[1], paths[2]]
    result = reranker.rerank(mixed, "a red circle", top_k=None, skip_unreadable=True)
    assert [w for w, _ in result.skipped] == [str(bad)]
    assert sorted(result.indices) == [0, 2, 3]  # positions in the input, the bad one left out
    expected = reranker.rerank(paths, "a red circle", top_k=3)
    assert result.scores == pytest.approx(expected.scores, abs=1e-6)
    assert [mixed[i] for i in result.indices] == [paths[i] for i in expected.indices]
    with pytest.raises(ImageLoadError, match="truncated.png"):
        reranker.rerank(mixed, "a red circle", top_k=2)


def test_ids_longer_than_the_context_are_accepted_when_the_rest_is_padding(reranker):
    model = reranker.model
    ctx = model.config.text.context_length
    ids = reranker.tokenizer(["a red circle"], context_length=ctx + 20)  # (1, ctx + 20), zero padded
    torch.testing.assert_close(reranker.encode_captions(text_ids=ids), reranker.encode_captions(["a red circle"]))
    long = reranker.tokenizer([" ".join(["red"] * (ctx + 5))], context_length=ctx + 20, truncate=True)
    with pytest.raises(ValueError, match=f"more than the text tower's context of {ctx}"):
        model.encode_text(long)
