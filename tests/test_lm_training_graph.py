"""A causal LM's training graph on the tiny Llama (SmolLM2's vocabulary): loss and
adapter gradients against autograd, with dynamic batch and sequence length and the int8
base (tied embeddings included), built by the exporter's `_training_graph`."""

import numpy as np
import onnx
import pytest

from fedpeft.core.adapters.spec import TemplateSpec
from fedpeft.core.adapters.state import set_adapter_arrays
from fedpeft.core.adapters.template import create_template
from fedpeft.core.base.model import load_base
from fedpeft.core.base.package import BasePackage
from fedpeft.core.base.tasks import get_task
from fedpeft.core.training.data import TextSplit
from fedpeft.device.predict import open_session
from fedpeft.export.exporter import _int8_weights, _training_graph
from fedpeft.export.ort_adapter import adapter_input_names
from fedpeft.export.training_graph import gradient_difference

pytestmark = pytest.mark.lm_device  # language-model export and device runs: `pytest -m lm_device`

MESSAGES = [f"hi {name} see you at {place} at {hour} {sign_off}"
            for name, place, sign_off in (("ana", "the park", "cheers"), ("ben", "the cafe", "later"))
            for hour in ("six", "seven", "eight", "nine", "ten", "noon")] * 2


@pytest.fixture(scope="module")
def graph(tiny_llama_dir, tmp_path_factory):
    """An FFA-LoRA template on q_proj and v_proj with perturbed tensors, and its training graph."""
    package = BasePackage.from_pretrained(tiny_llama_dir, get_task("causal-lm"), "int8")
    base = load_base(package, 0, in_memory_quantization=False)
    template = create_template(base.model, base.task, TemplateSpec(method="ffa-lora", rank=4), [])
    model = template.attach(base.model).eval()
    rng = np.random.default_rng(0)
    set_adapter_arrays(model, {n: (v + rng.normal(scale=0.2, size=v.shape)).astype(np.float32)
                               for n, v in template.init.items()})
    path = tmp_path_factory.mktemp("lm-graph") / "train.onnx"
    entry, difference = _training_graph(model, base.task, base.tokenizer, TextSplit(MESSAGES, [0] * len(MESSAGES)),
                                        "ffa-lora", _int8_weights(package), path, 32)
    return {"base": base, "model": model, "entry": entry, "difference": difference, "path": path}


def test_the_lm_graph_trains_the_methods_tensors_on_an_int8_base(graph):
    entry = graph["entry"]
    assert entry["task"] == "causal-lm" and entry["base_weights"] == "int8" and graph["difference"] <= 1e-4
    assert len(entry["trained"]) == 4 and all(".lora_B." in n for n in entry["trained"])  # q, v of 2 layers; A frozen
    model = onnx.load(str(graph["path"]))
    int8 = [i for i in model.graph.initializer if i.data_type == onnx.TensorProto.INT8]
    assert sum(n.op_type == "DequantizeLinear" for n in model.graph.node) == len(int8)
    assert any("lm_head" in i.name for i in int8)  # the tied embeddings (98% of the model) as int8 too
    big_floats = [i.name for i in model.graph.initializer
                  if i.data_type == onnx.TensorProto.FLOAT and len(i.dims) > 1 and int(np.prod(i.dims)) > 4096]
    assert not big_floats
    labels = next(i for i in model.graph.input if i.name == "labels")
    assert [bool(d.dim_param) for d in labels.type.tensor_type.shape.dim] == [True, True]  # one label per token


def test_one_graph_matches_autograd_at_other_batch_and_sequence_lengths(graph):
    base, model = graph["base"], graph["model"]
    session = open_session(graph["path"])
    shapes = set()
    batches = []
    for texts in (["a much longer message about the weather and the rain in the park today", "ok"],
                  ["see you", "at noon", "cheers ben", "the station", "later"]):
        batch = {k: v.numpy() for k, v in base.task.batch(base.tokenizer, texts, [], 32).items()}
        shapes.add(batch["input_ids"].shape)
        assert (batch["labels"] == -100).any()  # padding is ignored by the loss
        batches.append(batch)
    assert len(shapes) == 2
    names = adapter_input_names(model)
    difference = gradient_difference(model, names, graph["entry"]["trained"], lambda f: session.run(None, f), batches)
    assert difference <= 1e-4
