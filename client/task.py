"""What a client does with the global adapter: train it, evaluate it, personalize it."""

from __future__ import annotations

from dataclasses import replace

import numpy as np

from fedpeft.core.adapters.state import compute_delta, get_adapter_arrays, set_adapter_arrays
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


def personalization(session: Session, job: Job, data: ClientData, global_arrays: dict[str, np.ndarray],
                    seed: int) -> dict[str, float]:
    """Test accuracy of: the template, the global adapter, the global adapter fine-tuned
    locally, and an adapter trained on this client's data alone."""
    base, model = session.base, session.model
    scores = {
        "initial": evaluate_adapter(session, job, session.template.init, data.test).accuracy,
        "global": evaluate_adapter(session, job, global_arrays, data.test).accuracy,
    }
    set_adapter_arrays(model, global_arrays)
    train(model, base.task, base.tokenizer, data.train, replace(job.train, epochs=job.personal_epochs, seed=seed))
    scores["personalized"] = evaluate(model, base.task, base.tokenizer, data.test, job.train).accuracy
    set_adapter_arrays(model, session.template.init)
    train(model, base.task, base.tokenizer, data.train, replace(job.train, epochs=job.local_only_epochs, seed=seed))
    scores["local_only"] = evaluate(model, base.task, base.tokenizer, data.test, job.train).accuracy
    return scores
