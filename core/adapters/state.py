"""Adapter tensors in and out of a PEFT model, and deltas between two adapter states.

Kept apart from the training loop (as peft keeps `get_peft_model_state_dict` apart from
its tuners) so server, client, export and tests share one definition of "the adapter".
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

import numpy as np
import torch
from peft import PeftModel, get_peft_model_state_dict, set_peft_model_state_dict

from fedpeft.core.errors import IntegrityError

Arrays = dict[str, np.ndarray]


def get_adapter_arrays(model: PeftModel) -> Arrays:
    return {k: v.detach().cpu().to(torch.float32).numpy().copy() for k, v in get_peft_model_state_dict(model).items()}


def set_adapter_arrays(model: PeftModel, arrays: Mapping[str, np.ndarray]) -> None:
    expected = set(get_peft_model_state_dict(model))
    if set(arrays) != expected:
        missing, extra = sorted(expected - set(arrays)), sorted(set(arrays) - expected)
        raise IntegrityError(f"adapter tensors do not fit the model: missing {missing[:3]}, unexpected {extra[:3]}")
    state = {k: torch.from_numpy(np.array(v, dtype=np.float32)) for k, v in arrays.items()}
    set_peft_model_state_dict(model, state)


def compute_delta(after: Mapping[str, np.ndarray], before: Mapping[str, np.ndarray], names: Iterable[str]) -> Arrays:
    return {n: (after[n] - before[n]).astype(np.float32) for n in names}


def apply_delta(base: Mapping[str, np.ndarray], delta: Mapping[str, np.ndarray]) -> Arrays:
    """`base` with `delta` added; tensors absent from the delta are unchanged."""
    return {n: (base[n] + delta[n]).astype(np.float32) if n in delta else base[n].copy() for n in base}
