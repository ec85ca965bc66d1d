"""Device-side inference on an export folder: ONNX Runtime and the tokenizer, no PyTorch.

This module imports onnxruntime, tokenizers, numpy and fedpeft.core's signature checks
only, so it runs where torch is not installed. A device refuses an export whose
signature, expiry or file hashes do not check out, or that was made for another base.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnxruntime as ort
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
from tokenizers import Tokenizer

from fedpeft.core.errors import ConfigError
from fedpeft.core.trust.release import RELEASE_NAME, verify_release
from fedpeft.core.trust.signed_files import ManifestError, read_signed

EXPORT_TYPE = "fedpeft/onnx-export"  # defined here, not in exporter.py, so devices need no torch
EXPORT_NAME = "export"  # export.json + export.sig
ADAPTER_EXPORT_TYPE = "fedpeft/onnx-adapter"
ADAPTER_EXPORT_NAME = "adapter"  # adapter.json + adapter.sig beside an .onnx_adapter


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
            return json.loads((folder / f"{name}.json").read_bytes())
        except (OSError, ValueError) as exc:
            raise ManifestError("malformed", f"{folder / name}.json: {exc}") from exc
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
    `fedpeft export --onto`, or the device's own personal `.onnx_adapter` file) swaps
    another adapter onto the base graph without loading another model."""

    def __init__(self, folder: Path, public_key: Ed25519PublicKey | None, model: str = "int8",
                 adapter: Path | None = None) -> None:
        self.manifest = open_export(Path(folder), public_key)
        adapter_file = Path(folder) / self.manifest["adapter"]
        if adapter is not None and Path(adapter).suffix == ".onnx_adapter":
            adapter_file = Path(adapter)  # the device's own personal adapter (device/personal.py), not signed
        elif adapter is not None:
            if public_key is not None and (Path(adapter) / f"{RELEASE_NAME}.json").exists():
                # a device slot's folder (device/slot.py): the release it came in must still be valid
                verify_release(Path(adapter), public_key, base_id=self.manifest["base_id"])
            adapter_manifest = open_export(adapter, public_key, self.manifest["base_id"], ADAPTER_EXPORT_NAME,
                                           ADAPTER_EXPORT_TYPE)
            adapter_file = Path(adapter) / adapter_manifest["adapter"]
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
            self.adapter.Load(str(adapter_file))
            self.run_options = ort.RunOptions()
            self.run_options.add_active_adapter(self.adapter)
        self.tokenizer = load_tokenizer(Path(folder), self.manifest)
        self.labels = list(self.manifest["labels"])

    def logits(self, texts: list[str]) -> np.ndarray:
        feed = encode(self.tokenizer, texts, int(self.manifest["max_length"]))
        return self.session.run(None, feed, self.run_options)[0]

    def predict(self, texts: list[str]) -> list[Prediction]:
        if not self.labels:
            raise ConfigError("this export has no labels (a causal LM): use logits()")
        logits = self.logits(texts)
        shifted = np.exp(logits - logits.max(-1, keepdims=True))
        probabilities = shifted / shifted.sum(-1, keepdims=True)
        return [Prediction(self.labels[i], float(p[i])) for p, i in zip(probabilities, probabilities.argmax(-1))]
