"""Reports and aggregates crafted by enrolled clients (issue 23, findings 1, 2, 3, 8, 10).

Each reply here is a real Flower Message answering a message sent to a node, so the
server sees the node id Flower gives it; the strategies, the personalization step and
the plots are the server's own."""

from __future__ import annotations

import json
import math
from types import SimpleNamespace

import numpy as np
import pytest
from flwr.app import ConfigRecord, Message, MetricRecord, RecordDict
from test_strategy import GLOBAL, KEYS, ROUND, TRAINED, _claim, _deltas, _edited_header, _flower_run, _signed, _strategy  # noqa: F401  (_flower_run: the autouse fixture that sets up a Flower run)

from fedpeft.console import printable
from fedpeft.core.config import FederationConfig, PrivacySection
from fedpeft.core.privacy import noisy_norm_bound, share_std
from fedpeft.core.training.job import Job
from fedpeft.core.trust.keys import key_id
from fedpeft.core.wire.envelope import delta_content
from fedpeft.core.wire.records import from_record, to_record
from fedpeft.server import report
from fedpeft.core.errors import FedPeftError
from fedpeft.server.federation import Roster, personalize, publish
from fedpeft.server.run_log import RunLog
from fedpeft.server.strategy import MAX_GLOBAL_VALUE, StrategyHooks, global_problem
from fedpeft.server.verify import DETAIL_CHARS, REPORT_BYTES, DeltaVerifier, RejectedDelta, VerifyPolicy
from fedpeft.simulations.misbehaving import HOSTILE_NAME, INFLATED_COUNT, spoil_report

NODES = (11, 12, 13)  # the nodes configure_train asks (test_strategy._Nodes)
UNBOUNDED = VerifyPolicy(max_update_norm=0.0)  # the config dataclass's default: no norm bound
NEAR_MAX = np.float32(3e38)  # finite, near float32's largest value


def _from(node: int, content: RecordDict, message_type: str = "train") -> Message:
    """`content` as node `node`'s reply to a message the server sent it."""
    return Message(content, reply_to=Message(RecordDict(), dst_node_id=node, message_type=message_type))


def _trained_round(strategy, keys=KEYS[:3], nodes=NODES) -> None:
    """One honest training round: node i signs with keys[i], so the server learns who holds which key."""
    replies = [_from(n, _signed(d, k)) for n, k, d in zip(nodes, keys, _deltas(31, len(nodes)))]
    strategy.aggregate_train(ROUND, replies)


def _personalize_content(examples: int, accuracy: float, name: str) -> RecordDict:
    """A personalization reply claiming a name (honest clients send none; the server reads none)."""
    metrics = MetricRecord({"num-examples": examples, **{f"{arm}-acc": accuracy for arm in report.ARMS}})
    return RecordDict({"metrics": metrics, "client": ConfigRecord({"name": name})})


class _Grid:
    """The network: each asked node answers with its prepared reply content."""

    def __init__(self, contents: dict[int, RecordDict]) -> None:
        self.contents = contents

    def get_node_ids(self):
        return list(self.contents)

    def send_and_receive(self, messages, timeout):
        return [Message(self.contents[m.metadata.dst_node_id], reply_to=m) for m in messages]


# Findings 1 and 2: a report's name comes from the enrolled key, its weight is capped, its text drawn safely.

def test_a_personalization_report_is_named_by_its_key_weighed_capped_and_drawn_safely(tmp_path, capsys):
    strategy = _strategy(max_weight_ratio=2.0)
    _trained_round(strategy)
    assert strategy.signers == {11: "client-0", 12: "client-1", 13: "client-2"}
    honest, accuracy = 60, 0.3
    contents = {11: _personalize_content(honest, accuracy, "partition-0"),
                12: _personalize_content(honest, accuracy, "partition-1"),
                13: spoil_report(_personalize_content(honest, accuracy, "partition-2")),
                14: _personalize_content(honest, accuracy, "client-1")}  # signed no delta; claims another's name
    config = FederationConfig()
    setup = SimpleNamespace(config=config, job=Job("b" * 64, "t" * 64), out=tmp_path)
    roster = Roster(ready=set(contents), signers=dict(strategy.signers))
    clients, missing = personalize(_Grid(contents), setup, GLOBAL, roster)

    assert missing == []
    assert [c["client"] for c in clients] == ["client-0", "client-1", "client-2", "node 14"]
    assert "forged" not in json.dumps(clients) + capsys.readouterr().out
    attacker = clients[2]
    cap = config.security.max_weight_ratio * honest
    assert attacker["claimed_examples"] == INFLATED_COUNT and attacker["examples"] == cap
    stats, _ = report.personalization_table(clients)
    assert stats["global"]["weighted_mean"] == pytest.approx((3 * honest * accuracy + cap * 1.0) / (3 * honest + cap))
    assert cap / (3 * honest + cap) < 0.5  # one reply no longer sets the run's accuracy (0.999 before)

    # Any name, the operator's enrolled ones included, is drawn as plain text.
    report.plot_clients([*clients, {**clients[0], "client": HOSTILE_NAME}], tmp_path / "clients.png")
    assert (tmp_path / "clients.png").stat().st_size > 0


def test_an_evaluate_report_weighs_as_a_capped_training_delta_and_one_key_reports_once():
    strategy = _strategy(max_weight_ratio=2.0)
    seen = {}
    strategy.hooks = StrategyHooks(on_evaluate=lambda r, m, rejected: seen.update(rejected))
    # Node 15 holds client-0's key too: its delta is a duplicate, and so is its report.
    _trained_round(strategy, keys=[*KEYS[:3], KEYS[0]], nodes=(*NODES, 15))
    assert strategy.traffic.rejected == {"duplicate": 1} and strategy.signers[15] == "client-0"

    def evaluate(examples: int, accuracy: float) -> RecordDict:
        return RecordDict({"metrics": MetricRecord({"num-examples": examples, "eval-loss": 0.5, "eval-acc": accuracy})})

    honest = 10
    replies = [_from(11, evaluate(honest, 0.3), "evaluate"), _from(12, evaluate(honest, 0.3), "evaluate"),
               _from(13, evaluate(strategy.verifier.policy.max_examples, 1.0), "evaluate"),
               _from(15, evaluate(honest, 1.0), "evaluate")]
    metrics = strategy.aggregate_evaluate(ROUND, replies)
    cap = 2 * honest  # twice the median of the counts that passed
    assert seen == {"duplicate": 1}
    assert metrics["eval-acc"] == pytest.approx((2 * honest * 0.3 + cap * 1.0) / (2 * honest + cap))


def _hostile_metric(delta) -> RecordDict:
    claim = _claim()
    return delta_content(KEYS[2], type(claim)(claim.binding, 10, {"train-loss": 1.0, "steps": 1, HOSTILE_NAME: 1.0}),
                         delta)


@pytest.mark.parametrize("hostile,reason", [
    (_hostile_metric, "bad-metrics"),                                                            # quoted by replies.py
    (lambda d: _signed({**d, HOSTILE_NAME: np.zeros(3, np.float32)}, KEYS[2]), "unexpected-tensor"),  # by verify.py
])
def test_a_rejection_names_only_a_proven_signer_and_quotes_the_reply_printably(hostile, reason):
    strategy = _strategy()
    delta = _deltas(32, 1)[0]
    # Signed by client-4's key, claiming client-1's: nobody is proven, so nobody is named.
    forged = _edited_header(delta, KEYS[4], lambda h: setattr(h, "key_id", key_id(KEYS[1].public_key())))
    strategy.aggregate_train(ROUND, [_from(12, forged), _from(13, hostile(delta))])
    bad_signature, quoted = strategy.traffic.rejections
    assert (bad_signature["reason"], bad_signature["client"]) == ("bad-signature", "node 12")
    assert (quoted["reason"], quoted["client"]) == (reason, "client-2")
    assert strategy.signers == {13: "client-2"}  # its signature verified; 12's did not
    detail = quoted["detail"]
    assert len(detail) <= DETAIL_CHARS and detail.isprintable() and "\x1b" not in detail


@pytest.mark.parametrize("text,shown", [
    ("\x1b[31mred\x1b[0m", "red"),                      # colour
    ("\x1b]0;new title\x07name", "name"),               # terminal title (OSC)
    ("a\nb\rc\x00d\u202ee", "a?b?c?d?e"),               # forged lines, NUL, right-to-left override
    ("x" * 100, "x" * 79 + "…"),                        # bounded
])
def test_console_text_is_printable_and_bounded(text, shown):
    assert printable(text) == shown


# Finding 3: the aggregate is summed in float64 and checked before it becomes the global adapter.

def _near_max_round(strategy, sign: float = 1.0, count: int = 3):
    """`count` signed deltas, each with one value near float32's maximum; with `sign` -1
    the second half's are negated: the true mean is then small, the partial sums not."""
    deltas = _deltas(33, count)
    for i, d in enumerate(deltas):
        d["a"][0, 0] = NEAR_MAX * np.float32(sign if i >= count // 2 else 1.0)
    nodes = range(11, 11 + count)
    return deltas, strategy.aggregate_train(ROUND, [_from(n, _signed(d, k)) for n, k, d in zip(nodes, KEYS, deltas)])


@pytest.mark.parametrize("name", ["fedavg", "fedtrimmedavg", "fedavgm"])
def test_weighted_sums_run_in_float64(name):
    """+3e38, +3e38, -3e38, -3e38: multiplied by their counts (FedAvg) or summed (the
    trimmed mean) in float32 they overflow to inf or NaN; in float64 they cancel."""
    strategy = _strategy(name, policy=UNBOUNDED)
    deltas, (arrays, _) = _near_max_round(strategy, sign=-1.0, count=4)
    assert arrays is not None and strategy.traffic.refused_global is None
    new = from_record(arrays)
    for n in TRAINED:
        expected = GLOBAL[n].astype(np.float64) + sum(d[n].astype(np.float64) for d in deltas) / len(deltas)
        np.testing.assert_allclose(new[n], expected.astype(np.float32), rtol=1e-5, atol=1e-3)


@pytest.mark.parametrize("name", ["fedavg", "fedmedian", "fedtrimmedavg", "krum", "multikrum", "fedavgm"])
def test_an_aggregate_beyond_the_bound_is_refused_by_name_and_the_round_keeps_its_global(name, tmp_path, capsys):
    run_log = RunLog(tmp_path / "metrics.jsonl", ROUND)
    strategy = _strategy(name, policy=UNBOUNDED)
    strategy.hooks = StrategyHooks(on_train=run_log.train_done, on_evaluate=run_log.evaluate_done)
    _, (arrays, metrics) = _near_max_round(strategy)
    assert arrays is None and metrics is None  # Flower keeps the global adapter the round started from
    assert strategy.traffic.unchanged and strategy.traffic.refused_global.startswith("out-of-bound: a ")
    run_log.evaluate_done(ROUND, None, {})
    (row,) = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert row["refused_global"] == strategy.traffic.refused_global and row["unchanged"]
    assert "aggregate refused: out-of-bound: a" in capsys.readouterr().out


@pytest.mark.parametrize("name,privacy", [
    ("fedavg", PrivacySection()), ("fedmedian", PrivacySection()), ("fedtrimmedavg", PrivacySection()),
    ("krum", PrivacySection()), ("multikrum", PrivacySection()), ("fedavgm", PrivacySection()),
    ("fedadam", PrivacySection()), ("fedyogi", PrivacySection()),
    ("fedavg", PrivacySection(mode="central", clip=1.0, noise_multiplier=0.5)),
    ("fedavg", PrivacySection(mode="distributed", clip=1.0, noise_multiplier=0.5)),
])
@pytest.mark.parametrize("sign", [1.0, -1.0])
def test_whatever_the_strategy_no_global_adapter_is_taken_unchecked(name, privacy, sign):
    """Deltas near float32's maximum: every strategy either keeps its global or takes one
    that is finite and within MAX_GLOBAL_VALUE (FedAdam's normalized step, DP's clip)."""
    strategy = _strategy(name, policy=UNBOUNDED, privacy=privacy)
    _, (arrays, _) = _near_max_round(strategy, sign)
    if arrays is None:
        assert strategy.traffic.unchanged
    else:
        new = from_record(arrays)
        assert global_problem(new) is None and max(float(np.abs(a).max()) for a in new.values()) <= MAX_GLOBAL_VALUE


def test_a_refused_aggregate_leaves_no_trace_in_the_server_optimizer():
    """FedAvgM with momentum: after a refused round, the next honest round moves the global
    exactly as it would have without the refused one."""
    options = {"server_momentum": 0.9, "server_learning_rate": 0.5}
    refused = _strategy("fedavgm", policy=UNBOUNDED, **options)
    _near_max_round(refused)
    assert refused.traffic.refused_global and refused.momentum_vector is None
    honest = _deltas(34, 3)
    list(refused.configure_train(2, to_record(GLOBAL), ConfigRecord(), _Grid(dict.fromkeys(NODES))))
    after, _ = refused.aggregate_train(ROUND, [_from(n, _signed(d, k, server_round=ROUND + 1))
                                               for n, k, d in zip(NODES, KEYS, honest)])
    fresh = _strategy("fedavgm", policy=UNBOUNDED, **options)
    expected, _ = fresh.aggregate_train(ROUND - 1, [_from(n, _signed(d, k)) for n, k, d in zip(NODES, KEYS, honest)])
    for n in TRAINED:
        np.testing.assert_array_equal(from_record(after)[n], from_record(expected)[n])


def test_a_round_with_too_few_accepted_deltas_leaves_no_trace_in_the_server_optimizer():
    """FedAvgM again: a round whose accepted deltas are fewer than min_accepted keeps the
    global, and Flower's momentum from that discarded aggregate is put back too."""
    options = {"server_momentum": 0.9, "server_learning_rate": 0.5}
    short = _strategy("fedavgm", min_accepted=3, **options)
    arrays, _ = short.aggregate_train(ROUND, [_from(n, _signed(d, k)) for n, k, d in zip(NODES[:2], KEYS, _deltas(36, 2))])
    assert arrays is None and short.traffic.unchanged and short.momentum_vector is None


@pytest.mark.parametrize("arrays,problem", [
    ({"a": np.array([1.0, np.nan], np.float32)}, "non-finite: a"),
    ({"a": np.ones(2, np.float32), "b": np.array([-np.inf], np.float32)}, "non-finite: b"),
    ({"a": np.array([MAX_GLOBAL_VALUE * 2], np.float32)}, "out-of-bound: a"),
    ({"a": np.array([MAX_GLOBAL_VALUE], np.float32)}, None),
])
def test_global_problem_names_the_tensor(arrays, problem):
    found = global_problem(arrays)
    assert found == problem if problem is None else found.startswith(problem)


def test_a_global_adapter_that_is_not_finite_is_never_published(tmp_path):
    """A checkpoint from before aggregates were checked may hold one: refused before anything is written."""
    final = {**GLOBAL, "b": np.array([1, np.nan, 1, 1], np.float32)}
    with pytest.raises(FedPeftError, match="non-finite: b"):
        publish(SimpleNamespace(out=tmp_path), final, {}, {})
    assert list(tmp_path.iterdir()) == []


# Finding 8: distributed DP's noise-aware bound only ever tightens security.max_update_norm.

def test_distributed_dp_never_loosens_the_configured_norm_bound():
    privacy = PrivacySection(mode="distributed", clip=1.0, noise_multiplier=1.0)
    configured = 3.0
    strategy = _strategy(policy=VerifyPolicy(max_update_norm=configured), privacy=privacy)
    noise_aware = noisy_norm_bound(privacy.clip, share_std(1.0, privacy.clip, len(NODES)), strategy.expectation.layout.count)
    assert noise_aware > configured  # the case the finding is about
    inside, between = _deltas(35, 2)
    scale = lambda d, norm: {n: v * np.float32(norm / math.sqrt(sum(float((x ** 2).sum()) for x in d.values())))  # noqa: E731
                             for n, v in d.items()}
    replies = [_from(11, _signed(scale(inside, configured / 2), KEYS[0])),
               _from(12, _signed(scale(between, (configured + noise_aware) / 2), KEYS[1]))]
    strategy.aggregate_train(ROUND, replies)
    assert strategy.traffic.accepted == 1 and strategy.traffic.rejected == {"norm-too-large": 1}
    assert f"bound {configured:.4g}" in strategy.traffic.rejections[0]["detail"]


# Finding 10: the size check counts every record of a train reply.

@pytest.mark.parametrize("extra", [
    lambda size: ConfigRecord({"note": "x" * size}),                           # one long string
    lambda size: ConfigRecord({"notes": ["é" * 64] * (size // 64)}),           # a list of strings (UTF-8)
    lambda size: MetricRecord({"values": [0.5] * (size // 8 + 1)}),            # a million floats, say
    lambda size: MetricRecord({f"k{i}": 1.0 for i in range(size // 8 + 1)}),  # many small entries
    lambda size: ConfigRecord({"k" * size: 1}),                                # one huge key
])
def test_every_record_of_a_train_reply_counts_towards_its_size(extra):
    strategy = _strategy(policy=VerifyPolicy(max_update_norm=100.0))
    limit = strategy.verifier.message_limit(strategy.expectation)
    honest, padded = (_signed(d, k) for d, k in zip(_deltas(36, 2), KEYS))
    padded["extra"] = extra(limit)
    strategy.aggregate_train(ROUND, [_from(11, honest), _from(12, padded)])
    assert strategy.traffic.accepted == 1 and strategy.traffic.rejected == {"too-large": 1}


def test_a_report_carrying_more_than_a_few_numbers_is_refused_before_it_is_parsed():
    """Evaluate and personalize replies are bounded like deltas: a 100 KB string beside
    honest metrics is `too-large`, whatever record holds it; the honest report passes."""
    strategy = _strategy()
    seen = {}
    strategy.hooks = StrategyHooks(on_evaluate=lambda r, m, rejected: seen.update(rejected))
    honest = MetricRecord({"num-examples": 10, "eval-loss": 0.5, "eval-acc": 0.4})
    padded = RecordDict({"metrics": honest, "pad": ConfigRecord({"x": "a" * (REPORT_BYTES + 1)})})
    metrics = strategy.aggregate_evaluate(ROUND, [_from(11, RecordDict({"metrics": honest}), "evaluate"),
                                                  _from(12, padded, "evaluate")])
    assert seen == {"too-large": 1} and metrics["eval-acc"] == pytest.approx(0.4)


def test_a_finite_delta_whose_float32_squares_overflow_has_its_true_norm():
    """No bound: a finite delta holding 3e38 is accepted with a finite L2 norm (its squares
    overflow float32), so metrics.jsonl stays valid JSON; a bound refuses it by that norm."""
    delta = _deltas(35, 1)[0]
    delta["a"][0, 0] = NEAR_MAX
    strategy = _strategy(policy=UNBOUNDED)
    verified = strategy.verifier.verify(_signed(delta, KEYS[0]), strategy.expectation)
    assert math.isfinite(verified.norm) and verified.norm == pytest.approx(float(NEAR_MAX), rel=1e-6)
    bounded = DeltaVerifier(strategy.verifier.keyring, VerifyPolicy(max_update_norm=50.0))
    with pytest.raises(RejectedDelta, match="norm-too-large"):
        bounded.verify(_signed(delta, KEYS[0]), strategy.expectation)
