"""A device's own adapter: the installed release fine-tuned on the device's rows, kept on the device.

The rows and the personalized adapter never leave the device. The adapter is stored as
`personal/adapter.onnx_adapter` in the slot's folder with `personal/personal.json`
recording the release (and base) it was trained from. Prediction uses it only while
that release is still the slot's current one: after a newer release is pulled, the old
personal adapter is not used and the device says so until it personalizes again. The
record binds the adapter file by its SHA-256 (device/personal_record.py), and neither is
read through a link.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path

from safetensors.numpy import load_file

from fedpeft.core.errors import ConfigError
from fedpeft.core.training.data import TextSplit
from fedpeft.core.training.settings import TrainSettings
from fedpeft.core.trust.atomic import staged_folder
from fedpeft.core.trust.files import file_sha256, plain_folder

from .onnx_adapter import write_onnx_adapter
from .personal_record import ADAPTER, RECORD, CheckedPersonal, PersonalAdapter, checked_adapter, read_record
from .slot import Device
from .trainer import DeviceTrainer

PERSONAL_DIR = "personal"
__all__ = ["ADAPTER", "PERSONAL_DIR", "RECORD", "CheckedPersonal", "PersonalAdapter", "personal_adapter", "personalize"]


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
    target = device.folder / PERSONAL_DIR
    if os.path.lexists(target):  # replaced below; a link there is refused, not followed
        plain_folder(target)
    with staged_folder(target, replace=True) as staging:
        write_onnx_adapter(trained, trainer.graph_names, staging / ADAPTER, release.version)
        record = PersonalAdapter(release.release_id, release.version, release.base_id, result.examples,
                                 settings.epochs, result.loss, datetime.now(UTC).isoformat(timespec="seconds"),
                                 file_sha256(staging / ADAPTER, follow_links=False))
        (staging / RECORD).write_text(record.to_json())
    return record


def personal_adapter(device: Device) -> tuple[CheckedPersonal | None, str]:
    """The personal `.onnx_adapter` to predict with (hand it to Predictor as it is: it was
    checked here, against the slot's current release and by hash), or None and why not."""
    folder = device.folder / PERSONAL_DIR
    if not os.path.lexists(folder / RECORD) and not os.path.islink(folder):
        return None, "no personal adapter (fedpeft device train makes one)"
    record = read_record(folder)
    current = device.state["current"]
    if current is None or record.release_id != current["release_id"]:
        now = f"v{current['version']}" if current else "nothing"
        return None, (f"the personal adapter was trained from v{record.version}, the device now holds {now}: "
                      "run fedpeft device train again")
    adapter = CheckedPersonal(checked_adapter(folder, record), record)
    return adapter, f"personal adapter from v{record.version} ({record.examples} rows, {record.epochs} epochs)"
