"""Shared fixtures: tiny randomly initialised transformers written as real model folders."""

from __future__ import annotations

import gzip
import os
import re
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import settings
from transformers import (
    AutoModelForCausalLM,
    AutoTokenizer,
    BertConfig,
    BertForSequenceClassification,
    BertTokenizer,
    GPT2Config,
    GPT2LMHeadModel,
    LlamaConfig,
    LlamaForCausalLM,
)

import fedpeft  # noqa: F401  (quiets torchao's optional-kernel warnings)
from fedpeft.core.adapters.spec import TemplateSpec
from fedpeft.core.adapters.state import set_adapter_arrays
from fedpeft.core.adapters.template import create_template
from fedpeft.core.base.model import Base, load_base
from fedpeft.core.base.package import BasePackage
from fedpeft.core.base.tasks import get_task
from fedpeft.core.training import synthetic_data
from fedpeft.core.training.data import DataSpec
from fedpeft.core.training.synthetic_data import LABELS
from fedpeft.core.trust.keys import Keyring, load_private_key, load_public_key, new_key_pair
from fedpeft.core.trust.release import sign_release
from fedpeft.core.trust.tls import write_tls_files
from fedpeft.export.exporter import ExportRequest, export
from fedpeft.export.parity import ParityLimits
from fedpeft.server.registry.process import RegistryProcess
from fedpeft.server.registry.tuf_operator import init_repository

# Every property-based (fuzz) test draws this many examples: the short pass by default,
# `FEDPEFT_FUZZ_EXAMPLES=5000` for the long run (README). No test sets its own count
# (tests/test_fuzz.py checks), or the variable would not lengthen it.
FUZZ_EXAMPLES = int(os.environ.get("FEDPEFT_FUZZ_EXAMPLES", "200"))
settings.register_profile("fedpeft", max_examples=FUZZ_EXAMPLES, deadline=None)
settings.load_profile("fedpeft")

DATA = DataSpec(num_clients=3, labels=tuple(LABELS))
# A 2-layer, 32-wide random BERT is far more fragile under int8 than a real model; the
# real bundled model is held to the default limits in test_bundled_model.py.
TINY_LIMITS = ParityLimits(int8_min_agreement=0.8, int8_max_accuracy_drop=0.2)


def _synthetic_vocabulary() -> list[str]:
    text = " ".join(
        [*sum(synthetic_data.TOPIC_WORDS.values(), []), *synthetic_data.AMBIGUOUS,
         *synthetic_data.CLEAR_TEMPLATES, *synthetic_data.NEUTRAL_TEMPLATES,
         *synthetic_data.OPENERS, *synthetic_data.CLOSERS]
    )
    return sorted(set(re.findall(r"[a-z]+|[^\sa-z]", text.lower())))


def write_tiny_bert(folder: Path, seed: int = 0) -> Path:
    """A 2-layer, 32-wide BERT with a word-level vocabulary covering the synthetic data."""
    folder.mkdir(parents=True, exist_ok=True)
    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *_synthetic_vocabulary()]
    (folder / "vocab.txt").write_text("\n".join(vocab) + "\n")
    # The vocabulary as a dict: transformers 5 ignores `vocab_file` here and would leave
    # a 5-token vocabulary that maps every word to [UNK].
    BertTokenizer(vocab={word: i for i, word in enumerate(vocab)}, do_lower_case=True).save_pretrained(str(folder))
    config = BertConfig(
        vocab_size=len(vocab), hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
        intermediate_size=64, max_position_embeddings=64, num_labels=2,
    )
    torch.manual_seed(seed)
    BertForSequenceClassification(config).save_pretrained(str(folder))
    return folder


@pytest.fixture(scope="session")
def tiny_bert_dir(tmp_path_factory) -> Path:
    return write_tiny_bert(tmp_path_factory.mktemp("tiny-bert"))


@pytest.fixture(scope="session")
def tiny_package(tiny_bert_dir) -> BasePackage:
    return BasePackage.from_pretrained(tiny_bert_dir, get_task("seq-cls"), "int8")


@pytest.fixture
def tiny_base(tiny_package) -> Base:
    return load_base(tiny_package, num_labels=len(synthetic_data.LABELS))


@pytest.fixture
def tiny_gpt2_dir(tmp_path, tiny_bert_dir):
    """A 2-layer GPT-2 that reuses the tiny BERT's word-level tokenizer files."""
    folder = tmp_path / "gpt2"
    folder.mkdir()
    for name in ("vocab.txt", "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json"):
        if (tiny_bert_dir / name).is_file():
            (folder / name).write_bytes((tiny_bert_dir / name).read_bytes())
    vocab = len((tiny_bert_dir / "vocab.txt").read_text().split())
    torch.manual_seed(0)
    GPT2LMHeadModel(GPT2Config(vocab_size=vocab, n_positions=64, n_embd=32, n_layer=2, n_head=2)).save_pretrained(folder)
    return folder


SMOLLM2_TOKENIZER = Path(__file__).parent / "data" / "smollm2-tokenizer"  # SmolLM2's real 49,152-token vocabulary


def write_tiny_llama(folder: Path, seed: int = 0) -> Path:
    """A 2-layer, 64-wide Llama with SmolLM2's tokenizer (3.2M parameters, 98% of them the
    tied embeddings). `initializer_range=0.1`: with the default 0.02 the tiny tied
    embeddings keep the logits near uniform and perplexity barely moves (docs/development.md)."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "tokenizer.json").write_bytes(gzip.decompress((SMOLLM2_TOKENIZER / "tokenizer.json.gz").read_bytes()))
    for name in ("tokenizer_config.json", "chat_template.jinja"):
        (folder / name).write_bytes((SMOLLM2_TOKENIZER / name).read_bytes())
    torch.manual_seed(seed)
    config = LlamaConfig(vocab_size=49152, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=128,
                         tie_word_embeddings=True, initializer_range=0.1, bos_token_id=1, eos_token_id=2,
                         pad_token_id=2)
    LlamaForCausalLM(config).save_pretrained(folder)
    return folder


def train_tiny_lm(folder: Path, texts: list[str], steps: int):
    """(model, tokenizer) of the causal LM in `folder` after `steps` full-parameter AdamW
    steps (lr 1e-2, seed 0) on `texts` as one padded batch, in eval mode."""
    tokenizer = AutoTokenizer.from_pretrained(folder)
    model = AutoModelForCausalLM.from_pretrained(folder)
    torch.manual_seed(0)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2)
    batch = tokenizer(texts, padding=True, return_tensors="pt")
    labels = batch["input_ids"].masked_fill(batch["attention_mask"] == 0, -100)
    model.train()
    for _ in range(steps):
        model(**batch, labels=labels).loss.backward()
        optimizer.step()
        optimizer.zero_grad()
    return model.eval(), tokenizer


@pytest.fixture(scope="session")
def tiny_llama_dir(tmp_path_factory) -> Path:
    return write_tiny_llama(tmp_path_factory.mktemp("tiny-llama"))


def release_adapter(folder: Path, base: Base, template, arrays: dict[str, np.ndarray], key, version: int = 1,
                    method: str | None = None) -> Path:
    """`arrays` saved as a PEFT folder with a release signed by `key`."""
    model = template.attach(base.model)
    set_adapter_arrays(model, arrays)
    model.save_pretrained(str(folder))
    model.unload()
    sign_release(folder, key, version=version, base_id=base.base_id, template_id=template.template_id,
                 method=method, labels=list(LABELS), parent=None, metrics={}, valid_days=1)
    return folder


@pytest.fixture(scope="session")
def trained_export(tiny_bert_dir, tiny_package, tmp_path_factory):
    """A signed ffa-lora adapter with a trained-looking B and head, exported with its training graph."""
    root = tmp_path_factory.mktemp("device-training")
    new_key_pair(root / "operator.key")
    key = load_private_key(root / "operator.key")
    base = load_base(tiny_package, len(LABELS), in_memory_quantization=False)
    template = create_template(base.model, get_task("seq-cls"), TemplateSpec(method="ffa-lora", rank=4), list(LABELS))
    rng = np.random.default_rng(1)
    arrays = {n: (v + (rng.normal(scale=0.3, size=v.shape) if n in template.trainable_names else 0)).astype(np.float32)
              for n, v in template.init.items()}
    release_adapter(root / "adapter", base, template, arrays, key, method="ffa-lora")
    request = ExportRequest(root / "adapter", root / "export", tiny_bert_dir, release_key=key.public_key(), data=DATA,
                            max_length=32, limits=TINY_LIMITS)
    manifest = export(request, key, progress=lambda _: None)
    return {"root": root, "key": key, "package": tiny_package, "template": template, "arrays": arrays,
            "manifest": manifest, "export": root / "export"}


@contextmanager
def registry_trusting(folder: Path, key) -> Iterator[tuple[str, Path]]:
    """A real registry process on 127.0.0.1 over TLS that accepts releases signed by
    `key`; yields its address and the CA certificate clients check it with."""
    operators = Keyring(folder / "operators.json")
    operators.enroll("ops", key.public_key())
    operators.save()
    write_tls_files(folder / "tls", ["127.0.0.1"])
    registry = RegistryProcess(folder, folder / "operators.json", folder / "tls").start()
    try:
        yield registry.address, folder / "tls" / "ca.crt"
    finally:
        registry.stop()


def torch_free_environment(folder: Path) -> Path:
    """A device node's environment for tests: a bin/ of `fedpeft`, `flower-supernode` and
    `flwr-clientapp` that run this environment's programs with torch, transformers and peft
    unimportable (tests/torch_blocker). What runs from it proves it needs no PyTorch; the
    slow test in test_device_install.py builds the real light install."""
    import sys

    bin_dir = Path(folder) / "bin"
    bin_dir.mkdir(parents=True, exist_ok=True)
    blocker = Path(__file__).parent / "torch_blocker"
    for program in ("fedpeft", "flower-supernode", "flwr-clientapp"):
        script = bin_dir / program
        script.write_text(f"#!/bin/sh\nexport FEDPEFT_TEST_BLOCK_TORCH=all PYTHONPATH='{blocker}'\n"
                          f"exec '{Path(sys.executable).parent / program}' \"$@\"\n")
        script.chmod(0o755)
    return Path(folder)


@pytest.fixture(scope="session")
def tiny_training_export(tiny_package, tmp_path_factory) -> dict:
    """A run's training export of the tiny BERT's default template (what device clients and
    nodes train and score with), the base and template it was made from, and its key."""
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    from fedpeft.core.adapters.spec import TemplateSpec
    from fedpeft.core.adapters.template import create_template
    from fedpeft.core.training.data import client_data
    from fedpeft.export.exporter import export_training

    base = load_base(tiny_package, num_labels=len(synthetic_data.LABELS))
    template = create_template(base.model, base.task, TemplateSpec(), list(synthetic_data.LABELS))
    key = Ed25519PrivateKey.generate()
    folder = tmp_path_factory.mktemp("training-export") / "export"
    manifest = export_training(tiny_package, template, folder, key, client_data(DATA, 0).train, 32)
    return {"base": base, "template": template, "key": key, "folder": folder, "manifest": manifest}


@pytest.fixture(scope="session")
def tuf_world(tmp_path_factory, tiny_package):
    """For the registry's TUF tests: operator keys (the second one for rotation), TLS, a TUF
    repository's keys and first metadata, and three signed adapter folders of the tiny base."""
    root = tmp_path_factory.mktemp("tuf-world")
    for name in ("operator", "operator-2", "stable-2"):
        new_key_pair(root / f"{name}.key")
    operators = Keyring(root / "operators.json")
    operators.enroll("ops", load_public_key(root / "operator.pub"))
    operators.enroll("ops-2", load_public_key(root / "operator-2.pub"))
    operators.save()
    write_tls_files(root / "tls", ["127.0.0.1"])
    key = load_private_key(root / "operator.key")
    tuf = init_repository(root / "tuf", key)
    base = load_base(tiny_package, num_labels=len(LABELS))
    template = create_template(base.model, get_task("seq-cls"), TemplateSpec("lora", 4, 8), list(LABELS))
    for index in (1, 2, 3):
        arrays = {n: (v + np.float32(index)).astype(np.float32) for n, v in template.init.items()}
        signer = load_private_key(root / ("operator-2.key" if index == 3 else "operator.key"))
        release_adapter(root / f"adapter-{index}", base, template, arrays, signer)
    return {"root": root, "tuf": tuf, "key": key, "base_id": tiny_package.base_id}


def world_key(world: dict, name: str):
    """A private key of `tuf_world`: root-N, a channel's, or operator / operator-2 / stable-2."""
    folder = world["tuf"].offline if (world["tuf"].offline / f"{name}.key").exists() else world["root"]
    return load_private_key(folder / f"{name}.key")
