"""The centralized reference: the run's adapter template trained on every client's
training rows pooled in one place, with the same epochs of compute, scored on each
client's test split. What federation costs is the gap between it and the global adapter."""

from __future__ import annotations

from dataclasses import replace
from typing import Any

from fedpeft.core.adapters.template import AdapterTemplate
from fedpeft.core.base.model import Base
from fedpeft.core.training.data import client_data, num_partitions, pooled
from fedpeft.core.training.job import Job
from fedpeft.core.training.loop import evaluate, train


def centralized_reference(base: Base, template: AdapterTemplate, job: Job, rounds: int, fraction: float) -> dict[str, Any]:
    """Test accuracy (example-weighted over clients) of the template trained on the pooled
    rows for rounds x local epochs x fraction epochs: each client's rows are seen as often
    as in the federation."""
    clients = [client_data(job.data, partition) for partition in range(num_partitions(job.data))]
    rows, tests = pooled(data.train for data in clients), [data.test for data in clients]
    epochs = max(1, round(rounds * job.train.epochs * fraction))
    model = template.attach(base.model)
    try:
        train(model, base.task, base.tokenizer, rows, replace(job.train, epochs=epochs))
        results = [evaluate(model, base.task, base.tokenizer, test, job.train) for test in tests]
    finally:
        model.unload()  # the base goes back without adapter layers (publish attaches its own)
    examples = sum(r.examples for r in results)
    return {"accuracy": sum(r.accuracy * r.examples for r in results) / max(examples, 1), "epochs": epochs,
            "train_examples": len(rows), "test_examples": examples}
