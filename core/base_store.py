"""A node's on-disk cache of base packages, addressed by `base_id`.

A base is downloaded once per node: the store keeps verified packages only (written to
a temporary folder, verified, then renamed into place), and re-verifies on every load,
so a corrupted cache is reported instead of trained on.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path

from safetensors.numpy import load_file, save_file

from .base_package import BasePackage
from .errors import IntegrityError

DEFAULT_CACHE = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "fedpeft"


def default_store_root() -> Path:
    return Path(os.environ.get("FEDPEFT_CACHE", DEFAULT_CACHE)) / "bases"


class BaseStore:
    def __init__(self, root: str | Path | None = None) -> None:
        self.root = Path(root) if root is not None else default_store_root()

    def path(self, base_id: str) -> Path:
        if len(base_id) != 64 or any(c not in "0123456789abcdef" for c in base_id):
            raise IntegrityError(f"{base_id!r} is not a base id (64 hex digits)")
        return self.root / base_id

    def tokenizer_dir(self, base_id: str) -> Path:
        return self.path(base_id) / "files"

    def has(self, base_id: str) -> bool:
        return (self.path(base_id) / "manifest.json").is_file()

    def put(self, package: BasePackage, expected_base_id: str) -> Path:
        """Verify and store a package; storing the same base twice is a no-op."""
        package.verify(expected_base_id)
        target = self.path(expected_base_id)
        if self.has(expected_base_id):
            return target
        self.root.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(prefix=".incoming-", dir=self.root))
        try:
            (staging / "files").mkdir()
            for name, data in package.files.items():
                (staging / "files" / name).write_bytes(data)
            save_file(package.tensors, str(staging / "tensors.safetensors"))
            # The manifest is written last: its presence marks a complete entry.
            (staging / "manifest.json").write_text(json.dumps(package.manifest, sort_keys=True))
            try:
                staging.rename(target)
            except OSError:
                if not self.has(expected_base_id):  # not a concurrent writer of the same base
                    raise
        finally:
            shutil.rmtree(staging, ignore_errors=True)
        return target

    def load(self, base_id: str) -> BasePackage:
        folder = self.path(base_id)
        if not self.has(base_id):
            raise IntegrityError(f"base {base_id[:12]} is not in the cache at {self.root}")
        manifest = json.loads((folder / "manifest.json").read_text())
        files = {p.name: p.read_bytes() for p in (folder / "files").iterdir()}
        tensors = load_file(str(folder / "tensors.safetensors"))
        package = BasePackage(manifest=manifest, files=files, tensors=tensors)
        package.verify(base_id)
        return package
