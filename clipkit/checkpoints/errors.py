"""The checkpoint readers' error types."""
from __future__ import annotations

import pickle

from clipkit.errors import ClipkitError


# ---------------------------------------------------------------------------
# Errors
# ---------------------------------------------------------------------------


class CheckpointError(ClipkitError, RuntimeError):
    """A checkpoint that cannot be read or does not fit the architecture."""


class UnsafeCheckpointError(CheckpointError):
    """The file can only be read by unpickling arbitrary Python objects."""


class PickleRefused(CheckpointError, pickle.UnpicklingError):
    """A pickle asked for something the restricted unpickler does not run or import, or its
    data do not fit what it declares (a corrupt or hostile file). The one error type of
    `clipkit.checkpoints.safe_pickle`, whichever reader (TorchScript archive, pickled module)
    met it."""


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

