"""Client-level differential privacy of the global adapter (DP-FedAvg, McMahan et al. 2018).

With `[privacy] mode = "central"` the server clips each accepted delta to L2 norm
`clip`, sums the clipped deltas with equal weight, adds Gaussian noise of standard
deviation `noise_multiplier x clip` to the sum and divides by the number of clients the
round asked (fixed before any reply, so who answers does not change it). One client's
whole contribution then moves the average by at most clip / n, and the noise hides it.
With `mode = "distributed"` each of the n asked clients clips and adds noise of std
z x clip / sqrt(n) before signing (core/privacy.py); the server only sums and divides.
When k < n deltas arrive, the sum carries k shares: the round is accounted at the
multiplier z x sqrt(k / n), so dropouts and rejections cost epsilon, visibly.
Opacus's RDP accountant turns each round's multiplier and sampling rate into epsilon at
`delta` (sampling is treated as Poisson at that rate, as DP-FedAvg analyses do; Flower
samples a fixed number uniformly).

Written here, not with Flower's DifferentialPrivacyServerSide* wrappers: they clip the
replies' arrays before the wrapped strategy sees them, which here would mean changing
signed payloads before they are verified; clipping verified deltas keeps one path.
Trust. Central: clients trust the server to clip and add the noise; the published
adapter and everything derived from it are (epsilon, delta)-DP per client, but the server
sees each exact delta. Distributed: clients trust each other to add their share (a client
that skips it weakens everyone's guarantee), the server sees each delta with only its
share of noise (z / sqrt(n): weak on its own; secure aggregation would hide single deltas
but cannot compose with per-delta signature and norm checks), and the server cannot clip
what arrives noised, so robust defences and clipping do not apply: poisoning is bounded
only by the noise-aware norm bound.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
from opacus.accountants import RDPAccountant

from fedpeft.core.config import PrivacySection
from fedpeft.core.errors import ConfigError


def epsilon(steps: list[tuple[float, float]], delta: float) -> float:
    """Epsilon at `delta` after one round per (noise multiplier, sampling rate) step (0
    before any round; infinite if a round had no noise)."""
    if not steps:
        return 0.0
    if any(noise <= 0 for noise, _ in steps):
        return float("inf")
    accountant = RDPAccountant()
    for noise, rate in steps:
        accountant.step(noise_multiplier=noise, sample_rate=rate)
    return float(accountant.get_epsilon(delta))


@dataclass
class PrivacyLedger:
    """The rounds' (noise multiplier, sampling rate) so far and the epsilon they spend
    (rebuilt from a checkpoint's rows)."""

    settings: PrivacySection
    steps: list[tuple[float, float]] = field(default_factory=list)

    @property
    def epsilon(self) -> float:
        return epsilon(self.steps, self.settings.delta)

    def round_multiplier(self, accepted: int, asked: int) -> float:
        """The round's noise on the sum in units of clip: central, the configured one;
        distributed, only the shares of the max(1, accepted) deltas that arrived."""
        z = self.settings.noise_multiplier
        return z if self.settings.mode == "central" else z * math.sqrt(max(1, accepted) / max(1, asked))

    def spend(self, noise_multiplier: float, sample_rate: float) -> float:
        self.steps.append((noise_multiplier, sample_rate))
        return self.epsilon

    def check_budget(self, rounds_left: int, sample_rate: float) -> float:
        """The epsilon the whole run would spend; a ConfigError before any round if it
        exceeds `target_epsilon`: nothing over budget is ever trained or published."""
        planned = epsilon(self.steps + [(self.settings.noise_multiplier, sample_rate)] * rounds_left,
                          self.settings.delta)
        target = self.settings.target_epsilon
        if target and planned > target:
            raise ConfigError(f"this run would spend epsilon {planned:.3g} at delta {self.settings.delta:g}, over "
                              f"privacy.target_epsilon {target:g}: raise privacy.noise_multiplier, or sample fewer "
                              f"clients a round, or run fewer rounds")
        return planned


def report(settings: PrivacySection, rows: list[dict[str, Any]]) -> dict[str, Any]:
    """What summary.json, the release and the model card say about privacy."""
    if settings.mode == "off":
        return {"mode": "off"}
    spent = [r["epsilon"] for r in rows if r.get("epsilon") is not None]
    return {**asdict(settings), "rounds": len(spent), "epsilon": spent[-1] if spent else 0.0}


def plain_mean(flats: list[np.ndarray], asked: int) -> np.ndarray:
    """Distributed DP: the deltas came clipped and noised; summed with equal weight, divided by the clients asked."""
    total = np.zeros(flats[0].size if flats else 0, np.float64)
    for flat in flats:
        total += flat
    return total / asked


def noisy_mean(flats: list[np.ndarray], norms: list[float], asked: int, settings: PrivacySection,
               rng: np.random.Generator) -> np.ndarray:
    """Clipped deltas summed with equal weight, Gaussian noise added, divided by the clients asked."""
    total = np.zeros(flats[0].size if flats else 0, np.float64)
    for flat, norm in zip(flats, norms):  # a numpy float64 factor: the product is float64 too
        total += flat * np.float64(min(1.0, settings.clip / norm) if norm > 0 else 1.0)
    total += rng.normal(0.0, settings.noise_multiplier * settings.clip, size=total.size)
    return total / asked
