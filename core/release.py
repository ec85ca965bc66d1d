"""Signed releases: the manifest that makes a published adapter folder trustworthy.

A release folder is a PEFT adapter folder (`adapter_config.json` +
`adapter_model.safetensors`, so `PeftModel.from_pretrained` loads it) plus
`release.json`, a manifest of its files and tensors, and `release.sig`, the operator's
Ed25519 signature over the exact bytes of `release.json`. As in python-tuf, the
signature is checked before the manifest is parsed, and every failure names its reason.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from safetensors import SafetensorError
from safetensors.numpy import load_file

from .errors import IntegrityError
from .hashing import canonical_json, sha256_hex, tensor_manifest
from .keys import key_id, verify_signature

RELEASE_TYPE = "fedpeft/adapter-release"
RELEASE_FORMAT = 1
MANIFEST_FILE = "release.json"
SIGNATURE_FILE = "release.sig"
ADAPTER_FILES = ("adapter_config.json", "adapter_model.safetensors")


class ReleaseError(IntegrityError):
    """A release that must not be used; `reason` says which check failed."""

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(f"{reason}: {detail}")
        self.reason, self.detail = reason, detail


@dataclass(frozen=True)
class Release:
    release_id: str          # SHA-256 of the exact release.json bytes
    manifest: dict[str, Any]

    @property
    def version(self) -> int:
        return int(self.manifest["version"])

    @property
    def base_id(self) -> str:
        return str(self.manifest["base_id"])


def _timestamp(moment: datetime) -> str:
    return moment.astimezone(UTC).replace(microsecond=0).isoformat().replace("+00:00", "Z")


def _adapter_tensors(folder: Path) -> dict[str, Any]:
    try:
        return tensor_manifest(load_file(str(folder / "adapter_model.safetensors")))
    except (SafetensorError, OSError) as exc:
        raise ReleaseError("tensor-mismatch", f"adapter_model.safetensors does not load: {exc}") from exc


def sign_release(folder: Path, key: Ed25519PrivateKey, *, version: int, base_id: str, template_id: str,
                 parent: str | None, metrics: dict[str, float], valid_days: float,
                 now: datetime | None = None) -> Release:
    """Write release.json and release.sig into an adapter folder saved by PEFT."""
    folder = Path(folder)
    now = now or datetime.now(UTC)
    files = {}
    for name in ADAPTER_FILES:
        data = (folder / name).read_bytes()
        files[name] = {"sha256": sha256_hex(data), "size": len(data)}
    manifest = {
        "type": RELEASE_TYPE, "format": RELEASE_FORMAT, "version": int(version),
        "base_id": base_id, "template_id": template_id, "parent": parent,
        "files": files, "tensors": _adapter_tensors(folder), "metrics": metrics,
        "created": _timestamp(now), "expires": _timestamp(now + timedelta(days=valid_days)),
    }
    payload = canonical_json(manifest)
    signature = {"key_id": key_id(key.public_key()), "signature": key.sign(payload).hex()}
    (folder / MANIFEST_FILE).write_bytes(payload)
    (folder / SIGNATURE_FILE).write_text(json.dumps(signature, indent=1) + "\n")
    return Release(sha256_hex(payload), manifest)


def _read(folder: Path, name: str) -> bytes:
    try:
        return (folder / name).read_bytes()
    except OSError as exc:
        raise ReleaseError("missing-file", f"{name}: {exc.strerror}") from exc


def verify_release(folder: Path, public_key: Ed25519PublicKey, *, base_id: str | None = None,
                   now: datetime | None = None) -> Release:
    """The release in `folder` if every check passes; raises ReleaseError otherwise."""
    folder = Path(folder)
    payload = _read(folder, MANIFEST_FILE)
    try:
        signature = json.loads(_read(folder, SIGNATURE_FILE))
        signer, sig = str(signature["key_id"]), bytes.fromhex(signature["signature"])
    except (ValueError, KeyError, TypeError) as exc:
        raise ReleaseError("malformed", f"{SIGNATURE_FILE} is not a signature record: {exc}") from exc
    expected_signer = key_id(public_key)
    if signer != expected_signer:
        raise ReleaseError("wrong-key", f"signed by key {signer[:12]}, expected {expected_signer[:12]}")
    if not verify_signature(public_key, sig, payload):
        raise ReleaseError("bad-signature", f"{SIGNATURE_FILE} does not match the bytes of {MANIFEST_FILE}")

    try:
        manifest = json.loads(payload)
        if manifest["type"] != RELEASE_TYPE or manifest["format"] != RELEASE_FORMAT:
            raise ValueError(f"type {manifest['type']!r} format {manifest['format']!r}")
        expires = datetime.fromisoformat(manifest["expires"])
        files, tensors, version = manifest["files"], manifest["tensors"], int(manifest["version"])
        if not isinstance(files, dict) or not isinstance(tensors, dict):
            raise ValueError("files and tensors must be objects")
    except (ValueError, KeyError, TypeError) as exc:
        raise ReleaseError("malformed", f"{MANIFEST_FILE}: {exc}") from exc
    moment = now or datetime.now(UTC)
    if moment >= expires:
        raise ReleaseError("expired", f"version {version} expired at {manifest['expires']}")
    if base_id is not None and manifest["base_id"] != base_id:
        raise ReleaseError("wrong-base", f"made for base {str(manifest['base_id'])[:12]}, this base is {base_id[:12]}")
    if sorted(files) != sorted(ADAPTER_FILES):
        raise ReleaseError("malformed", f"manifest lists files {sorted(files)}, expected {list(ADAPTER_FILES)}")
    for name, entry in files.items():
        data = _read(folder, name)
        if len(data) != entry["size"] or sha256_hex(data) != entry["sha256"]:
            raise ReleaseError("file-mismatch", f"{name} differs from the signed hash")
    if _adapter_tensors(folder) != tensors:
        raise ReleaseError("tensor-mismatch", "adapter tensors differ from the signed manifest")
    return Release(sha256_hex(payload), manifest)
