"""Client-level differential privacy of the global adapter (DP-FedAvg, McMahan et al. 2018).

With `[privacy] mode = "central"` the server clips each accepted delta to L2 norm
`clip`, sums the clipped deltas with equal weight, adds Gaussian noise of standard
deviation `noise_multiplier x clip` to the sum and divides by the number of clients the
round asked (fixed before any reply, so who answers does not change it). One client's
whole contribution then moves the average by at most clip / n, and the noise hides it.
Opacus's RDP accountant turns the noise multiplier, each round's sampling rate and the
rounds into epsilon at `delta` (sampling is treated as Poisson at that rate, as DP-FedAvg
analyses do; Flower samples a fixed number uniformly).

Written here, not with Flower's DifferentialPrivacyServerSide* wrappers: they clip the
replies' arrays before the wrapped strategy sees them, which here would mean changing
signed payloads before they are verified; clipping verified deltas keeps one path.
Trust: clients trust the server to add the noise (central DP); the published adapter
and every model derived from it are then (epsilon, delta)-DP per client.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
from opacus.accountants import RDPAccountant

from fedpeft.core.config import PrivacySection
from fedpeft.core.errors import ConfigError


def epsilon(noise_multiplier: float, sample_rates: list[float], delta: float) -> float:
    """Epsilon at `delta` after one round per sampling rate (0 before any round; infinite without noise)."""
    if not sample_rates:
        return 0.0
    if noise_multiplier <= 0:
        return float("inf")
    accountant = RDPAccountant()
    for rate in sample_rates:
        accountant.step(noise_multiplier=noise_multiplier, sample_rate=rate)
    return float(accountant.get_epsilon(delta))


@dataclass
class PrivacyLedger:
    """The rounds' sampling rates so far and the epsilon they spend (rebuilt from a checkpoint's rows)."""

    settings: PrivacySection
    sample_rates: list[float] = field(default_factory=list)

    @property
    def epsilon(self) -> float:
        return epsilon(self.settings.noise_multiplier, self.sample_rates, self.settings.delta)

    def spend(self, sample_rate: float) -> float:
        self.sample_rates.append(sample_rate)
        return self.epsilon

    def check_budget(self, rounds_left: int, sample_rate: float) -> float:
        """The epsilon the whole run would spend; a ConfigError before any round if it
        exceeds `target_epsilon`: nothing over budget is ever trained or published."""
        planned = epsilon(self.settings.noise_multiplier, self.sample_rates + [sample_rate] * rounds_left,
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


def noisy_mean(flats: list[np.ndarray], norms: list[float], asked: int, settings: PrivacySection,
               rng: np.random.Generator) -> np.ndarray:
    """Clipped deltas summed with equal weight, Gaussian noise added, divided by the clients asked."""
    total = np.zeros(flats[0].size if flats else 0, np.float64)
    for flat, norm in zip(flats, norms):
        total += flat * (min(1.0, settings.clip / norm) if norm > 0 else 1.0)
    total += rng.normal(0.0, settings.noise_multiplier * settings.clip, size=total.size)
    return total / asked
