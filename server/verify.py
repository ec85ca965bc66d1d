"""Checks on a client's reply before its delta may reach the average.

Every check on the untrusted reply is explicit and, when it fails, names its reason
(`REASONS`). The order matters: the cheapest checks that need no trust come first, the
signature is checked over the header bytes exactly as they arrived and only then are
those bytes parsed, and the payload is read only once the signed manifest and encoding
say how long it must be. One SHA-256 and one decode per delta (core/wire/delta_codec.py).
Flower does not check update contents; this module is ours.

Reports (evaluate and personalization replies) are checked here too, as deltas are:
their schema by server/replies.py, their name from the enrolled key the node proved it
holds by signing a delta (never from the reply's text), their example counts capped as
training weights are (`checked_reports`).
"""

from __future__ import annotations

import hashlib
import math
import statistics
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from functools import cached_property

import numpy as np
from flwr.app import ArrayRecord, ConfigRecord, Message, MetricRecord, RecordDict
from google.protobuf.message import DecodeError

from fedpeft.console import printable
from fedpeft.core.trust.keys import Keyring, verify_signature
from fedpeft.core.wire.delta_codec import DeltaEncoding, DeltaLayout
from fedpeft.core.wire.envelope import ENVELOPE_KEY, ENVELOPE_RECORD, FORMAT_VERSION, PAYLOAD_KEY, DeltaBinding
from fedpeft.core.wire.records import NotAsSigned, decode_signed_array
from fedpeft.protos import delta_pb2

from .replies import TRAIN_METRICS, BadReply, checked_metrics

DETAIL_CHARS = 200  # a rejection's detail as logged and written to metrics.jsonl

REASONS = (
    "too-large", "malformed", "no-signature", "unknown-key", "bad-signature", "wrong-run", "wrong-round",
    "wrong-base", "wrong-template", "wrong-parent", "bad-example-count", "bad-encoding", "unexpected-tensor",
    "missing-tensor", "bad-dtype", "bad-shape", "tensor-hash-mismatch", "non-finite", "norm-too-large",
    "bad-metrics", "duplicate", "crashed-check", "bad-class-counts",
)


def as_rejection(exc: Exception) -> RejectedDelta:
    """`exc` as a rejection: itself, or `crashed-check` for any other exception (a check
    that broke on crafted input must not end a round)."""
    return exc if isinstance(exc, RejectedDelta) else RejectedDelta("crashed-check", f"{type(exc).__name__}: {str(exc)[:200]}")


class RejectedDelta(Exception):
    """A reply that must not reach the average; `reason` is one of REASONS.

    `client` is the enrolled name of the key whose signature over the header verified,
    None when no signature did (a claimed key id names nobody). `detail` may quote the
    reply: it is made printable and bounded here, once for every rejection."""

    def __init__(self, reason: str, detail: str, client: str | None = None) -> None:
        assert reason in REASONS, reason
        detail = printable(detail, DETAIL_CHARS)
        super().__init__(f"{reason}: {detail}")
        self.reason, self.detail, self.client = reason, detail, client


@dataclass(frozen=True)
class RoundExpectation:
    """What an honest delta of this round must state and contain."""

    binding: DeltaBinding
    tensors: Mapping[str, tuple[str, tuple[int, ...]]]  # name -> (dtype str, shape)
    encoding: DeltaEncoding = field(default_factory=DeltaEncoding)
    max_norm: float = 0.0  # this round's bound (distributed DP: clip plus noise); only tightens the policy's
    metrics: Mapping[str, tuple[float, float]] = field(default_factory=lambda: TRAIN_METRICS)  # the header's, exactly
    optional_metrics: Mapping[str, tuple[float, float]] = field(default_factory=dict)  # ... and any of these ("rank")

    @cached_property
    def layout(self) -> DeltaLayout:
        return DeltaLayout.of({n: shape for n, (_, shape) in self.tensors.items()})

    @cached_property
    def manifest(self) -> delta_pb2.DeltaHeader:
        """A header holding an honest delta's tensor list, in the order it must come:
        protobuf compares repeated fields in C, about 3x faster than reading them in Python."""
        header = delta_pb2.DeltaHeader()
        for name in self.layout.names:
            dtype, shape = self.tensors[name]
            header.tensors.add(name=name, dtype=dtype, shape=list(shape))
        return header

    @cached_property
    def delta_bytes(self) -> int:
        """Size of an honest delta's payload (computed once per round, not per reply)."""
        return self.encoding.payload_bytes(self.layout.count)


@dataclass(frozen=True)
class VerifyPolicy:
    max_update_norm: float = 0.0     # L2 norm over the whole delta; 0 means no bound
    max_examples: int = 1_000_000
    max_message_bytes: int = 0       # 0: twice the expected delta size plus 64 KiB


@dataclass(frozen=True)
class VerifiedDelta:
    key_id: str
    client: str
    flat: np.ndarray  # the decoded delta, float32, in `layout` order (a view of the reply's bytes for fp32)
    layout: DeltaLayout
    num_examples: int
    metrics: dict[str, float]
    norm: float  # L2 norm of the whole delta, logged per round to help choose a bound

    @property
    def arrays(self) -> dict[str, np.ndarray]:
        return self.layout.split(self.flat)


def _value_bytes(value) -> int:
    """Bytes of one Config/MetricRecord value as Flower carries it: bytes and strings at
    their length (UTF-8), numbers and booleans at 8, lists element by element."""
    if isinstance(value, bytes):
        return len(value)
    if isinstance(value, str):
        return len(value.encode("utf-8", "surrogatepass"))
    if isinstance(value, list):
        return sum(_value_bytes(v) for v in value)
    return 8


def content_bytes(content: RecordDict) -> int:
    """Bytes of everything a reply carries: every record (tensors, config and metric
    entries, the envelope among them) and every key. An extra record counts as much as
    the delta: a 5 MB string or a million-float MetricRecord exceeds the limit too.

    Reads `content.values()` once: Flower's `array_records` / `config_records` build a new
    dict on every access, which costs more than the checks of a small delta."""
    size = 0
    for name, record in content.items():
        size += len(name)
        if isinstance(record, ArrayRecord):
            size += sum(len(key) + len(a.data) for key, a in record.items())
        elif isinstance(record, (ConfigRecord, MetricRecord)):
            size += sum(len(key) + _value_bytes(v) for key, v in record.items())
    return size


class DeltaVerifier:
    def __init__(self, keyring: Keyring, policy: VerifyPolicy = VerifyPolicy()) -> None:
        self.keyring = keyring
        self.policy = policy

    def message_limit(self, expect: RoundExpectation) -> int:
        return self.policy.max_message_bytes or 2 * expect.delta_bytes + 64 * 1024

    def verify(self, content: RecordDict, expect: RoundExpectation, size: int | None = None) -> VerifiedDelta:
        """The verified delta; raises RejectedDelta naming the first check that fails.

        `size` is `content_bytes(content)` when the caller has already counted it.
        """
        size = content_bytes(content) if size is None else size
        limit = self.message_limit(expect)
        if size > limit:
            raise RejectedDelta("too-large", f"{size} bytes, limit {limit}")

        envelope = content.get(ENVELOPE_RECORD)
        signed_bytes = envelope.get(ENVELOPE_KEY) if isinstance(envelope, ConfigRecord) else None
        if not isinstance(signed_bytes, bytes):
            raise RejectedDelta("no-signature", "the reply carries no signed envelope")
        signed = delta_pb2.SignedDelta()
        try:
            signed.ParseFromString(signed_bytes)
        except DecodeError as exc:
            raise RejectedDelta("malformed", f"envelope does not parse: {exc}") from exc
        if not signed.signature:
            raise RejectedDelta("no-signature", "the envelope carries no signature")

        enrolled = self.keyring.get(signed.key_id)
        if enrolled is None:
            raise RejectedDelta("unknown-key", f"key {signed.key_id[:16]!r} is not enrolled")
        if not verify_signature(enrolled.public_key, signed.signature, signed.header):  # nobody proven: no name
            raise RejectedDelta("bad-signature", f"signature does not match the header bytes (claims {enrolled.name}'s key)")

        # Only now, with the bytes proven to come from `enrolled`, are they parsed.
        header = delta_pb2.DeltaHeader()
        try:
            header.ParseFromString(signed.header)
        except DecodeError as exc:
            raise RejectedDelta("malformed", f"signed header does not parse: {exc}", enrolled.name) from exc
        client = enrolled.name
        if header.format_version != FORMAT_VERSION:
            raise RejectedDelta("malformed", f"header format {header.format_version}, expected {FORMAT_VERSION}", client)
        if header.key_id != signed.key_id:
            raise RejectedDelta("bad-signature", f"header names key {header.key_id[:12]}, signed by {signed.key_id[:12]}", client)

        self._check_binding(header, expect, client)
        if not 1 <= header.num_examples <= self.policy.max_examples:
            raise RejectedDelta("bad-example-count", f"{header.num_examples}, allowed 1..{self.policy.max_examples}", client)
        try:
            metrics = checked_metrics(header.metrics, expect.metrics, expect.optional_metrics)
        except BadReply as exc:
            raise RejectedDelta("bad-metrics", exc.detail, client) from exc
        if (header.encoding, header.block_size) != (expect.encoding.kind, expect.encoding.block):
            raise RejectedDelta("bad-encoding", f"{header.encoding[:8]!r} in blocks of {header.block_size}, this run "
                                f"takes {expect.encoding.kind!r} in blocks of {expect.encoding.block}", client)
        self._check_manifest(header, expect, client)
        flat, norm = self._check_payload(content, header.payload_sha256, expect, client)
        return VerifiedDelta(signed.key_id, client, flat, expect.layout, int(header.num_examples), metrics, norm)

    @staticmethod
    def _check_binding(header: delta_pb2.DeltaHeader, expect: RoundExpectation, client: str) -> None:
        b = expect.binding
        bindings = (
            ("wrong-run", header.run_id, b.run_id),
            ("wrong-round", header.server_round, b.server_round),
            ("wrong-base", header.base_id, b.base_id),
            ("wrong-template", header.template_id, b.template_id),
            ("wrong-parent", header.parent_id, b.parent_id),
        )
        for reason, stated, expected in bindings:
            if stated != expected:
                raise RejectedDelta(reason, f"delta states {str(stated)[:16]!r}, this round is {str(expected)[:16]!r}", client)

    @staticmethod
    def _check_manifest(header: delta_pb2.DeltaHeader, expect: RoundExpectation, client: str) -> None:
        """The signed layout must be this round's: the same tensors, dtypes and shapes, in name order."""
        if header.tensors == expect.manifest.tensors:
            return  # the honest case, in one comparison; otherwise find what differs
        manifest = {t.name: t for t in header.tensors}
        if len(manifest) != len(header.tensors):
            raise RejectedDelta("malformed", "the manifest lists a tensor twice", client)
        unexpected = sorted(set(manifest) - set(expect.tensors))
        if unexpected:
            raise RejectedDelta("unexpected-tensor", f"{unexpected[:3]} (of {len(unexpected)})", client)
        missing = sorted(set(expect.tensors) - set(manifest))
        if missing:
            raise RejectedDelta("missing-tensor", f"{missing[:3]} (of {len(missing)})", client)
        for name, entry in manifest.items():
            dtype, shape = expect.tensors[name]
            if entry.dtype != dtype:
                raise RejectedDelta("bad-dtype", f"{name}: {entry.dtype}, expected {dtype}", client)
            if tuple(entry.shape) != tuple(shape):
                raise RejectedDelta("bad-shape", f"{name}: {tuple(entry.shape)}, expected {tuple(shape)}", client)
        if [t.name for t in header.tensors] != list(expect.layout.names):
            raise RejectedDelta("malformed", "the manifest is not in name order", client)

    def _check_payload(self, content: RecordDict, signed_sha256: bytes, expect: RoundExpectation,
                       client: str) -> tuple[np.ndarray, float]:
        """The payload decoded as signed, and the delta's L2 norm; hashed and decoded once."""
        records = [r for r in content.values() if isinstance(r, ArrayRecord)]
        if len(records) != 1 or list(records[0]) != [PAYLOAD_KEY]:
            found = [list(r)[:3] for r in records]
            raise RejectedDelta("malformed", f"expected one ArrayRecord holding {PAYLOAD_KEY!r}, got {found}", client)
        size = expect.delta_bytes
        try:  # only as long as the signed layout and encoding say
            payload = decode_signed_array(records[0][PAYLOAD_KEY], "|u1", (size,))
        except NotAsSigned as exc:
            raise RejectedDelta("tensor-hash-mismatch", f"payload: {exc}", client) from exc
        except ValueError as exc:
            raise RejectedDelta("malformed", f"payload: {exc}", client) from exc
        if hashlib.sha256(payload).digest() != signed_sha256:
            raise RejectedDelta("tensor-hash-mismatch", "payload bytes differ from the signed SHA-256", client)
        flat = expect.encoding.decode(payload, expect.layout.count)
        with np.errstate(over="ignore"):  # an overflow is an infinite norm, handled below
            squares = float(np.dot(flat, flat))
        # A sum of squares is finite only if every value is; when it is not, the
        # exact test tells a NaN or infinity from a finite overflow.
        if not math.isfinite(squares):
            if not np.isfinite(flat).all():
                bad = int(np.flatnonzero(~np.isfinite(flat))[0])
                name = expect.layout.names[int(np.searchsorted(expect.layout.offsets, bad, side="right")) - 1]
                raise RejectedDelta("non-finite", name, client)
            wide = flat.astype(np.float64)  # finite values whose float32 squares overflow: the true norm
            squares = float(np.dot(wide, wide))
        norm, bound = squares ** 0.5, tightest_bound(expect.max_norm, self.policy.max_update_norm)
        if bound and norm > bound:
            raise RejectedDelta("norm-too-large", f"L2 norm {norm:.4g} > bound {bound:.4g}", client)
        return flat, norm


def tightest_bound(*bounds: float) -> float:
    """The smallest of the bounds that are set (0: none): a round's own bound (distributed
    DP's noise-aware one) may tighten `security.max_update_norm`, never loosen it."""
    return min((b for b in bounds if b > 0), default=0.0)


def weight_cap(counts: Sequence[int], ratio: float) -> float:
    """The most any one reply may weigh among `counts`: `ratio` x their median (0: no cap).
    One reply can then weigh at most ratio / (k + ratio) against k honest equal ones."""
    if not counts or not ratio:
        return math.inf
    return max(1, math.floor(ratio * statistics.median(counts)))


@dataclass(frozen=True)
class Report:
    """An evaluate or personalization reply that passed its checks."""

    reply: Message
    client: str                # the enrolled name the node signed deltas under, else "node <id>"
    claimed: int               # the example count the reply states
    examples: int              # its weight: `claimed` capped as training weights are
    metrics: dict[str, float]


REPORT_BYTES = 16 * 1024  # a report is a handful of numbers; anything it carries beyond them counts


def report_name(node: int, signers: Mapping[int, str]) -> str:
    """Who a node's report is shown as: the enrolled key it proved it holds by signing a
    delta this run; a node that signed none is named by its Flower node id."""
    return signers.get(node) or f"node {node}"


def checked_reports(replies: Iterable[Message], parse: Callable[[RecordDict], tuple[int, dict[str, float]]],
                    signers: Mapping[int, str], max_weight_ratio: float,
                    ) -> tuple[list[Report], list[tuple[int, BadReply]]]:
    """Replies of at most REPORT_BYTES (every record counted) that pass `parse` (server/replies.py: schema, ranges, count at most
    security.max_examples, else refused), named by `report_name`, a second report under
    one enrolled name refused as a duplicate; the counts capped at `weight_cap` of the round's
    counts. Returns the reports, and each refused node with why."""
    parsed, refused, names = [], [], set()
    for msg in replies:
        if msg.has_error():
            continue
        node = msg.metadata.src_node_id
        try:
            size = content_bytes(msg.content)
            if size > REPORT_BYTES:  # read before a record of it is parsed
                raise BadReply("too-large", f"a report of {size} bytes, limit {REPORT_BYTES}")
            claimed, metrics = parse(msg.content)
            client = report_name(node, signers)
            if node in signers and client in names:  # one enrolled key held by two nodes: one report
                raise BadReply("duplicate", f"a second report from a node signing as {client}")
        except BadReply as bad:
            refused.append((node, bad))
            continue
        names.add(client)
        parsed.append((msg, client, claimed, metrics))
    cap = weight_cap([claimed for _, _, claimed, _ in parsed], max_weight_ratio)
    reports = [Report(msg, client, claimed, int(min(claimed, cap)), metrics)
               for msg, client, claimed, metrics in parsed]
    return reports, refused
