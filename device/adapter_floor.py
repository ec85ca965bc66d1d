"""The version floor of adapter exports (`fedpeft export --onto`) applied onto one export.

A device slot keeps a floor for the releases it installs (device/slot.py); an adapter
export handed to `predict --adapter` has none of its own, so the export folder it is
applied onto keeps one: `adapter-floor.json`, the highest `adapter_version` ever loaded
onto it. An older adapter export is then refused (`older-version`) even though its
signature is good, as the slot refuses an older release. An unversioned one (exported
from an unsigned adapter) counts as version 0. The file is read without following links.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from fedpeft.core.errors import ConfigError
from fedpeft.core.trust.atomic import write_atomic
from fedpeft.core.trust.files import UnreadableFile, read_small
from fedpeft.core.trust.json_reader import JSONRefused, parse_json_object
from fedpeft.core.trust.signed_files import ManifestError

FLOOR_FILE = "adapter-floor.json"


def adapter_version(manifest: dict[str, Any]) -> int:
    """The signed adapter export's version (0 when it was made from an unsigned adapter)."""
    version = manifest.get("adapter_version")
    if version is None:
        return 0
    if not isinstance(version, int) or isinstance(version, bool) or version < 0:
        raise ManifestError("malformed", f"adapter.json: adapter_version {str(version)[:40]!r} is not a version")
    return version


class AdapterFloor:
    """The floor kept in `export_folder`: check an adapter export against it before
    loading, raise it once the adapter has loaded."""

    def __init__(self, export_folder: Path) -> None:
        self.path = Path(export_folder) / FLOOR_FILE

    def floor(self) -> int:
        if not os.path.lexists(self.path):
            return 0
        try:
            value = parse_json_object(read_small(self.path, follow_links=False), str(self.path)).get("adapter_version")
        except (UnreadableFile, JSONRefused) as exc:
            raise ManifestError("malformed", f"{self.path} is unusable: {exc}") from exc
        if not isinstance(value, int) or isinstance(value, bool) or value < 0:
            raise ManifestError("malformed", f"{self.path}: adapter_version must be a non-negative integer")
        return value

    def check(self, manifest: dict[str, Any]) -> int:
        """The adapter export's version if it is not older than the floor."""
        version, floor = adapter_version(manifest), self.floor()
        if version < floor:
            raise ManifestError("older-version", f"adapter export v{version} is older than v{floor}, the newest "
                                                 f"applied to {self.path.parent} before")
        return version

    def record(self, version: int) -> None:
        if version <= self.floor():
            return
        try:
            write_atomic(self.path, (json.dumps({"adapter_version": version}) + "\n").encode())
        except OSError as exc:  # a read-only export: the floor cannot be kept, so the adapter is not used
            raise ConfigError(f"cannot keep the adapter floor in {self.path}: {exc.strerror or exc}") from exc
