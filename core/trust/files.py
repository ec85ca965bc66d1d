"""Reading local files that someone else may have put there: a key, a manifest, a state
file, a user's data. Each is checked to be a regular file (a link to a device or a FIFO
is refused, not read for ever) of a bounded size before a byte is read, and large files
are hashed as a stream, never held whole."""

from __future__ import annotations

import hashlib
import os
import stat
from pathlib import Path

from fedpeft.core.errors import IntegrityError

SMALL_FILE_BYTES = 16 * 1024 * 1024  # keys, manifests, signatures, keyrings, configs, state files


class UnreadableFile(IntegrityError):
    """A path that is missing, not a regular file, or larger than allowed; `reason` is one
    of missing-file, not-a-file, too-large."""

    def __init__(self, reason: str, path: Path, detail: str) -> None:
        super().__init__(f"{path}: {detail}")
        self.reason, self.path = reason, path


def regular_file_size(path: Path, limit: int | None = None) -> int:
    """The size of `path` (links followed) if it is a regular file within `limit` bytes."""
    path = Path(path)
    try:
        info = os.stat(path)
    except OSError as exc:
        raise UnreadableFile("missing-file", path, exc.strerror or "cannot be read") from exc
    if not stat.S_ISREG(info.st_mode):
        raise UnreadableFile("not-a-file", path, "is not a regular file (a device, FIFO or folder?)")
    if limit is not None and info.st_size > limit:
        raise UnreadableFile("too-large", path, f"{info.st_size} bytes, more than the {limit} allowed")
    return info.st_size


def read_small(path: Path, limit: int = SMALL_FILE_BYTES) -> bytes:
    """The bytes of a regular file of at most `limit` bytes (a file that grows meanwhile is cut)."""
    regular_file_size(path, limit)
    try:
        with open(path, "rb") as handle:
            data = handle.read(limit + 1)
    except OSError as exc:
        raise UnreadableFile("missing-file", Path(path), exc.strerror or "cannot be read") from exc
    if len(data) > limit:
        raise UnreadableFile("too-large", Path(path), f"more than the {limit} bytes allowed")
    return data


def file_sha256(path: Path) -> str:
    """SHA-256 of a regular file, read as a stream."""
    regular_file_size(path)
    with open(path, "rb") as handle:
        return hashlib.file_digest(handle, "sha256").hexdigest()
