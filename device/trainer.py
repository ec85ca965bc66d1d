"""Adapter training on a device: the export's training graph in ONNX Runtime, the optimizer in numpy.

No PyTorch: the graph (export/training_graph.py) returns the loss and the gradients of
the adapter's trained tensors; AdamW or SGD updates them here with the hyper-parameters
of the server's `[train]`, over batches drawn in the same order as the PyTorch loop's
(core/training/data.py `training_batches`). The optimizers are written out because no
maintained numpy optimizer library exists; they follow torch.optim's update rules.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import numpy as np
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from fedpeft.core import allocator
from fedpeft.core.adapters.rank import truncated, zero_outside
from fedpeft.core.errors import ConfigError
from fedpeft.core.training.data import TextSplit, batches, training_batches
from fedpeft.core.training.class_sums import ClassSums
from fedpeft.core.training.settings import EvalResult, TrainResult, TrainSettings
from fedpeft.core.training.targets import next_token_labels

from .predict import encode, load_tokenizer, open_export, open_session

Arrays = dict[str, np.ndarray]
LM_MAPPED_BLOCKS = 256 * 1024  # a causal LM's step: tensors this large or larger go back to the system when freed


class AdamW:
    """torch.optim.AdamW's update (decoupled weight decay, bias-corrected moments)."""

    def __init__(self, learning_rate: float, weight_decay: float, betas=(0.9, 0.999), eps: float = 1e-8) -> None:
        self.lr, self.weight_decay, self.betas, self.eps = learning_rate, weight_decay, betas, eps
        self.step_count = 0
        self.m: Arrays = {}
        self.v: Arrays = {}

    def step(self, params: Arrays, grads: Mapping[str, np.ndarray]) -> None:
        self.step_count += 1
        b1, b2 = self.betas
        correction1, correction2 = 1 - b1 ** self.step_count, 1 - b2 ** self.step_count
        for name, grad in grads.items():
            param = params[name]
            m = self.m.setdefault(name, np.zeros_like(param))
            v = self.v.setdefault(name, np.zeros_like(param))
            param *= np.float32(1 - self.lr * self.weight_decay)
            m *= np.float32(b1)
            m += np.float32(1 - b1) * grad
            v *= np.float32(b2)
            v += np.float32(1 - b2) * grad * grad
            denominator = np.sqrt(v) / np.float32(np.sqrt(correction2)) + np.float32(self.eps)
            param -= np.float32(self.lr / correction1) * m / denominator


class SGD:
    """torch.optim.SGD's update without momentum."""

    def __init__(self, learning_rate: float) -> None:
        self.lr = learning_rate

    def step(self, params: Arrays, grads: Mapping[str, np.ndarray]) -> None:
        for name, grad in grads.items():
            params[name] -= np.float32(self.lr) * grad


def optimizer_for(settings: TrainSettings) -> AdamW | SGD:
    if settings.optimizer == "sgd":
        return SGD(settings.learning_rate)
    if settings.optimizer == "adamw":
        return AdamW(settings.learning_rate, settings.weight_decay)
    raise ConfigError(f"unknown optimizer {settings.optimizer!r}; choose adamw or sgd")


class DeviceTrainer:
    """An export's training graph (and base graph, where the export has one) ready to
    train and evaluate adapters given as PEFT-keyed arrays, the form deltas travel in.

    A classifier's graph takes a label per row; a causal LM's (`causal_lm`) learns the
    texts themselves, its labels built as PyTorch clients build them."""

    def __init__(self, folder: Path, public_key: Ed25519PublicKey | None, threads: int = 0) -> None:
        folder = Path(folder)
        self.manifest = open_export(folder, public_key)
        training = self.manifest.get("training")
        if not training:
            raise ConfigError(f"{folder} has no training graph: export the adapter again with this version of fedpeft")
        self.causal_lm = training.get("task") == "causal-lm"  # older exports name no task: classifiers
        if self.causal_lm:  # SmolLM2 at 8 x 64 peaked at 1.47 GB every run with this, 1.5 or 2.1 GB without
            allocator.map_blocks_from(LM_MAPPED_BLOCKS)
        self.session = open_session(folder / training["graph"], threads, arena=not self.causal_lm)
        self.graph_names: dict[str, str] = dict(self.manifest["adapter_inputs"])  # PEFT key -> graph input
        by_graph_name = {name: key for key, name in self.graph_names.items()}
        self.trained = [by_graph_name[name] for name in training["trained"]]  # PEFT keys, in gradient order
        self.labels = list(self.manifest["labels"])
        self.max_length = int(self.manifest["max_length"])
        self.tokenizer = load_tokenizer(folder, self.manifest)
        models = self.manifest["models"]
        forward = models.get("eval") or models.get("base")  # a training export's evaluation graph; a full export's base graph
        self.inference = open_session(folder / forward, threads) if forward else None
        self.has_features = "eval" in models  # its second output is what the head sees (round zero)

    def _feed(self, arrays: Mapping[str, np.ndarray], texts: list[str], max_length: int) -> dict[str, np.ndarray]:
        if set(arrays) != set(self.graph_names):
            raise ConfigError(f"adapter tensors do not fit this export: {sorted(set(arrays) ^ set(self.graph_names))[:3]}")
        feed = encode(self.tokenizer, texts, min(max_length, self.max_length))
        feed.update({self.graph_names[k]: np.ascontiguousarray(v, np.float32) for k, v in arrays.items()})
        return feed

    def loss_and_gradients(self, arrays: Mapping[str, np.ndarray], texts: list[str], labels: list[int] | None,
                           max_length: int, dropout: bool = False) -> tuple[float, Arrays]:
        """Loss and gradients of the trained tensors on one batch (`labels`: a classifier's,
        ignored for a causal LM); `dropout` applies the model's dropout rates (training),
        without it the result is deterministic."""
        feed = self._feed(arrays, texts, max_length)
        feed["labels"] = (next_token_labels(feed["input_ids"], feed["attention_mask"]) if self.causal_lm
                          else np.asarray(labels, np.int64))
        feed["dropout"] = np.array(1.0 if dropout else 0.0, np.float32)
        loss, *gradients = self.session.run(None, feed)
        return float(loss), dict(zip(self.trained, gradients, strict=True))

    def train(self, arrays: Mapping[str, np.ndarray], split: TextSplit, settings: TrainSettings,
              dropout: bool = True) -> tuple[Arrays, TrainResult]:
        """Train a copy of `arrays` (every adapter tensor; the method's frozen ones stay as
        they are) for `settings.epochs` passes, with dropout as PyTorch's train mode
        unless `dropout=False`."""
        params = {k: np.array(v, np.float32) for k, v in truncated(arrays, settings.rank).items()}
        if self.causal_lm:
            split = self._with_next_tokens(split)
        optimizer = optimizer_for(settings)
        total, steps = 0.0, 0
        for texts, labels in training_batches(split, settings.batch_size, settings.epochs, settings.seed):
            loss, gradients = self.loss_and_gradients(params, texts, labels, settings.max_length, dropout)
            if not np.isfinite(loss):  # refused before anything is stored: the adapter the device has stays
                raise ConfigError(f"training diverged (loss {loss}) at step {steps + 1}; try a lower learning rate")
            optimizer.step(params, gradients)
            zero_outside(params, settings.rank)  # a client below the template's rank (core/adapters/rank.py)
            total += loss
            steps += 1
        return params, TrainResult(loss=total / max(steps, 1), steps=steps, examples=len(split))

    def _with_next_tokens(self, split: TextSplit) -> TextSplit:
        """A causal LM's rows that hold a next token to learn (one-token messages such as "ok"
        have none: a batch of only those has no target and a NaN loss)."""
        keep = [i for i, encoding in enumerate(self.tokenizer.encode_batch(split.texts)) if sum(encoding.attention_mask) > 1]
        if not keep:
            raise ConfigError("no message is longer than one token: nothing to learn the next word from")
        return TextSplit([split.texts[i] for i in keep], [split.labels[i] for i in keep])

    def _forward(self, arrays: Mapping[str, np.ndarray], split: TextSplit, max_length: int):
        """(logits, head features or None, labels) per batch of 64 of `split`, the adapter fed."""
        if self.inference is None:
            raise ConfigError("this export has no forward graph to score adapters with: export it again")
        for texts, labels in batches(split, 64, list(range(len(split)))):
            outputs = self.inference.run(None, self._feed(arrays, texts, max_length))
            yield outputs[0], (outputs[1] if self.has_features else None), np.asarray(labels)

    def evaluate(self, arrays: Mapping[str, np.ndarray], split: TextSplit, settings: TrainSettings) -> EvalResult:
        """Mean cross-entropy and accuracy of a classifier adapter over `split`, as PyTorch's
        `evaluate` computes them (core/training/loop.py)."""
        if self.causal_lm:
            raise ConfigError("scoring a language model's adapter on the device is not built: its export has no "
                              "next-word graph")
        loss_sum, correct = 0.0, 0
        for logits, _, labels in self._forward(truncated(arrays, settings.rank), split, settings.max_length):
            shifted = logits.astype(np.float64) - logits.max(-1, keepdims=True)
            log_probs = shifted - np.log(np.exp(shifted).sum(-1, keepdims=True))
            loss_sum -= float(log_probs[np.arange(len(labels)), labels].sum())
            correct += int((logits.argmax(-1) == labels).sum())
        count = max(len(split), 1)
        return EvalResult(loss=loss_sum / count, accuracy=correct / count, examples=len(split))

    def class_sums(self, arrays: Mapping[str, np.ndarray], split: TextSplit, settings: TrainSettings) -> Arrays:
        """Round zero: per-class sums of the features the head sees over `split`, and class counts."""
        if not self.has_features:
            raise ConfigError("this export has no evaluation graph with head features: export it again")
        total = ClassSums(len(self.labels))
        width = 0
        for _, features, labels in self._forward(arrays, split, settings.max_length):
            total.add(features, labels.tolist())
            width = features.shape[-1]
        return total.arrays(width)
