"""What a PyTorch client does with the global adapter: train it, evaluate it, personalize it."""

from __future__ import annotations

import numpy as np

from fedpeft.core.adapters.rank import truncated
from fedpeft.core.adapters.state import get_adapter_arrays, set_adapter_arrays
from fedpeft.core.training import personalization
from fedpeft.core.training.class_means import class_statistics
from fedpeft.core.training.data import TextSplit
from fedpeft.core.training.job import Job
from fedpeft.core.training.loop import evaluate, train
from fedpeft.core.training.settings import EvalResult, TrainResult, TrainSettings

from .runtime import Session

Arrays = dict[str, np.ndarray]


class TorchLearner:
    """The loaded base with its adapter, as core/training/personalization.py's `Learner`."""

    def __init__(self, session: Session) -> None:
        self.session = session

    @property
    def trained(self) -> list[str]:
        return list(self.session.template.trainable_names)

    def train(self, arrays: Arrays, split: TextSplit, settings: TrainSettings) -> tuple[Arrays, TrainResult]:
        session = self.session
        set_adapter_arrays(session.model, truncated(arrays, settings.rank))
        result = train(session.model, session.base.task, session.base.tokenizer, split, settings)
        return get_adapter_arrays(session.model), result

    def evaluate(self, arrays: Arrays, split: TextSplit, settings: TrainSettings) -> EvalResult:
        set_adapter_arrays(self.session.model, truncated(arrays, settings.rank))
        return evaluate(self.session.model, self.session.base.task, self.session.base.tokenizer, split, settings)

    def class_sums(self, arrays: Arrays, split: TextSplit, settings: TrainSettings) -> Arrays:
        """Round zero: per-class sums of the features the head sees, and class counts."""
        session = self.session
        set_adapter_arrays(session.model, arrays)
        return class_statistics(session.model, session.base.task, session.base.tokenizer, split, settings,
                                len(session.template.labels))


def local_update(session: Session, job: Job, split: TextSplit, global_arrays: Arrays,
                 seed: int) -> tuple[Arrays, TrainResult]:
    """Train from the global adapter on `split`; the delta of the trainable tensors."""
    return personalization.local_update(TorchLearner(session), job, split, global_arrays, seed)
