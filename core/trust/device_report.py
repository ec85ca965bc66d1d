"""A device's signed health report on a release: small, counts only, never rows or texts.

After installing a release (and periodically) a device reports whether the adapter loaded,
its inference latency on the device (p50, p95 in ms), and a validation delta as counts:
of `rows` held-out rows of its own, how many the new release got right and how many the
release it replaced got right. The report is canonical JSON signed with the device's
enrolled Ed25519 key (core/trust/signed_files.py), valid for 10 minutes; the registry
checks it here, before anything is stored, and every failure is a named refusal.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from fedpeft.core.config import Range

from .hashing import is_sha256_hex
from .keys import key_id
from .release import check_channel
from .signed_files import ManifestError, check_signed, precise_timestamp, sign_manifest, timestamp

REPORT_TYPE = "fedpeft/device-report"
REPORT_VALID = timedelta(minutes=10)
MAX_REPORT_BYTES = 2048     # a report is about 500 bytes; anything larger is refused before parsing
MAX_ROWS = 1_000_000
MAX_LATENCY_MS = 3_600_000.0


@dataclass(frozen=True)
class HealthReport:
    device: str             # the signing key's id
    base_id: str
    release_id: str
    channel: str
    load_ok: bool
    latency_p50_ms: float
    latency_p95_ms: float
    rows: int
    correct: int            # held-out rows the reported release got right
    previous_correct: int   # the same rows, with the release it replaced
    created: str
    drift: float | None = None  # how far the device's recent inputs moved from its reference (0..1; device/health.py)

    @property
    def validation_delta(self) -> float:
        return validation_delta(self.rows, self.correct, self.previous_correct)


def sign_report(key: Ed25519PrivateKey, *, base_id: str, release_id: str, channel: str, load_ok: bool,
                latency_ms: tuple[float, float], rows: int, correct: int, previous_correct: int,
                drift: float | None = None, now: datetime | None = None) -> tuple[bytes, bytes]:
    """(report bytes, signature bytes) of one device's report on one release."""
    now = now or datetime.now(UTC)
    return sign_manifest({
        "type": REPORT_TYPE, "device": key_id(key.public_key()), "base_id": base_id, "release_id": release_id,
        "channel": channel, "load_ok": bool(load_ok), "latency_ms": {"p50": float(latency_ms[0]), "p95": float(latency_ms[1])},
        "validation": {"rows": int(rows), "correct": int(correct), "previous_correct": int(previous_correct)},
        "drift": None if drift is None else float(drift), "files": {}, "created": precise_timestamp(now), "expires": timestamp(now + REPORT_VALID),
    }, key)


ROWS, LATENCY, SHARE = Range(int, 0, MAX_ROWS), Range(float, 0, MAX_LATENCY_MS), Range(float, 0, 1)


def _checked(value: Any, interval: Range, what: str) -> Any:
    if not interval.allows(value):
        raise ValueError(f"{what} {str(value)[:20]!r} is not {interval}")
    return value


def validation_delta(rows: int, correct: int, previous_correct: int) -> float:
    """Accuracy points a release gained over the one it replaced on `rows` rows (0 without rows)."""
    return 100.0 * (correct - previous_correct) / rows if rows else 0.0


def check_report(payload: bytes, signature: bytes, public_key: Ed25519PublicKey,
                 now: datetime | None = None) -> HealthReport:
    """The report if it is small, signed by `public_key`, unexpired, not from the future and
    well formed; ManifestError (oversized, wrong-key, bad-signature, expired, not-yet-valid,
    malformed) otherwise."""
    if len(payload) > MAX_REPORT_BYTES or len(signature) > MAX_REPORT_BYTES:
        raise ManifestError("oversized", f"a report of {len(payload)} bytes; at most {MAX_REPORT_BYTES}")
    now = now or datetime.now(UTC)
    manifest = check_signed(payload, signature, public_key, REPORT_TYPE, now, "report")
    try:
        created = datetime.fromisoformat(manifest["created"])
        if created.tzinfo is None:
            raise ValueError("created names no time zone")
        latency, validation = manifest["latency_ms"], manifest["validation"]
        rows = _checked(validation["rows"], ROWS, "rows")
        within = Range(int, 0, rows)
        drift = manifest.get("drift")
        report = HealthReport(
            device=str(manifest["device"]), base_id=str(manifest["base_id"]), release_id=str(manifest["release_id"]),
            channel=check_channel(manifest["channel"]), load_ok=manifest["load_ok"] is True,
            latency_p50_ms=float(_checked(latency["p50"], LATENCY, "p50")),
            latency_p95_ms=float(_checked(latency["p95"], LATENCY, "p95")), rows=rows,
            correct=_checked(validation["correct"], within, "correct"),
            previous_correct=_checked(validation["previous_correct"], within, "previous_correct"),
            created=manifest["created"], drift=None if drift is None else float(_checked(drift, SHARE, "drift")))
        if not (is_sha256_hex(report.release_id) and is_sha256_hex(report.base_id)) \
                or report.device != key_id(public_key):
            raise ValueError("release_id and base_id must be SHA-256 ids, device the signing key's id")
    except (KeyError, TypeError, ValueError, AttributeError, ManifestError) as exc:
        raise ManifestError("malformed", f"report: {exc}") from None
    if created - now > timedelta(minutes=1):
        raise ManifestError("not-yet-valid", f"report signed at {report.created}, in the future")
    return report
