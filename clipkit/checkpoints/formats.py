"""Reading any weight format (safetensors, torch.save state dicts, TorchScript archives,
Hugging Face folders) as an OpenAI-keyed state dict, and writing clipkit's safetensors."""
from __future__ import annotations

import dataclasses
import json
import os
import pickle
import struct
import zipfile
from pathlib import Path
from typing import Any, Mapping

import torch

from clipkit.checkpoints.convert import (_is_hf_state_dict, clean_state_dict, hf_config_to_clip, hf_to_openai,
                                         infer_config, unwrap_state_dict)
from clipkit.checkpoints.errors import (ACCEPTED_FORMATS, CheckpointError, ModelNotFoundError,
                                        UnsafeCheckpointError)
from clipkit.checkpoints.torchscript import _find_data_pkl, is_torchscript_archive, read_torchscript_archive
from clipkit.models.config import CLIPConfig

StateDict = dict[str, torch.Tensor]


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


