"""ONNX Runtime adapter files: one trained adapter as an `.onnx_adapter` for a base graph
whose adapter tensors are inputs (ONNX Runtime multi-LoRA, since ORT 1.20)."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import numpy as np
import onnxruntime as ort
from peft import PeftModel, get_peft_model_state_dict

from fedpeft.core.errors import IntegrityError

from .onnx_graph import PREFIX


def adapter_input_names(peft_model: PeftModel) -> dict[str, str]:
    """PEFT adapter key -> the ONNX initializer (and graph input) that holds it.

    The exporter names initializers after parameters (`model.` + the PeftModel's name);
    PEFT's adapter keys drop the adapter name ("default", last for IA3's vectors) and, for a trained head, the
    `modules_to_save` wrapper. The mapping must cover exactly PEFT's adapter keys.
    """
    keys = set(get_peft_model_state_dict(peft_model))
    mapping = {}
    for name, _ in peft_model.named_parameters():
        key = name.replace(".modules_to_save.default.", ".").replace(".default.", ".").removesuffix(".default")
        if key in keys:
            mapping[key] = PREFIX + name
    if set(mapping) != keys:
        raise IntegrityError(f"adapter tensors without a graph name: {sorted(keys - set(mapping))[:3]}")
    return mapping


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
