import numpy as np
import pytest
import torch

from fedpeft.core.base.quantize import _pack_int4, _unpack_int4, decode_tensors, encode_tensors, quantize_in_memory
from fedpeft.core.errors import ConfigError


def _state(seed: int = 0) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return {"w": torch.randn(16, 64, generator=g), "b": torch.randn(16, generator=g)}


@pytest.mark.parametrize("mode,tolerance", [("int8", 0.02), ("int4", 0.35)])
def test_roundtrip_error_is_bounded_and_vectors_stay_exact(mode, tolerance):
    state = _state()
    encoded = encode_tensors(state, mode)
    assert encoded["w.q"].dtype == (np.int8 if mode == "int8" else np.uint8)
    decoded = decode_tensors(encoded, mode)
    assert torch.equal(decoded["b"], state["b"])
    assert (decoded["w"] - state["w"]).abs().max() < tolerance
    assert not torch.equal(decoded["w"], state["w"])


def test_int4_packs_two_values_per_byte_and_unpacks_exactly():
    q = np.random.default_rng(0).integers(-8, 8, size=(5, 31), dtype=np.int8)
    packed = _pack_int4(q)
    assert packed.shape == (5, 16)
    np.testing.assert_array_equal(_unpack_int4(packed, 31), q)


def test_quantizing_in_memory_stays_within_one_step_of_transported_integers():
    """torchao re-quantizes the decoded weights to the int8 values that travelled (its scale
    is amax/127.5, so a value on a rounding boundary may move by one step) and leaves
    skipped modules in float."""
    linear = torch.nn.Linear(64, 16, bias=False)
    encoded = encode_tensors({"weight": linear.weight.detach()}, "int8")
    decoded = decode_tensors(encoded, "int8")["weight"]
    model = torch.nn.Sequential(torch.nn.Linear(64, 16, bias=False), torch.nn.Linear(16, 2))
    model[0].weight.data.copy_(decoded)
    quantize_in_memory(model, "int8", skip=("1",))
    moved = (model[0].weight.qdata.int() - torch.from_numpy(encoded["weight.q"]).int()).abs()
    assert moved.max() <= 1 and (moved > 0).float().mean() < 0.02
    assert type(model[1].weight) is torch.nn.Parameter  # skipped module stays float
    x = torch.eye(64)
    assert torch.allclose(model[0](x), x @ decoded.T, rtol=1e-2, atol=1e-3)


def test_unknown_mode_is_named():
    with pytest.raises(ConfigError, match="int3"):
        encode_tensors(_state(), "int3")
