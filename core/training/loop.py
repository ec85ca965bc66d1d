"""Local training and evaluation of adapter weights; the base stays frozen."""

from __future__ import annotations

import random
from dataclasses import dataclass

import torch

from fedpeft.core.base.tasks import Task

from .data import TextSplit
from .settings import TrainSettings


@dataclass
class TrainResult:
    loss: float
    steps: int
    examples: int


@dataclass
class EvalResult:
    loss: float
    accuracy: float
    examples: int


def _batches(split: TextSplit, batch_size: int, order: list[int]) -> list[tuple[list[str], list[int]]]:
    return [
        ([split.texts[i] for i in order[s:s + batch_size]], [split.labels[i] for i in order[s:s + batch_size]])
        for s in range(0, len(order), batch_size)
    ]


def train(model: torch.nn.Module, task: Task, tokenizer, split: TextSplit, settings: TrainSettings) -> TrainResult:
    """AdamW over the parameters that require grad, for `settings.epochs` passes."""
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=settings.learning_rate)
    rng = random.Random(settings.seed)
    torch.manual_seed(settings.seed)
    model.train()
    total, steps = 0.0, 0
    for _ in range(settings.epochs):
        order = list(range(len(split)))
        rng.shuffle(order)
        for texts, labels in _batches(split, settings.batch_size, order):
            loss, _, _ = task.score(model, task.batch(tokenizer, texts, labels, settings.max_length))
            loss.backward()
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            total += float(loss.detach())
            steps += 1
    model.eval()
    return TrainResult(loss=total / max(steps, 1), steps=steps, examples=len(split))


@torch.no_grad()
def evaluate(model: torch.nn.Module, task: Task, tokenizer, split: TextSplit, settings: TrainSettings) -> EvalResult:
    model.eval()
    loss_sum, correct, count = 0.0, 0, 0
    for texts, labels in _batches(split, 64, list(range(len(split)))):
        loss, right, n = task.score(model, task.batch(tokenizer, texts, labels, settings.max_length))
        loss_sum += float(loss) * n
        correct += right
        count += n
    return EvalResult(loss=loss_sum / max(count, 1), accuracy=correct / max(count, 1), examples=len(split))
