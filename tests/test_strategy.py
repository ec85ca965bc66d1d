"""The server's delta aggregation, fed real Flower messages."""

import numpy as np
import pytest
from flwr.app import Message, MetricRecord, RecordDict
from flwr.supercore.task_identity import TaskIdentity

from fedpeft.core.errors import ConfigError
from fedpeft.core.records import from_record, to_record
from fedpeft.server.strategy import RoundTraffic, build_strategy

GLOBAL = {
    "a": np.arange(6, dtype=np.float32).reshape(2, 3),
    "b": np.ones(4, dtype=np.float32),
    "frozen": np.full(3, 7.0, dtype=np.float32),
}


@pytest.fixture(autouse=True)
def _flower_run():
    """Messages need the run and node they belong to, as inside a ServerApp."""
    TaskIdentity.run_id, TaskIdentity.node_id, TaskIdentity.task_id = 1, 0, 1
    yield
    TaskIdentity.run_id = TaskIdentity.node_id = TaskIdentity.task_id = None


def _reply(delta: dict[str, np.ndarray], examples: int) -> Message:
    content = RecordDict({"arrays": to_record(delta), "metrics": MetricRecord({"num-examples": examples, "train-loss": 1.0})})
    return Message(content, dst_node_id=0, message_type="train")


def _strategy(name: str = "fedavg", **options):
    strategy = build_strategy(name, 1.0, 1, options)
    strategy.global_arrays = {k: v.copy() for k, v in GLOBAL.items()}
    strategy.traffic = RoundTraffic()
    return strategy


def _deltas(seed: int, count: int) -> list[dict[str, np.ndarray]]:
    rng = np.random.default_rng(seed)
    return [{"a": rng.normal(size=(2, 3)).astype(np.float32), "b": rng.normal(size=4).astype(np.float32)}
            for _ in range(count)]


def test_fedavg_of_deltas_is_the_example_weighted_mean():
    deltas, weights = _deltas(0, 3), [10, 30, 60]
    arrays, metrics = _strategy().aggregate_train(1, [_reply(d, w) for d, w in zip(deltas, weights)])
    result = from_record(arrays)
    total = sum(weights)
    for name in ("a", "b"):
        expected = GLOBAL[name] + sum(w / total * d[name] for d, w in zip(deltas, weights))
        np.testing.assert_allclose(result[name], expected, rtol=1e-6)
    np.testing.assert_array_equal(result["frozen"], GLOBAL["frozen"])
    assert metrics["train-loss"] == pytest.approx(1.0)


def test_fedmedian_takes_the_coordinate_wise_median_delta():
    deltas = _deltas(1, 5)
    arrays, _ = _strategy("fedmedian").aggregate_train(1, [_reply(d, 1) for d in deltas])
    expected = GLOBAL["a"] + np.median(np.stack([d["a"] for d in deltas]), axis=0)
    np.testing.assert_allclose(from_record(arrays)["a"], expected, rtol=1e-6)


def test_fedadam_moves_the_global_along_the_mean_delta():
    deltas = _deltas(2, 2)
    strategy = _strategy("fedadam", eta=0.1)
    strategy.current_arrays = {k: v.copy() for k, v in GLOBAL.items()}
    arrays, _ = strategy.aggregate_train(1, [_reply(d, 1) for d in deltas])
    step = from_record(arrays)["a"] - GLOBAL["a"]
    mean = (deltas[0]["a"] + deltas[1]["a"]) / 2
    assert np.all(np.sign(step) == np.sign(mean))


@pytest.mark.parametrize("bad, reason", [
    ({"a": np.zeros((3, 2), np.float32)}, "bad-shape"),
    ({"a": np.zeros((2, 3), np.float64)}, "bad-shape"),
    ({"zzz": np.zeros(2, np.float32)}, "unexpected-tensor"),
    ({"a": np.full((2, 3), np.nan, np.float32)}, "non-finite"),
])
def test_bad_deltas_are_rejected_and_the_rest_aggregated(bad, reason):
    good = _deltas(3, 2)
    strategy = _strategy()
    arrays, _ = strategy.aggregate_train(1, [_reply(good[0], 1), _reply(bad, 50), _reply(good[1], 1)])
    assert strategy.traffic.rejected == {reason: 1}
    assert strategy.traffic.accepted == 2
    expected = GLOBAL["a"] + (good[0]["a"] + good[1]["a"]) / 2
    np.testing.assert_allclose(from_record(arrays)["a"], expected, rtol=1e-6)


def test_unknown_strategy_is_named():
    with pytest.raises(ConfigError, match="fedsgd"):
        build_strategy("fedsgd", 1.0, 1)
