"""Reading and writing CLIP weights: every format, architecture inference, download.

`load(name_or_path)` is the one entry point. It accepts

- a registry name ("ViT-B/32", ...): the project's shipped file, a file already in the
  cache, or the official OpenAI release downloaded into the cache (SHA-256 verified);
- an OpenAI TorchScript archive as released (read without running TorchScript or
  pickle code: a restricted unpickler rebuilds tensors only);
- a plain or open_clip state dict saved with `torch.save` (read with
  `weights_only=True`; `{"state_dict": ...}` / `{"model": ...}` wrappers and DDP
  `module.` prefixes removed);
- a Hugging Face CLIP folder (`config.json` + `model.safetensors` or
  `pytorch_model.bin`), converted to OpenAI key names;
- a safetensors file, the project's own format (`save` writes the config into its
  metadata; without one the architecture is inferred from the shapes).

Every format ends as a state dict with OpenAI's key names; each converter is a pure
`state_dict -> state_dict` function that checks the shapes it relies on.
"""
from __future__ import annotations

import dataclasses
import hashlib
import http.client
import json
import math
import mmap
import os
import pickle
import re
import struct
import urllib.error
import urllib.request
import zipfile
import zlib
from pathlib import Path
from typing import Any, Mapping

import torch
from torch.overrides import TorchFunctionMode

from clipkit.errors import ClipkitError
from clipkit import _pickle
from clipkit._pickle import StorageType, storage_type, tensor_rebuilders
from clipkit.models.config import CLIPConfig, TextConfig, VisionConfig, available_models, get_config

__all__ = [
    "load", "save", "load_state_dict", "infer_config", "download",
    "hf_to_openai", "hf_config_to_clip", "read_torchscript_archive", "clean_state_dict",
    "unwrap_state_dict", "CheckpointError", "UnsafeCheckpointError", "DownloadError", "ModelNotFoundError",
    "ChecksumError", "OPENAI_URLS",
]

StateDict = dict[str, torch.Tensor]

# ---------------------------------------------------------------------------
# Errors
# ---------------------------------------------------------------------------


class CheckpointError(ClipkitError, RuntimeError):
    """A checkpoint that cannot be read or does not fit the architecture."""


class UnsafeCheckpointError(CheckpointError):
    """The file can only be read by unpickling arbitrary Python objects."""


class ModelNotFoundError(CheckpointError, FileNotFoundError):
    """No such checkpoint file, folder or model name; the message lists what would work."""


class DownloadError(CheckpointError):
    """Weights could not be downloaded; the message says how to install them by hand."""


class ChecksumError(DownloadError):
    """A file's SHA-256 differs from the published one."""


ACCEPTED_FORMATS = (
    "an OpenAI TorchScript archive (.pt as released), "
    "a state dict saved with torch.save (plain or open_clip, .pt/.pth/.bin), "
    "a safetensors file (.safetensors), "
    "or a Hugging Face CLIP folder (config.json + model.safetensors or pytorch_model.bin)"
)

# ---------------------------------------------------------------------------
# Where weights come from
# ---------------------------------------------------------------------------

# The official releases (openai/CLIP). The SHA-256 of each file is the path component
# before its name. Tests point entries at a local server.
OPENAI_URLS: dict[str, str] = {
    "RN50": "https://openaipublic.azureedge.net/clip/models/afeb0e10f9e5a86da6080e35cf09123aca3b358a0c3e3b6c78a7b63bc04b6762/RN50.pt",
    "RN101": "https://openaipublic.azureedge.net/clip/models/8fa8567bab74a42d41c5915025a8e4538c3bdbe8804a470a72f30b0d94fab599/RN101.pt",
    "RN50x4": "https://openaipublic.azureedge.net/clip/models/7e526bd135e493cef0776de27d5f42653e6b4c8bf9e0f653bb11773263205fdd/RN50x4.pt",
    "RN50x16": "https://openaipublic.azureedge.net/clip/models/52378b407f34354e150460fe41077663dd5b39c54cd0bfd2b27167a4a06ec9aa/RN50x16.pt",
    "RN50x64": "https://openaipublic.azureedge.net/clip/models/be1cfb55d75a9666199fb2206c106743da0f6468c9d327f3e0d0a543a9919d9c/RN50x64.pt",
    "ViT-B/32": "https://openaipublic.azureedge.net/clip/models/40d365715913c9da98579312b702a82c18be219cc2a73407c4526f58eba950af/ViT-B-32.pt",
    "ViT-B/16": "https://openaipublic.azureedge.net/clip/models/5806e77cd80f8b59890b7e101eabd078d9fb84e6937f9e85e4ecb61988df416f/ViT-B-16.pt",
    "ViT-L/14": "https://openaipublic.azureedge.net/clip/models/b8cca3fd41ae0c99ba7e8951adf17d267cdb84cd88be6f7c2e0eca1737a03836/ViT-L-14.pt",
    "ViT-L/14@336px": "https://openaipublic.azureedge.net/clip/models/3035c92b350959924f9f00213499208652fc7ea050643e8b385c2dac08641f02/ViT-L-14-336px.pt",
}

# Models shipped inside the package: name -> safetensors path relative to the package
# folder (e.g. "weights/clipkit-synth.safetensors").
_SHIPPED: dict[str, str] = {"clipkit-synth": "weights/clipkit-synth.safetensors"}

_PACKAGE_DIR = Path(__file__).resolve().parent


def sha256_from_url(url: str) -> str:
    """The SHA-256 published in an OpenAI URL (the path component before the file name)."""
    digest = url.rstrip("/").split("/")[-2]
    if not re.fullmatch(r"[0-9a-f]{64}", digest):
        raise ValueError(f"no SHA-256 in URL {url!r}")
    return digest


def _file_stem(name: str) -> str:
    return name.replace("/", "-")


def _cached_candidates(name: str, root: Path) -> list[Path]:
    """Files in the cache folder `root` that may hold the weights of a registry name, in
    preference order: the project's safetensors, then the released file's own name."""
    candidates = [root / f"{_file_stem(name)}.safetensors"]
    if name in OPENAI_URLS:
        candidates.append(root / OPENAI_URLS[name].rsplit("/", 1)[-1])
    else:
        candidates.append(root / f"{_file_stem(name)}.pt")
    return candidates


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


# ---------------------------------------------------------------------------
# Converters: state dict -> state dict, OpenAI key names
# ---------------------------------------------------------------------------

# Entries in released or reference checkpoints that are not weights of the model.
_NON_WEIGHT_KEYS = ("input_resolution", "context_length", "vocab_size")
_NON_WEIGHT_SUFFIXES = ("attn_mask", "position_ids")


def unwrap_state_dict(obj: Any) -> StateDict:
    """The state dict inside a training checkpoint, without `module.` prefixes.

    open_clip saves `{"epoch", "name", "state_dict", "optimizer", ...}`; other trainers
    use `"model"`. Non-tensor entries are dropped.
    """
    if isinstance(obj, Mapping):
        for key in ("state_dict", "model", "model_state_dict"):
            inner = obj.get(key)
            if isinstance(inner, Mapping) and any(isinstance(v, torch.Tensor) for v in inner.values()):
                obj = inner
                break
    if not isinstance(obj, Mapping):
        raise CheckpointError(f"expected a state dict (a mapping of names to tensors), got {type(obj).__name__}")
    out: StateDict = {}
    for key, value in obj.items():
        if isinstance(key, str) and isinstance(value, torch.Tensor):
            out[key.removeprefix("module.") if key.startswith("module.") else key] = value
    if not out:
        raise CheckpointError("the checkpoint holds no tensors")
    return out


def clean_state_dict(state_dict: Mapping[str, torch.Tensor]) -> StateDict:
    """Drop entries that are not weights: OpenAI's three integer attributes, attention
    masks (rebuilt by the model) and position-id buffers."""
    return {
        k: v for k, v in state_dict.items()
        if k not in _NON_WEIGHT_KEYS and not k.endswith(_NON_WEIGHT_SUFFIXES)
    }


def _expect_shape(sd: Mapping[str, torch.Tensor], key: str, shape: tuple[int, ...], source: str = "") -> torch.Tensor:
    if key not in sd:
        raise CheckpointError(f"{source}missing key {key!r}")
    t = sd[key]
    if tuple(t.shape) != tuple(shape):
        raise CheckpointError(f"{source}{key!r} has shape {tuple(t.shape)}, expected {tuple(shape)}")
    return t


def _hf_value(cfg: Mapping, key: str, default):
    value = cfg.get(key)
    return default if value is None else value


def hf_config_to_clip(hf_config: Mapping[str, Any]) -> CLIPConfig:
    """A CLIPConfig from a Hugging Face CLIP `config.json` (defaults as HF's)."""
    model_type = hf_config.get("model_type", "clip")
    if model_type != "clip":
        raise CheckpointError(f"Hugging Face model_type {model_type!r} is not a CLIP model (expected 'clip')")
    v = hf_config.get("vision_config") or {}
    t = hf_config.get("text_config") or {}
    acts = {_hf_value(v, "hidden_act", "quick_gelu"), _hf_value(t, "hidden_act", "quick_gelu")}
    if len(acts) != 1 or not acts <= {"quick_gelu", "gelu"}:
        raise CheckpointError(f"unsupported Hugging Face hidden_act {sorted(acts)}; clipkit supports quick_gelu or gelu in both towers")
    for tower, cfg in (("vision", v), ("text", t)):
        eps = _hf_value(cfg, "layer_norm_eps", 1e-5)
        if abs(eps - 1e-5) > 1e-12:
            raise CheckpointError(f"Hugging Face {tower}_config.layer_norm_eps = {eps}; clipkit's layers use 1e-5")
    v_width = _hf_value(v, "hidden_size", 768)
    t_width = _hf_value(t, "hidden_size", 512)
    t_inter = _hf_value(t, "intermediate_size", 2048)
    if t_inter != 4 * t_width:
        raise CheckpointError(f"text tower intermediate_size {t_inter} is not 4 x hidden_size {t_width}, which clipkit's text tower assumes")
    return CLIPConfig(
        embed_dim=_hf_value(hf_config, "projection_dim", 512),
        vision=VisionConfig(
            image_size=_hf_value(v, "image_size", 224),
            width=v_width,
            layers=_hf_value(v, "num_hidden_layers", 12),
            heads=_hf_value(v, "num_attention_heads", 12),
            patch_size=_hf_value(v, "patch_size", 32),
            mlp_ratio=_hf_value(v, "intermediate_size", 3072) / v_width,
        ),
        text=TextConfig(
            context_length=_hf_value(t, "max_position_embeddings", 77),
            vocab_size=_hf_value(t, "vocab_size", 49408),
            width=t_width,
            heads=_hf_value(t, "num_attention_heads", 8),
            layers=_hf_value(t, "num_hidden_layers", 12),
        ),
        quick_gelu=acts == {"quick_gelu"},
    )


def _hf_block(src: Mapping[str, torch.Tensor], hf: str, oa: str, width: int, used: set[str]) -> StateDict:
    """One HF encoder layer -> one OpenAI residual block (q, k, v fused in that order)."""
    def take(key: str, shape: tuple[int, ...]) -> torch.Tensor:
        used.add(hf + key)
        return _expect_shape(src, hf + key, shape, "Hugging Face checkpoint: ")

    out: StateDict = {
        oa + "attn.in_proj_weight": torch.cat([take(f"self_attn.{p}_proj.weight", (width, width)) for p in "qkv"]),
        oa + "attn.in_proj_bias": torch.cat([take(f"self_attn.{p}_proj.bias", (width,)) for p in "qkv"]),
        oa + "attn.out_proj.weight": take("self_attn.out_proj.weight", (width, width)),
        oa + "attn.out_proj.bias": take("self_attn.out_proj.bias", (width,)),
        oa + "ln_1.weight": take("layer_norm1.weight", (width,)),
        oa + "ln_1.bias": take("layer_norm1.bias", (width,)),
        oa + "ln_2.weight": take("layer_norm2.weight", (width,)),
        oa + "ln_2.bias": take("layer_norm2.bias", (width,)),
    }
    hidden = src.get(hf + "mlp.fc1.weight")
    if hidden is None:
        raise CheckpointError(f"Hugging Face checkpoint: missing key {hf + 'mlp.fc1.weight'!r}")
    hidden = hidden.shape[0]
    out[oa + "mlp.c_fc.weight"] = take("mlp.fc1.weight", (hidden, width))
    out[oa + "mlp.c_fc.bias"] = take("mlp.fc1.bias", (hidden,))
    out[oa + "mlp.c_proj.weight"] = take("mlp.fc2.weight", (width, hidden))
    out[oa + "mlp.c_proj.bias"] = take("mlp.fc2.bias", (width,))
    return out


def _count_layers(keys, pattern: str) -> int:
    rx = re.compile(pattern)
    return len({m.group(1) for k in keys if (m := rx.match(k))})


def hf_to_openai(state_dict: Mapping[str, torch.Tensor], hf_config: Mapping[str, Any] | None = None) -> StateDict:
    """Hugging Face `CLIPModel` keys -> OpenAI keys (ViT image towers only).

    HF splits the fused attention input projection into q/k/v Linears (concatenated back
    here, q-k-v order), renames norms and MLPs, and stores the two projections as Linear
    weights, which are transposed back into OpenAI's `x @ proj` matrices. With
    `hf_config`, every shape is checked against it.
    """
    src = {k: v for k, v in state_dict.items() if not k.endswith("position_ids")}
    if "vision_model.embeddings.patch_embedding.weight" not in src:
        if any(k.startswith("vision_model.") for k in src):
            raise CheckpointError("Hugging Face checkpoint without a ViT patch embedding: only ViT image towers exist in Hugging Face CLIP")
        raise CheckpointError("not a Hugging Face CLIPModel state dict (no vision_model.* keys)")
    cfg = hf_config_to_clip(hf_config) if hf_config is not None else None
    used: set[str] = set()

    def take(key: str, shape: tuple[int, ...] | None = None) -> torch.Tensor:
        used.add(key)
        if key not in src:
            raise CheckpointError(f"Hugging Face checkpoint: missing key {key!r}")
        return _expect_shape(src, key, shape, "Hugging Face checkpoint: ") if shape is not None else src[key]

    conv = take("vision_model.embeddings.patch_embedding.weight")
    v_width, patch = conv.shape[0], conv.shape[-1]
    t_width = take("text_model.final_layer_norm.weight").shape[0]
    if cfg is not None:
        vc, tc = cfg.vision, cfg.text
        _expect_shape(src, "vision_model.embeddings.patch_embedding.weight", (vc.width, 3, vc.patch_size, vc.patch_size))
        _expect_shape(src, "text_model.final_layer_norm.weight", (tc.width,))
    v_layers = _count_layers(src, r"vision_model\.encoder\.layers\.(\d+)\.")
    t_layers = _count_layers(src, r"text_model\.encoder\.layers\.(\d+)\.")
    if cfg is not None and (v_layers, t_layers) != (cfg.vision.layers, cfg.text.layers):
        raise CheckpointError(
            f"Hugging Face checkpoint has {v_layers} vision / {t_layers} text layers; "
            f"config.json says {cfg.vision.layers} / {cfg.text.layers}"
        )
    pos_rows = take("vision_model.embeddings.position_embedding.weight").shape[0]
    if cfg is not None:
        grid = cfg.vision.image_size // cfg.vision.patch_size
        _expect_shape(src, "vision_model.embeddings.position_embedding.weight", (grid * grid + 1, v_width))
    embed = take("visual_projection.weight").shape[0]
    if cfg is not None:
        embed = cfg.embed_dim
    vocab = take("text_model.embeddings.token_embedding.weight").shape[0]
    context = take("text_model.embeddings.position_embedding.weight").shape[0]
    if cfg is not None:
        vocab, context = cfg.text.vocab_size, cfg.text.context_length

    out: StateDict = {
        "visual.conv1.weight": conv,
        "visual.class_embedding": take("vision_model.embeddings.class_embedding", (v_width,)),
        "visual.positional_embedding": take("vision_model.embeddings.position_embedding.weight", (pos_rows, v_width)),
        "visual.ln_pre.weight": take("vision_model.pre_layrnorm.weight", (v_width,)),
        "visual.ln_pre.bias": take("vision_model.pre_layrnorm.bias", (v_width,)),
        "visual.ln_post.weight": take("vision_model.post_layernorm.weight", (v_width,)),
        "visual.ln_post.bias": take("vision_model.post_layernorm.bias", (v_width,)),
        # nn.Linear stores (out, in); OpenAI multiplies x @ proj with proj (in, out).
        "visual.proj": take("visual_projection.weight", (embed, v_width)).t().contiguous(),
        "token_embedding.weight": take("text_model.embeddings.token_embedding.weight", (vocab, t_width)),
        "positional_embedding": take("text_model.embeddings.position_embedding.weight", (context, t_width)),
        "ln_final.weight": take("text_model.final_layer_norm.weight", (t_width,)),
        "ln_final.bias": take("text_model.final_layer_norm.bias", (t_width,)),
        "text_projection": take("text_projection.weight", (embed, t_width)).t().contiguous(),
    }
    if "logit_scale" in src:
        out["logit_scale"] = take("logit_scale")
    for i in range(v_layers):
        out.update(_hf_block(src, f"vision_model.encoder.layers.{i}.", f"visual.transformer.resblocks.{i}.", v_width, used))
    for i in range(t_layers):
        out.update(_hf_block(src, f"text_model.encoder.layers.{i}.", f"transformer.resblocks.{i}.", t_width, used))
    leftover = sorted(set(src) - used)
    if leftover:
        raise CheckpointError(
            f"Hugging Face checkpoint has {len(leftover)} keys with no OpenAI equivalent: {leftover[:10]}"
        )
    return out


def _is_hf_state_dict(sd: Mapping[str, Any]) -> bool:
    return any(k.startswith(("vision_model.", "text_model.")) for k in sd)


# ---------------------------------------------------------------------------
# Architecture inference
# ---------------------------------------------------------------------------


def _isqrt_exact(n: int, what: str) -> int:
    r = math.isqrt(n)
    if r * r != n:
        raise CheckpointError(f"{what} has {n} positions, not a square grid")
    return r


def infer_config(state_dict: Mapping[str, torch.Tensor]) -> tuple[CLIPConfig, str | None]:
    """The architecture from the shapes of an OpenAI-keyed state dict, and the registry
    name whose config equals it (None for a custom architecture).

    Head counts are not visible in the shapes: like the reference loader we take
    width / 64 (ViT, text) and width * 32 / 64 (ResNet attention pool). Pass `arch=`
    to `load` for models that differ.
    """
    sd = state_dict
    for key in ("text_projection", "positional_embedding", "token_embedding.weight", "ln_final.weight"):
        if key not in sd:
            raise CheckpointError(f"not a CLIP state dict: missing {key!r} (keys start: {sorted(sd)[:5]})")
    embed_dim = sd["text_projection"].shape[1]
    text_width = sd["ln_final.weight"].shape[0]
    text_layers = _count_layers(sd, r"transformer\.resblocks\.(\d+)\.attn\.in_proj_weight$")
    text_hidden = sd.get("transformer.resblocks.0.mlp.c_fc.weight")
    if text_hidden is not None and text_hidden.shape[0] != 4 * text_width:
        raise CheckpointError(f"text MLP width {text_hidden.shape[0]} is not 4 x {text_width}; unsupported")
    text = TextConfig(
        context_length=sd["positional_embedding"].shape[0],
        vocab_size=sd["token_embedding.weight"].shape[0],
        width=text_width,
        heads=max(text_width // 64, 1),
        layers=text_layers,
    )
    if "visual.proj" in sd:
        for key in ("visual.conv1.weight", "visual.positional_embedding"):
            if key not in sd:
                raise CheckpointError(f"ViT state dict (it has 'visual.proj') without {key!r}")
        conv = sd["visual.conv1.weight"]  # (width, 3, patch, patch)
        width, patch = conv.shape[0], conv.shape[-1]
        grid = _isqrt_exact(sd["visual.positional_embedding"].shape[0] - 1, "visual.positional_embedding")
        hidden = sd.get("visual.transformer.resblocks.0.mlp.c_fc.weight")
        vision = VisionConfig(
            image_size=patch * grid,
            width=width,
            layers=_count_layers(sd, r"visual\.transformer\.resblocks\.(\d+)\.attn\.in_proj_weight$"),
            heads=max(width // 64, 1),
            patch_size=patch,
            mlp_ratio=hidden.shape[0] / width if hidden is not None else 4.0,
        )
        vis_embed = sd["visual.proj"].shape[1]
    else:
        if "visual.layer1.0.conv1.weight" not in sd or "visual.attnpool.positional_embedding" not in sd:
            raise CheckpointError(
                "not a CLIP state dict: neither a ViT ('visual.proj') nor a ResNet "
                "('visual.layer1.0.conv1.weight', 'visual.attnpool.positional_embedding') image tower"
            )
        layers = tuple(
            len({k.split(".")[2] for k in sd if k.startswith(f"visual.layer{b}.")}) for b in (1, 2, 3, 4)
        )
        width = sd["visual.layer1.0.conv1.weight"].shape[0]
        grid = _isqrt_exact(sd["visual.attnpool.positional_embedding"].shape[0] - 1, "visual.attnpool.positional_embedding")
        vision = VisionConfig(
            image_size=grid * 32,  # the stem and the three strided stages downsample 32x
            width=width,
            layers=layers,
            heads=width * 32 // 64,
            patch_size=None,
        )
        c_proj = sd.get("visual.attnpool.c_proj.weight")
        vis_embed = c_proj.shape[0] if c_proj is not None else embed_dim
    if vis_embed != embed_dim:
        raise CheckpointError(f"image embedding width {vis_embed} differs from text embedding width {embed_dim}")
    config = CLIPConfig(embed_dim=embed_dim, vision=vision, text=text)
    name = next((n for n in available_models() if get_config(n) == config), None)
    return config, name


def _describe(config: CLIPConfig, name: str | None) -> str:
    if name:
        return name
    v = config.vision
    kind = f"ViT patch {v.patch_size}" if v.is_vit else f"ResNet layers {tuple(v.layers)}"
    return (f"custom CLIP ({kind}, width {v.width}, image {v.image_size}, embed {config.embed_dim}, "
            f"text width {config.text.width} x {config.text.layers} layers)")


# ---------------------------------------------------------------------------
# Reading any format
# ---------------------------------------------------------------------------

_CONFIG_METADATA_KEY = "clipkit_config"


def _read_safetensors(path: Path) -> tuple[StateDict, CLIPConfig | None]:
    from safetensors import safe_open
    from safetensors.torch import load_file

    with safe_open(str(path), framework="pt") as f:
        metadata = f.metadata() or {}
    sd = load_file(str(path))
    config = None
    if _CONFIG_METADATA_KEY in metadata:
        try:
            config = CLIPConfig.from_dict(json.loads(metadata[_CONFIG_METADATA_KEY]))
        except (ValueError, TypeError, KeyError) as e:
            raise CheckpointError(f"{path}: unreadable clipkit config in the safetensors metadata: {e}") from e
    return sd, config


def _torch_load(path: Path, trust_pickle: bool) -> Any:
    mmap_ok = zipfile.is_zipfile(path)
    if not trust_pickle:
        try:
            return torch.load(path, map_location="cpu", weights_only=True, mmap=mmap_ok)
        except pickle.UnpicklingError as e:
            raise UnsafeCheckpointError(
                f"{path} cannot be read as plain weights: it contains pickled Python objects "
                f"(a module or class), so reading it needs full unpickling, which can run "
                f"arbitrary code from the file. Pass trust_pickle=True only for files you "
                f"trust. (torch said: {str(e).splitlines()[0]})"
            ) from e
    obj = torch.load(path, map_location="cpu", weights_only=False, mmap=mmap_ok)
    if isinstance(obj, torch.nn.Module):
        obj = obj.state_dict()
    return obj


def _read_hf_folder(folder: Path, trust_pickle: bool) -> tuple[StateDict, CLIPConfig]:
    hf_config = json.loads((folder / "config.json").read_text())
    config = hf_config_to_clip(hf_config)  # fails early on a folder that is not CLIP
    if (folder / "model.safetensors").is_file():
        sd, _ = _read_safetensors(folder / "model.safetensors")
    elif (folder / "model.safetensors.index.json").is_file():
        index = json.loads((folder / "model.safetensors.index.json").read_text())
        sd = {}
        for shard in sorted(set(index["weight_map"].values())):
            sd.update(_read_safetensors(folder / shard)[0])
    elif (folder / "pytorch_model.bin").is_file():
        sd = unwrap_state_dict(_torch_load(folder / "pytorch_model.bin", trust_pickle))
    else:
        raise CheckpointError(
            f"{folder}: Hugging Face folder without model.safetensors, "
            "model.safetensors.index.json or pytorch_model.bin"
        )
    pre = folder / "preprocessor_config.json"
    if pre.is_file():
        p = json.loads(pre.read_text())
        if p.get("image_mean") and p.get("image_std"):
            config = dataclasses.replace(config, image_mean=tuple(p["image_mean"]),
                                         image_std=tuple(p["image_std"]))
    sd = hf_to_openai(sd, hf_config)
    inferred, _ = infer_config(sd)
    if inferred.embed_dim != config.embed_dim:
        raise CheckpointError(f"{folder}: config.json projection_dim {config.embed_dim} but the weights say {inferred.embed_dim}")
    # Head counts are not visible in shapes: compare everything else.
    if (dataclasses.replace(inferred.vision, heads=config.vision.heads) != config.vision
            or dataclasses.replace(inferred.text, heads=config.text.heads) != config.text):
        raise CheckpointError(
            f"{folder}: config.json describes {config.vision} / {config.text} but the weights' "
            f"shapes say {inferred.vision} / {inferred.text}"
        )
    return sd, config


def load_state_dict(path: str | os.PathLike, trust_pickle: bool = False) -> tuple[StateDict, CLIPConfig | None]:
    """Read weights in any supported format as an OpenAI-keyed state dict.

    Returns `(state_dict, config)`; `config` comes from the file (safetensors metadata,
    Hugging Face config.json) or is None when the file has none (infer it with
    `infer_config`). Non-weight entries are dropped. A file that cannot be read (truncated,
    corrupt, of an unknown format, or refused as unsafe) raises a `CheckpointError`
    naming it.
    """
    path = Path(path)
    if not path.exists():
        raise ModelNotFoundError(f"no checkpoint at {path}")
    try:
        return _read_weights(path, trust_pickle)
    except CheckpointError as e:
        if str(path) in str(e):
            raise
        raise type(e)(f"{path}: {e}") from e.__cause__
    except RecursionError:
        raise CheckpointError(f"{path}: nested too deeply to be a checkpoint; refusing it") from None
    except Exception as e:  # noqa: BLE001 - any failure to parse an untrusted file is "cannot read it"
        first = (str(e).strip().splitlines() or [""])[0][:200]
        raise CheckpointError(f"cannot read checkpoint {path}: {type(e).__name__}: {first} "
                              f"(a truncated or corrupt file?)") from e


def _read_weights(path: Path, trust_pickle: bool) -> tuple[StateDict, CLIPConfig | None]:
    config: CLIPConfig | None = None
    if path.is_dir():
        if not (path / "config.json").is_file():
            raise CheckpointError(f"{path} is a folder without config.json; accepted: {ACCEPTED_FORMATS}")
        sd, config = _read_hf_folder(path, trust_pickle)
        return clean_state_dict(sd), config
    with open(path, "rb") as f:
        head = f.read(16)
    if head[:4] == b"PK\x03\x04":
        with zipfile.ZipFile(path) as zf:
            names = zf.namelist()
        if is_torchscript_archive(names):
            sd = read_torchscript_archive(path)
        elif _find_data_pkl(names) is not None:
            sd = unwrap_state_dict(_torch_load(path, trust_pickle))
        else:
            raise CheckpointError(f"{path} is a zip file but not a torch checkpoint; accepted: {ACCEPTED_FORMATS}")
    elif len(head) >= 9 and head[8:9] == b"{" and struct.unpack("<Q", head[:8])[0] < path.stat().st_size:
        sd, config = _read_safetensors(path)
    elif head[:1] == b"\x80":  # a legacy (pre-zip) torch.save pickle
        sd = unwrap_state_dict(_torch_load(path, trust_pickle))
    else:
        raise CheckpointError(f"{path}: unknown checkpoint format; accepted: {ACCEPTED_FORMATS}")
    if _is_hf_state_dict(sd):
        sd = hf_to_openai(sd)
    return clean_state_dict(sd), config


# ---------------------------------------------------------------------------
# Writing
# ---------------------------------------------------------------------------


def save(model: torch.nn.Module | Mapping[str, torch.Tensor], path: str | os.PathLike,
         *, config: CLIPConfig | None = None, dtype: torch.dtype | None = None) -> Path:
    """Write weights as safetensors with the architecture (CLIPConfig.to_dict) in the metadata.

    `model` is a CLIP module (its `.config` is used) or a state dict with `config=`.
    `dtype` (e.g. torch.float16) converts floating-point tensors to halve the file; `load`
    runs half-precision weights in float32 on CPU.
    """
    from safetensors.torch import save_file

    if isinstance(model, torch.nn.Module):
        for wrapper in ("module", "_orig_mod"):  # DistributedDataParallel, torch.compile
            if not hasattr(model, "config") and isinstance(getattr(model, wrapper, None), torch.nn.Module):
                model = getattr(model, wrapper)
        config = config or getattr(model, "config", None)
        state = model.state_dict()
    else:
        state = dict(model)
    if not isinstance(config, CLIPConfig):
        raise ValueError("save() needs the model's CLIPConfig: pass a CLIP model or config=")
    tensors: StateDict = {}
    seen: set[int] = set()
    for key, value in state.items():
        t = value.detach().to("cpu").contiguous()
        if dtype is not None and t.is_floating_point():
            t = t.to(dtype)
        ptr = t.untyped_storage().data_ptr()
        if ptr in seen and t.numel():
            t = t.clone()  # safetensors refuses tensors that share memory
        seen.add(ptr)
        tensors[key] = t
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".part")
    save_file(tensors, str(tmp), metadata={_CONFIG_METADATA_KEY: json.dumps(config.to_dict()), "format": "pt"})
    os.replace(tmp, path)
    return path


# ---------------------------------------------------------------------------
# Download: resumable, SHA-256 verified, atomic
# ---------------------------------------------------------------------------

_CHUNK = 1 << 20


def _sha256_file(path: Path, h: "hashlib._Hash | None" = None) -> "hashlib._Hash":
    h = h or hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(_CHUNK):
            h.update(block)
    return h


def _stamp_path(path: Path) -> Path:
    return path.with_name(path.name + ".sha256")


def _write_stamp(path: Path, sha256: str) -> None:
    st = path.stat()
    try:
        _stamp_path(path).write_text(f"{sha256} {st.st_size} {st.st_mtime_ns}\n")
    except OSError:  # a read-only cache: the file is simply hashed again next time
        pass


def verify_file(path: str | os.PathLike, sha256: str) -> bool:
    """Whether a file has the given SHA-256.

    A verified file gets a `<file>.sha256` stamp (digest, size, mtime): while the file is
    unchanged, later checks read the stamp instead of hashing hundreds of MB again.
    """
    path = Path(path)
    st = path.stat()
    try:
        digest, size, mtime = _stamp_path(path).read_text().split()
        if digest == sha256 and int(size) == st.st_size and int(mtime) == st.st_mtime_ns:
            return True
    except (OSError, ValueError):
        pass
    if _sha256_file(path).hexdigest() != sha256:
        return False
    _write_stamp(path, sha256)
    return True


def _manual_instructions(url: str, dest: Path, sha256: str) -> str:
    return (f"To install the file by hand, fetch\n  {url}\non a machine with network access and "
            f"put it at\n  {dest}\n(SHA-256 {sha256}).")


def download(url: str, sha256: str, dest_dir: str | os.PathLike | None = None, *,
             filename: str | None = None, progress: bool = True, timeout: float = 30.0,
             retries: int = 2) -> Path:
    """Download `url` into `dest_dir` (default: the clipkit cache), verify its SHA-256.

    The bytes go to `<file>.part` and are renamed into place only once verified, so the
    final name never holds a partial or corrupt file. An interrupted download resumes
    from the `.part` file with an HTTP Range request (restarting when the server ignores
    Range); up to `retries` resumes are tried within one call. Without network the error
    says which URL to fetch and where to put the file. A checksum mismatch deletes the
    bad bytes and raises ChecksumError with the expected and actual digests.
    """
    from clipkit.utils import cache_dir

    dest_dir = Path(dest_dir) if dest_dir is not None else cache_dir()
    dest_dir.mkdir(parents=True, exist_ok=True)
    dest = dest_dir / (filename or url.rstrip("/").rsplit("/", 1)[-1])
    sha256 = sha256.lower()
    if dest.is_file():
        if verify_file(dest, sha256):
            return dest
        dest.unlink()  # a corrupt or stale file under the final name: fetch it again
    part = dest.with_name(dest.name + ".part")
    attempt = 0
    while True:
        try:
            complete = _fetch_into(url, part, progress=progress, timeout=timeout, desc=dest.name)
        except urllib.error.HTTPError as e:
            raise DownloadError(
                f"could not download {url}: the server answered HTTP {e.code} {e.reason}.\n"
                + _manual_instructions(url, dest, sha256)
            ) from e
        except (OSError, http.client.HTTPException) as e:
            reason = getattr(e, "reason", None) or e
            if attempt < retries and part.is_file() and part.stat().st_size > 0 \
                    and not isinstance(e, urllib.error.URLError):
                attempt += 1  # the connection broke mid-way: resume from what arrived
                continue
            kept = (f"\nThe {part.stat().st_size:,} bytes received so far are kept in {part}; "
                    "the next attempt resumes from there.") if part.is_file() and part.stat().st_size else ""
            raise DownloadError(
                f"could not download {url} (no network or server unreachable: {reason}).\n"
                + _manual_instructions(url, dest, sha256) + kept
            ) from e
        if not complete:
            if attempt < retries:
                attempt += 1
                continue
            raise DownloadError(
                f"the download of {url} ended early {retries + 1} times; the bytes received "
                f"are kept in {part} and the next attempt resumes from there.\n"
                + _manual_instructions(url, dest, sha256)
            )
        break
    got = _sha256_file(part).hexdigest()
    if got != sha256:
        part.unlink()
        raise ChecksumError(
            f"checksum mismatch for {url}: expected SHA-256 {sha256}, got {got}. "
            "The corrupt download was deleted; try again. " + _manual_instructions(url, dest, sha256)
        )
    os.replace(part, dest)
    _write_stamp(dest, sha256)
    return dest


def _fetch_into(url: str, part: Path, *, progress: bool, timeout: float, desc: str) -> bool:
    """Append the rest of `url` to `part`; True when the whole body arrived."""
    from tqdm.auto import tqdm

    have = part.stat().st_size if part.is_file() else 0
    headers = {"User-Agent": "clipkit"}
    if have:
        headers["Range"] = f"bytes={have}-"
    try:
        response = urllib.request.urlopen(urllib.request.Request(url, headers=headers), timeout=timeout)
    except urllib.error.HTTPError as e:
        if e.code == 416 and have:  # nothing left to send: the part file may be complete
            total = _content_range_total(e.headers.get("Content-Range", ""))
            if total == have:
                return True
            part.unlink()  # inconsistent with the server: start again
            return _fetch_into(url, part, progress=progress, timeout=timeout, desc=desc)
        raise
    with response:
        length = response.headers.get("Content-Length")
        length = int(length) if length is not None else None
        if have and response.status == 206:
            start = _content_range_start(response.headers.get("Content-Range", ""))
            if start != have:
                raise http.client.HTTPException(f"server resumed at byte {start}, not {have}")
            mode = "ab"
        else:  # a fresh download, or the server ignored Range: start over
            have, mode = 0, "wb"
        total = have + length if length is not None else None
        received = 0
        with open(part, mode) as f, tqdm(total=total, initial=have, unit="B", unit_scale=True,
                                         unit_divisor=1024, desc=desc, disable=not progress) as bar:
            try:
                while block := response.read(_CHUNK):
                    f.write(block)
                    received += len(block)
                    bar.update(len(block))
            finally:
                f.flush()
                os.fsync(f.fileno())
    return length is None or received == length


def _content_range_start(value: str) -> int | None:
    m = re.match(r"bytes (\d+)-\d+/(\d+|\*)", value.strip())
    return int(m.group(1)) if m else None


def _content_range_total(value: str) -> int | None:
    m = re.match(r"bytes (?:\d+-\d+|\*)/(\d+)", value.strip())
    return int(m.group(1)) if m else None


# ---------------------------------------------------------------------------
# The entry point
# ---------------------------------------------------------------------------


def _resolve(name: str, *, cache_dir: str | os.PathLike | None, download_ok: bool) -> Path:
    """The local file holding the weights of a model name, downloading if needed."""
    if name in _SHIPPED:
        shipped = _PACKAGE_DIR / _SHIPPED[name]
        if shipped.is_file():
            return shipped
    if cache_dir is None:
        from clipkit.utils import cache_dir as default_cache_dir

        root = default_cache_dir()
    else:
        root = Path(cache_dir)
    candidates = _cached_candidates(name, root)
    url = OPENAI_URLS.get(name)
    for candidate in candidates:
        if candidate.is_file():
            if url is not None and candidate.name == url.rsplit("/", 1)[-1]:
                sha = sha256_from_url(url)
                if not verify_file(candidate, sha):
                    if not download_ok:
                        raise ChecksumError(
                            f"{candidate} does not have the published SHA-256 {sha}; delete it and "
                            f"download again (or call load with download=True)."
                        )
                    break  # download() replaces it
            return candidate
    if url is None:
        raise ModelNotFoundError(
            f"no weights for {name!r}: it is an architecture without published weights. Put a "
            f"checkpoint at {candidates[0]} (any supported format: use clipkit.save for safetensors), "
            f"pass a path to load(), or use clipkit.create_model({name!r}) for random weights."
        )
    dest_dir = candidates[-1].parent
    if not download_ok:
        raise ModelNotFoundError(
            f"no local weights for {name!r} and download=False. "
            + _manual_instructions(url, dest_dir / url.rsplit("/", 1)[-1], sha256_from_url(url))
        )
    return download(url, sha256_from_url(url), dest_dir)


class _SkipInit(TorchFunctionMode):
    """Turns the in-place initialisers into no-ops while a model is built on the meta device.

    Meta tensors hold no values, but `normal_` & co on them still run Python
    decompositions (and import ~800 modules the first time: about a second). The mode is
    thread-local, unlike patching `torch.nn.init`.
    """

    _SKIP = frozenset({
        torch.Tensor.normal_, torch.Tensor.uniform_, torch.Tensor.zero_, torch.Tensor.fill_,
        torch.nn.init.normal_, torch.nn.init.uniform_, torch.nn.init.zeros_, torch.nn.init.ones_,
        torch.nn.init.constant_, torch.nn.init.trunc_normal_, torch.nn.init.xavier_uniform_,
        torch.nn.init.xavier_normal_, torch.nn.init.kaiming_uniform_, torch.nn.init.kaiming_normal_,
        torch.nn.init.orthogonal_,
    })

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func in self._SKIP:
            return args[0] if args else next(iter(kwargs.values()))
        return func(*args, **kwargs)


def _check_keys(model: torch.nn.Module, sd: StateDict, where: str, described: str) -> StateDict:
    expected = model.state_dict()
    sd = dict(sd)
    for key, value in expected.items():  # BatchNorm counters are not weights
        if key.endswith("num_batches_tracked") and key not in sd:
            sd[key] = torch.zeros((), dtype=value.dtype)
    missing = [k for k in expected if k not in sd]
    unexpected = [k for k in sd if k not in expected]
    wrong = [f"{k}: checkpoint {tuple(sd[k].shape)} vs model {tuple(expected[k].shape)}"
             for k in expected if k in sd and sd[k].shape != expected[k].shape]
    if missing or unexpected or wrong:
        def listing(label: str, items: list[str]) -> str:
            more = f" (and {len(items) - 10} more)" if len(items) > 10 else ""
            return f"\n  {len(items)} {label}: {items[:10]}{more}"
        raise CheckpointError(
            f"{where} does not fit the architecture {described}:"
            + (listing("missing keys", missing) if missing else "")
            + (listing("unexpected keys", unexpected) if unexpected else "")
            + (listing("shape mismatches", wrong) if wrong else "")
            + "\nPass arch= (a registry name or a CLIPConfig) if the architecture was guessed wrong."
        )
    return sd


def load(name_or_path: str | os.PathLike, device: str | torch.device = "cpu", *,
         arch: str | CLIPConfig | None = None, trust_pickle: bool = False,
         cache_dir: str | os.PathLike | None = None, download: bool = True,
         dtype: torch.dtype | None = None):
    """Load a CLIP model and its preprocessing: `model, preprocess = clipkit.load("ViT-B/32")`.

    `name_or_path` is a registry name (shipped, cached or downloaded weights) or a path
    to any supported file or folder. The architecture comes from `arch`, else from the
    file (safetensors metadata, HF config.json), else from the weights' shapes. The
    model is returned in eval mode on `device`; on CPU, half-precision weights are run
    in float32 unless `dtype` says otherwise.
    """
    from clipkit.models import create_model
    from clipkit.transforms import image_transform

    name = os.fspath(name_or_path)
    path = Path(name)
    registry_name = None
    if not path.exists():
        known = set(available_models()) | set(OPENAI_URLS) | set(_SHIPPED)
        if name not in known:
            raise ModelNotFoundError(
                f"{name!r} is neither an existing file or folder nor a known model name "
                f"(known: {', '.join(sorted(known))})"
            )
        path = _resolve(name, cache_dir=cache_dir, download_ok=download)
        registry_name = name if name in available_models() else None
    sd, file_config = load_state_dict(path, trust_pickle=trust_pickle)

    if isinstance(arch, CLIPConfig):
        config, described = arch, f"{_describe(arch, None)} (given by arch=)"
    elif isinstance(arch, str):
        config, described = get_config(arch), f"{arch} (given by arch=)"
    elif file_config is not None:
        config, described = file_config, f"{_describe(file_config, None)} (from the file's config)"
    elif registry_name is not None:  # the weights of a named model: its registered architecture
        config, described = get_config(registry_name), f"{registry_name} (the requested model)"
    else:
        try:
            config, guessed = infer_config(sd)
        except CheckpointError as e:
            raise CheckpointError(f"{path}: {e}") from None
        except (ValueError, IndexError, KeyError, TypeError) as e:  # shapes no CLIP has
            raise CheckpointError(f"{path}: cannot infer a CLIP architecture from the weights' shapes "
                                  f"({type(e).__name__}: {e})") from e
        described = f"{_describe(config, guessed)} (guessed from the weights' shapes)"

    # Build on the meta device without initialisation (seconds saved on big models), check
    # every key and shape, then adopt the checkpoint's tensors as the parameters.
    with torch.device("meta"), _SkipInit():
        model = create_model(config)
    sd = _check_keys(model, sd, str(path), described)
    sd = {k: v if v.is_contiguous() else v.contiguous() for k, v in sd.items()}
    model.load_state_dict(sd, strict=True, assign=True)
    del sd
    if dtype is None:
        if torch.device(device).type == "cpu":
            dtype = torch.float32  # half-precision kernels are slow or missing on CPU
        else:  # run as released (fp16 on GPU) in one dtype: the one most weights have
            sizes: dict[torch.dtype, int] = {}
            for p in model.parameters():
                sizes[p.dtype] = sizes.get(p.dtype, 0) + p.numel()
            dtype = max(sizes, key=sizes.get)
    model = model.to(device=device, dtype=dtype)
    model.eval()
    preprocess = image_transform(config.vision.image_size, config.image_mean, config.image_std)
    return model, preprocess
