"""The shared training skeleton (clipkit.training): one parameter-grouping rule for every
trainer, one checkpoint format and one `load_checkpoint` (older formats still load), and
resume == an uninterrupted run through `Trainer` for the dVAE and the judge (CLIP's is
tests/test_train.py::test_resume_is_exact, the transformer's in test_generator_transformer)."""
from __future__ import annotations

import dataclasses
import json

import pytest
import torch

from clipkit.checkpoints import CheckpointError
from clipkit.training.params import DecayRule, param_groups
from clipkit.training.state import load_checkpoint


pytestmark = pytest.mark.usefixtures("one_thread")  # see tests/conftest.py


# ---------------------------------------------------------------------------
# One parameter-grouping rule
# ---------------------------------------------------------------------------


def _names(model, group):
    names = {id(p): n for n, p in model.named_parameters()}
    return [names[id(p)] for p in group["params"]]


@pytest.mark.parametrize("name", ["synth-mini", "synth-32"])
def test_generator_params_decay_as_under_its_former_rule(name):
    """The generator's rule was "matrices decay, the rest not"; the one rule (which also
    spares names with `embedding` and the temperature) groups its parameters the same,
    in the same order, so its optimiser state keeps its indices."""
    from clipkit.generator.configs import GENERATOR_CONFIGS
    from clipkit.generator.dvae import DVAE
    from clipkit.generator.transformer import DALLETransformer

    if name not in GENERATOR_CONFIGS:
        pytest.skip(f"no generator config {name}")
    dvae_cfg, tr_cfg = GENERATOR_CONFIGS[name]
    for model in (DVAE(dvae_cfg), DALLETransformer(tr_cfg)):
        decay, no_decay = param_groups(model, 0.01)
        params = list(model.parameters())
        former = [p for p in params if p.dim() >= 2] + [p for p in params if p.dim() < 2]
        assert [id(p) for p in decay["params"] + no_decay["params"]] == [id(p) for p in former]
        assert len(decay["params"]) == sum(p.dim() >= 2 for p in params)


def test_decay_rule_is_data():
    lin = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.LayerNorm(4))
    lin.register_parameter("token_embedding", torch.nn.Parameter(torch.zeros(5, 4)))
    decay, no_decay = param_groups(lin, 0.1)
    assert _names(lin, decay) == ["0.weight"]
    assert _names(lin, no_decay) == ["token_embedding", "0.bias", "1.weight", "1.bias"]  # own first
    everything = DecayRule(min_ndim=0, skip_if_contains=(), skip_if_endswith=())
    assert len(param_groups(lin, 0.1, everything)[0]["params"]) == 5


# ---------------------------------------------------------------------------
# One checkpoint format, one load_checkpoint; the older formats load
# ---------------------------------------------------------------------------


def _write_generator_checkpoint_of_the_former_format(path, kind, model, optimizer, step, steps, train_config):
    """What clipkit.generator.train.save_checkpoint wrote before the shared format."""
    from safetensors.torch import save_file

    tensors = {f"model.{k}": v.detach().contiguous() for k, v in model.state_dict().items()}
    for i, state in optimizer.state_dict()["state"].items():
        for name, v in state.items():
            tensors[f"optim.{i}.{name}"] = (v if isinstance(v, torch.Tensor) else torch.tensor(v)).contiguous()
    meta = {"kind": kind, "step": str(step), "steps": str(steps),
            "model_config": json.dumps(model.config.to_dict()),
            "train_config": json.dumps(dataclasses.asdict(train_config))}
    save_file(tensors, path, metadata=meta)


def test_dvae_resumes_from_a_checkpoint_of_the_former_safetensors_format(tmp_path):
    from clipkit.generator.dvae import DVAE
    from clipkit.generator.train import DVAETrainConfig, load_dvae, train_dvae
    from tests.test_generator_dvae import TINY, _blobs

    data, tc = _blobs(16), DVAETrainConfig(batch_size=4, warmup=2, weight_decay=0.1)
    torch.manual_seed(1)
    straight, _ = train_dvae(DVAE(TINY), data, 6, train=tc, log=lambda _: None)
    torch.manual_seed(1)
    half, _ = train_dvae(DVAE(TINY), data, 6, train=tc, out_dir=tmp_path, stop_at=3, log=lambda _: None)
    new = load_checkpoint(tmp_path / "dvae-last.pt", kind="dvae")
    assert new["format"] == "clipkit-train/1" and new["step"] == 3 and new["steps"] == 6
    assert torch.equal(load_dvae(tmp_path / "dvae-last.pt").encode(data[:2]), half.encode(data[:2]))

    # the same state in the former format, and no new-format file beside it
    opt = torch.optim.AdamW(param_groups(half, tc.weight_decay), lr=tc.lr)
    opt.load_state_dict(new["optimizer"])
    half.load_state_dict(new["model"])
    _write_generator_checkpoint_of_the_former_format(tmp_path / "dvae-last.safetensors", "dvae", half, opt, 3, 6, tc)
    (tmp_path / "dvae-last.pt").unlink()
    old = load_checkpoint(tmp_path / "dvae-last.safetensors", kind="dvae")
    assert old["format"] == "clipkit-generator-safetensors/0" and old["step"] == 3 and "rng" not in old
    assert torch.equal(load_dvae(tmp_path / "dvae-last.safetensors").encode(data[:2]), half.encode(data[:2]))
    with pytest.raises(CheckpointError, match="'dvae' training checkpoint, not 'transformer'"):
        load_checkpoint(tmp_path / "dvae-last.safetensors", kind="transformer")

    torch.manual_seed(99)
    lines = []
    resumed, _ = train_dvae(DVAE(TINY), data, 6, train=tc, out_dir=tmp_path, resume=True, log=lines.append)
    assert any("dvae-last.safetensors at step 3" in line for line in lines)
    for (k, a), b in zip(straight.state_dict().items(), resumed.state_dict().values()):
        assert torch.equal(a, b), k
    assert load_checkpoint(tmp_path / "dvae-last.pt")["step"] == 6  # it goes on in the one format


def test_clip_checkpoints_written_before_the_shared_format_resume(tmp_path):
    """CLIP checkpoints had no "format" / "kind": they load as "clip" and resume exactly."""
    from clipkit.train import TrainConfig, atomic_save, train

    def cfg(name, **kw):
        return TrainConfig(**{**dict(config="tiny-vit", steps=3, batch_size=4, lr=1e-3, warmup=1, eval_size=0,
                                     log_every=1, progress=False, out=str(tmp_path / name)), **kw})

    train(cfg("straight"))
    train(cfg("split", stop_at=1))
    path = tmp_path / "split" / "checkpoint.pt"
    state = load_checkpoint(path, kind="clip")
    assert (state["format"], state["kind"]) == ("clipkit-train/1", "clip")
    del state["format"], state["kind"]
    atomic_save(state, path)
    assert "kind" not in load_checkpoint(path, kind="clip")
    with pytest.raises(CheckpointError, match="'clip' training checkpoint, not 'dvae'"):
        load_checkpoint(path, kind="dvae")
    train(cfg("split"), resume=True)
    a, b = load_checkpoint(tmp_path / "straight" / "checkpoint.pt"), load_checkpoint(path)
    for name in a["model"]:
        assert torch.equal(a["model"][name], b["model"][name]), name


def test_load_checkpoint_names_what_is_wrong(tmp_path):
    from safetensors.torch import save_file

    save_file({"w": torch.zeros(2)}, tmp_path / "weights.safetensors")
    with pytest.raises(CheckpointError, match="weights.safetensors is not a clipkit training checkpoint"):
        load_checkpoint(tmp_path / "weights.safetensors")
    (tmp_path / "bad.safetensors").write_bytes(b"\x00" * 5)
    with pytest.raises(CheckpointError, match="cannot read training checkpoint .*bad.safetensors"):
        load_checkpoint(tmp_path / "bad.safetensors")


# ---------------------------------------------------------------------------
# Resume == an uninterrupted run, through the skeleton
# ---------------------------------------------------------------------------


def test_judge_resumed_mid_epoch_equals_an_uninterrupted_run(tmp_path, capsys):
    """3 epochs of 3 steps straight == stop after step 4 (mid-epoch), resume: the same
    weights (BatchNorm statistics included), log and validation metrics; the one-cycle
    schedule, the epoch's order and the blur generator come back from the checkpoint."""
    from benchmarks.judge import JudgeConfig, render_labelled, train_judge

    tiny = JudgeConfig(image_size=16, channels=(4, 8))
    data = (render_labelled(64, stream=900, image_size=32, config=tiny),
            render_labelled(27, stream=901, image_size=32, config=tiny))
    kw = dict(epochs=3, batch_size=24, seed=3, data=data, log_every=1)  # 64 images: 3 steps an epoch
    straight = train_judge(tiny, **kw)
    half = train_judge(tiny, **kw, out_dir=tmp_path, stop_at=4)
    assert [r["step"] for r in half.log] == [1, 2, 3, 4]
    ckpt = load_checkpoint(tmp_path / "judge-last.pt", kind="judge")
    assert ckpt["step"] == 4 and ckpt["order"].shape == (64,) and "scheduler" in ckpt and "rng" in ckpt
    torch.manual_seed(1234)  # the resumed run must not depend on the fresh net's initialisation
    resumed = train_judge(tiny, **kw, out_dir=tmp_path, resume=True)
    assert [r["step"] for r in resumed.log] == [5, 6, 7, 8, 9]
    for (k, a), b in zip(straight.judge.net.state_dict().items(), resumed.judge.net.state_dict().values()):
        assert torch.equal(a, b), k
    assert [r["loss"] for r in straight.log] == [r["loss"] for r in half.log + resumed.log]
    assert straight.judge.metrics_ == resumed.judge.metrics_
    assert load_checkpoint(tmp_path / "judge-last.pt")["step"] == 9
    capsys.readouterr()


def test_trainer_without_checkpoint_path_writes_nothing_and_calls_no_on_save(tmp_path):
    from clipkit.training.loop import Trainer

    net = torch.nn.Linear(2, 1)
    opt = torch.optim.SGD(net.parameters(), lr=0.1)
    saved = []
    trainer = Trainer(net, opt, kind="test", steps=4, save_every=2, log_every=2)
    history = trainer.fit(lambda s, _: trainer.update(net(torch.ones(1, 2)).sum()) or {"s": s},
                          on_save=saved.append)
    assert saved == [] and trainer.step == 4
    assert [r["step"] for r in history] == [2, 4] and history[0]["s"] == 1
    trainer = Trainer(net, opt, kind="test", steps=4, save_every=2, checkpoint=tmp_path / "t.pt")
    trainer.fit(lambda s, _: trainer.update(net(torch.ones(1, 2)).sum()), on_save=saved.append)
    assert saved == [2, 4] and load_checkpoint(tmp_path / "t.pt", kind="test")["step"] == 4


def test_restore_without_scheduler_state_moves_the_scheduler_to_the_step():
    """A checkpoint of the generator's older format has no scheduler state: `restore` puts
    the run's LambdaLR at the checkpoint's step, with or without an optimiser to restore."""
    from clipkit.training.schedule import WarmupCosine
    from clipkit.training.state import restore

    model = torch.nn.Linear(3, 2)
    ckpt = {"model": model.state_dict(), "step": 4, "optimizer": {"state": {}}}  # as the older format gives it
    for with_optimizer in (True, False):
        opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
        sched = torch.optim.lr_scheduler.LambdaLR(opt, WarmupCosine(2, 10, 0.1))
        step = restore(ckpt, model, opt if with_optimizer else None, sched, rng=False)
        assert step == 4 and sched.last_epoch == 4
        assert opt.param_groups[0]["lr"] == pytest.approx(1e-2 * WarmupCosine(2, 10, 0.1)(4))
