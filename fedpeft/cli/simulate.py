"""`fedpeft simulate`: a federation on Flower's simulation engine."""

from __future__ import annotations

import argparse

from fedpeft.core.choices import ATTACKS
from fedpeft.core.config import RANGES

from fedpeft.track import TRACKERS

from .common import command
from .runs import print_summary, run_arguments, run_config


def add_commands(commands) -> None:
    sim = command(commands, "simulate", "run a federation on Flower's simulation engine",
                  "fedpeft simulate --clients 20 --rounds 10 --method lora --out runs/lora")
    run_arguments(sim)
    sim.add_argument("--clients", type=RANGES["data.clients"],
                     help="simulated clients (data partitions; natural: from the data)")
    sim.add_argument("--verbose", action="store_true", help="show Flower's, Ray's and the libraries' logs here too")
    sim.add_argument("--misbehaving", type=RANGES["simulation.misbehaving"],
                     help="share of clients that send bad deltas (e.g. 0.2)")
    sim.add_argument("--attackers", type=RANGES["simulation.attackers"],
                     help="share of clients that attack with validly signed deltas")
    sim.add_argument("--attack", nargs="+", choices=ATTACKS, help="the attackers' kinds (default sign-flip)")
    sim.add_argument("--attack-from-round", type=RANGES["simulation.attack_from_round"],
                     help="the round the attacks begin (default 1)")
    sim.add_argument("--centralized-baseline", action=argparse.BooleanOptionalAction,
                     help="also train the adapter on all clients' rows pooled and report it (default: on)")
    sim.add_argument("--device-clients", type=RANGES["simulation.device_clients"],
                     help="share of clients that train as devices: ONNX Runtime training graph, numpy optimizer")
    sim.add_argument("--restart", action="store_true",
                     help="start afresh even if --out holds a checkpoint (default: resume after its last completed round)")
    sim.add_argument("--track", choices=TRACKERS, help="also write the run for TensorBoard or MLflow (local files; "
                                                      "pip install -e '.[track]')")
    sim.set_defaults(run=_simulate)
    tracked = command(commands, "track", "write a finished run's record for TensorBoard or MLflow (local files)",
                      "fedpeft track runs/default --to mlflow")
    tracked.add_argument("run_folder", help="a finished run's folder (summary.json, metrics.jsonl, plots, adapter/)")
    tracked.add_argument("--to", choices=TRACKERS, required=True, help="tensorboard or mlflow")
    tracked.set_defaults(run=_track)


def _simulate(args: argparse.Namespace) -> None:
    from fedpeft.simulate import simulate

    config = run_config(args)
    print_summary(simulate(config, args.verbose, resume=not args.restart), config.run.out)
    if args.track:
        _write_track(config.run.out, args.track)


def _track(args: argparse.Namespace) -> None:
    _write_track(args.run_folder, args.to)


def _write_track(run_folder: str, kind: str) -> None:
    from pathlib import Path

    from fedpeft.track import track

    print(f"[fedpeft] {kind}: {track(Path(run_folder), kind)}")
