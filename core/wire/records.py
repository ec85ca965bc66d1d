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
        if dtype.hasobject or dtype.fields is not None or dtype.subdtype is not None:
            return None
        buffer = io.BytesIO()
        header = {"descr": np.lib.format.dtype_to_descr(dtype), "fortran_order": False, "shape": shape}
        np.lib.format.write_array_header_1_0(buffer, header)
    except (TypeError, ValueError):  # not a dtype numpy knows, or a header too long for .npy 1.0
        return None
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


class NotAsSigned(ValueError):
    """A tensor that decodes, but as another dtype or shape than the one signed."""


def decode_signed_array(array: Array, dtype: str, shape: tuple[int, ...]) -> np.ndarray:
    """The tensor a signed manifest announced, or ValueError: nothing else is parsed.

    Untrusted bytes never reach `np.load` (which follows pickles, zip archives and headers
    of any size): the stype, dtype, shape and byte length must be exactly what was
    signed, and the .npy header byte for byte the one numpy writes for them.
    """
    if array.stype != "numpy.ndarray":
        raise ValueError(f"serialization {array.stype!r}, expected numpy.ndarray")
    layout = _npy_layout(dtype, tuple(shape))
    if layout is None:
        raise ValueError(f"dtype {dtype!r} is not a plain numeric type")
    kind, header, size = layout
    if array.dtype != str(kind) or tuple(array.shape) != tuple(shape):  # Flower names dtypes as numpy prints them
        raise NotAsSigned(f"sent as {array.dtype}{tuple(array.shape)}, signed as {kind}{tuple(shape)}")
    data = array.data
    if not isinstance(data, bytes) or len(data) != len(header) + size or not data.startswith(header):
        raise ValueError(f"{len(data) if isinstance(data, bytes) else 'no'} bytes do not hold a {dtype}{tuple(shape)} tensor")
    return np.frombuffer(data, dtype=kind, offset=len(header)).reshape(shape)


def record_bytes(record: ArrayRecord) -> int:
    return sum(len(a.data) for a in record.values())
