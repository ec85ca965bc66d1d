"""The registry's TUF repository: every check of uploaded TUF metadata, in one place.

The registry holds only the online snapshot and timestamp keys. Root, targets and the
channel roles arrive signed by their own (offline) keys, through `PutMetadata`, a publish
or a promotion, and are accepted as a batch only when the state they lead to verifies as
a whole: root by a threshold of the previous root and of itself, targets by root, each
channel role by the targets delegation, every version exactly one above the last, nothing
expired, a channel role listing only its own `<channel>/<base_id>/release.{json,sig}`
paths and only releases this registry holds, and root naming the registry's own online
keys. Then snapshot and timestamp are re-signed in the same SQLite transaction. Without
online keys the registry is a mirror: it serves what it holds and changes nothing, so its
timestamp goes stale (devices refuse it once it expires: TUF's freeze defence).
"""

from __future__ import annotations

import logging
import sqlite3
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from tuf.api.exceptions import UnsignedMetadataError
from tuf.api.metadata import Metadata, Root, Snapshot, Targets, Timestamp

from fedpeft.core.trust.hashing import sha256_hex
from fedpeft.core.trust.keys import load_private_key
from fedpeft.core.trust.tuf_roles import (
    ENDORSEMENT,
    RELEASE_FILES,
    SNAPSHOT_EXPIRY,
    TIMESTAMP_EXPIRY,
    TOP_LEVEL,
    sign,
    snapshot_of,
    timestamp_of,
    tuf_key,
)

from .store import RegistryStore, StoreError

log = logging.getLogger("fedpeft.registry")
MAX_METADATA_BYTES = 1 << 20   # one role's metadata; a channel role lists two files per base
MAX_BATCH = 16                 # roles in one PutMetadata


@dataclass(frozen=True)
class OnlineKeys:
    snapshot: Ed25519PrivateKey
    timestamp: Ed25519PrivateKey

    @classmethod
    def load(cls, folder: Path) -> OnlineKeys:
        return cls(load_private_key(Path(folder) / "snapshot.key"), load_private_key(Path(folder) / "timestamp.key"))


def parse(role: str, body: bytes) -> Metadata:
    """Metadata of `role` from untrusted bytes, or StoreError("bad-metadata")."""
    if len(body) > MAX_METADATA_BYTES:
        raise StoreError("bad-metadata", f"{role}: {len(body)} bytes, more than {MAX_METADATA_BYTES}")
    try:
        metadata = Metadata.from_bytes(body)
    except Exception as exc:  # python-tuf raises DeserializationError, ValueError, KeyError... on bad bytes
        raise StoreError("bad-metadata", f"{role}: {type(exc).__name__}: {str(exc)[:200]}") from None
    expected = role if role in TOP_LEVEL else Targets.type
    if metadata.signed.type != expected:
        raise StoreError("bad-metadata", f"{role}: a {metadata.signed.type} document, expected {expected}")
    return metadata


def _verify(delegator: Metadata, role: str, metadata: Metadata, what: str) -> None:
    try:
        delegator.signed.verify_delegate(role, metadata.signed_bytes, metadata.signatures)
    except UnsignedMetadataError as exc:
        raise StoreError("below-threshold", f"{what}: {exc}") from None
    except ValueError as exc:  # a role the delegator does not name
        raise StoreError("unknown-role", f"{what}: {exc}") from None


class TufRepository:
    def __init__(self, store: RegistryStore, online: OnlineKeys | None,
                 timestamp_valid: timedelta = TIMESTAMP_EXPIRY) -> None:
        self.store, self.online, self.timestamp_valid = store, online, timestamp_valid

    # reading
    def get(self, role: str, version: int = 0) -> bytes | None:
        """A role's metadata bytes at `version` (0: the newest)."""
        row = self.store.db.execute(
            "SELECT body FROM tuf_metadata WHERE role = ? AND (? = 0 OR version = ?) ORDER BY version DESC LIMIT 1",
            (role, version, version)).fetchone()
        return bytes(row[0]) if row else None

    def current(self, role: str) -> Metadata | None:
        body = self.get(role)
        return Metadata.from_bytes(body) if body else None  # stored only after every check

    @property
    def enabled(self) -> bool:
        return self.get(Root.type) is not None

    def channels(self) -> list[str]:
        targets = self.current(Targets.type)
        return sorted(targets.signed.delegations.roles) if targets and targets.signed.delegations else []

    def endorsement(self) -> tuple[bytes, bytes] | None:
        rows = dict(self.store.db.execute("SELECT key, value FROM meta WHERE key IN ('endorsement', 'endorsement_sig')"))
        return (rows["endorsement"].encode(), rows["endorsement_sig"].encode()) if len(rows) == 2 else None

    # changing
    def initialize(self, folder: Path) -> bool:
        """Take root, targets and channel roles (version 1, `fedpeft keys tuf-init`) and the
        operator's endorsement of root from `folder` if the store has no TUF metadata yet;
        True if it did."""
        if self.enabled:
            return False
        folder = Path(folder)
        root_body = (folder / f"1.{Root.type}.json").read_bytes()
        targets_body = (folder / f"1.{Targets.type}.json").read_bytes()
        batch = [(Root.type, root_body), (Targets.type, targets_body)]
        batch += [(name, (folder / f"1.{name}.json").read_bytes())
                  for name in parse(Targets.type, targets_body).signed.delegations.roles]
        endorsement = ((folder / f"{ENDORSEMENT}.json").read_bytes(), (folder / f"{ENDORSEMENT}.sig").read_bytes())
        with self.store.transaction():
            self.stage(batch)()
            for key, value in zip(("endorsement", "endorsement_sig"), endorsement, strict=True):
                self.store.db.execute("INSERT OR REPLACE INTO meta VALUES (?, ?)", (key, value.decode()))
        return True

    def check(self, batch: Sequence[tuple[str, bytes]], must_list: tuple[str, str, str] | None = None
              ) -> dict[str, tuple[Metadata, bytes]]:
        """The roles of a batch of (role, signed bytes) if the state it leads to verifies;
        StoreError names the refusal. `must_list` (channel, base_id, release_id): the batch
        must point that channel at that release (a publish or promotion carries its
        channel's metadata)."""
        if self.online is None:
            raise StoreError("read-only", "this registry has no online keys (a mirror): it changes no metadata")
        if not 0 < len(batch) <= MAX_BATCH:
            raise StoreError("bad-metadata", f"{len(batch)} roles in one change; 1 to {MAX_BATCH}")
        state = {role: self.current(role) for role in (Root.type, Targets.type, *self.channels())}
        changed: dict[str, tuple[Metadata, bytes]] = {}
        for role, body in sorted(batch, key=lambda item: _order(item[0])):
            if role in changed or role in (Snapshot.type, Timestamp.type):
                raise StoreError("bad-metadata", f"{role}: given twice, or a role only the registry signs")
            metadata = parse(role, body)
            previous = state.get(role)
            expected = previous.signed.version + 1 if previous else 1
            if metadata.signed.version != expected:
                raise StoreError("stale-version", f"{role} v{metadata.signed.version}: the next version is v{expected}")
            if role == Root.type and previous is not None:
                _verify(previous, Root.type, metadata, f"root v{expected} by the keys of root v{expected - 1}")
            state[role] = metadata
            changed[role] = (metadata, body)
        self._check_state(state, changed)
        if must_list is not None:
            channel, base_id, release_id = must_list
            if channel not in changed or listed_release(changed[channel][0], channel, base_id) != release_id:
                raise StoreError("bad-metadata", f"the change must carry {channel}'s next metadata pointing base "
                                                 f"{base_id[:12]} at release {release_id[:12]}")
        now = datetime.now(UTC)
        for role, (metadata, _) in changed.items():
            if metadata.signed.is_expired(now):
                raise StoreError("expired", f"{role} v{metadata.signed.version} expired at {metadata.signed.expires}")
        return changed

    def stage(self, batch: Sequence[tuple[str, bytes]], must_list: tuple[str, str, str] | None = None
              ) -> Callable[[], None]:
        """What stores a batch, to run inside the store's transaction: it checks the batch
        again there (the state may have moved since a publish stream began), checks the
        releases the channels list (a publish's release is indexed by then), stores the
        roles and re-signs snapshot and timestamp."""
        def store() -> None:
            changed = self.check(batch, must_list)
            for role, (metadata, body) in changed.items():
                if role not in TOP_LEVEL:
                    self._check_releases(role, metadata)
                try:
                    self.store.db.execute("INSERT INTO tuf_metadata VALUES (?, ?, ?)",
                                          (role, metadata.signed.version, body))
                except sqlite3.IntegrityError:
                    raise StoreError("stale-version", f"{role} v{metadata.signed.version} is stored already") from None
            self._resign(snapshot=True)
            log.info("registry: TUF metadata %s accepted", ", ".join(f"{r} v{m.signed.version}"
                                                                    for r, (m, _) in changed.items()))
        return store

    def apply(self, batch: Sequence[tuple[str, bytes]]) -> list[tuple[str, int]]:
        """Check and store a batch in one transaction: [(role, version)] accepted."""
        with self.store.transaction():
            self.stage(batch)()
        return [(role, parse(role, body).signed.version) for role, body in batch]

    def _check_state(self, state: dict[str, Metadata | None], changed: dict) -> None:
        """Every role verifies against its delegator in the state after the change (a key
        rotated in root or targets must come with the roles it signs, re-signed), and root
        names this registry's online keys."""
        root, targets = state[Root.type], state[Targets.type]
        if root is None or targets is None:
            raise StoreError("bad-metadata", "the first change must carry root and targets")
        _verify(root, Root.type, root, f"root v{root.signed.version} by its own keys")
        _verify(root, Targets.type, targets, f"targets v{targets.signed.version} by the keys root names")
        delegations = targets.signed.delegations
        if delegations is None or delegations.roles is None:
            raise StoreError("bad-metadata", "targets must delegate each channel by name (no succinct roles)")
        channels = sorted(delegations.roles)
        dropped = set(self.channels()) - set(channels)
        if dropped:  # devices refuse a snapshot that no longer lists a role they have seen
            raise StoreError("removes-channel", f"targets v{targets.signed.version} drops {sorted(dropped)}: a channel, "
                                                "once delegated, stays (stop publishing to it instead)")
        for name in [role for role in changed if role not in TOP_LEVEL] + channels:
            metadata = state.get(name)
            if name not in channels or metadata is None:
                raise StoreError("unknown-role", f"{name}: targets delegates no such channel, or it has no metadata")
            _verify(targets, name, metadata, f"{name} v{metadata.signed.version} by the keys targets delegates to it")
            for path in metadata.signed.targets:
                if not delegations.roles[name].is_delegated_path(path):
                    raise StoreError("outside-channel", f"{name} lists {path[:80]!r}, outside the paths {name} may list")
            if metadata.signed.delegations is not None:
                raise StoreError("bad-metadata", f"{name}: a channel role delegates nothing further")
        self._check_online_keys(root)

    def _check_online_keys(self, root: Metadata) -> None:
        for role, key in ((Snapshot.type, self.online.snapshot), (Timestamp.type, self.online.timestamp)):
            if tuf_key(key.public_key()).keyid not in root.signed.roles[role].keyids:
                raise StoreError("online-key-mismatch", f"root does not name this registry's {role} key; upload a "
                                                        "root that names it (old and new during a change) first")

    def start(self) -> None:
        """At startup: the online keys must be ones root names (or every re-signed timestamp
        would be refused), and a timestamp that went stale while the registry was down is
        re-signed now, not at the next scheduled check."""
        root = self.current(Root.type)
        if root is not None and self.online is not None:
            self._check_online_keys(root)
            self.refresh()

    def _check_releases(self, channel: str, metadata: Metadata) -> None:
        """Each base the channel role lists points at a release this registry holds, by the
        hashes of its release.json and release.sig."""
        bases: dict[str, dict[str, str]] = {}
        for path, target in metadata.signed.targets.items():
            parts = path.split("/")
            if len(parts) != 3 or parts[2] not in RELEASE_FILES or "sha256" not in target.hashes:
                raise StoreError("outside-channel", f"{channel} lists {path[:80]!r}: only "
                                                    f"{channel}/<base_id>/release.json and release.sig, with SHA-256")
            bases.setdefault(parts[1], {})[parts[2]] = target.hashes["sha256"]
        for base_id, hashes in bases.items():
            stored = self.store.release(hashes.get(RELEASE_FILES[0], ""))
            if stored is None or stored.base_id != base_id or hashes.get(RELEASE_FILES[1]) != sha256_hex(stored.signature):
                raise StoreError("unknown-release", f"{channel} points base {base_id[:12]} at a release.json and "
                                                    "release.sig this registry does not hold together")
            self.store.put_bytes(stored.manifest)   # a release published before this registry kept TUF
            self.store.put_bytes(stored.signature)  # metadata has no blobs of them yet: devices fetch them so

    def _resign(self, snapshot: bool) -> None:
        """A new timestamp (and snapshot when asked), signed with the online keys; inside a transaction."""
        previous_snapshot = self.current(Snapshot.type)
        if snapshot or previous_snapshot is None:
            versions = {role: self.current(role).signed.version for role in (Targets.type, *self.channels())}
            new = snapshot_of(previous_snapshot, versions)
            self.store.db.execute("INSERT INTO tuf_metadata VALUES (?, ?, ?)", (
                Snapshot.type, new.signed.version, sign(new, [self.online.snapshot])))
            previous_snapshot = new
        stamp = timestamp_of(self.current(Timestamp.type), previous_snapshot.signed.version, self.timestamp_valid)
        self.store.db.execute("INSERT INTO tuf_metadata VALUES (?, ?, ?)", (
            Timestamp.type, stamp.signed.version, sign(stamp, [self.online.timestamp])))
        self.store.db.execute("DELETE FROM tuf_metadata WHERE role = ? AND version < ?",
                              (Timestamp.type, stamp.signed.version))

    def refresh(self, now: datetime | None = None) -> bool:
        """Re-sign timestamp once half its validity has passed (and snapshot likewise); True
        if it did. The registry calls this on a schedule: a device refuses a stale timestamp."""
        if self.online is None or not self.enabled:
            return False
        now = now or datetime.now(UTC)
        stamp, snapshot = self.current(Timestamp.type), self.current(Snapshot.type)
        snapshot_due = snapshot.signed.expires - now < SNAPSHOT_EXPIRY / 2
        stamp_due = stamp.signed.expires - now < self.timestamp_valid / 2
        if not (snapshot_due or stamp_due):
            return False
        with self.store.transaction():
            self._resign(snapshot=snapshot_due)
        return True


def listed_release(metadata: Metadata, channel: str, base_id: str) -> str | None:
    """The release id (release.json's SHA-256) a channel role lists for a base, if any."""
    target = metadata.signed.targets.get(f"{channel}/{base_id}/{RELEASE_FILES[0]}")
    return target.hashes.get("sha256") if target else None


def _order(role: str) -> int:
    """Root first, then targets, then the channels: each is checked against the one before."""
    return {Root.type: 0, Targets.type: 1}.get(role, 2)
