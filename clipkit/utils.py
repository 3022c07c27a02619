"""Small shared helpers: the cache folder and weight fingerprints."""
from __future__ import annotations

import hashlib
import os
from pathlib import Path

import torch


def cache_dir(*parts: str) -> Path:
    """`$CLIPKIT_CACHE` (default `~/.cache/clipkit`), joined with `parts`, created on demand."""
    root = Path(os.environ.get("CLIPKIT_CACHE") or Path.home() / ".cache" / "clipkit")
    path = root.joinpath(*parts)
    path.mkdir(parents=True, exist_ok=True)
    return path


def weights_fingerprint(model_or_state_dict: torch.nn.Module | dict[str, torch.Tensor]) -> str:
    """SHA-256 over every tensor's name, dtype, shape and bytes, in key order.

    Identifies a set of weights for cache keys (class heads, image features): any
    change to any parameter or buffer changes it. The result is memoised on a module
    until its parameters change version.
    """
    if isinstance(model_or_state_dict, torch.nn.Module):
        state = model_or_state_dict.state_dict()
        versions = tuple(t._version for t in state.values())
        memo = getattr(model_or_state_dict, "_clipkit_fingerprint", None)
        if memo is not None and memo[0] == versions and memo[1] == tuple(state):
            return memo[2]
    else:
        state, versions = model_or_state_dict, None
    h = hashlib.sha256()
    for name in sorted(state):
        t = state[name].detach().cpu().contiguous()
        h.update(f"{name}|{t.dtype}|{tuple(t.shape)}\n".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    digest = h.hexdigest()
    if versions is not None:
        object.__setattr__(model_or_state_dict, "_clipkit_fingerprint", (versions, tuple(state), digest))
    return digest
