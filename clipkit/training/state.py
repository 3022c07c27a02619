"""Run state: the one training-checkpoint format (atomic writes, one `load_checkpoint`,
`restore` into a run), the RNG state of every generator a run draws from, and the
JSON-lines run log (trimmed on resume so that no step appears twice)."""
from __future__ import annotations

import copy
import json
import os
import random
from pathlib import Path

import numpy as np
import torch
from torch import nn


# ---------------------------------------------------------------------------
# Checkpoints (atomic) and RNG state
# ---------------------------------------------------------------------------


def _rng_state() -> dict:
    np_state = np.random.get_state()
    state = {
        "torch": torch.get_rng_state(),
        "numpy": [np_state[0], torch.from_numpy(np_state[1].astype(np.int64)), int(np_state[2]),
                  int(np_state[3]), float(np_state[4])],
        "python": random.getstate(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _set_rng_state(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    name, keys, pos, has_gauss, gauss = state["numpy"]
    np.random.set_state((name, keys.numpy().astype(np.uint32), pos, has_gauss, gauss))
    version, internal, gauss_next = state["python"]
    random.setstate((version, tuple(internal), gauss_next))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def atomic_save(obj, path: str | Path) -> None:
    """torch.save to a temporary file in the same folder, fsync, then rename over `path`:
    a crash mid-write leaves the previous checkpoint intact."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        with open(tmp, "wb") as f:
            torch.save(obj, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()


# The one training-checkpoint format: a `torch.save` dict of tensors and plain data
# (read back with weights_only=True), written atomically. Keys: "format", "kind" (which
# trainer: "clip", "dvae", "transformer", "judge"), "step", "model", "optimizer",
# "scheduler" (when the trainer has one), "rng", and the trainer's own (its configs,
# CLIP's "samples_seen", the judge's data order).
FORMAT = "clipkit-train/1"
# The generator's checkpoints before the one format: safetensors with "model.*" and
# "optim.<i>.<name>" tensors and the configs in the metadata. They still load (resume).
LEGACY_GENERATOR_FORMAT = "clipkit-generator-safetensors/0"


def checkpoint_state(kind: str, step: int, model: nn.Module, optimizer: torch.optim.Optimizer,
                     scheduler=None, **extra) -> dict:
    """What `save_checkpoint` writes: the run's state at `step` (RNG states included)."""
    state = {"format": FORMAT, "kind": kind, "step": int(step), "model": model.state_dict(),
             "optimizer": optimizer.state_dict(), "rng": _rng_state()}
    if scheduler is not None:
        state["scheduler"] = scheduler.state_dict()
    state.update(extra)
    return state


def save_checkpoint(path: str | Path, kind: str, step: int, model: nn.Module, optimizer: torch.optim.Optimizer,
                    scheduler=None, **extra) -> None:
    """Write `checkpoint_state(...)` to `path`, atomically."""
    atomic_save(checkpoint_state(kind, step, model, optimizer, scheduler, **extra), path)


def load_checkpoint(path: str | Path, kind: str | None = None) -> dict:
    """A training checkpoint of any clipkit trainer, as a dict in the one format.

    Read with `weights_only=True` (tensors and plain data only). `kind`: the trainer it
    must come from ("clip", "dvae", "transformer", "judge"); CLIP checkpoints written
    before the field existed count as "clip". The generator's older safetensors
    checkpoints (`<stage>-last.safetensors`) load too: model and optimizer moments,
    step and configs, no RNG or scheduler state (the generator's randomness and its
    learning rate are functions of the step, so it needs neither).

    A missing, truncated or foreign file raises a `CheckpointError` naming it."""
    from clipkit.checkpoints import CheckpointError, ModelNotFoundError

    path = Path(path)
    if not path.is_file():
        raise ModelNotFoundError(f"no training checkpoint at {path}" + (" (a folder: pass the run's "
                                 "checkpoint.pt, or --out with the run folder)" if path.is_dir() else ""))
    if path.suffix == ".safetensors":
        ckpt = _load_legacy_generator(path)
    else:
        try:
            ckpt = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as e:  # noqa: BLE001 - any failure to parse the file means "not a checkpoint"
            import pickle

            why = ("not a checkpoint of tensors (corrupt, or it holds pickled Python objects, which are never run)"
                   if isinstance(e, pickle.UnpicklingError) else
                   f"{type(e).__name__}: {(str(e).strip().splitlines() or [''])[0][:200]} (truncated or corrupt?)")
            raise CheckpointError(f"cannot read training checkpoint {path}: {why}") from e
        if not isinstance(ckpt, dict):
            raise CheckpointError(f"{path} is not a clipkit training checkpoint (it holds a {type(ckpt).__name__})")
    if kind is not None and ckpt.get("kind", "clip") != kind:
        raise CheckpointError(f"{path} is a {ckpt.get('kind', 'clip')!r} training checkpoint, not {kind!r}")
    return ckpt


def _load_legacy_generator(path: Path) -> dict:
    """A generator checkpoint of the safetensors format -> the one format's dict."""
    from safetensors import safe_open

    from clipkit.checkpoints import CheckpointError

    try:
        with safe_open(str(path), framework="pt") as f:
            meta = f.metadata() or {}
            tensors = {k: f.get_tensor(k) for k in f.keys()}
    except Exception as e:  # noqa: BLE001 - safetensors raises several types for a bad file
        raise CheckpointError(f"cannot read training checkpoint {path}: {type(e).__name__}: {e}") from e
    if "kind" not in meta or "step" not in meta:
        raise CheckpointError(f"{path} is not a clipkit training checkpoint (a safetensors file without "
                              "the generator checkpoint's kind and step)")
    optim: dict[int, dict[str, torch.Tensor]] = {}
    for k, v in tensors.items():
        if k.startswith("optim."):
            _, i, name = k.split(".", 2)
            optim.setdefault(int(i), {})[name] = v
    return {"format": LEGACY_GENERATOR_FORMAT, "kind": meta["kind"], "step": int(meta["step"]),
            "steps": int(meta.get("steps", meta["step"])),
            "model": {k[6:]: v for k, v in tensors.items() if k.startswith("model.")},
            "optimizer": {"state": optim},  # no "param_groups": `restore` keeps the optimiser's own
            "model_config": json.loads(meta.get("model_config", "{}")),
            "train_config": json.loads(meta.get("train_config", "{}"))}


def restore(ckpt: dict, model: nn.Module, optimizer: torch.optim.Optimizer | None = None, scheduler=None,
            rng: bool = True) -> int:
    """Load a checkpoint's model, optimiser, scheduler and RNG states into a run; returns
    its step.

    A `LambdaLR` keeps this run's multiplier functions (the run's settings may extend
    the steps); a checkpoint without scheduler state (the generator's older format) has
    the scheduler moved to its step. A checkpoint without optimiser hyper-parameters
    keeps the optimiser's own (its moments are in the same parameter order)."""
    model.load_state_dict(ckpt["model"], strict=True)
    step = int(ckpt["step"])
    if optimizer is not None:
        saved = ckpt["optimizer"]
        if "param_groups" not in saved:
            saved = {**optimizer.state_dict(), "state": saved["state"]}
        optimizer.load_state_dict(saved)
    if scheduler is not None:
        own = getattr(scheduler, "lr_lambdas", None)
        if "scheduler" in ckpt:
            keep = [copy.copy(f) for f in own] if own is not None else None  # load_state_dict updates them in place
            scheduler.load_state_dict(ckpt["scheduler"])
            if keep is not None:
                scheduler.lr_lambdas = keep
        elif own is not None:
            scheduler.last_epoch = step
            scheduler._last_lr = [base * f(step) for base, f in zip(scheduler.base_lrs, own)]
            for group, lr in zip(scheduler.optimizer.param_groups, scheduler._last_lr):
                group["lr"] = lr
        else:
            raise ValueError(f"the checkpoint has no scheduler state to give a {type(scheduler).__name__}")
    if rng and "rng" in ckpt:
        _set_rng_state(ckpt["rng"])
    return step


def _log_line(path: Path, record: dict) -> None:
    with open(path, "a") as f:
        f.write(json.dumps(record) + "\n")


def _trim_log(path: Path, step: int) -> int:
    """Before a resume from `step`: moves the log's records of later steps (written by a
    run that stopped after its last checkpoint, so their training is being redone) to
    `log.discarded.jsonl` beside it. Returns how many were moved."""
    if not path.is_file():
        return 0
    keep, drop = [], []
    for line in path.read_text().splitlines():
        if not line.strip():
            continue
        try:
            later = int(json.loads(line).get("step", 0)) > step
        except (ValueError, AttributeError):
            later = False  # not ours: keep it as it is
        (drop if later else keep).append(line)
    if drop:
        with open(path.with_name("log.discarded.jsonl"), "a") as f:
            f.write("\n".join(drop) + "\n")
        tmp = path.with_name(path.name + ".tmp")
        tmp.write_text("".join(line + "\n" for line in keep))
        os.replace(tmp, path)
    return len(drop)
