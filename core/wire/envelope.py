"""The signed delta envelope (protos/delta.proto): what a client signs, and how it travels.

The client serializes a `DeltaHeader` once, signs those bytes, and sends them unchanged
inside a `SignedDelta`; the verifier (server/verify.py) checks the signature over the
bytes it received before parsing them. The tensors travel beside the envelope in a
Flower ArrayRecord, bound to the signature by the header's per-tensor SHA-256.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field, replace

import numpy as np
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from flwr.app import ConfigRecord, RecordDict

from fedpeft.core.trust.hashing import tensor_sha256
from fedpeft.core.trust.keys import key_id
from fedpeft.protos import delta_pb2

from .records import to_record

FORMAT_VERSION = 1
ENVELOPE_RECORD = "envelope"   # the ConfigRecord that carries the SignedDelta bytes
ENVELOPE_KEY = "signed-delta"


@dataclass(frozen=True)
class DeltaBinding:
    """What a delta is bound to: the run, its round, the base, the template, and the global
    adapter (`parent_id`) it was trained from. A client signs it; the server expects it."""

    run_id: str
    base_id: str
    template_id: str
    server_round: int = 0  # 0 and "": the run-wide part, before a round gives them values
    parent_id: str = ""

    def for_round(self, server_round: int, parent_id: str) -> DeltaBinding:
        return replace(self, server_round=server_round, parent_id=parent_id)


@dataclass(frozen=True)
class DeltaClaim:
    """What a client states about its delta; everything here is covered by the signature."""

    binding: DeltaBinding
    num_examples: int
    metrics: Mapping[str, float] = field(default_factory=dict)


def build_header(claim: DeltaClaim, signer_id: str, arrays: Mapping[str, np.ndarray]) -> delta_pb2.DeltaHeader:
    b = claim.binding
    header = delta_pb2.DeltaHeader(
        format_version=FORMAT_VERSION, run_id=b.run_id, server_round=b.server_round, key_id=signer_id,
        base_id=b.base_id, template_id=b.template_id, parent_id=b.parent_id, num_examples=claim.num_examples,
    )
    header.metrics.update({k: float(v) for k, v in claim.metrics.items()})
    for name in sorted(arrays):
        array = arrays[name]
        header.tensors.add(name=name, dtype=array.dtype.str, shape=list(array.shape), sha256=tensor_sha256(array))
    return header


def seal(key: Ed25519PrivateKey, header: delta_pb2.DeltaHeader) -> bytes:
    """Serialize the header once and sign exactly those bytes."""
    header_bytes = header.SerializeToString(deterministic=True)
    return delta_pb2.SignedDelta(header=header_bytes, key_id=header.key_id,
                                 signature=key.sign(header_bytes)).SerializeToString()


def sign_delta(key: Ed25519PrivateKey, claim: DeltaClaim, arrays: Mapping[str, np.ndarray]) -> bytes:
    return seal(key, build_header(claim, key_id(key.public_key()), arrays))


def envelope_record(signed: bytes) -> ConfigRecord:
    return ConfigRecord({ENVELOPE_KEY: signed})


def delta_content(key: Ed25519PrivateKey, claim: DeltaClaim, delta: Mapping[str, np.ndarray]) -> RecordDict:
    """A train reply's content: the delta and its signed envelope. PyTorch clients and
    devices that train with ONNX Runtime answer alike; the server cannot tell them apart."""
    return RecordDict({"arrays": to_record(delta), ENVELOPE_RECORD: envelope_record(sign_delta(key, claim, delta))})
