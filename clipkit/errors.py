"""The project's error types: every failure clipkit reports on purpose derives from
:class:`ClipkitError`, so a caller (and the CLI) can tell "bad input, here is why" from
a bug. Each also derives from the builtin a caller would expect (ValueError, OSError,
RuntimeError), so existing ``except ValueError`` code keeps working.
"""
from __future__ import annotations


class ClipkitError(Exception):
    """Base of every error clipkit raises on purpose; the message says what and what to do."""


class CacheError(ClipkitError, OSError):
    """A cache entry that cannot be read (truncated, corrupted, or of another format)."""


class OutputPathError(ClipkitError, OSError):
    """An output file that cannot be written (missing folder, no permission, no format)."""


class OptionError(ClipkitError, ValueError):
    """Options that do not go together (e.g. a setting of one quantizer given to another)."""


class NothingReadError(ClipkitError, ValueError):
    """Not one input could be read: every file was skipped. `skipped` lists (where, why)."""

    def __init__(self, message: str, skipped: list[tuple[str, str]]):
        super().__init__(message)
        self.skipped = skipped
