"""The signed delta envelope (protos/delta.proto): what a client signs, and how it travels.

The client serializes a `DeltaHeader` once, signs those bytes, and sends them unchanged
inside a `SignedDelta`; the verifier (server/verify.py) checks the signature over the
bytes it received before parsing them. The delta travels beside the envelope as one
encoded payload (delta_codec.py) in a Flower ArrayRecord, bound to the signature by the
header's layout, encoding and payload SHA-256.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from dataclasses import dataclass, field, replace

import numpy as np
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from flwr.app import Array, ArrayRecord, ConfigRecord, RecordDict

from fedpeft.core.trust.keys import key_id
from fedpeft.protos import delta_pb2

from .delta_codec import DeltaEncoding, DeltaLayout

FORMAT_VERSION = 2             # 1: one SHA-256 per tensor; 2: one encoded payload
ENVELOPE_RECORD = "envelope"   # the ConfigRecord that carries the SignedDelta bytes
ENVELOPE_KEY = "signed-delta"
DELTA_RECORD = "delta"         # the ArrayRecord that carries the payload
PAYLOAD_KEY = "payload"


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


@dataclass(frozen=True)
class EncodedDelta:
    """A delta as it travels: its layout, the encoding and the encoded bytes."""

    layout: DeltaLayout
    encoding: DeltaEncoding
    payload: bytes

    @classmethod
    def of(cls, arrays: Mapping[str, np.ndarray], encoding: DeltaEncoding = DeltaEncoding()) -> EncodedDelta:
        layout = DeltaLayout.of({n: a.shape for n, a in arrays.items()})
        return cls(layout, encoding, encoding.encode(layout.flatten(arrays)))

    def record(self) -> ArrayRecord:
        """The payload as one uint8 Array (Flower chunks and streams large arrays)."""
        return ArrayRecord({PAYLOAD_KEY: Array(np.frombuffer(self.payload, np.uint8))})


def build_header(claim: DeltaClaim, signer_id: str, delta: EncodedDelta) -> delta_pb2.DeltaHeader:
    b = claim.binding
    header = delta_pb2.DeltaHeader(
        format_version=FORMAT_VERSION, run_id=b.run_id, server_round=b.server_round, key_id=signer_id,
        base_id=b.base_id, template_id=b.template_id, parent_id=b.parent_id, num_examples=claim.num_examples,
        encoding=delta.encoding.kind, block_size=delta.encoding.block,
        payload_sha256=hashlib.sha256(delta.payload).digest(),
    )
    header.metrics.update({k: float(v) for k, v in claim.metrics.items()})
    for name, shape in zip(delta.layout.names, delta.layout.shapes):
        header.tensors.add(name=name, dtype="<f4", shape=list(shape))
    return header


def seal(key: Ed25519PrivateKey, header: delta_pb2.DeltaHeader) -> bytes:
    """Serialize the header once and sign exactly those bytes."""
    header_bytes = header.SerializeToString(deterministic=True)
    return delta_pb2.SignedDelta(header=header_bytes, key_id=header.key_id,
                                 signature=key.sign(header_bytes)).SerializeToString()


def sign_delta(key: Ed25519PrivateKey, claim: DeltaClaim, delta: EncodedDelta) -> bytes:
    return seal(key, build_header(claim, key_id(key.public_key()), delta))


def envelope_record(signed: bytes) -> ConfigRecord:
    return ConfigRecord({ENVELOPE_KEY: signed})


def signed_content(key: Ed25519PrivateKey, claim: DeltaClaim, delta: EncodedDelta) -> RecordDict:
    return RecordDict({DELTA_RECORD: delta.record(), ENVELOPE_RECORD: envelope_record(sign_delta(key, claim, delta))})


def delta_content(key: Ed25519PrivateKey, claim: DeltaClaim, delta: Mapping[str, np.ndarray],
                  encoding: DeltaEncoding = DeltaEncoding()) -> RecordDict:
    """A train reply's content: the encoded delta and its signed envelope. PyTorch clients and
    devices that train with ONNX Runtime answer alike; the server cannot tell them apart."""
    return signed_content(key, claim, EncodedDelta.of(delta, encoding))
