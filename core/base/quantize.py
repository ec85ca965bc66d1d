"""Weight quantization of the frozen base, for transport and in memory.

Transport: 2-D float tensors (linear weights, embeddings) travel as symmetric integers
with per-row (int8) or per-group (int4) scales computed by torchao's affine quantization
primitives. Packing two int4 values into one byte is ours: torchao has no portable
on-disk format for it that safetensors can hold.

In memory: linear layers are quantized with torchao (`Int8WeightOnlyConfig`,
`IntxWeightOnlyConfig` for int4) so the base stays frozen and small while PEFT trains
adapters on top of it.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
import torch
from torchao.quantization import Int8WeightOnlyConfig, IntxWeightOnlyConfig, quantize_
from torchao.quantization.granularity import PerGroup
from torchao.quantization.quant_primitives import (
    MappingType,
    choose_qparams_affine,
    dequantize_affine,
    quantize_affine,
)

from fedpeft.core.choices import QUANTIZATION_MODES, check_choice

INT4_GROUP_SIZE = 32
_RANGES = {"int8": (-128, 127), "int4": (-8, 7)}


def check_mode(mode: str) -> str:
    return check_choice("quantization", mode, QUANTIZATION_MODES)


def _block_size(mode: str, shape: tuple[int, ...]) -> tuple[int, int]:
    if mode == "int8":
        return (1, shape[1])
    if shape[1] % INT4_GROUP_SIZE:
        return (1, shape[1])
    return (1, INT4_GROUP_SIZE)


def _quantizable(mode: str, tensor: torch.Tensor) -> bool:
    return mode != "none" and tensor.dim() == 2 and tensor.is_floating_point()


def encode_tensors(state: Mapping[str, torch.Tensor], mode: str) -> dict[str, np.ndarray]:
    """Turn a float state dict into the arrays that travel (`name`, or `name.q`/`name.scale`)."""
    check_mode(mode)
    out: dict[str, np.ndarray] = {}
    for name, tensor in state.items():
        tensor = tensor.detach().to(torch.float32).contiguous()
        if not _quantizable(mode, tensor):
            out[name] = tensor.numpy().copy()
            continue
        qmin, qmax = _RANGES[mode]
        block = _block_size(mode, tuple(tensor.shape))
        scale, zero = choose_qparams_affine(
            tensor, MappingType.SYMMETRIC, block, torch.int8, quant_min=qmin, quant_max=qmax
        )
        q = quantize_affine(tensor, block, scale, zero, torch.int8, quant_min=qmin, quant_max=qmax)
        q_np = q.numpy()
        out[f"{name}.q"] = _pack_int4(q_np) if mode == "int4" else q_np
        out[f"{name}.scale"] = scale.reshape(tensor.shape[0], -1).numpy().astype(np.float32)
    return out


def decode_tensors(arrays: Mapping[str, np.ndarray], mode: str) -> dict[str, torch.Tensor]:
    """Inverse of `encode_tensors`: float32 tensors holding the quantized values."""
    check_mode(mode)
    out: dict[str, torch.Tensor] = {}
    for name, array in arrays.items():
        if name.endswith(".scale"):
            continue
        if not name.endswith(".q"):
            out[name] = torch.from_numpy(np.array(array, dtype=np.float32))
            continue
        base = name[: -len(".q")]
        scale = torch.from_numpy(np.asarray(arrays[f"{base}.scale"], dtype=np.float32))
        q_np = _unpack_int4(array, scale.shape[1] * INT4_GROUP_SIZE) if mode == "int4" else array
        q = torch.from_numpy(np.ascontiguousarray(q_np, dtype=np.int8))
        qmin, qmax = _RANGES[mode]
        block = (1, q.shape[1] // scale.shape[1])
        out[base] = dequantize_affine(
            q, block, scale.reshape(-1), None, torch.int8, quant_min=qmin, quant_max=qmax,
            output_dtype=torch.float32,
        )
    return out


def _pack_int4(q: np.ndarray) -> np.ndarray:
    """Two signed 4-bit values per byte, low nibble first (hand-written: see module doc)."""
    flat = (q.astype(np.int16) & 0x0F).astype(np.uint8).reshape(q.shape[0], -1)
    if flat.shape[1] % 2:
        flat = np.pad(flat, ((0, 0), (0, 1)))
    return (flat[:, 0::2] | (flat[:, 1::2] << 4)).astype(np.uint8)


def _unpack_int4(packed: np.ndarray, width: int) -> np.ndarray:
    packed = np.asarray(packed, dtype=np.uint8)
    low, high = packed & 0x0F, packed >> 4
    both = np.empty((packed.shape[0], packed.shape[1] * 2), dtype=np.int16)
    both[:, 0::2], both[:, 1::2] = low, high
    both = np.where(both > 7, both - 16, both)
    return both[:, :width].astype(np.int8)


def quantize_in_memory(model: torch.nn.Module, mode: str, skip: tuple[str, ...]) -> None:
    """Quantize the model's linear layers in place with torchao, except modules in `skip`."""
    check_mode(mode)
    if mode == "none":
        return
    config = (
        Int8WeightOnlyConfig()
        if mode == "int8"
        else IntxWeightOnlyConfig(weight_dtype=torch.int4, granularity=PerGroup(INT4_GROUP_SIZE))
    )

    def wanted(module: torch.nn.Module, fqn: str) -> bool:
        return isinstance(module, torch.nn.Linear) and not any(s in fqn.split(".") for s in skip)

    quantize_(model, config, filter_fn=wanted)
