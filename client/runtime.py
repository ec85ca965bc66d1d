"""Per-process memory of loaded bases, so a simulated client costs compute, not a load.

A simulation worker runs many virtual clients one after another. It builds the frozen
base with the adapter injected once per (base, template) and afterwards only swaps
adapter tensors in and out.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from peft import PeftModel

from fedpeft.core.adapters.template import AdapterTemplate
from fedpeft.core.base.cache import NodeCache, default_cache_root
from fedpeft.core.base.model import Base, load_base


@dataclass
class Session:
    base: Base
    template: AdapterTemplate
    model: PeftModel


_SESSIONS: dict[tuple[str, str], Session] = {}


def node_cache(node_config: dict, node_id: int) -> NodeCache:
    """The node's own cache: `cache-dir` from its node config, else one folder per node id."""
    configured = node_config.get("cache-dir")
    return NodeCache(Path(str(configured)) if configured else default_cache_root() / f"node-{node_id}")


def session(cache: NodeCache, base_id: str, template_id: str) -> Session:
    key = (base_id, template_id)
    if key not in _SESSIONS:
        template = cache.load_template(template_id)
        base = load_base(cache.load(base_id), num_labels=len(template.labels))
        _SESSIONS[key] = Session(base, template, template.attach(base.model))
    return _SESSIONS[key]


def loaded_sessions() -> int:
    """How many bases this process holds."""
    return len(_SESSIONS)
