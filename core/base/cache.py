"""A node's on-disk cache of base packages and adapter templates, addressed by hash.

A base is downloaded once per node: the cache keeps verified content only (written to a
temporary folder, verified, then renamed into place) and re-verifies on every load, so a
corrupted cache is reported instead of trained on.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path

from safetensors.numpy import load_file, save_file

from fedpeft.core.adapters.template import AdapterTemplate
from fedpeft.core.errors import IntegrityError
from fedpeft.core.trust.hashing import is_sha256_hex
from fedpeft.core.trust.json_reader import read_json

from .package import BasePackage

DEFAULT_CACHE = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "fedpeft"


def default_cache_root() -> Path:
    return Path(os.environ.get("FEDPEFT_CACHE", DEFAULT_CACHE))


def _check_id(kind: str, value: str) -> str:
    if not is_sha256_hex(value):
        raise IntegrityError(f"{value!r} is not a {kind} id (64 hex digits)")
    return value


def _stage_and_rename(root: Path, target: Path, write: Callable[[Path], None], done: Callable[[], bool]) -> None:
    """Write into a fresh folder beside `target`, then rename it into place atomically."""
    root.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=".incoming-", dir=root))
    try:
        write(staging)
        try:
            staging.rename(target)
        except OSError:
            if not done():  # not a concurrent writer of the same content
                raise
    finally:
        shutil.rmtree(staging, ignore_errors=True)


class NodeCache:
    def __init__(self, root: str | Path | None = None) -> None:
        self.root = Path(root) if root is not None else default_cache_root()

    def path(self, base_id: str) -> Path:
        return self.root / "bases" / _check_id("base", base_id)

    def has(self, base_id: str) -> bool:
        return (self.path(base_id) / "manifest.json").is_file()

    def put(self, package: BasePackage, expected_base_id: str) -> Path:
        """Verify and store a package; storing the same base twice is a no-op."""
        package.verify(expected_base_id)
        target = self.path(expected_base_id)
        if self.has(expected_base_id):
            return target

        def write(staging: Path) -> None:
            (staging / "files").mkdir()
            for name, data in package.files.items():
                (staging / "files" / name).write_bytes(data)
            save_file(package.tensors, str(staging / "tensors.safetensors"))
            (staging / "manifest.json").write_text(json.dumps(package.manifest, sort_keys=True))

        _stage_and_rename(target.parent, target, write, lambda: self.has(expected_base_id))
        return target

    def load(self, base_id: str) -> BasePackage:
        folder = self.path(base_id)
        if not self.has(base_id):
            raise IntegrityError(f"base {base_id[:12]} is not in the node cache at {self.root}")
        # A model config may hold Infinity; the manifest is checked against base_id below anyway.
        manifest = read_json(folder / "manifest.json", allow_nonfinite=True)
        files = {p.name: p.read_bytes() for p in (folder / "files").iterdir()}
        tensors = load_file(str(folder / "tensors.safetensors"))
        package = BasePackage(manifest=manifest, files=files, tensors=tensors)
        package.verify(base_id)
        return package

    def template_path(self, template_id: str) -> Path:
        return self.root / "templates" / _check_id("template", template_id)

    def has_template(self, template_id: str) -> bool:
        return (self.template_path(template_id) / "template.json").is_file()

    def put_template(self, template: AdapterTemplate, expected_template_id: str) -> None:
        if template.template_id != expected_template_id:
            raise IntegrityError(
                f"template hashes to {template.template_id[:12]}, expected {expected_template_id[:12]}"
            )
        target = self.template_path(expected_template_id)
        if self.has_template(expected_template_id):
            return

        def write(staging: Path) -> None:
            save_file(template.init, str(staging / "init.safetensors"))
            (staging / "template.json").write_text(json.dumps(template.description(), sort_keys=True))

        _stage_and_rename(target.parent, target, write, lambda: self.has_template(expected_template_id))

    def load_template(self, template_id: str) -> AdapterTemplate:
        folder = self.template_path(template_id)
        if not self.has_template(template_id):
            raise IntegrityError(f"template {template_id[:12]} is not in the node cache at {self.root}")
        description = read_json(folder / "template.json")
        template = AdapterTemplate.from_description(description, load_file(str(folder / "init.safetensors")))
        if template.template_id != template_id:
            raise IntegrityError(f"cached template {template_id[:12]} no longer matches its id")
        return template
