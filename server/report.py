"""Personalization report and plots: what a person looks at after a run."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

ARMS = ("initial", "global", "personalized", "local_only")


def arm_stats(clients: list[dict[str, Any]], arm: str) -> dict[str, float]:
    """Sample-weighted mean, plain mean, spread and worst decile of one arm's accuracies."""
    acc = np.array([c[arm] for c in clients], dtype=float)
    n = np.array([c["examples"] for c in clients], dtype=float)
    worst = np.sort(acc)[: max(1, int(np.ceil(len(acc) / 10)))]
    return {
        "weighted_mean": float((acc * n).sum() / n.sum()),
        "mean": float(acc.mean()),
        "std": float(acc.std()),
        "worst_decile": float(worst.mean()),
    }


def personalization_table(clients: list[dict[str, Any]]) -> tuple[dict[str, dict[str, float]], str]:
    stats = {arm: arm_stats(clients, arm) for arm in ARMS}
    lines = [f"{'adapter':<14}{'weighted':>10}{'mean':>8}{'std':>8}{'worst 10%':>11}"]
    for arm, s in stats.items():
        lines.append(f"{arm:<14}{s['weighted_mean']:>10.3f}{s['mean']:>8.3f}{s['std']:>8.3f}{s['worst_decile']:>11.3f}")
    return stats, "\n".join(lines)


def plot_curves(rows: list[dict[str, Any]], initial_accuracy: float, path: Path) -> None:
    rounds = [r["round"] for r in rows]
    fig, (ax_acc, ax_loss) = plt.subplots(1, 2, figsize=(10, 4))
    ax_acc.plot([0, *rounds], [initial_accuracy, *[r["val_accuracy"] for r in rows]], marker="o")
    ax_acc.set(title="Global adapter accuracy (round 0: template, test split;\nthen validation split)",
               xlabel="round", ylabel="accuracy", ylim=(0, 1))
    ax_loss.plot(rounds, [r["train_loss"] for r in rows], marker="o", color="tab:red")
    ax_loss.set(title="Mean local training loss", xlabel="round", ylabel="loss")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def plot_clients(clients: list[dict[str, Any]], path: Path) -> None:
    names = [c["client"] for c in clients]
    x = np.arange(len(names))
    width = 0.2
    fig, ax = plt.subplots(figsize=(max(6, len(names) * 0.9), 4))
    for i, arm in enumerate(ARMS):
        ax.bar(x + (i - 1.5) * width, [c[arm] for c in clients], width, label=arm)
    ax.set_xticks(x, names, rotation=45, ha="right")
    ax.set(title="Test accuracy per client", ylabel="accuracy", ylim=(0, 1))
    ax.legend(ncol=4, fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def write_json(path: Path, value: Any) -> None:
    path.write_text(json.dumps(value, indent=2, sort_keys=True) + "\n")
