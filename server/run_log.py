"""Round-by-round record of a run: progress lines on stdout, `metrics.jsonl`, and
`metrics.prom`, the run's totals so far in Prometheus's text format (rewritten atomically
each round: node_exporter's textfile collector, or any scraper of files, reads it as it
reads the registry's /metrics)."""

from __future__ import annotations

import json
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from flwr.app import MetricRecord
from prometheus_client import CollectorRegistry, Gauge, write_to_textfile

from .strategy import RoundTraffic


@dataclass
class RunLog:
    path: Path
    rounds: int
    rows: list[dict[str, Any]] = field(default_factory=list)
    next_word: bool = False  # a causal LM: val_accuracy is next-word top-3, and perplexity is logged
    _pending: dict[str, Any] = field(default_factory=dict)
    _started: float = field(default_factory=time.monotonic)

    def __post_init__(self) -> None:
        """Start the file afresh, or with the rows of the rounds a resumed run already completed."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.path.write_text("".join(json.dumps(row) + "\n" for row in self.rows))

    def train_done(self, server_round: int, metrics: MetricRecord | None, traffic: RoundTraffic) -> None:
        self._pending = {
            "round": server_round,
            "start_adapter": traffic.start_adapter,
            "train_loss": float(metrics["train-loss"]) if metrics and "train-loss" in metrics else None,
            "bytes_down": traffic.bytes_down,
            "bytes_up": traffic.bytes_up,
            "replies": traffic.replies,
            "failures": traffic.failures,
            "accepted": traffic.accepted,
            "rejected": dict(traffic.rejected),
            "rejections": list(traffic.rejections),
            "unchanged": traffic.unchanged,
            "refused_global": traffic.refused_global,  # why the round's aggregate was refused, else None
            "max_update_norm": round(traffic.max_norm, 6),
            "capped_weights": traffic.capped,
            "sample_rate": round(traffic.sample_rate, 6),
            "noise_multiplier": traffic.noise_multiplier,  # on the round's sum, in units of clip (privacy on)
            "epsilon": traffic.epsilon,  # the run's so far (privacy on), else None
            "distrusted": traffic.distrusted,  # fltrust: accepted deltas given no weight, else None
            "distrusted_clients": traffic.distrusted_clients,  # fltrust: whose, else None
            # mean bytes of an accepted reply per LoRA rank its client trained at ("full": the template's)
            "bytes_up_by_rank": {str(rank or "full"): round(sum(sizes) / len(sizes))
                                 for rank, sizes in sorted(traffic.bytes_up_by_rank.items())},
        }

    def evaluate_done(self, server_round: int, metrics: MetricRecord | None, rejected: dict[str, int]) -> None:
        row = {
            **self._pending,
            "round": server_round,
            "eval_rejected": dict(rejected),
            "val_accuracy": float(metrics["eval-acc"]) if metrics else None,
            "val_loss": float(metrics["eval-loss"]) if metrics else None,
            **({"val_perplexity": math.exp(min(float(metrics["eval-loss"]), 700.0)) if metrics else None}
               if self.next_word else {}),
            "seconds": round(time.monotonic() - self._started, 2),
        }
        self.rows.append(row)
        with self.path.open("a") as fh:
            fh.write(json.dumps(row) + "\n")
        self.write_prometheus()
        print(progress_line(row, self.rounds), flush=True)

    def write_prometheus(self) -> None:
        """`metrics.prom` beside metrics.jsonl: rounds done, deltas accepted and rejected by
        reason, bytes each way, the latest validation accuracy, train loss and epsilon."""
        collectors = CollectorRegistry()

        def gauge(name: str, text: str, value: float | None, labels: dict[str, str] | None = None) -> None:
            if value is None:
                return
            metric = Gauge(f"fedpeft_run_{name}", text, list(labels or {}), registry=collectors)
            (metric.labels(**labels) if labels else metric).set(value)

        last = self.rows[-1] if self.rows else {}
        gauge("rounds", "rounds completed", len(self.rows))
        gauge("accepted_deltas", "deltas accepted over the run", sum(r.get("accepted") or 0 for r in self.rows))
        rejected = Gauge("fedpeft_run_rejected_deltas", "deltas rejected over the run, by reason", ["reason"],
                         registry=collectors)
        for reason, count in self.totals("rejected").items():  # reasons are the verifier's own names
            rejected.labels(reason).set(count)
        gauge("bytes_up", "bytes clients sent over the run", sum(r.get("bytes_up") or 0 for r in self.rows))
        gauge("bytes_down", "bytes clients received over the run", sum(r.get("bytes_down") or 0 for r in self.rows))
        gauge("val_accuracy", "the latest round's validation accuracy", last.get("val_accuracy"))
        gauge("train_loss", "the latest round's mean train loss", last.get("train_loss"))
        gauge("epsilon", "the run's privacy loss so far (DP on)", last.get("epsilon"))
        write_to_textfile(str(self.path.with_name("metrics.prom")), collectors)

    def totals(self, key: str, prefix: str = "") -> dict[str, int]:
        """Counts summed over the rounds of a per-round {reason: count} field."""
        totals: dict[str, int] = {}
        for row in self.rows:
            for reason, count in row.get(key, {}).items():
                totals[prefix + reason] = totals.get(prefix + reason, 0) + count
        return dict(sorted(totals.items()))

def progress_line(row: dict[str, Any], rounds: int) -> str:
    """One metrics.jsonl row as the line a run prints after each round."""
    def fmt(value: float | None, spec: str) -> str:
        return "n/a" if value is None else format(value, spec)

    rejected = sum(row.get("rejected", {}).values())
    spent = "" if row.get("epsilon") is None else f"  epsilon {row['epsilon']:.3g}"
    spent += f"  distrusted {row['distrusted']}" if row.get("distrusted") else ""
    refused = f" (aggregate refused: {row['refused_global']})" if row.get("refused_global") else ""
    return (
        f"[fedpeft] round {row['round']}/{rounds}  train loss {fmt(row.get('train_loss'), '.3f')}  "
        + (f"val top-3 {fmt(row['val_accuracy'], '.3f')}  val ppl {fmt(row['val_perplexity'], '.2f')}"
           if "val_perplexity" in row else f"val acc {fmt(row['val_accuracy'], '.3f')}")
        + f"  up {row.get('bytes_up', 0) / 1e6:.2f} MB  "
        f"down {row.get('bytes_down', 0) / 1e6:.2f} MB  accepted {row.get('accepted', 0)}"
        f"{f'  rejected {rejected}' if rejected else ''}"
        f"{'  global unchanged' if row.get('unchanged') else ''}{refused}{spent}  ({row['seconds']:.0f} s)"
    )
