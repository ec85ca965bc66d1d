"""What a device measures for its signed health report (core/trust/device_report.py), with
numpy only: inference latency percentiles, and a drift statistic of its recent inputs.

Drift is the total variation distance between the distribution of labels the release
predicted on the device's reference rows (its held-out rows when the release was
installed) and on its recent inputs: 0 when they match, 1 when they share no label. It
needs only label counts, costs nothing beyond the predictions the device makes anyway, and
says nothing about the inputs themselves.
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from fedpeft.core.errors import ConfigError, IntegrityError
from fedpeft.core.training.data import TextSplit

from .predict import Predictor, SlotRelease

TIMED_INPUTS = 50  # inputs classified one at a time for the latency percentiles


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


@dataclass(frozen=True)
class Measurement:
    load_ok: bool
    latency_ms: tuple[float, float]   # p50, p95
    rows: int
    correct: int
    previous_correct: int
    drift: float | None


def measure(export: Path, operator_key: Ed25519PublicKey, current: Path, previous: Path | None, rows: TextSplit,
            recent: list[str] | None = None) -> Measurement:
    """The installed release (`current`, a verified release folder with an .onnx_adapter) on
    the device's held-out `rows`: did it load, how fast, how many rows it and `previous` got
    right (rows 0 when there is no previous release to compare with, so the registry leaves
    this device out of the validation median instead of counting a delta of 0), and the
    drift of `recent` inputs from the rows' predicted labels."""
    try:
        predictor = Predictor(export, operator_key, "base", SlotRelease(current))
    except (IntegrityError, ConfigError):
        return Measurement(False, (0.0, 0.0), 0, 0, 0, None)
    predicted = [p.label for p in predictor.predict(rows.texts)]
    truth = [predictor.labels[i] for i in rows.labels]
    correct = sum(p == t for p, t in zip(predicted, truth, strict=True))
    seconds = []
    for text in rows.texts[:TIMED_INPUTS]:
        start = time.perf_counter()
        predictor.predict([text])
        seconds.append(time.perf_counter() - start)
    compared = len(rows)  # rows 0: no validation delta (no previous release, or it does not load here)
    previous_correct = 0
    try:
        if previous is None:
            raise ConfigError("no previous release")
        before = Predictor(export, operator_key, "base", SlotRelease(previous)).predict(rows.texts)
        previous_correct = sum(p.label == t for p, t in zip(before, truth, strict=True))
    except (IntegrityError, ConfigError):
        compared, correct = 0, 0
    drift = None
    if recent:
        reference, now = Counter(predicted), Counter(p.label for p in predictor.predict(recent))
        drift = label_drift([reference[label] for label in predictor.labels], [now[label] for label in predictor.labels])
    return Measurement(True, latency_percentiles(seconds), compared, correct, previous_correct, drift)
