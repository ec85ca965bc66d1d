"""glibc's allocator, told to return freed memory to the system. Torch-free (devices use it
too); where the C library is not glibc (musl, macOS, Windows) these do nothing."""

from __future__ import annotations

import ctypes
from functools import lru_cache

M_MMAP_THRESHOLD = -3  # glibc's mallopt parameter


@lru_cache(maxsize=1)
def _glibc() -> ctypes.CDLL | None:
    try:
        libc = ctypes.CDLL("libc.so.6")
        return libc if hasattr(libc, "malloc_trim") and hasattr(libc, "mallopt") else None
    except (OSError, TypeError):
        return None


def trim() -> None:
    """Give freed heap pages back (malloc_trim)."""
    libc = _glibc()
    if libc is not None:
        libc.malloc_trim(0)


def map_blocks_from(size: int) -> None:
    """Blocks of `size` bytes or more are mapped, and unmapped when freed, for the rest of
    the process. glibc otherwise raises this threshold whenever a mapped block is freed (up
    to 32 MB) and serves later blocks from heaps whose fragments stay resident."""
    libc = _glibc()
    if libc is not None:
        libc.mallopt(M_MMAP_THRESHOLD, size)
