"""LoRA tensors in the generation runtime's layout: `.onnx_adapter` files for an
onnxruntime-genai model folder (export/genai.py). Torch-free: the export writes the
release's adapter with it, and a device converts its personal adapter with it.

The runtime's model builder computes LoRA as `x @ A @ B` with A stored [in, r] and B
stored [r, out], already multiplied by the adapter's scaling (alpha / r), where PEFT
keeps A [r, in] and B [out, r] and scales at run time. The export's signed manifest
lists, per PEFT adapter key, the graph input that holds it and the scale
(`genai.adapter_layout`); nothing else is needed to convert.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import numpy as np
import onnxruntime as ort

from fedpeft.core.errors import IntegrityError

from .onnx_adapter import write_onnx_adapter

Layout = Mapping[str, tuple[str, float]]  # PEFT adapter key -> (graph input, scale)


def layout_of(manifest: Mapping) -> dict[str, tuple[str, float]]:
    """The adapter layout a language-model export's signed manifest names (IntegrityError if malformed)."""
    try:
        entries = manifest["genai"]["adapter_layout"]
        layout = {str(key): (entry[0], float(entry[1])) for key, entry in entries.items()}
    except (KeyError, TypeError, ValueError, IndexError, AttributeError) as exc:
        raise IntegrityError(f"the export's adapter layout is malformed: {exc!r}") from None
    if not layout or not all(isinstance(name, str) for name, _ in layout.values()):
        raise IntegrityError("the export's adapter layout is malformed: it names no graph inputs")
    return layout


def to_genai(arrays: Mapping[str, np.ndarray], layout: Layout) -> dict[str, np.ndarray]:
    """PEFT-layout tensors (by PEFT key) -> the runtime's layout (by PEFT key)."""
    if set(arrays) != set(layout):
        raise IntegrityError(f"adapter does not fit the generation model: {sorted(set(arrays) ^ set(layout))[:3]}")
    return {key: np.ascontiguousarray(np.asarray(value, np.float32).T * np.float32(layout[key][1]))
            for key, value in arrays.items()}


def write_genai_adapter(arrays: Mapping[str, np.ndarray], layout: Layout, path: Path, adapter_version: int) -> None:
    write_onnx_adapter(to_genai(arrays, layout), {key: name for key, (name, _) in layout.items()}, path,
                       adapter_version)


def read_onnx_adapter(path: Path) -> dict[str, np.ndarray]:
    """An `.onnx_adapter`'s tensors by graph name; a file ONNX Runtime cannot read is an IntegrityError."""
    try:
        return {name: value.numpy() for name, value in ort.AdapterFormat.read_adapter(str(path)).get_parameters().items()}
    except Exception as exc:  # noqa: BLE001 - ONNX Runtime raises bare RuntimeErrors and pybind errors alike
        raise IntegrityError(f"adapter {path} does not load in ONNX Runtime: {str(exc).splitlines()[0][-200:]}") from None


def by_key(tensors: Mapping[str, np.ndarray], names: Mapping[str, str]) -> dict[str, np.ndarray]:
    """Tensors named as graph inputs (`names`: PEFT key -> graph name) back under their PEFT keys."""
    keys = {name: key for key, name in names.items()}
    if set(tensors) != set(keys):
        raise IntegrityError(f"adapter does not fit this export: {sorted(set(tensors) ^ set(keys))[:3]}")
    return {keys[name]: value for name, value in tensors.items()}
