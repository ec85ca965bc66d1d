"""Replies crafted by an enrolled, validly signing client (issue: hostile clients). Each
case was reproduced against commit 36a7475, where it ended the run or steered the average;
here it is a named rejection and the round goes on."""

from __future__ import annotations

import io
import zipfile

import numpy as np
import pytest
from flwr.app import Array, ArrayRecord, ConfigRecord, MetricRecord, RecordDict
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from test_strategy import GLOBAL, KEYS, ROUND, TRAINED, _claim, _deltas, _flower_run, _reply, _signed, _strategy  # noqa: F401  (_flower_run: the autouse fixture that sets up a Flower run)

from fedpeft.core.wire.envelope import DELTA_RECORD, PAYLOAD_KEY, delta_content
from fedpeft.core.wire.records import from_record
from fedpeft.server import replies
from fedpeft.server.replies import BadReply
from fedpeft.server.verify import REASONS, VerifyPolicy

HONEST = _deltas(11, 3)


def _crafted(kind: str) -> RecordDict:
    """An honestly signed header for a delta whose payload then travels as `kind`."""
    delta = _deltas(12, 1)[0]
    content = _signed(delta, KEYS[3])
    good = content.array_records[DELTA_RECORD][PAYLOAD_KEY]
    npz = io.BytesIO()
    with zipfile.ZipFile(npz, "w") as archive:
        archive.writestr("payload.npy", good.data)
    header = good.data.replace(b"(40,)", b"(1099511627776,)")
    assert header != good.data
    arrays = {
        "not-numpy": Array(dtype=good.dtype, shape=good.shape, stype="torch.Tensor", data=good.data),
        "npz-bytes": Array(dtype=good.dtype, shape=good.shape, stype=good.stype, data=npz.getvalue()),
        "huge-npy-header": Array(dtype=good.dtype, shape=good.shape, stype=good.stype, data=header),
        "empty-data": Array(dtype=good.dtype, shape=good.shape, stype=good.stype, data=b""),
        "pickle": Array(dtype="object", shape=good.shape, stype=good.stype,
                        data=b"\x93NUMPY\x01\x00v\x00{'descr': '|O', 'fortran_order': False, 'shape': (40,), }"),
    }
    content[DELTA_RECORD] = ArrayRecord({PAYLOAD_KEY: arrays[kind]})
    return content


# Bytes that are not the .npy serialization signed for are malformed; a tensor announced as
# another dtype than the signed one (the pickle's "object") is not what was signed.
CRAFTED_REASON = {"not-numpy": "malformed", "npz-bytes": "malformed", "huge-npy-header": "malformed",
                  "empty-data": "malformed", "pickle": "tensor-hash-mismatch"}


@pytest.mark.parametrize("kind", sorted(CRAFTED_REASON))
def test_a_crafted_tensor_under_an_honest_signature_is_refused_for_its_reason_and_the_round_goes_on(kind):
    strategy = _strategy()
    contents = [_signed(d, KEYS[i]) for i, d in enumerate(HONEST)] + [_crafted(kind)]
    arrays, _ = strategy.aggregate_train(ROUND, [_reply(c) for c in contents])
    assert strategy.traffic.rejected in ({"malformed": 1}, {"tensor-hash-mismatch": 1})
    assert strategy.traffic.rejected == {CRAFTED_REASON[kind]: 1}
    assert strategy.traffic.accepted == 3 and arrays is not None


@pytest.mark.parametrize("name", ["fedavg", "fedmedian", "fedtrimmedavg", "krum", "fedadam", "fedyogi", "fedavgm"])
def test_an_extra_signed_metric_is_a_rejection_not_a_crash(name):
    strategy = _strategy(name)
    contents = [_signed(d, KEYS[i]) for i, d in enumerate(HONEST)]
    odd = _deltas(13, 1)[0]
    claim = _claim()
    claim = type(claim)(claim.binding, 10, {"train-loss": 1.0, "steps": 1, "extra": 5.0})
    contents.append(delta_content(KEYS[3], claim, odd))
    arrays, metrics = strategy.aggregate_train(ROUND, [_reply(c) for c in contents])
    assert strategy.traffic.rejected == {"bad-metrics": 1} and arrays is not None


def _evaluate(examples, **metrics) -> RecordDict:
    return RecordDict({"metrics": MetricRecord({"num-examples": examples, **metrics})})


@pytest.mark.parametrize("name", ["fedavg", "fedmedian", "krum", "fedadam"])
def test_evaluate_replies_with_extra_keys_nan_or_huge_counts_are_dropped_and_counted(name):
    strategy = _strategy(name, max_weight_ratio=0)
    seen = {}
    strategy.hooks = type(strategy.hooks)(on_evaluate=lambda r, m, rejected: seen.update(rejected))
    good = [_evaluate(10, **{"eval-loss": 0.5, "eval-acc": 0.8}), _evaluate(30, **{"eval-loss": 0.5, "eval-acc": 0.6})]
    bad = [_evaluate(10, **{"eval-loss": 0.5, "eval-acc": 0.8, "extra": 1.0}),
           _evaluate(10, **{"eval-loss": float("nan"), "eval-acc": 0.8}),
           _evaluate(10**9, **{"eval-loss": 0.5, "eval-acc": 1.0})]
    metrics = strategy.aggregate_evaluate(ROUND, [_reply(c) for c in good + bad])
    assert metrics["eval-acc"] == pytest.approx((10 * 0.8 + 30 * 0.6) / 40)
    assert seen == {"bad-metrics": 2, "bad-example-count": 1}


def test_one_inflated_example_count_no_longer_buys_the_average():
    """Three honest clients with 60 examples and one signing 100,000 (the allowed maximum)
    with a small norm: without a cap the new global moves along the attacker's delta
    (cosine 1.000 at 36a7475); capped at twice the round's median count it weighs 40%."""
    honest, attacker = _deltas(21, 3), _deltas(22, 1)[0]

    def update(ratio: float) -> np.ndarray:
        strategy = _strategy(policy=VerifyPolicy(max_update_norm=100.0, max_examples=100_000), max_weight_ratio=ratio)
        contents = [_signed(d, KEYS[i], num_examples=60) for i, d in enumerate(honest)]
        contents.append(_signed(attacker, KEYS[3], num_examples=100_000))
        arrays, _ = strategy.aggregate_train(ROUND, [_reply(c) for c in contents])
        new = from_record(arrays)
        return np.concatenate([(new[n] - GLOBAL[n]).ravel() for n in TRAINED])

    target = np.concatenate([attacker[n].ravel() for n in TRAINED])

    def cosine(u: np.ndarray) -> float:
        return float(u @ target / np.linalg.norm(u) / np.linalg.norm(target))

    assert cosine(update(0)) > 0.999
    capped = update(2.0)
    expected = (sum(np.concatenate([d[n].ravel() for n in TRAINED]) for d in honest) * 60 + target * 120) / 300
    np.testing.assert_allclose(capped, expected, rtol=1e-5, atol=1e-6)
    assert cosine(capped) < 0.9


@pytest.mark.parametrize("content,reason", [
    (RecordDict({}), "malformed"),                                                      # no status record
    (RecordDict({"status": ConfigRecord({"has-base": "yes", "has-template": True})}), "malformed"),
    (RecordDict({"status": ConfigRecord({"has-base": True, "has-template": True, "device": 1})}), "malformed"),
])
def test_a_status_reply_without_its_record_is_a_bad_reply(content, reason):
    with pytest.raises(BadReply) as caught:
        replies.status_reply(content)
    assert caught.value.reason == reason


@settings(suppress_health_check=[HealthCheck.too_slow])  # examples: FEDPEFT_FUZZ_EXAMPLES (conftest.py)
@given(stype=st.sampled_from(["numpy.ndarray", "torch.Tensor", ""]), dtype=st.sampled_from(["float32", "<f4", "object",
       "int64", "xx", "float32,float32", "uint8"]), shape=st.lists(st.integers(-3, 2**41), max_size=3),
       data=st.binary(max_size=300), cut=st.integers(0, 200))
def test_fuzzed_tensors_under_an_honest_signature_are_accepted_or_named(stype, dtype, shape, data, cut):
    """Any Array bytes and metadata: accepted if they are the signed tensor, else a named reason."""
    strategy = _strategy()
    content = _signed(HONEST[0], KEYS[0])
    good = content.array_records[DELTA_RECORD][PAYLOAD_KEY]
    mixed = good.data[:cut] + data
    content[DELTA_RECORD] = ArrayRecord({PAYLOAD_KEY: Array(dtype=dtype, shape=tuple(shape), stype=stype, data=mixed)})
    strategy.aggregate_train(ROUND, [_reply(content)])
    assert set(strategy.traffic.rejected) <= set(REASONS)
    assert strategy.traffic.accepted + sum(strategy.traffic.rejected.values()) == 1


@given(metrics=st.dictionaries(st.sampled_from(["num-examples", "eval-loss", "eval-acc", "x", "eval-acc "]),
                               st.one_of(st.integers(-2**63, 2**63 - 1), st.floats(allow_nan=True)), max_size=5),
       config=st.dictionaries(st.sampled_from(["has-base", "has-template", "device", "installed", "name"]),
                              st.one_of(st.booleans(), st.text(max_size=200), st.integers()), max_size=4))
def test_fuzzed_replies_are_parsed_or_refused_by_name(metrics, config):
    content = RecordDict({"metrics": MetricRecord(metrics), "status": ConfigRecord(config),
                          "client": ConfigRecord(config)})
    for parse in (lambda: replies.evaluate_reply(content, 1000), lambda: replies.status_reply(content),
                  lambda: replies.install_reply(content),
                  lambda: replies.personalize_reply(content, ("global",), 1000)):
        try:
            parse()
        except BadReply as bad:
            assert bad.reason in replies.BAD_REPLY_REASONS
