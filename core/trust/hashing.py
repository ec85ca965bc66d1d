"""Content hashes that identify bases, templates and adapters across machines.

Every identifier is a SHA-256 over a canonical JSON manifest, and the manifest lists
each tensor by name, dtype, shape and the SHA-256 of its raw bytes. Two parties that
agree on a hash therefore agree on every byte of every tensor.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Callable, Mapping
from typing import Any

import numpy as np

SHA256_HEX = re.compile(r"[0-9a-f]{64}")


def is_sha256_hex(value: object) -> bool:
    """A lowercase hex SHA-256 and nothing else: safe to use as a file or folder name."""
    return isinstance(value, str) and SHA256_HEX.fullmatch(value) is not None


def sha256_hex(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def canonical_json(obj: Any) -> bytes:
    """JSON with sorted keys and no whitespace, so equal objects hash equally."""
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=True).encode()


def plain_json(value: Any, default: Callable[[Any], Any] = str) -> Any:
    """`value` as `json.loads(json.dumps(value, default=default))` would return it (tuples
    as lists, keys as strings, subclasses as their base type, other objects through
    `default`), built directly: a manifest made from a library's objects is not a JSON parse."""
    if value is None or isinstance(value, bool):
        return bool(value) if value is not None else None
    if isinstance(value, str):
        return str.__str__(value)
    if isinstance(value, int):
        return int.__int__(value)
    if isinstance(value, float):
        return float.__float__(value)
    if isinstance(value, dict):
        return {_json_key(key): plain_json(item, default) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [plain_json(item, default) for item in value]
    return plain_json(default(value), default)


def _json_key(key: Any) -> str:
    """A dict key as json.dumps writes it."""
    if isinstance(key, str):
        return str.__str__(key)
    if key is None or isinstance(key, bool):
        return json.dumps(key)
    if isinstance(key, int):
        return str(int.__int__(key))
    if isinstance(key, float):
        return json.dumps(float.__float__(key))
    raise TypeError(f"keys must be str, int, float, bool or None, not {type(key).__name__}")


def tensor_sha256(array: np.ndarray) -> bytes:
    """SHA-256 digest of a tensor's C-order bytes (hashed in place, without a copy)."""
    return hashlib.sha256(array if array.flags.c_contiguous else np.ascontiguousarray(array)).digest()


def tensor_entry(array: np.ndarray) -> dict[str, Any]:
    """Manifest entry of one tensor: dtype, shape and the hash of its C-order bytes."""
    return {
        "dtype": array.dtype.str,
        "shape": list(array.shape),
        "sha256": tensor_sha256(array).hex(),
    }


def tensor_manifest(tensors: Mapping[str, np.ndarray]) -> dict[str, dict[str, Any]]:
    return {name: tensor_entry(tensors[name]) for name in sorted(tensors)}


def manifest_id(manifest: Mapping[str, Any]) -> str:
    return sha256_hex(canonical_json(manifest))


def tensors_id(tensors: Mapping[str, np.ndarray]) -> str:
    """Identifier of a set of tensors, e.g. the global adapter a client started from."""
    return manifest_id(tensor_manifest(tensors))
