"""Contrastive training: the loss, temperature clamp, schedule, AdamW groups, bf16,
checkpoints, exact resume, and a short run that learns."""
from __future__ import annotations

import dataclasses
import json
import math

import pytest
import torch
import torch.nn.functional as F

from clipkit.models import create_model, get_config
from clipkit.train import (
    MAX_LOGIT_SCALE, ContrastiveModel, GlobalBatchSampler, TrainConfig, WarmupCosine,
    atomic_save, autocast_context, clip_loss, collate_pairs, forward_loss, load_checkpoint,
    make_optimizer, make_scheduler, param_groups, train, train_step,
)


pytestmark = pytest.mark.usefixtures("one_thread")  # see tests/conftest.py


def _batch(n=8, image_size=32, context=10, seed=0, vocab=49408):
    """Random images and ids: start (vocab - 2), random tokens, end-of-text (the largest id)."""
    g = torch.Generator().manual_seed(seed)
    images = torch.randn(n, 3, image_size, image_size, generator=g)
    ids = torch.zeros(n, context, dtype=torch.long)
    ids[:, 0] = vocab - 2
    ids[:, 1:-1] = torch.randint(1, vocab - 3, (n, context - 2), generator=g)
    ids[:, -1] = vocab - 1
    return images, ids


@pytest.fixture
def tiny():
    torch.manual_seed(0)
    return create_model("tiny-vit")


@pytest.fixture
def small_vocab():
    """tiny-vit with a 1,000-token table: optimiser steps on the full 49,408-row table
    dominate the time of a tiny model, and random ids need no real vocabulary."""
    torch.manual_seed(0)
    config = get_config("tiny-vit")
    return create_model(dataclasses.replace(config, text=dataclasses.replace(config.text, vocab_size=1000)))


# ---------------------------------------------------------------------------
# The loss
# ---------------------------------------------------------------------------


def test_loss_is_symmetric_cross_entropy_of_scaled_cosines():
    g = torch.Generator().manual_seed(1)
    img, txt = torch.randn(6, 16, generator=g), torch.randn(6, 16, generator=g)
    scale = torch.tensor(12.5)
    out = clip_loss(img, txt, scale)
    sim = F.normalize(img, dim=-1) @ F.normalize(txt, dim=-1).T  # (6, 6) cosines
    logits = scale * sim
    expected = 0
    for i in range(6):  # written out: -log softmax of the diagonal, rows then columns
        expected = expected - torch.log_softmax(logits[i], 0)[i] / 12 - torch.log_softmax(logits[:, i], 0)[i] / 12
    torch.testing.assert_close(out.loss, expected)
    assert int(out.correct_i2t) == int((sim.argmax(1) == torch.arange(6)).sum())
    assert int(out.correct_t2i) == int((sim.argmax(0) == torch.arange(6)).sum())
    assert out.n == 6


def test_loss_of_aligned_pairs_falls_with_temperature():
    x = torch.eye(4) * 3  # orthogonal, image i == caption i
    losses = [float(clip_loss(x, x, torch.tensor(s)).loss) for s in (1.0, 10.0, 100.0)]
    assert losses[0] > losses[1] > losses[2] and losses[2] < 1e-6
    assert losses[0] == pytest.approx(math.log(math.e + 3) - 1, rel=1e-5)


# ---------------------------------------------------------------------------
# Temperature, schedule, optimiser
# ---------------------------------------------------------------------------


def test_logit_scale_initialised_and_clamped_at_100(tiny):
    assert float(tiny.logit_scale.detach().exp()) == pytest.approx(1 / 0.07, rel=1e-5)
    model = ContrastiveModel(tiny)
    opt = torch.optim.SGD([tiny.logit_scale], lr=1e4)  # a huge step on the temperature only
    images, ids = _batch()
    with torch.no_grad():  # make the pairs matched so a larger scale lowers the loss
        tiny.logit_scale.fill_(MAX_LOGIT_SCALE - 0.01)
    img = tiny.encode_image(images).detach()
    wrapped = lambda images, ids: (img, img.clone(), tiny.logit_scale.exp())  # noqa: E731
    out = train_step(wrapped, tiny, images, ids, opt)
    assert out.loss > 0
    t = tiny.logit_scale.detach()
    assert float(t) == pytest.approx(MAX_LOGIT_SCALE, rel=1e-7)  # clamped: exp(t) == 100
    assert float(t.exp()) == pytest.approx(100.0, rel=1e-6)
    with torch.no_grad():
        tiny.logit_scale.fill_(-3.0)
    train_step(model, tiny, images, ids, torch.optim.SGD([tiny.logit_scale], lr=0.0))
    assert float(tiny.logit_scale.detach()) == 0.0  # and never below exp(t) = 1


def test_warmup_then_cosine():
    f = WarmupCosine(warmup=10, total=110)
    values = [f(s) for s in range(110)]
    assert values[0] == pytest.approx(0.1) and values[4] == pytest.approx(0.5)
    assert values[9] == pytest.approx(1.0)  # linear warm-up reaches the peak
    decay = values[9:]
    assert all(a >= b for a, b in zip(decay, decay[1:]))  # then only decreases
    assert values[10 + 50] == pytest.approx(0.5, abs=0.02)  # half way down the cosine
    assert values[-1] == pytest.approx(0.0, abs=1e-12)
    assert WarmupCosine(10, 110, min_ratio=0.1)(109) == pytest.approx(0.1)


def test_scheduler_drives_the_optimizer(tiny):
    cfg = TrainConfig(lr=1e-3, warmup=4, steps=20)
    opt = make_optimizer(tiny, cfg)
    sched = make_scheduler(opt, cfg)
    lrs = []
    for _ in range(cfg.steps):
        lrs.append([g["lr"] for g in opt.param_groups])
        opt.step()
        sched.step()
    assert all(a == b for a, b in lrs)  # both groups follow the same schedule
    assert [round(x[0], 8) for x in lrs[:4]] == [0.00025, 0.0005, 0.00075, 0.001]
    assert max(x[0] for x in lrs) == pytest.approx(1e-3) and lrs[-1][0] == pytest.approx(0.0, abs=1e-12)


def test_adamw_groups_no_decay_on_gains_biases_embeddings_temperature(tiny):
    decay, no_decay = param_groups(tiny, 0.2)
    names = {id(p): n for n, p in tiny.named_parameters()}
    decay_names = {names[id(p)] for p in decay["params"]}
    no_decay_names = {names[id(p)] for p in no_decay["params"]}
    assert decay["weight_decay"] == 0.2 and no_decay["weight_decay"] == 0.0
    assert decay_names | no_decay_names == set(names.values())
    assert not decay_names & no_decay_names
    for name in ("logit_scale", "token_embedding.weight", "positional_embedding",
                 "visual.class_embedding", "visual.positional_embedding", "ln_final.weight",
                 "ln_final.bias", "transformer.resblocks.0.attn.in_proj_bias"):
        assert name in no_decay_names, name
    for name in ("text_projection", "visual.proj", "visual.conv1.weight",
                 "transformer.resblocks.0.attn.in_proj_weight", "transformer.resblocks.0.mlp.c_fc.weight"):
        assert name in decay_names, name


def test_weight_decay_is_decoupled(tiny):
    """With zero gradients Adam's update is 0: matrices shrink by exactly (1 - lr*wd),
    everything else stays put."""
    cfg = TrainConfig(lr=0.01, weight_decay=0.5)
    opt = make_optimizer(tiny, cfg)
    before = {n: p.detach().clone() for n, p in tiny.named_parameters()}
    for p in tiny.parameters():
        p.grad = torch.zeros_like(p)
    opt.step()
    after = dict(tiny.named_parameters())
    torch.testing.assert_close(after["text_projection"], before["text_projection"] * (1 - 0.01 * 0.5))
    assert torch.equal(after["token_embedding.weight"], before["token_embedding.weight"])
    assert torch.equal(after["logit_scale"], before["logit_scale"])


# ---------------------------------------------------------------------------
# Learning, bf16
# ---------------------------------------------------------------------------


def test_a_few_steps_lower_the_loss(small_vocab):
    tiny = small_vocab
    images, ids = _batch(n=16, vocab=1000)
    model = ContrastiveModel(tiny)
    cfg = TrainConfig(lr=2e-3, warmup=2, steps=25)
    opt = make_optimizer(tiny, cfg)
    sched = make_scheduler(opt, cfg)
    losses = [float(train_step(model, tiny, images, ids, opt, sched).loss.detach()) for _ in range(cfg.steps)]
    assert losses[-1] < 0.5 * losses[0]
    with torch.no_grad():
        out = forward_loss(model, images, ids)
    assert int(out.correct_i2t) == int(out.correct_t2i) == 16  # it memorised the pairs


def test_bf16_autocast_runs_and_stays_close(small_vocab):
    tiny = small_vocab
    images, ids = _batch(vocab=1000)
    model = ContrastiveModel(tiny)
    with autocast_context("bf16", images.device):
        assert model(images, ids)[0].dtype == torch.bfloat16  # autocast really engaged
    ref = forward_loss(model, images, ids, "fp32")
    out = forward_loss(model, images, ids, "bf16")
    assert out.loss.dtype == torch.float32
    assert float(out.loss.detach()) == pytest.approx(float(ref.loss.detach()), abs=0.05)
    cfg = TrainConfig(lr=1e-3, warmup=1, steps=3)
    opt = make_optimizer(tiny, cfg)
    for _ in range(3):
        out = train_step(model, tiny, images, ids, opt, precision="bf16")
    assert torch.isfinite(out.loss)
    assert all(p.dtype == torch.float32 and torch.isfinite(p).all() for p in tiny.parameters())
    with pytest.raises(ValueError, match="precision"):
        autocast_context("fp16", images.device)


# ---------------------------------------------------------------------------
# Data stream, checkpoints, resume
# ---------------------------------------------------------------------------


def test_global_batch_sampler_shards_contiguously():
    one = list(GlobalBatchSampler(first_sample=16, num_batches=2, global_batch=8))
    assert one == [list(range(16, 24)), list(range(24, 32))]
    ranks = [list(GlobalBatchSampler(16, 2, 8, rank=r, world_size=2)) for r in range(2)]
    for b in range(2):
        assert ranks[0][b] + ranks[1][b] == one[b]  # gathered in rank order == global order
    with pytest.raises(ValueError, match="divisible"):
        GlobalBatchSampler(0, 1, 9, rank=0, world_size=2)


def test_collate_cuts_ids_to_the_longest_caption():
    ids = torch.zeros(2, 32, dtype=torch.long)
    ids[0, :4] = torch.tensor([49406, 5, 6, 49407])
    ids[1, :3] = torch.tensor([49406, 7, 49407])
    images, out = collate_pairs([(torch.zeros(3, 4, 4), ids[0]), (torch.ones(3, 4, 4), ids[1])])
    assert images.shape == (2, 3, 4, 4) and out.shape == (2, 4)
    assert torch.equal(out, ids[:, :4])


def test_atomic_save_replaces_and_leaves_no_temporary(tmp_path):
    path = tmp_path / "checkpoint.pt"
    atomic_save({"step": 1, "w": torch.ones(2)}, path)
    atomic_save({"step": 2, "w": torch.zeros(2)}, path)
    assert [p.name for p in tmp_path.iterdir()] == ["checkpoint.pt"]
    state = load_checkpoint(path)
    assert state["step"] == 2 and torch.equal(state["w"], torch.zeros(2))


def _cfg(tmp_path, name, **kw):
    base = dict(config="tiny-vit", steps=4, batch_size=8, lr=1e-3, warmup=1, eval_size=0,
                log_every=1, progress=False, out=str(tmp_path / name))
    return TrainConfig(**{**base, **kw})


def _read_log(path):
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_resume_moves_log_records_after_the_checkpoint_aside(tmp_path):
    """A run killed after its last checkpoint logged steps that the resume redoes: the log
    must not hold them twice."""
    train(_cfg(tmp_path, "straight"))
    train(_cfg(tmp_path, "split", stop_at=2))
    log = tmp_path / "split" / "log.jsonl"
    killed = [{"step": 3, "loss": 9.0}, {"step": 3, "eval": {"x": 0.0}}]
    with open(log, "a") as f:
        f.writelines(json.dumps(r) + "\n" for r in killed)
    train(_cfg(tmp_path, "split"), resume=True)
    assert [r["step"] for r in _read_log(log)] == [1, 2, 3, 4]
    assert _read_log(tmp_path / "split" / "log.discarded.jsonl") == killed
    straight = _read_log(tmp_path / "straight" / "log.jsonl")
    assert [r["loss"] for r in _read_log(log)] == [r["loss"] for r in straight]


def test_resume_is_exact(tmp_path):
    """4 steps straight == 2 steps, stop, resume (with a worker process rendering), 2 steps."""
    train(_cfg(tmp_path, "straight"))
    train(_cfg(tmp_path, "split", stop_at=2))
    first = load_checkpoint(tmp_path / "split" / "checkpoint.pt")
    assert first["step"] == 2 and first["samples_seen"] == 16
    assert not (tmp_path / "split" / "model.safetensors").exists()  # not finished yet
    train(_cfg(tmp_path, "split", workers=1), resume=True)

    a = load_checkpoint(tmp_path / "straight" / "checkpoint.pt")
    b = load_checkpoint(tmp_path / "split" / "checkpoint.pt")
    assert a["step"] == b["step"] == 4 and a["samples_seen"] == b["samples_seen"] == 32
    for name in a["model"]:
        assert torch.equal(a["model"][name], b["model"][name]), name
    for pid, s in a["optimizer"]["state"].items():
        for key in s:
            assert torch.equal(s[key], b["optimizer"]["state"][pid][key]), (pid, key)
    assert a["scheduler"]["last_epoch"] == b["scheduler"]["last_epoch"] == 4
    assert set(a) >= {"model", "optimizer", "scheduler", "step", "samples_seen", "rng",
                      "model_config", "train_config"}

    log_a, log_b = _read_log(tmp_path / "straight" / "log.jsonl"), _read_log(tmp_path / "split" / "log.jsonl")
    assert [r["step"] for r in log_b] == [1, 2, 3, 4]
    for ra, rb in zip(log_a, log_b):
        assert (ra["loss"], ra["lr"], ra["logit_scale"]) == (rb["loss"], rb["lr"], rb["logit_scale"])
    for key in ("loss", "acc_i2t", "acc_t2i", "lr", "logit_scale", "samples_per_s"):
        assert key in log_a[-1]

    from clipkit import load

    model = load(tmp_path / "straight" / "model.safetensors")
    model = model[0] if isinstance(model, tuple) else model
    for name, value in model.state_dict().items():
        assert torch.equal(value, a["model"][name]), name


def test_cli_flags_override_saved_settings_on_resume(tmp_path):
    from clipkit.commands.train import build_parser, config_from_args

    out = tmp_path / "run"
    args = build_parser().parse_args(["--config", "tiny-vit", "--steps", "3", "--batch-size", "4",
                                      "--out", str(out), "--precision", "bf16", "--workers", "2"])
    cfg = config_from_args(args)
    assert (cfg.steps, cfg.batch_size, cfg.precision, cfg.workers, cfg.lr) == (3, 4, "bf16", 2, 5e-4)
    out.mkdir()
    atomic_save({"train_config": TrainConfig(config="tiny-vit", steps=3, batch_size=4, lr=1e-3,
                                             out=str(out)).to_dict()}, out / "checkpoint.pt")
    resumed = config_from_args(build_parser().parse_args(["--out", str(out), "--resume", "--steps", "6"]))
    assert (resumed.config, resumed.steps, resumed.batch_size, resumed.lr) == ("tiny-vit", 6, 4, 1e-3)
    from clipkit.checkpoints import CheckpointError

    with pytest.raises(CheckpointError, match="no training checkpoint at .*none"):
        config_from_args(build_parser().parse_args(["--out", str(tmp_path / "none"), "--resume"]))
    (tmp_path / "bad.pt").write_bytes(b"PK\x03\x04 truncated zip")
    with pytest.raises(CheckpointError, match="cannot read training checkpoint .*bad.pt"):
        config_from_args(build_parser().parse_args(["--resume", str(tmp_path / "bad.pt")]))


def test_every_trainer_reaches_its_floor_at_the_last_step():
    from clipkit.generator.train import lr_at
    from clipkit.training.schedule import warmup_cosine

    for total, warmup in ((110, 10), (7, 3), (2, 1)):
        sched = WarmupCosine(warmup, total, min_ratio=0.1)
        assert sched(total - 1) == pytest.approx(0.1) == warmup_cosine(total - 1, warmup, total, 0.1)
        assert lr_at(total - 1, total, 2e-3, warmup, 0.1) == pytest.approx(2e-4)  # it used to stop short
        assert [lr_at(s, total, 1.0, warmup, 0.1) for s in range(total)] == [sched(s) for s in range(total)]


def test_evaluate_through_encode_images_equals_the_inline_loop(tiny):
    """`evaluate` reads the images through `clipkit.encode.encode_images`; its scores are
    those of the loop it replaced (preprocess, encode_image in chunks of 100, the head)."""
    from clipkit.data import synth
    from clipkit.tokenizer import get_tokenizer
    from clipkit.train import evaluate
    from clipkit.transforms import image_transform
    from clipkit.zeroshot import build_head, encode_prompts

    cfg = TrainConfig(eval_size=120, digit_style="robust")  # > 100: two chunks
    c = tiny.config
    preprocess, tokenizer = image_transform(c.vision.image_size, c.image_mean, c.image_std), get_tokenizer()
    tiny.train()
    got = evaluate(tiny, preprocess, tokenizer, cfg)
    assert tiny.training  # the caller's mode back

    size, expected = c.vision.image_size, {}
    tiny.eval()
    with torch.inference_mode():
        for name, eval_set in {
            "colour_shape": synth.colour_shape_eval_set(n=120, seed=0, image_size=size, split="val"),
            "digits": synth.digit_eval_set(n=120, seed=0, image_size=size, split="val"),
            "digits_robust": synth.digit_eval_set(n=120, seed=0, image_size=size, split="val", style="robust"),
        }.items():
            head = build_head(tiny, eval_set.classnames, eval_set.templates, tokenizer=tokenizer, cache=False,
                              progress=False)
            correct = 0
            for start in range(0, len(eval_set), 100):
                x = torch.stack([preprocess(im) for im in eval_set.images[start:start + 100]])
                pred = head(tiny.encode_image(x)).argmax(-1)
                correct += int((pred == torch.tensor(eval_set.labels[start:start + 100])).sum())
            expected[name] = correct / len(eval_set)
        relations = synth.relation_eval_set(n=120, seed=0, image_size=size, split="val")
        x = torch.stack([preprocess(im) for im in relations.images])
        image = F.normalize(tiny.encode_image(x).float(), dim=-1)
        from clipkit.encode import encode_images

        assert torch.equal(encode_images(tiny, relations.images, preprocess=preprocess, batch_size=len(x),
                                         progress=False).features, image)  # the same embeddings, bit for bit
        flat = [c for row in relations.candidates for c in row]
        text = encode_prompts(tiny, flat, tokenizer=tokenizer, progress=False).view(len(relations), 4, -1)
        pred = torch.einsum("nd,nkd->nk", image, text).argmax(-1)
        expected["relation"] = float((pred == torch.tensor(relations.labels)).double().mean())
    assert got == expected


def test_init_starts_from_the_given_weights(tmp_path):
    """--init: the first step's loss is the loss of those weights (not of a fresh model),
    and a run that trains with a zero-length warm-up at lr ~0 keeps them."""
    from clipkit.checkpoints import save
    from clipkit.commands.train import build_parser, config_from_args
    from clipkit.models import create_model

    torch.manual_seed(123)
    start = create_model("tiny-vit")
    with torch.no_grad():
        start.logit_scale.fill_(2.0)  # recognisable in the first log record
    path = tmp_path / "start.safetensors"
    save(start, path)
    train(_cfg(tmp_path, "fresh", steps=1))
    train(_cfg(tmp_path, "init", steps=1, init=str(path), lr=1e-12))
    fresh, init = _read_log(tmp_path / "fresh" / "log.jsonl"), _read_log(tmp_path / "init" / "log.jsonl")
    # the log records the scale itself, exp(logit_scale)
    assert fresh[0]["logit_scale"] != pytest.approx(math.exp(2.0), abs=1e-3)
    assert init[0]["logit_scale"] == pytest.approx(math.exp(2.0), abs=1e-5)
    got = load_checkpoint(tmp_path / "init" / "checkpoint.pt")["model"]
    for name, value in start.state_dict().items():
        torch.testing.assert_close(got[name], value, rtol=0, atol=1e-6, msg=name)
    args = build_parser().parse_args(["--init", str(path), "--out", str(tmp_path / "x")])
    assert config_from_args(args).init == str(path)


def test_a_robust_hard_run_also_reads_its_own_style(tiny):
    from clipkit.tokenizer import get_tokenizer
    from clipkit.train import TrainConfig, evaluate
    from clipkit.transforms import image_transform

    c = tiny.config
    preprocess = image_transform(c.vision.image_size, c.image_mean, c.image_std)
    got = evaluate(tiny, preprocess, get_tokenizer(), TrainConfig(eval_size=20, digit_style="robust-hard"))
    assert set(got) == {"colour_shape", "digits", "digits_robust", "digits_robust_hard", "relation"}
    robust = evaluate(tiny, preprocess, get_tokenizer(), TrainConfig(eval_size=20, digit_style="robust"))
    assert set(robust) == set(got) - {"digits_robust_hard"}
    assert {k: got[k] for k in robust} == robust  # the shared sets are the same sets
