"""Local training and evaluation of adapter weights; the base stays frozen."""

from __future__ import annotations

import torch

from fedpeft.core.adapters.rank import held_at_zero
from fedpeft.core.base.tasks import Task

from .data import TextSplit, batches, training_batches
from .next_word import NextWordScore, score_rows
from .settings import EvalResult, TrainResult, TrainSettings


def on_device(model: torch.nn.Module, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The batch where the model is (a no-op on the CPU)."""
    device = next(model.parameters()).device
    return {k: v.to(device) for k, v in batch.items()}


def train(model: torch.nn.Module, task: Task, tokenizer, split: TextSplit, settings: TrainSettings,
          dropout: bool = True) -> TrainResult:
    """AdamW (or SGD) over the parameters that require grad, for `settings.epochs` passes.

    `dropout=False` trains in eval mode, as the device trainer's graph does (checks that
    compare the two use it)."""
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = (torch.optim.SGD(params, lr=settings.learning_rate) if settings.optimizer == "sgd"
                 else torch.optim.AdamW(params, lr=settings.learning_rate, weight_decay=settings.weight_decay))
    # a client below the template's rank: what its forward pass holds at zero stays zero (core/adapters/rank.py)
    limited = [(p, index) for n, p in model.named_parameters()
               if p.requires_grad and (index := held_at_zero(n, tuple(p.shape), settings.rank)) is not None]
    torch.manual_seed(settings.seed)
    model.train(dropout)
    total, steps = 0.0, 0
    for texts, labels in training_batches(split, settings.batch_size, settings.epochs, settings.seed):
        loss, _, _ = task.score(model, on_device(model, task.batch(tokenizer, texts, labels, settings.max_length)))
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        with torch.no_grad():
            for parameter, index in limited:
                parameter[index] = 0
        total += float(loss.detach())
        steps += 1
    model.eval()
    return TrainResult(loss=total / max(steps, 1), steps=steps, examples=len(split))


@torch.no_grad()
def evaluate(model: torch.nn.Module, task: Task, tokenizer, split: TextSplit, settings: TrainSettings) -> EvalResult:
    model.eval()
    if task.name == "causal-lm":
        return evaluate_next_word(model, tokenizer, split, settings.max_length)
    loss_sum, correct, count = 0.0, 0, 0
    for texts, labels in batches(split, 64, list(range(len(split)))):
        loss, right, n = task.score(model, on_device(model, task.batch(tokenizer, texts, labels, settings.max_length)))
        loss_sum += float(loss) * n
        correct += right
        count += n
    return EvalResult(loss=loss_sum / max(count, 1), accuracy=correct / max(count, 1), examples=len(split))


NEXT_WORD_BATCH = 16  # rows x tokens x a 49k vocabulary of float32 logits: 16 x 48 rows is 150 MB


def evaluate_next_word(model: torch.nn.Module, tokenizer, split: TextSplit, max_length: int) -> EvalResult:
    """Token perplexity and next-word top-1 / top-3 of a causal LM over `split`."""
    total = NextWordScore()
    for start in range(0, len(split), NEXT_WORD_BATCH):
        total.add(score_rows(model, tokenizer, split.texts[start:start + NEXT_WORD_BATCH], max_length))
    words = max(total.words, 1)
    return EvalResult(loss=total.loss_sum / max(total.tokens, 1), accuracy=total.top3 / words, examples=len(split),
                      top1=total.top1 / words)
