"""Signed releases: the manifest that makes a published adapter folder trustworthy.

A release folder is a PEFT adapter folder (`adapter_config.json` +
`adapter_model.safetensors`, so `PeftModel.from_pretrained` loads it) plus
`release.json`, a manifest of its files and tensors, and `release.sig`, the operator's
Ed25519 signature over the exact bytes of `release.json` (core/signed_files.py).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from safetensors import SafetensorError
from safetensors.numpy import load_file

from .hashing import tensor_manifest
from .signed_files import ManifestError, file_entries, read_signed, validity, write_signed

RELEASE_TYPE = "fedpeft/adapter-release"
RELEASE_NAME = "release"  # release.json + release.sig
ADAPTER_FILES = ("adapter_config.json", "adapter_model.safetensors")


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

    @property
    def template_id(self) -> str:
        return str(self.manifest["template_id"])

    @property
    def labels(self) -> list[str]:
        return [str(label) for label in self.manifest["labels"]]


def _adapter_tensors(folder: Path) -> dict[str, Any]:
    try:
        return tensor_manifest(load_file(str(folder / "adapter_model.safetensors")))
    except (SafetensorError, OSError) as exc:
        raise ManifestError("tensor-mismatch", f"adapter_model.safetensors does not load: {exc}") from exc


def sign_release(folder: Path, key: Ed25519PrivateKey, *, version: int, base_id: str, template_id: str,
                 labels: list[str], parent: str | None, metrics: dict[str, float], valid_days: float,
                 now: datetime | None = None) -> Release:
    """Write release.json and release.sig into an adapter folder saved by PEFT."""
    folder = Path(folder)
    manifest = {
        "type": RELEASE_TYPE, "version": int(version), "base_id": base_id, "template_id": template_id,
        "labels": list(labels), "parent": parent, "files": file_entries(folder, ADAPTER_FILES), "tensors": _adapter_tensors(folder),
        "metrics": metrics, **validity(valid_days, now),
    }
    return Release(write_signed(folder, RELEASE_NAME, manifest, key), manifest)


def verify_release(folder: Path, public_key: Ed25519PublicKey, *, base_id: str | None = None,
                   now: datetime | None = None) -> Release:
    """The release in `folder` if every check passes; raises ManifestError otherwise."""
    folder = Path(folder)
    release_id, manifest = read_signed(folder, RELEASE_NAME, public_key, RELEASE_TYPE, now)
    if sorted(manifest["files"]) != sorted(ADAPTER_FILES):
        raise ManifestError("malformed", f"release lists files {sorted(manifest['files'])}, expected {list(ADAPTER_FILES)}")
    missing = [k for k in ("version", "base_id", "template_id", "labels", "tensors") if k not in manifest]
    if missing or not isinstance(manifest["version"], int):
        raise ManifestError("malformed", f"release.json lacks {missing} or has a non-integer version")
    release = Release(release_id, manifest)
    if base_id is not None and release.base_id != base_id:
        raise ManifestError("wrong-base", f"made for base {release.base_id[:12]}, this base is {base_id[:12]}")
    if _adapter_tensors(folder) != manifest["tensors"]:
        raise ManifestError("tensor-mismatch", "adapter tensors differ from the signed manifest")
    return release
