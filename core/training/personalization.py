"""A client's work on the global adapter, written once for every kind of client.

A PyTorch client (client/task.py) and a device (device/trainer.py, ONNX Runtime and numpy)
both train and score adapters given as PEFT-keyed arrays; the delta a round sends back,
the personalization report's four scores and its best-epoch rule are the same whichever
does the work, so they live here, torch-free.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Protocol

import numpy as np

from .data import ClientData, TextSplit
from .job import Job
from fedpeft.core.adapters.delta import compute_delta
from fedpeft.core.adapters.rank import restored_outside

from .settings import EvalResult, TrainResult, TrainSettings

Arrays = dict[str, np.ndarray]


class Learner(Protocol):
    """What trains and scores an adapter: `train` returns a trained copy of `arrays`;
    `trained` names the tensors training changes (what a delta carries)."""

    @property
    def trained(self) -> list[str]: ...

    def train(self, arrays: Arrays, split: TextSplit, settings: TrainSettings) -> tuple[Arrays, TrainResult]: ...

    def evaluate(self, arrays: Arrays, split: TextSplit, settings: TrainSettings) -> EvalResult: ...

    def class_sums(self, arrays: Arrays, split: TextSplit, settings: TrainSettings) -> Arrays:
        """Round zero's per-class feature sums and counts (core/training/class_sums.py)."""


def local_update(learner: Learner, job: Job, split: TextSplit, global_arrays: Arrays,
                 seed: int) -> tuple[Arrays, TrainResult]:
    """Train from the global adapter on `split`; the delta of the trained tensors, and the pass's
    report. A client below the template's rank (`job.train.rank`) sends zero where it did not train."""
    after, result = learner.train(global_arrays, split, replace(job.train, seed=seed))
    after = restored_outside(after, global_arrays, job.train.rank)
    return compute_delta(after, global_arrays, learner.trained), result


def personalization(learner: Learner, job: Job, data: ClientData, global_arrays: Arrays, template: Arrays,
                    seed: int) -> dict[str, EvalResult]:
    """Test scores of: the template, the global adapter, the global adapter fine-tuned
    locally, and an adapter trained on this client's data alone."""
    return {
        "initial": learner.evaluate(template, data.test, job.train),
        "global": learner.evaluate(global_arrays, data.test, job.train),
        "personalized": fine_tuned(learner, job, data, global_arrays, job.personal_epochs, seed),
        "local_only": fine_tuned(learner, job, data, template, job.local_only_epochs, seed),
    }


def fine_tuned(learner: Learner, job: Job, data: ClientData, start: Arrays, epochs: int, seed: int) -> EvalResult:
    """Test score of `start` trained on the client's rows for `epochs`; with `job.best_epoch`,
    of the epoch (0: `start` itself) with the lowest validation loss, so a user whose rows
    teach little is never left worse off than where training began."""
    if not job.best_epoch:
        trained, _ = learner.train(start, data.train, replace(job.train, epochs=epochs, seed=seed))
        return learner.evaluate(trained, data.test, job.train)
    best_loss, best, current = learner.evaluate(start, data.val, job.train).loss, start, start
    for epoch in range(1, epochs + 1):
        current, _ = learner.train(current, data.train, replace(job.train, epochs=1, seed=seed + epoch))
        loss = learner.evaluate(current, data.val, job.train).loss
        if loss < best_loss:
            best_loss, best = loss, current
    return learner.evaluate(best, data.test, job.train)
