"""What an operator does to a TUF registry's metadata, with offline keys: create the first
metadata and keys, sign a channel's next version for a publish or promotion, and rotate or
revoke a key (a new root or targets version, with the roles it signs re-signed).

The registry checks everything it is sent (tuf_repository.py); what the operator signs is
first checked here against the operator's own keys, so a registry cannot get a channel
key to sign targets it slipped in.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from securesystemslib.exceptions import UnverifiedSignatureError
from tuf.api.metadata import Metadata, Root, Snapshot, Targets, Timestamp

from fedpeft.core.errors import ConfigError
from fedpeft.core.trust.keys import load_private_key, new_key_pair
from fedpeft.core.trust.release import Release, check_channel
from fedpeft.core.trust.tuf_roles import (
    CHANNEL_EXPIRY,
    ENDORSEMENT,
    ROOT_EXPIRY,
    TARGETS_EXPIRY,
    TOP_LEVEL,
    expiry,
    new_channel,
    new_root,
    new_targets,
    sign,
    sign_endorsement,
    tuf_key,
    with_release,
)
from fedpeft.device.registry_client import RegistryClient
from fedpeft.protos import registry_pb2 as pb

DEFAULT_CHANNELS = ("canary", "stable")


@dataclass(frozen=True)
class InitializedRepository:
    offline: Path    # root-N.key, one key per channel: keep off the registry host
    registry: Path   # snapshot.key, timestamp.key, metadata/: `fedpeft registry serve --tuf`
    root: Path       # root.json devices are provisioned with (`fedpeft device pull --trusted-root`)


def init_repository(out: Path, operator_key: Ed25519PrivateKey, channels: tuple[str, ...] = DEFAULT_CHANNELS,
                    root_keys: int = 3, threshold: int = 2) -> InitializedRepository:
    """Create the offline root and channel keys, the registry's online keys and version 1
    of root, targets (the operator key) and every channel role, endorsed by the operator key."""
    out = Path(out)
    if out.exists() and any(out.iterdir()):
        raise ConfigError(f"{out} is not empty; refusing to overwrite TUF keys")
    if set(channels) & set(TOP_LEVEL):
        raise ConfigError(f"{sorted(set(channels) & set(TOP_LEVEL))}: the names of TUF's own roles are not channels")
    if not 1 <= threshold <= root_keys:
        raise ConfigError(f"a root threshold of {threshold} needs 1 to {root_keys} root keys")
    offline, registry = out / "offline", out / "registry"
    (registry / "metadata").mkdir(parents=True)
    offline.mkdir()

    def key(path: Path) -> Ed25519PrivateKey:
        new_key_pair(path)
        return load_private_key(path)

    roots = [key(offline / f"root-{index}.key") for index in range(1, root_keys + 1)]
    channel_keys = {check_channel(name): key(offline / f"{name}.key") for name in channels}
    snapshot, timestamp = key(registry / "snapshot.key"), key(registry / "timestamp.key")
    root = new_root([k.public_key() for k in roots], [operator_key.public_key()], snapshot.public_key(),
                    timestamp.public_key(), threshold)
    root_body = sign(root, roots)
    metadata = registry / "metadata"
    (metadata / "1.root.json").write_bytes(root_body)
    targets = new_targets({name: ([k.public_key()], 1) for name, k in channel_keys.items()})
    (metadata / "1.targets.json").write_bytes(sign(targets, [operator_key]))
    for name, channel_key in channel_keys.items():
        (metadata / f"1.{name}.json").write_bytes(sign(new_channel(), [channel_key]))
    payload, signature = sign_endorsement(operator_key, root_body)
    (metadata / f"{ENDORSEMENT}.json").write_bytes(payload)
    (metadata / f"{ENDORSEMENT}.sig").write_bytes(signature)
    (out / "root.json").write_bytes(root_body)
    return InitializedRepository(offline, registry, out / "root.json")


def _metadata(client: RegistryClient, role: str) -> Metadata:
    try:
        return Metadata.from_bytes(client.metadata(role))
    except Exception as exc:  # python-tuf's DeserializationError, ValueError... on a registry's garbage
        raise ConfigError(f"the registry's {role} metadata is unreadable: {type(exc).__name__}") from None


def current(client: RegistryClient, role: str, signed_by: list[Ed25519PrivateKey]) -> Metadata:
    """The registry's newest metadata of `role`, if one of `signed_by` signed it (what the
    operator is about to re-sign must be what the operator's keys signed before)."""
    metadata = _metadata(client, role)
    for key in signed_by:
        public = tuf_key(key.public_key())
        signature = metadata.signatures.get(public.keyid)
        if signature is None:
            continue
        try:
            public.verify_signature(signature, metadata.signed_bytes)
        except UnverifiedSignatureError:
            raise ConfigError(f"the registry's {role} metadata carries a bad signature by a key given for it") from None
        return metadata
    raise ConfigError(f"the registry's {role} metadata is not signed by the key(s) given for it")


def channel_update(client: RegistryClient, channel_keys: list[Ed25519PrivateKey], channel: str, release: Release,
                   signed: tuple[bytes, bytes]) -> pb.RoleMetadata:
    """The channel role's next version pointing the release's base at `release` (its
    release.json and release.sig bytes `signed`), signed with the channel keys."""
    if not channel_keys:
        raise ConfigError(f"this registry keeps TUF metadata: give {channel}'s key (--channel-key) to move {channel}")
    role = with_release(current(client, channel, channel_keys), channel, release.base_id, signed[0], signed[1],
                        release.version, release.release_id)
    return pb.RoleMetadata(role=channel, metadata=sign(role, channel_keys))


def rotate(client: RegistryClient, role: str, *, add: list[Ed25519PrivateKey], remove: list[Ed25519PublicKey],
           delegator_keys: list[Ed25519PrivateKey], role_keys: list[Ed25519PrivateKey] = (),
           threshold: int | None = None) -> list[tuple[str, int]]:
    """Add and remove keys of `role` (root, targets, or a channel) in its delegator's next
    version (root for root and targets, targets for a channel) signed by `delegator_keys`,
    and re-sign the role's own metadata with the keys it keeps and the added ones, in one
    change. `role_keys`: the role's current keys the operator holds (what the registry
    holds now is checked against them). A new root is signed by the old root keys given
    and the new ones. A removed key is revoked: devices refuse what only it signed. Both
    re-signed roles get a fresh expiry, so running it with no key change renews them."""
    if role in (Snapshot.type, Timestamp.type):
        raise ConfigError(f"{role} is the registry's online key: name a new one in root (keys rotate root is not "
                          "for it yet) and restart the registry with it")
    removed = {tuf_key(key).keyid for key in remove}
    signers = [k for k in role_keys if tuf_key(k.public_key()).keyid not in removed] + list(add)
    if role in (Root.type, Targets.type):
        delegator, lifetime = current(client, Root.type, delegator_keys), ROOT_EXPIRY
    else:
        delegator, lifetime = current(client, Targets.type, delegator_keys), TARGETS_EXPIRY
    body = delegator.signed
    try:
        for key in add:
            body.add_key(tuf_key(key.public_key()), role)
        for keyid in removed:
            body.revoke_key(keyid, role)
        if threshold is not None:
            body.get_delegated_role(role).threshold = threshold
    except ValueError as exc:  # a role the delegator does not name, a key the role does not have
        raise ConfigError(f"cannot change {role}'s keys: {exc}") from None
    body.version += 1
    body.expires = expiry(lifetime)
    if role == Root.type:
        return client.put_metadata([(Root.type, sign(delegator, [*delegator_keys, *signers]))])
    own = current(client, role, [*role_keys, *add])
    own.signed.version += 1
    own.signed.expires = expiry(TARGETS_EXPIRY if role == Targets.type else CHANNEL_EXPIRY)  # renewed with each change
    return client.put_metadata([(delegator.signed.type, sign(delegator, delegator_keys)), (role, sign(own, signers))])
