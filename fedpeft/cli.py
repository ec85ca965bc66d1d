"""The `fedpeft` command line."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from fedpeft.core.errors import ConfigError, FedPeftError


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
        "simulation.misbehaving": args.misbehaving,
        "security.max_update_norm": args.max_update_norm,
    })
    summary = simulate(config)
    print(
        f"[fedpeft] done: accuracy initial {summary['initial_accuracy']:.3f}, global {summary['global_accuracy']:.3f}, "
        f"personalized {summary['personalized_accuracy']:.3f}, local-only {summary['local_only_accuracy']:.3f}; "
        f"results in {config.run.out}"
    )
    if summary["rejected"]:
        print(f"[fedpeft] rejected deltas by reason: {summary['rejected']}")


def _keys_new(args: argparse.Namespace) -> None:
    from fedpeft.core.keys import new_key_pair, passphrase_from_env, public_key_path

    passphrase = passphrase_from_env(args.passphrase_env) if args.passphrase_env else None
    if args.passphrase_env and passphrase is None:
        raise ConfigError(f"--passphrase-env {args.passphrase_env}: that variable is not set")
    kid = new_key_pair(Path(args.path), passphrase)
    print(f"{kid}  private {args.path} (mode 600{', encrypted' if passphrase else ''}), "
          f"public {public_key_path(Path(args.path))}")


def _keys_enroll(args: argparse.Namespace) -> None:
    from fedpeft.core.keys import Keyring, load_public_key

    keyring = Keyring.load(Path(args.keyring))
    entry = keyring.enroll(args.name, load_public_key(Path(args.public_key)))
    keyring.save()
    print(f"enrolled {entry.name} ({entry.key_id}) in {args.keyring}: {len(keyring.keys)} key(s)")


def _keys_list(args: argparse.Namespace) -> None:
    from fedpeft.core.keys import Keyring

    for entry in sorted(Keyring.load(Path(args.keyring)).keys.values(), key=lambda e: e.name):
        print(f"{entry.key_id}  {entry.name}")


def _verify(args: argparse.Namespace) -> None:
    from fedpeft.core.keys import load_public_key
    from fedpeft.core.release import verify_release

    release = verify_release(Path(args.folder), load_public_key(Path(args.key)), base_id=args.base_id)
    m = release.manifest
    print(f"OK: {args.folder} is release v{release.version} ({release.release_id[:12]}) of base "
          f"{m['base_id'][:12]}, template {m['template_id'][:12]}; {len(m['tensors'])} tensors; "
          f"created {m['created']}, expires {m['expires']}")


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
    sim.add_argument("--misbehaving", type=float, help="share of clients that send bad deltas (e.g. 0.2)")
    sim.add_argument("--max-update-norm", type=float, help="reject deltas with a larger L2 norm (0: no bound)")
    sim.set_defaults(run=_simulate)

    keys = commands.add_parser("keys", help="Ed25519 keys: create them, enroll client keys").add_subparsers(
        dest="keys_command", required=True)
    new = keys.add_parser("new", help="write NAME.key (mode 600) and NAME.pub")
    new.add_argument("path", help="private key file to create, e.g. keys/client-0.key")
    new.add_argument("--passphrase-env", metavar="VAR", help="encrypt the key with the passphrase in $VAR")
    new.set_defaults(run=_keys_new)
    enroll = keys.add_parser("enroll", help="add a client public key to the server's enrollment list")
    enroll.add_argument("public_key", help="a .pub file written by `fedpeft keys new`")
    enroll.add_argument("--name", required=True, help="the client's name in logs and reports")
    enroll.add_argument("--keyring", required=True, help="enrollment list (JSON; created if absent)")
    enroll.set_defaults(run=_keys_enroll)
    listing = keys.add_parser("list", help="show the enrolled keys")
    listing.add_argument("--keyring", required=True)
    listing.set_defaults(run=_keys_list)

    verify = commands.add_parser("verify", help="check a published adapter folder's signed release")
    verify.add_argument("folder", help="adapter folder with release.json and release.sig")
    verify.add_argument("--key", required=True, help="the operator's public key (.pub)")
    verify.add_argument("--base-id", help="also require the release to be made for this base")
    verify.set_defaults(run=_verify)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        args.run(args)
    except FedPeftError as exc:
        print(f"fedpeft: error: {exc}", file=sys.stderr)
        return 1 if args.command == "verify" else 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
