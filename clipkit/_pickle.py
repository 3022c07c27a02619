"""Pieces shared by clipkit's restricted unpicklers (TorchScript archives, pickled modules).

Both readers rebuild tensors from a `torch.save`/TorchScript pickle without importing
anything the pickle names: `find_class` maps a short allowlist of names to the local
functions below. Each reader keeps its own policy for every other global (refuse it, or
record it as plain state) and its own error type; this module owns only the storage-type
table and the tensor rebuilders, which must be identical in both.
"""
from __future__ import annotations

import zipfile
from typing import Any, Callable

import torch

__all__ = ["STORAGE_DTYPES", "StorageType", "storage_type", "tensor_rebuilders", "read_zip_storage",
           "MAX_EXPANSION", "SMALL_STORAGE_BYTES"]

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


def tensor_rebuilders(error: type[Exception]) -> dict[tuple[str, str], Callable[..., Any]]:
    """`find_class` entries for torch's tensor-rebuild functions, raising `error` on a
    record that does not fit its storage (a corrupt or hostile file).

    A rebuilt tensor is a strided view of the flat storage tensor that the reader's
    `persistent_load` returned, so a reader may fill the storage afterwards (the legacy
    format stores the bytes after the pickle).
    """

    def rebuild(storage: torch.Tensor, offset, size, stride, *_unused) -> torch.Tensor:
        size, stride = tuple(size), tuple(stride)
        if len(size) != len(stride):
            raise error(f"corrupt tensor record: size {size} and stride {stride}")
        if not all(isinstance(v, int) and v >= 0 for v in (offset, *size, *stride)):
            raise error(f"corrupt tensor record: offset {offset}, size {size}, stride {stride}")
        if all(s > 0 for s in size):
            end = offset + sum((s - 1) * st for s, st in zip(size, stride)) + 1
            if end > storage.numel():
                raise error(f"tensor of size {size} runs past its storage ({storage.numel()} elements)")
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


def read_zip_storage(zf: zipfile.ZipFile, info: zipfile.ZipInfo, nbytes: int, error: type[Exception], *,
                     max_expansion: int | None = None, small: int | None = None) -> bytearray:
    """Exactly `nbytes` bytes of a zip entry, decompressed in 1 MiB steps into a buffer of that
    size, checked before anything is allocated: the entry must declare `nbytes`, and a
    compressed entry may not expand more than `max_expansion` times over its compressed
    bytes unless it is at most `small` bytes (a zip bomb). A stream that runs longer or
    shorter than declared is an error too, never a bigger buffer."""
    max_expansion = MAX_EXPANSION if max_expansion is None else max_expansion
    small = SMALL_STORAGE_BYTES if small is None else small
    if info.file_size != nbytes:
        raise error(f"storage {info.filename} holds {info.file_size} bytes, expected {nbytes}")
    if info.compress_type != zipfile.ZIP_STORED and nbytes > max(small, max_expansion * info.compress_size):
        raise error(f"storage {info.filename} would expand from {info.compress_size:,} compressed bytes to "
                    f"{nbytes:,} (more than {max_expansion}x): a decompression bomb, not weights; refusing it")
    import zlib

    buf = bytearray(nbytes)
    view = memoryview(buf)
    got = 0
    try:
        with zf.open(info) as stream:
            while got < nbytes:
                n = stream.readinto(view[got:got + (1 << 20)])
                if not n:
                    raise error(f"storage {info.filename} ends after {got} of {nbytes} bytes")
                got += n
            if stream.read(1):
                raise error(f"storage {info.filename} holds more than the {nbytes} bytes declared")
    except (zipfile.BadZipFile, zlib.error, EOFError, OSError) as e:  # a CRC or stream that lies
        raise error(f"corrupt storage {info.filename}: {type(e).__name__}: {e}") from e
    return buf
