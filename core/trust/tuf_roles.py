"""TUF metadata for adapter releases, built and signed with python-tuf's Metadata API.

How the roles map onto the product (docs/concepts/trust-model.md has the picture):

- root (offline, a threshold of several keys) names every other role's keys; rotating or
  revoking any key is a new root version, signed by a threshold of the old and the new.
- targets (the operator key, the one that also signs release.json) delegates each channel
  to its own role: `canary` may list only `canary/*` paths, `stable` only `stable/*`.
- a channel role (canary, stable, ...; its own keys and threshold, of limited power: it
  can move its channel among releases the operator signed and nothing else) lists
  `<channel>/<base_id>/release.json` and `release.sig`: a promotion is a new version of
  that role's metadata. What release.json lists (the adapter files, by SHA-256) is checked
  by the device as before.
- snapshot and timestamp (online keys held by the registry, short expiry) pin one
  consistent state of all the above and prove it is fresh.

Target files are named by content (consistent snapshots, `<sha256>.<name>` on the wire),
which is how the registry's blob store already names them.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from datetime import UTC, datetime, timedelta

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from securesystemslib.signer import CryptoSigner, SSlibKey
from tuf.api.metadata import (
    DelegatedRole,
    Delegations,
    Metadata,
    MetaFile,
    Root,
    Snapshot,
    TargetFile,
    Targets,
    Timestamp,
)
from tuf.api.serialization.json import JSONSerializer

from .hashing import sha256_hex
from .keys import key_id
from .release import RELEASE_NAME, check_channel
from .signed_files import ManifestError, check_signed, sign_manifest, validity

ROOT_EXPIRY = timedelta(days=365)
TARGETS_EXPIRY = timedelta(days=365)
CHANNEL_EXPIRY = timedelta(days=90)   # a channel role not re-signed within this is refused (promote renews it)
SNAPSHOT_EXPIRY = timedelta(days=1)   # re-signed by the registry on every change and well before this
TIMESTAMP_EXPIRY = timedelta(minutes=10)  # the freeze window: a registry that stops re-signing is refused after this
ROOT_THRESHOLD = 2
RELEASE_FILES = (f"{RELEASE_NAME}.json", f"{RELEASE_NAME}.sig")
TOP_LEVEL = (Root.type, Targets.type, Snapshot.type, Timestamp.type)
ENDORSEMENT_TYPE = "fedpeft/tuf-root-endorsement"
ENDORSEMENT = "root-endorsement"  # .json/.sig: the operator key vouches for root v1 (how a device migrates)
ENDORSEMENT_DAYS = 3650


def tuf_key(public_key: Ed25519PublicKey) -> SSlibKey:
    return SSlibKey.from_crypto(public_key)


def ed25519_key(key: SSlibKey) -> Ed25519PublicKey:
    """The cryptography key of a TUF Ed25519 key (its keyval is the raw public key in hex)."""
    return Ed25519PublicKey.from_public_bytes(bytes.fromhex(key.keyval["public"]))


def expiry(after: timedelta, now: datetime | None = None) -> datetime:
    return ((now or datetime.now(UTC)) + after).replace(microsecond=0)


def to_bytes(metadata: Metadata) -> bytes:
    return metadata.to_bytes(JSONSerializer(compact=True))


def sign(metadata: Metadata, keys: Iterable[Ed25519PrivateKey]) -> bytes:
    """Replace the signatures with one per key and return the bytes served."""
    metadata.signatures.clear()
    for key in keys:
        metadata.sign(CryptoSigner(key), append=True)
    return to_bytes(metadata)


def new_root(root_keys: list[Ed25519PublicKey], targets_keys: list[Ed25519PublicKey], snapshot_key: Ed25519PublicKey,
             timestamp_key: Ed25519PublicKey, threshold: int = ROOT_THRESHOLD) -> Metadata[Root]:
    root = Root(expires=expiry(ROOT_EXPIRY), consistent_snapshot=True)
    for role, keys, role_threshold in ((Root.type, root_keys, threshold), (Targets.type, targets_keys, 1),
                                       (Snapshot.type, [snapshot_key], 1), (Timestamp.type, [timestamp_key], 1)):
        for key in keys:
            root.add_key(tuf_key(key), role)
        root.roles[role].threshold = role_threshold
    return Metadata(root)


def new_targets(channels: Mapping[str, tuple[list[Ed25519PublicKey], int]]) -> Metadata[Targets]:
    """The operator's targets role: no targets of its own, one terminating delegation per
    channel that may list only paths under `<channel>/`."""
    keys = {tuf_key(k).keyid: tuf_key(k) for keys, _ in channels.values() for k in keys}
    roles = {name: DelegatedRole(name, [tuf_key(k).keyid for k in role_keys], threshold, True,
                                 paths=[f"{check_channel(name)}/*/*"])  # <channel>/<base_id>/<file>
             for name, (role_keys, threshold) in channels.items()}
    return Metadata(Targets(expires=expiry(TARGETS_EXPIRY), delegations=Delegations(keys, roles=roles)))


def new_channel() -> Metadata[Targets]:
    return Metadata(Targets(expires=expiry(CHANNEL_EXPIRY)))


def release_path(channel: str, base_id: str, name: str = f"{RELEASE_NAME}.json") -> str:
    return f"{channel}/{base_id}/{name}"


def with_release(channel_role: Metadata[Targets], channel: str, base_id: str, manifest: bytes, signature: bytes,
                 version: int, release_id: str) -> Metadata[Targets]:
    """The channel role's next version, pointing `base_id` at the release whose release.json
    and release.sig are `manifest` and `signature` (other bases untouched); expiry renewed."""
    signed = channel_role.signed
    signed.version += 1
    signed.expires = expiry(CHANNEL_EXPIRY)
    for name, data in zip(RELEASE_FILES, (manifest, signature), strict=True):
        path = release_path(channel, base_id, name)
        target = TargetFile.from_data(path, data, ["sha256"])
        if name == RELEASE_FILES[0]:
            target.unrecognized_fields["custom"] = {"version": version, "release_id": release_id}
        signed.targets[path] = target
    return channel_role


def snapshot_of(previous: Metadata[Snapshot] | None, versions: Mapping[str, int]) -> Metadata[Snapshot]:
    """The next snapshot: the version of targets and of every channel role now."""
    meta = {f"{role}.json": MetaFile(version) for role, version in sorted(versions.items())}
    version = previous.signed.version + 1 if previous else 1
    return Metadata(Snapshot(version=version, expires=expiry(SNAPSHOT_EXPIRY), meta=meta))


def timestamp_of(previous: Metadata[Timestamp] | None, snapshot_version: int,
                 valid_for: timedelta = TIMESTAMP_EXPIRY) -> Metadata[Timestamp]:
    version = previous.signed.version + 1 if previous else 1
    return Metadata(Timestamp(version=version, expires=expiry(valid_for), snapshot_meta=MetaFile(snapshot_version)))


def operator_keys(root: Root) -> dict[str, Ed25519PublicKey]:
    """The keys (by fedpeft key id) root names for the targets role: the only ones whose
    release.json signature a device on TUF accepts, so rotating or revoking the operator
    key is a root change the devices follow."""
    keys = [ed25519_key(root.keys[keyid]) for keyid in root.roles[Targets.type].keyids]
    return {key_id(key): key for key in keys}


def sign_endorsement(operator_key: Ed25519PrivateKey, root_body: bytes) -> tuple[bytes, bytes]:
    """The operator key's statement that `root_body` is the TUF root to trust: a device
    provisioned with that key alone moves to TUF on its next pull (device/tuf_trust.py)."""
    return sign_manifest({"type": ENDORSEMENT_TYPE, "root_sha256": sha256_hex(root_body), "files": {},
                          **validity(ENDORSEMENT_DAYS)}, operator_key)


def check_endorsement(payload: bytes, signature: bytes, operator_key: Ed25519PublicKey, root_body: bytes) -> None:
    """Refuse (ManifestError) unless the operator key endorsed exactly `root_body`."""
    statement = check_signed(payload, signature, operator_key, ENDORSEMENT_TYPE, name=ENDORSEMENT)
    if statement.get("root_sha256") != sha256_hex(root_body):
        raise ManifestError("wrong-root", "the operator endorsed another root.json than the registry serves")
