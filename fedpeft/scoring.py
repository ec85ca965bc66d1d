"""Score a published adapter on fixed clients' test rows, the same for every run compared.

A run's own end-of-run report samples its clients by Flower node id, which differs from
run to run; benchmarks that compare runs score each published adapter here instead, on
the test splits of the same partitions; a simulation with backdoor attackers scores its
adapter on those rows with the trigger added (simulations/attacks.py).
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from fedpeft.core.base.tasks import get_task
from fedpeft.core.config import FederationConfig
from fedpeft.core.training.data import TextSplit, client_data, load_rows
from fedpeft.core.training.loop import evaluate

from .adapter import load_adapter


def pooled_test(config: FederationConfig, partitions: range) -> TextSplit:
    spec = config.data_spec()
    spec = config.data_spec(load_rows(spec)[1])
    pooled = TextSplit()
    for partition in partitions:
        test = client_data(spec, partition).test
        pooled.texts += test.texts
        pooled.labels += test.labels
    return pooled


def accuracy(adapter: Path, key: Path, config: FederationConfig, split: TextSplit,
             transform: Callable[[TextSplit], TextSplit] | None = None) -> float:
    """Accuracy of the published `adapter` folder, verified with the operator's `key` (.pub),
    on `split` (after `transform`, if given)."""
    loaded = load_adapter(adapter, key=key, model=config.model.folder(), quantization=config.model.quantization)
    return evaluate(loaded.model, get_task(config.model.task), loaded.tokenizer, transform(split) if transform else split,
                    config.train_settings()).accuracy
