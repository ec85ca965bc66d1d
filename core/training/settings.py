"""Local training hyper-parameters (`[train]`, sent in every job) and what a training pass reports.

Torch-free: the device trainer (device/trainer.py) uses both."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class TrainSettings:
    epochs: int = 1
    batch_size: int = 16
    learning_rate: float = 1e-2
    max_length: int = 48
    seed: int = 0
    optimizer: str = "adamw"  # or "sgd"; the device trainer runs the same update in numpy
    weight_decay: float = 0.01  # AdamW's (PyTorch's default)
    device: str = "auto"  # PyTorch clients: auto | cpu | cuda (core/training/accelerator.py)


@dataclass
class TrainResult:
    loss: float
    steps: int
    examples: int
