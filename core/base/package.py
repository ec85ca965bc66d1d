"""The frozen base as it travels: quantized tensors, model config and tokenizer files.

A package is identified by `base_id`, the hash of its manifest. The manifest lists the
model config, the hash of every tokenizer file and the name, dtype, shape and hash of
every tensor, so checking the manifest hash and then each listed hash proves that the
received bytes are the base the server announced.

Holding and verifying a package needs numpy only (a node answering `query.install`
imports no torch); building one from a transformers folder imports torch when it runs.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from fedpeft.core.errors import IntegrityError
from fedpeft.core.trust.hashing import manifest_id, plain_json, sha256_hex, tensor_manifest

if TYPE_CHECKING:
    import torch

    from .tasks import Task

FORMAT = "fedpeft-base/1"
TOKENIZER_FILES = (
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "vocab.txt",
    "vocab.json",
    "merges.txt",
    "chat_template.jinja",  # transformers 5 keeps a chat model's template here, not in tokenizer_config.json
)

VOLATILE_CONFIG_KEYS = ("_name_or_path", "transformers_version")


@dataclass
class BasePackage:
    manifest: dict[str, Any]
    files: dict[str, bytes]
    tensors: dict[str, np.ndarray]

    @property
    def base_id(self) -> str:
        return manifest_id(self.manifest)

    @property
    def download_bytes(self) -> int:
        return sum(a.nbytes for a in self.tensors.values()) + sum(len(b) for b in self.files.values())

    @property
    def fp32_bytes(self) -> int:
        return int(self.manifest["fp32_bytes"])

    @classmethod
    def from_pretrained(cls, folder: str | Path, task: Task, quantization: str) -> BasePackage:
        """Read a transformers folder and quantize its backbone (the task head is left out)."""
        from .quantize import check_mode, encode_tensors

        check_mode(quantization)
        folder = Path(folder)
        model = task.from_pretrained(str(folder), num_labels=2)
        state = backbone_state(model, task)
        tensors = encode_tensors(state, quantization)
        files = {n: (folder / n).read_bytes() for n in TOKENIZER_FILES if (folder / n).is_file()}
        # Where the folder lies and which transformers wrote it say nothing about the
        # weights: leave them out so every machine derives the same base_id.
        config = {k: v for k, v in model.config.to_dict().items() if k not in VOLATILE_CONFIG_KEYS}
        manifest = {
            "format": FORMAT,
            "task": task.name,
            "quantization": quantization,
            "config": plain_json(config, default=str),
            "fp32_bytes": sum(t.numel() * 4 for t in state.values()),
            "files": {n: sha256_hex(b) for n, b in sorted(files.items())},
            "tensors": tensor_manifest(tensors),
        }
        return cls(manifest=manifest, files=files, tensors=tensors)

    def verify(self, expected_base_id: str) -> None:
        """Raise IntegrityError unless every byte matches the manifest and the manifest the id."""
        if self.manifest.get("format") != FORMAT:
            raise IntegrityError(f"base package format {self.manifest.get('format')!r} is not {FORMAT!r}")
        if self.base_id != expected_base_id:
            raise IntegrityError(f"base manifest hashes to {self.base_id[:12]}, expected {expected_base_id[:12]}")
        listed_files = self.manifest["files"]
        if set(listed_files) != set(self.files):
            raise IntegrityError(f"base files {sorted(self.files)} differ from manifest {sorted(listed_files)}")
        for name, data in self.files.items():
            if sha256_hex(data) != listed_files[name]:
                raise IntegrityError(f"base file {name} does not match its hash")
        listed = self.manifest["tensors"]
        if set(listed) != set(self.tensors):
            missing, extra = set(listed) - set(self.tensors), set(self.tensors) - set(listed)
            raise IntegrityError(f"base tensors differ from manifest: missing {sorted(missing)[:3]}, extra {sorted(extra)[:3]}")
        actual = tensor_manifest(self.tensors)
        for name, entry in listed.items():
            if actual[name] != entry:
                raise IntegrityError(f"base tensor {name} does not match its manifest entry")


def backbone_state(model: torch.nn.Module, task: Task) -> dict[str, torch.Tensor]:
    """The model's frozen part: every tensor except the task head, tied copies once."""
    state: dict[str, torch.Tensor] = {}
    seen: set[int] = set()
    for name, tensor in model.state_dict().items():
        if name.split(".")[0] in task.head_modules or tensor.data_ptr() in seen:
            continue
        seen.add(tensor.data_ptr())
        state[name] = tensor
    return state
