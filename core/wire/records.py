"""Conversions between fedpeft objects and Flower records (what travels in a Message)."""

from __future__ import annotations

import io
import json
import math
from collections.abc import Mapping
from functools import lru_cache

import numpy as np
from flwr.app import Array, ArrayRecord, ConfigRecord, RecordDict

from fedpeft.core.adapters.template import AdapterTemplate
from fedpeft.core.base.package import BasePackage


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


def install_content(template: AdapterTemplate, package: BasePackage | None) -> RecordDict:
    """What a node needs once per run: the adapter template, and the base unless cached."""
    content = RecordDict({
        "template": to_record(template.init),
        "template-meta": ConfigRecord({"description": json.dumps(template.description())}),
    })
    if package is not None:
        files = {f"file:{name}": data for name, data in package.files.items()}
        content["base"] = to_record(package.tensors)
        content["base-meta"] = ConfigRecord({"manifest": json.dumps(package.manifest), **files})
    return content


def package_from_content(content: RecordDict) -> BasePackage:
    meta = content.config_records["base-meta"]
    files = {k[len("file:"):]: bytes(v) for k, v in meta.items() if k.startswith("file:")}
    return BasePackage(json.loads(str(meta["manifest"])), files, from_record(content.array_records["base"]))


def template_from_content(content: RecordDict) -> AdapterTemplate:
    description = json.loads(str(content.config_records["template-meta"]["description"]))
    return AdapterTemplate.from_description(description, from_record(content.array_records["template"]))
