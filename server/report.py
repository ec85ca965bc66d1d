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


def arm_stats(clients: list[dict[str, Any]], key: str, higher_is_better: bool = True) -> dict[str, float]:
    """Sample-weighted mean, plain mean, spread and worst decile of one figure over the
    clients (the worst decile: the lowest accuracies, the highest perplexities)."""
    values = np.array([c[key] for c in clients], dtype=float)
    n = np.array([c["examples"] for c in clients], dtype=float)
    ordered = np.sort(values) if higher_is_better else np.sort(values)[::-1]
    worst = ordered[: max(1, int(np.ceil(len(values) / 10)))]
    return {
        "weighted_mean": float((values * n).sum() / n.sum()),
        "mean": float(values.mean()),
        "std": float(values.std()),
        "worst_decile": float(worst.mean()),
    }


def personalization_table(clients: list[dict[str, Any]]) -> tuple[dict[str, dict[str, float]], str]:
    stats = {arm: arm_stats(clients, arm) for arm in ARMS}
    lines = [f"{'adapter':<14}{'weighted':>10}{'mean':>8}{'std':>8}{'worst 10%':>11}"]
    for arm, s in stats.items():
        lines.append(f"{arm:<14}{s['weighted_mean']:>10.3f}{s['mean']:>8.3f}{s['std']:>8.3f}{s['worst_decile']:>11.3f}")
    return stats, "\n".join(lines)


def with_perplexity(client: dict[str, Any]) -> dict[str, Any]:
    """A causal LM's report row with each arm's token loss as perplexity (exp of it)."""
    row = {k: v for k, v in client.items() if not k.endswith("_loss")}
    return row | {f"{arm}_perplexity": float(np.exp(min(client[f"{arm}_loss"], 700.0))) for arm in ARMS}


def next_word_table(clients: list[dict[str, Any]]) -> tuple[dict[str, dict[str, dict[str, float]]], str]:
    """Next-word top-1, top-3 and perplexity per arm (top-3 is the arm's accuracy)."""
    stats = {
        "top1": {arm: arm_stats(clients, f"{arm}_top1") for arm in ARMS},
        "top3": {arm: arm_stats(clients, arm) for arm in ARMS},
        "perplexity": {arm: arm_stats(clients, f"{arm}_perplexity", higher_is_better=False) for arm in ARMS},
    }
    lines = [f"{'adapter':<14}{'top-1':>8}{'top-3':>8}{'std':>7}{'worst 10%':>11}{'perplexity':>12}{'worst 10%':>11}"]
    for arm in ARMS:
        top1, top3, ppl = (stats[k][arm] for k in ("top1", "top3", "perplexity"))
        lines.append(f"{arm:<14}{top1['weighted_mean']:>8.3f}{top3['weighted_mean']:>8.3f}{top3['std']:>7.3f}"
                     f"{top3['worst_decile']:>11.3f}{ppl['weighted_mean']:>12.2f}{ppl['worst_decile']:>11.2f}")
    return stats, "\n".join(lines)


def plot_curves(rows: list[dict[str, Any]], initial_accuracy: float, final_accuracy: float, path: Path,
                centralized: float | None = None, next_word: bool = False) -> None:
    """Validation accuracy after each round (a causal LM's: next-word top-3, beside its
    validation perplexity), the test-split accuracy of the template (round 0) and of the
    final global adapter apart from it, the centralized reference's as a line, and the
    clients' training loss."""
    rounds = [r["round"] for r in rows]
    fig, axes = plt.subplots(1, 3 if next_word else 2, figsize=(15 if next_word else 10, 4))
    ax_acc, ax_loss = axes[0], axes[-1]
    what = "next-word top-3" if next_word else "accuracy"
    ax_acc.plot(rounds, [r["val_accuracy"] for r in rows], marker="o", label="global adapter, validation splits")
    ax_acc.plot([0, rounds[-1] if rounds else 0], [initial_accuracy, final_accuracy], linestyle="none", marker="s",
                color="tab:green", label="test splits: template (0), final global")
    if centralized is not None:
        ax_acc.axhline(centralized, color="tab:gray", linestyle="--", label="centralized reference (test splits)")
    ax_acc.set(title=f"Global adapter {what}", xlabel="round", ylabel=what, ylim=(0, 1))
    ax_acc.legend(loc="lower right", fontsize=8)
    if next_word:
        axes[1].plot(rounds, [np.exp(min(r["val_loss"], 700.0)) if r["val_loss"] is not None else None for r in rows],
                     marker="o", color="tab:purple")
        axes[1].set(title="Global adapter validation perplexity", xlabel="round", ylabel="perplexity (tokens)")
    ax_loss.plot(rounds, [r["train_loss"] for r in rows], marker="o", color="tab:red")
    ax_loss.set(title="Mean local training loss", xlabel="round", ylabel="loss")
    for ax in axes:
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def plot_clients(clients: list[dict[str, Any]], path: Path, what: str = "test accuracy") -> None:
    """Each client's test accuracy (a causal LM's: next-word top-3) for the four adapters,
    with its test-split size."""
    names = [f"{printable(c['client'], NAME_CHARS)}\n(n={c['examples']})" for c in clients]
    x = np.arange(len(names))
    width = 0.2
    fig, ax = plt.subplots(figsize=(max(6, len(names) * 0.9), 4.5))
    for i, arm in enumerate(ARMS):
        ax.bar(x + (i - 1.5) * width, [c[arm] for c in clients], width, label=arm.replace("_", "-"))
    ax.set_xticks(x, names, rotation=45 if len(names) > 10 else 0, ha="right" if len(names) > 10 else "center",
                  fontsize=8, **PLAIN_TEXT)
    ax.set(ylabel=what, ylim=(0, 1))
    ax.set_title(f"{what[0].upper()}{what[1:]} per client (n: test rows)", pad=24)
    ax.legend(ncol=len(ARMS), fontsize=8, loc="lower center", bbox_to_anchor=(0.5, 1.0), frameon=False)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def write_json(path: Path, value: Any) -> None:
    path.write_text(json.dumps(value, indent=2, sort_keys=True) + "\n")
