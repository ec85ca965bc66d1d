"""LoRA tensors in the generation runtime's layout: `.onnx_adapter` files for an
onnxruntime-genai model folder (export/genai.py). Torch-free: the export writes the
release's adapter with it, and a device converts its personal adapter with it.

The runtime's model builder computes LoRA as `x @ A @ B` with A stored [in, r] and B
stored [r, out], already multiplied by the adapter's scaling (alpha / r), where PEFT
keeps A [r, in] and B [out, r] and scales at run time. The export's signed manifest
lists, per PEFT adapter key, the graph input that holds it and the scale
(`genai.adapter_layout`); nothing else is needed to convert.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import numpy as np

from fedpeft.core.errors import IntegrityError
from fedpeft.core.trust.signed_files import is_plain_name

from .onnx_adapter import write_onnx_adapter

Layout = Mapping[str, tuple[str, float]]  # PEFT adapter key -> (graph input, scale)


def genai_section(manifest: Mapping, folder: Path | None = None) -> tuple[str, dict[str, tuple[str, float]]]:
    """(model folder name, adapter layout) of a language-model export's signed manifest; with
    `folder` (a verified export), also that the model folder holds only files the manifest
    lists: the runtime finds optional tokenizer and processor files by name, so a file added
    after signing would be read unverified. IntegrityError names what is wrong."""
    try:
        section = manifest["genai"]
        name = section["folder"]
        layout = {str(key): (entry[0], float(entry[1])) for key, entry in section["adapter_layout"].items()}
    except (KeyError, TypeError, ValueError, IndexError, AttributeError) as exc:
        raise IntegrityError(f"the export's generation model entry is malformed: {exc!r}") from None
    files = manifest.get("files") if isinstance(manifest.get("files"), Mapping) else {}
    if not is_plain_name(name) or "/" in name or f"{name}/genai_config.json" not in files:
        raise IntegrityError(f"the export's generation model folder {str(name)[:80]!r} is not one it lists")
    if not layout or not all(isinstance(graph_name, str) for graph_name, _ in layout.values()):
        raise IntegrityError("the export's adapter layout is malformed: it names no graph inputs")
    if folder is not None:
        extra = [path.relative_to(folder).as_posix() for path in sorted((Path(folder) / name).rglob("*"))
                 if (path.is_symlink() or not path.is_dir()) and path.relative_to(folder).as_posix() not in files]
        if extra:
            raise IntegrityError(f"the export's generation model folder holds files it does not list: {extra[:3]}")
    return name, layout


def to_genai(arrays: Mapping[str, np.ndarray], layout: Layout) -> dict[str, np.ndarray]:
    """PEFT-layout tensors (by PEFT key) -> the runtime's layout (by PEFT key)."""
    if set(arrays) != set(layout):
        raise IntegrityError(f"adapter does not fit the generation model: {sorted(set(arrays) ^ set(layout))[:3]}")
    return {key: np.ascontiguousarray(np.asarray(value, np.float32).T * np.float32(layout[key][1]))
            for key, value in arrays.items()}


def write_genai_adapter(arrays: Mapping[str, np.ndarray], layout: Layout, path: Path, adapter_version: int) -> None:
    write_onnx_adapter(to_genai(arrays, layout), {key: name for key, (name, _) in layout.items()}, path,
                       adapter_version)


def by_key(tensors: Mapping[str, np.ndarray], names: Mapping[str, str]) -> dict[str, np.ndarray]:
    """Tensors named as graph inputs (`names`: PEFT key -> graph name) back under their PEFT keys."""
    keys = {name: key for key, name in names.items()}
    if set(tensors) != set(keys):
        raise IntegrityError(f"adapter does not fit this export: {sorted(set(tensors) ^ set(keys))[:3]}")
    return {keys[name]: value for name, value in tensors.items()}
