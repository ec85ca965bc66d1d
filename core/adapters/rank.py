"""Devices of different sizes: a LoRA adapter trained at a lower rank than the template's.

A client that can afford rank r < R trains the first r columns of every LoRA B over the
first r rows of A (FFA-LoRA: A frozen, so the B columns alone; HetLoRA truncates the same
way for full LoRA): its forward pass is the rank-r adapter, the other columns held at
zero. What it did not train, it leaves where the round sent it, so its delta is zero
there, and the server averages each column over the clients that trained it
(`trained_positions`; server/strategy.py). Torch-free: devices train this way too.

Written by hand: peft's rank patterns fix a rank per module for every client; nothing in
peft or Flower trains one template at per-client ranks and aggregates it column-wise.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np

Arrays = dict[str, np.ndarray]


def _axis(name: str) -> int | None:
    """The rank axis of a LoRA tensor (B's columns, A's rows); None for any other tensor."""
    if ".lora_B." in name:
        return 1
    if ".lora_A." in name:
        return 0
    return None


def full_rank(arrays: Mapping[str, np.ndarray]) -> int:
    """The template's rank R (0 for an adapter without LoRA tensors)."""
    return max((v.shape[1] for n, v in arrays.items() if _axis(n) == 1 and v.ndim == 2), default=0)


def limits(rank: int, arrays: Mapping[str, np.ndarray]) -> bool:
    """Whether training at `rank` leaves part of these LoRA tensors out (0: the full rank)."""
    return 0 < rank < full_rank(arrays)


def truncated(arrays: Mapping[str, np.ndarray], rank: int) -> Arrays:
    """`arrays` as a rank-`rank` client runs them: every LoRA B's columns from `rank` on zero
    (their products with A's rows from `rank` on vanish with them)."""
    if not limits(rank, arrays):
        return dict(arrays)
    out = dict(arrays)
    for name, value in arrays.items():
        if _axis(name) == 1:
            out[name] = np.array(value, copy=True)
            out[name][:, rank:] = 0
    return out


def zero_outside(arrays: Mapping[str, np.ndarray], rank: int) -> None:
    """In place, after each training step: B's columns from `rank` on back to zero, so the
    forward pass stays the rank-`rank` adapter (weight decay or a stray gradient cannot grow them)."""
    for name, value in arrays.items():
        if _axis(name) == 1 and 0 < rank < value.shape[1]:
            value[:, rank:] = 0


def restored_outside(after: Mapping[str, np.ndarray], before: Mapping[str, np.ndarray], rank: int) -> Arrays:
    """`after` with every position a rank-`rank` client does not train (B's columns and A's
    rows from `rank` on) put back to `before`: its delta is zero there."""
    if not limits(rank, before):
        return dict(after)
    out = dict(after)
    for name, axis in ((n, _axis(n)) for n in after):
        if axis is not None and name in before:
            value = np.array(after[name], copy=True)
            index = (slice(None), slice(rank, None)) if axis == 1 else (slice(rank, None),)
            value[index] = before[name][index]
            out[name] = value
    return out


def trained_positions(shapes: Mapping[str, tuple[int, ...]], names: list[str], rank: int) -> np.ndarray:
    """A flat boolean mask over `names` (in order, `shapes` each) of the positions a rank-`rank`
    client trains: all but LoRA B's columns and A's rows from `rank` on."""
    parts = []
    for name in names:
        mask = np.ones(shapes[name], bool)
        axis = _axis(name)
        if axis is not None and len(shapes[name]) == 2:
            if axis == 1:
                mask[:, rank:] = False
            else:
                mask[rank:, :] = False
        parts.append(mask.ravel())
    return np.concatenate(parts) if parts else np.zeros(0, bool)
