"""Signed manifests of folders: `<name>.json` lists files by hash, `<name>.sig` signs it.

Used for published adapter releases (core/release.py) and ONNX exports (export/).
The signature covers the exact bytes of the manifest file and is checked before those
bytes are parsed; every failure is a ManifestError whose `reason` names the check.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from fedpeft.core.errors import IntegrityError

from .files import UnreadableFile, file_sha256, read_small, regular_file_size
from .hashing import canonical_json, is_sha256_hex, sha256_hex
from .json_reader import JSONRefused, parse_json_object
from .keys import key_id, verify_signature


class ManifestError(IntegrityError):
    """A signed folder that must not be used; `reason` says which check failed."""

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(f"{reason}: {detail}")
        self.reason, self.detail = reason, detail


def timestamp(moment: datetime) -> str:
    return moment.astimezone(UTC).replace(microsecond=0).isoformat().replace("+00:00", "Z")


def precise_timestamp(moment: datetime) -> str:
    """A signing time to the microsecond, in the one spelling that sorts as it orders:
    promotions and publish requests are compared in one table (server/registry/store.py)."""
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def validity(days: float, now: datetime | None = None) -> dict[str, str]:
    now = now or datetime.now(UTC)
    return {"created": timestamp(now), "expires": timestamp(now + timedelta(days=days))}


def is_plain_name(file_name: object) -> bool:
    """A relative POSIX path a signed manifest may list: no NUL or other control character
    (the OS would raise on one), no backslash, no absolute path, no empty, `.` or `..` part,
    so that it names a file inside the folder and nothing else."""
    if not isinstance(file_name, str) or not 0 < len(file_name) <= 255 or "\\" in file_name:
        return False
    if any(ord(c) < 32 or ord(c) == 127 for c in file_name):
        return False
    return all(part not in ("", ".", "..") for part in file_name.split("/"))


def file_entries(folder: Path, names: Iterable[str]) -> dict[str, dict[str, Any]]:
    """Size and SHA-256 (read as a stream: model files are large) of each named file."""
    entries = {}
    for name in sorted(names):
        path = Path(folder) / name
        try:
            entries[name] = {"sha256": file_sha256(path), "size": regular_file_size(path)}
        except UnreadableFile as exc:
            raise ManifestError("missing-file", f"{name}: {exc}") from exc
    return entries


def read_file(folder: Path, name: str) -> bytes:
    """A manifest or signature file: regular, and small (core/trust/files.py)."""
    try:
        return read_small(Path(folder) / name)
    except UnreadableFile as exc:
        raise ManifestError("missing-file" if exc.reason == "missing-file" else "malformed", f"{name}: {exc}") from exc


def sign_manifest(manifest: dict[str, Any], key: Ed25519PrivateKey) -> tuple[bytes, bytes]:
    """(manifest bytes, signature record bytes): what `<name>.json` and `<name>.sig` hold."""
    payload = canonical_json(manifest)
    signature = {"key_id": key_id(key.public_key()), "signature": key.sign(payload).hex()}
    return payload, (json.dumps(signature, indent=1) + "\n").encode()


def write_signed(folder: Path, name: str, manifest: dict[str, Any], key: Ed25519PrivateKey) -> str:
    """Write `<name>.json` and its signature `<name>.sig`; returns the manifest's id
    (the SHA-256 of its bytes)."""
    payload, signature = sign_manifest(manifest, key)
    (Path(folder) / f"{name}.json").write_bytes(payload)
    (Path(folder) / f"{name}.sig").write_bytes(signature)
    return sha256_hex(payload)


def signer_of(signature: bytes, name: str = "manifest") -> tuple[str, bytes]:
    """(key id, raw signature) of a signature record; says nothing yet about validity."""
    try:
        record = parse_json_object(signature, f"{name}.sig")
        return str(record["key_id"]), bytes.fromhex(record["signature"])
    except (JSONRefused, ValueError, KeyError, TypeError) as exc:
        raise ManifestError("malformed", f"{name}.sig is not a signature record: {exc}") from exc


def check_signed(payload: bytes, signature: bytes, public_key: Ed25519PublicKey, manifest_type: str,
                 now: datetime | None = None, name: str = "manifest") -> dict[str, Any]:
    """The manifest in `payload` once the signature by `public_key`, the type and the
    expiry check out; the files it lists are not looked at."""
    signer, sig = signer_of(signature, name)
    expected_signer = key_id(public_key)
    if signer != expected_signer:
        raise ManifestError("wrong-key", f"signed by key {signer[:12]}, expected {expected_signer[:12]}")
    if not verify_signature(public_key, sig, payload):
        raise ManifestError("bad-signature", f"{name}.sig does not match the bytes of {name}.json")

    try:  # only now, signed by the expected key, are the bytes parsed
        manifest = parse_json_object(payload, f"{name}.json")
        if manifest["type"] != manifest_type:
            raise ValueError(f"type {manifest['type']!r}, expected {manifest_type!r}")
        expires = datetime.fromisoformat(manifest["expires"])
        if expires.tzinfo is None:  # a naive time cannot be compared with the clock
            raise ValueError(f"expires {manifest['expires']!r} names no time zone")
        files = manifest["files"]
        if not isinstance(files, dict):
            raise ValueError("files must be an object")
        for file_name, entry in files.items():
            if not is_plain_name(file_name):
                raise ManifestError("bad-file-name", f"{name}.json lists {str(file_name)[:80]!r}, which is not a "
                                                     f"plain relative file name")
            if not (isinstance(entry.get("size"), int) and is_sha256_hex(entry.get("sha256"))):
                raise ValueError(f"{file_name}: entry needs an integer size and a lowercase hex SHA-256")
    except (JSONRefused, ValueError, KeyError, TypeError, AttributeError) as exc:
        raise ManifestError("malformed", f"{name}.json: {exc}") from exc
    if (now or datetime.now(UTC)) >= expires:
        raise ManifestError("expired", f"{name}.json expired at {manifest['expires']}")
    return manifest


def check_files(folder: Path, files: dict[str, dict[str, Any]]) -> None:
    """Each listed file's size, then its SHA-256 read as a stream: a file of another size
    (a link to a device, a FIFO) is refused before it is read."""
    for file_name, entry in files.items():
        path = Path(folder) / file_name
        try:
            if regular_file_size(path) != entry["size"] or file_sha256(path) != entry["sha256"]:
                raise ManifestError("file-mismatch", f"{file_name} differs from the signed hash")
        except UnreadableFile as exc:
            raise ManifestError("missing-file", f"{file_name}: {exc}") from exc


def read_signed(folder: Path, name: str, public_key: Ed25519PublicKey, manifest_type: str,
                now: datetime | None = None) -> tuple[str, dict[str, Any]]:
    """(id, manifest) of a signed manifest whose signature, type, expiry and file hashes
    all check out."""
    payload = read_file(folder, f"{name}.json")
    manifest = check_signed(payload, read_file(folder, f"{name}.sig"), public_key, manifest_type, now, name)
    check_files(folder, manifest["files"])
    return sha256_hex(payload), manifest
