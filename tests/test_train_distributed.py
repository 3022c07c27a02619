"""2 ranks == 1 rank: contrastive training on a global batch split over two gloo
processes gives the loss, gradients and updated weights of one process on the whole
batch (features gathered with gradients, DDP averaging)."""
from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys

import pytest
import torch
import torch.distributed as dist

from clipkit.models import create_model, get_config
from tests.conftest import TINY_CONFIGS
from clipkit.train import (
    ContrastiveModel, TrainConfig, forward_loss, make_optimizer, make_scheduler, train_step,
)

WORLD = 2
GLOBAL_BATCH = 8
STEPS = 2


pytestmark = [pytest.mark.usefixtures("one_thread"), pytest.mark.slow]  # see tests/conftest.py


VOCAB = 1000  # a small token table: Adam's update of the full 49,408 rows would dominate


def _model():
    torch.manual_seed(0)
    config = TINY_CONFIGS["tiny-vit"]  # spawned workers do not run conftest.py: no registry lookup
    return create_model(dataclasses.replace(config, text=dataclasses.replace(config.text, vocab_size=VOCAB)))


def _global_batch(step: int, image_size: int, context: int = 12):
    """Deterministic images and token ids (start, random tokens, end-of-text, padding)."""
    g = torch.Generator().manual_seed(100 + step)
    images = torch.randn(GLOBAL_BATCH, 3, image_size, image_size, generator=g, dtype=torch.float64)
    ids = torch.zeros(GLOBAL_BATCH, context, dtype=torch.long)
    lengths = torch.randint(3, context + 1, (GLOBAL_BATCH,), generator=g)
    for i, n in enumerate(lengths.tolist()):
        ids[i, 0] = VOCAB - 2  # start
        ids[i, 1:n - 1] = torch.randint(1, VOCAB - 3, (n - 2,), generator=g)
        ids[i, n - 1] = VOCAB - 1  # end-of-text: the largest id, where the tower reads out
    return images, ids


def _run(rank: int, world: int):
    """STEPS training steps of tiny-vit in float64 on this rank's slice of the global batch.
    Returns per step: this rank's loss, the gradients, and the weights after the step."""
    clip = _model().double()
    model = ContrastiveModel(clip)
    if world > 1:
        model = torch.nn.parallel.DistributedDataParallel(model)
    cfg = TrainConfig(lr=1e-3, warmup=1, steps=STEPS, min_lr_ratio=1.0)  # a flat lr: both steps move the weights
    optimizer = make_optimizer(clip, cfg)
    scheduler = make_scheduler(optimizer, cfg)
    n = GLOBAL_BATCH // world
    records = []
    for step in range(STEPS):
        images, ids = _global_batch(step, clip.config.vision.image_size)
        local = slice(rank * n, (rank + 1) * n)  # this rank's contiguous share
        out = train_step(model, clip, images[local], ids[local], optimizer, scheduler)
        records.append({
            "loss": out.loss.detach(),
            "correct": (int(out.correct_i2t), int(out.correct_t2i)),
            "grads": {k: p.grad.detach().clone() for k, p in clip.named_parameters()},
            "weights": {k: v.detach().clone() for k, v in clip.state_dict().items()},
        })
    return records


def _worker(rank: int, world: int, out_dir: str) -> None:
    torch.set_num_threads(1)
    # A file rendezvous: no fixed TCP port to collide with tests running beside this one.
    dist.init_process_group("gloo", init_method=f"file://{out_dir}/rendezvous", rank=rank, world_size=world)
    try:
        torch.save(_run(rank, world), os.path.join(out_dir, f"rank{rank}.pt"))
        # and the hard-negative case (below), in the same processes: a spawn costs seconds
        torch.save(_run_uneven(rank, world), os.path.join(out_dir, f"uneven{rank}.pt"))
    finally:
        dist.destroy_process_group()


@pytest.fixture(scope="module")
def spawned(tmp_path_factory):
    out = tmp_path_factory.mktemp("ddp")
    torch.multiprocessing.spawn(_worker, args=(WORLD, str(out)), nprocs=WORLD, join=True)
    return out


@pytest.fixture(scope="module")
def two_ranks(spawned):
    return [torch.load(spawned / f"rank{r}.pt", weights_only=True) for r in range(WORLD)]


@pytest.fixture(scope="module")
def one_rank():
    return _run(0, 1)


def test_global_loss_is_the_mean_of_rank_losses(two_ranks, one_rank):
    for step in range(STEPS):
        rank_losses = torch.stack([two_ranks[r][step]["loss"] for r in range(WORLD)])
        # Step 0: same weights, only the summation order differs. Later steps: AdamW divides
        # by sqrt(v), which turns last-bit gradient differences on near-zero gradients into
        # ~1e-9 weight differences (seen in CI); the required agreement is 1e-6.
        tol = 1e-10 if step == 0 else 1e-8
        torch.testing.assert_close(rank_losses.mean(), one_rank[step]["loss"], atol=tol, rtol=tol)
        # in-batch accuracy counts add up to the single-process counts
        summed = [sum(two_ranks[r][step]["correct"][k] for r in range(WORLD)) for k in range(2)]
        assert summed == list(one_rank[step]["correct"])


def test_gradients_equal_single_process(two_ranks, one_rank):
    for step in range(STEPS):
        reference = one_rank[step]["grads"]
        assert reference["logit_scale"].abs() > 0
        for r in range(WORLD):
            grads = two_ranks[r][step]["grads"]
            assert grads.keys() == reference.keys()
            for name, g in grads.items():
                torch.testing.assert_close(g, reference[name], atol=1e-6, rtol=1e-6, msg=name)


def test_weights_after_steps_equal_single_process(two_ranks, one_rank):
    reference = one_rank[-1]["weights"]
    before = _model().state_dict()
    assert any(not torch.equal(before[k].double(), reference[k]) for k in reference)
    for r in range(WORLD):
        for name, w in two_ranks[r][-1]["weights"].items():
            torch.testing.assert_close(w, reference[name], atol=1e-6, rtol=1e-6, msg=name)


def test_torchrun_two_processes_match_one(tmp_path):
    """The real entry point: `torchrun --nproc_per_node=2 -m clipkit train` on the synthetic
    world ends with the weights of a one-process run on the same global batches."""
    from safetensors.torch import load_file

    from clipkit.train import train

    config_file = tmp_path / "tiny-vit.json"  # the subprocesses do not see the tests' registry
    config_file.write_text(json.dumps(get_config("tiny-vit").to_dict()))
    args = ["--config", str(config_file), "--steps", "2", "--batch-size", "8", "--lr", "1e-4",
            "--warmup", "1", "--min-lr-ratio", "1", "--eval-size", "0", "--log-every", "1", "--no-progress"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
           "-m", "clipkit", "train", *args, "--out", str(tmp_path / "two")]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-3000:]

    train(TrainConfig(config="tiny-vit", steps=2, batch_size=8, lr=1e-4, warmup=1, min_lr_ratio=1.0, eval_size=0,
                      log_every=1, progress=False, out=str(tmp_path / "one")))
    two = load_file(tmp_path / "two" / "model.safetensors")
    one = load_file(tmp_path / "one" / "model.safetensors")
    assert two.keys() == one.keys()
    for name in one:
        torch.testing.assert_close(two[name], one[name], atol=1e-5, rtol=0, msg=name)
    logs = [(tmp_path / d / "log.jsonl").read_text().splitlines() for d in ("two", "one")]
    assert len(logs[0]) == len(logs[1]) == 2


# ---------------------------------------------------------------------------
# Hard negatives: ranks hold different numbers of rows
# ---------------------------------------------------------------------------

# Rows of a 12-row batch per rank: 4 pairs each, then that rank's hard negatives (1 and 3).
UNEVEN = ((0, 1, 2, 3, 8), (4, 5, 6, 7, 9, 10, 11))


def _uneven_batch(step: int, image_size: int):
    a, b = _global_batch(step, image_size), _global_batch(50 + step, image_size)
    return torch.cat([a[0], b[0]])[:12], torch.cat([a[1], b[1]])[:12]


def _run_uneven(rank: int, world: int):
    """STEPS steps with `uneven=True`: rank r trains on rows UNEVEN[r]; one process on all
    twelve (in the gathered order)."""
    clip = _model().double()
    model = ContrastiveModel(clip)
    if world > 1:
        model = torch.nn.parallel.DistributedDataParallel(model)
    cfg = TrainConfig(lr=1e-3, warmup=1, steps=STEPS, min_lr_ratio=1.0)  # a flat lr: both steps move the weights
    optimizer = make_optimizer(clip, cfg)
    scheduler = make_scheduler(optimizer, cfg)
    rows = list(UNEVEN[rank]) if world > 1 else [r for part in UNEVEN for r in part]
    records = []
    for step in range(STEPS):
        images, ids = _uneven_batch(step, clip.config.vision.image_size)
        out = train_step(model, clip, images[rows], ids[rows], optimizer, scheduler, uneven=True)
        records.append({
            "loss": out.loss.detach(),
            "correct": (int(out.correct_i2t), int(out.correct_t2i)),
            "grads": {k: p.grad.detach().clone() for k, p in clip.named_parameters()},
            "weights": {k: v.detach().clone() for k, v in clip.state_dict().items()},
        })
    return records


def test_uneven_ranks_with_hard_negatives_equal_one_process(spawned):
    """5 and 7 rows on two gloo ranks == 12 rows in one process: the mean of the rank
    losses, every gradient, and the weights after two AdamW steps."""
    two = [torch.load(spawned / f"uneven{r}.pt", weights_only=True) for r in range(WORLD)]
    one = _run_uneven(0, 1)
    for step in range(STEPS):
        tol = 1e-10 if step == 0 else 1e-8
        mean = torch.stack([two[r][step]["loss"] for r in range(WORLD)]).mean()
        torch.testing.assert_close(mean, one[step]["loss"], atol=tol, rtol=tol)
        assert [sum(two[r][step]["correct"][k] for r in range(WORLD)) for k in range(2)] == list(one[step]["correct"])
        for r in range(WORLD):
            for name, g in two[r][step]["grads"].items():
                torch.testing.assert_close(g, one[step]["grads"][name], atol=1e-6, rtol=1e-6, msg=name)
    for r in range(WORLD):
        for name, w in two[r][-1]["weights"].items():
            torch.testing.assert_close(w, one[-1]["weights"][name], atol=1e-6, rtol=1e-6, msg=name)
