"""A causal LM's export for ONNX Runtime's generation runtime: the adapter swaps onto one
quantized base, greedy continuations equal PyTorch's on the unquantized base, the export
carries the LM training graph, and a device generates and suggests next words in a process
where torch cannot import.

The tiny Llama is exported with the int4 base (the smaller option; int8 is the default).
At 64 wide it is too narrow for 4-bit weights (its int4 continuations agree with PyTorch
on ~0.2-0.6 of tokens), so the agreement limit is off here; the bundled SmolLM2's figures
are in docs/guides/language-models.md."""

from __future__ import annotations

import csv
import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
from peft import LoraConfig, PeftModel, get_peft_model
from transformers import AutoModelForCausalLM, AutoTokenizer

from fedpeft.core.adapters.state import get_adapter_arrays
from fedpeft.core.errors import ConfigError, IntegrityError
from fedpeft.core.trust.keys import load_private_key, new_key_pair
from fedpeft.core.trust.signed_files import ManifestError
from fedpeft.core.training.data import DataSpec
from fedpeft.core.training.next_word import final_word_places, vocabulary_masks
from fedpeft.core.training.synthetic_next_word import generate
from fedpeft.device.generate import DeviceLanguageModel, LanguageModel
from fedpeft.device.genai_adapter import to_genai, write_genai_adapter
from fedpeft.device.onnx_adapter import write_onnx_adapter
from fedpeft.export import genai
from fedpeft.export.exporter import ExportRequest, export, export_adapter_only
from fedpeft.export.parity import ParityLimits

pytestmark = pytest.mark.lm_device  # language-model export and device runs: `pytest -m lm_device`

BLOCK_TORCH = "import sys\nfor name in ('torch', 'transformers', 'peft'): sys.modules[name] = None\n"
TINY_INT4 = ParityLimits(generation_min_agreement=0.0)  # see the module docstring


def _adapter(base: Path, folder: Path) -> Path:
    """A LoRA adapter on q_proj and v_proj whose B is far from zero, as after training."""
    model = get_peft_model(AutoModelForCausalLM.from_pretrained(base),
                           LoraConfig(r=8, lora_alpha=16, target_modules=["q_proj", "v_proj"], task_type="CAUSAL_LM"))
    torch.manual_seed(1)
    with torch.no_grad():
        for name, parameter in model.named_parameters():
            if "lora_B" in name:
                parameter.normal_(0, 0.05)
    model.save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def lm_export(tiny_llama_dir, tmp_path_factory):
    root = tmp_path_factory.mktemp("lm-export")
    rows = generate(3, 0, messages=60)
    with open(root / "rows.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, ["client_id", "text"])
        writer.writeheader()
        writer.writerows(rows)
    new_key_pair(root / "operator.key")
    operator = load_private_key(root / "operator.key")
    request = ExportRequest(adapter=_adapter(tiny_llama_dir, root / "adapter"), out=root / "export",
                            model_folder=tiny_llama_dir, task="causal-lm", accept_unsigned=True,
                            data=DataSpec(source=str(root / "rows.csv"), task="causal-lm", partitioner="natural"),
                            generation_precision="int4", limits=TINY_INT4)
    manifest = export(request, operator, progress=lambda _: None)
    return {"root": root, "manifest": manifest, "request": request, "operator": operator,
            "texts": [r["text"] for r in rows]}


def test_the_adapter_is_swappable_and_generation_matches_pytorch(lm_export):
    manifest, folder = lm_export["manifest"], lm_export["root"] / "export"
    parity = manifest["parity"]
    assert parity["prompts"] == 20 and parity["fp32_exact"] == 1.0  # 32 greedy tokens, token for token
    assert parity["fp32_logits_max_abs"] <= 1e-3
    assert parity["adapter_effect"] >= 0.5
    assert {"genai/model.onnx", "genai/model.onnx.data", "genai/genai_config.json", "genai/tokenizer.json",
            "adapter.onnx_adapter"} <= set(manifest["files"])
    graph = onnx.load(str(folder / "genai" / "model.onnx"), load_external_data=False)
    assert any(node.op_type == "MatMulNBits" for node in graph.graph.node)  # the base is int4
    inputs = {i.name for i in graph.graph.input}
    layout = manifest["genai"]["adapter_layout"]
    assert len(layout) == 8 and {name for name, _ in layout.values()} <= inputs  # 2 layers x q,v x A,B
    assert {scale for key, (_, scale) in layout.items() if "lora_B" in key} == {2.0}  # alpha / r
    assert manifest["training"]["graph"] == "train.onnx" and parity["gradient_max_abs"] <= 1e-4


def test_a_device_generates_and_suggests_without_torch(lm_export):
    folder, key = lm_export["root"] / "export", lm_export["root"] / "operator.pub"
    prompts = genai.prompts_from(lm_export["texts"])[:3]
    code = BLOCK_TORCH + (
        "from fedpeft.cli import main\n"
        f"for prompt in {prompts!r}:\n"
        f"    assert main(['generate', {str(folder)!r}, prompt, '--key', {str(key)!r}, '--max-tokens', '12']) == 0\n"
        f"    assert main(['generate', {str(folder)!r}, prompt, '--key', {str(key)!r}, '--max-tokens', '12',"
        " '--no-adapter']) == 0\n"
        f"assert main(['predict', {str(folder)!r}, 'see you at the', 'thanks so', '--key', {str(key)!r}]) == 0\n"
        "assert 'torch' not in sys.modules or sys.modules['torch'] is None\n")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    lines = done.stdout.splitlines()
    generated, suggestions = lines[:6], lines[6:]
    assert all(line.strip() for line in generated)
    assert any(generated[i] != generated[i + 1] for i in range(0, 6, 2))  # the adapter changes what is generated
    assert len(suggestions) == 2 and all(len(s.split("\t")[0].split(" | ")) == 3 for s in suggestions)


def test_device_suggestions_are_the_keyboard_procedure_pytorch_scores(lm_export, tiny_llama_dir, tmp_path):
    """On the unquantized runtime, a message's final word is among the device's 3 suggestions
    after the text before it exactly where core/training/next_word.py counts a top-3 hit,
    and at the same place."""
    request = lm_export["request"]
    model = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(tiny_llama_dir), str(request.adapter)).eval()
    tokenizer = AutoTokenizer.from_pretrained(tiny_llama_dir)
    layout, arrays = genai.adapter_layout(model), get_adapter_arrays(model)
    genai.build(tiny_llama_dir, request.adapter, layout, to_genai(arrays, layout), tmp_path / "fp32", "fp32", tmp_path,
                tmp_path / "builder.log")
    write_genai_adapter(arrays, layout, tmp_path / "a.onnx_adapter", 0)
    runtime = LanguageModel(tmp_path / "fp32")
    runtime.load_adapter(tmp_path / "a.onnx_adapter", "global")
    starts, continues = (m.numpy() for m in vocabulary_masks(tokenizer))
    assert np.array_equal(runtime.word_masks()[0], starts) and np.array_equal(runtime.word_masks()[1], continues)
    texts = lm_export["texts"][:24]
    places = final_word_places(model, tokenizer, texts, 128)
    for text, place in zip(texts, places):
        before, word = text.rsplit(" ", 1)
        suggestions = runtime.next_words(before, "global")
        assert len(suggestions) == 3
        if place is not None:
            assert suggestions[place] == word, (text, suggestions)
        elif word.isalnum():
            assert word not in suggestions, (text, suggestions)


def test_another_adapter_onto_the_export_and_hostile_files(lm_export, tmp_path):
    folder = lm_export["root"] / "export"
    public = lm_export["operator"].public_key()
    onto = export_adapter_only(
        ExportRequest(adapter=lm_export["request"].adapter, out=tmp_path / "onto", model_folder=Path("."),
                      task="causal-lm", accept_unsigned=True), folder, public, lm_export["operator"])
    assert onto["type"] == "fedpeft/onnx-adapter"
    prompt = genai.prompts_from(lm_export["texts"])[0]
    own = DeviceLanguageModel(folder, public).generate(prompt, 16)
    assert DeviceLanguageModel(folder, public, adapter=tmp_path / "onto").generate(prompt, 16) == own

    # a personal adapter as device training writes it (the training graph's names, PEFT layout)
    arrays = get_adapter_arrays(PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(
        lm_export["request"].model_folder), str(lm_export["request"].adapter)))
    personal = tmp_path / "personal.onnx_adapter"
    write_onnx_adapter(arrays, lm_export["manifest"]["adapter_inputs"], personal, 0)
    device = DeviceLanguageModel(folder, public, with_adapter=False)
    device.model.load_adapter(device._converted(personal), "personal")
    ids = device.model.encode(prompt)
    assert list(device.model.generate(ids, 16, "personal")) == list(DeviceLanguageModel(folder, public).model.generate(
        ids, 16, "active"))

    runtime = LanguageModel(folder / "genai")
    wrong = tmp_path / "wrong.onnx_adapter"
    write_genai_adapter({"a": np.ones((4, 4), np.float32)}, {"a": ("not.a.graph.input", 1.0)}, wrong, 0)
    with pytest.raises(IntegrityError, match="does not load onto this model"):
        runtime.load_adapter(wrong, "wrong")
    partial = tmp_path / "partial.onnx_adapter"
    layout = {key: tuple(entry) for key, entry in lm_export["manifest"]["genai"]["adapter_layout"].items()}
    first = next(iter(layout))
    write_genai_adapter({first: arrays[first]}, {first: layout[first]}, partial, 0)
    with pytest.raises(IntegrityError, match="does not fit this export"):
        DeviceLanguageModel(folder, None, adapter=partial)  # --no-verify: a bare file, checked all the same

    extra = folder / "genai" / "special_tokens_map.json"  # a file the runtime's tokenizer would read by name
    extra.write_text("{}")
    try:
        with pytest.raises(IntegrityError, match="does not list"):
            DeviceLanguageModel(folder, public)
    finally:
        extra.unlink()

    other = tmp_path / "other-alpha"
    shutil.copytree(lm_export["request"].adapter, other)
    config = json.loads((other / "adapter_config.json").read_text())
    (other / "adapter_config.json").write_text(json.dumps({**config, "lora_alpha": 32}))
    with pytest.raises(ConfigError, match="scales LoRA by 4"):
        export_adapter_only(ExportRequest(adapter=other, out=tmp_path / "onto2", model_folder=Path("."),
                                          task="causal-lm", accept_unsigned=True), folder, public, lm_export["operator"])
    assert not (tmp_path / "onto2").exists()

    device = DeviceLanguageModel(folder, public)
    long_text = " ".join(lm_export["texts"])  # far past the 128-token context: the latest context is used
    assert len(device.next_words(long_text)) == 3
    with pytest.raises(ConfigError, match="context holds 128"):
        device.generate(long_text, 8)

    data = folder / "genai" / "model.onnx.data"
    original = data.read_bytes()
    try:
        data.write_bytes(original[:-1] + bytes([original[-1] ^ 1]))
        with pytest.raises(ManifestError):
            DeviceLanguageModel(folder, public)
    finally:
        data.write_bytes(original)
