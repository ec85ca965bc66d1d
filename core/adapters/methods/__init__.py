"""Adapter methods, one module each, registered by file name (the way peft keeps one tuner
a folder): `ffa_lora.py` is the method "ffa-lora" and defines `METHOD`.

A new method is one new file here; nothing else changes. Listing the names imports no
module, so the CLI can offer them as choices without loading peft.
"""

from __future__ import annotations

import importlib
import pkgutil

from fedpeft.core.errors import ConfigError

from ._base import AdapterMethod

_NAMES = sorted(m.name.replace("_", "-") for m in pkgutil.iter_modules(__path__) if not m.name.startswith("_"))


def method_names() -> list[str]:
    return list(_NAMES)


def get_method(name: str) -> AdapterMethod:
    if name not in _NAMES:
        raise ConfigError(f"unknown adapter method {name!r}; choose one of {_NAMES}")
    return importlib.import_module(f"{__name__}.{name.replace('-', '_')}").METHOD


__all__ = ["AdapterMethod", "get_method", "method_names"]
