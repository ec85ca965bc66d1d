"""Reading local files that someone else may have put there: a key, a manifest, a state
file, a user's data. Each is checked to be a regular file (a link to a device or a FIFO
is refused, not read for ever) of a bounded size before a byte is read, and large files
are hashed as a stream, never held whole.

Folders a program owns (a device slot) ask for `follow_links=False`: a symbolic link
planted there is refused by name, never followed out of the folder. The check is made on
the open descriptor (O_NOFOLLOW, then fstat), so it cannot be raced between a look and a
read; `plain_folder` does the same for the folders on the way (lstat)."""

from __future__ import annotations

import hashlib
import os
import stat
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import BinaryIO

from fedpeft.core.errors import IntegrityError

SMALL_FILE_BYTES = 16 * 1024 * 1024  # keys, manifests, signatures, keyrings, configs, state files


class UnreadableFile(IntegrityError):
    """A path that is missing, not a regular file, a symbolic link where none may be, or
    larger than allowed; `reason` is one of missing-file, not-a-file, link, too-large."""

    def __init__(self, reason: str, path: Path, detail: str) -> None:
        super().__init__(f"{path}: {detail}")
        self.reason, self.path = reason, path


def _refuse_link(path: Path) -> UnreadableFile:
    return UnreadableFile("link", path, "is a symbolic link; links here are never followed")


def _check_regular(path: Path, info: os.stat_result, limit: int | None) -> int:
    if stat.S_ISLNK(info.st_mode):
        raise _refuse_link(path)
    if not stat.S_ISREG(info.st_mode):
        raise UnreadableFile("not-a-file", path, "is not a regular file (a device, FIFO or folder?)")
    if limit is not None and info.st_size > limit:
        raise UnreadableFile("too-large", path, f"{info.st_size} bytes, more than the {limit} allowed")
    return info.st_size


def regular_file_size(path: Path, limit: int | None = None, follow_links: bool = True) -> int:
    """The size of `path` if it is a regular file within `limit` bytes (links followed
    unless `follow_links` is False, when a link is refused)."""
    path = Path(path)
    try:
        info = os.stat(path) if follow_links else os.lstat(path)
    except OSError as exc:
        raise UnreadableFile("missing-file", path, exc.strerror or "cannot be read") from exc
    return _check_regular(path, info, limit)


@contextmanager
def open_regular(path: Path, limit: int | None = None, follow_links: bool = True) -> Iterator[tuple[BinaryIO, int]]:
    """(handle, size) of a regular file of at most `limit` bytes, checked on the open
    descriptor: non-blocking open (a FIFO does not hang), O_NOFOLLOW unless `follow_links`."""
    path = Path(path)
    flags = os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0) | (0 if follow_links else os.O_NOFOLLOW)
    try:
        fd = os.open(path, flags)
    except OSError as exc:
        if not follow_links and os.path.islink(path):  # O_NOFOLLOW on a link: ELOOP
            raise _refuse_link(path) from None
        raise UnreadableFile("missing-file", path, exc.strerror or "cannot be read") from exc
    try:
        size = _check_regular(path, os.fstat(fd), limit)
        os.set_blocking(fd, True)
    except BaseException:
        os.close(fd)
        raise
    with os.fdopen(fd, "rb") as handle:
        yield handle, size


def open_append(path: Path) -> BinaryIO:
    """`path` opened for appending (created if absent), never through a link (O_NOFOLLOW:
    a link planted after any earlier check is refused, not written through) and only if it
    is a regular file (non-blocking open: a FIFO does not hang)."""
    path = Path(path)
    flags = os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_NOFOLLOW | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0)
    try:
        fd = os.open(path, flags, 0o600)
    except OSError as exc:
        if os.path.islink(path):
            raise _refuse_link(path) from None
        raise UnreadableFile("not-a-file", path, exc.strerror or "cannot be written") from exc
    try:
        _check_regular(path, os.fstat(fd), None)
        os.set_blocking(fd, True)
    except BaseException:
        os.close(fd)
        raise
    return os.fdopen(fd, "ab")


def read_small(path: Path, limit: int = SMALL_FILE_BYTES, follow_links: bool = True) -> bytes:
    """The bytes of a regular file of at most `limit` bytes (a file that grows meanwhile is cut)."""
    try:
        with open_regular(path, limit, follow_links) as (handle, _):
            data = handle.read(limit + 1)
    except OSError as exc:
        raise UnreadableFile("missing-file", Path(path), exc.strerror or "cannot be read") from exc
    if len(data) > limit:
        raise UnreadableFile("too-large", Path(path), f"more than the {limit} bytes allowed")
    return data


def file_sha256(path: Path, follow_links: bool = True) -> str:
    """SHA-256 of a regular file, read as a stream."""
    with open_regular(path, follow_links=follow_links) as (handle, _):
        return hashlib.file_digest(handle, "sha256").hexdigest()


def plain_folder(path: Path, create: bool = False) -> Path:
    """`path` if it is a real folder, not a link to one (created when absent and `create`):
    what a program keeps its own files in, so that nothing it opens there leaves it."""
    path = Path(path)
    if create and not os.path.lexists(path):
        path.mkdir(parents=True, exist_ok=True)
    try:
        info = os.lstat(path)
    except OSError as exc:
        raise UnreadableFile("missing-file", path, exc.strerror or "cannot be read") from exc
    if stat.S_ISLNK(info.st_mode):
        raise _refuse_link(path)
    if not stat.S_ISDIR(info.st_mode):
        raise UnreadableFile("not-a-file", path, "is not a folder")
    return path


def plain_files(folder: Path) -> list[Path]:
    """The entries of a real folder if every one is a regular file (no link, no subfolder)."""
    entries = []
    with os.scandir(plain_folder(folder)) as scan:
        for entry in scan:
            regular_file_size(Path(entry.path), follow_links=False)
            entries.append(Path(entry.path))
    return sorted(entries)
