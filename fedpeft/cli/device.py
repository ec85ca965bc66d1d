"""`fedpeft device`: one device's adapter slot: pull releases from the registry, roll back,
personalize on the device's own rows (ONNX Runtime, no torch); and `device join`: the
device as a node of a live federation."""

from __future__ import annotations

import argparse
from pathlib import Path

from fedpeft.core.choices import OPTIMIZERS
from fedpeft.core.config import EPOCHS, RANGES, SEED, Range
from fedpeft.core.errors import ConfigError

from .common import (
    PORT,
    THREADS,
    address,
    channel,
    command,
    device_slot,
    group,
    registry_arguments,
    registry_client,
    slot_arguments,
)


def add_commands(commands) -> None:
    device = group(commands, "device", "a device's adapter slot: pull from the registry, personalize, roll back", "device_command")
    for name, run, text in (("pull", _device_pull, "install the channel's release if it is newer and checks out"),
                            ("rollback", _device_rollback, "go back to the previous adapter")):
        sub = command(device, name, text, f"fedpeft device {name} --state device --key keys/operator.pub --base-id BASE"
                                          + (" --ca-cert tls/ca.crt" if name == "pull" else ""))
        slot_arguments(sub)
        sub.add_argument("--channel", type=channel, default="stable", help="channel to follow (default stable)")
        if name == "pull":
            registry_arguments(sub)
            sub.add_argument("--trusted-root", help="the TUF root.json this device is provisioned with (`fedpeft keys "
                                                    "tuf-init` writes it); kept in the slot from the first pull on")
        sub.set_defaults(run=run)
    report = command(device, "report", "measure the installed release on this device's rows and send a signed "
                     "health report to the registry",
                     "fedpeft device report --state device --key keys/operator.pub --base-id BASE --export runs/export "
                     "--data held-out.csv --device-key node/device.key --ca-cert tls/ca.crt")
    slot_arguments(report)
    report.add_argument("--channel", type=channel, default="stable", help="the channel this device follows")
    registry_arguments(report)
    report.add_argument("--export", required=True, help="export folder whose base graph the release's .onnx_adapter "
                                                        "applies to (fedpeft export)")
    report.add_argument("--data", required=True, help="held-out CSV or JSONL rows of this device (text, label)")
    report.add_argument("--device-key", required=True, help="this device's Ed25519 key, enrolled in the registry's "
                                                            "--devices keyring")
    report.add_argument("--recent", help="a text file of recent inputs, one per line: the report's drift")
    report.set_defaults(run=_device_report)
    train = command(device, "train", "personalize the installed adapter on this device's rows (ONNX Runtime, no torch)",
                    "fedpeft device train --state device --export runs/export --data my-rows.csv "
                    "--key keys/operator.pub --base-id BASE")
    slot_arguments(train)
    train.add_argument("--export", required=True, help="export folder with the training graph (fedpeft export)")
    train.add_argument("--data", required=True, help="CSV or JSONL with text and label columns (a language model: "
                                                     "a .txt file, one message per line, or text only); never leaves "
                                                     "the device")
    defaults = _train_defaults()
    train.add_argument("--epochs", type=EPOCHS, default=2,
                       help="passes over the rows (default 2, as [personalization])")
    train.add_argument("--batch-size", type=RANGES["train.batch_size"], default=defaults.batch_size,
                       help=f"default {defaults.batch_size}")
    train.add_argument("--learning-rate", type=RANGES["train.learning_rate"], default=defaults.learning_rate,
                       help=f"default {defaults.learning_rate}")
    train.add_argument("--max-length", type=RANGES["train.max_length"], default=defaults.max_length,
                       help="tokens per row (truncation)")
    train.add_argument("--optimizer", choices=OPTIMIZERS, default=defaults.optimizer, help="numpy AdamW or SGD")
    train.add_argument("--seed", type=SEED, default=0, help="batch order")
    train.add_argument("--threads", type=THREADS, default=0, help="ONNX Runtime threads (0: its choice)")
    train.add_argument("--channel", type=channel, default="stable", help=argparse.SUPPRESS)
    train.set_defaults(run=_device_train)
    join = command(device, "join", "join a federation as a device node: train, score and personalize with ONNX "
                                   "Runtime and numpy, no torch (runs Flower's flower-supernode)",
                   "fedpeft device join --superlink SERVER:9092 --ca-cert tls/ca.crt --auth-key node/auth.key "
                   "--key node/client.key --operator-key keys/operator.pub --data my-rows.csv --state device")
    join.add_argument("--superlink", type=address, required=True, help="HOST:PORT of the SuperLink")
    join.add_argument("--ca-cert", required=True, help="CA certificate that signed the SuperLink's")
    join.add_argument("--auth-key", required=True, help="SuperNode authentication key, registered with the SuperLink "
                                                        "(fedpeft deploy node-key)")
    join.add_argument("--key", required=True, help="Ed25519 key that signs this device's deltas (enrolled in the "
                                                   "run's keyring)")
    join.add_argument("--operator-key", required=True, help="operator public key the training export must be signed with")
    join.add_argument("--data", required=True, help="CSV or JSONL with text and label columns, an optional split "
                                                    "column (train, val, test); never leaves the device")
    join.add_argument("--state", required=True, help="folder that keeps the verified training export and template")
    join.add_argument("--name", help="name of these rows (seeds their train/val/test cut; default the file's stem)")
    join.add_argument("--seed-offset", type=Range(int, 0, 1_000_000), default=0,
                      help="this node's place in the federation's seeds (as a partition id; default 0)")
    join.add_argument("--port", type=PORT, default=9094, help="the SuperNode's local port for its ClientApp")
    join.set_defaults(run=_device_join)


def _train_defaults():
    """The trainer's own defaults, shown in --help (core/training/settings.py is torch-free)."""
    from fedpeft.core.training.settings import TrainSettings

    return TrainSettings()


def _device_pull(args: argparse.Namespace) -> None:
    from fedpeft.core.trust.files import UnreadableFile, read_small

    device = device_slot(args)
    if args.trusted_root:
        try:
            device.trusted_root = read_small(Path(args.trusted_root))
        except UnreadableFile as exc:
            raise ConfigError(f"--trusted-root {args.trusted_root}: {exc}") from exc
    with registry_client(args) as client:
        result = device.pull(client)
    if result.status == "not-modified":
        print(f"up to date: v{result.version}")
    else:
        print(f"installed v{result.version} ({result.release_id[:12]}) in {device.current}; "
              f"{result.bytes_received} bytes received" + (f", {result.resumed_bytes} already on the device" if result.resumed_bytes else ""))


def _device_rollback(args: argparse.Namespace) -> None:
    entry = device_slot(args).rollback()
    print(f"now using v{entry['version']} ({entry['release_id'][:12]}); newer releases than the abandoned one still install")


def _device_train(args: argparse.Namespace) -> None:
    from fedpeft.core.training.data import labelled_split, read_messages, read_rows
    from fedpeft.core.training.settings import TrainSettings
    from fedpeft.device.personal import PERSONAL_DIR, personalize
    from fedpeft.device.trainer import DeviceTrainer

    device = device_slot(args)
    trainer = DeviceTrainer(Path(args.export), device.operator_key, threads=args.threads)
    rows = read_messages(args.data) if trainer.causal_lm else labelled_split(read_rows(args.data), trainer.labels)
    settings = TrainSettings(epochs=args.epochs, batch_size=args.batch_size, learning_rate=args.learning_rate,
                             max_length=args.max_length, seed=args.seed, optimizer=args.optimizer)
    record = personalize(device, trainer, rows, settings, progress=lambda line: print(line, flush=True))
    print(f"personal adapter from v{record.version}: mean training loss {record.loss:.4f}; kept in "
          f"{device.folder / PERSONAL_DIR} (used by fedpeft predict --state; nothing was sent)")



def _device_join(args: argparse.Namespace) -> None:
    """Exec Flower's flower-supernode with this device's node config (`kind = "device"`): the
    process becomes the node, so a supervisor's signals reach Flower directly."""
    import os

    from fedpeft.deploy.supernode import BIN, SuperNodeSettings

    for flag, path in (("--ca-cert", args.ca_cert), ("--auth-key", args.auth_key), ("--key", args.key),
                       ("--operator-key", args.operator_key), ("--data", args.data)):
        if not Path(path).is_file():
            raise ConfigError(f"{flag} {path}: no such file")
    node_config = {"kind": "device", "cache-dir": str(Path(args.state).resolve() / "cache"),
                   "key-file": str(Path(args.key).resolve()), "operator-key": str(Path(args.operator_key).resolve()),
                   "data-file": str(Path(args.data).resolve()), "data-name": args.name or Path(args.data).stem,
                   "partition-id": args.seed_offset}
    settings = SuperNodeSettings(args.superlink, Path(args.ca_cert).resolve(), Path(args.auth_key).resolve(),
                                 args.port, node_config)
    argv = settings.command()
    print(f"[fedpeft] device node: {argv[0]} --superlink {args.superlink} (state {args.state})", flush=True)
    env = {**os.environ, "PATH": f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}"}  # its flwr-clientapp: this install's
    os.execve(argv[0], argv, env)


def _device_report(args: argparse.Namespace) -> None:
    from fedpeft.core.trust.device_report import sign_report, validation_delta
    from fedpeft.core.trust.files import read_small
    from fedpeft.core.trust.keys import load_private_key
    from fedpeft.core.training.data import labelled_split, read_rows
    from fedpeft.device.health import measure
    from fedpeft.device.predict import open_export

    device = device_slot(args)
    release = device.current_release()
    if release is None:
        raise ConfigError(f"{args.state} has no installed release to report on")
    labels = list(open_export(Path(args.export), device.operator_key)["labels"])
    rows = labelled_split(read_rows(args.data), labels)
    try:
        recent = read_small(Path(args.recent)).decode().splitlines() if args.recent else None
    except UnicodeDecodeError as exc:
        raise ConfigError(f"--recent {args.recent}: not UTF-8 text ({exc.reason} at byte {exc.start})") from None
    measured = measure(Path(args.export), device.operator_key, device.current, device.previous_release(), rows,
                       [line for line in recent or [] if line.strip()] or None)
    signed = sign_report(load_private_key(Path(args.device_key)), base_id=args.base_id, release_id=release.release_id,
                         channel=args.channel, load_ok=measured.load_ok, latency_ms=measured.latency_ms,
                         rows=measured.rows, correct=measured.correct, previous_correct=measured.previous_correct,
                         drift=measured.drift)
    with registry_client(args) as client:
        decision = client.report(*signed)
    delta = validation_delta(measured.rows, measured.correct, measured.previous_correct)
    compared = f"validation {delta:+.2f} points on {measured.rows} rows" if measured.rows else "no previous release"
    print(f"reported on v{release.version}: loaded {'yes' if measured.load_ok else 'NO'}, latency p50/p95 "
          f"{measured.latency_ms[0]:.1f}/{measured.latency_ms[1]:.1f} ms, {compared}, drift "
          f"{'-' if measured.drift is None else f'{measured.drift:.2f}'}"
          + (f"; the registry decided: {decision}" if decision else ""))
