"""Attacks by validly signed clients against plain averaging and each defence, side by side.

One `fedpeft simulate` per (attack, defence): the embedded default (bundled MiniLM,
synthetic topics) with `--clients` clients of which 20% attack every round
(simulations/attacks.py), and a clean run per defence. Personalization trains one epoch
(it is measured, not compared here) and the local-only arm is skipped, to keep the grid
affordable. Reported per run: the global adapter's accuracy over every client's test
split, the backdoor success rate of the published adapter (test rows not of label 0 with
the trigger added that it classifies as 0; for the clean and backdoor runs) and the
personalized accuracy. A finished run folder under `--work` is reused, and the JSON keeps
the cells of earlier invocations on the same --work, so a grid can grow a column at a time.

    .venv/bin/python bench/attack_defences.py [--work DIR] [--attacks ...] [--defences ...]

Writes attack_defences.json and attack_defences.png to --work.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from _runs import merged_rows, simulate_once

from fedpeft.core.config import load_config
from fedpeft.scoring import accuracy, pooled_test
from fedpeft.simulations.attacks import backdoor_rows

# defence -> federation overrides; Krum and the trimmed mean are told the attackers' share
DEFENCES = {
    "fedavg-unbounded": {"federation.strategy": "fedavg", "security.max_update_norm": 0.0},  # no defence at all
    "fedavg": {"federation.strategy": "fedavg"},  # with the default norm bound (50)
    "fedmedian": {"federation.strategy": "fedmedian"},
    "fedtrimmedavg": {"federation.strategy": "fedtrimmedavg", "federation.strategy_options": {"beta": 0.2}},
    "krum": {"federation.strategy": "krum", "federation.strategy_options": {"num_malicious_nodes": 2}},
    "multikrum": {"federation.strategy": "multikrum",
                  "federation.strategy_options": {"num_malicious_nodes": 2, "num_nodes_to_select": 6}},
    "fltrust": {"federation.strategy": "fltrust"},
}
ATTACKS = ["scaled", "sign-flip", "label-flip", "backdoor", "colluding"]


def run(work: Path, attack: str, defence: str, args: argparse.Namespace) -> dict:
    name = f"{attack}-{defence}"
    out = work / name
    config = load_config(None).with_overrides(**{
        **DEFENCES[defence], "data.clients": args.clients, "run.centralized_baseline": False, "run.out": str(out),
        "personalization.epochs": 1, "personalization.local_only_epochs": 0,
        "simulation.attackers": args.share if attack != "clean" else 0.0,
        "simulation.attacks": [attack] if attack != "clean" else [],
    })
    (work / f"{name}.toml").write_text(config.to_toml())
    summary = simulate_once(work, name, ["--config", f"{name}.toml"])
    row = {"attack": attack, "defence": defence, "global": summary["global_accuracy"],
           "personalized": summary["personalized_accuracy"], "rejected": sum(summary["rejected"].values()),
           "backdoor": summary.get("attack", {}).get("backdoor_success")}
    if attack == "clean":  # how often the trigger lands in label 0 with no attacker: the floor
        row["backdoor"] = accuracy(out / "adapter", work / "keys" / "operator.pub", config,
                                   backdoor_rows(pooled_test(config, range(args.clients))))
    return row


def plot(rows: list[dict], path: Path) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    attacks = list(dict.fromkeys(r["attack"] for r in rows))
    defences = [d for d in DEFENCES if any(r["defence"] == d for r in rows)]
    width = 0.8 / len(defences)
    fig, ax = plt.subplots(figsize=(9, 4))
    for i, defence in enumerate(defences):
        values = [next((r["global"] for r in rows if r["attack"] == a and r["defence"] == defence), 0) for a in attacks]
        ax.bar([x + i * width for x in range(len(attacks))], values, width, label=defence)
    ax.set_xticks([x + 0.4 - width / 2 for x in range(len(attacks))], attacks)
    ax.set_ylim(0.0, 1.0)
    ax.set_ylabel("global adapter test accuracy")
    ax.set_title("20% validly signed attackers, every round")
    ax.legend(fontsize=8, ncol=len(defences), loc="upper center", bbox_to_anchor=(0.5, -0.08))
    fig.savefig(path, dpi=120, bbox_inches="tight")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--work", type=Path, default=Path("runs/bench-attacks"))
    parser.add_argument("--attacks", nargs="+", default=ATTACKS, choices=ATTACKS)
    parser.add_argument("--defences", nargs="+", default=["fedavg", "fedmedian", "krum", "fltrust"], choices=DEFENCES)
    parser.add_argument("--clients", type=int, default=10)
    parser.add_argument("--share", type=float, default=0.2, help="share of clients that attack")
    args = parser.parse_args()
    work = args.work.resolve()
    work.mkdir(parents=True, exist_ok=True)
    rows = []
    for attack in ["clean", *args.attacks]:
        for defence in args.defences:
            rows.append(run(work, attack, defence, args))
            r = rows[-1]
            backdoor = "" if r["backdoor"] is None else f"  backdoor {r['backdoor']:.1%}"
            print(f"{attack:10s} {defence:13s} global {r['global']:.3f}  personalized {r['personalized']:.3f}  "
                  f"rejected {r['rejected']}{backdoor}", flush=True)
    rows = merged_rows(work / "attack_defences.json", rows, key=lambda r: (r["attack"], r["defence"]))
    cells = {(r["attack"], r["defence"]): r for r in rows}
    plot(rows, work / "attack_defences.png")
    clean = {r["defence"]: r["global"] for r in rows if r["attack"] == "clean"}
    best_clean = clean.get("fedavg", max(clean.values()))
    attacks = list(dict.fromkeys(r["attack"] for r in rows))
    defences = [d for d in DEFENCES if any(r["defence"] == d for r in rows)]
    print(f"| attack (20% of {args.clients}) | " + " | ".join(defences) + " |")
    print("|---" * (len(defences) + 1) + "|")
    for attack in attacks:
        line = []
        for defence in defences:
            r = cells.get((attack, defence))
            cell = "-" if r is None else (
                f"{r['global']:.3f}" + (f", backdoor {r['backdoor']:.0%}" if r["backdoor"] is not None else ""))
            met = (r is not None and attack != "clean" and best_clean - r["global"] <= 0.02
                   and (r["backdoor"] or 0) < 0.10)
            line.append(f"**{cell}**" if met else cell)
        print(f"| {attack} | " + " | ".join(line) + " |")
    print(f"(bold: within 2 points of clean fedavg {best_clean:.3f} and backdoor under 10%)")


if __name__ == "__main__":
    main()
