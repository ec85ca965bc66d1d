"""A causal LM's training targets: the text itself, padding ignored.

Torch-free, so PyTorch clients (core/base/tasks.py) and devices (device/trainer.py)
build the labels of a batch with the same function and train on the same loss.
"""

from __future__ import annotations

import numpy as np

IGNORED = -100  # transformers' (and torch's cross-entropy) ignore index


def next_token_labels(input_ids: np.ndarray, attention_mask: np.ndarray) -> np.ndarray:
    """Labels of a causal LM batch: the input ids, padded positions ignored (the model
    shifts them by one position itself)."""
    return np.where(attention_mask == 0, IGNORED, input_ids).astype(np.int64)
