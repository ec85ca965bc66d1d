"""Task types: which transformers head a base gets, how a batch is built and scored.

Adding a task (say, reply personalization with a causal LM) means adding one class
here; the federation, adapters and deltas do not change.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar, Protocol

import torch
from transformers import (
    AutoModelForCausalLM,
    AutoModelForSequenceClassification,
    PretrainedConfig,
    PreTrainedModel,
    PreTrainedTokenizerBase,
)

from fedpeft.core.errors import ConfigError
from fedpeft.core.training.targets import IGNORED, next_token_labels


class Task(Protocol):
    name: ClassVar[str]
    peft_task_type: ClassVar[str]
    head_modules: ClassVar[tuple[str, ...]]

    def from_config(self, config: PretrainedConfig, num_labels: int) -> PreTrainedModel: ...

    def from_pretrained(self, folder: str, num_labels: int) -> PreTrainedModel: ...

    def batch(
        self, tokenizer: PreTrainedTokenizerBase, texts: list[str], labels: list[int], max_length: int
    ) -> dict[str, torch.Tensor]: ...

    def score(self, model: torch.nn.Module, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, int, int]:
        """Mean loss, number of correct predictions, number of predictions."""
        ...


@dataclass(frozen=True)
class SequenceClassification:
    """Text classification: the backbone is the base, the new head belongs to the adapter."""

    name: ClassVar[str] = "seq-cls"
    peft_task_type: ClassVar[str] = "SEQ_CLS"
    head_modules: ClassVar[tuple[str, ...]] = ("classifier", "score")

    def from_config(self, config: PretrainedConfig, num_labels: int) -> PreTrainedModel:
        config.num_labels = num_labels
        return AutoModelForSequenceClassification.from_config(config)

    def from_pretrained(self, folder: str, num_labels: int) -> PreTrainedModel:
        return AutoModelForSequenceClassification.from_pretrained(folder, num_labels=num_labels)

    def batch(self, tokenizer, texts, labels, max_length):
        enc = tokenizer(texts, padding=True, truncation=True, max_length=max_length, return_tensors="pt")
        enc["labels"] = torch.tensor(labels, dtype=torch.long)
        return dict(enc)

    def score(self, model, batch):
        out = model(**batch)
        correct = int((out.logits.argmax(-1) == batch["labels"]).sum())
        return out.loss, correct, int(batch["labels"].numel())


@dataclass(frozen=True)
class CausalLanguageModel:
    """Next-word personalization: the whole LM is the base; labels are the text itself."""

    name: ClassVar[str] = "causal-lm"
    peft_task_type: ClassVar[str] = "CAUSAL_LM"
    head_modules: ClassVar[tuple[str, ...]] = ()

    def from_config(self, config: PretrainedConfig, num_labels: int) -> PreTrainedModel:
        return AutoModelForCausalLM.from_config(config)

    def from_pretrained(self, folder: str, num_labels: int) -> PreTrainedModel:
        return AutoModelForCausalLM.from_pretrained(folder)

    def batch(self, tokenizer, texts, labels, max_length):
        if tokenizer.pad_token is None:
            tokenizer.pad_token = tokenizer.eos_token
        enc = tokenizer(texts, padding=True, truncation=True, max_length=max_length, return_tensors="pt")
        enc["labels"] = torch.from_numpy(next_token_labels(enc["input_ids"].numpy(), enc["attention_mask"].numpy()))
        return dict(enc)

    def score(self, model, batch):
        out = model(**batch)
        predicted = out.logits[:, :-1].argmax(-1)
        target = batch["labels"][:, 1:]
        mask = target != IGNORED
        correct = int(((predicted == target) & mask).sum())
        return out.loss, correct, int(mask.sum())


TASKS: dict[str, Any] = {t.name: t for t in (SequenceClassification(), CausalLanguageModel())}


def get_task(name: str) -> Task:
    if name not in TASKS:
        raise ConfigError(f"unknown task {name!r}; choose one of {sorted(TASKS)}")
    return TASKS[name]
