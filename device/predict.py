"""Device-side inference on an export folder: ONNX Runtime and the tokenizer, no PyTorch.

This module imports onnxruntime, tokenizers, numpy and fedpeft.core's signature checks
only, so it runs where torch is not installed. A device refuses an export whose
signature, expiry or file hashes do not check out, or that was made for another base.
An adapter swapped onto the base graph is a signed adapter export (kept to a version
floor, device/adapter_floor.py), a device slot's verified release, or the device's own
personal adapter bound to its record by SHA-256; ONNX Runtime's own errors on an adapter
become one named IntegrityError.
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

from .adapter_floor import AdapterFloor
from .personal_record import RECORD, checked_adapter_file

EXPORT_TYPE = "fedpeft/onnx-export"  # defined here, not in exporter.py, so devices need no torch
EXPORT_NAME = "export"  # export.json + export.sig
ADAPTER_EXPORT_TYPE = "fedpeft/onnx-adapter"
ADAPTER_EXPORT_NAME = "adapter"  # adapter.json + adapter.sig beside an .onnx_adapter
# what ONNX Runtime raises on a file or feed it cannot use
ORT_ERRORS = (RuntimeError, ort_errors.Fail, ort_errors.InvalidArgument, ort_errors.InvalidProtobuf,
              ort_errors.NoSuchFile, ort_errors.RuntimeException, ort_errors.NotImplemented)


def open_session(path: Path, threads: int = 0) -> ort.InferenceSession:
    """A CPU session; `threads` 0 lets ONNX Runtime choose."""
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.log_severity_level = 3  # the base graph's initializer-inputs warning is expected
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


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


class Predictor:
    """Classify texts with one of the exported models; `adapter` (a folder written by
    `fedpeft export --onto`, a device slot's release folder, or the device's own personal
    `.onnx_adapter` file) swaps another adapter onto the base graph without loading another model."""

    def __init__(self, folder: Path, public_key: Ed25519PublicKey | None, model: str = "int8",
                 adapter: Path | None = None) -> None:
        self.manifest = open_export(Path(folder), public_key)
        adapter_file, floor = self._adapter_file(Path(folder), public_key, adapter)
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

    def _adapter_file(self, folder: Path, public_key: Ed25519PublicKey | None,
                      adapter: Path | None) -> tuple[Path, tuple[AdapterFloor, int] | None]:
        """The `.onnx_adapter` to apply, checked for what it is, and the floor to raise once it loads."""
        if adapter is None:
            return folder / self.manifest["adapter"], None
        adapter = Path(adapter)
        if adapter.suffix == ".onnx_adapter":
            if os.path.lexists(adapter.parent / RECORD):
                return checked_adapter_file(adapter), None  # the device's own (device/personal.py), bound by hash
            if public_key is not None:
                raise ManifestError("unsigned-adapter", f"{adapter} is a bare .onnx_adapter, signed by no one: give a "
                                                        "folder written by `fedpeft export --onto`, or a device slot")
            return adapter, None  # --no-verify: an unverified file, as the export itself
        slot_release = (adapter / f"{RELEASE_NAME}.json").exists()
        if public_key is not None and slot_release:
            # a device slot's folder (device/slot.py): the release it came in must still be valid; the
            # slot's own floor orders releases (a registry rollback republishes older adapters)
            verify_release(adapter, public_key, base_id=self.manifest["base_id"])
        adapter_manifest = open_export(adapter, public_key, self.manifest["base_id"], ADAPTER_EXPORT_NAME,
                                       ADAPTER_EXPORT_TYPE)
        floor = None
        if public_key is not None and not slot_release:
            keeper = AdapterFloor(folder)
            floor = (keeper, keeper.check(adapter_manifest))
        return adapter / adapter_manifest["adapter"], floor

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
