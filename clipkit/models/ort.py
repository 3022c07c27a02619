"""The ONNX Runtime backend: a CLIP model's towers as exported graphs, int8 or fp32.

    fast = clipkit.models.fast_inference(model, backend="onnxruntime", quantize="int8")
    emb = fast.encode_image(x, normalize=True)     # float32, cosine >= 0.999 to fp32

The first call exports the towers (`clipkit.models.onnx.export_onnx`) into the cache
folder, `$CLIPKIT_CACHE/onnx/<weights fingerprint>-...`, and later calls (in any process)
load them from there: the export costs seconds, a session seconds more. A cache folder
that cannot be written falls back to a temporary folder, with one warning line.

`OnnxCLIP` answers what the rest of clipkit asks of a model: `encode_image`,
`encode_text`, `config`, `logit_scale`, `image_size`, `context_length`, `fast_path`,
`eval()`; its "weights" for cache keys (`clipkit.utils.weights_fingerprint`) are the
source weights' fingerprint plus the precision, so cached features never mix backends.
Sessions run on the CPU with as many threads as torch uses (`torch.get_num_threads()`),
all graph optimisations on, and without spinning threads (this machine is shared;
spinning made 2-thread runs slower under load).
"""
from __future__ import annotations

import hashlib
import os
import shutil
import tempfile
import warnings
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from clipkit.models.config import CLIPConfig
from clipkit.models.onnx import EXPORT_FORMAT, MANIFEST, OPSET, export_onnx, read_manifest, require_onnx
from clipkit.utils import weights_fingerprint

__all__ = ["OnnxCLIP", "onnx_inference", "PRECISIONS"]

PRECISIONS = ("int8", "fp32")
_warned_fallback = False


class OnnxCLIP(nn.Module):
    """The towers of an ONNX export folder behind the CLIP model's encoding API."""

    def __init__(self, directory: str | os.PathLike, precision: str = "int8", *, threads: int | None = None,
                 optimization: str = "all", spinning: bool = False):
        super().__init__()
        onnx, ort = require_onnx()
        if precision not in PRECISIONS:
            raise ValueError(f"precision must be one of {PRECISIONS}, got {precision!r}")
        self.directory = Path(directory)
        self.manifest = read_manifest(self.directory)
        self.config = CLIPConfig.from_dict(self.manifest["config"])
        self.precision = precision
        scale = self.manifest.get("logit_scale")
        self.register_buffer("logit_scale", torch.tensor(4.6052 if scale is None else float(scale)))
        # The "weights" that identify this model in cache keys: source weights + precision.
        ident = f"{self.manifest['weights_fingerprint']}|onnxruntime|{precision}|{EXPORT_FORMAT}"
        self.register_buffer("onnx_identity", torch.frombuffer(bytearray(hashlib.sha256(ident.encode()).digest()),
                                                               dtype=torch.uint8))
        levels = {"all": ort.GraphOptimizationLevel.ORT_ENABLE_ALL,
                  "extended": ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED,
                  "basic": ort.GraphOptimizationLevel.ORT_ENABLE_BASIC,
                  "none": ort.GraphOptimizationLevel.ORT_DISABLE_ALL}
        if optimization not in levels:
            raise ValueError(f"optimization must be one of {sorted(levels)}, got {optimization!r}")
        self._ort, self._level, self._spinning = ort, levels[optimization], spinning
        self.threads = int(threads or torch.get_num_threads())
        self._sessions: dict[str, object] = {}
        self.fast_path = {"backend": "onnxruntime", "quantize": precision, "threads": self.threads,
                          "optimization": optimization,
                          "quantization": self.manifest.get("quantization") if precision == "int8" else None}

    # -- properties the rest of clipkit reads -----------------------------------

    @property
    def image_size(self) -> int:
        return self.config.vision.image_size

    @property
    def context_length(self) -> int:
        return self.config.text.context_length

    @property
    def dtype(self) -> torch.dtype:
        return torch.float32

    def _session(self, tower: str):
        session = self._sessions.get(tower)
        if session is None:
            graphs = self.manifest["graphs"].get(tower) or {}
            name = graphs.get(self.precision)
            if name is None:
                raise ValueError(f"{self.directory} has no {self.precision} {tower} graph (has: {graphs or 'none'})")
            so = self._ort.SessionOptions()
            so.intra_op_num_threads = self.threads
            so.inter_op_num_threads = 1
            so.graph_optimization_level = self._level
            so.add_session_config_entry("session.intra_op.allow_spinning", "1" if self._spinning else "0")
            so.log_severity_level = 3  # errors only
            session = self._ort.InferenceSession(str(self.directory / name), so, providers=["CPUExecutionProvider"])
            self._sessions[tower] = session
        return session

    # -- encoders ---------------------------------------------------------------

    def encode_image(self, images: torch.Tensor, normalize: bool = False) -> torch.Tensor:
        """Preprocessed images (B, 3, S, S) -> embeddings (B, D), float32 on the CPU."""
        S = self.image_size
        if not isinstance(images, torch.Tensor) or not torch.is_floating_point(images):
            raise TypeError(f"images must be a floating-point tensor (B, 3, {S}, {S}); preprocess them first "
                            "(clipkit.image_transform)")
        if images.ndim != 4 or tuple(images.shape[1:]) != (3, S, S):
            raise ValueError(f"expected images of shape [B, 3, {S}, {S}], got {list(images.shape)}")
        x = images.detach().to("cpu", torch.float32).contiguous().numpy()
        out = torch.from_numpy(self._session("image").run(None, {"images": x})[0])
        return F.normalize(out, dim=-1) if normalize else out

    def encode_text(self, ids: torch.Tensor, normalize: bool = False) -> torch.Tensor:
        """Token ids (B, T) -> embeddings (B, D), float32 on the CPU; each row read at its argmax."""
        if not isinstance(ids, torch.Tensor) or torch.is_floating_point(ids) or ids.dtype == torch.bool:
            raise TypeError("ids must be an integer tensor of token ids; tokenize first")
        if ids.ndim != 2 or not ids.shape[1]:
            raise ValueError(f"expected ids of shape [B, T], got {list(ids.shape)} (use ids[None] for one prompt)")
        ids = ids.detach().cpu().long()
        ctx, vocab = self.context_length, self.config.text.vocab_size
        if ids.numel() and (int(ids.min()) < 0 or int(ids.max()) >= vocab):
            raise ValueError(f"token ids must lie in [0, {vocab}), got [{int(ids.min())}, {int(ids.max())}]")
        end = int(ids.argmax(dim=1).max()) + 1 if ids.numel() else 1  # causal: later positions cannot matter
        if end > ctx:
            raise ValueError(f"ids have {end} tokens; the text tower takes 1 to {ctx}: tokenize with "
                             f"context_length={ctx} (and truncate=True for long prompts)")
        x = ids[:, :end].contiguous().numpy()
        out = torch.from_numpy(self._session("text").run(None, {"ids": x})[0])
        return F.normalize(out, dim=-1) if normalize else out

    def extra_repr(self) -> str:
        return f"directory={str(self.directory)!r}, precision={self.precision!r}, threads={self.threads}"


# ---------------------------------------------------------------------------
# Export once, cache by weights
# ---------------------------------------------------------------------------


def _cache_root() -> Path:
    """$CLIPKIT_CACHE/onnx, or a temporary folder (one warning per process) when it
    cannot be written or caching is switched off (CLIPKIT_NO_CACHE=1, no warning)."""
    global _warned_fallback

    if os.environ.get("CLIPKIT_NO_CACHE", "").strip().lower() in ("1", "true", "yes"):
        return Path(tempfile.mkdtemp(prefix="clipkit-onnx-"))
    from clipkit.utils import cache_dir

    try:
        root = cache_dir("onnx")
        probe = root / f".probe.{os.getpid()}"
        probe.write_bytes(b"")
        probe.unlink()
        return root
    except OSError as e:
        fallback = Path(tempfile.mkdtemp(prefix="clipkit-onnx-"))
        if not _warned_fallback:
            _warned_fallback = True
            warnings.warn(f"ONNX cache not writable ({e.strerror or e}); exporting to {fallback} for this "
                          "process only: set CLIPKIT_CACHE to a writable folder to keep the graphs", RuntimeWarning,
                          stacklevel=3)
        return fallback


def onnx_inference(model: nn.Module, quantize: str = "int8", *, per_channel: bool = True,
                   threads: int | None = None, optimization: str = "all") -> OnnxCLIP:
    """An `OnnxCLIP` for a clipkit CLIP model: its towers exported once (fp32 and int8) into
    the cache folder, keyed by the weights' fingerprint, and loaded from there afterwards."""
    require_onnx()
    if quantize not in PRECISIONS:
        raise ValueError(f"quantize must be one of {PRECISIONS} for the onnxruntime backend, got {quantize!r}")
    if not isinstance(model, nn.Module) or not hasattr(model, "visual") or not hasattr(model, "config"):
        raise TypeError(f"expected a clipkit CLIP model, got {type(model).__name__}")
    root = _cache_root()
    key = f"{weights_fingerprint(model)[:32]}-opset{OPSET}-f{EXPORT_FORMAT}" + ("" if per_channel else "-pt")
    folder = root / key
    try:
        read_manifest(folder)
    except ValueError:  # absent or stale: export next to it, then rename into place
        tmp = Path(tempfile.mkdtemp(prefix=f".{key}.", dir=root))
        try:
            export_onnx(model, tmp, quantize=True, per_channel=per_channel)
            try:
                os.replace(tmp, folder)
            except OSError:  # another process got there first (or a stale folder): use ours
                shutil.rmtree(folder, ignore_errors=True)
                os.replace(tmp, folder)
        finally:
            if tmp.exists():
                shutil.rmtree(tmp, ignore_errors=True)
    return OnnxCLIP(folder, quantize, threads=threads, optimization=optimization)


def is_export_folder(path: str | os.PathLike) -> bool:
    return (Path(path) / MANIFEST).is_file()
