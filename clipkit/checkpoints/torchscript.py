"""OpenAI's TorchScript archives, read without TorchScript or arbitrary unpickling, with
what they may allocate bounded before allocating."""
from __future__ import annotations

import mmap
import os
import pickle
import struct
import zipfile
import zlib
from pathlib import Path
from typing import Any

import torch

from clipkit import _pickle
from clipkit._pickle import StorageType, storage_type, tensor_rebuilders
from clipkit.checkpoints.errors import CheckpointError

StateDict = dict[str, torch.Tensor]


# ---------------------------------------------------------------------------
# OpenAI TorchScript archives, read without TorchScript or arbitrary unpickling
# ---------------------------------------------------------------------------

class _ScriptObject:
    """Stands in for a TorchScript class (`__torch__.*`): records the state it is given.

    The archive's module tree is rebuilt from these; their `state` dicts hold the
    parameters, buffers, submodules and plain attributes by name.
    """

    _qualname = "__torch__"

    def __setstate__(self, state: Any) -> None:
        self.state = state


def _identity(value, *_unused):
    return value


class _RestrictedUnpickler(pickle.Unpickler):
    """Rebuilds tensors and TorchScript module state; refuses every other global.

    `find_class` never imports anything: each allowed name maps to a local function
    or stand-in class, so loading an archive cannot run code from it.
    """

    _ALLOWED = {
        **tensor_rebuilders(CheckpointError),
        ("collections", "OrderedDict"): dict,
        ("builtins", "set"): set,
        # TorchScript tags typed lists/dicts; the values themselves are plain.
        ("torch.jit._pickle", "restore_type_tag"): _identity,
        ("torch.jit._pickle", "build_intlist"): list,
        ("torch.jit._pickle", "build_doublelist"): list,
        ("torch.jit._pickle", "build_boollist"): list,
        ("torch.jit._pickle", "build_tensorlist"): list,
    }

    def __init__(self, file, load_storage):
        super().__init__(file)
        self._load_storage = load_storage
        self._classes: dict[str, type] = {}

    def find_class(self, module: str, name: str):
        storage = storage_type(module, name)
        if storage is not None:
            return storage
        if (module, name) in self._ALLOWED:
            return self._ALLOWED[(module, name)]
        if module == "__torch__" or module.startswith("__torch__."):
            qualname = f"{module}.{name}"
            if qualname not in self._classes:
                self._classes[qualname] = type("ScriptObject", (_ScriptObject,), {"_qualname": qualname})
            return self._classes[qualname]
        raise CheckpointError(
            f"the archive's data.pkl references {module}.{name}, which is not needed to "
            "rebuild tensors; refusing to load it (only tensors and TorchScript module "
            "state are read)"
        )

    def persistent_load(self, pid):
        if not (isinstance(pid, tuple) and len(pid) == 5 and pid[0] == "storage"
                and isinstance(pid[1], StorageType) and isinstance(pid[2], str)
                and isinstance(pid[4], int) and pid[4] >= 0):
            raise CheckpointError(f"unexpected persistent id in data.pkl: {pid!r}")
        _, stype, key, _location, numel = pid
        return self._load_storage(key, stype.dtype, numel)


def _zip_entry_offset(mm: mmap.mmap, info: zipfile.ZipInfo) -> int:
    """Offset of an entry's bytes in the file (after its local header)."""
    header = mm[info.header_offset:info.header_offset + 30]
    if len(header) != 30 or header[:4] != b"PK\x03\x04":
        raise CheckpointError(f"corrupt zip entry {info.filename}")
    name_len, extra_len = struct.unpack("<HH", header[26:30])
    return info.header_offset + 30 + name_len + extra_len


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


def _collect_tensors(root: _ScriptObject) -> StateDict:
    """Every tensor under `root`, by dotted path; iterative, so any nesting depth is fine."""
    out: StateDict = {}
    seen: set[int] = set()
    stack: list[tuple[_ScriptObject, str]] = [(root, "")]
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
            elif isinstance(value, _ScriptObject):
                children.append((value, f"{prefix}{key}."))
        stack.extend(reversed(children))  # depth first, in the file's order
    return out


# Bounds on what an archive may make us allocate, checked before allocating. The largest
# registered architecture (RN50x64) has 623,669,128 weights: 2.49 GB in float32; no real
# CLIP archive needs more than that (the released ones are float16, half of it).
# A compressed storage is further bounded by clipkit._pickle.read_zip_storage (zip bombs).
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
        mm = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_COPY)
        storages: dict[str, torch.Tensor] = {}
        total = [0]  # bytes of all storages so far

        def load_storage(key: str, dtype: torch.dtype, numel: int) -> torch.Tensor:
            if key in storages:
                storage = storages[key]
                if storage.dtype != dtype or storage.numel() != numel:
                    raise CheckpointError(f"storage {key} is used with two different types")
                return storage
            info = infos.get(f"{prefix}/data/{key}")
            if info is None:
                raise CheckpointError(f"data.pkl refers to storage {key}, which the archive lacks")
            itemsize = torch.empty((), dtype=dtype).element_size()
            nbytes = numel * itemsize
            if info.file_size != nbytes:
                raise CheckpointError(
                    f"storage {key} holds {info.file_size} bytes, expected {numel} x {itemsize}"
                )
            total[0] += nbytes
            if total[0] > MAX_ARCHIVE_BYTES:
                raise CheckpointError(
                    f"the archive's tensors would take more than {MAX_ARCHIVE_BYTES:,} bytes, more than the "
                    "largest known CLIP architecture (RN50x64) needs; refusing to allocate them")
            offset = _zip_entry_offset(mm, info)
            if offset + info.compress_size > len(mm):
                raise CheckpointError(f"storage {key} runs past the end of the file (truncated archive?)")
            if info.compress_type == zipfile.ZIP_STORED and offset % itemsize == 0:
                storage = torch.frombuffer(mm, dtype=dtype, count=numel, offset=offset) if numel else \
                    torch.empty(0, dtype=dtype)
            else:  # compressed or misaligned: one copy, of exactly the declared size, bounded
                raw = _pickle.read_zip_storage(zf, info, nbytes, CheckpointError)
                storage = torch.frombuffer(raw, dtype=dtype) if numel else torch.empty(0, dtype=dtype)
            storages[key] = storage
            return storage

        with zf.open(infos[data_pkl]) as pkl:
            try:
                root = _RestrictedUnpickler(pkl, load_storage).load()
            except CheckpointError as e:
                raise CheckpointError(f"{path}: {e}") from None
            except RecursionError:
                raise CheckpointError(f"{path}: data.pkl is nested too deeply to be a model's state; "
                                      "refusing it") from None
            except (pickle.UnpicklingError, EOFError, ValueError, TypeError, AttributeError,
                    IndexError, KeyError, zipfile.BadZipFile, zlib.error, OverflowError, MemoryError) as e:
                raise CheckpointError(f"{path}: corrupt data.pkl ({type(e).__name__}: {e})") from e
    if not isinstance(root, _ScriptObject):
        raise CheckpointError(f"{path}: data.pkl does not hold a TorchScript module")
    return _collect_tensors(root)


