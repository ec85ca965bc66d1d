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


def _outside(name: str, shape: tuple[int, ...], rank: int) -> tuple[slice, ...] | None:
    """The index of what a rank-`rank` client does not train in this tensor (a LoRA B's
    columns or A's rows from `rank` on); None where it trains all of it."""
    axis = _axis(name)
    if axis is None or len(shape) != 2 or not 0 < rank < shape[axis]:
        return None
    return (slice(None), slice(rank, None)) if axis == 1 else (slice(rank, None),)


def held_at_zero(name: str, shape: tuple[int, ...], rank: int) -> tuple[slice, ...] | None:
    """The part of this tensor a rank-`rank` client's forward pass keeps at zero: a LoRA B's
    columns from `rank` on (their products with A's rows vanish with them); None: nothing."""
    return _outside(name, shape, rank) if _axis(name) == 1 else None


def full_rank(shapes: Mapping[str, tuple[int, ...]]) -> int:
    """The template's rank R from its tensors' shapes (0 for an adapter without LoRA tensors)."""
    return max((shape[1] for name, shape in shapes.items() if _axis(name) == 1 and len(shape) == 2), default=0)


def limits(rank: int, arrays: Mapping[str, np.ndarray]) -> bool:
    """Whether training at `rank` leaves part of these LoRA tensors out (0: the full rank)."""
    return 0 < rank < full_rank({name: value.shape for name, value in arrays.items()})


def truncated(arrays: Mapping[str, np.ndarray], rank: int) -> Arrays:
    """`arrays` as a rank-`rank` client runs them (`held_at_zero` set to zero)."""
    out = dict(arrays)
    for name, value in arrays.items():
        index = held_at_zero(name, value.shape, rank)
        if index is not None:
            out[name] = np.array(value, copy=True)
            out[name][index] = 0
    return out


def zero_outside(arrays: Mapping[str, np.ndarray], rank: int) -> None:
    """In place, after each training step: `held_at_zero` back to zero, so the forward pass
    stays the rank-`rank` adapter (weight decay or a stray gradient cannot grow it)."""
    for name, value in arrays.items():
        index = held_at_zero(name, value.shape, rank)
        if index is not None:
            value[index] = 0


def restored_outside(after: Mapping[str, np.ndarray], before: Mapping[str, np.ndarray], rank: int) -> Arrays:
    """`after` with every position a rank-`rank` client does not train put back to `before`:
    its delta is zero there."""
    out = dict(after)
    for name, value in after.items():
        index = _outside(name, value.shape, rank) if name in before else None
        if index is not None:
            out[name] = np.array(value, copy=True)
            out[name][index] = before[name][index]
    return out


def trained_positions(shapes: Mapping[str, tuple[int, ...]], names: list[str], rank: int) -> np.ndarray:
    """A flat boolean mask over `names` (in order, `shapes` each) of the positions a rank-`rank`
    client trains: all but `_outside`."""
    parts = []
    for name in names:
        mask = np.ones(shapes[name], bool)
        index = _outside(name, tuple(shapes[name]), rank)
        if index is not None:
            mask[index] = False
        parts.append(mask.ravel())
    return np.concatenate(parts) if parts else np.zeros(0, bool)
