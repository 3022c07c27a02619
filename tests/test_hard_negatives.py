"""Hard negatives (NegCLIP): the counterfactual scenes of the synthetic world, the batch
that carries them, the loss that contrasts them (against a hand-written computation), and
a short end-to-end run of the robust recipe (robust digits + hard negatives).
The two-rank version of the loss is in tests/test_train_distributed.py."""
from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from clipkit.data import synth
from clipkit.data.negatives import NEGATIVE_KINDS, hard_negative, swap_for
from clipkit.data.synth import INVERSE_RELATION, SynthWorld
from clipkit.train import SynthPairs, TrainConfig, clip_loss, collate_pairs, load_checkpoint, train

pytestmark = pytest.mark.usefixtures("one_thread")  # see tests/conftest.py


@pytest.fixture(scope="module")
def world():
    return SynthWorld(seed=0, fonts=[synth.PILLOW_DEFAULT_FONT])


@pytest.fixture(scope="module")
def pairs(world):
    """(index, sample, negative) for the first 600 samples."""
    return [(i, s, hard_negative(world, i, s)) for i, s in ((i, world.sample(i)) for i in range(600))]


# ---------------------------------------------------------------------------
# The counterfactual scenes
# ---------------------------------------------------------------------------


def test_relation_and_count_scenes_have_a_negative_and_no_other_kind(pairs):
    for _, s, neg in pairs:
        assert (neg is not None) == (s.attrs["kind"] in NEGATIVE_KINDS)
    changes = [json.dumps(neg.attrs["change"], sort_keys=True) for _, _, neg in pairs if neg is not None]
    assert {'{"swap": "relation"}', '{"swap": "attributes"}'} <= set(changes)
    assert any("recount" in c for c in changes)


def test_relation_swap_exchanges_the_places_and_nothing_else(pairs):
    seen = 0
    for i, s, neg in pairs:
        if neg is None or neg.attrs["change"] != {"swap": "relation"}:
            continue
        seen += 1
        assert neg.attrs["relation"] == INVERSE_RELATION[s.attrs["relation"]]
        assert (neg.attrs["colours"], neg.attrs["shapes"]) == (s.attrs["colours"], s.attrs["shapes"])
        a, b = s.attrs["objects"], neg.attrs["objects"]
        for o, p in zip(a, b):  # same objects, same look; only the places moved
            assert (o["colour"], o["shape"], o["extent"], o["rotation"], o["rgb"]) == \
                   (p["colour"], p["shape"], p["extent"], p["rotation"], p["rgb"])
        assert a[0]["center"] != b[0]["center"] and a[1]["center"] != b[1]["center"]
        # the same background and noise: the pixels hold the same colours, elsewhere
        x, y = np.asarray(s.image, np.float32), np.asarray(neg.image, np.float32)
        assert not np.array_equal(x, y)
        assert np.abs(x.mean((0, 1)) - y.mean((0, 1))).max() < 1.5
        assert s.caption != neg.caption
    assert seen > 20


def test_attribute_swap_exchanges_the_colours_in_place_and_never_renders_a_heldout_pair(pairs, world):
    seen = 0
    for i, s, neg in pairs:
        if neg is None or neg.attrs["change"] != {"swap": "attributes"}:
            continue
        seen += 1
        (ca, cb), shapes = s.attrs["colours"], s.attrs["shapes"]
        assert neg.attrs["colours"] == [cb, ca] and neg.attrs["shapes"] == shapes and ca != cb
        assert neg.attrs["relation"] == s.attrs["relation"]
        assert [o["center"] for o in neg.attrs["objects"]] == [o["center"] for o in s.attrs["objects"]]
        assert all((o["colour"], o["shape"]) in world.pairs for o in neg.attrs["objects"])
    assert seen > 10
    for _, _, neg in pairs:
        if neg is not None:
            assert all(p not in synth.HELDOUT_PAIRS for p in ((o["colour"], o["shape"]) for o in neg.attrs["objects"]))


def test_count_swap_is_one_more_or_one_fewer_of_the_same_object(pairs):
    seen = 0
    for _, s, neg in pairs:
        if neg is None or "recount" not in neg.attrs["change"]:
            continue
        seen += 1
        assert abs(neg.attrs["count"] - s.attrs["count"]) == 1 and 1 <= neg.attrs["count"] <= 4
        assert len(neg.attrs["objects"]) == neg.attrs["count"]
        assert (neg.attrs["colour"], neg.attrs["shape"]) == (s.attrs["colour"], s.attrs["shape"])
    assert seen > 40


def test_negatives_are_deterministic_and_change_only_by_index(world):
    for i in range(40):
        a, b = hard_negative(world, i), hard_negative(SynthWorld(seed=0, fonts=[synth.PILLOW_DEFAULT_FONT]), i)
        assert (a is None) == (b is None)
        if a is not None:
            assert np.array_equal(np.asarray(a.image), np.asarray(b.image)) and a.caption == b.caption
            assert swap_for(world, i, world.sample(i).attrs) == a.attrs["change"]
    with pytest.raises(ValueError, match="swap"):
        world.render("relation", world.rng(0), swap="colours")


# ---------------------------------------------------------------------------
# The batch and the loss
# ---------------------------------------------------------------------------


def _tokenize(captions, context_length, truncate):
    """A stand-in tokenizer: start, one id per character, end-of-text (the largest id)."""
    ids = torch.zeros(len(captions), context_length, dtype=torch.long)
    for k, c in enumerate(captions):
        toks = [998] + [1 + ord(ch) % 900 for ch in c][:context_length - 2] + [999]
        ids[k, :len(toks)] = torch.tensor(toks)
    return ids


def test_batch_carries_each_relation_and_count_scenes_negative_after_the_pairs(world):
    data = SynthPairs(world, synth.to_tensor, _tokenize, 40, hard_negatives=True)
    indices = list(range(10))
    images, ids = collate_pairs([data[i] for i in indices])
    samples = [world.sample(i) for i in indices]
    negatives = [hard_negative(world, i) for i in indices]
    expected = [s for s in samples] + [n for n in negatives if n is not None]
    assert 0 < sum(n is not None for n in negatives) < len(indices)
    assert images.shape[0] == ids.shape[0] == len(expected)
    for row, s in enumerate(expected):
        assert torch.equal(images[row], synth.to_tensor(s.image))
        assert torch.equal(ids[row], _tokenize([s.caption], 40, True)[0, :ids.shape[1]])
    plain = SynthPairs(world, synth.to_tensor, _tokenize, 40)
    assert collate_pairs([plain[i] for i in indices])[0].shape[0] == len(indices)


def test_loss_contrasts_every_image_with_every_caption_negatives_included():
    """3 pairs, of which pairs 0 and 2 bring a hard negative (rows 3 and 4): the loss is the
    mean, over the 5 images and the 5 captions, of -log softmax of the right match among
    all 5 of the other side, written out with math.exp."""
    g = torch.Generator().manual_seed(3)
    img, txt = torch.randn(5, 8, generator=g, dtype=torch.float64), torch.randn(5, 8, generator=g, dtype=torch.float64)
    scale = 7.0
    out = clip_loss(img, txt, torch.tensor(scale, dtype=torch.float64), uneven=True)
    a = F.normalize(img, dim=-1).tolist()
    b = F.normalize(txt, dim=-1).tolist()
    cos = [[sum(x * y for x, y in zip(a[i], b[j])) for j in range(5)] for i in range(5)]
    terms = []
    for i in range(5):  # image i: its caption among the 3 captions and the 2 negative captions
        terms.append(-math.log(math.exp(scale * cos[i][i]) / sum(math.exp(scale * cos[i][j]) for j in range(5))))
    for j in range(5):  # caption j: its image among the 3 images and the 2 swapped scenes
        terms.append(-math.log(math.exp(scale * cos[j][j]) / sum(math.exp(scale * cos[i][j]) for i in range(5))))
    assert float(out.loss) == pytest.approx(sum(terms) / 10, rel=1e-12)
    without = clip_loss(img[:3], txt[:3], torch.tensor(scale, dtype=torch.float64))
    assert float(without.loss) != pytest.approx(float(out.loss), rel=1e-3)  # the negatives count
    assert out.n == 5


# ---------------------------------------------------------------------------
# End to end: the robust recipe on a tiny model
# ---------------------------------------------------------------------------


def test_short_run_with_robust_digits_and_hard_negatives(tmp_path):
    """30 steps of tiny-vit on the robust world with hard negatives: it runs, logs, learns
    something, evaluates robust digits and relations, saves its settings, and resumes."""
    mix = {"shape": 0.2, "count": 0.15, "relation": 0.25, "digit": 0.4}
    cfg = TrainConfig(config="tiny-vit", steps=30, batch_size=16, lr=2e-3, warmup=3, eval_size=20,
                      log_every=10, progress=False, out=str(tmp_path / "run"), digit_style="robust",
                      mix=mix, hard_negatives=True, stop_at=20)
    train(cfg)
    saved = load_checkpoint(tmp_path / "run" / "checkpoint.pt")["train_config"]
    assert (saved["digit_style"], saved["mix"], saved["hard_negatives"]) == ("robust", mix, True)
    from clipkit.commands.train import build_parser, config_from_args

    resumed = config_from_args(build_parser().parse_args(["--out", str(tmp_path / "run"), "--resume",
                                                          "--stop-at", "30", "--no-progress"]))
    assert (resumed.digit_style, resumed.mix, resumed.hard_negatives) == ("robust", mix, True)
    train(resumed, resume=True)
    log = [json.loads(line) for line in (tmp_path / "run" / "log.jsonl").read_text().splitlines()]
    steps = [r for r in log if "loss" in r]
    assert [r["step"] for r in steps] == [10, 20, 30]
    assert all(math.isfinite(r["loss"]) for r in steps) and steps[-1]["loss"] < steps[0]["loss"]
    evals = [r["eval"] for r in log if "eval" in r]
    assert evals and set(evals[-1]) == {"colour_shape", "digits", "digits_robust", "relation"}
    assert (tmp_path / "run" / "model.safetensors").is_file()


def test_cli_flags_for_the_world_and_hard_negatives():
    from clipkit.commands.train import DIGIT_STYLES, build_parser, config_from_args

    assert DIGIT_STYLES == synth.DIGIT_STYLES
    args = build_parser().parse_args(["--digit-style", "robust", "--hard-negatives",
                                      "--mix", "shape=0.2,count=0.15,relation=0.25,digit=0.4"])
    cfg = config_from_args(args)
    assert (cfg.digit_style, cfg.hard_negatives) == ("robust", True)
    assert cfg.mix == {"shape": 0.2, "count": 0.15, "relation": 0.25, "digit": 0.4}
    default = config_from_args(build_parser().parse_args([]))
    assert (default.digit_style, default.mix, default.hard_negatives) == ("classic", None, False)
    for bad in (["--mix", "dragons=1"], ["--mix", "shape"], ["--digit-style", "fancy"]):
        with pytest.raises(SystemExit):
            build_parser().parse_args(bad)
