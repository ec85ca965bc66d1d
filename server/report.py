"""Personalization report and plots: what a person looks at after a run.

Client names come from the enrolled keys (server/verify.py's `checked_reports`), and are
still drawn as plain text: printable, bounded, and never parsed as mathtext or TeX (a `$`
in a name made matplotlib raise after the release was written)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from matplotlib.ticker import MaxNLocator  # noqa: E402

from fedpeft.console import printable  # noqa: E402

ARMS = ("initial", "global", "personalized", "local_only")
PLAIN_TEXT = {"parse_math": False, "usetex": False}  # text objects that may hold a client's name
NAME_CHARS = 40  # of a client's name on a plot


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


def plot_curves(rows: list[dict[str, Any]], initial_accuracy: float, final_accuracy: float, path: Path) -> None:
    """Validation accuracy after each round, the test-split accuracy of the template (round
    0) and of the final global adapter apart from it, and the clients' training loss."""
    rounds = [r["round"] for r in rows]
    fig, (ax_acc, ax_loss) = plt.subplots(1, 2, figsize=(10, 4))
    ax_acc.plot(rounds, [r["val_accuracy"] for r in rows], marker="o", label="global adapter, validation splits")
    ax_acc.plot([0, rounds[-1] if rounds else 0], [initial_accuracy, final_accuracy], linestyle="none", marker="s",
                color="tab:green", label="test splits: template (0), final global")
    ax_acc.set(title="Global adapter accuracy", xlabel="round", ylabel="accuracy", ylim=(0, 1))
    ax_acc.legend(loc="lower right", fontsize=8)
    ax_loss.plot(rounds, [r["train_loss"] for r in rows], marker="o", color="tab:red")
    ax_loss.set(title="Mean local training loss", xlabel="round", ylabel="loss")
    for ax in (ax_acc, ax_loss):
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def plot_clients(clients: list[dict[str, Any]], path: Path) -> None:
    """Each client's test accuracy for the four adapters, with its test-split size."""
    names = [f"{printable(c['client'], NAME_CHARS)}\n(n={c['examples']})" for c in clients]
    x = np.arange(len(names))
    width = 0.2
    fig, ax = plt.subplots(figsize=(max(6, len(names) * 0.9), 4.5))
    for i, arm in enumerate(ARMS):
        ax.bar(x + (i - 1.5) * width, [c[arm] for c in clients], width, label=arm.replace("_", "-"))
    ax.set_xticks(x, names, rotation=45 if len(names) > 10 else 0, ha="right" if len(names) > 10 else "center",
                  fontsize=8, **PLAIN_TEXT)
    ax.set(ylabel="test accuracy", ylim=(0, 1))
    ax.set_title("Test accuracy per client (n: test examples)", pad=24)
    ax.legend(ncol=len(ARMS), fontsize=8, loc="lower center", bbox_to_anchor=(0.5, 1.0), frameon=False)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def write_json(path: Path, value: Any) -> None:
    path.write_text(json.dumps(value, indent=2, sort_keys=True) + "\n")
