"""The evaluation graph: `(input_ids, attention_mask, *adapter tensors) -> (logits, features)`.

A device that trains in a federation is also asked to score adapters (validation, the
personalization report) and, in round zero, for the per-class sums of the features its
classifier head sees (core/training/class_means.py). Both need a forward pass with the
adapter swappable: this graph is the base with every adapter tensor a graph input (as the
`.onnx_adapter` convention has it), the head's input as a second output, and the base's
int8 weights stored as in the training graph (the same values PyTorch clients compute
with, a quarter of the size).
"""

from __future__ import annotations

import tempfile
from collections.abc import Mapping
from pathlib import Path

import numpy as np
import onnx
import torch
from peft import PeftModel

from fedpeft.core.base.tasks import Task
from fedpeft.core.training.class_means import head_module

from .onnx_graph import INPUT_NAMES, export_onnx, expose_as_inputs
from .training_graph import store_int8, with_tied_names

EVAL_OUTPUTS = ("logits", "features")


class _LogitsAndFeatures(torch.nn.Module):
    """`model(input_ids, attention_mask) -> (logits, what the head saw)`; its attribute is
    `model`, so parameter names match the other graphs'. The head is kept out of the module
    tree (a list) so its parameters are not named twice."""

    def __init__(self, model: torch.nn.Module, head: torch.nn.Module) -> None:
        super().__init__()
        self.model, self._head = model, [head]

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        seen: list[torch.Tensor] = []
        hook = self._head[0].register_forward_hook(lambda _module, inputs, _output: seen.append(inputs[0]))
        try:
            logits = self.model(input_ids=input_ids, attention_mask=attention_mask).logits
        finally:
            hook.remove()
        return logits, seen[0]


def export_evaluation_graph(model: PeftModel, task: Task, adapter_inputs: Mapping[str, str],
                            sample: Mapping[str, torch.Tensor], path: Path, max_length: int,
                            int8_weights: Mapping[str, tuple[np.ndarray, np.ndarray]]) -> float:
    """Write the graph to `path`; returns its logits' largest difference from PyTorch's on `sample`."""
    wrapped = _LogitsAndFeatures(model, head_module(model, task)).eval()
    with tempfile.TemporaryDirectory() as tmp:
        plain, exposed = Path(tmp) / "plain.onnx", Path(tmp) / "exposed.onnx"
        export_onnx(model, dict(sample), plain, max_length, wrapped, EVAL_OUTPUTS)
        expose_as_inputs(plain, adapter_inputs.values(), exposed)
        graph = onnx.load(str(exposed))
    if int8_weights:
        store_int8(graph, with_tied_names(model, int8_weights))
    onnx.save(graph, str(path))
    from fedpeft.device.predict import open_session

    feed = {name: sample[name].numpy() for name in INPUT_NAMES}
    with torch.no_grad():
        expected = model(**{name: sample[name] for name in INPUT_NAMES}).logits.numpy()
    got = open_session(path).run([EVAL_OUTPUTS[0]], feed)[0]
    return float(np.abs(expected - got).max())
