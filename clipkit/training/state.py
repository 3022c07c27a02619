"""Run state: atomic checkpoints, the RNG state of every generator a run draws from, and
the JSON-lines run log (trimmed on resume so that no step appears twice)."""
from __future__ import annotations

import json
import os
import random
from pathlib import Path

import numpy as np
import torch


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


def load_checkpoint(path: str | Path) -> dict:
    """A training checkpoint; read with `weights_only=True` (tensors and plain data only).

    A missing, truncated or foreign file raises a `CheckpointError` naming it."""
    from clipkit.checkpoints import CheckpointError, ModelNotFoundError

    path = Path(path)
    if not path.is_file():
        raise ModelNotFoundError(f"no training checkpoint at {path}" + (" (a folder: pass the run's "
                                 "checkpoint.pt, or --out with the run folder)" if path.is_dir() else ""))
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
    return ckpt


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
