"""Small shared helpers: the cache folder, weight fingerprints, progress reporting."""
from __future__ import annotations

import hashlib
import os
import sys
import time
import warnings
from pathlib import Path

import torch


class CacheWarning(UserWarning):
    """A cache could not be read or written; the work goes on without it."""


def cache_root() -> Path:
    """`$CLIPKIT_CACHE`, default `~/.cache/clipkit` (not created)."""
    return Path(os.environ.get("CLIPKIT_CACHE") or Path.home() / ".cache" / "clipkit")


def cache_dir(*parts: str) -> Path:
    """`$CLIPKIT_CACHE` (default `~/.cache/clipkit`), joined with `parts`, created on demand.

    Raises OSError when it cannot be created; :func:`usable_cache_dir` warns instead.
    """
    path = cache_root().joinpath(*parts)
    path.mkdir(parents=True, exist_ok=True)
    return path


def cache_enabled(cache: bool = True) -> bool:
    """`cache`, unless the environment says ``CLIPKIT_NO_CACHE=1`` (or true/yes)."""
    return bool(cache) and os.environ.get("CLIPKIT_NO_CACHE", "").strip().lower() not in ("1", "true", "yes")


_warned: set[str] = set()


def warn_cache(message: str, key: str | None = None) -> None:
    """One CacheWarning line per `key` per process: a broken cache never stops the work."""
    key = key or message
    if key in _warned:
        return
    _warned.add(key)
    warnings.warn(message, CacheWarning, stacklevel=3)


def usable_cache_dir(*parts: str) -> Path | None:
    """The cache folder, or None (with one warning) when it cannot be created or written."""
    try:
        path = cache_dir(*parts)
    except OSError as e:
        warn_cache(f"cache disabled: cannot create {cache_root().joinpath(*parts)} ({e.strerror or e}); "
                   "set CLIPKIT_CACHE to a writable folder to keep results between runs", key="cache-root")
        return None
    if not os.access(path, os.W_OK | os.X_OK):
        warn_cache(f"cache disabled: {path} is not writable; set CLIPKIT_CACHE to a writable folder "
                   "to keep results between runs", key="cache-root")
        return None
    return path


def check_output_path(path: str | os.PathLike, *, suffixes: tuple[str, ...] = ()) -> Path:
    """`path` as a Path if a file can be written there, checked before any work starts: its
    folder exists and is writable, it is not a folder, and (given `suffixes`) its extension
    names a known format. Otherwise :class:`~clipkit.errors.OutputPathError` naming it."""
    from clipkit.errors import OutputPathError

    p = Path(path)
    if suffixes and p.suffix.lower() not in suffixes:
        raise OutputPathError(
            f"{str(path)!r} has no {'/'.join(s.lstrip('.') for s in suffixes)} extension, so the file format "
            f"is unknown (e.g. {p.stem or 'out'}{suffixes[0]})")
    if p.is_dir():
        raise OutputPathError(f"{str(path)!r} is a folder; give a file name")
    parent = p.parent
    if not parent.is_dir():
        raise OutputPathError(f"cannot write {str(path)!r}: the folder {str(parent)!r} does not exist")
    if not os.access(parent, os.W_OK | os.X_OK) or (p.exists() and not os.access(p, os.W_OK)):
        raise OutputPathError(f"cannot write {str(path)!r}: permission denied")
    return p


# ---------------------------------------------------------------------------
# Progress: a bar on a terminal, a line every half minute in a log
# ---------------------------------------------------------------------------


class _LogProgress:
    """tqdm's update/close/set_postfix surface, printing plain lines at a low rate: what a
    log file (CI, nohup, a batch job) can show of a long run."""

    def __init__(self, total: int | None, desc: str, unit: str, interval: float, initial: int = 0,
                 file=None):
        self.total, self.desc, self.unit, self.interval = total, desc, unit, interval
        self.n = self._initial = initial
        self.file = file or sys.stderr
        self._start = self._last = time.monotonic()
        self._postfix = ""
        self._closed = False
        self._printed = False

    def _line(self) -> str:
        elapsed = time.monotonic() - self._start
        rate = (self.n - self._initial) / elapsed if elapsed > 0 else 0.0  # this run's rate
        done = f"{self.n:,}" if self.total is None else f"{self.n:,}/{self.total:,} ({100 * self.n / max(self.total, 1):.0f}%)"
        eta = ""
        if self.total and rate > 0 and self.n < self.total:
            eta = f", about {_duration((self.total - self.n) / rate)} left"
        extra = f" {self._postfix}" if self._postfix else ""
        return f"{self.desc}: {done} {self.unit}, {rate:.1f} {self.unit}/s, {_duration(elapsed)} elapsed{eta}{extra}"

    def update(self, n: int = 1) -> None:
        self.n += n
        now = time.monotonic()
        if now - self._last >= self.interval:
            self._last = now
            self._printed = True
            print(self._line(), file=self.file, flush=True)

    def set_postfix(self, ordered_dict=None, refresh: bool = True, **kwargs) -> None:
        items = {**(ordered_dict or {}), **kwargs}
        self._postfix = ", ".join(f"{k}={v}" for k, v in items.items())

    def write(self, text: str) -> None:
        print(text, file=self.file, flush=True)

    def close(self) -> None:
        """The final line, for work that lasted long enough to report on at all."""
        if not self._closed:
            self._closed = True
            if not self._printed and time.monotonic() - self._start < self.interval:
                return  # short work stays silent in a log
            print(self._line() + " - done" if self.total is None or self.n >= self.total else self._line(),
                  file=self.file, flush=True)

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def _duration(seconds: float) -> str:
    seconds = int(seconds)
    if seconds < 60:
        return f"{seconds}s"
    if seconds < 3600:
        return f"{seconds // 60}m{seconds % 60:02d}s"
    return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m"


LOG_INTERVAL = 30.0  # seconds between progress lines when stderr is not a terminal


def progress_bar(total: int | None, *, desc: str, unit: str = "it", progress: bool | None = None,
                 min_items: int = 0, initial: int = 0, interval: float | None = None):
    """A progress reporter for long work.

    `progress=False`: silent. `True`: a bar (a terminal) or lines (a log). `None` (the
    default): the same for work of at least `min_items`, silent for short work. On a
    terminal it is a tqdm bar; otherwise a plain line every `interval` seconds
    (:data:`LOG_INTERVAL`, or ``$CLIPKIT_PROGRESS_INTERVAL``) and one at the end.
    """
    from tqdm.auto import tqdm

    show = bool(progress) if progress is not None else (total is None or total >= min_items)
    if not show:
        return tqdm(total=total, disable=True)
    if sys.stderr.isatty():
        return tqdm(total=total, initial=initial, desc=desc, unit=unit, dynamic_ncols=True)
    if interval is None:
        try:
            interval = float(os.environ.get("CLIPKIT_PROGRESS_INTERVAL", LOG_INTERVAL))
        except ValueError:
            interval = LOG_INTERVAL
    return _LogProgress(total, desc, unit, interval, initial=initial)


def weights_fingerprint(model_or_state_dict: torch.nn.Module | dict[str, torch.Tensor]) -> str:
    """SHA-256 over every tensor's name, dtype, shape and bytes, in key order.

    Identifies a set of weights for cache keys (class heads, image features): any
    change to any parameter or buffer changes it. The result is memoised on a module
    until its parameters change version (not memoised for a model made under
    `torch.inference_mode`, whose tensors have no version counter).
    """
    if isinstance(model_or_state_dict, torch.nn.Module):
        state = model_or_state_dict.state_dict()
        versions = None if any(t.is_inference() for t in state.values()) else tuple(t._version for t in state.values())
        memo = getattr(model_or_state_dict, "_clipkit_fingerprint", None)
        if versions is not None and memo is not None and memo[0] == versions and memo[1] == tuple(state):
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
