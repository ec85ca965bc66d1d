"""A causal LM for ONNX Runtime's generation runtime (onnxruntime-genai), with swappable LoRA.

The runtime's model builder writes the model folder (int8 or int4 MatMulNBits base
weights, KV cache, `genai_config.json`, tokenizer). Given a PEFT adapter it bakes the LoRA weights in
as quantized constants: one merged model per adapter. We keep the LoRA MatMuls in fp32
(`nodes_to_exclude`) and turn their weights into graph inputs whose defaults are the
plain base (B = 0), so `.onnx_adapter` files switch adapters at run time and one base
serves the global adapter, a personal one and none. That rewrite is written here because
the builder has no option for it (checked in 0.18).
"""

from __future__ import annotations

import math
import re
import shutil
import subprocess
import sys
from collections.abc import Mapping
from pathlib import Path

import numpy as np
import onnx
import torch
from onnx import numpy_helper
from peft import PeftModel
from peft.tuners.lora import LoraLayer
from transformers import AutoConfig, GenerationConfig

from fedpeft.core.errors import ConfigError, IntegrityError
from fedpeft.core.trust.json_reader import JSONRefused, parse_json_object
from fedpeft.core.trust.signed_files import read_file
from fedpeft.device.generate import LanguageModel
from fedpeft.device.genai_adapter import to_genai

from .parity import GenerationParity

GENAI_DIR = "genai"
PARITY_PROMPTS = 20
GENERATED_TOKENS = 32  # per prompt, greedy
AGREEMENT_TOKENS = 16  # the quantized base is compared on the first 16
MODEL_FILE, DATA_FILE = "model.onnx", "model.onnx.data"
# PEFT module path -> (builder block, projection): the Llama-family names the builder uses
_MODULE = re.compile(r"^base_model\.model\.model\.layers\.(\d+)\.(self_attn|mlp)\.(\w+_proj)$")
_BLOCK = {"self_attn": "attn", "mlp": "mlp"}
LLAMA_FAMILY = ("llama",)  # checked here; the builder names Mistral's and Qwen2's alike, untested


def serves(model_folder: Path) -> bool:
    """Whether the generation export is made for this causal LM: Llama-family models (SmolLM2
    among them), whose LoRA modules map onto the builder's names as `adapter_layout` does.
    Other causal LMs export as before, as logits graphs without a KV cache."""
    return AutoConfig.from_pretrained(model_folder).model_type in LLAMA_FAMILY


def adapter_layout(model: PeftModel) -> dict[str, tuple[str, float]]:
    """PEFT adapter key -> (the builder's initializer for it, the scale it multiplies B by)."""
    layout = {}
    for module_name, module in model.named_modules():
        if not isinstance(module, LoraLayer) or "default" not in module.lora_A:
            continue
        match = _MODULE.match(module_name)
        if match is None:
            raise ConfigError(f"the generation export supports LoRA on a Llama-family model's attention and MLP "
                              f"projections, not on {module_name}")
        layer, block, projection = match.groups()
        for part, scale in (("A", 1.0), ("B", float(module.scaling["default"]))):
            key = f"{module_name}.lora_{part}.weight"
            layout[key] = (f"model.layers.{layer}.{_BLOCK[block]}.{projection}.lora_{part}.MatMul.weight", scale)
    if not layout:
        raise ConfigError("the adapter has no LoRA layers: the generation export serves LoRA adapters")
    return layout


def _node_name(initializer: str) -> str:
    """`model.layers.0.attn.q_proj.lora_A.MatMul.weight` -> `/model/layers.0/attn/q_proj/lora_A/MatMul`."""
    layer, rest = re.match(r"^model\.layers\.(\d+)\.(.+)\.MatMul\.weight$", initializer).groups()
    return f"/model/layers.{layer}/" + rest.replace(".", "/") + "/MatMul"


def build(model_folder: Path, adapter: Path, layout: Mapping[str, tuple[str, float]],
          expected: Mapping[str, np.ndarray], out: Path, precision: str, cache: Path, log: Path) -> None:
    """The runtime's model folder for the base in `model_folder` at `precision` ("int8",
    "int4" or "fp32"), with the adapter's LoRA tensors as graph inputs (defaults: the plain base).
    `expected` holds the adapter in the runtime's layout by PEFT key: the builder's own
    copy must equal it, which proves the layout the manifest tells devices. The builder's
    output goes to `log`."""
    built = cache / f"built-{precision}"
    excluded = ",".join(_node_name(name) for name, _ in layout.values())
    command = [sys.executable, "-m", "onnxruntime_genai.models.builder", "-i", str(model_folder), "-o", str(built),
               "-p", precision, "-e", "cpu", "-c", str(cache / "hf"),
               "--extra_options", f"adapter_path={adapter}", f"nodes_to_exclude={excluded}"]
    with open(log, "a") as sink:
        sink.write(f"$ {' '.join(command)}\n")
        sink.flush()
        done = subprocess.run(command, stdout=sink, stderr=subprocess.STDOUT)
    if done.returncode != 0:
        raise ConfigError(f"onnxruntime-genai's model builder failed (exit {done.returncode}); its output is in {log}")
    out.mkdir(parents=True)
    for item in built.iterdir():
        if item.name not in (MODEL_FILE, DATA_FILE):
            shutil.copy(item, out / item.name)
    graph = onnx.load(str(built / MODEL_FILE))
    _adapter_inputs(graph, {layout[key][0]: value for key, value in expected.items()})
    # saved beside, never over, the file that holds the external data (that corrupts it)
    onnx.save(graph, str(out / MODEL_FILE), save_as_external_data=True, location=DATA_FILE)
    shutil.rmtree(built)


def _adapter_inputs(graph: onnx.ModelProto, expected: Mapping[str, np.ndarray]) -> None:
    """Each LoRA initializer (checked against `expected`, by graph name) becomes a graph input
    of the same name; B's default becomes zeros, so a generator with no adapter active runs
    the plain base."""
    found = set()
    for initializer in graph.graph.initializer:
        if initializer.name not in expected:
            continue
        found.add(initializer.name)
        baked = numpy_helper.to_array(initializer)
        if baked.shape != expected[initializer.name].shape or not np.allclose(baked, expected[initializer.name],
                                                                               rtol=1e-5, atol=1e-6):
            raise IntegrityError(f"the builder stores {initializer.name} otherwise than fedpeft converts it: "
                                 "devices would apply adapters wrongly")
        if ".lora_B." in initializer.name:
            initializer.CopyFrom(numpy_helper.from_array(np.zeros_like(baked), initializer.name))
        graph.graph.input.append(onnx.helper.make_tensor_value_info(initializer.name, initializer.data_type,
                                                                    list(initializer.dims)))
    if found != set(expected):
        raise IntegrityError(f"the builder's graph lacks LoRA tensors {sorted(set(expected) - found)[:3]}: "
                             "this onnxruntime-genai names them otherwise")


def prompts_from(texts: list[str], count: int = PARITY_PROMPTS) -> list[str]:
    """Prompts from held-out messages: the first half of each one's words (at least two)."""
    prompts = []
    for text in texts:
        words = text.split()
        if len(words) >= 3:
            prompts.append(" ".join(words[:max(2, len(words) // 2)]))
    if not prompts:
        raise ConfigError("no held-out message has three words to make a parity prompt from")
    return prompts[:count]


@torch.no_grad()
def measure(model: PeftModel, tokenizer, fp32: LanguageModel, shipped: LanguageModel, precision: str, adapter: str,
            prompts: list[str]) -> GenerationParity:
    """`fp32` and `shipped` (the quantized model) hold the adapter loaded as `adapter`;
    `model` is PyTorch's model with it."""
    search = GenerationConfig(max_new_tokens=GENERATED_TOKENS, do_sample=False, eos_token_id=fp32.eos_token_id,
                              pad_token_id=tokenizer.pad_token_id if tokenizer.pad_token_id is not None
                              else fp32.eos_token_id)
    exact = agreed = compared = changed = 0
    logits_max_abs = 0.0
    for prompt in prompts:
        ids = tokenizer(prompt)["input_ids"]
        if fp32.encode(prompt) != ids:
            raise IntegrityError(f"the generation runtime tokenizes {prompt!r} otherwise than transformers")
        inputs = torch.tensor([ids])
        reference = model.generate(inputs, attention_mask=torch.ones_like(inputs), generation_config=search)
        reference = reference[0, len(ids):].tolist()
        exact += list(fp32.generate(ids, GENERATED_TOKENS, adapter)) == reference
        logits = model(inputs).logits[0, -1].float().numpy()
        difference = float(np.abs(fp32.next_token_logits(ids, adapter) - logits).max())
        logits_max_abs = max(logits_max_abs, difference if np.isfinite(difference) else float("inf"))
        quantized = list(shipped.generate(ids, GENERATED_TOKENS, adapter))
        agreed += sum(a == b for a, b in zip(quantized[:AGREEMENT_TOKENS], reference[:AGREEMENT_TOKENS]))
        compared += min(AGREEMENT_TOKENS, len(reference))
        changed += list(shipped.generate(ids, GENERATED_TOKENS, None)) != quantized
    return GenerationParity(prompts=len(prompts), tokens=GENERATED_TOKENS, fp32_exact=exact / len(prompts),
                            fp32_logits_max_abs=logits_max_abs, precision=precision,
                            agreement=agreed / max(compared, 1),
                            adapter_effect=changed / len(prompts))


def check_fits(adapter: Path, arrays: Mapping[str, np.ndarray], layout: Mapping[str, tuple[str, float]],
               exported: Mapping[str, np.ndarray]) -> None:
    """Another adapter onto an existing export (`fedpeft export --onto`) must scale B as the
    export's layout says and have the shapes of the export's own adapter (`exported`, by
    graph name): otherwise devices would apply it wrongly, or fail on it at run time."""
    try:
        config = parse_json_object(read_file(adapter, "adapter_config.json"), str(adapter / "adapter_config.json"))
        rank, alpha = int(config["r"]), float(config["lora_alpha"])
    except (JSONRefused, KeyError, TypeError, ValueError) as exc:
        raise ConfigError(f"{adapter}/adapter_config.json does not name a LoRA rank and alpha: {exc}") from None
    if config.get("rank_pattern") or config.get("alpha_pattern"):
        raise ConfigError(f"{adapter} scales layers differently (rank or alpha patterns): not exportable onto one layout")
    scale = alpha / (math.sqrt(rank) if config.get("use_rslora") else rank)
    for name, expected in layout.values():
        if ".lora_B." in name and not math.isclose(scale, expected, rel_tol=1e-6):
            raise ConfigError(f"{adapter} scales LoRA by {scale:g}; the export's layout by {expected:g}")
    for key, value in to_genai(arrays, layout).items():
        if exported.get(layout[key][0], value).shape != value.shape:
            raise ConfigError(f"{adapter}: {key} has shape {value.T.shape}, unlike the export's adapter")
