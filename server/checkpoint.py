"""The server's state after each completed round, so a killed server resumes its run.

One safetensors file holds the global adapter and the strategy's tensors (FedAdam's
moments...); its metadata holds the round, the run's identity and the metrics rows so
far. It is replaced atomically (core/trust/atomic.py): after a kill -9 the file is the
last completed round's, never a half-written one. It stays on the server and is not
signed; one hash over its tensors and its metadata, stored beside them, catches a damaged
or edited file. The enrollment list is not in it: a resumed run reads the keyring file,
so a key revoked since the last round stays revoked.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from safetensors import SafetensorError, safe_open
from safetensors.numpy import save

from fedpeft.core.adapters.state import Arrays
from fedpeft.core.errors import IntegrityError
from fedpeft.core.trust.atomic import write_atomic
from fedpeft.core.trust.hashing import canonical_json, sha256_hex, tensors_id
from fedpeft.core.trust.json_reader import JSONRefused, parse_json_object

CHECKPOINT_FILE = "checkpoint.safetensors"
FORMAT = 2  # 1 kept the enrollment list and hashed only the tensors
_META = "fedpeft-checkpoint"


@dataclass
class Checkpoint:
    round: int              # the last completed round
    run_id: str
    base_id: str
    template_id: str
    adapter: Arrays         # the global adapter after `round`
    strategy_state: dict[str, Arrays] = field(default_factory=dict)  # strategy attribute -> tensors
    rows: list[dict[str, Any]] = field(default_factory=list)          # metrics.jsonl rows so far

    @property
    def adapter_id(self) -> str:
        return tensors_id(self.adapter)

    def save(self, path: Path) -> None:
        tensors = {f"adapter/{n}": a for n, a in self.adapter.items()}
        for attr, arrays in self.strategy_state.items():
            tensors.update({f"strategy/{attr}/{n}": a for n, a in arrays.items()})
        tensors = {k: np.ascontiguousarray(v) for k, v in tensors.items()}
        meta = {"format": FORMAT, "round": self.round, "run_id": self.run_id, "base_id": self.base_id,
                "template_id": self.template_id, "rows": self.rows}
        meta["state_id"] = _state_id(tensors, meta)
        write_atomic(path, save(tensors, metadata={_META: json.dumps(meta)}))


def _state_id(tensors: Arrays, meta: dict[str, Any]) -> str:
    """One hash over every tensor and every metadata field but itself."""
    return sha256_hex(canonical_json({"tensors": tensors_id(tensors),
                                      "meta": {k: v for k, v in meta.items() if k != "state_id"}}))


def load_checkpoint(path: Path) -> Checkpoint | None:
    """The checkpoint at `path`, None if there is none; a damaged one is an IntegrityError."""
    path = Path(path)
    if not path.exists():
        return None
    try:
        with safe_open(path, framework="np") as handle:
            # our own file, but a disk can be tampered with: the guarded reader; the
            # metrics rows it holds may carry a non-finite loss, and grow with every round
            # (safetensors has already bounded the header it came in at 100 MB)
            text = (handle.metadata() or {})[_META]
            meta = parse_json_object(text, f"checkpoint {path}", limit=len(text), allow_nonfinite=True)
            tensors = {key: handle.get_tensor(key) for key in handle.keys()}
        if meta.get("format") != FORMAT:
            raise ValueError(f"unsupported format {meta.get('format')!r}")
        expected = str(meta["state_id"])
        adapter = {k.removeprefix("adapter/"): v for k, v in tensors.items() if k.startswith("adapter/")}
        state: dict[str, Arrays] = {}
        for key, value in tensors.items():
            if key.startswith("strategy/"):
                _, attr, name = key.split("/", 2)
                state.setdefault(attr, {})[name] = value
        checkpoint = Checkpoint(int(meta["round"]), str(meta["run_id"]), str(meta["base_id"]),
                                str(meta["template_id"]), adapter, state, list(meta["rows"]))
        actual = _state_id(tensors, meta)
    except (OSError, SafetensorError, JSONRefused, ValueError, KeyError, TypeError, AttributeError) as exc:
        raise IntegrityError(f"checkpoint {path} is unreadable: {exc}") from exc
    if actual != expected:
        raise IntegrityError(f"checkpoint {path}: its tensors or metadata do not match the hash stored with them")
    return checkpoint

