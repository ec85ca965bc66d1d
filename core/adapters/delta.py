"""Deltas between two adapter states, torch-free: PyTorch clients, devices and the server
compute and apply them the same way."""

from __future__ import annotations

from collections.abc import Iterable, Mapping

import numpy as np

Arrays = dict[str, np.ndarray]


def compute_delta(after: Mapping[str, np.ndarray], before: Mapping[str, np.ndarray], names: Iterable[str]) -> Arrays:
    return {n: (after[n] - before[n]).astype(np.float32) for n in names}


def apply_delta(base: Mapping[str, np.ndarray], delta: Mapping[str, np.ndarray]) -> Arrays:
    """`base` with `delta` added; tensors absent from the delta are unchanged."""
    return {n: (base[n] + delta[n]).astype(np.float32) if n in delta else base[n].copy() for n in base}
