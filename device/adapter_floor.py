"""The version floors of adapter exports (`fedpeft export --onto`) and release folders applied onto one export.

A device slot keeps a floor for the releases it installs (device/slot.py); an adapter
export or a release folder handed to `predict --adapter` has none of its own, so the
export folder it is applied onto keeps one: `adapter-floor.json`, the highest
`adapter_version` of an adapter export and, apart from it, the highest `release_version`
of a release folder ever loaded onto it (a registry numbers its releases itself, so the
two do not compare). An older one is then refused (`older-version`) even though its
signature is good, as the slot refuses an older release. An unversioned adapter export
(exported from an unsigned adapter) counts as version 0. The file is read without
following links.
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
ADAPTER_EXPORTS = "adapter_version"  # the floor of `fedpeft export --onto` folders
RELEASES = "release_version"  # the floor of release folders (a registry's version numbers)
_WHAT = {ADAPTER_EXPORTS: "adapter export", RELEASES: "release"}


def adapter_version(manifest: dict[str, Any]) -> int:
    """The signed adapter export's version (0 when it was made from an unsigned adapter)."""
    version = manifest.get("adapter_version")
    if version is None:
        return 0
    if not isinstance(version, int) or isinstance(version, bool) or version < 0:
        raise ManifestError("malformed", f"adapter.json: adapter_version {str(version)[:40]!r} is not a version")
    return version


class AdapterFloor:
    """The floor kept in `export_folder` for adapter exports (`kind` ADAPTER_EXPORTS) or
    release folders (RELEASES): check a version against it before loading, raise it once
    the adapter has loaded."""

    def __init__(self, export_folder: Path, kind: str = ADAPTER_EXPORTS) -> None:
        self.path = Path(export_folder) / FLOOR_FILE
        self.kind = kind

    def _floors(self) -> dict[str, int]:
        if not os.path.lexists(self.path):
            return {}
        try:
            floors = parse_json_object(read_small(self.path, follow_links=False), str(self.path))
        except (UnreadableFile, JSONRefused) as exc:
            raise ManifestError("malformed", f"{self.path} is unusable: {exc}") from exc
        if ADAPTER_EXPORTS not in floors and RELEASES not in floors:
            raise ManifestError("malformed", f"{self.path} names no {ADAPTER_EXPORTS} or {RELEASES}")
        for kind in (ADAPTER_EXPORTS, RELEASES):
            value = floors.get(kind, 0)
            if not isinstance(value, int) or isinstance(value, bool) or value < 0:
                raise ManifestError("malformed", f"{self.path}: {kind} must be a non-negative integer")
        return {kind: floors[kind] for kind in (ADAPTER_EXPORTS, RELEASES) if kind in floors}

    def floor(self) -> int:
        return self._floors().get(self.kind, 0)

    def check(self, manifest: dict[str, Any]) -> int:
        """The adapter export's version if it is not older than the floor."""
        return self.check_version(adapter_version(manifest))

    def check_version(self, version: int) -> int:
        """`version` (an adapter export's `adapter_version`, or a release folder's `version`
        for RELEASES) if it is not older than the floor."""
        floor = self.floor()
        if version < floor:
            raise ManifestError("older-version", f"{_WHAT[self.kind]} v{version} is older than v{floor}, the newest "
                                                 f"applied to {self.path.parent} before")
        return version

    def record(self, version: int) -> None:
        floors = self._floors()
        if version <= floors.get(self.kind, 0):
            return
        try:
            write_atomic(self.path, (json.dumps({**floors, self.kind: version}) + "\n").encode())
        except OSError as exc:  # a read-only export: the floor cannot be kept, so the adapter is not used
            raise ConfigError(f"cannot keep the adapter floor in {self.path}: {exc.strerror or exc}") from exc
