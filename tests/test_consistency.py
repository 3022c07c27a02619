"""The resolution-consistency term (`clipkit train --resolution-consistency`): the reduced
copies, the KL term against a hand-written computation, the loss of a batch with the
term against the towers run separately, and the trainer's wiring (sides in turn, counts)."""
from __future__ import annotations

import json

import pytest
import torch
import torch.nn.functional as F

import clipkit.train as train_module
from clipkit.models import create_model
from clipkit.train import (CONSISTENCY_SIDES, Consistency, ContrastiveModel, TrainConfig, clip_loss,
                           forward_loss, train)
from clipkit.training.contrastive import consistency_loss, degrade_resolution
from tests.test_train import _batch  # random images; ids of start, random tokens, end

pytestmark = pytest.mark.usefixtures("one_thread")  # see tests/conftest.py


def test_degrade_is_block_means_enlarged_bicubically():
    g = torch.Generator().manual_seed(0)
    x = torch.rand(3, 3, 32, 32, generator=g)
    for side in (4, 8, 16):
        b = 32 // side
        blocks = x.reshape(3, 3, side, b, side, b).mean((3, 5))  # the straightforward reduction
        expect = F.interpolate(blocks, size=(32, 32), mode="bicubic", align_corners=False)
        torch.testing.assert_close(degrade_resolution(x, side), expect, rtol=0, atol=1e-6)
    torch.testing.assert_close(degrade_resolution(x, 32), x, rtol=0, atol=1e-6)  # full size: unchanged
    flat = torch.full((1, 3, 32, 32), 0.3)
    torch.testing.assert_close(degrade_resolution(flat, 8), flat)
    # a one-pixel checkerboard is detail no 8-pixel grid keeps: it comes back flat grey
    board = ((torch.arange(32)[:, None] + torch.arange(32)[None]) % 2).float().expand(1, 3, 32, 32)
    assert (degrade_resolution(board, 8) - 0.5).abs().max() < 1e-5


def test_consistency_loss_is_the_kl_of_the_caption_softmaxes():
    g = torch.Generator().manual_seed(1)
    reduced, clean, text = torch.randn(4, 6, generator=g), torch.randn(4, 6, generator=g), torch.randn(7, 6, generator=g)
    scale = torch.tensor(20.0)

    def softmax_rows(a):
        a = a / a.norm(dim=1, keepdim=True)
        t = text / text.norm(dim=1, keepdim=True)
        return torch.softmax(scale * a @ t.T, dim=1)

    p, q = softmax_rows(clean), softmax_rows(reduced)
    expect = (p * (p.log() - q.log())).sum(1).mean()
    assert float(consistency_loss(reduced, clean, text, scale)) == pytest.approx(float(expect), rel=1e-5)
    assert float(consistency_loss(clean, clean, text, scale)) == pytest.approx(0.0, abs=1e-6)
    assert float(consistency_loss(reduced, clean, text, scale)) > 0.01


def test_only_the_reduced_copy_gets_a_gradient():
    g = torch.Generator().manual_seed(2)
    reduced, clean, text = (torch.randn(n, 5, generator=g, requires_grad=True) for n in (3, 3, 4))
    scale = torch.tensor(10.0, requires_grad=True)
    consistency_loss(reduced, clean, text, scale).backward()
    assert reduced.grad is not None and reduced.grad.abs().sum() > 0
    assert clean.grad is None and text.grad is None and scale.grad is None


@pytest.fixture
def tiny():
    torch.manual_seed(0)
    return create_model("tiny-vit")


def test_forward_loss_adds_the_term_computed_from_separate_tower_calls(tiny):
    model = ContrastiveModel(tiny).eval()
    images, ids = _batch(n=6, image_size=tiny.image_size, context=8, seed=3)
    c = Consistency(weight=0.7, count=2, side=8)
    with torch.no_grad():
        got = forward_loss(model, images, ids, consistency=c)
        plain = forward_loss(model, images, ids)
        off = forward_loss(model, images, ids, consistency=Consistency(weight=0.0, count=2, side=8))
        img, txt = tiny.encode_image(images), tiny.encode_text(ids)
        scale = tiny.logit_scale.exp()
        low = tiny.encode_image(degrade_resolution(images[:2], 8))
        expect = clip_loss(img, txt, scale).loss + 0.7 * consistency_loss(low, img[:2], txt, scale)
    assert float(got.loss) == pytest.approx(float(expect), rel=1e-5)
    assert float(got.consistency) == pytest.approx(float(consistency_loss(low, img[:2], txt, scale)), rel=1e-5)
    assert plain.consistency is None and off.consistency is None
    assert float(got.loss) > float(plain.loss)  # a random tower does not read reduced copies alike
    assert float(off.loss) == float(plain.loss)
    assert (got.n, int(got.correct_i2t)) == (plain.n, int(plain.correct_i2t))  # counts are the pairs'


def test_trainer_reduces_a_quarter_of_the_batch_to_each_side_in_turn(tmp_path, monkeypatch):
    seen, results = [], []
    real_step = train_module.train_step

    def recording_step(*args, consistency=None, **kwargs):
        seen.append(consistency)
        results.append(real_step(*args, consistency=consistency, **kwargs))
        return results[-1]

    monkeypatch.setattr(train_module, "train_step", recording_step)
    cfg = TrainConfig(config="tiny-vit", steps=4, batch_size=8, warmup=1, eval_size=0, progress=False,
                      out=str(tmp_path / "run"), resolution_consistency=0.5, log_every=1)
    train(cfg)
    assert [c.side for c in seen] == [CONSISTENCY_SIDES[s % len(CONSISTENCY_SIDES)] for s in range(4)]
    assert all(c.count == 2 and c.weight == 0.5 for c in seen)
    # the log keeps the two terms apart: the contrastive loss (comparable with runs without
    # the term) and the unweighted KL; the step minimised loss + 0.5 KL
    log = [json.loads(line) for line in (tmp_path / "run" / "log.jsonl").read_text().splitlines()]
    log = [r for r in log if "loss" in r]
    assert len(log) == 4
    for r, out in zip(log, results):
        assert r["consistency_kl"] == pytest.approx(float(out.consistency), rel=1e-6)
        assert r["loss"] == pytest.approx(float(out.loss) - 0.5 * float(out.consistency), rel=1e-6)
    seen.clear()
    train(TrainConfig(config="tiny-vit", steps=1, batch_size=8, warmup=1, eval_size=0, progress=False,
                      out=str(tmp_path / "off"), log_every=1))
    assert seen == [None]  # off by default
    off_log = (tmp_path / "off" / "log.jsonl").read_text().splitlines()
    assert all("consistency_kl" not in json.loads(line) for line in off_log)


def test_cli_flag_sets_the_weight_and_refuses_negatives(capsys):
    from clipkit.commands.train import build_parser, config_from_args

    cfg = config_from_args(build_parser().parse_args(["--config", "tiny-vit", "--resolution-consistency", "0.5"]))
    assert cfg.resolution_consistency == 0.5
    assert config_from_args(build_parser().parse_args(["--config", "tiny-vit"])).resolution_consistency == 0.0
    with pytest.raises(SystemExit):
        build_parser().parse_args(["--resolution-consistency", "-1"])
    assert "resolution-consistency" in capsys.readouterr().err


def test_term_refused_where_it_cannot_work(tmp_path):
    from clipkit.errors import OptionError

    with pytest.raises(OptionError, match="batch-size 3 over 1 rank"):
        train(TrainConfig(config="tiny-vit", steps=1, batch_size=3, eval_size=0, progress=False,
                          out=str(tmp_path / "small"), resolution_consistency=0.5))
    assert not (tmp_path / "small").exists()
    with pytest.raises(OptionError, match="ViT image tower"):
        train(TrainConfig(config="RN50", steps=1, batch_size=8, eval_size=0, progress=False,
                          out=str(tmp_path / "rn"), resolution_consistency=0.5))


def test_resume_does_not_need_the_config_file_any_more(tmp_path, capsys):
    import json

    from clipkit.commands.train import build_parser, run
    from clipkit.models import get_config

    conf = tmp_path / "m.json"
    conf.write_text(json.dumps(get_config("tiny-vit").to_dict()))
    out = tmp_path / "run"
    base = ["--batch-size", "4", "--eval-size", "0", "--out", str(out), "--quiet"]
    assert run(build_parser().parse_args(["--config", str(conf), "--steps", "1", *base])) == 0
    conf.unlink()  # the run rebuilds its model from the checkpoint
    assert run(build_parser().parse_args(["--resume", "--steps", "2", *base])) == 0
    assert json.loads(capsys.readouterr().out.strip().splitlines()[-1])["step"] == 2
