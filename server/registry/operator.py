"""What an operator does to a registry: publish an adapter as a new release, promote a
release to a channel, roll a channel back. Every step is signed with the operator key;
the registry checks it, and devices check it again. A publish sends a signed publish
request for that registry, release and channel (publish_request.py) with the release,
and the registry makes it the channel's current release in the same transaction."""

from __future__ import annotations

import shutil
import tempfile
from datetime import UTC, datetime
from pathlib import Path

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from fedpeft.core.errors import ConfigError
from fedpeft.core.trust.hashing import sha256_hex
from fedpeft.core.trust.json_reader import JSONRefused, parse_json_object
from fedpeft.core.trust.release import (
    ADAPTER_FILES,
    ONNX_ADAPTER_FILES,
    RELEASE_NAME,
    Release,
    check_release,
    sign_promotion,
    sign_release,
    verify_release,
)
from fedpeft.core.trust.signed_files import read_file, sign_manifest, validity
from fedpeft.device.predict import ADAPTER_EXPORT_NAME, ADAPTER_EXPORT_TYPE, open_export
from fedpeft.device.registry_client import RegistryClient
from fedpeft.protos import registry_pb2 as pb

from .publish_request import sign_publish_request
from .tuf_operator import channel_update

BEFORE_ANY_EXPIRY = datetime(1970, 1, 1, tzinfo=UTC)


def releases(client: RegistryClient, key: Ed25519PrivateKey, base_id: str) -> list[Release]:
    """The registry's releases of a base, each signature checked (expired ones included:
    an old release is still a valid source of weights for a rollback)."""
    return [check_release(e.release.manifest, e.release.signature, key.public_key(), base_id=base_id,
                          now=BEFORE_ANY_EXPIRY) for e in client.releases(base_id)]


def latest(client: RegistryClient, base_id: str) -> tuple[int, str | None]:
    """(version, release id) of the newest release of a base the registry lists, read with
    the guarded JSON reader and not verified: a publish only needs a number above it (the
    registry refuses any other), and a release signed with a key since rotated still counts."""
    newest: tuple[int, str | None] = (0, None)
    for entry in client.releases(base_id):
        try:
            version = parse_json_object(entry.release.manifest, "listed release.json")["version"]
        except (JSONRefused, KeyError):
            continue
        if isinstance(version, int) and version > newest[0]:
            newest = (version, sha256_hex(entry.release.manifest))
    return newest


def describe(entry: pb.ReleaseEntry) -> str:
    """One line of `registry list`: what a listed release claims, read with the guarded JSON
    reader and not verified (devices verify before use); a registry's garbage is named, not raised."""
    try:
        m = parse_json_object(entry.release.manifest, "listed release.json")
        rollback_of = f"\trollback of {_shown(m['rollback_of'])}" if m.get("rollback_of") else ""
        return (f"v{int(m['version'])}\tbase {_shown(m['base_id'])}\t{_shown(','.join(entry.channels)) or '-'}\t"
                f"expires {_shown(m['expires'], 40)}{rollback_of}")
    except JSONRefused as exc:
        return f"unreadable entry: {exc.reason}"
    except (KeyError, TypeError, ValueError):
        return "unreadable entry: malformed"


def _shown(value: object, width: int = 12) -> str:
    """A registry-supplied value cut to `width`, escaped unless printable (no terminal codes)."""
    text = str(value)[:width]
    return text if text.isprintable() else ascii(text)


def promote(client: RegistryClient, key: Ed25519PrivateKey, release: Release, channel: str,
            channel_keys: list[Ed25519PrivateKey] = ()) -> pb.PromoteReply:
    """Make `release` current in `channel`: a signed promotion, and on a TUF registry the
    channel role's next version signed with `channel_keys`."""
    role = None
    if client.has_tuf():
        stored = next((e.release for e in client.releases(release.base_id)
                       if sha256_hex(e.release.manifest) == release.release_id), None)
        if stored is None:
            raise ConfigError(f"the registry does not hold release {release.release_id[:12]}")
        role = channel_update(client, list(channel_keys), channel, release, (stored.manifest, stored.signature))
    return client.promote(*sign_promotion(key, release, channel), channel_role=role)


def send(client: RegistryClient, key: Ed25519PrivateKey, release: Release, signed: tuple[bytes, bytes], channel: str,
         blobs: dict[str, Path], channel_keys: list[Ed25519PrivateKey] = ()) -> pb.PublishReply:
    """Publish a signed release (release.json, release.sig bytes) into `channel` with a fresh
    publish request for this registry (and on a TUF registry the channel role's next
    version, signed with `channel_keys`), sending `blobs` (by SHA-256)."""
    role = channel_update(client, list(channel_keys), channel, release, signed) if client.has_tuf() else None
    return client.publish(sign_publish_request(key, client.identity(), release, channel), signed, blobs,
                          channel_role=role)


def publish(client: RegistryClient, key: Ed25519PrivateKey, adapter: Path, channel: str, *,
            onnx_adapter: Path | None = None, valid_days: float = 30.0,
            channel_keys: list[Ed25519PrivateKey] = ()) -> Release:
    """Publish the adapter folder of a signed release (e.g. a run's `adapter/`) as the
    base's next version, with an `fedpeft export --onto` folder's .onnx_adapter if given,
    and make it the current release of `channel`."""
    source = verify_release(adapter, key.public_key())
    version, parent = latest(client, source.base_id)
    with tempfile.TemporaryDirectory() as tmp:
        staging = Path(tmp)
        for name in ADAPTER_FILES:
            shutil.copyfile(Path(adapter) / name, staging / name)
        if onnx_adapter is not None:
            for name in ONNX_ADAPTER_FILES:
                if not (Path(onnx_adapter) / name).exists():
                    raise ConfigError(f"{onnx_adapter} lacks {name}: give a folder written by `fedpeft export --onto`")
                shutil.copyfile(Path(onnx_adapter) / name, staging / name)
            onnx_manifest = open_export(staging, key.public_key(), source.base_id, ADAPTER_EXPORT_NAME,
                                        ADAPTER_EXPORT_TYPE)  # signature, expiry, file hashes, base
            if onnx_manifest.get("release_id") != source.release_id:
                raise ConfigError(f"{onnx_adapter} was exported from release {str(onnx_manifest.get('release_id'))[:12]}, "
                                  f"not from {adapter}'s {source.release_id[:12]}")
        release = sign_release(staging, key, version=version + 1,
                               base_id=source.base_id, template_id=source.template_id, method=source.method,
                               labels=source.labels, parent=parent,
                               metrics=source.manifest.get("metrics", {}), valid_days=valid_days)
        signed = read_file(staging, f"{RELEASE_NAME}.json"), read_file(staging, f"{RELEASE_NAME}.sig")
        blobs = {entry["sha256"]: staging / name for name, entry in release.files.items()}
        send(client, key, release, signed, channel, blobs, channel_keys)
    return release


def rollback(client: RegistryClient, key: Ed25519PrivateKey, base_id: str, to_version: int, channel: str, *,
             valid_days: float = 30.0, channel_keys: list[Ed25519PrivateKey] = ()) -> Release:
    """Publish the weights of release `to_version` again as a new, higher version and make
    it current in `channel`: devices move back without their anti-rollback floor moving."""
    published = releases(client, key, base_id)
    target = next((r for r in published if r.version == to_version), None)
    if target is None:
        raise ConfigError(f"no release v{to_version} of base {base_id[:12]}; published: {[r.version for r in published]}")
    version, parent = latest(client, base_id)
    manifest = {**target.manifest, "version": version + 1, "parent": parent,
                "rollback_of": target.release_id, **validity(valid_days)}
    payload, signature = sign_manifest(manifest, key)
    release = check_release(payload, signature, key.public_key())
    send(client, key, release, (payload, signature), channel, {}, channel_keys)  # the registry holds every blob
    return release
