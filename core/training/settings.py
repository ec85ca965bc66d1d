"""Local training hyper-parameters (`[train]`); the server sends them in every job."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class TrainSettings:
    epochs: int = 1
    batch_size: int = 16
    learning_rate: float = 1e-2
    max_length: int = 48
    seed: int = 0
