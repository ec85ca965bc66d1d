"""What a device measures for its signed health report (core/trust/device_report.py), with
numpy only: inference latency percentiles, and a drift statistic of its recent inputs.

Drift is the total variation distance between the distribution of labels the release
predicted on the device's reference rows (its held-out rows when the release was
installed) and on its recent inputs: 0 when they match, 1 when they share no label. It
needs only label counts, costs nothing beyond the predictions the device makes anyway, and
says nothing about the inputs themselves.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np


def latency_percentiles(seconds: Sequence[float]) -> tuple[float, float]:
    """(p50, p95) in milliseconds of per-input inference times."""
    if not len(seconds):
        raise ValueError("no latencies measured")
    p50, p95 = np.percentile(np.asarray(seconds, dtype=np.float64) * 1000.0, [50, 95])
    return float(p50), float(p95)


def label_drift(reference: Sequence[int], recent: Sequence[int]) -> float:
    """Total variation distance between two histograms of predicted labels (counts per label)."""
    reference, recent = np.asarray(reference, dtype=np.float64), np.asarray(recent, dtype=np.float64)
    if reference.shape != recent.shape or reference.sum() <= 0 or recent.sum() <= 0 or (reference < 0).any() \
            or (recent < 0).any():
        raise ValueError("two non-empty histograms of non-negative counts over the same labels")
    return float(0.5 * np.abs(reference / reference.sum() - recent / recent.sum()).sum())
