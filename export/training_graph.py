"""The training graph: `(input_ids, attention_mask, labels, dropout, *adapter tensors) -> (loss, *gradients)`.

A device trains its adapter with plain ONNX Runtime and a numpy optimizer
(device/trainer.py): no PyTorch, and no onnxruntime-training (no longer published). The
graph is PyTorch's own backward pass, exported:

1. `torch.export` of `model(...).loss`, then `_export_forward_backward`, the joint
   forward+backward program (torch.export's experimental API; nothing else emits a
   backward graph ONNX can hold).
2. The joint program marks the loss and the gradients as special outputs that the ONNX
   exporter would drop; they are relabelled as user outputs.
3. The program's module is wrapped with `functional_call`, so every adapter tensor is a
   graph input named as in the `.onnx_adapter` file, then exported with dynamic batch and
   sequence axes.
4. Base weights the package carries as int8 become int8 initializers with per-row
   scales and a DequantizeLinear: the same values as the PyTorch clients' frozen base,
   a quarter of the size (hand-written because onnxruntime.quantization quantizes for
   inference; it would change the values and skip the backward MatMuls).

A causal LM's graph is the same program with one label per token (its input ids, padding
-100: core/training/targets.py), batch and sequence length dynamic for labels too; its
tied embeddings are stored once, as int8, under the name the graph gives them (`lm_head`).

Dropout is a graph input, `dropout`: the model's own rates times it. The device trains
with 1 (as PyTorch's train mode, less attention-probability dropout); with 0 the graph
is deterministic, which is how its gradients are checked against PyTorch at export.
"""

from __future__ import annotations

import tempfile
import warnings
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import onnx
import torch
import torch.utils._pytree as pytree
from onnx import helper, numpy_helper
from peft import PeftModel
from torch.export.experimental import _export_forward_backward
from torch.export.graph_signature import OutputKind

from fedpeft.core.errors import ConfigError

from .onnx_graph import OPSET, quiet_logger

TRAIN_INPUTS = ("input_ids", "attention_mask", "labels", "dropout")
LOSS_OUTPUT = "loss"
GRADIENT_SUFFIX = ".grad"


class _Switch:
    """Where the graph's `dropout` input is put for the dropout layers to read."""

    scale: torch.Tensor | float = 0.0


class _ScaledDropout(torch.nn.Module):
    """`nn.Dropout(p)` at rate `p x dropout` (the graph input): 1 trains as PyTorch's
    train mode does, 0 is exactly the identity (the gradient check at export)."""

    def __init__(self, p: float, switch: _Switch) -> None:
        super().__init__()
        self.p, self.switch = p, switch

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        rate = self.p * self.switch.scale
        return x * (torch.rand_like(x) >= rate).to(x.dtype) / (1 - rate)


class _LossModel(torch.nn.Module):
    """`model(input_ids, attention_mask, labels, dropout) -> loss`. Its attribute is
    `model`, so parameter names get the same `model.` prefix as in the inference graphs."""

    def __init__(self, model: torch.nn.Module, switch: _Switch | None = None) -> None:
        super().__init__()
        self.model, self.switch = model, switch or _Switch()

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor, labels: torch.Tensor,
                dropout: torch.Tensor) -> torch.Tensor:
        self.switch.scale = dropout
        return self.model(input_ids=input_ids, attention_mask=attention_mask, labels=labels).loss


@contextmanager
def _scalable_dropout(model: torch.nn.Module, switch: _Switch) -> Iterator[None]:
    """Swap the model's dropout layers for `_ScaledDropout` while exporting. (Attention
    probabilities keep no dropout: transformers applies it only in train mode, which
    would also put it into the gradient check.)"""
    swapped = []
    for name, module in list(model.named_modules()):
        if isinstance(module, torch.nn.Dropout) and module.p > 0:
            parent_name, _, attribute = name.rpartition(".")
            parent = model.get_submodule(parent_name)
            setattr(parent, attribute, _ScaledDropout(module.p, switch))
            swapped.append((parent, attribute, module))
    try:
        yield
    finally:
        for parent, attribute, module in swapped:
            setattr(parent, attribute, module)


class _GradientModel(torch.nn.Module):
    """The joint program with the adapter tensors as arguments instead of parameters."""

    def __init__(self, joint: torch.nn.Module, names: list[str]) -> None:
        super().__init__()
        self.joint, self.names = joint, names

    def forward(self, input_ids, attention_mask, labels, dropout, *tensors):
        return torch.func.functional_call(self.joint, dict(zip(self.names, tensors, strict=True)),
                                          (input_ids, attention_mask, labels, dropout), strict=False)


def export_training_graph(model: PeftModel, adapter_inputs: Mapping[str, str], trainable: list[str],
                          sample: Mapping[str, torch.Tensor], path: Path, max_length: int,
                          int8_weights: Mapping[str, tuple[np.ndarray, np.ndarray]] | None = None) -> list[str]:
    """Write the training graph to `path`; returns the graph names of the trained tensors
    (`trainable`, PEFT keys, as graph names) in the order of the gradient outputs.

    `adapter_inputs` maps every PEFT adapter key to its graph name (export/ort_adapter.py);
    `int8_weights` maps base state-dict names to (int8 values, per-row scales).
    """
    if "labels" not in sample or sample["input_ids"].shape[0] < 2:
        raise ValueError("the training graph needs a labelled sample batch of at least 2 rows")
    names = list(adapter_inputs.values())
    wanted = {adapter_inputs[k] for k in trainable}
    switch = _Switch()
    wrapped = _LossModel(model, switch).eval()
    for name, parameter in wrapped.named_parameters():
        parameter.requires_grad_(name in wanted)
    batch = torch.export.Dim("batch", min=1, max=1024)
    sequence = torch.export.Dim("sequence", min=2, max=max_length)
    axes = {0: batch, 1: sequence}
    labels = axes if sample["labels"].dim() == 2 else {0: batch}  # a causal LM's: one per token
    args = (*(sample[n] for n in TRAIN_INPUTS[:3]), torch.tensor(1.0))
    parameters = dict(wrapped.named_parameters())
    with (warnings.catch_warnings(), quiet_logger("torch.onnx"), quiet_logger("torch.export"), quiet_logger("onnx_ir"),
          _eager_attention(model), _scalable_dropout(model, switch)):
        warnings.simplefilter("ignore")
        program = torch.export.export(wrapped, args, dynamic_shapes={"input_ids": axes, "attention_mask": axes,
                                                                      "labels": labels, "dropout": None},
                                      strict=False)
        joint = _export_forward_backward(program)
        _plain_empties(joint)
        trained = _expose_loss_and_gradients(joint)
        if set(trained) != wanted:
            raise ConfigError(f"the backward pass computes gradients for {len(trained)} tensors, expected {len(wanted)}")
        tensors = tuple(parameters[n].detach().clone() for n in names)
        gradient_model = _GradientModel(joint.module(), names)
        shapes = {"input_ids": axes, "attention_mask": axes, "labels": labels, "dropout": None,
                  "tensors": tuple(None for _ in names)}
        exported = torch.export.export(gradient_model, (*args, *tensors), dynamic_shapes=shapes, strict=False)
        onnx_program = torch.onnx.export(
            exported, dynamo=True, optimize=False, verbose=False, opset_version=OPSET,
            input_names=[*TRAIN_INPUTS, *names], output_names=[LOSS_OUTPUT, *[n + GRADIENT_SUFFIX for n in trained]],
        )
    with tempfile.TemporaryDirectory() as tmp:
        onnx_program.save(str(Path(tmp) / "graph.onnx"), external_data=False)
        graph = onnx.load(str(Path(tmp) / "graph.onnx"))
    _give_defaults(graph, {n: t.numpy() for n, t in zip(names, tensors)})
    if int8_weights:
        store_int8(graph, with_tied_names(model, int8_weights))
    onnx.save(graph, str(path))
    return trained


@contextmanager
def _eager_attention(model: PeftModel) -> Iterator[None]:
    """Plain attention ops while exporting: the ONNX exporter has no backward of the
    fused scaled-dot-product attention kernel."""
    base = model.get_base_model()
    before = base.config._attn_implementation
    base.set_attn_implementation("eager")
    try:
        yield
    finally:
        base.set_attn_implementation(before)


def _expose_loss_and_gradients(joint: torch.export.ExportedProgram) -> list[str]:
    """Relabel the joint program's loss and gradient outputs as user outputs (the ONNX
    exporter keeps only those); returns the parameters the gradients belong to."""
    gradients = []
    for spec in joint.graph_signature.output_specs:
        if spec.kind == OutputKind.GRADIENT_TO_PARAMETER:
            gradients.append(spec.target)
        if spec.kind in (OutputKind.LOSS_OUTPUT, OutputKind.GRADIENT_TO_PARAMETER):
            spec.kind, spec.target = OutputKind.USER_OUTPUT, None
    outputs = sum(1 for s in joint.graph_signature.output_specs if s.kind == OutputKind.USER_OUTPUT)
    joint.module_call_graph[0].signature.out_spec = pytree.tree_flatten(tuple(range(outputs)))[1]
    return gradients


def _plain_empties(joint: torch.export.ExportedProgram) -> None:
    """`empty_permuted` with the identity order as plain `empty`: the ONNX exporter has no
    translation of the former, which a causal LM's SiLU backward asks for (its buffer is
    then filled with ones)."""
    for node in joint.graph.nodes:
        if node.target is torch.ops.aten.empty_permuted.default:
            shape, order = node.args
            if list(order) != sorted(order):
                raise ConfigError(f"the backward pass allocates a permuted buffer ({list(order)}) ONNX cannot hold")
            node.target, node.args = torch.ops.aten.empty.memory_format, (shape,)
    joint.graph_module.recompile()


def _give_defaults(graph: onnx.ModelProto, tensors: Mapping[str, np.ndarray]) -> None:
    """Each adapter input also gets its template value as an initializer of the same name
    (the `.onnx_adapter` convention: a graph runs without an adapter fed)."""
    present = {i.name for i in graph.graph.initializer}
    for name, value in tensors.items():
        if name not in present:
            graph.graph.initializer.append(numpy_helper.from_array(np.ascontiguousarray(value, np.float32), name))


def _base_name(graph_name: str) -> str:
    """`joint.model.base_model.model.X.base_layer.weight` -> the base's `X.weight`."""
    name = graph_name.split("model.base_model.model.", 1)[-1]
    return name.replace(".base_layer.", ".")


def with_tied_names(model: PeftModel, int8_weights: Mapping[str, tuple[np.ndarray, np.ndarray]]
                     ) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """The int8 weights also under the names of parameters tied to them: a causal LM's
    graph names its tied embeddings after `lm_head`, the package after `embed_tokens`."""
    by_tensor: dict[int, list[str]] = {}
    for name, parameter in model.get_base_model().named_parameters(remove_duplicate=False):
        by_tensor.setdefault(id(parameter), []).append(name)
    weights = dict(int8_weights)
    for names in by_tensor.values():
        stored = next((int8_weights[n] for n in names if n in int8_weights), None)
        if stored is not None:
            weights.update({n: stored for n in names})
    return weights


def store_int8(graph: onnx.ModelProto, int8_weights: Mapping[str, tuple[np.ndarray, np.ndarray]]) -> None:
    initializers = graph.graph.initializer
    nodes = []
    for index in reversed(range(len(initializers))):
        initializer = initializers[index]
        entry = int8_weights.get(_base_name(initializer.name))
        if entry is None or initializer.data_type != onnx.TensorProto.FLOAT:
            continue
        values, scales = entry
        if tuple(values.shape) != tuple(initializer.dims):
            raise ConfigError(f"int8 weights of {initializer.name} do not fit its shape {list(initializer.dims)}")
        name = initializer.name
        del initializers[index]
        initializers.append(numpy_helper.from_array(np.ascontiguousarray(values, np.int8), name + ".int8"))
        initializers.append(numpy_helper.from_array(np.ascontiguousarray(scales.reshape(-1), np.float32), name + ".scale"))
        nodes.append(helper.make_node("DequantizeLinear", [name + ".int8", name + ".scale"], [name], axis=0,
                                      name=name + ".dequantize"))
    for node in reversed(nodes):
        graph.graph.node.insert(0, node)


def gradient_difference(model: PeftModel, adapter_inputs: Mapping[str, str], trained: list[str],
                        run: Callable[[dict[str, np.ndarray]], list[np.ndarray]],
                        batches: list[dict[str, np.ndarray]]) -> float:
    """Largest absolute difference between PyTorch's loss and gradients and the graph's
    (`run` feeds one batch to it), over `batches`."""
    wrapped = _LossModel(model).eval()
    parameters = dict(wrapped.named_parameters())
    for name in trained:
        parameters[name].requires_grad_(True)
    worst = 0.0
    for batch in batches:
        loss = wrapped(*(torch.from_numpy(batch[n]) for n in TRAIN_INPUTS[:3]), 0.0)  # eval mode: no dropout
        expected = [loss.detach(), *torch.autograd.grad(loss, [parameters[n] for n in trained])]
        feed = {**batch, "dropout": np.array(0.0, np.float32),
                **{n: parameters[n].detach().numpy() for n in adapter_inputs.values()}}
        for want, got in zip(expected, run(feed), strict=True):
            worst = max(worst, float(np.abs(want.numpy() - got).max()))
    return worst
