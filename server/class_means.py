"""Round zero's replies: each client's per-class feature sums and counts, checked and combined.

A reply travels as a delta does (core/wire/envelope.py): signed, bound to this run, round
0, the base, the template and the template's initial adapter, and verified by the same
`DeltaVerifier` (size, signature, binding, layout, payload hash, finiteness). What only
class statistics must satisfy is checked here, each failure a named refusal:
- counts are whole numbers >= 0 that add up to the signed example count ("bad-class-counts");
- no class mean of a reply lies farther from the origin than MAX_MEAN_RATIO x the median
  class-mean norm of all replies ("norm-too-large"): features are bounded for an honest
  client, a scaled reply is not;
- one reply per enrolled key ("duplicate"); each reply's weight is capped as a delta's is
  (`weight_cap`: security.max_weight_ratio x the median count), so one client claiming
  many rows cannot own the head.
A client can still send the means of one class under another's name: that moves the
starting head, which the rounds then train, and weighs no more than its capped rows.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from fedpeft.core.training.class_sums import COUNTS, SUMS
from fedpeft.core.wire.delta_codec import DeltaEncoding
from fedpeft.core.wire.envelope import DeltaBinding

from .verify import RejectedDelta, RoundExpectation, VerifiedDelta, weight_cap

MAX_MEAN_RATIO = 4.0


def expectation(binding: DeltaBinding, classes: int, features: int) -> RoundExpectation:
    """What an honest round-zero reply states and holds: fp32 sums and counts, no metrics."""
    tensors = {COUNTS: ("<f4", (classes,)), SUMS: ("<f4", (classes, features))}
    return RoundExpectation(binding, tensors, DeltaEncoding(), metrics={})


@dataclass(frozen=True)
class ClassStatistics:
    client: str
    sums: np.ndarray    # [classes, features]
    counts: np.ndarray  # [classes]

    def class_means(self) -> np.ndarray:
        """The reply's class means, of the classes it holds rows of."""
        held = self.counts > 0
        return self.sums[held] / self.counts[held, None]


def checked_statistics(verified: VerifiedDelta) -> ClassStatistics:
    """The verified reply's sums and counts; RejectedDelta("bad-class-counts") when the counts
    are not whole, negative, or do not add up to the signed example count."""
    arrays = verified.arrays
    counts = arrays[COUNTS].astype(np.float64)
    if (counts < 0).any() or not np.array_equal(counts, np.round(counts)):
        raise RejectedDelta("bad-class-counts", "counts must be whole numbers >= 0", verified.client)
    if int(counts.sum()) != verified.num_examples:
        raise RejectedDelta("bad-class-counts", f"counts add up to {int(counts.sum())}, the reply signs "
                            f"{verified.num_examples} rows", verified.client)
    return ClassStatistics(verified.client, arrays[SUMS].astype(np.float64), counts)


def combine(replies: Sequence[ClassStatistics], max_weight_ratio: float,
            ) -> tuple[np.ndarray, np.ndarray, list[RejectedDelta]]:
    """The class sums and counts of the replies that pass, each weighed at most the capped
    count; and the refusals (outlying means, a second reply under one key)."""
    refused: list[RejectedDelta] = []
    kept: list[ClassStatistics] = []
    for reply in replies:
        if any(k.client == reply.client for k in kept):
            refused.append(RejectedDelta("duplicate", "a second round-zero reply under one key", reply.client))
        else:
            kept.append(reply)
    norms = [np.linalg.norm(r.class_means(), axis=1) for r in kept]
    median = float(np.median(np.concatenate(norms))) if kept else 0.0
    passing = []
    for reply, norm in zip(kept, norms):
        if median and norm.max() > MAX_MEAN_RATIO * median:
            refused.append(RejectedDelta("norm-too-large", f"a class mean of norm {norm.max():.3g} > {MAX_MEAN_RATIO:g} x "
                                         f"the median {median:.3g}", reply.client))
        else:
            passing.append(reply)
    cap = weight_cap([int(r.counts.sum()) for r in passing], max_weight_ratio)
    sums = np.zeros_like(passing[0].sums) if passing else np.zeros(0)
    counts = np.zeros_like(passing[0].counts) if passing else np.zeros(0)
    for reply in passing:
        weight = min(1.0, cap / reply.counts.sum())
        sums, counts = sums + weight * reply.sums, counts + weight * reply.counts
    return sums, counts, refused
