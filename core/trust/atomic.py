"""Durable writes: a file is either its old content or its new content, even after a
crash or kill -9 (write a temporary file, fsync it, rename it over, fsync the folder);
a folder appears whole or not at all (built beside its place, then renamed)."""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path


def fsync_folder(folder: Path) -> None:
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_atomic(path: Path, data: bytes) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    staging = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    staging.unlink(missing_ok=True)  # a crash's leftover, or a planted link: removed, never written through
    fd = os.open(staging, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o666)
    with os.fdopen(fd, "wb") as handle:
        handle.write(data)
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(staging, path)
    fsync_folder(path.parent)


def write_new_private(path: Path, data: bytes, mode: int = 0o600) -> None:
    """Create a secret file readable by its owner only; never overwrites (O_EXCL: a file
    that appeared after any earlier existence check is not overwritten either)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
    with os.fdopen(fd, "wb") as handle:
        handle.write(data)


@contextmanager
def staged_folder(target: Path, replace: bool = False) -> Iterator[Path]:
    """A scratch folder beside `target`, renamed to `target` only if the block succeeds;
    nothing is left behind when it fails. With `replace`, a folder already at `target`
    (say, left by a crash) is removed first; without, the rename refuses to touch it."""
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{target.name}-", dir=target.parent))
    try:
        yield staging
        if replace:
            shutil.rmtree(target, ignore_errors=True)
        staging.rename(target)
        fsync_folder(target.parent)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
