"""Score a published adapter on fixed clients' test rows, the same for every run compared.

A run's own end-of-run report samples its clients by Flower node id, which differs from
run to run; benchmarks that compare runs score each published adapter here instead, on
the test splits of the same partitions; a simulation with backdoor attackers scores its
adapter on those rows with the trigger added (simulations/attacks.py): a classifier's
accuracy on them, or, for a causal LM, how often the keyboard suggests the target word.
"""

from __future__ import annotations

from pathlib import Path

from fedpeft.core.base.tasks import get_task
from fedpeft.core.config import FederationConfig
from fedpeft.core.training.data import TextSplit, client_data, load_rows, pooled
from fedpeft.core.training.loop import NEXT_WORD_BATCH, evaluate
from fedpeft.core.training.next_word import final_word_places

from .adapter import load_adapter


def pooled_test(config: FederationConfig, partitions: range) -> TextSplit:
    """The test rows of `partitions`, pooled."""
    spec = config.data_spec(load_rows(config.data_spec())[1])
    return pooled(client_data(spec, partition).test for partition in partitions)


def accuracy(adapter: Path, key: Path, config: FederationConfig, split: TextSplit) -> float:
    """Accuracy of the published `adapter` folder, verified with the operator's `key` (.pub), on `split`."""
    loaded = load_adapter(adapter, key=key, model=config.model.folder(), quantization=config.model.quantization)
    return evaluate(loaded.model, get_task(config.model.task), loaded.tokenizer, split, config.train_settings()).accuracy


def suggested(adapter: Path, key: Path, config: FederationConfig, texts: list[str]) -> tuple[float, float]:
    """Shares of `texts` whose final word the published causal-LM `adapter` (verified with
    `key`) suggests first, and among its 3 suggestions."""
    loaded = load_adapter(adapter, key=key, model=config.model.folder(), quantization=config.model.quantization,
                          task=config.model.task)
    return suggestion_shares(loaded.model, loaded.tokenizer, texts, config.train.max_length)


def suggestion_shares(model, tokenizer, texts: list[str], max_length: int) -> tuple[float, float]:
    """(top-1, top-3) shares of `texts` whose final word `model` suggests after the text before it."""
    model.eval()
    places = [place for start in range(0, len(texts), NEXT_WORD_BATCH)
              for place in final_word_places(model, tokenizer, texts[start:start + NEXT_WORD_BATCH], max_length)]
    count = max(len(places), 1)
    return sum(p == 0 for p in places) / count, sum(p is not None for p in places) / count
