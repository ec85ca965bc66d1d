"""What `simulate` and `deploy` share: the run's TOML config, overridden from the command
line, and the one line that sums a finished run up."""

from __future__ import annotations

import argparse

from fedpeft.core.choices import (
    DELTA_ENCODINGS,
    DEVICES,
    HEAD_INITS,
    METHODS,
    PARTITIONERS,
    PRIVACY_MODES,
    QUANTIZATION_MODES,
    STRATEGIES,
    TASKS,
)
from fedpeft.core.config import RANGES


def run_arguments(parser: argparse.ArgumentParser) -> None:
    """Overrides of the run's TOML config that `simulate` and `deploy` share."""
    parser.add_argument("--config", help="TOML file (default: the bundled simulations/default.toml)")
    parser.add_argument("--data", help="CSV or JSONL file with text, label and optional client_id columns")
    parser.add_argument("--model", help="transformers model folder, a .gguf file, or smollm2 (the bundled SmolLM2-135M; "
                        "default: the bundled all-MiniLM-L6-v2)")
    parser.add_argument("--task", choices=TASKS, help="seq-cls (text classification) or causal-lm (next-word prediction)")
    parser.add_argument("--partitioner", choices=PARTITIONERS, help="how rows become clients (natural: by client_id)")
    parser.add_argument("--rounds", type=RANGES["federation.rounds"], help="federated rounds")
    parser.add_argument("--fraction", type=RANGES["federation.fraction"], help="fraction of clients sampled per round")
    parser.add_argument("--clients-per-round", type=RANGES["federation.clients_per_round"],
                        help="clients sampled per round (overrides --fraction)")
    parser.add_argument("--report-clients", type=RANGES["personalization.clients"],
                        help="clients sampled for the end-of-run report (0: all)")
    parser.add_argument("--round-timeout", type=RANGES["federation.round_timeout"],
                        help="seconds a round waits for replies")
    parser.add_argument("--local-epochs", type=RANGES["train.epochs"], help="epochs each client trains per round")
    parser.add_argument("--learning-rate", type=RANGES["train.learning_rate"], help="clients' AdamW learning rate")
    parser.add_argument("--strategy", choices=list(STRATEGIES), help="how the server combines verified deltas")
    parser.add_argument("--head-init", choices=HEAD_INITS, help="how a classifier's head starts (class-means: a round "
                        "zero sets it from the clients' class feature means; none: the template's random head)")
    parser.add_argument("--device", choices=DEVICES, help="where PyTorch clients train (auto: a GPU if PyTorch sees one)")
    parser.add_argument("--delta-encoding", choices=DELTA_ENCODINGS, help="how clients' deltas travel up")
    parser.add_argument("--method", choices=METHODS, help="adapter method (core/adapters/methods/)")
    parser.add_argument("--quantization", choices=QUANTIZATION_MODES, help="how the frozen base is quantized")
    parser.add_argument("--seed", type=RANGES["run.seed"], help="the run's one seed (data, template, training)")
    parser.add_argument("--out", help="output folder")
    parser.add_argument("--max-update-norm", type=RANGES["security.max_update_norm"],
                        help="reject deltas with a larger L2 norm (0: no bound)")
    parser.add_argument("--privacy", choices=PRIVACY_MODES, help="client-level differential privacy (central: the "
                        "server clips each delta and adds Gaussian noise; distributed: each client does, before signing)")
    parser.add_argument("--clip", type=RANGES["privacy.clip"], help="L2 norm each delta is clipped to (privacy on)")
    parser.add_argument("--noise-multiplier", type=RANGES["privacy.noise_multiplier"],
                        help="noise std on the sum of deltas, in units of --clip")
    parser.add_argument("--target-epsilon", type=RANGES["privacy.target_epsilon"],
                        help="refuse a run that would spend more epsilon (0: none)")


def run_config(args: argparse.Namespace):
    """The TOML config (bundled default without --config) with the command line's overrides."""
    from fedpeft.core.config import load_config

    return load_config(args.config).with_overrides(**{
        "data.source": args.data,
        "data.clients": getattr(args, "clients", None),
        "data.partitioner": args.partitioner,
        "federation.rounds": args.rounds,
        "federation.fraction": args.fraction,
        "federation.clients_per_round": args.clients_per_round,
        "personalization.clients": args.report_clients,
        "federation.strategy": args.strategy,
        "federation.head_init": args.head_init,
        "federation.round_timeout": args.round_timeout,
        "federation.delta_encoding": args.delta_encoding,
        "train.epochs": args.local_epochs,
        "train.learning_rate": args.learning_rate,
        "train.device": args.device,
        "adapter.method": args.method,
        "model.quantization": args.quantization,
        "model.path": args.model,
        "model.task": args.task,
        "run.seed": args.seed,
        "run.centralized_baseline": getattr(args, "centralized_baseline", None),
        "run.out": args.out,
        "simulation.misbehaving": getattr(args, "misbehaving", None),
        "simulation.device_clients": getattr(args, "device_clients", None),
        "simulation.attackers": getattr(args, "attackers", None),
        "simulation.attacks": getattr(args, "attack", None),
        "simulation.attack_from_round": getattr(args, "attack_from_round", None),
        "security.max_update_norm": args.max_update_norm,
        "privacy.mode": args.privacy,
        "privacy.clip": args.clip,
        "privacy.noise_multiplier": args.noise_multiplier,
        "privacy.target_epsilon": args.target_epsilon,
    })


def print_summary(summary: dict, out: str) -> None:
    """The run's accuracies in one line, and the rejected deltas by reason if any were."""
    if "global_perplexity" in summary:  # a causal LM
        arms = ("initial", "global", "personalized", "local_only", "centralized")
        print("[fedpeft] done: next-word top-3 / perplexity " + ", ".join(
            f"{arm.replace('_', '-')} {summary[f'{arm}_top3']:.3f} / {summary[f'{arm}_perplexity']:.2f}"
            for arm in arms if summary.get(f"{arm}_top3") is not None) + f"; results in {out}")
    else:
        print(
            f"[fedpeft] done: accuracy initial {summary['initial_accuracy']:.3f}, global {summary['global_accuracy']:.3f}, "
            f"personalized {summary['personalized_accuracy']:.3f}, local-only {summary['local_only_accuracy']:.3f}"
            + (f", centralized {summary['centralized_accuracy']:.3f}" if summary.get("centralized_accuracy") is not None else "")
            + f"; results in {out}"
        )
    if summary["rejected"]:
        print(f"[fedpeft] rejected deltas by reason: {summary['rejected']}")
