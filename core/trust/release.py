"""Signed releases: the manifest that makes a published adapter folder trustworthy.

A release folder is a PEFT adapter folder (`adapter_config.json` +
`adapter_model.safetensors`, so `PeftModel.from_pretrained` loads it) plus
`release.json`, a manifest of its files and tensors, and `release.sig`, the operator's
Ed25519 signature over the exact bytes of `release.json` (core/signed_files.py). A
release may also carry the adapter as an ONNX Runtime `.onnx_adapter` (the signed output
of `fedpeft export --onto`), so ONNX devices apply it without PyTorch.

A promotion is a short-lived signed statement that a release is now the current one of a
channel (canary, stable) of the registry.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from safetensors import SafetensorError
from safetensors.numpy import load_file

from .hashing import sha256_hex, tensor_manifest
from .signed_files import (
    ManifestError,
    check_files,
    check_signed,
    file_entries,
    precise_timestamp,
    read_file,
    sign_manifest,
    timestamp,
    validity,
    write_signed,
)

RELEASE_TYPE = "fedpeft/adapter-release"
RELEASE_NAME = "release"  # release.json + release.sig
ADAPTER_FILES = ("adapter_config.json", "adapter_model.safetensors")
ONNX_ADAPTER_FILES = ("adapter.onnx_adapter", "adapter.json", "adapter.sig")  # `fedpeft export --onto`
PROMOTION_TYPE = "fedpeft/promotion"
PROMOTION_VALID = timedelta(minutes=10)  # an older promotion statement is refused as a replay
CHANNEL_PATTERN = re.compile(r"[a-z][a-z0-9-]{0,31}")
MAX_LABELS = 10_000      # class names a release may carry: a head of this many rows is still small
MAX_LABEL_CHARS = 256


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

    @property
    def method(self) -> str | None:
        """The adapter method (which tensors clients train); None in releases made before it was recorded."""
        method = self.manifest.get("method")
        return str(method) if method is not None else None

    @property
    def files(self) -> dict[str, dict[str, Any]]:
        return dict(self.manifest["files"])


def _adapter_tensors(folder: Path) -> dict[str, Any]:
    try:
        return tensor_manifest(load_file(str(folder / "adapter_model.safetensors")))
    except (SafetensorError, OSError) as exc:
        raise ManifestError("tensor-mismatch", f"adapter_model.safetensors does not load: {exc}") from exc


def release_files(folder: Path) -> tuple[str, ...]:
    """The adapter files, and the ONNX adapter files when the folder has them."""
    return ADAPTER_FILES + (ONNX_ADAPTER_FILES if all((Path(folder) / n).exists() for n in ONNX_ADAPTER_FILES) else ())


def sign_release(folder: Path, key: Ed25519PrivateKey, *, version: int, base_id: str, template_id: str,
                 labels: list[str], parent: str | None, metrics: dict[str, float], valid_days: float,
                 method: str | None = None, now: datetime | None = None) -> Release:
    """Write release.json and release.sig into an adapter folder saved by PEFT."""
    folder = Path(folder)
    manifest = {
        "type": RELEASE_TYPE, "version": int(version), "base_id": base_id, "template_id": template_id,
        "method": method, "labels": list(labels), "parent": parent, "files": file_entries(folder, release_files(folder)),
        "tensors": _adapter_tensors(folder), "metrics": metrics, **validity(valid_days, now),
    }
    return Release(write_signed(folder, RELEASE_NAME, manifest, key), manifest)


def check_release(payload: bytes, signature: bytes, public_key: Ed25519PublicKey, *, base_id: str | None = None,
                  now: datetime | None = None) -> Release:
    """The release described by release.json bytes and release.sig bytes, if the signature,
    expiry, file list and base check out; its files are not looked at."""
    manifest = check_signed(payload, signature, public_key, RELEASE_TYPE, now, RELEASE_NAME)
    if sorted(manifest["files"]) not in (sorted(ADAPTER_FILES), sorted(ADAPTER_FILES + ONNX_ADAPTER_FILES)):
        raise ManifestError("malformed", f"release lists files {sorted(manifest['files'])}, expected {list(ADAPTER_FILES)} "
                                         f"and optionally {list(ONNX_ADAPTER_FILES)}")
    missing = [k for k in ("version", "base_id", "template_id", "labels", "tensors") if k not in manifest]
    if missing or not isinstance(manifest["version"], int) or manifest["version"] < 1:
        raise ManifestError("malformed", f"release.json lacks {missing} or has no positive integer version")
    release = Release(sha256_hex(payload), manifest)
    if base_id is not None and release.base_id != base_id:
        raise ManifestError("wrong-base", f"made for base {release.base_id[:12]}, this base is {base_id[:12]}")
    return release


def verify_release(folder: Path, public_key: Ed25519PublicKey, *, base_id: str | None = None,
                   now: datetime | None = None) -> Release:
    """The release in `folder` if every check passes; raises ManifestError otherwise."""
    folder = Path(folder)
    release = check_release(read_file(folder, f"{RELEASE_NAME}.json"), read_file(folder, f"{RELEASE_NAME}.sig"),
                            public_key, base_id=base_id, now=now)
    check_files(folder, release.files)
    if _adapter_tensors(folder) != release.manifest["tensors"]:
        raise ManifestError("tensor-mismatch", "adapter tensors differ from the signed manifest")
    return release


def check_labels(labels: Any) -> list[str]:
    """`labels` if it is a list of at most MAX_LABELS strings of at most MAX_LABEL_CHARS:
    an unsigned label list sizes a model's head, so its length is bounded before use."""
    if not isinstance(labels, list):
        raise ManifestError("malformed", f"labels must be a list, not {type(labels).__name__}")
    if len(labels) > MAX_LABELS:
        raise ManifestError("too-many-labels", f"{len(labels)} labels, more than the {MAX_LABELS} allowed")
    if not all(isinstance(label, str) and len(label) <= MAX_LABEL_CHARS for label in labels):
        raise ManifestError("malformed", f"labels must be strings of at most {MAX_LABEL_CHARS} characters")
    return list(labels)


def check_channel(channel: str) -> str:
    if not isinstance(channel, str) or not CHANNEL_PATTERN.fullmatch(channel):
        raise ManifestError("malformed", f"channel {channel!r}: use lowercase letters, digits and '-', up to 32")
    return channel


def sign_promotion(key: Ed25519PrivateKey, release: Release, channel: str,
                   now: datetime | None = None) -> tuple[bytes, bytes]:
    """(statement bytes, signature bytes) making `release` the current one of `channel`."""
    now = now or datetime.now(UTC)
    return sign_manifest({
        "type": PROMOTION_TYPE, "release_id": release.release_id, "version": release.version,
        "base_id": release.base_id, "channel": check_channel(channel), "files": {},
        # microseconds: two promotions of one channel within a second must still order
        "created": precise_timestamp(now), "expires": timestamp(now + PROMOTION_VALID),
    }, key)


def check_promotion(payload: bytes, signature: bytes, public_key: Ed25519PublicKey,
                    now: datetime | None = None) -> dict[str, Any]:
    statement = check_signed(payload, signature, public_key, PROMOTION_TYPE, now, "promotion")
    try:
        check_channel(statement["channel"])
        if not (isinstance(statement["release_id"], str) and isinstance(statement["version"], int)
                and isinstance(statement["base_id"], str)):
            raise ValueError("release_id, version and base_id")
        datetime.fromisoformat(statement["created"])
    except (KeyError, ValueError, TypeError) as exc:
        raise ManifestError("malformed", f"promotion statement: {exc}") from exc
    return statement
