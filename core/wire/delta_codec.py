"""One contiguous buffer per delta: the trained tensors as one encoded vector.

A delta travels as its tensors concatenated in manifest order (sorted names) into one
float vector, encoded as fp32, fp16 or int8 with one float32 scale per block of values.
The client hashes and signs the encoded bytes once; the server checks one length, one
SHA-256 and decodes one view, instead of 26 small tensors each with its own header,
hash and Python round trip (bench/verify_throughput.py measures the difference).

Written by hand: no library we use encodes a flat signed vector. safetensors and
Flower's ArrayRecord both carry one header per tensor; torchao and
onnxruntime.quantization quantize model weights inside a graph, not a message. Torch-free:
devices encode their deltas with it too.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from functools import cached_property

import numpy as np

ENCODINGS = ("fp32", "fp16", "int8")
SCALE = np.dtype("<f4")  # int8: one little-endian float32 scale per block, ahead of the values


class BadEncoding(ValueError):
    """An encoding or block size that is not one of ours."""


@dataclass(frozen=True)
class DeltaEncoding:
    """How a delta's floats are encoded on the way up (`[federation] delta_encoding`).

    int8 is symmetric per block of `block` values: scale = max|x| / 127, the values
    rounded to the nearest step. The last block is padded with zeros.
    """

    kind: str = "fp32"
    block: int = 128  # int8 only

    def __post_init__(self) -> None:
        if self.kind not in ENCODINGS:
            raise BadEncoding(f"delta encoding {self.kind!r}; choose one of {list(ENCODINGS)}")
        if not 8 <= self.block <= 1 << 20:
            raise BadEncoding(f"int8 block size {self.block}; allowed 8..{1 << 20}")

    def blocks(self, count: int) -> int:
        return math.ceil(count / self.block)

    def payload_bytes(self, count: int) -> int:
        """The exact size of `count` values encoded: a reply of any other size is refused."""
        if self.kind == "fp32":
            return 4 * count
        if self.kind == "fp16":
            return 2 * count
        blocks = self.blocks(count)
        return SCALE.itemsize * blocks + blocks * self.block

    def encode(self, flat: np.ndarray) -> bytes:
        if self.kind == "fp32":
            return flat.astype("<f4", copy=False).tobytes()
        if self.kind == "fp16":
            return flat.astype("<f2").tobytes()
        padded = np.zeros(self.blocks(flat.size) * self.block, np.float32)
        padded[:flat.size] = flat
        rows = padded.reshape(-1, self.block)
        scales = (np.abs(rows).max(axis=1) / 127).astype(SCALE)
        steps = np.where(scales > 0, scales, 1)[:, None]
        values = np.clip(np.rint(rows / steps), -127, 127).astype(np.int8)
        return scales.tobytes() + values.tobytes()

    def decode(self, payload: np.ndarray, count: int) -> np.ndarray:
        """`count` float32 values from a payload already checked to be `payload_bytes(count)`
        long (a uint8 view); fp32 decodes to a view, without a copy."""
        if self.kind == "fp32":
            return payload.view("<f4")
        if self.kind == "fp16":
            return payload.view("<f2").astype(np.float32)
        blocks = self.blocks(count)
        scales = payload[:SCALE.itemsize * blocks].view(SCALE)
        values = payload[SCALE.itemsize * blocks:].view(np.int8).reshape(blocks, self.block)
        return (values * scales[:, None]).reshape(-1)[:count]


@dataclass(frozen=True)
class DeltaLayout:
    """Where each trained tensor lies in the flat vector: sorted names, their shapes."""

    names: tuple[str, ...]
    shapes: tuple[tuple[int, ...], ...]

    @classmethod
    def of(cls, tensors: Mapping[str, tuple[int, ...]]) -> DeltaLayout:
        names = tuple(sorted(tensors))
        return cls(names, tuple(tuple(int(d) for d in tensors[n]) for n in names))

    @cached_property
    def offsets(self) -> tuple[int, ...]:
        ends = np.cumsum([0, *(math.prod(s) for s in self.shapes)])
        return tuple(int(e) for e in ends)

    @property
    def count(self) -> int:
        return self.offsets[-1]

    def flatten(self, arrays: Mapping[str, np.ndarray]) -> np.ndarray:
        return np.concatenate([np.asarray(arrays[n], np.float32).reshape(-1) for n in self.names]) \
            if self.names else np.zeros(0, np.float32)

    def split(self, flat: np.ndarray) -> dict[str, np.ndarray]:
        """Named views into `flat` (no copies)."""
        return {n: flat[self.offsets[i]:self.offsets[i + 1]].reshape(self.shapes[i]) for i, n in enumerate(self.names)}
