"""The training skeleton every clipkit trainer runs on (CLIP, the dVAE, the generator's
transformer, the benchmarks' judge): a `Trainer` owns the model, the optimiser and the
learning-rate scheduler, runs the steps up to `stop_at`, logs a record every
`log_every` steps, checkpoints every `save_every` steps and at the end (atomically, in
the one format of `clipkit.training.state`), and resumes from such a checkpoint with
its RNG states, so that k steps in one go and k/2 + resume + k/2 give the same weights.

A trainer keeps only what is its own: building the model, drawing a batch, the loss.

    trainer = Trainer(model, optimizer, scheduler, kind="dvae", steps=1000, checkpoint=out / "dvae-last.pt",
                      save_every=250, log_every=50, log=print_record)
    if resume:
        trainer.restore(load_checkpoint(out / "dvae-last.pt", kind="dvae"))

    def step(s, batch):                      # s: 0-based index of the step about to run
        loss = model.loss(...)
        trainer.update(loss)                 # zero_grad, backward, clip, optimiser + scheduler step
        return {"loss": loss.item()}         # what `on_log` sees

    trainer.fit(step)
"""
from __future__ import annotations

import contextlib
import time
from pathlib import Path
from typing import Any, Callable, Iterable

import torch
from torch import nn

from clipkit.training.state import restore, save_checkpoint


PRECISIONS = ("fp32", "bf16")


def autocast_context(precision: str, device: torch.device):
    """The forward pass's autocast for a trainer's `precision`: bfloat16 autocast on
    `device` for "bf16" (the master weights stay float32), nothing for "fp32"."""
    if precision == "bf16":
        return torch.autocast(device.type, dtype=torch.bfloat16)
    if precision == "fp32":
        return contextlib.nullcontext()
    raise ValueError(f"precision must be one of {PRECISIONS}, got {precision!r}")


def optimizer_step(loss: torch.Tensor, optimizer: torch.optim.Optimizer, scheduler=None, *,
                   grad_clip: float = 0.0, params: Iterable[torch.Tensor] | None = None) -> None:
    """One update on `loss`: zero the gradients, backward, clip their global norm to
    `grad_clip` (over `params`; 0 = no clipping), optimiser step, then scheduler step."""
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    if grad_clip:
        if params is None:
            params = [p for g in optimizer.param_groups for p in g["params"]]
        torch.nn.utils.clip_grad_norm_(params, grad_clip)
    optimizer.step()
    if scheduler is not None:
        scheduler.step()


def format_record(record: dict) -> str:
    """A log record as one line of `key=value` (floats to 4 significant digits)."""
    return " ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in record.items())


class Trainer:
    """The loop shared by every trainer; see the module docstring.

    `steps`: the run's length (its schedules span it); `stop_at`: stop early after this
    step (checkpointed; resume later). `checkpoint`: the path of the latest checkpoint
    (None: none written); `save_every`: also every N steps (0: only at the end).
    `state`: a callable giving the trainer's own entries of each checkpoint (its configs,
    data position). `log`: called with each record on the main process. `main`: whether
    this process writes (rank 0); every rank runs `on_log`, which may all-reduce.
    """

    def __init__(self, model: nn.Module, optimizer: torch.optim.Optimizer, scheduler=None, *, kind: str,
                 steps: int, stop_at: int | None = None, grad_clip: float = 0.0,
                 checkpoint: str | Path | None = None, save_every: int = 0, log_every: int = 0,
                 log: Callable[[dict], None] | None = None, state: Callable[[], dict] | None = None,
                 main: bool = True):
        self.model, self.optimizer, self.scheduler = model, optimizer, scheduler
        self.kind, self.steps, self.grad_clip = kind, int(steps), float(grad_clip or 0.0)
        self.end = self.steps if stop_at is None else min(int(stop_at), self.steps)
        self.checkpoint = Path(checkpoint) if checkpoint is not None else None
        self.save_every, self.log_every = int(save_every or 0), int(log_every or 0)
        self.log, self.state, self.main = log, state, main
        self.step = 0  # steps done
        self.history: list[dict] = []

    # -- state ------------------------------------------------------------------------

    def restore(self, ckpt: dict) -> int:
        """Continue from a checkpoint (`load_checkpoint`'s dict): weights, optimiser,
        scheduler, RNG states and the step. Returns the step."""
        self.step = restore(ckpt, self.model, self.optimizer, self.scheduler)
        return self.step

    def save(self) -> None:
        """The latest checkpoint, on the main process (a no-op without a path)."""
        if self.checkpoint is None or not self.main:
            return
        extra = self.state() if self.state is not None else {}
        self.checkpoint.parent.mkdir(parents=True, exist_ok=True)
        save_checkpoint(self.checkpoint, self.kind, self.step, self.model, self.optimizer, self.scheduler, **extra)

    # -- the loop ---------------------------------------------------------------------

    def update(self, loss: torch.Tensor) -> None:
        """`optimizer_step` with this run's optimiser, scheduler and clipping."""
        optimizer_step(loss, self.optimizer, self.scheduler, grad_clip=self.grad_clip,
                       params=self.model.parameters())

    def fit(self, step_fn: Callable[[int, Any], dict | None], batches: Iterable | None = None, *,
            on_log: Callable[[int, dict, float, float], dict | None] | None = None,
            after_step: Callable[[int], None] | None = None,
            on_save: Callable[[int], None] | None = None) -> list[dict]:
        """Run the steps from `self.step` to the end; returns the logged records.

        `step_fn(s, batch)` runs step s (0-based; `batch` is the next item of `batches`,
        or None without them) and returns its metrics. Every `log_every` steps and at the
        last one, `on_log(step, metrics, lr, seconds_per_step)` makes the record (default:
        step, the metrics, lr); `after_step(step)` runs after every step, `on_save(step)`
        after every checkpoint. A checkpoint is written at the end even when no step ran.
        """
        it = iter(batches) if batches is not None else None
        t0, first = time.perf_counter(), self.step
        while self.step < self.end:
            if it is None:
                batch = None
            else:
                try:
                    batch = next(it)
                except StopIteration:
                    break
            lr = self.optimizer.param_groups[0]["lr"]  # the rate this step uses
            metrics = step_fn(self.step, batch) or {}
            self.step += 1
            if self.log_every and (self.step % self.log_every == 0 or self.step == self.end):
                seconds = (time.perf_counter() - t0) / (self.step - first)
                record = (on_log(self.step, metrics, lr, seconds) if on_log is not None
                          else {"step": self.step, **metrics, "lr": lr})
                if record:
                    self.history.append(record)
                    if self.log is not None and self.main:
                        self.log(record)
            if after_step is not None:
                after_step(self.step)
            if self.save_every and self.step % self.save_every == 0 and self.step != self.end:
                self._checkpoint(on_save)
        self._checkpoint(on_save)
        return self.history

    def _checkpoint(self, on_save) -> None:
        if self.checkpoint is None or not self.main:
            return
        self.save()
        if on_save is not None:
            on_save(self.step)
