"""Adapter tensors in and out of a PEFT model (deltas between two states: core/adapters/delta.py).

Kept apart from the training loop (as peft keeps `get_peft_model_state_dict` apart from
its tuners) so server, client, export and tests share one definition of "the adapter".
"""

from __future__ import annotations

from collections.abc import Mapping

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
