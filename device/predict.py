"""Device-side inference on an export folder: ONNX Runtime and the tokenizer, no PyTorch.

This module imports onnxruntime, tokenizers, numpy and fedpeft.core's signature checks
only, so it runs where torch is not installed. A device refuses an export whose
signature, expiry or file hashes do not check out, or that was made for another base.
An adapter swapped onto the base graph is a signed adapter export or a verified release
folder (both kept to a version floor, device/adapter_floor.py), a device slot's current
release (`SlotRelease`, ordered by the slot's own floor), or the device's own personal
adapter as device/personal.py `personal_adapter()` checked it (`CheckedPersonal`: never a
bare path, whatever lies beside it); ONNX Runtime's own errors on an adapter become one
named IntegrityError.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnxruntime as ort
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
from onnxruntime.capi import onnxruntime_pybind11_state as ort_errors
from tokenizers import Tokenizer

from fedpeft.core.errors import ConfigError, IntegrityError
from fedpeft.core.trust.json_reader import JSONRefused, parse_json_object
from fedpeft.core.trust.release import RELEASE_NAME, verify_release
from fedpeft.core.trust.signed_files import ManifestError, read_file, read_signed

from .adapter_floor import RELEASES, AdapterFloor
from .personal_record import RECORD, CheckedPersonal, checked_adapter_file

EXPORT_TYPE = "fedpeft/onnx-export"  # defined here, not in exporter.py, so devices need no torch
EXPORT_NAME = "export"  # export.json + export.sig
ADAPTER_EXPORT_TYPE = "fedpeft/onnx-adapter"
ADAPTER_EXPORT_NAME = "adapter"  # adapter.json + adapter.sig beside an .onnx_adapter
# what ONNX Runtime raises on a file or feed it cannot use
ORT_ERRORS = (RuntimeError, ort_errors.Fail, ort_errors.InvalidArgument, ort_errors.InvalidProtobuf,
              ort_errors.NoSuchFile, ort_errors.RuntimeException, ort_errors.NotImplemented)


def open_session(path: Path, threads: int = 0, arena: bool = True) -> ort.InferenceSession:
    """A CPU session; `threads` 0 lets ONNX Runtime choose. `arena=False` returns every
    tensor's memory when it is freed (a causal LM's training step: the arena would keep
    the high-water mark of its vocabulary-wide logits, 2.7 GB instead of 1.45 for SmolLM2)."""
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.enable_cpu_mem_arena = arena
    options.log_severity_level = 3  # the base graph's initializer-inputs warning is expected
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


@dataclass(frozen=True)
class SlotRelease:
    """A device slot's current release folder (`predict --state`, after Device.current_release()
    verified it): the slot's own floor orders its releases, and a local `device rollback` goes
    back one version on purpose, so the export's adapter floor is neither checked nor raised."""
    folder: Path


@dataclass(frozen=True)
class Prediction:
    label: str
    score: float


def open_export(folder: Path, public_key: Ed25519PublicKey | None, base_id: str | None = None,
                name: str = EXPORT_NAME, manifest_type: str = EXPORT_TYPE) -> dict:
    """An export's manifest (or, with ADAPTER_EXPORT_*, an adapter export's), verified
    against the operator key (None: read unverified)."""
    folder = Path(folder)
    if public_key is None:
        try:
            return parse_json_object(read_file(folder, f"{name}.json"), f"{folder / name}.json")
        except JSONRefused as exc:
            raise ManifestError("malformed", str(exc)) from exc
    _, manifest = read_signed(folder, name, public_key, manifest_type)
    if base_id is not None and manifest.get("base_id") != base_id:
        raise ManifestError("wrong-base", f"export made for base {str(manifest.get('base_id'))[:12]}, device has {base_id[:12]}")
    return manifest


def load_tokenizer(folder: Path, manifest: dict) -> Tokenizer:
    """The export's tokenizer, padding each batch to its longest row."""
    tokenizer = Tokenizer.from_file(str(Path(folder) / manifest["tokenizer"] / "tokenizer.json"))
    tokenizer.enable_padding(pad_id=int(manifest["pad_token_id"] or 0))
    return tokenizer


def encode(tokenizer: Tokenizer, texts: list[str], max_length: int) -> dict[str, np.ndarray]:
    """Graph inputs for `texts`, truncated to `max_length` tokens (specials included), as
    transformers' tokenizer call with padding=True, truncation=True does."""
    tokenizer.enable_truncation(max_length)
    encodings = tokenizer.encode_batch(texts)
    return {
        "input_ids": np.array([e.ids for e in encodings], dtype=np.int64),
        "attention_mask": np.array([e.attention_mask for e in encodings], dtype=np.int64),
    }


def adapter_file_for(folder: Path, manifest: dict, public_key: Ed25519PublicKey | None,
                     adapter: Path | SlotRelease | CheckedPersonal | None
                     ) -> tuple[Path, tuple[AdapterFloor, int] | None]:
    """The `.onnx_adapter` to apply onto the export in `folder` (the export's own when `adapter`
    is None), checked for what it is, and the floor to raise once it loads."""
    if adapter is None:
        return folder / manifest["adapter"], None
    if isinstance(adapter, CheckedPersonal):
        # personal_adapter() tied it to the slot's verified current release and hashed it: not hashed again
        return adapter.path, None
    slot = isinstance(adapter, SlotRelease)
    adapter = Path(adapter.folder if slot else adapter)
    if adapter.suffix == ".onnx_adapter":
        if public_key is not None:  # a personal.json beside it proves nothing: anyone can write one
            raise ManifestError("unsigned-adapter", f"{adapter} is a bare .onnx_adapter, signed by no one: give a "
                                                    "folder written by `fedpeft export --onto`, or a device slot "
                                                    "(--state, which also finds its personal adapter)")
        if os.path.lexists(adapter.parent / RECORD):
            return checked_adapter_file(adapter), None  # --no-verify: checked against damage, not trusted
        return adapter, None  # --no-verify: an unverified file, as the export itself
    release = None
    if public_key is not None and (slot or (adapter / f"{RELEASE_NAME}.json").exists()):
        # a release folder (a device slot's, device/slot.py): the release it came in must still be valid
        release = verify_release(adapter, public_key, base_id=manifest["base_id"])
    adapter_manifest = open_export(adapter, public_key, manifest["base_id"], ADAPTER_EXPORT_NAME,
                                   ADAPTER_EXPORT_TYPE)
    if public_key is None or slot:
        # the floor applies only to folders given as --adapter: the slot's current release
        # (--state) is ordered by the slot's own floor, and after a local `device rollback` it
        # is legitimately older than a release predicted with before
        return adapter / adapter_manifest["adapter"], None
    if release is not None:
        # on the release's version (it rises even on a registry rollback, which republishes the older
        # adapter as a new, higher version), kept apart from adapter exports' adapter_version
        keeper = AdapterFloor(folder, RELEASES)
        return adapter / adapter_manifest["adapter"], (keeper, keeper.check_version(release.version))
    keeper = AdapterFloor(folder)
    return adapter / adapter_manifest["adapter"], (keeper, keeper.check(adapter_manifest))


class Predictor:
    """Classify texts with one of the exported models; `adapter` (a folder written by
    `fedpeft export --onto`, a signed release folder, a device slot's `SlotRelease`, or the
    device's own `CheckedPersonal` adapter) swaps another adapter onto the base graph without
    loading another model."""

    def __init__(self, folder: Path, public_key: Ed25519PublicKey | None, model: str = "int8",
                 adapter: Path | SlotRelease | CheckedPersonal | None = None) -> None:
        self.manifest = open_export(Path(folder), public_key)
        adapter_file, floor = adapter_file_for(Path(folder), self.manifest, public_key, adapter)
        models = self.manifest["models"]
        if model not in ("fp32", "int8", "base"):
            raise ConfigError(f"unknown model {model!r}; choose fp32, int8 or base")
        if model not in models:
            raise ConfigError(f"this export has no {model} model (a training-only export has none)")
        if adapter is not None and model != "base":
            raise ConfigError("an .onnx_adapter applies to the base model: use model='base'")
        self.session = open_session(Path(folder) / models[model])
        self.run_options = None
        if model == "base":
            self.adapter = ort.LoraAdapter()
            try:
                self.adapter.Load(str(adapter_file))
            except ORT_ERRORS as exc:
                raise IntegrityError(f"adapter {adapter_file} does not load in ONNX Runtime: "
                                     f"{str(exc).splitlines()[0][-200:]}") from None
            self.run_options = ort.RunOptions()
            self.run_options.add_active_adapter(self.adapter)
            if floor is not None:
                floor[0].record(floor[1])
        self.tokenizer = load_tokenizer(Path(folder), self.manifest)
        self.labels = list(self.manifest["labels"])

    def logits(self, texts: list[str]) -> np.ndarray:
        feed = encode(self.tokenizer, texts, int(self.manifest["max_length"]))
        try:
            return self.session.run(None, feed, self.run_options)[0]
        except ORT_ERRORS as exc:
            if self.run_options is None:
                raise
            raise IntegrityError(f"the adapter does not fit this export's base graph: "
                                 f"{str(exc).splitlines()[0][-200:]}") from None

    def predict(self, texts: list[str]) -> list[Prediction]:
        if not self.labels:
            raise ConfigError("this export has no labels (a causal LM): use logits()")
        logits = self.logits(texts)
        shifted = np.exp(logits - logits.max(-1, keepdims=True))
        probabilities = shifted / shifted.sum(-1, keepdims=True)
        return [Prediction(self.labels[i], float(p[i])) for p, i in zip(probabilities, probabilities.argmax(-1))]
