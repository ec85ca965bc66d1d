"""How fast the global adapter learns: each change to the defaults measured on two datasets.

Every variant is one `fedpeft simulate` on the bundled synthetic default
(simulations/default.toml, 8 clients) and one on real text with natural users
(simulations/debian-packages.toml: 20 Debian maintainers, their packages' descriptions
in 8 archive sections; bench/datasets/debian_packages.py rebuilds the CSV). A variant
is the default config with a few keys changed, so the table reads as "this change, from
today's defaults". Reported per run: validation accuracy after round 1 and round 5, the
global, personalized and local-only test accuracy (example-weighted over clients), the
centralized reference (the same adapter and start, all rows pooled, the same epochs),
the gap, wall time, and bytes up per client (a round, and round zero's class means).
A finished run under `--work` is reused, so an interrupted benchmark goes on.

    .venv/bin/python bench/global_adapter.py [--work DIR] [--variants NAME ...] [--datasets synthetic debian] [--seeds 0 1 2]

Writes global_adapter.json (rows of earlier invocations kept, by run name) to --work.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from _runs import merged_rows, round_rows, simulate_once

from fedpeft.core.config import load_config

ROOT = Path(__file__).resolve().parent.parent
DATASETS = {"synthetic": ROOT / "simulations" / "default.toml", "debian": ROOT / "simulations" / "debian-packages.toml"}
# name -> the config keys it sets; every variant names each key the grid varies, so a row
# means the same whatever the shipped defaults are.
BASE = {"federation.head_init": "class-means", "federation.strategy": "fedavg", "federation.strategy_options": {},
        "personalization.best_epoch": False, "train.epochs": 1, "train.learning_rate": 1e-2, "train.round_decay": 1.0,
        "adapter.method": "ffa-lora", "adapter.rank": 8, "adapter.alpha": 16, "simulation.device_clients": 0.0,
        "train.rank": 0, "simulation.rank_mix": {}}
VARIANTS: dict[str, dict[str, object]] = {
    "template-head": {**BASE, "federation.head_init": "none"},  # the defaults before round zero
    "class-means-head": BASE,
    "class-means+best-epoch": {**BASE, "personalization.best_epoch": True},
    "class-means+fedavgm": {**BASE, "federation.strategy": "fedavgm",
                            "federation.strategy_options": {"server_momentum": 0.9}},
    "class-means+fedadam": {**BASE, "federation.strategy": "fedadam", "federation.strategy_options": {"eta": 0.01}},
    "class-means+2-epochs": {**BASE, "train.epochs": 2},
    "class-means+decay-0.7": {**BASE, "train.round_decay": 0.7},
    "class-means+lr-2e-2": {**BASE, "train.learning_rate": 2e-2},
    "class-means+rank-16": {**BASE, "adapter.rank": 16, "adapter.alpha": 32},
    # every client a device: ONNX Runtime and numpy train, score and personalize, no PyTorch
    "class-means+devices": {**BASE, "simulation.device_clients": 1.0},
    # devices of different sizes (core/adapters/rank.py): every client at LoRA rank 2 of the rank-8
    # template, and half at 2, half at 8, each column averaged over the clients that trained it
    "class-means+all-rank-2": {**BASE, "train.rank": 2},
    "class-means+ranks-2-and-8": {**BASE, "simulation.rank_mix": {"2": 0.5, "8": 0.5}},
}


def config_file(work: Path, name: str, dataset: str, changes: dict[str, object]) -> Path:
    """The variant's TOML: the dataset's config with `changes`, its data and output absolute."""
    config = load_config(DATASETS[dataset])
    source = config.data.source if config.data.source == "synthetic" else str(ROOT / config.data.source)
    config = config.with_overrides(**changes, **{"data.source": source, "run.out": str(work / name)})
    path = work / f"{name}.toml"
    path.write_text(config.to_toml())
    return path


def measure(work: Path, variant: str, dataset: str, seed: int) -> dict:
    name = f"{dataset}-{variant}" + (f"-seed{seed}" if seed else "")
    changes = {**VARIANTS[variant], "run.seed": seed}
    summary = simulate_once(work, name, ["--config", str(config_file(work, name, dataset, changes))])
    rows = round_rows(work / name)
    val = [r.get("val_accuracy") for r in rows]
    head = summary.get("head_init") or {}
    changed = {k: v for k, v in VARIANTS[variant].items() if BASE.get(k) != v}
    return {"run": name, "variant": variant, "dataset": dataset, "seed": seed, "changes": changed,
            "round1_val": val[0], "round5_val": val[-1], "global": summary["global_accuracy"],
            "personalized": summary["personalized_accuracy"], "local_only": summary["local_only_accuracy"],
            "centralized": summary["centralized_accuracy"],
            "gap": summary["centralized_accuracy"] - summary["global_accuracy"],
            "seconds": int((work / f"{name}.seconds").read_text()),
            "bytes_up_round": summary["bytes_up_per_client_round"], "bytes_up_round_zero": head.get("bytes_up_per_client", 0),
            "bytes_up_by_rank": {rank: round(sum(r["bytes_up_by_rank"][rank] for r in rows) / len(rows))
                                 for rank in rows[-1].get("bytes_up_by_rank", {})}}


def table(rows: list[dict]) -> str:
    lines = ["| dataset | variant | seed | val r1 | val r5 | global | personalized | local-only | centralized | gap | time | up/round | round 0 |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['dataset']} | {r['variant']} | {r.get('seed', 0)} | {r['round1_val']:.3f} | {r['round5_val']:.3f} | "
                     f"{r['global']:.3f} | {r['personalized']:.3f} | {r['local_only']:.3f} | {r['centralized']:.3f} | "
                     f"{r['gap'] * 100:+.1f} | {r['seconds'] / 60:.1f} min | {r['bytes_up_round'] / 1e6:.2f} MB | "
                     f"{r['bytes_up_round_zero'] / 1e3:.1f} KB |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--work", type=Path, default=Path("runs/bench-global-adapter"))
    parser.add_argument("--variants", nargs="+", choices=list(VARIANTS), default=list(VARIANTS))
    parser.add_argument("--datasets", nargs="+", choices=list(DATASETS), default=list(DATASETS))
    parser.add_argument("--seeds", nargs="+", type=int, default=[0], help="run.seed of each run (a seed's own data draw, template and training)")
    args = parser.parse_args()
    args.work.mkdir(parents=True, exist_ok=True)
    rows = []
    for seed in args.seeds:
        for variant in args.variants:
            for dataset in args.datasets:
                rows.append(measure(args.work.resolve(), variant, dataset, seed))
    merged = merged_rows(args.work / "global_adapter.json", rows, key=lambda r: r["run"])
    print(table(sorted(merged, key=lambda r: (r["dataset"], r.get("seed", 0), list(VARIANTS).index(r["variant"])))))


if __name__ == "__main__":
    main()
