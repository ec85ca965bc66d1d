"""The server's verification and aggregation of signed deltas, fed real Flower messages."""

from __future__ import annotations

import dataclasses
import json
import threading
import time

import numpy as np
import pytest
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from flwr.app import ConfigRecord, Context, Message, MetricRecord, RecordDict
from flwr.supercore.task_identity import TaskIdentity

from fedpeft.core.config import PrivacySection
from fedpeft.core.errors import ConfigError
from fedpeft.core.trust.hashing import tensors_id
from fedpeft.core.trust.keys import EnrolledKey, Keyring, key_id
from fedpeft.core.wire.delta_codec import DeltaEncoding
from fedpeft.core.wire.envelope import (
    DELTA_RECORD,
    ENVELOPE_RECORD,
    DeltaBinding,
    DeltaClaim,
    EncodedDelta,
    build_header,
    envelope_record,
    seal,
    sign_delta,
)
from fedpeft.core.wire.records import from_record, to_record
from fedpeft.protos import delta_pb2
from fedpeft.server.federation import ask
from fedpeft.server.report import ARMS
from fedpeft.server.run_log import RunLog
from fedpeft.server.strategy import StrategyHooks, StrategySettings, build_strategy
from fedpeft.server.verify import DeltaVerifier, RoundExpectation, VerifyPolicy
from fedpeft.simulations import misbehaving

GLOBAL = {
    "a": np.arange(6, dtype=np.float32).reshape(2, 3),
    "b": np.ones(4, dtype=np.float32),
    "frozen": np.full(3, 7.0, dtype=np.float32),
}
TRAINED = ("a", "b")
RUN, ROUND, BASE, TEMPLATE = "run-1", 3, "b" * 64, "t" * 64
BINDING = DeltaBinding(RUN, BASE, TEMPLATE)
KEYS = [Ed25519PrivateKey.generate() for _ in range(6)]


@pytest.fixture(autouse=True)
def _flower_run():
    """Messages need the run and node they belong to, as inside a ServerApp."""
    TaskIdentity.run_id, TaskIdentity.node_id, TaskIdentity.task_id = 1, 0, 1
    yield
    TaskIdentity.run_id = TaskIdentity.node_id = TaskIdentity.task_id = None


def _keyring() -> Keyring:
    keyring = Keyring()
    for i, key in enumerate(KEYS):
        keyring.enroll(f"client-{i}", key.public_key())
    return keyring


def _claim(num_examples: int = 10, **binding_changes) -> DeltaClaim:
    """An honest claim for this round; `binding_changes` alter what it is bound to."""
    binding = dataclasses.replace(BINDING.for_round(ROUND, tensors_id(GLOBAL)), **binding_changes)
    return DeltaClaim(binding, num_examples, {"train-loss": 1.0, "steps": 1})


def _content(delta: dict[str, np.ndarray], signed: bytes | None, encoding: DeltaEncoding = DeltaEncoding()) -> RecordDict:
    content = RecordDict({DELTA_RECORD: EncodedDelta.of(delta, encoding).record()})
    if signed is not None:
        content[ENVELOPE_RECORD] = envelope_record(signed)
    return content


def _reply(content: RecordDict) -> Message:
    return Message(content, dst_node_id=0, message_type="train")


def _signed(delta: dict[str, np.ndarray], key: Ed25519PrivateKey = KEYS[0], encoding: DeltaEncoding = DeltaEncoding(),
            **claim_changes) -> RecordDict:
    return _content(delta, sign_delta(key, _claim(**claim_changes), EncodedDelta.of(delta, encoding)), encoding)


def _edited_header(delta: dict[str, np.ndarray], key: Ed25519PrivateKey, edit) -> RecordDict:
    """A reply whose header `edit` changed before the client signed it."""
    header = build_header(_claim(), key_id(key.public_key()), EncodedDelta.of(delta))
    edit(header)
    return _content(delta, seal(key, header))


def _strategy(name: str = "fedavg", policy: VerifyPolicy = VerifyPolicy(max_update_norm=100.0),
              min_accepted: int = 1, max_weight_ratio: float = 0.0, encoding: DeltaEncoding = DeltaEncoding(),
              privacy: PrivacySection = PrivacySection(), root_update=None, **options):
    tensors = {n: (GLOBAL[n].dtype.str, GLOBAL[n].shape) for n in TRAINED}
    settings = StrategySettings(name, min_accepted=min_accepted, max_weight_ratio=max_weight_ratio, options=options,
                                encoding=encoding, privacy=privacy, round_offset=ROUND - 1)
    strategy = build_strategy(settings, BINDING, tensors, DeltaVerifier(_keyring(), policy), root_update=root_update)
    sent = list(strategy.configure_train(1, to_record(GLOBAL), ConfigRecord(), _Nodes()))  # Flower's round 1
    assert {m.metadata.dst_node_id for m in sent} == set(_Nodes.ids)
    assert list(sent[0].content.array_records["arrays"]) == list(TRAINED)  # frozen tensors came with the template
    expected = RoundExpectation(BINDING.for_round(ROUND, tensors_id(GLOBAL)), tensors, encoding)
    assert dataclasses.replace(strategy.expectation, max_norm=0.0) == expected
    assert strategy.traffic.asked == 3 and strategy.traffic.sample_rate == 1.0
    return strategy


class _Nodes:
    """The one thing configure_train asks of Flower's Grid: which nodes are connected."""

    ids = (11, 12, 13)

    def get_node_ids(self):
        return list(self.ids)


def _deltas(seed: int, count: int) -> list[dict[str, np.ndarray]]:
    rng = np.random.default_rng(seed)
    return [{"a": rng.normal(size=(2, 3)).astype(np.float32), "b": rng.normal(size=4).astype(np.float32)}
            for _ in range(count)]


def test_fedavg_of_signed_deltas_is_the_example_weighted_mean():
    deltas, weights = _deltas(0, 3), [10, 30, 60]
    replies = [_reply(_signed(d, KEYS[i], num_examples=w)) for i, (d, w) in enumerate(zip(deltas, weights))]
    arrays, metrics = _strategy().aggregate_train(ROUND, replies)
    result = from_record(arrays)
    total = sum(weights)
    for name in TRAINED:
        expected = GLOBAL[name] + sum(w / total * d[name] for d, w in zip(deltas, weights))
        np.testing.assert_allclose(result[name], expected, rtol=1e-6)
    np.testing.assert_array_equal(result["frozen"], GLOBAL["frozen"])
    assert metrics["train-loss"] == pytest.approx(1.0)


def test_weights_come_from_the_signed_count_not_an_unsigned_metric():
    deltas = _deltas(4, 2)
    contents = [_signed(deltas[0], KEYS[0], num_examples=1), _signed(deltas[1], KEYS[1], num_examples=1)]
    contents[0]["metrics"] = MetricRecord({"num-examples": 1_000_000})  # unsigned claim: ignored
    strategy = _strategy()
    arrays, _ = strategy.aggregate_train(ROUND, [_reply(c) for c in contents])
    expected = GLOBAL["a"] + (deltas[0]["a"] + deltas[1]["a"]) / 2
    np.testing.assert_allclose(from_record(arrays)["a"], expected, rtol=1e-6)


def test_fedmedian_takes_the_coordinate_wise_median_delta():
    deltas = _deltas(1, 4)
    arrays, _ = _strategy("fedmedian").aggregate_train(ROUND, [_reply(_signed(d, KEYS[i])) for i, d in enumerate(deltas)])
    expected = GLOBAL["a"] + np.median(np.stack([d["a"] for d in deltas]), axis=0)
    np.testing.assert_allclose(from_record(arrays)["a"], expected, rtol=1e-6)


def test_fedadam_moves_the_global_along_the_mean_delta():
    deltas = _deltas(2, 2)
    strategy = _strategy("fedadam", eta=0.1)
    arrays, _ = strategy.aggregate_train(1, [_reply(_signed(d, KEYS[i])) for i, d in enumerate(deltas)])
    step = from_record(arrays)["a"] - GLOBAL["a"]
    mean = (deltas[0]["a"] + deltas[1]["a"]) / 2
    assert np.all(np.sign(step) == np.sign(mean))
    np.testing.assert_array_equal(from_record(arrays)["frozen"], GLOBAL["frozen"])


def test_fedavgm_steps_by_its_server_learning_rate_and_checkpoints_its_momentum():
    deltas = _deltas(3, 2)
    strategy = _strategy("fedavgm", server_learning_rate=2.0, server_momentum=0.9)
    arrays, _ = strategy.aggregate_train(1, [_reply(_signed(d, KEYS[i])) for i, d in enumerate(deltas)])
    mean = {n: (deltas[0][n] + deltas[1][n]) / 2 for n in TRAINED}
    for name in TRAINED:
        np.testing.assert_allclose(from_record(arrays)[name], GLOBAL[name] + 2.0 * mean[name], rtol=1e-5, atol=1e-6)
    np.testing.assert_array_equal(from_record(arrays)["frozen"], GLOBAL["frozen"])
    state = strategy.state_arrays()
    resumed = _strategy("fedavgm", server_learning_rate=2.0, server_momentum=0.9)
    resumed.restore_state(state)
    assert [a.shape for a in resumed.momentum_vector] == [GLOBAL[n].shape for n in TRAINED]
    for kept, restored in zip(strategy.momentum_vector, resumed.momentum_vector):  # the values, not only the shapes
        np.testing.assert_array_equal(restored, kept)
    assert np.abs(np.concatenate([m.ravel() for m in resumed.momentum_vector])).max() > 0


def _bad(kind: str) -> RecordDict:
    """One bad reply of each kind, signed (or not) by KEYS[3]."""
    delta = _deltas(9, 1)[0]
    key = KEYS[3]
    if kind == "no-envelope":
        return _content(delta, None)
    if kind == "no-signature-in-envelope":
        header = build_header(_claim(), key_id(key.public_key()), EncodedDelta.of(delta)).SerializeToString()
        return _content(delta, delta_pb2.SignedDelta(header=header, key_id=key_id(key.public_key())).SerializeToString())
    if kind == "garbage-envelope":
        return _content(delta, b"\xff\x00 not protobuf")
    if kind == "unknown-key":
        return _signed(delta, Ed25519PrivateKey.generate())
    if kind == "header-edited-after-signing":
        signed = delta_pb2.SignedDelta.FromString(sign_delta(key, _claim(), EncodedDelta.of(delta)))
        header = delta_pb2.DeltaHeader.FromString(signed.header)
        header.num_examples = 10_000  # re-serialized: the signature no longer covers it
        signed.header = header.SerializeToString()
        return _content(delta, signed.SerializeToString())
    if kind == "signed-by-another-enrolled-key":
        signed = delta_pb2.SignedDelta.FromString(sign_delta(key, _claim(), EncodedDelta.of(delta)))
        signed.signature = KEYS[0].sign(signed.header)
        return _content(delta, signed.SerializeToString())
    if kind == "header-names-another-key":
        header = build_header(_claim(), key_id(KEYS[0].public_key()), EncodedDelta.of(delta))
        header_bytes = header.SerializeToString()
        signed = delta_pb2.SignedDelta(header=header_bytes, key_id=key_id(key.public_key()), signature=key.sign(header_bytes))
        return _content(delta, signed.SerializeToString())
    if kind == "tensor-changed-after-signing":
        content = _signed(delta, key)
        content[DELTA_RECORD] = EncodedDelta.of({**delta, "a": delta["a"] + 1e-3}).record()
        return content
    if kind == "payload-reshaped-after-signing":
        content = _signed(delta, key)
        content[DELTA_RECORD] = to_record({"payload": np.frombuffer(EncodedDelta.of(delta).payload, np.uint8).reshape(-1, 2)})
        return content
    if kind == "tensor-dropped-after-signing":
        content = _signed(delta, key)
        content[DELTA_RECORD] = EncodedDelta.of({"a": delta["a"]}).record()
        return content
    if kind == "payload-under-another-name":
        content = _signed(delta, key)
        content[DELTA_RECORD] = to_record({"arrays": np.frombuffer(EncodedDelta.of(delta).payload, np.uint8)})
        return content
    if kind == "fp16-where-fp32-was-asked":
        return _signed(delta, key, DeltaEncoding("fp16"))
    if kind == "manifest-out-of-order":
        return _edited_header(delta, key, lambda h: h.tensors.sort(key=lambda t: t.name, reverse=True))
    if kind in ("wrong-run", "wrong-round", "wrong-base", "wrong-template", "wrong-parent"):
        field = {"wrong-run": "run_id", "wrong-round": "server_round", "wrong-base": "base_id",
                 "wrong-template": "template_id", "wrong-parent": "parent_id"}[kind]
        value = ROUND - 1 if field == "server_round" else "x" * 64
        return _signed(delta, key, **{field: value})
    if kind == "unexpected-tensor":
        return _signed({**delta, "frozen": np.zeros(3, np.float32)}, key)
    if kind == "missing-tensor":
        return _signed({"a": delta["a"]}, key)
    if kind == "bad-dtype":
        return _edited_header(delta, key, lambda h: setattr(h.tensors[0], "dtype", "<f8"))
    if kind == "bad-shape":
        return _signed({**delta, "a": delta["a"].reshape(3, 2)}, key)
    if kind == "non-finite":
        return _signed({**delta, "b": np.array([0, np.inf, 0, 0], np.float32)}, key)
    if kind == "norm-too-large":
        return _signed({n: v * 1000 for n, v in delta.items()}, key)
    if kind == "zero-examples":
        return _signed(delta, key, num_examples=0)
    if kind == "implausible-examples":
        return _signed(delta, key, num_examples=10**9)
    if kind == "too-large":
        content = _signed(delta, key)
        content["padding"] = ConfigRecord({"blob": b"\0" * 200_000})
        return content
    if kind == "two-array-records":
        content = _signed(delta, key)
        content["more"] = to_record({"a": delta["a"]})
        return content
    raise AssertionError(kind)


BAD_KINDS = {
    "no-envelope": "no-signature",
    "no-signature-in-envelope": "no-signature",
    "garbage-envelope": "malformed",
    "unknown-key": "unknown-key",
    "header-edited-after-signing": "bad-signature",
    "signed-by-another-enrolled-key": "bad-signature",
    "header-names-another-key": "bad-signature",
    "tensor-changed-after-signing": "tensor-hash-mismatch",
    "payload-reshaped-after-signing": "tensor-hash-mismatch",
    "tensor-dropped-after-signing": "tensor-hash-mismatch",
    "payload-under-another-name": "malformed",
    "fp16-where-fp32-was-asked": "bad-encoding",
    "manifest-out-of-order": "malformed",
    "wrong-run": "wrong-run",
    "wrong-round": "wrong-round",
    "wrong-base": "wrong-base",
    "wrong-template": "wrong-template",
    "wrong-parent": "wrong-parent",
    "unexpected-tensor": "unexpected-tensor",
    "missing-tensor": "missing-tensor",
    "bad-dtype": "bad-dtype",
    "bad-shape": "bad-shape",
    "non-finite": "non-finite",
    "norm-too-large": "norm-too-large",
    "zero-examples": "bad-example-count",
    "implausible-examples": "bad-example-count",
    "too-large": "too-large",
    "two-array-records": "malformed",
}


@pytest.mark.parametrize("kind", sorted(BAD_KINDS))
def test_each_bad_delta_is_rejected_with_its_reason_and_the_honest_ones_aggregated(kind):
    good = _deltas(3, 2)
    strategy = _strategy(policy=VerifyPolicy(max_update_norm=100.0, max_examples=1000, max_message_bytes=100_000))
    replies = [_reply(_signed(good[0], KEYS[0])), _reply(_bad(kind)), _reply(_signed(good[1], KEYS[1]))]
    arrays, _ = strategy.aggregate_train(ROUND, replies)
    assert strategy.traffic.rejected == {BAD_KINDS[kind]: 1}
    assert strategy.traffic.accepted == 2
    assert len(strategy.traffic.rejections) == 1 and strategy.traffic.rejections[0]["reason"] == BAD_KINDS[kind]
    expected = GLOBAL["a"] + (good[0]["a"] + good[1]["a"]) / 2
    np.testing.assert_allclose(from_record(arrays)["a"], expected, rtol=1e-6)


def test_a_second_delta_from_the_same_key_in_a_round_is_a_duplicate():
    deltas = _deltas(5, 3)
    strategy = _strategy()
    replies = [_reply(_signed(deltas[0], KEYS[0])), _reply(_signed(deltas[1], KEYS[0])),
               _reply(_signed(deltas[2], KEYS[1]))]
    arrays, _ = strategy.aggregate_train(ROUND, replies)
    assert strategy.traffic.rejected == {"duplicate": 1}
    assert strategy.traffic.rejections[0]["client"] == "client-0"
    expected = GLOBAL["a"] + (deltas[0]["a"] + deltas[2]["a"]) / 2
    np.testing.assert_allclose(from_record(arrays)["a"], expected, rtol=1e-6)


def test_too_few_accepted_deltas_leave_the_global_adapter_unchanged():
    good = _deltas(6, 1)[0]
    strategy = _strategy(min_accepted=2)
    arrays, metrics = strategy.aggregate_train(ROUND, [_reply(_signed(good, KEYS[0])), _reply(_bad("wrong-round"))])
    assert arrays is None and metrics is None  # Flower keeps the current global arrays
    assert strategy.traffic.unchanged and strategy.traffic.accepted == 1
    assert strategy.traffic.rejected == {"wrong-round": 1}


def test_the_envelope_signs_the_bytes_that_travel():
    """The signature covers the serialized header exactly as sent; parsing and
    re-serializing is not what gets verified."""
    delta = _deltas(7, 1)[0]
    header = build_header(_claim(), key_id(KEYS[0].public_key()), EncodedDelta.of(delta))
    signed = delta_pb2.SignedDelta.FromString(seal(KEYS[0], header))
    KEYS[0].public_key().verify(signed.signature, signed.header)
    assert delta_pb2.DeltaHeader.FromString(signed.header) == header


def _node_context(partition: int) -> Context:
    """What a simulated node's ClientApp (and its mods) see: its partition."""
    return Context(run_id=1, node_id=100 + partition, node_config={"partition-id": partition}, state=RecordDict(),
                   run_config={})


def _honest_evaluate(msg: Message, context: Context) -> Message:
    """An honest node's evaluate reply (accuracy 0.5 + 0.1 x its partition, 20 examples)."""
    partition = int(context.node_config["partition-id"])
    metrics = MetricRecord({"num-examples": 20, "eval-loss": 0.5, "eval-acc": 0.5 + 0.1 * partition})
    return Message(RecordDict({"metrics": metrics}), reply_to=msg)


def _honest_report(msg: Message, context: Context) -> Message:
    """An honest node's personalization report (as client/client_app.py sends it: no name)."""
    content = RecordDict({"metrics": MetricRecord({"num-examples": 20, **{f"{arm}-acc": 0.5 for arm in ARMS}})})
    return Message(content, reply_to=msg)


class _ThreadedGrid:
    """Flower's Grid as server/federation.ask uses it: each message is handled by its node's
    ClientApp callable on a thread of its own; what is back by the deadline is returned."""

    def __init__(self, handle) -> None:
        self.handle = handle  # (message) -> reply

    def send_and_receive(self, messages, timeout):
        replies: list[Message] = []
        threads = [threading.Thread(target=lambda m=m: replies.append(self.handle(m)), daemon=True) for m in messages]
        deadline = time.monotonic() + timeout
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(max(0.0, deadline - time.monotonic()))
        return list(replies)


def _misbehaviour_outside_the_delta(kind: str, plan: dict, tmp_path) -> None:
    """"bad-eval" and "slow-report" leave train replies alone: their misbehaviour is an
    evaluate reply and a personalization report, run here through misbehaving_mod."""
    (bad,) = (int(p) for p in plan["partitions"])
    partitions = (0, 1, 2)
    if kind == "bad-eval":
        config = RecordDict({"config": ConfigRecord({"server-round": ROUND})})
        replies = [misbehaving.misbehaving_mod(Message(config, dst_node_id=100 + p, message_type="evaluate"),
                                               _node_context(p), _honest_evaluate) for p in partitions]
        strategy = _strategy()
        run_log = RunLog(tmp_path / "metrics.jsonl", ROUND)
        strategy.hooks = StrategyHooks(on_evaluate=run_log.evaluate_done)
        strategy.aggregate_evaluate(1, replies)
        (row,) = run_log.rows
        assert row["eval_rejected"] == {"bad-metrics": 1}  # the NaN-and-extra-key reply, dropped and counted
        honest = [0.5 + 0.1 * p for p in partitions if p != bad]
        assert row["val_accuracy"] == pytest.approx(sum(honest) / len(honest))  # the average of the others only
    if kind == "slow-report":
        nodes = {100 + p: p for p in partitions}
        grid = _ThreadedGrid(lambda m: misbehaving.misbehaving_mod(m, _node_context(nodes[m.metadata.dst_node_id]),
                                                                    _honest_report))
        failed: dict[int, str] = {}
        replies = ask(grid, list(nodes), "query.personalize", lambda _: RecordDict(), 3.0, failed)
        assert failed == {100 + bad: "no reply within 3 s"}  # held past the deadline, and named
        assert sorted(r.metadata.src_node_id for r in replies) == [100 + p for p in partitions if p != bad]


@pytest.mark.parametrize("kind", misbehaving.BEHAVIOURS)
def test_each_simulated_misbehaviour_meets_its_expected_rejection(kind, monkeypatch, tmp_path):
    """simulations/misbehaving.py's bad clients are caught for the reason they claim; the
    kinds whose delta is honest ("bad-eval", "slow-report") misbehave where they claim to."""
    honest = _deltas(8, 3)
    previous = _signed(honest[2], KEYS[2], server_round=ROUND - 1)
    spoiled = misbehaving.spoil(_signed(honest[2], KEYS[2]), kind, KEYS[2], previous, norm_bound=100.0)
    strategy = _strategy(policy=VerifyPolicy(max_update_norm=100.0, max_examples=misbehaving.INFLATED_COUNT),
                         max_weight_ratio=2.0)
    strategy.aggregate_train(ROUND, [_reply(_signed(honest[0], KEYS[0])), _reply(_signed(honest[1], KEYS[1])),
                                     _reply(spoiled)])
    reason = misbehaving.EXPECTED_REASON[kind]
    assert strategy.traffic.rejected == ({reason: 1} if reason else {})
    assert strategy.traffic.accepted == (2 if reason else 3)
    assert strategy.traffic.capped == (kind == "inflated-count")
    if kind in ("bad-eval", "slow-report"):
        plan = misbehaving.choose_plan(3, 0.3, seed=0, behaviours=[kind])
        assert len(plan["partitions"]) == 1
        monkeypatch.setenv(misbehaving.PLAN_ENV, json.dumps(plan))
        _misbehaviour_outside_the_delta(kind, plan, tmp_path)


def test_misbehaviour_plan_picks_the_share_and_rotates_every_kind():
    plan = misbehaving.choose_plan(10, 0.2, seed=0, norm_bound=1.0)
    assert len(plan["partitions"]) == 2
    rounds = -(-len(misbehaving.BEHAVIOURS) // 2)  # enough (round, client) slots for every kind
    seen = {misbehaving.behaviour(plan, int(p), r) for p in plan["partitions"] for r in range(1, rounds + 1)}
    assert seen == set(misbehaving.BEHAVIOURS) - set(misbehaving.OPT_IN)  # a stall and attacks: only when asked for
    assert "slow-report" in misbehaving.choose_plan(10, 0.2, seed=0, behaviours=["slow-report"])["behaviours"]
    honest = next(p for p in range(10) if str(p) not in plan["partitions"])
    assert misbehaving.behaviour(plan, honest, 1) is None
    one = misbehaving.choose_plan(10, 0.1, seed=0, norm_bound=1.0)  # one bad client: every kind once
    expected = misbehaving.expected_rejections(one, len(one["behaviours"]))
    assert expected == {"bad-metrics": 1, "malformed": 1, "no-signature": 1, "non-finite": 1, "norm-too-large": 1,
                        "tensor-hash-mismatch": 1, "unknown-key": 1, "wrong-base": 1, "wrong-round": 1}
    assert "scale" not in misbehaving.choose_plan(10, 0.2, seed=0)["behaviours"]
    with pytest.raises(ConfigError, match="norm bound"):
        misbehaving.choose_plan(10, 0.2, seed=0, behaviours=["scale"])
    with pytest.raises(ConfigError, match="gossip"):
        misbehaving.choose_plan(10, 0.2, seed=0, behaviours=["gossip"])


def test_unknown_strategy_is_named():
    with pytest.raises(ConfigError, match="fedsgd"):
        build_strategy(StrategySettings("fedsgd"), BINDING, {}, DeltaVerifier(Keyring()))


def test_attacks_that_pass_every_check_steer_the_mean_and_not_the_median():
    """A sign-flipped delta and a colluder's (just under the norm bound) are validly signed
    and accepted; averaging follows them, the coordinate-wise median does not."""
    rng = np.random.default_rng(40)
    direction = {"a": rng.normal(size=(2, 3)).astype(np.float32), "b": rng.normal(size=4).astype(np.float32)}
    honest = [{n: v + np.float32(0.01) * rng.normal(size=v.shape).astype(np.float32) for n, v in direction.items()}
              for _ in range(4)]
    flipped = misbehaving.spoil(_signed(honest[3], KEYS[3]), "sign-flip", KEYS[3], None)
    steps = {}
    for name in ("fedavg", "fedmedian"):
        strategy = _strategy(name)
        arrays, _ = strategy.aggregate_train(1, [_reply(_signed(d, KEYS[i])) for i, d in enumerate(honest[:3])]
                                            + [_reply(flipped)])
        assert strategy.traffic.accepted == 4 and not strategy.traffic.rejected
        steps[name] = from_record(arrays)["a"] - GLOBAL["a"]
    np.testing.assert_allclose(steps["fedavg"], direction["a"] / 2, atol=0.02)  # (3u - u) / 4
    np.testing.assert_allclose(steps["fedmedian"], direction["a"], atol=0.02)
    colluding = misbehaving.spoil(_signed(honest[0], KEYS[0]), "colluding", KEYS[0], None, norm_bound=100.0,
                                  global_arrays=GLOBAL)
    strategy = _strategy(policy=VerifyPolicy(max_update_norm=100.0))
    strategy.aggregate_train(1, [_reply(colluding)])
    assert strategy.traffic.accepted == 1 and 98.9 < strategy.traffic.max_norm <= 99.0 + 1e-3


def _spread_honest(count: int, seed: int) -> list[dict[str, np.ndarray]]:
    rng = np.random.default_rng(seed)
    direction = {n: rng.normal(size=GLOBAL[n].shape).astype(np.float32) for n in TRAINED}
    return [{n: v + np.float32(0.5) * rng.normal(size=v.shape).astype(np.float32) for n, v in direction.items()}
            for _ in range(count)]


def test_colluders_send_one_delta_and_krum_picks_it():
    """Two colluders, whatever they trained, sign the same delta (the global adapter's
    trained tensors negated, at 0.99 x the bound): identical deltas are each other's
    nearest neighbours, so Krum, a distance-based defence, chooses theirs."""
    honest = _spread_honest(5, 41)
    replies = [_reply(_signed(d, KEYS[i])) for i, d in enumerate(honest[:3])]
    colluded = [misbehaving.spoil(_signed(honest[i], KEYS[i]), "colluding", KEYS[i], None, norm_bound=20.0,
                                  global_arrays=GLOBAL) for i in (3, 4)]
    payloads = [from_record(c[DELTA_RECORD]) for c in colluded]
    for name in payloads[0]:  # whatever each trained, both sign the same delta
        np.testing.assert_array_equal(payloads[0][name], payloads[1][name])
    strategy = _strategy("krum", policy=VerifyPolicy(max_update_norm=20.0), num_malicious_nodes=2)
    arrays, _ = strategy.aggregate_train(1, replies + [_reply(c) for c in colluded])
    assert strategy.traffic.accepted == 5
    direction = np.concatenate([-GLOBAL[n].ravel() for n in TRAINED])
    expected = direction * (19.8 / np.linalg.norm(direction))
    step = np.concatenate([(from_record(arrays)[n] - GLOBAL[n]).ravel() for n in TRAINED])
    np.testing.assert_allclose(step, expected, rtol=1e-5)


def test_fltrust_gives_no_weight_to_deltas_against_the_roots_and_cuts_large_ones():
    """FLTrust through the real strategy: a root update along the honest direction; the
    sign-flipped delta gets zero trust (counted as distrusted), the x10 one is cut to the
    root's norm, so the step stays near the honest direction."""
    honest = _spread_honest(3, 42)
    root = {n: np.mean([d[n] for d in honest], axis=0) for n in TRAINED}
    flipped = misbehaving.spoil(_signed(honest[0], KEYS[3]), "sign-flip", KEYS[3], None)
    scaled = misbehaving.spoil(_signed(honest[1], KEYS[4]), "scaled", KEYS[4], None)
    asked = []
    strategy = _strategy("fltrust", root_update=lambda arrays, server_round: asked.append(server_round) or root)
    arrays, _ = strategy.aggregate_train(1, [_reply(_signed(d, KEYS[i])) for i, d in enumerate(honest)]
                                        + [_reply(flipped), _reply(scaled)])
    assert asked == [ROUND] and strategy.traffic.accepted == 5 and strategy.traffic.distrusted == 1
    flat_root = np.concatenate([root[n].ravel() for n in TRAINED])
    step = np.concatenate([(from_record(arrays)[n] - GLOBAL[n]).ravel() for n in TRAINED])
    cosine = step @ flat_root / (np.linalg.norm(step) * np.linalg.norm(flat_root))
    assert cosine > 0.9 and np.linalg.norm(step) <= np.linalg.norm(flat_root) * (1 + 1e-5)
    with pytest.raises(ConfigError, match="fltrust"):
        _strategy("fltrust")


def test_fltrust_trains_the_root_update_on_the_server_and_gives_a_flipped_delta_no_weight(tiny_package):
    """FLTrust with the server's real root update (server/fltrust.RootUpdate: the tiny BERT
    trained on a seeded root set), three clients' deltas trained on their own rows by the
    client's code, and a fourth that sends one of them sign-flipped: the flipped one, and
    only it, gets trust 0, and the step agrees with the root's."""
    from fedpeft.client.runtime import Session
    from fedpeft.client.task import local_update
    from fedpeft.core.adapters.spec import TemplateSpec
    from fedpeft.core.adapters.template import create_template
    from fedpeft.core.base.model import load_base
    from fedpeft.core.training.data import DataSpec, client_data
    from fedpeft.core.training.job import Job
    from fedpeft.core.training.settings import TrainSettings
    from fedpeft.core.training.synthetic_data import LABELS
    from fedpeft.core.wire.envelope import DeltaClaim
    from fedpeft.server.fltrust import RootUpdate, root_split

    base = load_base(tiny_package, num_labels=len(LABELS))
    template = create_template(base.model, base.task, TemplateSpec(method="ffa-lora", rank=4), list(LABELS))
    settings, spec = TrainSettings(epochs=1, learning_rate=1e-2, max_length=24), DataSpec(num_clients=4)
    session = Session(base, template, template.attach(base.model))
    job = Job("0" * 64, template.template_id, spec, settings)
    honest = [local_update(session, job, client_data(spec, p).train, dict(template.init), seed=p)[0] for p in range(3)]
    session.model.unload()

    global_arrays = dict(template.init)
    tensors = {n: (global_arrays[n].dtype.str, global_arrays[n].shape) for n in template.trainable_names}
    real_root = RootUpdate(base, template, root_split(spec, 40, seed=0), settings)
    roots = []
    strategy = build_strategy(StrategySettings("fltrust", round_offset=ROUND - 1), BINDING, tensors,
                              DeltaVerifier(_keyring(), VerifyPolicy()),
                              root_update=lambda arrays, r: roots.append(real_root(arrays, r)) or roots[-1])
    list(strategy.configure_train(1, to_record(global_arrays), ConfigRecord(), _Nodes()))
    claim = DeltaClaim(BINDING.for_round(ROUND, tensors_id(global_arrays)), 10, {"train-loss": 1.0, "steps": 1})
    contents = [_content(d, sign_delta(KEYS[i], claim, EncodedDelta.of(d))) for i, d in enumerate(honest)]
    contents.append(misbehaving.spoil(_content(honest[1], sign_delta(KEYS[3], claim, EncodedDelta.of(honest[1]))),
                                      "sign-flip", KEYS[3], None))
    arrays, _ = strategy.aggregate_train(1, [_reply(c) for c in contents])

    assert len(roots) == 1 and strategy.traffic.accepted == 4
    assert strategy.traffic.distrusted == 1 and strategy.traffic.distrusted_clients == ["client-3"]
    names = sorted(tensors)
    flat_root = np.concatenate([roots[0][n].ravel() for n in names])
    assert np.linalg.norm(flat_root) > 0  # the server really trained on its root set
    for d in honest:  # honest clients' deltas point the root's way
        flat = np.concatenate([d[n].ravel() for n in names])
        assert flat @ flat_root > 0
    step = np.concatenate([(from_record(arrays)[n] - global_arrays[n]).ravel() for n in names])
    assert step @ flat_root / (np.linalg.norm(step) * np.linalg.norm(flat_root)) > 0.5


def test_multikrum_averages_the_deltas_closest_to_each_other_and_leaves_out_the_outliers():
    """multikrum (Flower's MultiKrum on global + delta): with 2 assumed malicious of 5 and 3
    to select, the 3 honest deltas are averaged (not one picked, as Krum does) and two far
    outliers, both accepted by every check, have no say."""
    honest = _spread_honest(3, 43)
    rng = np.random.default_rng(44)
    outliers = [{n: (30 * rng.normal(size=GLOBAL[n].shape)).astype(np.float32) for n in TRAINED} for _ in range(2)]
    replies = [_reply(_signed(d, KEYS[i])) for i, d in enumerate(honest + outliers)]
    strategy = _strategy("multikrum", policy=VerifyPolicy(max_update_norm=1000.0), num_malicious_nodes=2,
                         num_nodes_to_select=3)
    arrays, _ = strategy.aggregate_train(1, replies)
    assert strategy.traffic.accepted == 5 and not strategy.traffic.rejected
    for name in TRAINED:
        expected = GLOBAL[name] + sum(d[name] for d in honest) / 3
        np.testing.assert_allclose(from_record(arrays)[name], expected, rtol=1e-5, atol=1e-6)
    np.testing.assert_array_equal(from_record(arrays)["frozen"], GLOBAL["frozen"])


def test_a_check_that_crashes_is_the_rejection_crashed_check_and_the_round_goes_on():
    """Any exception while checking a reply (a bug of ours: here an enrollment entry holding
    a P-256 key where an Ed25519 key belongs, whose verify() takes other arguments) rejects
    that reply as crashed-check; the other replies are aggregated."""
    deltas = _deltas(14, 3)
    keyring = _keyring()
    broken = key_id(KEYS[2].public_key())
    keyring.keys[broken] = EnrolledKey(broken, "client-2", ec.generate_private_key(ec.SECP256R1()).public_key(), 0.0)
    strategy = _strategy()
    strategy.verifier = DeltaVerifier(keyring, strategy.verifier.policy)
    arrays, _ = strategy.aggregate_train(ROUND, [_reply(_signed(d, KEYS[i])) for i, d in enumerate(deltas)])
    assert strategy.traffic.rejected == {"crashed-check": 1} and strategy.traffic.accepted == 2
    (rejection,) = strategy.traffic.rejections
    assert rejection["reason"] == "crashed-check" and "TypeError" in rejection["detail"]
    np.testing.assert_allclose(from_record(arrays)["a"], GLOBAL["a"] + (deltas[0]["a"] + deltas[1]["a"]) / 2, rtol=1e-6)


def _failing_two(kind: str) -> RecordDict:
    """A reply that fails two checks at once (docs/concepts/signed-deltas.md, "Checks, each a named rejection reason"):
    it must be rejected for the one checked first."""
    delta = _deltas(15, 1)[0]
    key, x = KEYS[3], "x" * 64
    if kind == "too-large+no-signature":
        content = _content(delta, None)
        content["padding"] = ConfigRecord({"blob": b"\0" * 200_000})
        return content
    if kind == "no-signature+tensor-hash-mismatch":
        return _content({**delta, "a": delta["a"] + 1}, None)
    if kind == "unknown-key+wrong-round":
        return _signed(delta, Ed25519PrivateKey.generate(), server_round=ROUND - 1)
    if kind == "bad-signature+wrong-run":
        signed = delta_pb2.SignedDelta.FromString(sign_delta(key, _claim(run_id=x), EncodedDelta.of(delta)))
        signed.signature = KEYS[0].sign(signed.header)
        return _content(delta, signed.SerializeToString())
    if kind == "wrong-run+wrong-round":
        return _signed(delta, key, run_id=x, server_round=ROUND - 1)
    if kind == "wrong-round+wrong-base":
        return _signed(delta, key, server_round=ROUND - 1, base_id=x)
    if kind == "wrong-base+wrong-template":
        return _signed(delta, key, base_id=x, template_id=x)
    if kind == "wrong-template+wrong-parent":
        return _signed(delta, key, template_id=x, parent_id=x)
    if kind == "wrong-parent+bad-example-count":
        return _signed(delta, key, parent_id=x, num_examples=0)
    if kind == "bad-example-count+bad-encoding":
        return _signed(delta, key, DeltaEncoding("fp16"), num_examples=0)
    if kind == "bad-encoding+unexpected-tensor":
        return _signed({**delta, "frozen": np.zeros(3, np.float32)}, key, DeltaEncoding("fp16"))
    if kind == "unexpected-tensor+missing-tensor":
        return _signed({"a": delta["a"], "frozen": np.zeros(3, np.float32)}, key)
    if kind == "missing-tensor+bad-dtype":
        return _edited_header({"a": delta["a"]}, key, lambda h: setattr(h.tensors[0], "dtype", "<f8"))
    if kind == "bad-dtype+bad-shape":
        def edit(header):
            header.tensors[0].dtype = "<f8"
            header.tensors[0].shape[:] = [3, 2]
        return _edited_header(delta, key, edit)
    if kind == "bad-shape+tensor-hash-mismatch":
        content = _signed({**delta, "a": delta["a"].reshape(3, 2)}, key)
        content[DELTA_RECORD] = EncodedDelta.of({**delta, "a": delta["a"] + 1}).record()
        return content
    if kind == "tensor-hash-mismatch+non-finite":
        content = _signed(delta, key)
        content[DELTA_RECORD] = EncodedDelta.of({**delta, "b": np.full(4, np.nan, np.float32)}).record()
        return content
    if kind == "non-finite+norm-too-large":
        return _signed({"a": delta["a"] * 1000, "b": np.array([0, np.inf, 0, 0], np.float32)}, key)
    raise AssertionError(kind)


ORDER = ["too-large+no-signature", "no-signature+tensor-hash-mismatch", "unknown-key+wrong-round",
         "bad-signature+wrong-run", "wrong-run+wrong-round", "wrong-round+wrong-base", "wrong-base+wrong-template",
         "wrong-template+wrong-parent", "wrong-parent+bad-example-count", "bad-example-count+bad-encoding",
         "bad-encoding+unexpected-tensor", "unexpected-tensor+missing-tensor", "missing-tensor+bad-dtype",
         "bad-dtype+bad-shape", "bad-shape+tensor-hash-mismatch", "tensor-hash-mismatch+non-finite",
         "non-finite+norm-too-large"]


@pytest.mark.parametrize("kind", ORDER)
def test_a_reply_failing_two_checks_is_rejected_for_the_one_checked_first(kind):
    strategy = _strategy(policy=VerifyPolicy(max_update_norm=100.0, max_examples=1000, max_message_bytes=100_000))
    good = _deltas(16, 1)[0]
    strategy.aggregate_train(ROUND, [_reply(_signed(good, KEYS[0])), _reply(_failing_two(kind))])
    first = kind.split("+")[0]
    assert strategy.traffic.rejected == {first: 1} and strategy.traffic.accepted == 1


def test_a_second_delta_from_one_key_that_fails_a_check_is_rejected_for_that_check_not_as_a_duplicate():
    """duplicate is the last check: it applies to deltas that passed every other one."""
    deltas = _deltas(17, 2)
    strategy = _strategy()
    strategy.aggregate_train(ROUND, [_reply(_signed(deltas[0], KEYS[0])),
                                     _reply(_signed({n: v * 1000 for n, v in deltas[1].items()}, KEYS[0])),
                                     _reply(_signed(deltas[1], KEYS[0]))])
    assert strategy.traffic.rejected == {"norm-too-large": 1, "duplicate": 1} and strategy.traffic.accepted == 1
