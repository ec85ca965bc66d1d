"""A device in the federation: a train message answered with the ONNX trainer, no torch.

The device trains from the global adapter the round sent, on its own rows, and returns
the delta of the method's trained tensors; the caller signs it in the same envelope a
PyTorch client uses (core/wire/envelope.py `delta_content`).
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from fedpeft.core.training.data import TextSplit
from fedpeft.core.training.job import Job
from fedpeft.core.training.settings import TrainResult

from .trainer import DeviceTrainer

_TRAINERS: dict[Path, DeviceTrainer] = {}


def trainer(export: Path, operator_key: Ed25519PublicKey) -> DeviceTrainer:
    """The export's trainer, verified and loaded once per process."""
    export = Path(export).resolve()
    if export not in _TRAINERS:
        _TRAINERS[export] = DeviceTrainer(export, operator_key, threads=1)
    return _TRAINERS[export]


def local_update(trainer: DeviceTrainer, job: Job, split: TextSplit, global_arrays: dict[str, np.ndarray],
                 seed: int) -> tuple[dict[str, np.ndarray], TrainResult]:
    """Train from the global adapter; return the delta of the trained tensors."""
    after, result = trainer.train(global_arrays, split, replace(job.train, seed=seed))
    return {name: (after[name] - global_arrays[name]).astype(np.float32) for name in trainer.trained}, result
