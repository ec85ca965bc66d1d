"""The record of a device's personal adapter (`personal/personal.json`) and the check that
binds the `.onnx_adapter` beside it to it.

The personal adapter is never signed (the device holds no operator key), so its record
names the adapter file's SHA-256: a swapped, truncated or corrupt file is refused by name
before ONNX Runtime reads a byte of it. Both files are read without following links.
Kept apart from device/personal.py so that device/predict.py can check a personal adapter
without importing the trainer.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, fields
from pathlib import Path

from fedpeft.core.errors import IntegrityError
from fedpeft.core.trust.files import UnreadableFile, file_sha256, plain_folder, read_small
from fedpeft.core.trust.hashing import is_sha256_hex
from fedpeft.core.trust.json_reader import JSONRefused, parse_json_object

RECORD = "personal.json"
ADAPTER = "adapter.onnx_adapter"


@dataclass(frozen=True)
class PersonalAdapter:
    release_id: str
    version: int
    base_id: str
    examples: int
    epochs: int
    loss: float
    trained_at: str
    adapter_sha256: str  # of ADAPTER: what binds the unsigned file to this record

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=1) + "\n"


@dataclass(frozen=True)
class CheckedPersonal:
    """A personal adapter that device/personal.py `personal_adapter()` found trained from the
    slot's verified current release and bound to its record by SHA-256: the only form in
    which device/predict.py accepts a personal adapter under an operator key (a path to an
    `.onnx_adapter` with a `personal.json` beside it is not, as anyone can write that pair)."""
    path: Path
    record: PersonalAdapter


_TYPES = {"release_id": str, "version": int, "base_id": str, "examples": int, "epochs": int, "loss": (int, float),
          "trained_at": str, "adapter_sha256": str}


def _checked(data: dict) -> PersonalAdapter:
    names = {f.name for f in fields(PersonalAdapter)}
    if "adapter_sha256" not in data:
        raise ValueError("it names no SHA-256 of its adapter (made by an older fedpeft): "
                         "run fedpeft device train again")
    if set(data) != names:
        raise ValueError(f"keys {sorted(data)[:10]}, expected {sorted(names)}")
    for name, kind in _TYPES.items():
        if not isinstance(data[name], kind) or isinstance(data[name], bool):
            raise ValueError(f"{name} must be {getattr(kind, '__name__', 'a number')}")
    if not (is_sha256_hex(data["release_id"]) and is_sha256_hex(data["adapter_sha256"])):
        raise ValueError("release_id and adapter_sha256 must be SHA-256 hex")
    if not math.isfinite(data["loss"]) or min(data["version"], data["examples"], data["epochs"]) < 0:
        raise ValueError("version, examples and epochs must be non-negative and loss finite")
    return PersonalAdapter(**data)


def read_record(folder: Path) -> PersonalAdapter:
    """The record in `folder` (a real folder, a regular file); IntegrityError names why not."""
    path = Path(folder) / RECORD
    try:
        return _checked(parse_json_object(read_small(plain_folder(folder) / RECORD, follow_links=False), str(path)))
    except (UnreadableFile, JSONRefused, ValueError) as exc:
        raise IntegrityError(f"personal adapter record {path} is unusable: {exc}") from exc


def checked_adapter(folder: Path, record: PersonalAdapter) -> Path:
    """The personal `.onnx_adapter` in `folder` if it is a regular file with the record's SHA-256."""
    path = Path(folder) / ADAPTER
    try:
        matches = file_sha256(path, follow_links=False) == record.adapter_sha256
    except UnreadableFile as exc:
        raise IntegrityError(f"personal adapter {path} is unusable: {exc}") from exc
    if not matches:
        raise IntegrityError(f"personal adapter {path} differs from the SHA-256 its record names "
                             "(changed or corrupt): run fedpeft device train again")
    return path


def checked_adapter_file(path: Path) -> Path:
    """A personal `.onnx_adapter` given by path, its folder's record binding it: a check against
    damage for `--no-verify`, not a trust decision (nothing ties the record to a release)."""
    path = Path(path)
    if path.name != ADAPTER:
        raise IntegrityError(f"{path}: a personal adapter is named {ADAPTER}, beside its {RECORD}")
    return checked_adapter(path.parent, read_record(path.parent))
