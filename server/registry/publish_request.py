"""The operator's signed request to publish one release to one channel of one registry.

A signed release is not enough to publish: every run folder holds one, and List makes
them public, so whoever holds one could move a base's version floor by publishing it.
A publish request binds the release id to a registry id (drawn once by its store), a
channel and ten minutes; the registry accepts each request once (store.py keeps the ids
until they expire), so a leaked release, a leaked request or a replayed stream publishes
nothing. On success the request is also the channel's promotion record.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from fedpeft.core.trust.hashing import is_sha256_hex, sha256_hex
from fedpeft.core.trust.release import Release, check_channel
from fedpeft.core.trust.signed_files import ManifestError, check_signed, precise_timestamp, sign_manifest, timestamp

PUBLISH_REQUEST_TYPE = "fedpeft/publish-request"
PUBLISH_REQUEST_VALID = timedelta(minutes=10)  # also the most a request may claim: an older one is refused
CLOCK_SKEW = timedelta(minutes=5)              # how far in the future a request's signing time may be


@dataclass(frozen=True)
class PublishOrder:
    """A checked publish request: what the operator allowed, and the statement's id."""

    request_id: str   # SHA-256 of the statement bytes: what the registry remembers
    release_id: str
    channel: str
    created: str      # microseconds, so that it orders against the channel's promotions
    valid_until: datetime  # the earlier of its expiry and ten minutes after signing


def sign_publish_request(key: Ed25519PrivateKey, registry_id: str, release: Release, channel: str,
                         now: datetime | None = None) -> tuple[bytes, bytes]:
    """(statement bytes, signature bytes) allowing `registry_id` to publish `release` into `channel`."""
    now = now or datetime.now(UTC)
    return sign_manifest({
        "type": PUBLISH_REQUEST_TYPE, "registry_id": registry_id, "channel": check_channel(channel),
        "release_id": release.release_id, "base_id": release.base_id, "version": release.version, "files": {},
        "created": precise_timestamp(now), "expires": timestamp(now + PUBLISH_REQUEST_VALID),
    }, key)


def check_publish_request(payload: bytes, signature: bytes, public_key: Ed25519PublicKey, registry_id: str,
                          now: datetime | None = None) -> PublishOrder:
    """The order in a publish request signed by `public_key`, if it names this registry
    and is within its ten minutes (`expired` when older, `not-yet-valid` when signed in
    the future, `wrong-registry`, `malformed`)."""
    now = now or datetime.now(UTC)
    statement = check_signed(payload, signature, public_key, PUBLISH_REQUEST_TYPE, now, "publish-request")
    try:
        channel = check_channel(statement["channel"])
        if not (is_sha256_hex(statement["release_id"]) and isinstance(statement["registry_id"], str)):
            raise ValueError("release_id must be a SHA-256 and registry_id a string")
        created = datetime.fromisoformat(statement["created"])
        if created.tzinfo is None:
            raise ValueError(f"created {statement['created']!r} names no time zone")
    except (KeyError, ValueError, TypeError) as exc:
        raise ManifestError("malformed", f"publish request: {exc}") from exc
    if statement["registry_id"] != registry_id:
        raise ManifestError("wrong-registry", f"publish request is for registry {statement['registry_id'][:16]!r}, "
                                              f"this is {registry_id[:16]!r}")
    if created > now + CLOCK_SKEW:
        raise ManifestError("not-yet-valid", f"publish request signed at {statement['created']}, in the future")
    if now - created > PUBLISH_REQUEST_VALID:  # whatever `expires` claims
        raise ManifestError("expired", f"publish request signed at {statement['created']}, more than "
                                       f"{PUBLISH_REQUEST_VALID} ago")
    valid_until = min(datetime.fromisoformat(statement["expires"]), created + PUBLISH_REQUEST_VALID)
    return PublishOrder(sha256_hex(payload), statement["release_id"], channel, precise_timestamp(created), valid_until)

