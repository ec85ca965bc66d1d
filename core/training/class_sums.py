"""Round zero's statistics, torch-free: per-class sums of head features and per-class counts.

PyTorch clients (core/training/class_means.py, a forward hook) and device clients (the
export's evaluation graph, device/trainer.py) add their rows' features here, so both send
the same two tensors in the same form.
"""

from __future__ import annotations

import numpy as np

SUMS, COUNTS = "class-sums", "class-counts"  # the tensors a client sends, sums [classes, features], counts [classes]


class ClassSums:
    """Running per-class sums (float64 while adding) and counts of features."""

    def __init__(self, num_classes: int) -> None:
        self.num_classes = num_classes
        self.sums: np.ndarray | None = None
        self.counts = np.zeros(num_classes, np.float64)

    def add(self, features: np.ndarray, labels: list[int]) -> None:
        if self.sums is None:
            self.sums = np.zeros((self.num_classes, features.shape[-1]), np.float64)
        np.add.at(self.sums, labels, features.astype(np.float64))
        np.add.at(self.counts, labels, 1.0)

    def arrays(self, features: int) -> dict[str, np.ndarray]:
        """The two tensors as a client signs them (`features`: the width when no row was added)."""
        sums = self.sums if self.sums is not None else np.zeros((self.num_classes, features), np.float64)
        return {SUMS: sums.astype(np.float32), COUNTS: self.counts.astype(np.float32)}
