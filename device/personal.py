"""A device's own adapter: the installed release fine-tuned on the device's rows, kept on the device.

The rows and the personalized adapter never leave the device. The adapter is stored as
`personal/adapter.onnx_adapter` in the slot's folder with `personal/personal.json`
recording the release (and base) it was trained from. Prediction uses it only while
that release is still the slot's current one: after a newer release is pulled, the old
personal adapter is not used and the device says so until it personalizes again.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path

from safetensors.numpy import load_file

from fedpeft.core.errors import ConfigError, IntegrityError
from fedpeft.core.training.data import TextSplit
from fedpeft.core.training.settings import TrainSettings
from fedpeft.core.trust.atomic import staged_folder
from fedpeft.core.trust.files import UnreadableFile, read_small

from .onnx_adapter import write_onnx_adapter
from .slot import Device
from .trainer import DeviceTrainer

PERSONAL_DIR = "personal"
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


def personalize(device: Device, trainer: DeviceTrainer, rows: TextSplit, settings: TrainSettings,
                progress: Callable[[str], None] = lambda line: None) -> PersonalAdapter:
    """Fine-tune the slot's current release on `rows`; replaces an earlier personal adapter."""
    release = device.current_release()  # verified again: signature, expiry, files, base
    if release is None:
        raise ConfigError(f"{device.folder} has no adapter installed: pull one first (fedpeft device pull)")
    if trainer.manifest["base_id"] != device.base_id:
        raise ConfigError(f"the export is for base {trainer.manifest['base_id'][:12]}, this device runs "
                          f"{device.base_id[:12]}")
    if not len(rows):
        raise ConfigError("no rows to personalize on")
    progress(f"[fedpeft] personalizing v{release.version} on {len(rows)} local rows, {settings.epochs} epochs "
             f"({settings.optimizer}, ONNX Runtime)")
    arrays = load_file(str(device.current / "adapter_model.safetensors"))
    trained, result = trainer.train(arrays, rows, settings)
    record = PersonalAdapter(release.release_id, release.version, release.base_id, result.examples, settings.epochs,
                             result.loss, datetime.now(UTC).isoformat(timespec="seconds"))
    with staged_folder(device.folder / PERSONAL_DIR, replace=True) as staging:
        write_onnx_adapter(trained, trainer.graph_names, staging / ADAPTER, release.version)
        (staging / RECORD).write_text(json.dumps(asdict(record), indent=1) + "\n")
    return record


def personal_adapter(device: Device) -> tuple[Path | None, str]:
    """The personal `.onnx_adapter` to predict with, or None and why not."""
    folder = device.folder / PERSONAL_DIR
    if not (folder / RECORD).exists():
        return None, "no personal adapter (fedpeft device train makes one)"
    try:
        record = PersonalAdapter(**json.loads(read_small(folder / RECORD)))
    except (UnreadableFile, ValueError, TypeError) as exc:
        raise IntegrityError(f"{folder / RECORD} is unusable: {exc}") from exc
    current = device.state["current"]
    if current is None or record.release_id != current["release_id"]:
        now = f"v{current['version']}" if current else "nothing"
        return None, (f"the personal adapter was trained from v{record.version}, the device now holds {now}: "
                      "run fedpeft device train again")
    return folder / ADAPTER, f"personal adapter from v{record.version} ({record.examples} rows, {record.epochs} epochs)"
