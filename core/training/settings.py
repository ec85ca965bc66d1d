"""Local training hyper-parameters (`[train]`, sent in every job) and what training and evaluation report.

Torch-free: the device trainer (device/trainer.py) uses both."""

from __future__ import annotations

import math
from dataclasses import dataclass, replace


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
    round_decay: float = 1.0  # round r trains at learning_rate x round_decay^(r-1); 1: the same every round
    rank: int = 0  # a client's LoRA rank when below the template's (core/adapters/rank.py); 0: the template's

    def for_round(self, server_round: int) -> TrainSettings:
        """The settings a client trains with in `server_round` (1-based): the decayed rate."""
        return replace(self, learning_rate=self.learning_rate * self.round_decay ** max(0, server_round - 1))


@dataclass
class TrainResult:
    loss: float
    steps: int
    examples: int


@dataclass
class EvalResult:
    loss: float              # mean cross-entropy: per example (classifier), per predicted token (causal LM)
    accuracy: float          # classifier: of labels; causal LM: next-word top-3 (core/training/next_word.py)
    examples: int            # rows
    top1: float | None = None  # causal LM: next-word top-1

    @property
    def perplexity(self) -> float:
        return math.exp(min(self.loss, 700.0))  # exp overflows a float past ~709
