"""What a client does with the global adapter: train it, evaluate it, personalize it."""

from __future__ import annotations

from dataclasses import replace

import numpy as np

from fedpeft.core.adapters.state import compute_delta, get_adapter_arrays, set_adapter_arrays
from fedpeft.core.training.class_means import class_statistics
from fedpeft.core.training.data import ClientData, TextSplit
from fedpeft.core.training.job import Job
from fedpeft.core.training.loop import EvalResult, TrainResult, evaluate, train

from .runtime import Session


def local_update(session: Session, job: Job, split: TextSplit, global_arrays: dict[str, np.ndarray],
                 seed: int) -> tuple[dict[str, np.ndarray], TrainResult]:
    """Train from the global adapter on `split`; return the delta of the trainable tensors."""
    set_adapter_arrays(session.model, global_arrays)
    result = train(session.model, session.base.task, session.base.tokenizer, split,
                   replace(job.train, seed=seed))
    after = get_adapter_arrays(session.model)
    return compute_delta(after, global_arrays, session.template.trainable_names), result


def evaluate_adapter(session: Session, job: Job, arrays: dict[str, np.ndarray], split) -> EvalResult:
    set_adapter_arrays(session.model, arrays)
    return evaluate(session.model, session.base.task, session.base.tokenizer, split, job.train)


def class_sums(session: Session, job: Job, split: TextSplit) -> dict[str, np.ndarray]:
    """Round zero: per-class sums of the features the template's head sees, and class counts."""
    set_adapter_arrays(session.model, session.template.init)
    return class_statistics(session.model, session.base.task, session.base.tokenizer, split, job.train,
                            len(session.template.labels))


def personalization(session: Session, job: Job, data: ClientData, global_arrays: dict[str, np.ndarray],
                    seed: int) -> dict[str, EvalResult]:
    """Test scores of: the template, the global adapter, the global adapter fine-tuned
    locally, and an adapter trained on this client's data alone."""
    return {
        "initial": evaluate_adapter(session, job, session.template.init, data.test),
        "global": evaluate_adapter(session, job, global_arrays, data.test),
        "personalized": fine_tuned(session, job, data, global_arrays, job.personal_epochs, seed),
        "local_only": fine_tuned(session, job, data, session.template.init, job.local_only_epochs, seed),
    }


def fine_tuned(session: Session, job: Job, data: ClientData, start: dict[str, np.ndarray], epochs: int,
               seed: int) -> EvalResult:
    """Test score of `start` trained on the client's rows for `epochs`; with `job.best_epoch`,
    of the epoch (0: `start` itself) with the lowest validation loss, so a user whose rows
    teach little is never left worse off than where training began."""
    base, model = session.base, session.model
    set_adapter_arrays(model, start)
    if not job.best_epoch:
        train(model, base.task, base.tokenizer, data.train, replace(job.train, epochs=epochs, seed=seed))
        return evaluate(model, base.task, base.tokenizer, data.test, job.train)
    best_loss, best = evaluate(model, base.task, base.tokenizer, data.val, job.train).loss, dict(start)
    for epoch in range(1, epochs + 1):
        train(model, base.task, base.tokenizer, data.train, replace(job.train, epochs=1, seed=seed + epoch))
        loss = evaluate(model, base.task, base.tokenizer, data.val, job.train).loss
        if loss < best_loss:
            best_loss, best = loss, get_adapter_arrays(model)
    return evaluate_adapter(session, job, best, data.test)
