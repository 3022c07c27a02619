"""OpenAI's released DALL·E dVAE (encoder.pkl / decoder.pkl) in clipkit's `DVAE`.

The released files are `torch.save` of whole `dall_e.Encoder` / `dall_e.Decoder` modules:
loading them with `torch.load` imports the `dall_e` package and runs whatever the pickle
names, and breaks on torch >= 1.11 anyway (their `nn.Upsample` lacks
`recompute_scale_factor`). Here they are read by clipkit's one restricted unpickler
(`clipkit.checkpoints.safe_pickle`, which also reads TorchScript archives), rebuilding
tensors only: every other object it meets is recorded as its class name and state (plain
dicts), and any call to a function outside a short allowlist is refused. The recorded
modules are flattened to a state dict (`blocks.group_1.block_1.res_path.conv_1.w`, ...)
and converted by the pure function `convert_openai_dvae` to `DVAE` keys (`w` -> `weight`,
`b` -> `bias`, under `encoder.` / `decoder.`), with the architecture read off the shapes.

    dvae = load_openai_dvae("encoder.pkl", "decoder.pkl")      # OPENAI_DVAE architecture
    ids = dvae.encode(images_256)                              # (B, 32, 32) in [0, 8192)

`trust_pickle=True` uses `torch.load(weights_only=False)` instead: only for files you
trust, and it needs the classes the pickle names to be importable.
"""
from __future__ import annotations

import collections
import io
import os
import re
import zipfile
from pathlib import Path
from typing import Any

import torch

from clipkit.checkpoints.errors import PickleRefused
from clipkit.checkpoints.safe_pickle import ArchiveStorages, Record, RestrictedUnpickler, read_zip_storage
from clipkit.generator.dvae import DVAE, DVAEConfig

__all__ = ["PickleRefused", "read_pickled_state_dict", "convert_openai_dvae", "load_openai_dvae"]


# Bound on what one file may make the reader allocate: the released encoder and decoder
# hold about 54 and 44 million weights (float32: 216 and 176 MB); 16x that is ample.
MAX_FILE_BYTES = 4 * 1024 ** 3


# ---------------------------------------------------------------------------
# Restricted unpickler
# ---------------------------------------------------------------------------


def _encode(text: str, encoding: str = "latin1") -> bytes:  # how protocol 2 pickles bytes
    if encoding != "latin1":
        raise PickleRefused(f"_codecs.encode with encoding {encoding!r}")
    return text.encode("latin1")


# The only functions a pickle may call besides the tensor rebuilders; all are pure and
# build plain data. Any other class is recorded as its name and state, never called.
_SAFE_CALLS: dict[tuple[str, str], Any] = {
    ("collections", "OrderedDict"): collections.OrderedDict,
    ("builtins", "set"): set, ("__builtin__", "set"): set,
    ("builtins", "frozenset"): frozenset, ("__builtin__", "frozenset"): frozenset,
    ("torch", "device"): str,  # a device is kept as its name
    ("torch", "Size"): tuple,
    ("_codecs", "encode"): _encode,
}


def _record_any(_module: str, _name: str) -> bool:
    return True


def _unpickler(file, load_storage=None) -> RestrictedUnpickler:
    return RestrictedUnpickler(file, load_storage, allow=_SAFE_CALLS, records=_record_any, module_pids=True)


def _read_zip(path: Path) -> Any:
    with open(path, "rb") as f, zipfile.ZipFile(f) as zf:
        names = zf.namelist()
        pkl = next((n for n in names if n.endswith("data.pkl")), None)
        if pkl is None:
            raise ValueError(f"{path}: a zip file without data.pkl is not a torch.save archive")
        prefix = pkl[: -len("data.pkl")]
        load_storage = ArchiveStorages(f, zf, f"{prefix}data/", MAX_FILE_BYTES)
        info = zf.getinfo(pkl)
        if info.file_size > MAX_FILE_BYTES:
            raise PickleRefused(f"{pkl} declares {info.file_size:,} bytes")
        return _unpickler(io.BytesIO(read_zip_storage(zf, info, info.file_size)), load_storage).load()


_LEGACY_MAGIC = 0x1950A86A20F9469CFC6C


def _read_legacy(path: Path) -> Any:
    """torch.save's format before 1.6: pickles, then every storage's raw bytes in key order."""
    with open(path, "rb") as f:
        header = _unpickler(f)
        if header.load() != _LEGACY_MAGIC:
            raise ValueError(f"{path}: not a torch.save file (no zip archive, no legacy magic number)")
        _unpickler(f).load()  # protocol version
        _unpickler(f).load()  # sys info
        storages: dict[str, torch.Tensor] = {}

        left = os.fstat(f.fileno()).st_size  # the storages' bytes follow the pickles in the file
        total = [0]

        def load_storage(key, dtype, numel):
            if key not in storages:
                total[0] += numel * torch.empty((), dtype=dtype).element_size()
                if total[0] > min(left, MAX_FILE_BYTES):  # checked before allocating
                    raise PickleRefused(f"its storages would take {total[0]:,} bytes, more than the file holds")
                storages[key] = torch.empty(numel, dtype=dtype)  # filled below
            return storages[key]

        result = _unpickler(f, load_storage).load()
        keys = _unpickler(f).load()
        for key in keys:
            t = storages[str(key)]
            numel = int.from_bytes(f.read(8), "little")
            if numel != t.numel():
                raise ValueError(f"{path}: storage {key} holds {numel} elements, the pickle says {t.numel()}")
            nbytes = numel * t.element_size()
            data = f.read(nbytes)
            if len(data) != nbytes:
                raise ValueError(f"{path}: file ends inside storage {key}")
            if nbytes:
                t.view(torch.uint8).copy_(torch.frombuffer(bytearray(data), dtype=torch.uint8))
        return result


def _flatten(obj: Any, prefix: str, out: dict[str, torch.Tensor]) -> None:
    """Collect parameters and persistent buffers of a recorded nn.Module tree."""
    state = obj.state if isinstance(obj, Record) else None
    if not isinstance(state, dict):
        raise ValueError(f"{prefix or 'the top-level object'} is {obj!r}, not a pickled module")
    skip = state.get("_non_persistent_buffers_set") or set()
    for name, t in (state.get("_parameters") or {}).items():
        if t is not None:
            out[prefix + name] = t
    for name, t in (state.get("_buffers") or {}).items():
        if t is not None and name not in skip:
            out[prefix + name] = t
    for name, m in (state.get("_modules") or {}).items():
        if m is not None:
            _flatten(m, f"{prefix}{name}.", out)


def read_pickled_state_dict(path: str | os.PathLike, *, trust_pickle: bool = False) -> dict[str, torch.Tensor]:
    """The state dict of a `torch.save`d module (or of a saved state dict), without running code.

    By default a restricted unpickler rebuilds tensors and records every other object as
    plain state; a pickle that calls anything else is refused with `PickleRefused`.
    `trust_pickle=True` runs `torch.load(weights_only=False)`: the pickle may execute
    arbitrary code, and the classes it names must be importable.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no such file: {path}")
    if trust_pickle:
        obj = torch.load(path, map_location="cpu", weights_only=False)
        if isinstance(obj, torch.nn.Module):
            return {k: v for k, v in obj.state_dict().items()}
        if isinstance(obj, dict):
            return dict(obj)
        raise ValueError(f"{path} holds a {type(obj).__name__}, not a module or a state dict")
    try:
        obj = _read_zip(path) if zipfile.is_zipfile(path) else _read_legacy(path)
        if isinstance(obj, dict) and all(isinstance(v, torch.Tensor) for v in obj.values()):
            return {str(k): v for k, v in obj.items()}
        out: dict[str, torch.Tensor] = {}
        _flatten(obj, "", out)
        return out
    except RecursionError:
        raise PickleRefused(f"{path}: nested too deeply to be a module's state; refusing it") from None
    except PickleRefused as e:
        raise PickleRefused(
            f"{path}: refused to unpickle: {e}. The restricted reader only rebuilds tensors and "
            "module state. If you trust this file (it can run arbitrary code), pass "
            "trust_pickle=True.") from None


# ---------------------------------------------------------------------------
# Converter: release state dicts -> DVAE state dict
# ---------------------------------------------------------------------------


def _infer_config(enc: dict[str, torch.Tensor], dec: dict[str, torch.Tensor], image_size: int | None) -> DVAEConfig:
    def need(sd, key, what):
        if key not in sd:
            raise KeyError(f"{what} state dict has no {key!r}: not a DALL·E dVAE {what}? "
                           f"(first keys: {sorted(sd)[:5]})")
        return sd[key]

    stem = need(enc, "blocks.input.w", "encoder")  # (hidden, C, k, k)
    hidden, channels, k = stem.shape[0], stem.shape[1], stem.shape[2]
    groups = sorted({int(m.group(1)) for key in enc if (m := re.match(r"blocks\.group_(\d+)\.", key))})
    if groups != list(range(1, len(groups) + 1)):
        raise ValueError(f"encoder groups {groups} are not numbered 1..n")
    blocks = sorted({int(m.group(1)) for key in enc if (m := re.match(r"blocks\.group_1\.block_(\d+)\.", key))})
    widths = [need(enc, f"blocks.group_{g}.block_1.res_path.conv_4.w", "encoder").shape[0] for g in groups]
    if any(w % hidden for w in widths):
        raise ValueError(f"encoder group widths {widths} are not multiples of the stem width {hidden}")
    vocab = need(enc, "blocks.output.conv.w", "encoder").shape[0]
    dec_in = need(dec, "blocks.input.w", "decoder")  # (n_init, K, 1, 1)
    if dec_in.shape[1] != vocab:
        raise ValueError(f"encoder has {vocab} codes but the decoder takes {dec_in.shape[1]}")
    mults = tuple(w // hidden for w in widths)
    downsample = 2 ** (len(mults) - 1)
    size = image_size if image_size is not None else 32 * downsample  # the release: 256 -> 32×32
    return DVAEConfig(image_size=size, channels=channels, hidden=hidden, mults=mults,
                      blocks_per_group=len(blocks), vocab_size=vocab, n_init=dec_in.shape[0],
                      stem_kernel=k, recon_loss="logit_laplace")


def convert_openai_dvae(encoder_state: dict[str, torch.Tensor], decoder_state: dict[str, torch.Tensor],
                        image_size: int | None = None) -> tuple[dict[str, torch.Tensor], DVAEConfig]:
    """Release state dicts (`blocks.*.w` / `.b`) -> (DVAE state dict, its config). Pure.

    Every key and shape is checked against `DVAE(config)`; `image_size` only sets the
    config's nominal input size (default: 32 codes per side, the release's 256×256).
    """
    config = _infer_config(encoder_state, decoder_state, image_size)
    out: dict[str, torch.Tensor] = {}
    for part, sd in (("encoder", encoder_state), ("decoder", decoder_state)):
        for key, t in sd.items():
            base, _, leaf = key.rpartition(".")
            if leaf not in ("w", "b"):
                raise ValueError(f"unexpected {part} key {key!r}: the release names parameters w and b")
            out[f"{part}.{base}.{'weight' if leaf == 'w' else 'bias'}"] = t.detach().float()
    expected = {k: v.shape for k, v in DVAE(config).state_dict().items()}
    missing, unexpected = sorted(set(expected) - set(out)), sorted(set(out) - set(expected))
    if missing or unexpected:
        raise ValueError(f"release weights do not match the inferred dVAE {config}: "
                         f"missing {missing[:8]}, unexpected {unexpected[:8]}")
    for k, shape in expected.items():
        if out[k].shape != shape:
            raise ValueError(f"{k}: shape {tuple(out[k].shape)} in the file, {tuple(shape)} expected")
    return out, config


def load_openai_dvae(encoder_path: str | os.PathLike, decoder_path: str | os.PathLike, *,
                     trust_pickle: bool = False, image_size: int | None = None) -> DVAE:
    """A `DVAE` with OpenAI's released weights (https://cdn.openai.com/dall-e/encoder.pkl and
    decoder.pkl, downloaded by you). Files are read without running pickled code unless
    `trust_pickle=True`."""
    enc = read_pickled_state_dict(encoder_path, trust_pickle=trust_pickle)
    dec = read_pickled_state_dict(decoder_path, trust_pickle=trust_pickle)
    state, config = convert_openai_dvae(enc, dec, image_size)
    model = DVAE(config)
    model.load_state_dict(state, strict=True)
    return model.eval()
