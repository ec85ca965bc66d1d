"""Per-process memory of loaded bases, so a simulated client costs compute, not a load.

A simulation worker runs many virtual clients one after another. It builds the frozen
base with the adapter injected once per (base, template) and afterwards only swaps
adapter tensors in and out.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from fedpeft.core.adapters.template import AdapterTemplate
from fedpeft.core.base.cache import NodeCache, default_cache_root

if TYPE_CHECKING:  # a node answering status or install imports neither
    from peft import PeftModel

    from fedpeft.core.base.model import Base


@dataclass
class Session:
    base: Base
    template: AdapterTemplate
    model: PeftModel


_SESSIONS: dict[tuple[str, str, str], Session] = {}
SHARED_CACHE_ENV = "FEDPEFT_SHARED_NODE_CACHE"  # one cache for every node of this machine (simulation)


def node_cache(node_config: dict, node_id: int) -> NodeCache:
    """The node's cache: `cache-dir` from its node config; else the machine's shared one
    (simulated nodes: content-addressed and verified on load, so one copy of the base
    serves them all); else one folder per node id."""
    configured = node_config.get("cache-dir") or os.environ.get(SHARED_CACHE_ENV)
    return NodeCache(Path(str(configured)) if configured else default_cache_root() / f"node-{node_id}")


def session(cache: NodeCache, base_id: str, template_id: str, device: str = "cpu") -> Session:
    """The base with the template attached, on `device` ("cpu" or "cuda"), once per process."""
    key = (base_id, template_id, device)
    if key not in _SESSIONS:
        from fedpeft.core.base.model import load_base

        template = cache.load_template(template_id)
        base = load_base(cache.load(base_id), num_labels=len(template.labels))
        _SESSIONS[key] = Session(base, template, template.attach(base.model).to(device))
    return _SESSIONS[key]


def loaded_sessions() -> int:
    """How many bases this process holds."""
    return len(_SESSIONS)
