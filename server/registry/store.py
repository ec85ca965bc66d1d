"""The registry's storage: blobs content-addressed on disk, releases and channels in SQLite.

The store draws a random registry id once; operators sign publish requests for it, and
the ids of accepted requests are kept until they expire, so none is accepted twice.

A blob is written to `incoming/`, hashed while it is written, fsynced and renamed to
`blobs/<sha256[:2]>/<sha256>` only if its hash is the one announced. A release row is
committed only after all of its blobs are in place, in one SQLite transaction (WAL,
synchronous=FULL), so a crash or kill -9 at any moment leaves every completed release
intact and no half-written one visible; `incoming/` is emptied when the store opens.
"""

from __future__ import annotations

import hashlib
import os
import secrets
import shutil
import sqlite3
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from fedpeft.core.errors import IntegrityError
from fedpeft.core.trust.atomic import fsync_folder
from fedpeft.core.trust.hashing import is_sha256_hex
from fedpeft.core.trust.release import Release

SCHEMA = """
CREATE TABLE IF NOT EXISTS releases (
    release_id TEXT PRIMARY KEY, base_id TEXT NOT NULL, version INTEGER NOT NULL,
    manifest BLOB NOT NULL, signature BLOB NOT NULL, published_at TEXT NOT NULL,
    UNIQUE (base_id, version));
CREATE TABLE IF NOT EXISTS channels (
    base_id TEXT NOT NULL, channel TEXT NOT NULL, release_id TEXT NOT NULL REFERENCES releases,
    promoted_at TEXT NOT NULL, PRIMARY KEY (base_id, channel));
CREATE TABLE IF NOT EXISTS promotions (
    base_id TEXT NOT NULL, channel TEXT NOT NULL, release_id TEXT NOT NULL,
    statement BLOB NOT NULL, signature BLOB NOT NULL, created TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS publish_requests (request_id TEXT PRIMARY KEY, valid_until REAL NOT NULL);
CREATE TABLE IF NOT EXISTS reports (
    device TEXT NOT NULL, release_id TEXT NOT NULL, channel TEXT NOT NULL, load_ok INTEGER NOT NULL, p50 REAL NOT NULL,
    p95 REAL NOT NULL, rows INTEGER NOT NULL, correct INTEGER NOT NULL, previous_correct INTEGER NOT NULL,
    created TEXT NOT NULL, drift REAL, PRIMARY KEY (device, release_id));
CREATE TABLE IF NOT EXISTS decisions (
    release_id TEXT NOT NULL, channel TEXT NOT NULL, action TEXT NOT NULL, evidence TEXT NOT NULL,
    decided_at TEXT NOT NULL, PRIMARY KEY (release_id, channel));
CREATE INDEX IF NOT EXISTS reports_by_release ON reports (release_id);
CREATE TABLE IF NOT EXISTS tuf_metadata (role TEXT NOT NULL, version INTEGER NOT NULL, body BLOB NOT NULL,
    PRIMARY KEY (role, version));
"""


class StoreError(IntegrityError):
    """A write the store refuses; `reason` is a short name for the gRPC status."""

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(f"{reason}: {detail}")
        self.reason, self.detail = reason, detail


@dataclass(frozen=True)
class ChannelMove:
    """A signed statement (promotion or publish request) pointing `channel` at a release."""

    channel: str
    created: str      # when it was signed: a channel only moves forward in signing time
    statement: bytes
    signature: bytes


@dataclass(frozen=True)
class StoredRelease:
    release_id: str
    base_id: str
    version: int
    manifest: bytes
    signature: bytes
    channels: tuple[str, ...] = ()


def check_sha256(sha256: str) -> str:
    """A blob name is a lowercase hex SHA-256 and nothing else (no path can sneak in)."""
    if not is_sha256_hex(sha256):
        raise StoreError("malformed", f"not a SHA-256: {str(sha256)[:80]!r}")
    return sha256


class BlobWriter:
    """One incoming blob, written in order and hashed on the way."""

    def __init__(self, path: Path, final: Path, sha256: str, size: int) -> None:
        self.path, self.final, self.sha256, self.size = path, final, sha256, size
        self.written = 0
        self._hash = hashlib.sha256()
        self._handle = open(path, "wb")

    def write(self, offset: int, data: bytes) -> None:
        if offset != self.written:
            raise StoreError("malformed", f"blob {self.sha256[:12]}: chunk at {offset}, expected {self.written}")
        if self.written + len(data) > self.size:
            raise StoreError("malformed", f"blob {self.sha256[:12]} is longer than its signed size {self.size}")
        self._handle.write(data)
        self._hash.update(data)
        self.written += len(data)

    def finish(self) -> None:
        self._handle.flush()
        os.fsync(self._handle.fileno())
        self._handle.close()
        if self.written != self.size or self._hash.hexdigest() != self.sha256:
            self.path.unlink()
            raise StoreError("blob-mismatch", f"blob {self.sha256[:12]}: received {self.written} bytes that do not "
                                              f"hash to the signed SHA-256")
        self.final.parent.mkdir(exist_ok=True)
        os.replace(self.path, self.final)
        fsync_folder(self.final.parent)

    def discard(self) -> None:
        """Drop the blob unless finish() put it in place; safe to call after finish()."""
        self._handle.close()
        self.path.unlink(missing_ok=True)


class RegistryStore:
    def __init__(self, root: Path) -> None:
        self.root = Path(root)
        self.blobs, self.incoming = self.root / "blobs", self.root / "incoming"
        self.blobs.mkdir(parents=True, exist_ok=True)
        shutil.rmtree(self.incoming, ignore_errors=True)  # whatever a crash left half-written
        self.incoming.mkdir()
        self.db = sqlite3.connect(self.root / "index.sqlite", isolation_level=None)
        self.db.execute("PRAGMA journal_mode=WAL")
        self.db.execute("PRAGMA synchronous=FULL")
        self.db.executescript(SCHEMA)
        self.db.execute("INSERT OR IGNORE INTO meta VALUES ('registry_id', ?)", (secrets.token_hex(16),))
        self.registry_id: str = self.db.execute("SELECT value FROM meta WHERE key = 'registry_id'").fetchone()[0]
        self._incoming_serial = 0

    def close(self) -> None:
        self.db.close()

    # blobs
    def blob_path(self, sha256: str) -> Path:
        sha256 = check_sha256(sha256)
        return self.blobs / sha256[:2] / sha256

    def has_blob(self, sha256: str) -> bool:
        return self.blob_path(sha256).is_file()

    def new_blob(self, sha256: str, size: int) -> BlobWriter:
        self._incoming_serial += 1
        return BlobWriter(self.incoming / f"{sha256}.{self._incoming_serial}", self.blob_path(sha256), sha256, size)

    # releases
    def latest_version(self, base_id: str) -> int:
        row = self.db.execute("SELECT MAX(version) FROM releases WHERE base_id = ?", (base_id,)).fetchone()
        return int(row[0] or 0)

    def check_new(self, release: Release) -> None:
        """Refuse a release the store has, or one not above its base's latest version: checked
        before a publish opens any file (a replayed public release costs the registry nothing)
        and again when it is indexed."""
        if self.db.execute("SELECT 1 FROM releases WHERE release_id = ?", (release.release_id,)).fetchone():
            raise StoreError("exists", f"release {release.release_id[:12]} is already published")
        latest = self.latest_version(release.base_id)
        if release.version <= latest:
            raise StoreError("stale-version", f"version {release.version} is not above the latest published "
                                              f"version {latest} of base {release.base_id[:12]}")

    # publish requests
    def check_unclaimed(self, request_id: str) -> None:
        if self.db.execute("SELECT 1 FROM publish_requests WHERE request_id = ?", (request_id,)).fetchone():
            raise StoreError("replayed-request", f"publish request {request_id[:12]} was used already")

    def claim(self, request_id: str, valid_until: datetime) -> None:
        """Remember a publish request until it expires (it is refused as expired after that),
        so that it opens one publish stream, even across restarts."""
        with self.transaction():
            self.db.execute("DELETE FROM publish_requests WHERE valid_until < ?", (datetime.now(UTC).timestamp(),))
            self.check_unclaimed(request_id)
            self.db.execute("INSERT INTO publish_requests VALUES (?, ?)", (request_id, valid_until.timestamp()))

    def put_bytes(self, data: bytes) -> str:
        """Store small bytes (a release.json, a release.sig) as a blob: TUF devices fetch them
        by SHA-256 like any other target file. Returns the SHA-256."""
        sha256 = hashlib.sha256(data).hexdigest()
        if not self.has_blob(sha256):
            writer = self.new_blob(sha256, len(data))
            try:
                writer.write(0, data)
                writer.finish()
            finally:
                writer.discard()
        return sha256

    def add_release(self, release: Release, manifest: bytes, signature: bytes, move: ChannelMove | None = None,
                    then: Callable[[], None] | None = None) -> None:
        """Index a verified release whose blobs are all stored, point `move`'s channel at it
        and run `then` (the channel's TUF metadata), in one transaction; versions only go up per base."""
        missing = [name for name, entry in release.files.items() if not self.has_blob(entry["sha256"])]
        if missing:
            raise StoreError("missing-blob", f"release v{release.version} lists files the registry lacks: {missing}")
        self.put_bytes(manifest)
        self.put_bytes(signature)
        with self.transaction():
            self.check_new(release)
            self.db.execute("INSERT INTO releases VALUES (?, ?, ?, ?, ?, ?)", (
                release.release_id, release.base_id, release.version, manifest, signature, _now()))
            if move is not None:
                self._move(release.base_id, release.release_id, move)
            if then is not None:
                then()

    def releases(self, base_id: str = "", release_id: str = "", after: tuple[str, int] = ("", 0),
                 limit: int = -1) -> list[StoredRelease]:
        """Releases of one base (or all) ordered by (base, version), from the first one after
        `after`, at most `limit` (-1: all), with the channels they are current in."""
        rows = self.db.execute(
            "SELECT r.release_id, r.base_id, r.version, r.manifest, r.signature, GROUP_CONCAT(c.channel) "
            "FROM releases r LEFT JOIN channels c ON c.release_id = r.release_id "
            "WHERE (? = '' OR r.base_id = ?) AND (? = '' OR r.release_id = ?) AND (r.base_id, r.version) > (?, ?) "
            "GROUP BY r.release_id ORDER BY r.base_id, r.version LIMIT ?",
            (base_id, base_id, release_id, release_id, after[0], after[1], limit))
        return [StoredRelease(*row[:5], tuple(sorted(row[5].split(","))) if row[5] else ()) for row in rows]

    def release(self, release_id: str) -> StoredRelease | None:
        found = self.releases(release_id=release_id)
        return found[0] if found else None

    def current(self, base_id: str, channel: str) -> StoredRelease | None:
        row = self.db.execute("SELECT release_id FROM channels WHERE base_id = ? AND channel = ?",
                              (base_id, channel)).fetchone()
        return self.release(row[0]) if row else None

    def promote(self, statement: dict, payload: bytes, signature: bytes,
                then: Callable[[], None] | None = None) -> StoredRelease:
        """Point a channel at a release, given a verified promotion statement that is newer
        than the last one applied to that channel (an older one is a replay), and run `then`
        (the channel's TUF metadata) in the same transaction."""
        with self.transaction():
            stored = self.release(statement["release_id"])
            if stored is None or stored.version != statement["version"] or stored.base_id != statement["base_id"]:
                raise StoreError("unknown-release", f"no release {statement['release_id'][:12]} "
                                                    f"v{statement['version']} of base {statement['base_id'][:12]}")
            self._move(stored.base_id, stored.release_id,
                       ChannelMove(statement["channel"], statement["created"], payload, signature))
            if then is not None:
                then()
        return stored

    def move_channel(self, base_id: str, release_id: str, move: ChannelMove) -> None:
        """Point a channel at a release inside the caller's transaction (an automated canary
        decision: its statement is the decision's evidence)."""
        self._move(base_id, release_id, move)

    def _move(self, base_id: str, release_id: str, move: ChannelMove) -> None:
        """Point a channel at a release, inside a transaction, if `move` was signed after the
        last statement applied to that channel (an older one is a replay)."""
        last = self.db.execute("SELECT MAX(created) FROM promotions WHERE base_id = ? AND channel = ?",
                               (base_id, move.channel)).fetchone()[0]
        if last is not None and move.created <= last:
            raise StoreError("stale-promotion", f"promotion signed {move.created} is not newer than the "
                                                f"last one applied to {move.channel} ({last})")
        self.db.execute("INSERT INTO promotions VALUES (?, ?, ?, ?, ?, ?)", (
            base_id, move.channel, release_id, move.statement, move.signature, move.created))
        self.db.execute("INSERT OR REPLACE INTO channels VALUES (?, ?, ?, ?)",
                        (base_id, move.channel, release_id, move.created))

    @contextmanager
    def transaction(self) -> Iterator[None]:
        """BEGIN IMMEDIATE ... COMMIT, or ROLLBACK on any error."""
        self.db.execute("BEGIN IMMEDIATE")
        try:
            yield
        except BaseException:
            self.db.execute("ROLLBACK")
            raise
        self.db.execute("COMMIT")


def _now() -> str:
    return datetime.now(UTC).isoformat()
