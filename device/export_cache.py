"""A device node's verified training exports, one per (base, template), kept across runs.

A device node in a federation trains with the run's training export instead of the
quantized base (it holds the base's int8 weights in its graphs). The server sends it once,
in the install message; the node stores it only after export.json's signature (the
operator's key it was provisioned with), its file hashes, its base and its template check
out, and after no file the manifest does not list came with it. Like the base cache it is
written to a scratch folder and renamed into place, and re-verified whenever a process
opens it (device/client.py)."""

from __future__ import annotations

from pathlib import Path

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from fedpeft.core.errors import IntegrityError
from fedpeft.core.trust.atomic import staged_folder
from fedpeft.core.trust.hashing import is_sha256_hex
from fedpeft.core.trust.signed_files import ManifestError

from .predict import EXPORT_NAME, open_export

SIGNED = {f"{EXPORT_NAME}.json", f"{EXPORT_NAME}.sig"}


class ExportCache:
    def __init__(self, root: Path) -> None:
        self.root = Path(root) / "exports"

    def path(self, base_id: str, template_id: str) -> Path:
        if not (is_sha256_hex(base_id) and is_sha256_hex(template_id)):
            raise IntegrityError("a training export is cached by base and template id (64 hex digits each)")
        return self.root / f"{base_id[:16]}-{template_id[:16]}"

    def has(self, base_id: str, template_id: str) -> bool:
        return (self.path(base_id, template_id) / f"{EXPORT_NAME}.json").is_file()

    def put(self, files: dict[str, bytes], base_id: str, template_id: str, operator_key: Ed25519PublicKey) -> Path:
        """Verify and store an export sent as files; an export already held is kept as it is."""
        target = self.path(base_id, template_id)
        if self.has(base_id, template_id):
            return target
        with staged_folder(target, replace=True) as staging:
            for name, data in files.items():
                (staging / name).parent.mkdir(parents=True, exist_ok=True)
                (staging / name).write_bytes(data)
            manifest = open_export(staging, operator_key, base_id=base_id)
            if manifest.get("template_id") != template_id:
                raise ManifestError("wrong-template", f"export made for template {str(manifest.get('template_id'))[:12]}, "
                                                      f"the run's is {template_id[:12]}")
            unlisted = sorted(set(files) - set(manifest["files"]) - SIGNED)
            if unlisted:
                raise ManifestError("unlisted-file", f"the export carries files its manifest does not list: {unlisted[:3]}")
        return target
