"""Every non-delta reply the server reads, checked in one place against a fixed schema.

A client's reply is untrusted bytes even when its node is authenticated: extra metric
keys make Flower's aggregation raise, a NaN poisons an average, a claimed billion
examples buys the logged accuracy. Each function returns clean values or raises
`BadReply` with a named reason; callers drop such a reply and count it, never raise.
Nothing here names a client: a report's name and weight come from server/verify.py's
`checked_reports` (the enrolled key, the capped count), never from the reply's text.
(Deltas are checked by server/verify.py.)
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass

from flwr.app import RecordDict

from fedpeft.console import printable

BAD_REPLY_REASONS = ("too-large", "malformed", "bad-metrics", "bad-example-count", "duplicate")
LOSS_RANGE = (0.0, 1e6)
TRAIN_METRICS = {"train-loss": LOSS_RANGE, "steps": (0.0, 1e9)}  # in the signed delta header
EVALUATE_METRICS = {"eval-loss": LOSS_RANGE, "eval-acc": (0.0, 1.0)}


class BadReply(Exception):
    def __init__(self, reason: str, detail: str) -> None:
        assert reason in BAD_REPLY_REASONS, reason
        detail = printable(detail, 200)  # it may quote the reply's keys and values
        super().__init__(f"{reason}: {detail}")
        self.reason, self.detail = reason, detail


def checked_metrics(metrics: Mapping, schema: Mapping[str, tuple[float, float]],
                    optional: Mapping[str, tuple[float, float]] | None = None) -> dict[str, float]:
    """Exactly the schema's keys and any of the `optional` ones, each a finite number in its range."""
    optional = optional or {}
    if not set(schema) <= set(metrics) <= set(schema) | set(optional):
        raise BadReply("bad-metrics", f"keys {sorted(map(str, metrics))[:6]}, expected {sorted(schema)}"
                       + (f" and any of {sorted(optional)}" if optional else ""))
    clean = {}
    for key, (low, high) in {**schema, **optional}.items():
        if key not in metrics:
            continue
        value = metrics[key]
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) \
                or not low <= value <= high:
            raise BadReply("bad-metrics", f"{key} = {value!r}, expected a number in [{low:g}, {high:g}]")
        clean[key] = float(value)
    return clean


def example_count(value, max_examples: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= max_examples:
        raise BadReply("bad-example-count", f"{value!r}, allowed 1..{max_examples}")
    return value


def _one_metric_record(content: RecordDict):
    records = list(content.metric_records.values())
    if len(records) != 1:
        raise BadReply("malformed", f"expected one MetricRecord, got {len(records)}")
    return records[0]


def evaluate_reply(content: RecordDict, max_examples: int) -> tuple[int, dict[str, float]]:
    """(examples, metrics) of an `evaluate` reply."""
    metrics = dict(_one_metric_record(content))
    examples = example_count(metrics.pop("num-examples", None), max_examples)
    return examples, checked_metrics(metrics, EVALUATE_METRICS)


def personalize_reply(content: RecordDict, arms: tuple[str, ...], max_examples: int,
                      next_word: bool = False) -> tuple[int, dict[str, float]]:
    """(examples, arm -> test accuracy) of a personalization reply; a causal LM's also
    gives each arm's next-word top-1 (`<arm>_top1`) and token loss (`<arm>_loss`). The name
    a client states in it is not read: it is shown under its enrolled key's (server/verify.py)."""
    metrics = dict(_one_metric_record(content))
    examples = example_count(metrics.pop("num-examples", None), max_examples)
    schema = {f"{arm}-acc": (0.0, 1.0) for arm in arms}
    if next_word:
        schema |= {f"{arm}-{name}": bounds for arm in arms for name, bounds in (("top1", (0.0, 1.0)), ("loss", LOSS_RANGE))}
    values = checked_metrics(metrics, schema)
    return examples, {key.removesuffix("-acc").replace("-", "_"): value for key, value in values.items()}


@dataclass(frozen=True)
class NodeStatus:
    """A `query.status` reply: whether the node holds the run's base (a device node: its
    training export) and template, and whether it is a device node (ONNX Runtime, no torch)."""

    has_base: bool
    has_template: bool
    device: bool = False


def status_reply(content: RecordDict) -> NodeStatus:
    status = content.config_records.get("status")
    values = (status.get("has-base"), status.get("has-template")) if status is not None else (None, None)
    device = status.get("device", False) if status is not None else False
    if not all(isinstance(v, bool) for v in (*values, device)):
        raise BadReply("malformed", "a status reply needs booleans has-base and has-template (and device, if sent)")
    return NodeStatus(*values, device)


def install_reply(content: RecordDict) -> None:
    status = content.config_records.get("status")
    if status is None or status.get("installed") is not True:
        raise BadReply("malformed", "an install reply must say installed = true")
