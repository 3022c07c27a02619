"""The one restricted unpickler, and the bounded zip reading around it.

Both pickle readers, OpenAI's TorchScript archives (`torchscript.py`) and `torch.save`d
modules such as the released DALL·E dVAE (`clipkit.generator.openai_dvae`), read through
`RestrictedUnpickler`. It rebuilds tensors from a `torch.save`/TorchScript pickle without
importing anything the pickle names: `find_class` maps a short allow-list of names to
local functions, and each reader says what else it accepts (its own allow-list, and which
classes may stand as inert records of their state). `ArchiveStorages` reads the tensors'
bytes out of a zip archive for it, bounded before anything is allocated (`read_zip_storage`
refuses decompression bombs). Every refusal, from the unpickler, the tensor rebuilders or
the zip reading, is a `PickleRefused`, itself a `CheckpointError`.
"""
from __future__ import annotations

import mmap
import pickle
import struct
import zipfile
import zlib
from typing import Any, Callable, Mapping

import torch

from clipkit.checkpoints.errors import PickleRefused

__all__ = ["PickleRefused", "RestrictedUnpickler", "Record", "ArchiveStorages", "STORAGE_DTYPES", "StorageType",
           "storage_type", "tensor_rebuilders", "read_zip_storage", "MAX_EXPANSION", "SMALL_STORAGE_BYTES"]

# A compressed storage may expand by at most this factor over the bytes it really occupies
# in the file, unless it is small. torch.save and torch.jit.save store tensors uncompressed;
# float weights deflate by about 1.1x, a zip bomb by 1,000x.
MAX_EXPANSION = 64
SMALL_STORAGE_BYTES = 64 * 1024 * 1024

# Storage classes a pickle names as `torch.<Name>` -> the dtype of their elements.
STORAGE_DTYPES: dict[str, torch.dtype] = {
    "FloatStorage": torch.float32, "DoubleStorage": torch.float64, "HalfStorage": torch.float16,
    "BFloat16Storage": torch.bfloat16, "LongStorage": torch.int64, "IntStorage": torch.int32,
    "ShortStorage": torch.int16, "CharStorage": torch.int8, "ByteStorage": torch.uint8,
    "BoolStorage": torch.bool, "UntypedStorage": torch.uint8,
}


# ---------------------------------------------------------------------------
# Stand-ins: storage types, tensors, recorded objects
# ---------------------------------------------------------------------------


class StorageType:
    """Stands in for `torch.FloatStorage` & co. in a pickle: only its dtype is used."""

    def __init__(self, dtype: torch.dtype):
        self.dtype = dtype

    def __repr__(self) -> str:
        return f"StorageType({self.dtype})"


def storage_type(module: str, name: str) -> StorageType | None:
    """The stand-in for `module.name` if it is a storage class, else None."""
    if module == "torch" and name in STORAGE_DTYPES:
        return StorageType(STORAGE_DTYPES[name])
    return None


def tensor_rebuilders() -> dict[tuple[str, str], Callable[..., Any]]:
    """`find_class` entries for torch's tensor-rebuild functions, raising `PickleRefused` on a
    record that does not fit its storage (a corrupt or hostile file).

    A rebuilt tensor is a strided view of the flat storage tensor that the reader's
    `load_storage` returned, so a reader may fill the storage afterwards (the legacy
    format stores the bytes after the pickle).
    """

    def rebuild(storage: torch.Tensor, offset, size, stride, *_unused) -> torch.Tensor:
        size, stride = tuple(size), tuple(stride)
        if len(size) != len(stride):
            raise PickleRefused(f"corrupt tensor record: size {size} and stride {stride}")
        if not all(isinstance(v, int) and v >= 0 for v in (offset, *size, *stride)):
            raise PickleRefused(f"corrupt tensor record: offset {offset}, size {size}, stride {stride}")
        if all(s > 0 for s in size):
            end = offset + sum((s - 1) * st for s, st in zip(size, stride)) + 1
            if end > storage.numel():
                raise PickleRefused(f"tensor of size {size} runs past its storage ({storage.numel()} elements)")
        # as_strided's offset counts from the start of the underlying memory, and the
        # storage may itself be a view (legacy storage views).
        return torch.as_strided(storage, size, stride, storage.storage_offset() + offset)

    def rebuild_v3(storage, offset, size, stride, requires_grad, hooks, dtype, *_unused):
        return rebuild(storage.view(dtype) if storage.dtype != dtype else storage, offset, size, stride)

    def parameter(data, *_unused):
        return data

    return {
        ("torch._utils", "_rebuild_tensor"): rebuild,
        ("torch._utils", "_rebuild_tensor_v2"): rebuild,
        ("torch._utils", "_rebuild_tensor_v3"): rebuild_v3,
        ("torch._utils", "_rebuild_parameter"): parameter,
        ("torch._utils", "_rebuild_parameter_with_state"): parameter,
    }


_REBUILDERS = tensor_rebuilders()


class Record:
    """An object of a class that is never imported: its class's module and name, and the
    state the pickle gives it (`state`, a plain dict for modules)."""

    module = "?"
    name = "?"

    def __new__(cls, *args):  # NEWOBJ: cls.__new__(cls, *args); nothing of the real class runs
        obj = object.__new__(cls)
        obj.args, obj.state = args, None
        return obj

    def __init__(self, *args, **kwargs):  # only reached when the pickle *calls* the class (REDUCE/INST)
        raise PickleRefused(f"the pickle calls {self.module}.{self.name}(...); the restricted reader "
                            "only records objects' state")

    def __setstate__(self, state):  # BUILD
        self.state = state

    def __repr__(self):
        return f"<record {self.module}.{self.name}>"


# ---------------------------------------------------------------------------
# The restricted unpickler
# ---------------------------------------------------------------------------


class RestrictedUnpickler(pickle.Unpickler):
    """Rebuilds tensors and the plain data around them; never imports what the pickle names.

    `find_class` resolves, in order: torch's storage types and tensor rebuilders, torch's
    dtype constants, the caller's `allow` (name -> a local function or type), then a class
    for which `records(module, name)` holds becomes an inert `Record` subclass (created,
    never called). Every other global is refused with `PickleRefused`, whose message says
    `what` is read. `persistent_load` hands storage ids to `load_storage(key, dtype, numel)`;
    `module_pids=True` also accepts the legacy format's per-module source ids.
    """

    def __init__(self, file, load_storage: Callable[[str, torch.dtype, int], torch.Tensor] | None = None, *,
                 allow: Mapping[tuple[str, str], Any] | None = None, records: Callable[[str, str], bool] | None = None,
                 module_pids: bool = False, source: str = "the pickle", what: str = "tensors"):
        super().__init__(file)
        self._load_storage = load_storage
        self._allow = allow or {}
        self._records = records
        self._module_pids = module_pids
        self._source, self._what = source, what
        self._classes: dict[tuple[str, str], type] = {}

    def find_class(self, module: str, name: str):
        storage = storage_type(module, name)
        if storage is not None:
            return storage
        if (module, name) in _REBUILDERS:
            return _REBUILDERS[(module, name)]
        if module == "torch" and isinstance(getattr(torch, name, None), torch.dtype):
            return getattr(torch, name)  # a dtype constant, not a call
        if (module, name) in self._allow:
            return self._allow[(module, name)]
        if self._records is not None and self._records(module, name):
            key = (module, name)
            if key not in self._classes:
                self._classes[key] = type(name, (Record,), {"module": module, "name": name})
            return self._classes[key]
        raise PickleRefused(f"{self._source} references {module}.{name}, which is not needed to rebuild "
                            f"tensors; refusing to load it (only {self._what} are read)")

    def persistent_load(self, pid):
        if self._module_pids and isinstance(pid, tuple) and len(pid) == 4 and pid[0] == "module":
            # The legacy format (torch < 1.6, the released DALL·E files) saves each nn.Module
            # class as ('module', class, source_file, source) so that torch.load can warn when
            # the source changed. The class was resolved by find_class to a record (nothing
            # imported); the source is a plain string, read as data and never compiled.
            cls = pid[1]
            if not (isinstance(cls, type) and issubclass(cls, Record)):
                raise PickleRefused(f"unexpected class in a module persistent id: {cls!r:.80}")
            return cls
        # ('storage', type, key, location, numel) and, in the legacy format, a sixth item:
        # a view (view_key, offset, size) of the storage, or None.
        if not (isinstance(pid, tuple) and len(pid) in (5, 6) and pid[0] == "storage"
                and isinstance(pid[1], StorageType) and isinstance(pid[2], (str, int))
                and type(pid[4]) is int and pid[4] >= 0 and self._load_storage is not None):
            raise PickleRefused(f"unexpected persistent id {pid!r:.80}")
        stype, key, _location, numel = pid[1:5]
        storage = self._load_storage(str(key), stype.dtype, numel)
        view = pid[5] if len(pid) == 6 else None
        if view is not None:
            if not (isinstance(view, tuple) and len(view) == 3 and type(view[1]) is int and type(view[2]) is int
                    and 0 <= view[1] and 0 <= view[2] and view[1] + view[2] <= storage.numel()):
                raise PickleRefused(f"storage view {view!r:.80} does not fit its storage of {storage.numel()} elements")
            _, offset, size = view
            storage = storage[offset:offset + size]
        return storage


# ---------------------------------------------------------------------------
# Bounded zip reading
# ---------------------------------------------------------------------------


def read_zip_storage(zf: zipfile.ZipFile, info: zipfile.ZipInfo, nbytes: int, *,
                     max_expansion: int | None = None, small: int | None = None) -> bytearray:
    """Exactly `nbytes` bytes of a zip entry, decompressed in 1 MiB steps into a buffer of that
    size, checked before anything is allocated: the entry must declare `nbytes`, and a
    compressed entry may not expand more than `max_expansion` times over its compressed
    bytes unless it is at most `small` bytes (a zip bomb). A stream that runs longer or
    shorter than declared is refused too, never a bigger buffer."""
    max_expansion = MAX_EXPANSION if max_expansion is None else max_expansion
    small = SMALL_STORAGE_BYTES if small is None else small
    if info.file_size != nbytes:
        raise PickleRefused(f"storage {info.filename} holds {info.file_size} bytes, expected {nbytes}")
    if info.compress_type != zipfile.ZIP_STORED and nbytes > max(small, max_expansion * info.compress_size):
        raise PickleRefused(f"storage {info.filename} would expand from {info.compress_size:,} compressed bytes "
                            f"to {nbytes:,} (more than {max_expansion}x): a decompression bomb, not weights; "
                            "refusing it")
    buf = bytearray(nbytes)
    view = memoryview(buf)
    got = 0
    try:
        with zf.open(info) as stream:
            while got < nbytes:
                n = stream.readinto(view[got:got + (1 << 20)])
                if not n:
                    raise PickleRefused(f"storage {info.filename} ends after {got} of {nbytes} bytes")
                got += n
            if stream.read(1):
                raise PickleRefused(f"storage {info.filename} holds more than the {nbytes} bytes declared")
    except (zipfile.BadZipFile, zlib.error, EOFError, OSError) as e:  # a CRC or stream that lies
        raise PickleRefused(f"corrupt storage {info.filename}: {type(e).__name__}: {e}") from e
    return buf


def _zip_entry_offset(mm: mmap.mmap, info: zipfile.ZipInfo) -> int:
    """Offset of an entry's bytes in the file (after its local header)."""
    header = mm[info.header_offset:info.header_offset + 30]
    if len(header) != 30 or header[:4] != b"PK\x03\x04":
        raise PickleRefused(f"corrupt zip entry {info.filename}")
    name_len, extra_len = struct.unpack("<HH", header[26:30])
    return info.header_offset + 30 + name_len + extra_len


class ArchiveStorages:
    """`load_storage` for the unpickler over a zip archive (`torch.save`, `torch.jit.save`):
    the storage `key` is the entry `<entries><key>`, read once however often the pickle
    names it. An entry stored uncompressed and aligned becomes a view of the file, memory
    mapped copy-on-write; any other is copied once through `read_zip_storage`. Before
    anything is allocated, each entry must hold exactly the bytes the pickle declares and
    all of them together at most `max_bytes` (`why` says where that bound comes from).
    """

    def __init__(self, file, zf: zipfile.ZipFile, entries: str, max_bytes: int, why: str = ""):
        self._zf, self._entries = zf, entries
        self._max_bytes, self._why = max_bytes, why
        self._mm = mmap.mmap(file.fileno(), 0, access=mmap.ACCESS_COPY)
        self._storages: dict[str, torch.Tensor] = {}
        self._total = 0  # bytes of all storages so far

    def __call__(self, key: str, dtype: torch.dtype, numel: int) -> torch.Tensor:
        if key in self._storages:
            storage = self._storages[key]
            if storage.dtype != dtype or storage.numel() != numel:
                raise PickleRefused(f"storage {key} is used with two different types")
            return storage
        try:
            info = self._zf.getinfo(self._entries + key)
        except KeyError:
            raise PickleRefused(f"data.pkl refers to storage {key}, which the archive lacks") from None
        itemsize = torch.empty((), dtype=dtype).element_size()
        nbytes = numel * itemsize
        if info.file_size != nbytes:
            raise PickleRefused(f"storage {key} holds {info.file_size} bytes, expected {numel} x {itemsize}")
        self._total += nbytes
        if self._total > self._max_bytes:
            raise PickleRefused(f"the archive's tensors would take more than {self._max_bytes:,} bytes{self._why}; "
                                "refusing to allocate them")
        offset = _zip_entry_offset(self._mm, info)
        if offset + info.compress_size > len(self._mm):
            raise PickleRefused(f"storage {key} runs past the end of the file (truncated archive?)")
        if not numel:
            storage = torch.empty(0, dtype=dtype)
        elif info.compress_type == zipfile.ZIP_STORED and offset % itemsize == 0:
            storage = torch.frombuffer(self._mm, dtype=dtype, count=numel, offset=offset)
        else:  # compressed or misaligned: one copy, of exactly the declared size, bounded
            storage = torch.frombuffer(read_zip_storage(self._zf, info, nbytes), dtype=dtype)
        self._storages[key] = storage
        return storage
