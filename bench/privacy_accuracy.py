"""Accuracy vs epsilon: central client-level DP on 1,000 synthetic clients, FFA-LoRA and LoRA.

One `fedpeft simulate` per (adapter method, noise multiplier), the non-private run
first: the bundled MiniLM, 1,000 synthetic clients, 100 sampled a round, 3 rounds,
deltas clipped to `--clip`. Epsilon is the run's own (opacus RDP accountant, delta
1e-5). Every published adapter is then scored on the same clients' test rows
(`--score-clients`, fedpeft/scoring.py), so runs compare on identical data; "val" is the
run's last-round validation accuracy over the clients it sampled. A finished run folder
under `--work` is reused, so an interrupted benchmark goes on where it stopped.

    .venv/bin/python bench/privacy_accuracy.py [--work DIR] [--noise 0.5 0.7 1.0 1.5] [--methods ffa-lora lora]

Writes privacy_accuracy.json and privacy_accuracy.png (accuracy vs epsilon) to --work; the
JSON keeps the rows of earlier invocations on the same --work (by run name), so central and
distributed grids run apart land on one plot.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from _runs import merged_rows, round_rows, simulate_once

from fedpeft.core.config import load_config
from fedpeft.scoring import accuracy, pooled_test


def simulate(work: Path, name: str, args: argparse.Namespace, method: str, noise: float | None) -> dict:
    """One run of the grid and what the table shows of it."""
    arguments = ["--clients", str(args.clients), "--clients-per-round", str(args.clients_per_round), "--rounds",
                 str(args.rounds), "--report-clients", str(args.report_clients), "--method", method,
                 "--no-centralized-baseline", "--out", str(work / name)]
    if noise is not None:
        arguments += ["--privacy", args.privacy, "--clip", str(args.clip), "--noise-multiplier", str(noise)]
    summary = simulate_once(work, name, arguments)
    rows = round_rows(work / name)
    val = [r["val_accuracy"] for r in rows if r.get("val_accuracy") is not None]
    return {"run": name, "method": method, "privacy": args.privacy if noise is not None else "off", "noise": noise,
            "epsilon": summary["privacy"].get("epsilon"),
            "val": val[-1] if val else None, "personalized": summary.get("personalized_accuracy")}


def plot(rows: list[dict], path: Path) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    for method in dict.fromkeys(r["method"] for r in rows):
        mine = [r for r in rows if r["method"] == method]
        color = None
        for privacy, style in (("central", {"marker": "o"}), ("distributed", {"marker": "s", "ls": ":", "ms": 10,
                                                                             "mfc": "none"})):
            private = sorted((r for r in mine if r["privacy"] == privacy), key=lambda r: r["epsilon"])
            if private:
                line, = ax.plot([r["epsilon"] for r in private], [r["test"] for r in private], color=color,
                                label=f"{method}, {privacy} DP", **style)
                color = line.get_color()
        for r in mine:
            if r["privacy"] == "off":
                ax.axhline(r["test"], ls="--", color=color, label=f"{method}, non-private")
    ax.set_xlabel("epsilon (delta 1e-5)")
    ax.set_ylabel("global adapter test accuracy")
    ax.set_title("Client-level DP, 1,000 clients")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--work", type=Path, default=Path("runs/bench-privacy"))
    parser.add_argument("--methods", nargs="+", default=["ffa-lora", "lora"])
    parser.add_argument("--noise", type=float, nargs="+", default=[0.5, 0.7, 1.0, 1.5])
    parser.add_argument("--clip", type=float, default=5.0)
    parser.add_argument("--privacy", choices=["central", "distributed"], default="central",
                        help="where the noise is added (run folders: METHOD-zZ, METHOD-distributed-zZ)")
    parser.add_argument("--clients", type=int, default=1000)
    parser.add_argument("--clients-per-round", type=int, default=100)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--report-clients", type=int, default=20)
    parser.add_argument("--score-clients", type=int, default=200, help="score every adapter on these clients' tests")
    args = parser.parse_args()
    work = args.work.resolve()
    work.mkdir(parents=True, exist_ok=True)
    config = load_config(None).with_overrides(**{"data.clients": args.clients})
    test = pooled_test(config, range(args.score_clients))
    rows = []
    for method in args.methods:
        for noise in [None, *args.noise]:
            mode = "" if args.privacy == "central" else f"{args.privacy}-"
            name = f"{method}-{'plain' if noise is None else f'{mode}z{noise:g}'}"
            row = simulate(work, name, args, method, noise)
            row["test"] = accuracy(work / name / "adapter", work / "keys" / "operator.pub",
                                   config.with_overrides(**{"adapter.method": method}), test)
            rows.append(row)
            eps = "inf" if row["epsilon"] is None else f"{row['epsilon']:.2f}"
            print(f"{method:9s} {row['privacy']:11s} noise {str(noise):5s} epsilon {eps:6s} test {row['test']:.3f}  val "
                  f"{row['val'] if row['val'] is not None else float('nan'):.3f}  personalized "
                  f"{row['personalized'] or float('nan'):.3f}", flush=True)
    rows = merged_rows(work / "privacy_accuracy.json", rows, key=lambda r: r["run"])
    plot(rows, work / "privacy_accuracy.png")
    print(f"| method | DP | noise multiplier | epsilon (delta 1e-5) | test acc, {len(test)} rows of "
          f"{args.score_clients} clients | last-round val acc | personalized |")
    print("|---|---|---|---|---|---|---|")
    for r in rows:
        eps = "inf (non-private)" if r["noise"] is None else f"{r['epsilon']:.2f}"
        print(f"| {r['method']} | {r['privacy']} | {r['noise'] if r['noise'] is not None else '-'} | {eps} | {r['test']:.3f} | "
              f"{r['val']:.3f} | {r['personalized']:.3f} |")


if __name__ == "__main__":
    main()
