"""Exceptions of the data layer: every message names the file, folder or field at fault."""
from __future__ import annotations

from pathlib import Path


class DataError(ValueError):
    """Bad data input; the message names the file, folder or field."""


class CorpusError(DataError):
    """A corpus folder is missing, holds no files of that corpus, or nothing usable is left."""


class AudioError(DataError):
    """One audio file is unreadable, empty, zero-length, silent or holds non-finite samples."""

    def __init__(self, path: str | Path, reason: str):
        self.path = str(path)
        self.reason = reason
        super().__init__(f"{self.path}: {reason}")

    def __reduce__(self):
        # Keep the (path, reason) constructor when the error crosses a process boundary (Ray workers).
        return (type(self), (self.path, self.reason))
