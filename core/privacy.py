"""A client's share of distributed differential privacy, applied before it signs its delta.

With `[privacy] mode = "distributed"` each client clips its delta to L2 norm `clip` and
adds Gaussian noise of standard deviation z x clip / sqrt(n), n the clients the round
asked: the n shares add up to the noise central DP adds on the server (server/privacy.py),
so the server never holds an un-noised sum. numpy only: devices run it without torch.
"""

from __future__ import annotations

import math
from collections.abc import Mapping

import numpy as np


def noise_share(delta: Mapping[str, np.ndarray], clip: float, std: float,
                rng: np.random.Generator) -> dict[str, np.ndarray]:
    """`delta` clipped to norm `clip` (over all its tensors), plus N(0, std^2) per value."""
    norm = math.sqrt(sum(float(np.dot(t.ravel().astype(np.float64), t.ravel())) for t in delta.values()))
    scale = min(1.0, clip / norm) if norm > 0 else 1.0
    return {n: (t * scale + rng.normal(0.0, std, size=t.shape)).astype(np.float32) for n, t in delta.items()}


def share_std(noise_multiplier: float, clip: float, asked: int) -> float:
    """Each of `asked` clients' noise std: together, noise_multiplier x clip on the sum."""
    return noise_multiplier * clip / math.sqrt(max(1, asked))


def noisy_norm_bound(clip: float, std: float, values: int) -> float:
    """The most an honest noised delta's norm can be: clip, plus the noise's length
    (std x sqrt(values), concentrated within a few std) with 10 std to spare."""
    return clip + std * (math.sqrt(values) + 10.0)
