"""The `fedpeft` command line."""

from __future__ import annotations

import argparse
import sys

from fedpeft.core.errors import FedPeftError


def _simulate(args: argparse.Namespace) -> None:
    from fedpeft.config import load_config
    from fedpeft.simulate import simulate

    config = load_config(args.config).with_overrides(**{
        "data.source": args.data,
        "data.clients": args.clients,
        "data.partitioner": args.partitioner,
        "federation.rounds": args.rounds,
        "federation.fraction": args.fraction,
        "federation.strategy": args.strategy,
        "train.local_epochs": args.local_epochs,
        "train.learning_rate": args.learning_rate,
        "adapter.method": args.method,
        "model.quantization": args.quantization,
        "model.path": args.model,
        "run.seed": args.seed,
        "run.out": args.out,
    })
    summary = simulate(config)
    print(
        f"[fedpeft] done: accuracy initial {summary['initial_accuracy']:.3f}, global {summary['global_accuracy']:.3f}, "
        f"personalized {summary['personalized_accuracy']:.3f}, local-only {summary['local_only_accuracy']:.3f}; "
        f"results in {config.run.out}"
    )


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="fedpeft", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)

    sim = commands.add_parser("simulate", help="run a federation on Flower's simulation engine")
    sim.add_argument("--config", help="TOML file (default: the bundled simulations/default.toml)")
    sim.add_argument("--data", help="CSV or JSONL file with text, label and optional client_id columns")
    sim.add_argument("--model", help="transformers model folder (default: the bundled all-MiniLM-L6-v2)")
    sim.add_argument("--clients", type=int)
    sim.add_argument("--partitioner", choices=["natural", "iid", "dirichlet"])
    sim.add_argument("--rounds", type=int)
    sim.add_argument("--fraction", type=float, help="fraction of clients sampled per round")
    sim.add_argument("--local-epochs", type=int)
    sim.add_argument("--learning-rate", type=float)
    sim.add_argument("--strategy")
    sim.add_argument("--method", help="adapter method: ffa-lora, lora or ia3")
    sim.add_argument("--quantization", help="base quantization: int8, int4 or none")
    sim.add_argument("--seed", type=int)
    sim.add_argument("--out", help="output folder")
    sim.set_defaults(run=_simulate)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        args.run(args)
    except FedPeftError as exc:
        print(f"fedpeft: error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
