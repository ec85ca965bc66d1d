"""Device health reports at the registry: verified against enrolled device keys, one per
device per release counted, aggregated per release.

A report is refused by name before anything is stored: unknown-key (not an enrolled
device), too-often (the same device within a second: reports are cheap to send, not to
verify), oversized, bad-signature, expired, not-yet-valid, malformed
(core/trust/device_report.py), unknown-release (not a release of this registry, or of
another base), not-on-channel (the channel it names does not serve that release now: a
device cannot count toward a channel it does not follow), replayed (not signed after that
device's last report on that release). A device's later report on a release (periodic)
replaces its earlier one: rows kept are one per (device, release), so each device counts
once and memory and disk are bounded by fleet size times releases.
"""

from __future__ import annotations

import statistics
import time
from datetime import datetime
from dataclasses import asdict, dataclass

from fedpeft.core.trust.device_report import HealthReport, check_report, validation_delta
from fedpeft.core.trust.keys import Keyring
from fedpeft.core.trust.signed_files import signer_of

from .store import RegistryStore, StoreError
from .tuf_repository import TufRepository, listed_release

MIN_INTERVAL_S = 1.0
DRIFT_THRESHOLD = 0.25  # median label-distribution distance above which a release is flagged as drifting


@dataclass(frozen=True)
class ReleaseHealth:
    release_id: str
    reports: int
    load_success: float        # share of reports whose adapter loaded
    median_delta: float | None    # median validation delta, accuracy points against the replaced release
    p95_latency_ms: float | None  # median over devices of their p95 inference latency
    median_drift: float | None  # median of the drift the devices reported (None: none reported one)
    drifting: bool             # median_drift above the registry's drift threshold

    def as_dict(self) -> dict:
        return asdict(self)


class ReportBook:
    def __init__(self, store: RegistryStore, devices: Keyring, tuf: TufRepository | None = None,
                 min_interval_s: float = MIN_INTERVAL_S, drift_threshold: float = DRIFT_THRESHOLD) -> None:
        self.store, self.devices, self.tuf, self.min_interval_s = store, devices, tuf, min_interval_s
        self.drift_threshold = drift_threshold
        self._last: dict[str, float] = {}  # enrolled device -> when its last report was accepted (bounded by the keyring)

    def accept(self, payload: bytes, signature: bytes) -> HealthReport:
        """Store a device's report, or StoreError / ManifestError naming why not."""
        signer, _ = signer_of(signature[:4096], "report")
        enrolled = self.devices.get(signer)
        if enrolled is None:
            raise StoreError("unknown-key", f"report signed by key {signer[:12]}, which is not an enrolled device")
        now = time.monotonic()
        if now - self._last.get(signer, -1e9) < self.min_interval_s:
            raise StoreError("too-often", f"device {enrolled.name} reported less than {self.min_interval_s:g} s ago")
        report = check_report(payload, signature, enrolled.public_key)
        stored = self.store.release(report.release_id)
        if stored is None or stored.base_id != report.base_id:
            raise StoreError("unknown-release", f"no release {report.release_id[:12]} of base {report.base_id[:12]}")
        if self.serves(report.channel, report.base_id) != report.release_id:
            raise StoreError("not-on-channel", f"{report.channel} does not serve release {report.release_id[:12]}: "
                                               "reports count for the release a channel serves")
        last = self.store.db.execute("SELECT created FROM reports WHERE device = ? AND release_id = ?",
                                     (signer, report.release_id)).fetchone()
        if last is not None and datetime.fromisoformat(report.created) <= datetime.fromisoformat(last[0]):
            raise StoreError("replayed", f"device {enrolled.name} sent a report on release {report.release_id[:12]} "
                                         f"signed at {report.created}, not after its last one ({last[0]})")
        # one row per device and release: a later report (a periodic one) replaces the device's
        # earlier one, so each device counts once and its latest drift and latency are what count
        self.store.db.execute(
            "INSERT OR REPLACE INTO reports VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            (signer, report.release_id, report.channel, int(report.load_ok), report.latency_p50_ms,
             report.latency_p95_ms, report.rows, report.correct, report.previous_correct, report.created,
             report.drift))
        self._last[signer] = now  # only a stored report moves its device's clock: a replayed one cannot mute it
        return report

    def serves(self, channel: str, base_id: str) -> str | None:
        """The release id `channel` serves for `base_id`: its TUF role's listing when the
        registry keeps TUF metadata, else the channel table's."""
        if self.tuf is not None and self.tuf.enabled:
            role = self.tuf.current(channel) if channel in self.tuf.channels() else None
            return listed_release(role, channel, base_id) if role is not None else None
        current = self.store.current(base_id, channel)
        return current.release_id if current else None

    def health(self, release_id: str) -> ReleaseHealth | None:
        rows = self.store.db.execute(
            "SELECT load_ok, p95, rows, correct, previous_correct, drift FROM reports WHERE release_id = ?",
            (release_id,)).fetchall()
        if not rows:
            return None
        loaded = [row for row in rows if row[0]]  # a report whose adapter did not load measured nothing else
        deltas = [validation_delta(n, c, p) for _, _, n, c, p, _ in loaded if n]
        drifts = [row[5] for row in loaded if row[5] is not None]
        drift = statistics.median(drifts) if drifts else None
        return ReleaseHealth(release_id, len(rows), len(loaded) / len(rows),
                             statistics.median(deltas) if deltas else None,
                             statistics.median(row[1] for row in loaded) if loaded else None,
                             drift, drift is not None and drift > self.drift_threshold)
