"""A device slot's `state.json`: read without following links, every field checked.

state.json sits in a folder other programs can write to; it is not signed. What it says
must still never take the slot out of its folder or below its floor: a release folder is
a plain name of the one form the slot writes (`v<version>-<first 12 hex of the release
id>`, under releases/), agreeing with its entry's version and release id, and every
installed version is at or under the floor. Anything else is refused by name
(IntegrityError "device state ... is unusable: ..."), never used.
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path
from typing import Any

from fedpeft.core.errors import IntegrityError
from fedpeft.core.trust.files import UnreadableFile, read_small
from fedpeft.core.trust.hashing import is_sha256_hex
from fedpeft.core.trust.json_reader import JSONRefused, parse_json_object

STATE_FILE = "state.json"
STATE_KEYS = {"base_id", "current", "previous", "floor", "seen"}
ENTRY_KEYS = {"version", "release_id", "folder"}
FOLDER_PATTERN = re.compile(r"v[1-9][0-9]{0,17}-[0-9a-f]{12}")


def release_folder_name(version: int, release_id: str) -> str:
    """The only name a release's folder under releases/ may have."""
    return f"v{version}-{release_id[:12]}"


def empty_state(base_id: str) -> dict[str, Any]:
    return {"base_id": base_id, "current": None, "previous": None, "floor": 0, "seen": []}


def _is_count(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


def _check_entry(entry: Any, which: str, state: dict[str, Any]) -> None:
    if entry is None:
        return
    if not isinstance(entry, dict) or set(entry) != ENTRY_KEYS:
        raise ValueError(f"{which} must be null or an object with {sorted(ENTRY_KEYS)}")
    version, release_id, folder = entry["version"], entry["release_id"], entry["folder"]
    if not (_is_count(version) and version >= 1 and is_sha256_hex(release_id)):
        raise ValueError(f"{which} needs a positive integer version and a SHA-256 release id")
    if not (isinstance(folder, str) and FOLDER_PATTERN.fullmatch(folder)
            and folder == release_folder_name(version, release_id)):
        raise ValueError(f"{which}.folder {str(folder)[:80]!r} is not the slot's name for v{version} "
                         f"({release_folder_name(version, release_id)!r}); the slot opens nothing outside releases/")
    if version > state["floor"]:
        raise ValueError(f"{which} is v{version}, above the floor v{state['floor']}")
    if release_id not in state["seen"]:
        raise ValueError(f"{which} release {release_id[:12]} is not among the releases this slot installed")


def check_state(state: dict[str, Any], base_id: str) -> dict[str, Any]:
    """`state` if every field is of the form the slot writes and they agree; ValueError otherwise."""
    if set(state) != STATE_KEYS:
        raise ValueError(f"keys {sorted(state)[:8]}, expected {sorted(STATE_KEYS)}")
    if state["base_id"] != base_id:
        raise ValueError(f"it belongs to base {str(state['base_id'])[:12]}, not {base_id[:12]}")
    if not _is_count(state["floor"]):
        raise ValueError("floor must be a non-negative integer")
    if not (isinstance(state["seen"], list) and all(is_sha256_hex(r) for r in state["seen"])):
        raise ValueError("seen must be a list of SHA-256 release ids")
    _check_entry(state["current"], "current", state)
    _check_entry(state["previous"], "previous", state)
    return state


def load_state(folder: Path, base_id: str) -> dict[str, Any]:
    """The slot's state (a fresh one when it has none), or IntegrityError naming why it is unusable."""
    path = Path(folder) / STATE_FILE
    if not os.path.lexists(path):
        return empty_state(base_id)
    try:
        return check_state(parse_json_object(read_small(path, follow_links=False), str(path)), base_id)
    except (UnreadableFile, JSONRefused, ValueError) as exc:
        raise IntegrityError(f"device state {path} is unusable: {exc}") from exc


def state_bytes(state: dict[str, Any]) -> bytes:
    return (json.dumps(state, indent=1) + "\n").encode()
