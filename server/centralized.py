"""The centralized reference: the run's adapter template trained on every client's
training rows pooled in one place, with the same epochs of compute, scored on each
client's test split. What federation costs is the gap between it and the global adapter."""

from __future__ import annotations

from dataclasses import replace
from typing import Any

from fedpeft.core.adapters.state import set_adapter_arrays
from fedpeft.core.adapters.template import AdapterTemplate
from fedpeft.core.base.model import Base
from fedpeft.core.training.class_means import class_statistics, head_from_means, head_names, with_head
from fedpeft.core.training.class_sums import COUNTS, SUMS
from fedpeft.core.training.data import client_data, num_partitions, pooled
from fedpeft.core.training.job import Job
from fedpeft.core.training.loop import evaluate, train


def decayed_rounds(rounds: int, epochs: float) -> list[tuple[int, int]]:
    """(round, pooled epochs) as the federation's rounds give them, `epochs` a round and at
    least one in all: with train.round_decay below 1 the reference trains one call per
    round at that round's rate (AdamW restarting each round, as a client's does)."""
    total = max(1, round(rounds * epochs))
    marks = [min(total, round(r * epochs)) for r in range(rounds + 1)]
    marks[-1] = total
    return [(r, marks[r] - marks[r - 1]) for r in range(1, rounds + 1) if marks[r] > marks[r - 1]]


def centralized_reference(base: Base, template: AdapterTemplate, job: Job, rounds: int, fraction: float,
                          class_means_head: bool = False) -> dict[str, Any]:
    """Test accuracy (example-weighted over clients) of the template trained on the pooled
    rows for rounds x local epochs x fraction epochs: each client's rows are seen as often
    as in the federation. With `class_means_head` it starts, as the federation does, from
    the head of the pooled rows' class means."""
    clients = [client_data(job.data, partition) for partition in range(num_partitions(job.data))]
    rows, tests = pooled(data.train for data in clients), [data.test for data in clients]
    epochs = max(1, round(rounds * job.train.epochs * fraction))
    model = template.attach(base.model)
    try:
        if class_means_head:
            stats = class_statistics(model, base.task, base.tokenizer, rows, job.train, len(template.labels))
            head = head_from_means(stats[SUMS], stats[COUNTS])
            set_adapter_arrays(model, with_head(template.init, head_names(template.init, base.task), *head))
        if job.train.round_decay == 1:
            train(model, base.task, base.tokenizer, rows, replace(job.train, epochs=epochs))
        else:
            for server_round, round_epochs in decayed_rounds(rounds, job.train.epochs * fraction):
                settings = job.train.for_round(server_round)
                train(model, base.task, base.tokenizer, rows,
                      replace(settings, epochs=round_epochs, seed=settings.seed + server_round))
        results = [evaluate(model, base.task, base.tokenizer, test, job.train) for test in tests]
    finally:
        model.unload()  # the base goes back without adapter layers (publish attaches its own)
    examples = max(sum(r.examples for r in results), 1)

    def weighted(values: list[float]) -> float:  # over clients, as the personalization table's means
        return sum(v * r.examples for v, r in zip(values, results)) / examples

    reference = {"accuracy": weighted([r.accuracy for r in results]), "epochs": epochs,
                 "train_examples": len(rows), "test_examples": examples}
    if base.task.name == "causal-lm":  # the next-word figures too, named as the arms' are
        reference |= {"top1": weighted([r.top1 for r in results]), "top3": reference["accuracy"],
                      "perplexity": weighted([r.perplexity for r in results])}
    return reference
