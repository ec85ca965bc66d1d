"""Flower strategies that take adapter deltas instead of full weights.

Clients send `delta = local - global` over the tensors they train. Before Flower's own
aggregation runs, each delta is checked and turned back into `global + delta`, so every
Flower message strategy (FedAvg, FedAdam, FedYogi, FedMedian, FedTrimmedAvg, Krum...)
aggregates it unchanged: for FedAvg the result is `global + weighted mean(delta)`, for
the server optimizers the pseudo-gradient is the mean delta.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from logging import WARNING

import numpy as np
from flwr.app import ArrayRecord, ConfigRecord, Message, MetricRecord
from flwr.serverapp import Grid
from flwr.serverapp.strategy import FedAdam, FedAvg, FedMedian, FedTrimmedAvg, FedYogi, Krum
from flwr.supercore import log

from fedpeft.core.adapter_state import apply_delta
from fedpeft.core.errors import ConfigError
from fedpeft.core.hashing import tensors_id
from fedpeft.core.records import from_record, record_bytes, to_record

STRATEGIES = {
    "fedavg": FedAvg,
    "fedadam": FedAdam,
    "fedyogi": FedYogi,
    "fedmedian": FedMedian,
    "fedtrimmedavg": FedTrimmedAvg,
    "krum": Krum,
}


@dataclass
class RoundTraffic:
    bytes_down: int = 0
    bytes_up: int = 0
    accepted: int = 0
    rejected: dict[str, int] = field(default_factory=dict)


class RejectedDelta(Exception):
    """A reply that must not reach the average; the message names the reason."""

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(f"{reason}: {detail}")
        self.reason = reason


class DeltaStrategyMixin:
    """Put before a Flower strategy class in the bases: `class S(DeltaStrategyMixin, FedAvg)`."""

    on_train: Callable[[int, MetricRecord | None, RoundTraffic], None] | None = None
    on_evaluate: Callable[[int, MetricRecord | None], None] | None = None

    def configure_train(self, server_round: int, arrays: ArrayRecord, config: ConfigRecord,
                        grid: Grid) -> Iterable[Message]:
        self.global_arrays = from_record(arrays)
        self.traffic = RoundTraffic()
        config["parent-id"] = tensors_id(self.global_arrays)
        messages = list(super().configure_train(server_round, arrays, config, grid))
        self.traffic.bytes_down = len(messages) * record_bytes(arrays)
        return messages

    def check_delta(self, server_round: int, msg: Message) -> dict[str, np.ndarray]:
        """The reply's delta if it may be aggregated; raises RejectedDelta otherwise."""
        records = msg.content.array_records
        if len(records) != 1:
            raise RejectedDelta("malformed", f"expected one ArrayRecord, got {len(records)}")
        delta = from_record(next(iter(records.values())))
        for name, value in delta.items():
            expected = self.global_arrays.get(name)
            if expected is None:
                raise RejectedDelta("unexpected-tensor", name)
            if value.shape != expected.shape or value.dtype != expected.dtype:
                raise RejectedDelta("bad-shape", f"{name}: {value.dtype}{value.shape}, expected {expected.dtype}{expected.shape}")
            if not np.all(np.isfinite(value)):
                raise RejectedDelta("non-finite", name)
        return delta

    def aggregate_train(self, server_round: int,
                        replies: Iterable[Message]) -> tuple[ArrayRecord | None, MetricRecord | None]:
        accepted: list[Message] = []
        trained: set[str] = set()
        for msg in replies:
            if msg.has_error():
                accepted.append(msg)  # Flower counts and logs failures itself
                continue
            self.traffic.bytes_up += sum(record_bytes(r) for r in msg.content.array_records.values())
            try:
                delta = self.check_delta(server_round, msg)
            except RejectedDelta as rejection:
                log(WARNING, "round %d: rejected delta from node %d (%s)", server_round,
                    msg.metadata.src_node_id, rejection)
                self.traffic.rejected[rejection.reason] = self.traffic.rejected.get(rejection.reason, 0) + 1
                continue
            trained.update(delta)
            key = next(iter(msg.content.array_records))
            msg.content[key] = to_record(apply_delta(self.global_arrays, delta))
            self.traffic.accepted += 1
            accepted.append(msg)
        arrays, metrics = super().aggregate_train(server_round, accepted)
        if arrays is not None:
            # Tensors no client trains (FFA-LoRA's A) stay bit-identical, free of the
            # rounding that averaging identical copies with float weights brings.
            merged = from_record(arrays)
            arrays = to_record({n: merged[n] if n in trained else self.global_arrays[n] for n in merged})
        if self.on_train is not None:
            self.on_train(server_round, metrics, self.traffic)
        return arrays, metrics

    def aggregate_evaluate(self, server_round: int, replies: Iterable[Message]) -> MetricRecord | None:
        metrics = super().aggregate_evaluate(server_round, replies)
        if self.on_evaluate is not None:
            self.on_evaluate(server_round, metrics)
        return metrics


def build_strategy(name: str, fraction: float, min_clients: int, options: dict | None = None):
    """A delta-taking version of the named Flower strategy."""
    if name not in STRATEGIES:
        raise ConfigError(f"unknown strategy {name!r}; choose one of {sorted(STRATEGIES)}")
    flower_cls = STRATEGIES[name]
    cls = type(f"Delta{flower_cls.__name__}", (DeltaStrategyMixin, flower_cls), {})
    return cls(
        fraction_train=fraction, fraction_evaluate=1.0, min_train_nodes=min_clients,
        min_evaluate_nodes=min_clients, min_available_nodes=min_clients, **(options or {}),
    )
