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

The package, one job per module: `loader` (`load`), `formats` (reading any format,
writing safetensors), `convert` (key-name converters and architecture inference),
`torchscript` (the TorchScript archive reader), `safe_pickle` (the one restricted
unpickler and its bounded zip reading, which the TorchScript reader and the pickled-module
reader of `clipkit.generator.openai_dvae` share; every refusal is a `PickleRefused`),
`hub` (names, URLs, the shipped files, the cache, download), `errors`.
"""
from __future__ import annotations

from clipkit.checkpoints.convert import (clean_state_dict, hf_config_to_clip, hf_to_openai, infer_config,
                                         unwrap_state_dict)
from clipkit.checkpoints.errors import (ACCEPTED_FORMATS, CheckpointError, ChecksumError, DownloadError,
                                        ModelNotFoundError, PickleRefused, UnsafeCheckpointError)
from clipkit.checkpoints.formats import load_state_dict, save
from clipkit.checkpoints.hub import _PACKAGE_DIR, _SHIPPED, OPENAI_URLS, download, sha256_from_url, verify_file
from clipkit.checkpoints.loader import _SkipInit, load
from clipkit.checkpoints.torchscript import is_torchscript_archive, read_torchscript_archive

__all__ = [
    "load", "save", "load_state_dict", "infer_config", "download",
    "hf_to_openai", "hf_config_to_clip", "read_torchscript_archive", "clean_state_dict",
    "unwrap_state_dict", "CheckpointError", "UnsafeCheckpointError", "PickleRefused", "DownloadError",
    "ModelNotFoundError", "ChecksumError", "OPENAI_URLS", "ACCEPTED_FORMATS", "is_torchscript_archive",
    "sha256_from_url", "verify_file",
]
