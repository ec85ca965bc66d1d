"""ONNX Runtime adapter files: one adapter as an `.onnx_adapter` for a graph whose adapter
tensors are inputs (ONNX Runtime multi-LoRA, since ORT 1.20), written and read back.
Torch-free: the export writes them, and so does a device that personalizes its adapter."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import numpy as np
import onnxruntime as ort

from fedpeft.core.errors import IntegrityError


def write_onnx_adapter(arrays: Mapping[str, np.ndarray], names: Mapping[str, str], path: Path,
                       adapter_version: int) -> None:
    if set(arrays) != set(names):
        raise IntegrityError(f"adapter does not fit the base graph: {sorted(set(arrays) ^ set(names))[:3]}")
    adapter = ort.AdapterFormat()
    adapter.set_adapter_version(adapter_version)
    adapter.set_model_version(1)
    adapter.set_parameters({names[k]: ort.OrtValue.ortvalue_from_numpy(np.ascontiguousarray(v, np.float32))
                            for k, v in arrays.items()})
    adapter.export_adapter(str(path))


def read_onnx_adapter(path: Path) -> dict[str, np.ndarray]:
    """An `.onnx_adapter`'s tensors by graph name; a file ONNX Runtime cannot read is an IntegrityError."""
    try:
        return {name: value.numpy() for name, value in ort.AdapterFormat.read_adapter(str(path)).get_parameters().items()}
    except Exception as exc:  # noqa: BLE001 - ONNX Runtime raises bare RuntimeErrors and pybind errors alike
        raise IntegrityError(f"adapter {path} does not load in ONNX Runtime: {str(exc).splitlines()[0][-200:]}") from None
