"""A classifier head that starts right: the nearest-class-mean head (FedNCM, Legate et al. 2023).

With a frozen pretrained backbone, what the head sees at the start is known: the
features the backbone gives. Each client sums those features per class over its
training rows (`class_statistics`); the sums and counts of all clients give the class
means, and a linear head whose logits are the (scaled) negative squared distances to the
means (`head_from_means`) classifies by the nearest mean before any round has run.
Federated training then starts from there instead of from a random head, which on
label-skewed clients pulls the average towards nobody's classes.

No library computes this for a PEFT model's head (it is a few lines over a forward hook);
the server's checks of what clients send are in server/class_means.py.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
import torch

from fedpeft.core.base.tasks import Task
from fedpeft.core.errors import ConfigError

from .class_sums import ClassSums
from .data import TextSplit, batches
from .loop import on_device
from .settings import TrainSettings

MARGIN = 4.0  # nats between two classes' logits at a class mean, for the median pair of means (see head_from_means)
MIN_SEPARATION = 0.01  # means closer than this share of their squared norm count as this far (bounds the scale)


def head_module(model: torch.nn.Module, task: Task) -> torch.nn.Linear:
    """The active linear head of a PEFT model (a `modules_to_save` copy of the task's head)."""
    inner = model.get_base_model() if hasattr(model, "get_base_model") else model
    for name in task.head_modules:
        module = getattr(inner, name, None)
        if module is not None:
            saved = getattr(module, "modules_to_save", None)  # torch ModuleDict: adapter name -> head copy
            head = saved["default"] if saved is not None and "default" in saved else module
            if isinstance(head, torch.nn.Linear):
                return head
            raise ConfigError(f"federation.head_init = 'class-means' needs a linear classification head; "
                              f"{type(inner).__name__}.{name} is a {type(head).__name__} (set head_init = 'none')")
    raise ConfigError(f"{type(inner).__name__} has no classification head ({', '.join(task.head_modules)})")


@torch.no_grad()
def class_statistics(model: torch.nn.Module, task: Task, tokenizer, split: TextSplit, settings: TrainSettings,
                     num_classes: int) -> dict[str, np.ndarray]:
    """Per-class sums of the features the head sees, and per-class row counts, over `split`."""
    head = head_module(model, task)
    total = ClassSums(num_classes)
    seen: list[torch.Tensor] = []
    hook = head.register_forward_hook(lambda _module, inputs, _output: seen.append(inputs[0].detach()))
    model.eval()
    try:
        for texts, labels in batches(split, 64, list(range(len(split)))):
            seen.clear()
            model(**on_device(model, task.batch(tokenizer, texts, labels, settings.max_length)))
            total.add(seen[0].float().cpu().numpy(), labels)
    finally:
        hook.remove()
    return total.arrays(head.in_features)


def head_from_means(sums: np.ndarray, counts: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(weight [classes, features], bias [classes]) of the nearest-class-mean head.

    logit_c(x) = s * (x . m_c - |m_c|^2 / 2) ranks classes as -|x - m_c|^2 does. The scale s
    puts MARGIN nats between two classes at a class mean for the median pair of means: too
    small and round 1 starts from near-uniform predictions, too large and the loss of a
    misclassified row explodes (on both benchmarks 2-8 nats gave the lowest test loss).
    Means that barely differ (a backbone whose features do not tell the classes apart)
    would make s unbounded: their squared distance counts as at least MIN_SEPARATION of
    their squared norm. A class no client holds gets a zero row and a bias MARGIN below the
    lowest: near the held classes' means it is never chosen, and training can still lift it.
    """
    present = counts > 0
    means = np.zeros_like(sums, dtype=np.float64)
    means[present] = sums[present] / counts[present, None]
    squared = (means ** 2).sum(1)
    held = np.flatnonzero(present)
    pairs = [((means[i] - means[j]) ** 2).sum() for i in held for j in held if i < j]
    spread = max(float(np.median(pairs)), MIN_SEPARATION * float(np.median(squared[held]))) if pairs else 0.0
    scale = 2 * MARGIN / spread if spread > 0 else 1.0
    weight = scale * means
    bias = -scale * squared / 2
    if not present.all():
        bias[~present] = bias[present].min() - MARGIN if present.any() else 0.0
    return weight.astype(np.float32), bias.astype(np.float32)


def with_head(arrays: Mapping[str, np.ndarray], head_names: tuple[str, str], weight: np.ndarray,
              bias: np.ndarray) -> dict[str, np.ndarray]:
    """`arrays` (an adapter) with its head's weight and bias replaced."""
    weight_name, bias_name = head_names
    if arrays[weight_name].shape != weight.shape or arrays[bias_name].shape != bias.shape:
        raise ValueError(f"head of shape {weight.shape} does not fit {weight_name} {arrays[weight_name].shape}")
    return {**arrays, weight_name: weight, bias_name: bias}


def head_names(arrays: Mapping[str, np.ndarray], task: Task) -> tuple[str, str]:
    """The adapter's names for the head's weight and bias (PEFT's `modules_to_save` keys)."""
    for module in task.head_modules:
        weight = [n for n in arrays if n.endswith(f".{module}.weight")]
        bias = [n for n in arrays if n.endswith(f".{module}.bias")]
        if len(weight) == 1 and len(bias) == 1:
            return weight[0], bias[0]
    raise ConfigError(f"the adapter holds no linear head named {' or '.join(task.head_modules)} with a bias")
