"""Tensors in Flower records (what travels in a Message). Torch-free: devices use it too."""

from __future__ import annotations

import io
import math
from collections.abc import Mapping
from functools import lru_cache

import numpy as np
from flwr.app import Array, ArrayRecord


def to_record(arrays: Mapping[str, np.ndarray]) -> ArrayRecord:
    return ArrayRecord({k: Array(np.ascontiguousarray(v)) for k, v in arrays.items()})


def from_record(record: ArrayRecord) -> dict[str, np.ndarray]:
    return {k: decode_array(v) for k, v in record.items()}


@lru_cache(maxsize=4096)
def _npy_layout(dtype_name: str, shape: tuple[int, ...]) -> tuple[np.dtype, bytes, int] | None:
    """dtype, the .npy header `np.save` writes (as Flower's Array does) for a C-order
    array of this dtype and shape, and the data size; None for dtypes not mapped directly."""
    try:
        dtype = np.dtype(dtype_name)
    except TypeError:
        return None
    if dtype.hasobject:
        return None
    buffer = io.BytesIO()
    header = {"descr": np.lib.format.dtype_to_descr(dtype), "fortran_order": False, "shape": shape}
    np.lib.format.write_array_header_1_0(buffer, header)
    return dtype, buffer.getvalue(), dtype.itemsize * math.prod(shape)


def decode_array(array: Array) -> np.ndarray:
    """A Flower Array as a read-only ndarray over its bytes.

    Written by hand because Flower's `Array.numpy()` re-parses the .npy header with
    `ast.literal_eval`, about 50 us per tensor, which dominates checking a small delta.
    The header must equal, byte for byte, the one numpy writes for the stated dtype and
    shape; anything else goes through Flower's own parser.
    """
    layout = _npy_layout(array.dtype, tuple(array.shape)) if array.stype == "numpy.ndarray" else None
    if layout is None:
        return array.numpy()
    dtype, header, size = layout
    data = array.data
    if len(data) != len(header) + size or not data.startswith(header):
        return array.numpy()
    return np.frombuffer(data, dtype=dtype, offset=len(header)).reshape(array.shape)


def record_bytes(record: ArrayRecord) -> int:
    return sum(len(a.data) for a in record.values())
