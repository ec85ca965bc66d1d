"""PyTorch -> ONNX: a model with the adapter merged, or with its tensors as graph inputs.

torch.onnx's dynamo exporter does the work; what is ours is the wrapper that fixes the
input and output names, the dynamic batch and sequence axes, and the step that turns
adapter initializers into graph inputs so ONNX Runtime can swap adapters at run time.
"""

from __future__ import annotations

import logging
import warnings
from collections.abc import Iterable
from pathlib import Path

import onnx
import torch
from onnx import helper

INPUT_NAMES = ("input_ids", "attention_mask")
OUTPUT_NAMES = ("logits",)
OPSET = 20


class LogitsModel(torch.nn.Module):
    """`model(input_ids, attention_mask) -> logits`, the signature devices call."""

    def __init__(self, model: torch.nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        return self.model(input_ids=input_ids, attention_mask=attention_mask).logits


PREFIX = "model."  # LogitsModel's attribute: every exported parameter name starts with it


def export_onnx(model: torch.nn.Module, sample: dict[str, torch.Tensor], path: Path, max_length: int,
                wrapped: torch.nn.Module | None = None, output_names: tuple[str, ...] = OUTPUT_NAMES) -> None:
    """Export with dynamic batch and sequence axes into one self-contained .onnx file.

    `sample` must hold at least two rows: a batch of one would freeze that axis. `wrapped`
    (default `LogitsModel(model)`) is what is exported, `output_names` name its outputs.
    """
    if sample["input_ids"].shape[0] < 2:
        raise ValueError("export needs a sample batch of at least 2 rows")
    batch = torch.export.Dim("batch", min=1, max=1024)
    sequence = torch.export.Dim("sequence", min=1, max=max_length)
    axes = {0: batch, 1: sequence}
    if hasattr(model.config, "use_cache"):
        model.config.use_cache = False  # no KV cache: one pass over the whole sequence
    wrapped = (wrapped or LogitsModel(model)).eval()
    with warnings.catch_warnings(), quiet_logger("torch.onnx"):
        warnings.simplefilter("ignore")
        program = torch.onnx.export(
            wrapped, tuple(sample[n] for n in INPUT_NAMES), dynamo=True, optimize=False, verbose=False,
            input_names=list(INPUT_NAMES), output_names=list(output_names), opset_version=OPSET,
            dynamic_shapes={"input_ids": axes, "attention_mask": axes},
        )
    program.save(str(path), external_data=False)


def expose_as_inputs(path: Path, names: Iterable[str], out: Path) -> None:
    """Make the named initializers graph inputs too, their stored values the defaults:
    what ONNX Runtime multi-LoRA needs to override them from an .onnx_adapter file."""
    model = onnx.load(str(path))
    initializers = {i.name: i for i in model.graph.initializer}
    for name in names:
        if name not in initializers:
            raise KeyError(f"{name} is not an initializer of {path.name}")
        tensor = initializers[name]
        model.graph.input.append(helper.make_tensor_value_info(name, tensor.data_type, list(tensor.dims)))
    onnx.save(model, str(out))


class quiet_logger:
    """Silence a logger (the root logger for "") inside a `with` block."""

    def __init__(self, name: str) -> None:
        self.logger = logging.getLogger(name)

    def __enter__(self) -> None:
        self.level = self.logger.level
        self.logger.setLevel(logging.ERROR)

    def __exit__(self, *exc) -> None:
        self.logger.setLevel(self.level)
