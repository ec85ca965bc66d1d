"""Flower records: the fast tensor decoding must agree with Flower's own parser."""

import numpy as np
import pytest
from flwr.app import Array

from fedpeft.core.wire.records import decode_array, from_record, to_record

ARRAYS = [
    np.random.default_rng(0).normal(size=(8, 384)).astype(np.float32),
    np.arange(-5, 5, dtype=np.int8),
    np.ones((), np.float64),
    np.zeros((0, 3), np.float16),
    np.array([True, False]),
    np.arange(6, dtype=">f4").reshape(2, 3),
]


@pytest.mark.parametrize("array", ARRAYS, ids=lambda a: f"{a.dtype.str}{a.shape}")
def test_decode_matches_flower(array):
    decoded = decode_array(Array(array))
    expected = Array(array).numpy()
    assert decoded.dtype == expected.dtype and decoded.shape == expected.shape
    np.testing.assert_array_equal(decoded, expected)
    assert not decoded.flags.writeable  # a view over the message bytes, not a copy


def test_unusual_layouts_fall_back_to_flowers_parser():
    fortran = np.asfortranarray(np.arange(12, dtype=np.float32).reshape(3, 4))
    decoded = decode_array(Array(fortran))
    np.testing.assert_array_equal(decoded, fortran)
    # metadata that disagrees with the bytes: the bytes' own header wins, as in Flower
    honest = Array(np.arange(4, dtype=np.float32))
    lying = Array(dtype="float64", shape=(2,), stype=honest.stype, data=honest.data)
    np.testing.assert_array_equal(decode_array(lying), np.arange(4, dtype=np.float32))


def test_record_round_trip():
    arrays = {f"t{i}": a for i, a in enumerate(ARRAYS)}
    back = from_record(to_record(arrays))
    assert set(back) == set(arrays)
    for name, array in arrays.items():
        np.testing.assert_array_equal(back[name], array)
