"""Misbehaving clients for simulations: a Flower client mod that spoils train replies.

`fedpeft simulate` with `[simulation] misbehaving = 0.2` picks that share of clients
(seeded) and wraps the ClientApp in `misbehaving_mod`. Each bad client first trains
honestly, then turns its reply into one kind of bad reply, so the server's rejection
path runs inside a real federation. The kinds rotate over (round, bad client) slots, so
a few bad clients over a few rounds send every kind. All but "unsigned", "unknown-key"
and "tamper" come from an enrolled client that signs what it sends: a signature says
who sent a reply, not that it is honest. The same mod runs the attacks that pass every
check (`[simulation] attackers`, simulations/attacks.py).
"""

from __future__ import annotations

import hashlib
import io
import os
import time
import zipfile

import numpy as np
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from flwr.app import Array, ArrayRecord, ConfigRecord, Context, Message, MetricRecord, RecordDict
from flwr.clientapp.typing import ClientAppCallable

from fedpeft.client import client_app, identity
from fedpeft.core.adapters.state import Arrays
from fedpeft.core.errors import ConfigError
from fedpeft.core.trust.json_reader import parse_json_object
from fedpeft.core.trust.keys import key_id
from fedpeft.core.wire.delta_codec import DeltaEncoding, DeltaLayout
from fedpeft.core.wire.envelope import (
    DELTA_RECORD,
    ENVELOPE_KEY,
    ENVELOPE_RECORD,
    PAYLOAD_KEY,
    EncodedDelta,
    envelope_record,
    seal,
)
from fedpeft.core.wire.records import decode_signed_array, from_record
from fedpeft.protos import delta_pb2

from . import attacks as attacks_

PLAN_ENV = "FEDPEFT_MISBEHAVING"

# Each kind of bad delta and the reason the server must reject it with.
EXPECTED_REASON = {
    "unsigned": "no-signature",        # the signed envelope is dropped
    "unknown-key": "unknown-key",      # signed by a key the server never enrolled
    "tamper": "tensor-hash-mismatch",  # the payload changed after signing
    "switch-base": "wrong-base",       # honestly signed, but claims another base
    "nan": "non-finite",               # a NaN, signed as if it were a real update
    "scale": "norm-too-large",         # the update blown up 1000x and signed (needs a norm bound)
    "replay": "wrong-round",           # last round's signed reply sent again
    "crafted-tensor": "malformed",     # honest header, the payload sent as a zip archive (np.load would open it)
    "extra-metric": "bad-metrics",     # a metric key no other client sends (Flower's aggregation raised on it)
    "inflated-count": None,            # signs INFLATED_COUNT examples: accepted, weight capped (max_weight_ratio)
    "bad-eval": None,                  # honest delta; the evaluate reply carries an extra key and a NaN
    "slow-report": None,               # honest delta; stalls its personalization report past the deadline
    "hostile-report": None,            # honest delta; its personalization report claims a hostile name and count
    "blown-class-means": None,         # honest deltas; its round-zero class statistics x1000, signed (bad-class-counts)
}
OPT_IN = ("slow-report", "hostile-report", "blown-class-means")  # only when asked for in [simulation] behaviours
SLOW_REPORT_S = 25.0  # how long a "slow-report" client holds its personalization reply, at least
SLOW_REPORT_PAST_DEADLINE_S = 10.0  # ... and at least this long past the plan's "report_deadline"
INFLATED_COUNT = 100_000  # the default security.max_examples: the most a signed count may claim
BEHAVIOURS = tuple(EXPECTED_REASON)
# Mathtext that made matplotlib raise, another client's name, a terminal escape, a forged line.
HOSTILE_NAME = "$\\frac{$ client-0\x1b[2J\n[fedpeft] forged line $" + "{" * 500 + "$"


def choose_plan(num_clients: int, share: float, seed: int, behaviours: list[str] | None = None,
                norm_bound: float = 0.0, attackers: float = 0.0, attacks: list[str] | None = None,
                attack_from_round: int = 1) -> dict:
    """Which partitions misbehave (seeded) and the kinds they rotate through; which attack
    (simulations/attacks.choose_attackers).

    "scale" is only a bad delta when the server bounds update norms: without a bound it
    is left out of the default kinds and refused when asked for. "slow-report" (held
    SLOW_REPORT_S seconds) runs only when asked for.
    """
    kinds = list(behaviours or (k for k in BEHAVIOURS if (norm_bound or k != "scale") and k not in OPT_IN))
    unknown = sorted(set(kinds) - set(BEHAVIOURS))
    if unknown:
        raise ConfigError(f"unknown misbehaviour(s) {unknown}; known: {list(BEHAVIOURS)}")
    if "scale" in kinds and not norm_bound:
        raise ConfigError("misbehaviour 'scale' needs a norm bound: set security.max_update_norm")
    bad = {str(p): i for i, p in enumerate(attacks_.seeded_share(list(range(num_clients)), share, num_clients, seed))}
    attack = attacks_.choose_attackers(num_clients, attackers, seed, attacks or [], attack_from_round, norm_bound,
                                       set(bad))
    return {"partitions": bad, "behaviours": kinds, "norm_bound": norm_bound, "attack": attack}


def active(plan: dict) -> bool:
    """Whether any client misbehaves or attacks."""
    return bool(plan["partitions"] or plan["attack"]["partitions"])


def behaviour(plan: dict, partition: int, server_round: int) -> str | None:
    """What `partition` does wrong in `server_round`: a misbehaviour, an attack, or nothing."""
    index = plan["partitions"].get(str(partition))
    if index is None:
        return attacks_.attack(plan["attack"], partition, server_round)
    slot = (server_round - 1) * len(plan["partitions"]) + index
    return plan["behaviours"][slot % len(plan["behaviours"])]


def expected_rejections(plan: dict, rounds: int) -> dict[str, int]:
    """Reason -> count the server should report when every client trains every round."""
    counts: dict[str, int] = {}
    for server_round in range(1, rounds + 1):
        for partition in plan["partitions"]:  # attackers pass every check
            reason = EXPECTED_REASON[behaviour(plan, int(partition), server_round)]
            if reason is not None:  # accepted (and capped) or spoiled outside the delta
                counts[reason] = counts.get(reason, 0) + 1
    return dict(sorted(counts.items()))


def _header(content: RecordDict) -> delta_pb2.DeltaHeader:
    signed = delta_pb2.SignedDelta.FromString(bytes(content.config_records[ENVELOPE_RECORD][ENVELOPE_KEY]))
    return delta_pb2.DeltaHeader.FromString(signed.header)


def _delta(content: RecordDict, header: delta_pb2.DeltaHeader) -> tuple[EncodedDelta, np.ndarray]:
    """The honest reply's encoded delta and its values (a writable copy)."""
    encoding = DeltaEncoding(header.encoding, header.block_size)
    layout = DeltaLayout.of({t.name: tuple(t.shape) for t in header.tensors})
    payload = decode_signed_array(content.array_records[DELTA_RECORD][PAYLOAD_KEY], "|u1",
                                  (encoding.payload_bytes(layout.count),))
    return EncodedDelta(layout, encoding, payload.tobytes()), encoding.decode(payload, layout.count).copy()


def _reencoded(delta: EncodedDelta, values: np.ndarray) -> EncodedDelta:
    return EncodedDelta(delta.layout, delta.encoding, delta.encoding.encode(values))


def _resign(content: RecordDict, key: Ed25519PrivateKey, header: delta_pb2.DeltaHeader,
            delta: EncodedDelta | None = None) -> RecordDict:
    """The reply re-signed (by `key`) over an altered header and, if given, an altered delta."""
    if delta is not None:
        header.payload_sha256 = hashlib.sha256(delta.payload).digest()
    record = delta.record() if delta is not None else content.array_records[DELTA_RECORD]
    return RecordDict({DELTA_RECORD: record, ENVELOPE_RECORD: envelope_record(seal(key, header))})


def spoil(content: RecordDict, kind: str, key: Ed25519PrivateKey, previous: RecordDict | None,
          norm_bound: float = 0.0, global_arrays: Arrays | None = None) -> RecordDict:
    """An honest signed train reply turned into a bad delta of the given kind (or an attack
    of attacks.DELTA_ATTACKS, which needs the round's `global_arrays`)."""
    header = _header(content)
    delta, values = _delta(content, header)
    if kind in attacks_.DELTA_ATTACKS:
        global_values = delta.layout.flatten(global_arrays or {}) if kind == "colluding" else values
        return _resign(content, key, header, _reencoded(delta, attacks_.attacked_delta(kind, values, global_values,
                                                                                        norm_bound)))
    if kind == "unsigned":
        return RecordDict({DELTA_RECORD: content.array_records[DELTA_RECORD]})
    if kind == "unknown-key":
        stranger = Ed25519PrivateKey.generate()
        header.key_id = key_id(stranger.public_key())
        return _resign(content, stranger, header)
    if kind == "tamper":
        values[0] += np.float32(0.5)
        return RecordDict({DELTA_RECORD: _reencoded(delta, values).record(),
                           ENVELOPE_RECORD: content.config_records[ENVELOPE_RECORD]})
    if kind == "switch-base":
        header.base_id = "f" * 64
        return _resign(content, key, header)
    if kind == "nan":
        values[0] = np.nan
        with np.errstate(invalid="ignore"):
            return _resign(content, key, header, _reencoded(delta, values))
    if kind == "scale":
        return _resign(content, key, header, _reencoded(delta, values * np.float32(1000)))
    if kind == "crafted-tensor":
        archive = io.BytesIO()
        honest = content.array_records[DELTA_RECORD][PAYLOAD_KEY]
        with zipfile.ZipFile(archive, "w") as bundle:
            bundle.writestr(f"{PAYLOAD_KEY}.npy", honest.data)
        crafted = Array(dtype=honest.dtype, shape=honest.shape, stype=honest.stype, data=archive.getvalue())
        return RecordDict({DELTA_RECORD: ArrayRecord({PAYLOAD_KEY: crafted}),
                           ENVELOPE_RECORD: content.config_records[ENVELOPE_RECORD]})
    if kind == "extra-metric":
        header.metrics["client-secret-metric"] = 1.0
        return _resign(content, key, header)
    if kind == "inflated-count":
        header.num_examples = INFLATED_COUNT
        return _resign(content, key, header)
    if kind in ("bad-eval", *OPT_IN):
        return content  # the train reply stays honest; misbehaving_mod spoils the evaluate / report reply
    if kind == "replay":
        if previous is not None:
            return previous
        header.server_round -= 1  # nothing recorded yet: a stale reply signed for the round before
        return _resign(content, key, header)
    raise ConfigError(f"unknown misbehaviour {kind!r}")


def spoil_report(content: RecordDict) -> RecordDict:
    """An honest personalization reply turned hostile: every accuracy 1.0 over
    INFLATED_COUNT test examples, under HOSTILE_NAME (the server must name it by its key,
    cap its weight and draw nothing it says)."""
    metrics = content.metric_records["metrics"]
    spoiled = {k: (INFLATED_COUNT if k == "num-examples" else 1.0) for k in metrics}
    return RecordDict({"metrics": MetricRecord(spoiled), "client": ConfigRecord({"name": HOSTILE_NAME})})


def misbehaving_mod(msg: Message, context: Context, call_next: ClientAppCallable) -> Message:
    """Flower client mod: bad clients (per the FEDPEFT_MISBEHAVING plan) spoil train replies;
    data-poisoning attackers train on poisoned rows instead."""
    kind_of_message = msg.metadata.message_type
    if PLAN_ENV not in os.environ:
        return call_next(msg, context)
    plan, partition = parse_json_object(os.environ[PLAN_ENV], PLAN_ENV), int(context.node_config["partition-id"])
    if kind_of_message == "train":
        kind = behaviour(plan, partition, int(msg.content.config_records["config"]["server-round"]))
        if kind in attacks_.DATA_ATTACKS:
            job, worker, data = client_app.prepare(msg, context)
            return client_app.signed_update(msg, context, job, worker,
                                            attacks_.poisoned(kind, data.train, len(job.data.labels)))
    reply = call_next(msg, context)
    if reply.has_error():
        return reply
    if kind_of_message == "query.personalize" and str(partition) in plan["partitions"] and \
            "slow-report" in plan["behaviours"]:
        # A device that went quiet: the server must say it did not report. It stays quiet past
        # the run's reporting deadline however long that is (the plan says, see simulate.py).
        time.sleep(max(SLOW_REPORT_S, plan.get("report_deadline", 0.0) + SLOW_REPORT_PAST_DEADLINE_S))
        return reply
    if kind_of_message == "query.personalize" and str(partition) in plan["partitions"] and \
            "hostile-report" in plan["behaviours"]:
        return Message(spoil_report(reply.content), reply_to=msg)
    if kind_of_message == "query.class_means" and str(partition) in plan["partitions"] and \
            "blown-class-means" in plan["behaviours"]:
        key = identity.signing_key(dict(context.node_config), partition)
        return Message(spoil(reply.content, "scale", key, None), reply_to=msg)
    if kind_of_message not in ("train", "evaluate"):
        return reply
    server_round = int(msg.content.config_records["config"]["server-round"])
    kind = behaviour(plan, partition, server_round)
    if kind_of_message == "evaluate":
        if kind != "bad-eval":
            return reply
        metrics = reply.content.metric_records["metrics"]
        spoiled = MetricRecord({**metrics, "eval-loss": float("nan"), "client-secret-metric": 1.0})
        return Message(RecordDict({"metrics": spoiled}), reply_to=msg)
    if kind in (None, *OPT_IN):
        return reply
    previous = None
    if "replay-arrays" in context.state.array_records:
        previous = RecordDict({DELTA_RECORD: context.state.array_records["replay-arrays"],
                               ENVELOPE_RECORD: context.state.config_records["replay-envelope"]})
    honest = reply.content
    context.state["replay-arrays"] = honest.array_records[DELTA_RECORD]
    context.state["replay-envelope"] = ConfigRecord(dict(honest.config_records[ENVELOPE_RECORD]))
    key = identity.signing_key(dict(context.node_config), partition)
    return Message(spoil(honest, kind, key, previous, plan["norm_bound"], from_record(msg.content.array_records["arrays"])),
                   reply_to=msg)
