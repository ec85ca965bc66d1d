"""Flower strategies that take adapter deltas instead of full weights.

Clients get only the tensors they train (frozen ones, such as FFA-LoRA's A, came once
with the template) and send `delta = local - global` over them, encoded in one payload
with a signed envelope. Each reply is verified first (server/verify.py). Plain FedAvg is
then computed as `global + example-weighted mean(delta)` in one pass; for every other Flower
message strategy (FedAdam, FedYogi, FedMedian, FedTrimmedAvg, Krum...) each delta is
turned back into `global + delta` and the strategy aggregates it unchanged (for the
server optimizers the pseudo-gradient is then the mean delta). Either way the sums run
in float64, and the new global adapter is checked (`global_problem`) before Flower
takes it: one that is not finite or exceeds MAX_GLOBAL_VALUE is refused by name and the
round keeps the global adapter it started from.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from logging import WARNING
from typing import Any

import numpy as np
from flwr.app import ArrayRecord, ConfigRecord, Message, MetricRecord, RecordDict
from flwr.serverapp import Grid
from flwr.serverapp import strategy as flower_strategies
from flwr.serverapp.strategy import FedAvg
from flwr.supercore import log

from fedpeft.core.adapters.rank import full_rank, trained_positions
from fedpeft.core.adapters.state import Arrays
from fedpeft.core.choices import STRATEGIES, check_choice
from fedpeft.core.config import PrivacySection
from fedpeft.core.errors import ConfigError
from fedpeft.core.privacy import noisy_norm_bound, share_std
from fedpeft.core.trust.hashing import tensors_id
from fedpeft.core.wire.delta_codec import DeltaEncoding
from fedpeft.core.wire.envelope import DeltaBinding
from fedpeft.core.wire.records import from_record, record_bytes, to_record

from .fltrust import RootUpdate, trust_mean
from .privacy import PrivacyLedger, noisy_mean, plain_mean
from .replies import evaluate_reply
from .verify import (
    DeltaVerifier,
    RejectedDelta,
    RoundExpectation,
    VerifiedDelta,
    as_rejection,
    checked_reports,
    content_bytes,
    weight_cap,
)

# What Flower's server optimizers carry between rounds: FedOpt's moments (dicts of
# tensors) and FedAvgM's momentum (a list, in the trained tensors' order).
SERVER_OPTIMIZER_STATE = ("m_t", "v_t", "momentum_vector")
# What Flower's strategies reassign while aggregating (never change in place): FedAvgM
# steps from `current_arrays`, its last aggregate. Put back when an aggregate is refused.
AGGREGATION_STATE = (*SERVER_OPTIMIZER_STATE, "current_arrays")
# The largest value a global adapter may hold: float16's maximum, so that a half-precision
# load or export stays finite. Honest adapters stay orders of magnitude below it; an
# average that reaches it came from deltas no bound stopped (security.max_update_norm = 0).
MAX_GLOBAL_VALUE = float(np.finfo(np.float16).max)


def global_problem(arrays: Arrays) -> str | None:
    """Why `arrays` must not become the global adapter (None: they may), naming the first
    tensor that is not finite or holds a value beyond MAX_GLOBAL_VALUE."""
    for name, value in arrays.items():
        peak = float(np.abs(value).max(initial=0.0))  # NaN or infinite if any value is: one pass
        if not math.isfinite(peak):
            return f"non-finite: {name}"
        if peak > MAX_GLOBAL_VALUE:
            return f"out-of-bound: {name} holds {peak:.3g} (bound {MAX_GLOBAL_VALUE:g})"
    return None


@dataclass
class RoundTraffic:
    start_adapter: str = ""  # hash of the global adapter the round's clients train from
    bytes_down: int = 0
    bytes_up: int = 0
    replies: int = 0
    failures: int = 0
    accepted: int = 0
    rejected: dict[str, int] = field(default_factory=dict)
    rejections: list[dict] = field(default_factory=list)  # {"client", "reason", "detail"}
    unchanged: bool = False  # too few accepted deltas: the global adapter stayed as it was
    max_norm: float = 0.0    # largest L2 norm among accepted deltas
    capped: int = 0          # accepted deltas whose weight was cut to the round's cap
    asked: int = 0           # clients the round sent work to
    sample_rate: float = 0.0  # asked / connected nodes: what the privacy accountant is told
    noise_multiplier: float | None = None  # the noise on this round's sum, in units of clip (privacy on)
    epsilon: float | None = None  # the run's epsilon after this round (privacy on)
    distrusted: int | None = None  # fltrust: accepted deltas given no weight (pointing away from the root's)
    distrusted_clients: list[str] | None = None  # fltrust: who they came from (enrolled names)
    refused_global: str | None = None  # why the aggregate was not taken as the new global (global_problem)
    bytes_up_by_rank: dict[int, list[int]] = field(default_factory=dict)  # LoRA rank (0: full) -> accepted replies' sizes

    def reject(self, client: str, rejection: RejectedDelta) -> None:
        self.rejected[rejection.reason] = self.rejected.get(rejection.reason, 0) + 1
        self.rejections.append({"client": client, "reason": rejection.reason, "detail": rejection.detail})


@dataclass(frozen=True)
class StrategyHooks:
    """What the run does around the strategy's rounds (bring nodes up, log, checkpoint)."""

    on_configure: Callable[[Grid], None] | None = None  # before each round: bring newly joined nodes up to date
    on_train: Callable[[int, MetricRecord | None, RoundTraffic], None] | None = None
    on_evaluate: Callable[[int, MetricRecord | None, dict[str, int]], None] | None = None


@dataclass(frozen=True)
class StrategySettings:
    """The run-wide choices a delta strategy is built with (the config's [federation],
    [security] and [privacy] as the server applies them), one value rather than a dozen
    arguments threaded through every caller."""

    name: str = "fedavg"  # core/choices.py STRATEGIES
    fraction: float = 1.0  # of the connected nodes sampled to train and to evaluate
    min_clients: int = 1  # Flower's minimum of nodes sampled and available
    min_accepted: int = 1  # accepted deltas a round needs to change the global adapter
    max_weight_ratio: float = 0.0  # a weight is capped at this times the round's median count (0: no cap)
    options: Mapping[str, Any] = field(default_factory=dict)  # the Flower strategy's own keyword arguments
    encoding: DeltaEncoding = DeltaEncoding()  # how deltas come up
    privacy: PrivacySection = PrivacySection()
    round_offset: int = 0  # rounds a resumed run completed before: Flower counts from 1, deltas bind the run's round


class DeltaStrategyMixin:
    """Put before a Flower strategy class in the bases: `class S(DeltaStrategyMixin, FedAvg)`.

    `binding` is the run-wide part of what every delta is bound to; `tensors` the trained
    tensors with their dtype and shape; `settings` what the rounds keep to (StrategySettings).
    The remaining keyword arguments are the Flower strategy's.
    """

    streams_mean: bool = False  # plain FedAvg: summed in one pass over flat deltas, see _running_mean

    def __init__(self, *, settings: StrategySettings, binding: DeltaBinding,
                 tensors: Mapping[str, tuple[str, tuple[int, ...]]], verifier: DeltaVerifier,
                 hooks: StrategyHooks = StrategyHooks(), root_update: RootUpdate | None = None,
                 **flower_options) -> None:
        super().__init__(**flower_options)
        self.root_update = root_update  # fltrust: deltas weighed by agreement with the server's own
        self.settings, self.binding, self.tensors, self.verifier = settings, binding, dict(tensors), verifier
        self.hooks = hooks
        self.ledger = PrivacyLedger(settings.privacy) if settings.privacy.mode != "off" else None
        self.noise = np.random.default_rng()  # OS entropy: noise nobody (a client) can predict
        self.signers: dict[int, str] = {}  # node id -> enrolled name it proved by a verified signature

    def trained_only(self, arrays: ArrayRecord) -> ArrayRecord:
        """What a round sends down: the trained tensors. Frozen ones never change (see
        aggregate_train) and every node has them from the template it installed."""
        return ArrayRecord({n: a for n, a in arrays.items() if n in self.tensors})

    def configure_train(self, server_round: int, arrays: ArrayRecord, config: ConfigRecord,
                        grid: Grid) -> Iterable[Message]:
        server_round += self.settings.round_offset
        if self.hooks.on_configure is not None:
            self.hooks.on_configure(grid)
        self.global_arrays = from_record(arrays)
        self.traffic = RoundTraffic(start_adapter=tensors_id(self.global_arrays))
        binding = self.binding.for_round(server_round, self.traffic.start_adapter)
        self.expectation = RoundExpectation(binding, self.tensors, self.settings.encoding,
                                            optional_metrics=self.rank_metric())
        down = self.trained_only(arrays)
        messages = list(super().configure_train(server_round, down, config, grid))
        if self.ledger is not None and self.ledger.settings.mode == "distributed":
            messages = self._with_noise_shares(messages, binding)
        self.traffic.bytes_down = len(messages) * record_bytes(down)
        self.traffic.asked = len(messages)
        self.traffic.sample_rate = len(messages) / max(1, len(list(grid.get_node_ids())))
        return messages

    def _with_noise_shares(self, messages: list[Message], binding) -> list[Message]:
        """Distributed DP: tell each asked client its delta's clip and noise share; accept
        noised deltas up to clip plus the noise's length (core/privacy.py), or up to
        security.max_update_norm where that is smaller (verify.tightest_bound)."""
        dp = self.ledger.settings
        std = share_std(dp.noise_multiplier, dp.clip, len(messages))
        for msg in messages:
            msg.content["config"] = ConfigRecord({**msg.content.config_records["config"], "dp-clip": dp.clip,
                                                  "dp-noise-std": std})
        self.expectation = RoundExpectation(binding, self.tensors, self.settings.encoding,
                                            max_norm=noisy_norm_bound(dp.clip, std, self.expectation.layout.count))
        return messages

    def rank_metric(self) -> dict[str, tuple[float, float]]:
        """A delta may say it was trained below the template's LoRA rank (core/adapters/rank.py)
        where the round is a plain weighted average, which can average column by column; any
        other aggregation refuses such a delta (bad-metrics) rather than average its zeros in."""
        plain = self.streams_mean and self.ledger is None and self.root_update is None
        rank = full_rank({name: shape for name, (_, shape) in self.tensors.items()})
        return {"rank": (1.0, float(rank - 1))} if plain and rank > 1 else {}

    def configure_evaluate(self, server_round: int, arrays: ArrayRecord, config: ConfigRecord,
                           grid: Grid) -> Iterable[Message]:
        return super().configure_evaluate(server_round, self.trained_only(arrays), config, grid)

    def verified_replies(self, server_round: int, replies: Iterable[Message]) -> Iterator[tuple[Message, VerifiedDelta]]:
        """Replies whose deltas passed every check; the rest are logged and counted."""
        signers: set[str] = set()
        for msg in replies:
            if msg.has_error():
                log(WARNING, "round %d: node %d failed: %s", server_round, msg.metadata.src_node_id, msg.error.reason)
                self.traffic.failures += 1
                continue
            size = content_bytes(msg.content)
            self.traffic.replies += 1
            self.traffic.bytes_up += size
            try:
                delta = self.verifier.verify(msg.content, self.expectation, size)
                if delta.key_id in signers:
                    raise RejectedDelta("duplicate", "a second delta signed by the same key this round", delta.client)
            except Exception as exc:  # any other exception: a check that broke on crafted input must not end the round
                rejection = as_rejection(exc)
                if rejection.client:  # its signature verified: the node holds that enrolled key
                    self.signers[msg.metadata.src_node_id] = rejection.client
                client = rejection.client or f"node {msg.metadata.src_node_id}"
                log(WARNING, "round %d: rejected delta from %s (%s)", server_round, client, rejection)
                self.traffic.reject(client, rejection)
                continue
            signers.add(delta.key_id)
            self.traffic.bytes_up_by_rank.setdefault(int(delta.metrics.get("rank", 0)), []).append(size)
            self.signers[msg.metadata.src_node_id] = delta.client
            self.traffic.max_norm = max(self.traffic.max_norm, delta.norm)
            self.traffic.accepted += 1
            yield msg, delta

    def weighted(self, server_round: int, replies: Iterable[Message]) -> list[tuple[Message, VerifiedDelta, int]]:
        """Accepted deltas with their weights: no client's weight exceeds `max_weight_ratio`
        times the round's median signed count, so an inflated count cannot buy the average.
        The decoded tensors are views into the replies' bytes, which Flower holds for the
        round anyway: keeping them for a second pass costs no copy. They come in order of
        the signer's enrolled name, not of arrival, so the float sums (and the adapter's
        hash) do not depend on which client answered first, nor on a resumed simulation's
        fresh keys."""
        accepted = sorted(self.verified_replies(server_round, replies), key=lambda pair: (pair[1].client, pair[1].key_id))
        cap = weight_cap([d.num_examples for _, d in accepted], self.settings.max_weight_ratio)
        self.traffic.capped = sum(d.num_examples > cap for _, d in accepted)
        return [(msg, delta, min(delta.num_examples, cap)) for msg, delta in accepted]

    def aggregate_train(self, server_round: int,
                        replies: Iterable[Message]) -> tuple[ArrayRecord | None, MetricRecord | None]:
        server_round += self.settings.round_offset
        before = {a: getattr(self, a) for a in AGGREGATION_STATE if hasattr(self, a)}
        if self.streams_mean:
            new_global, metrics = self._running_mean(server_round, replies)
        else:
            new_global, metrics = self._flower_aggregate(server_round, replies)
        arrays = None
        if self.traffic.accepted < self.settings.min_accepted:
            log(WARNING, "round %d: %d of the %d deltas needed were accepted; the global adapter is unchanged",
                server_round, self.traffic.accepted, self.settings.min_accepted)
            self.traffic.unchanged = True
            metrics = None
        elif new_global is not None:
            # Back to each tensor's dtype (the sums ran in float64). Tensors no client trains
            # (FFA-LoRA's A) stay bit-identical, free of the rounding that averaging
            # identical copies with float weights brings.
            with np.errstate(over="ignore"):  # a float32 overflow is an infinity, refused just below
                candidate = {n: new_global[n].astype(self.tensors[n][0]) if n in self.tensors else g
                             for n, g in self.global_arrays.items()}
            problem = global_problem(candidate)
            if problem is None:
                arrays = to_record(candidate)
            else:
                # Refused, not repaired: a user expects a round that went wrong to cost that
                # round, not the run (no exception) and not the published adapter (no NaN
                # checkpointed, evaluated or released). The round keeps the global it started
                # from and says why (metrics.jsonl "refused_global", the progress line).
                log(WARNING, "round %d: the aggregated adapter is refused (%s); the global adapter is unchanged",
                    server_round, problem)
                self.traffic.unchanged, self.traffic.refused_global, metrics = True, problem, None
        if arrays is None:  # whatever kept the global (too few accepted, a refused aggregate), a server
            for attr, value in before.items():  # optimizer forgets the step it took towards the discarded one
                setattr(self, attr, value)
        if self.hooks.on_train is not None:
            self.hooks.on_train(server_round, metrics, self.traffic)
        return arrays, metrics

    def _running_mean(self, server_round: int, replies: Iterable[Message]) -> tuple[Arrays | None, MetricRecord | None]:
        """FedAvg as `global + example-weighted mean(delta)` over the flat decoded deltas.

        Written by hand: Flower's FedAvg decodes every reply again, tensor by tensor; this
        adds each flat delta into one float64 sum, which is what lets a server verify and
        average thousands of deltas a second (bench/verify_throughput.py).
        """
        layout = self.expectation.layout
        accepted = self.weighted(server_round, replies)
        if self.ledger is not None:  # a round spends its budget whether or not it changes the adapter
            self.traffic.noise_multiplier = self.ledger.round_multiplier(len(accepted), self.traffic.asked)
            self.traffic.epsilon = self.ledger.spend(self.traffic.noise_multiplier, self.traffic.sample_rate)
        total = sum(count for _, _, count in accepted)
        if not total:
            return None, None
        metric_sums: dict[str, float] = {}  # example-weighted, as Flower's FedAvg weights metrics
        for _, delta, count in accepted:
            for key, value in delta.metrics.items():
                if key != "rank":  # a client's own size, not a quantity to average (bytes_up_by_rank counts it)
                    metric_sums[key] = metric_sums.get(key, 0.0) + count * value
        metrics = MetricRecord({**{k: float(v / total) for k, v in metric_sums.items()}, "num-examples": total})
        if self.ledger is not None and self.ledger.settings.mode == "distributed":  # clipped and noised on the devices
            step = plain_mean([d.flat for _, d, _ in accepted], self.traffic.asked)
        elif self.ledger is not None:  # clipped, equal weights, noise, over the clients asked
            step = noisy_mean([d.flat for _, d, _ in accepted], [d.norm for _, d, _ in accepted], self.traffic.asked,
                              self.ledger.settings, self.noise)
        elif self.root_update is not None:
            root = layout.flatten(self.root_update(self.global_arrays, server_round))
            step, trusts = trust_mean([d.flat for _, d, _ in accepted], root)
            self.traffic.distrusted = sum(t == 0 for t in trusts)
            self.traffic.distrusted_clients = [d.client for (_, d, _), t in zip(accepted, trusts) if t == 0]
        elif any("rank" in delta.metrics for _, delta, _ in accepted):
            step = self._column_mean(accepted)
        else:
            sums = np.zeros(layout.count, np.float64)  # float64 sums: no drift over many deltas
            scaled = np.empty(layout.count, np.float64)
            for _, delta, count in accepted:  # multiplied in float64 too: a float32 product can overflow
                sums += np.multiply(delta.flat, count, out=scaled, dtype=np.float64)
            step = sums / total
        return layout.split(layout.flatten(self.global_arrays) + step), metrics  # float64; aggregate_train casts back

    def _column_mean(self, accepted: list[tuple[Message, VerifiedDelta, int]]) -> np.ndarray:
        """Clients of different LoRA ranks: each position's weighted mean over the clients
        whose rank trains it (FFA-LoRA's B column j over the clients of rank above j; the
        head and every other tensor over all). What a client sends outside its rank is
        ignored, not averaged in."""
        layout = self.expectation.layout
        shapes = {name: shape for name, (_, shape) in self.tensors.items()}
        sums = np.zeros(layout.count, np.float64)
        weights = np.zeros(layout.count, np.float64)
        masks: dict[int, np.ndarray] = {}
        for _, delta, count in accepted:
            rank = int(delta.metrics.get("rank", 0))
            if rank not in masks:
                masks[rank] = (trained_positions(shapes, list(layout.names), rank) if rank
                               else np.ones(layout.count, bool))
            sums += np.where(masks[rank], delta.flat.astype(np.float64) * count, 0.0)
            weights += masks[rank] * float(count)
        return np.divide(sums, weights, out=np.zeros_like(sums), where=weights > 0)

    def _flower_aggregate(self, server_round: int, replies: Iterable[Message]) -> tuple[Arrays | None, MetricRecord | None]:
        """Any other Flower strategy, given `global + delta` over the trained tensors (what
        configure_train sent, in its order: FedAvgM and FedOpt subtract the two tensor by
        tensor), weighted by the capped signed example count. The sums are in float64:
        Flower's weighted sum multiplies in the arrays' dtype, and these are float64."""
        trained = {n: a.astype(np.float64) for n, a in self.global_arrays.items() if n in self.tensors}
        accepted = []
        for msg, delta, count in self.weighted(server_round, replies):
            msg.content = RecordDict({"arrays": to_record({n: g + delta.arrays[n] for n, g in trained.items()}),
                                      "metrics": MetricRecord({**delta.metrics, "num-examples": count})})
            accepted.append(msg)
        if not accepted:
            return None, None
        arrays, metrics = super().aggregate_train(server_round, accepted)
        return (from_record(arrays) if arrays is not None else None), metrics

    def aggregate_evaluate(self, server_round: int, replies: Iterable[Message]) -> MetricRecord | None:
        """Flower's evaluation average over the reports server/verify.py passes, weights capped as in training."""
        server_round += self.settings.round_offset
        max_examples = self.verifier.policy.max_examples
        reports, refused = checked_reports(replies, lambda content: evaluate_reply(content, max_examples),
                                           self.signers, self.settings.max_weight_ratio)
        rejected: dict[str, int] = {}
        for node, bad in refused:
            log(WARNING, "round %d: dropped evaluate reply from node %d (%s)", server_round, node, bad)
            rejected[bad.reason] = rejected.get(bad.reason, 0) + 1
        for r in reports:
            r.reply.content = RecordDict({"metrics": MetricRecord({**r.metrics, "num-examples": r.examples})})
        aggregated = super().aggregate_evaluate(server_round, [r.reply for r in reports]) if reports else None
        if self.hooks.on_evaluate is not None:
            self.hooks.on_evaluate(server_round, aggregated, rejected)
        return aggregated

    def state_arrays(self) -> dict[str, Arrays]:
        """The tensors a Flower server optimizer carries between rounds (FedAdam's m_t, v_t,
        FedAvgM's momentum); a list is kept under its positions."""
        state = {}
        for attr in SERVER_OPTIMIZER_STATE:
            value = getattr(self, attr, None)
            if value:
                state[attr] = {str(i): a for i, a in enumerate(value)} if isinstance(value, list) else dict(value)
        return state

    def restore_state(self, state: Mapping[str, Arrays]) -> None:
        for attr, arrays in state.items():
            if attr not in SERVER_OPTIMIZER_STATE:
                raise ConfigError(f"checkpointed strategy state {attr!r} is not one fedpeft restores")
            listed = isinstance(getattr(self, attr, None), list) or attr == "momentum_vector"
            setattr(self, attr, [arrays[str(i)] for i in range(len(arrays))] if listed else dict(arrays))


def build_strategy(settings: StrategySettings, binding: DeltaBinding,
                   tensors: Mapping[str, tuple[str, tuple[int, ...]]], verifier: DeltaVerifier,
                   hooks: StrategyHooks = StrategyHooks(), root_update: RootUpdate | None = None):
    """A delta-taking, delta-verifying version of the Flower strategy `settings.name` names
    ("fltrust": FedAvg's rounds with server/fltrust.py's weighting, which needs `root_update`)."""
    name, fraction, min_clients = settings.name, settings.fraction, settings.min_clients
    flower_cls = getattr(flower_strategies, STRATEGIES[check_choice("strategy", name, STRATEGIES)])
    if (name == "fltrust") != (root_update is not None):
        raise ConfigError("a root update is what strategy fltrust, and only it, weighs deltas against")
    cls = type(f"Delta{flower_cls.__name__}", (DeltaStrategyMixin, flower_cls), {"streams_mean": flower_cls is FedAvg})
    return cls(
        settings=settings, binding=binding, tensors=tensors, verifier=verifier, hooks=hooks, root_update=root_update,
        fraction_train=fraction, fraction_evaluate=fraction, min_train_nodes=min_clients,
        min_evaluate_nodes=min_clients, min_available_nodes=min_clients, **settings.options,
    )
