"""Adapter methods, one module each, registered by name (the way peft registers its tuners).

A method says which PEFT config a `TemplateSpec` becomes and which of the adapter's
tensors clients train and send. Every module in this folder is imported here, so a new
method is one new file with an `@register`-ed class: nothing else changes.
"""

from __future__ import annotations

import importlib
import pkgutil

from .registry import AdapterMethod, get_method, method_names, register

for _module in pkgutil.iter_modules(__path__):
    if _module.name != "registry":
        importlib.import_module(f"{__name__}.{_module.name}")

__all__ = ["AdapterMethod", "get_method", "method_names", "register"]
