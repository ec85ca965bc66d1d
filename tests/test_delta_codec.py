"""Deltas as one encoded payload (core/wire/delta_codec.py): round trips, error bounds,
the server's checks on encoded replies, and an average that does not depend on arrival order."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp
from test_strategy import GLOBAL, KEYS, ROUND, _deltas, _flower_run, _reply, _signed, _strategy  # noqa: F401

from fedpeft.core.trust.hashing import tensors_id
from fedpeft.core.wire.delta_codec import BadEncoding, DeltaEncoding, DeltaLayout
from fedpeft.core.wire.records import from_record
from fedpeft.server.verify import VerifyPolicy


@given(values=hnp.arrays(np.float32, st.integers(1, 700), elements=st.floats(-1e3, 1e3, width=32)),
       kind=st.sampled_from(["fp32", "fp16", "int8"]), block=st.sampled_from([8, 64, 128, 256]))
def test_every_encoding_round_trips_within_its_step(values, kind, block):
    encoding = DeltaEncoding(kind, block)
    payload = encoding.encode(values)
    assert len(payload) == encoding.payload_bytes(values.size)
    decoded = encoding.decode(np.frombuffer(payload, np.uint8), values.size)
    assert decoded.dtype == np.float32 and decoded.shape == values.shape
    if kind == "fp32":
        np.testing.assert_array_equal(decoded, values)
    elif kind == "fp16":
        np.testing.assert_allclose(decoded, values, rtol=1e-3, atol=1e-4)
    else:  # half a step of its block's scale at most; a block of subnormals (found by the
        # 3,000-case run: 1e-45 alone) has a scale that underflows, and decodes to 0
        padded = np.zeros(encoding.blocks(values.size) * block, np.float32)
        padded[:values.size] = np.abs(values)
        step = np.repeat(padded.reshape(-1, block).max(axis=1) / 127, block)[:values.size]
        tiny = np.finfo(np.float32).tiny  # the smallest normal float32
        assert np.all(np.abs(decoded - values) <= step * 0.5 + 1e-6 * np.abs(values) + tiny)


def test_int8_is_a_quarter_of_fp32_plus_one_scale_a_block():
    count = 75_268  # MiniLM LoRA r=8 with its head
    assert DeltaEncoding("fp32").payload_bytes(count) == 4 * count
    assert DeltaEncoding("fp16").payload_bytes(count) == 2 * count
    assert DeltaEncoding("int8", 128).payload_bytes(count) == 589 * 128 + 589 * 4


def test_a_layout_splits_the_flat_vector_into_named_views():
    layout = DeltaLayout.of({"b": (4,), "a": (2, 3)})
    assert layout.names == ("a", "b") and layout.offsets == (0, 6, 10)
    flat = layout.flatten(GLOBAL)
    parts = layout.split(flat)
    np.testing.assert_array_equal(parts["a"], GLOBAL["a"])
    assert np.shares_memory(parts["b"], flat)


@pytest.mark.parametrize("kind, block", [("fp8", 128), ("int8", 4)])
def test_an_unknown_encoding_or_block_is_named(kind, block):
    with pytest.raises(BadEncoding, match=kind if kind == "fp8" else "block"):
        DeltaEncoding(kind, block)


@pytest.mark.parametrize("kind", ["fp16", "int8"])
def test_fedavg_of_encoded_deltas_is_within_the_encoding_step_of_fp32(kind):
    encoding = DeltaEncoding(kind, 8)
    deltas, weights = _deltas(21, 3), [10, 30, 60]
    exact, _ = _strategy().aggregate_train(ROUND, [_reply(_signed(d, KEYS[i], num_examples=w))
                                                   for i, (d, w) in enumerate(zip(deltas, weights))])
    strategy = _strategy(encoding=encoding)
    encoded, _ = strategy.aggregate_train(ROUND, [_reply(_signed(d, KEYS[i], encoding, num_examples=w))
                                                  for i, (d, w) in enumerate(zip(deltas, weights))])
    assert strategy.traffic.accepted == 3
    for name in ("a", "b"):
        np.testing.assert_allclose(from_record(encoded)[name], from_record(exact)[name], atol=0.02)
        assert not np.array_equal(from_record(encoded)[name], from_record(exact)[name])


def test_the_average_does_not_depend_on_the_order_replies_arrive_in():
    """Float sums depend on their order: (1e30 + 1) - 1e30 is 0, (1e30 - 1e30) + 1 is 1.
    The server sums in the signers' order, so every arrival order gives the same adapter hash."""
    deltas = _deltas(22, 3)
    for delta, value in zip(deltas, (1e30, 1.0, -1e30)):
        delta["a"][0, 0] = value
    replies = [_reply(_signed(d, KEYS[i])) for i, d in enumerate(deltas)]
    ids = set()
    for order in ([0, 1, 2], [0, 2, 1], [2, 1, 0], [1, 0, 2]):
        arrays, _ = _strategy(policy=VerifyPolicy()).aggregate_train(ROUND, [replies[i] for i in order])
        ids.add(tensors_id(from_record(arrays)))
    assert len(ids) == 1
