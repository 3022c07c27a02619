"""OpenAI's TorchScript archives, read without TorchScript or arbitrary unpickling, with
what they may allocate bounded before allocating."""
from __future__ import annotations

import os
import pickle
import zipfile
import zlib
from pathlib import Path

import torch

from clipkit.checkpoints.errors import CheckpointError, PickleRefused
from clipkit.checkpoints.safe_pickle import ArchiveStorages, Record, RestrictedUnpickler

StateDict = dict[str, torch.Tensor]


# ---------------------------------------------------------------------------
# OpenAI TorchScript archives, read without TorchScript or arbitrary unpickling
# ---------------------------------------------------------------------------

def _identity(value, *_unused):
    return value


def _is_torchscript_class(module: str, _name: str) -> bool:
    """TorchScript classes (`__torch__.*`) become inert records of their state: the archive's
    module tree, whose `state` dicts hold parameters, buffers, submodules and attributes."""
    return module == "__torch__" or module.startswith("__torch__.")


# What data.pkl may name besides tensors: each maps to a local function or type.
_ALLOWED = {
    ("collections", "OrderedDict"): dict,
    ("builtins", "set"): set,
    # TorchScript tags typed lists/dicts; the values themselves are plain.
    ("torch.jit._pickle", "restore_type_tag"): _identity,
    ("torch.jit._pickle", "build_intlist"): list,
    ("torch.jit._pickle", "build_doublelist"): list,
    ("torch.jit._pickle", "build_boollist"): list,
    ("torch.jit._pickle", "build_tensorlist"): list,
}


def _unpickler(file, load_storage) -> RestrictedUnpickler:
    return RestrictedUnpickler(file, load_storage, allow=_ALLOWED, records=_is_torchscript_class,
                               source="the archive's data.pkl", what="tensors and TorchScript module state")


def _find_data_pkl(names: list[str]) -> str | None:
    for name in names:
        parts = name.split("/")
        if len(parts) == 2 and parts[1] == "data.pkl":
            return name
    return None


def is_torchscript_archive(names: list[str]) -> bool:
    """A zip from `torch.jit.save`: `<name>/data.pkl` plus TorchScript code or constants."""
    data_pkl = _find_data_pkl(names)
    if data_pkl is None:
        return False
    prefix = data_pkl.split("/")[0] + "/"
    return any(n.startswith(prefix + "code/") or n == prefix + "constants.pkl" for n in names)


def _collect_tensors(root: Record) -> StateDict:
    """Every tensor under `root`, by dotted path; iterative, so any nesting depth is fine."""
    out: StateDict = {}
    seen: set[int] = set()
    stack: list[tuple[Record, str]] = [(root, "")]
    while stack:
        obj, prefix = stack.pop()
        if id(obj) in seen:
            continue
        seen.add(id(obj))
        state = getattr(obj, "state", None)
        if not isinstance(state, dict):
            continue
        children = []
        for key, value in state.items():
            if not isinstance(key, str):
                continue
            if isinstance(value, torch.Tensor):
                out[prefix + key] = value
            elif isinstance(value, Record):
                children.append((value, f"{prefix}{key}."))
        stack.extend(reversed(children))  # depth first, in the file's order
    return out


# Bounds on what an archive may make us allocate, checked before allocating. The largest
# registered architecture (RN50x64) has 623,669,128 weights: 2.49 GB in float32; no real
# CLIP archive needs more than that (the released ones are float16, half of it).
# A compressed storage is further bounded by safe_pickle.read_zip_storage (zip bombs).
MAX_ARCHIVE_BYTES = 623_669_128 * 4 * 21 // 20  # +5% for non-weight tensors (attn_mask, ...)


def read_torchscript_archive(path: str | os.PathLike) -> StateDict:
    """Every tensor of a `torch.jit.save` archive, by dotted module path.

    data.pkl is read with a restricted unpickler: TorchScript classes become inert
    records, tensors are rebuilt as views of the archive's `data/<key>` blobs (memory
    mapped, copy-on-write), and any other global is refused. No TorchScript code runs.
    Tensor attributes that are not parameters or buffers (OpenAI's `attn_mask`, its
    `input_resolution`/`context_length`/`vocab_size`) come back too; `clean_state_dict`
    drops them.
    """
    path = Path(path)
    with open(path, "rb") as f, zipfile.ZipFile(f) as zf:
        infos = {info.filename: info for info in zf.infolist()}
        data_pkl = _find_data_pkl(list(infos))
        if data_pkl is None:
            raise CheckpointError(f"{path}: zip archive without <name>/data.pkl; not a TorchScript archive")
        prefix = data_pkl.split("/")[0]
        order = infos.get(f"{prefix}/byteorder")
        if order is not None and zf.read(order).strip() not in (b"little", b""):
            raise CheckpointError(f"{path}: big-endian archives are not supported")
        load_storage = ArchiveStorages(f, zf, f"{prefix}/data/", MAX_ARCHIVE_BYTES,
                                       ", more than the largest known CLIP architecture (RN50x64) needs")
        with zf.open(infos[data_pkl]) as pkl:
            try:
                root = _unpickler(pkl, load_storage).load()
            except CheckpointError as e:  # PickleRefused stays PickleRefused
                raise type(e)(f"{path}: {e}") from None
            except RecursionError:
                raise PickleRefused(f"{path}: data.pkl is nested too deeply to be a model's state; "
                                    "refusing it") from None
            except (pickle.UnpicklingError, EOFError, ValueError, TypeError, AttributeError,
                    IndexError, KeyError, zipfile.BadZipFile, zlib.error, OverflowError, MemoryError) as e:
                raise CheckpointError(f"{path}: corrupt data.pkl ({type(e).__name__}: {e})") from e
    if not isinstance(root, Record):
        raise CheckpointError(f"{path}: data.pkl does not hold a TorchScript module")
    return _collect_tensors(root)


