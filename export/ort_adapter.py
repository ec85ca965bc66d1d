"""Graph names of a PEFT model's adapter tensors: the inputs of the base and training
graphs, and the keys of `.onnx_adapter` files (device/onnx_adapter.py writes those)."""

from __future__ import annotations

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
