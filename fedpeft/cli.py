"""fedpeft: federated adapters over a quantized frozen base, signed deltas, signed releases, ONNX export."""

from __future__ import annotations

import argparse
import ipaddress
import re
import sys
from importlib.metadata import version
from pathlib import Path
from typing import NoReturn

from fedpeft.core.choices import (
    ATTACKS,
    DELTA_ENCODINGS,
    DEVICES,
    METHODS,
    OPTIMIZERS,
    PARTITIONERS,
    PRIVACY_MODES,
    QUANTIZATION_MODES,
    STRATEGIES,
)
from fedpeft.core.config import DAY_S, EPOCHS, RANGES, SEED, Range
from fedpeft.core.errors import ConfigError, FedPeftError
from fedpeft.core.trust.keys import OPERATOR_PASSPHRASE_ENV as OPERATOR_ENV


def _run_config(args: argparse.Namespace):
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
        "federation.round_timeout": args.round_timeout,
        "federation.delta_encoding": args.delta_encoding,
        "train.epochs": args.local_epochs,
        "train.learning_rate": args.learning_rate,
        "train.device": args.device,
        "adapter.method": args.method,
        "model.quantization": args.quantization,
        "model.path": args.model,
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


def _print_summary(summary: dict, out: str) -> None:
    print(
        f"[fedpeft] done: accuracy initial {summary['initial_accuracy']:.3f}, global {summary['global_accuracy']:.3f}, "
        f"personalized {summary['personalized_accuracy']:.3f}, local-only {summary['local_only_accuracy']:.3f}"
        + (f", centralized {summary['centralized_accuracy']:.3f}" if summary.get("centralized_accuracy") is not None else "")
        + f"; results in {out}"
    )
    if summary["rejected"]:
        print(f"[fedpeft] rejected deltas by reason: {summary['rejected']}")


def _simulate(args: argparse.Namespace) -> None:
    from .simulate import simulate

    config = _run_config(args)
    _print_summary(simulate(config, args.verbose, resume=not args.restart), config.run.out)


def _deploy_local(args: argparse.Namespace) -> None:
    from fedpeft.deploy.local import run_local

    from .simulate import ensure_operator_key

    config = _run_config(args)
    ensure_operator_key(Path(config.security.operator_key))
    _print_summary(run_local(config, args.nodes, args.timeout), config.run.out)


def _deploy_run(args: argparse.Namespace) -> None:
    from fedpeft.deploy.flower import FlowerCli
    from fedpeft.deploy.submit import submit_and_wait

    config = _run_config(args).with_overrides(**{"security.keyring": args.keyring})
    if not config.security.keyring:
        raise ConfigError("give the keyring that enrolls the SuperNodes' signing keys (--keyring or security.keyring)")
    work = Path(config.run.out) / "deployment"
    cli = FlowerCli(work / "flwr-home", args.superlink, Path(args.ca_cert))
    _print_summary(submit_and_wait(cli, config, work, args.timeout), config.run.out)


def _deploy_node_key(args: argparse.Namespace) -> None:
    from fedpeft.deploy.node_auth import new_node_auth_key

    public = new_node_auth_key(Path(args.out))
    print(f"SuperNode authentication key {args.out} (mode 600); register {public} with "
          f"`flwr supernode register {public} <connection>`")


def _keys_new(args: argparse.Namespace) -> None:
    from fedpeft.core.trust.keys import new_key_pair, passphrase_from_env, public_key_path

    passphrase = passphrase_from_env(args.passphrase_env) if args.passphrase_env else None
    if args.passphrase_env and passphrase is None:
        raise ConfigError(f"--passphrase-env {args.passphrase_env}: that variable is not set")
    kid = new_key_pair(Path(args.path), passphrase)
    print(f"{kid}  private {args.path} (mode 600{', encrypted' if passphrase else ''}), "
          f"public {public_key_path(Path(args.path))}")


def _keys_enroll(args: argparse.Namespace) -> None:
    from fedpeft.core.trust.keys import Keyring, load_public_key

    keyring = Keyring.load(Path(args.keyring))
    entry = keyring.enroll(args.name, load_public_key(Path(args.public_key)))
    keyring.save()
    print(f"enrolled {entry.name} ({entry.key_id}) in {args.keyring}: {len(keyring.keys)} key(s)")


def _keys_list(args: argparse.Namespace) -> None:
    from fedpeft.core.trust.keys import Keyring

    for entry in sorted(Keyring.load(Path(args.keyring)).keys.values(), key=lambda e: e.name):
        print(f"{entry.key_id}  {entry.name}")


def _verify(args: argparse.Namespace) -> None:
    from fedpeft.core.trust.keys import load_public_key
    from fedpeft.core.trust.release import verify_release

    release = verify_release(Path(args.folder), load_public_key(Path(args.key)), base_id=args.base_id)
    m = release.manifest
    print(f"OK: {args.folder} is release v{release.version} ({release.release_id[:12]}) of base "
          f"{m['base_id'][:12]}, template {m['template_id'][:12]}; {len(m['tensors'])} tensors; "
          f"created {m['created']}, expires {m['expires']}")


def _export(args: argparse.Namespace) -> None:
    from fedpeft.core.config import load_config
    from fedpeft.core.trust.keys import load_operator_key, load_public_key
    from fedpeft.export.exporter import ExportRequest, export, export_adapter_only
    from fedpeft.export.parity import ParityLimits

    config = load_config(args.config).with_overrides(**{
        "model.path": args.model, "model.quantization": args.quantization, "data.source": args.data,
    })
    operator = Path(args.operator_key or config.security.operator_key)
    request = ExportRequest(
        adapter=Path(args.adapter), out=Path(args.out), model_folder=config.model.folder(), task=config.model.task,
        quantization=config.model.quantization,
        release_key=load_public_key(Path(args.key)) if args.key else None, accept_unsigned=args.accept_unsigned,
        data=config.data_spec(), max_length=args.max_length, int8_scheme=args.int8_scheme,
        training_graph=args.training_graph,
        limits=ParityLimits(**{k: v for k, v in {"int8_min_agreement": args.min_int8_agreement,
                                                  "int8_max_accuracy_drop": args.max_int8_accuracy_drop}.items()
                               if v is not None}),
    )
    operator_key = load_operator_key(operator)
    if args.onto:
        if not args.key:
            raise ConfigError("--onto needs --key: the operator key that signed the export")
        manifest = export_adapter_only(request, Path(args.onto), load_public_key(Path(args.key)), operator_key)
        print(f"[fedpeft] adapter for export {args.onto} written to {args.out} "
              f"({manifest['files']['adapter.onnx_adapter']['size'] / 1e3:.0f} KB), signed adapter.json")
        return
    manifest = export(request, operator_key)
    p = manifest["parity"]
    print(f"[fedpeft] export written to {args.out}: fp32 max abs diff {p['fp32_max_abs']:.2g}, adapter-input graph "
          f"{p['adapter_max_abs']:.2g}, int8 agreement {p['int8_agreement']:.3f}"
          + (f", accuracy torch {p['torch_accuracy']:.3f} / int8 {p['int8_accuracy']:.3f}" if p["torch_accuracy"] is not None else "")
          + f" on {p['examples']} held-out examples"
          + (f"; training graph gradients within {p['gradient_max_abs']:.2g} of PyTorch" if p.get("gradient_max_abs") is not None else "")
          + "; signed export.json")


def _predict(args: argparse.Namespace) -> None:
    from fedpeft.core.trust.keys import load_public_key
    from fedpeft.device.predict import Predictor

    if args.key is None and not args.no_verify:
        raise ConfigError("give the operator's public key (--key) or pass --no-verify")
    model, adapter = args.model, Path(args.adapter) if args.adapter else None
    if args.state:
        model, adapter = "base", _slot_adapter(args)
    predictor = Predictor(Path(args.folder), load_public_key(Path(args.key)) if args.key else None, model, adapter)
    for text, prediction in zip(args.texts, predictor.predict(args.texts)):
        print(f"{prediction.label}\t{prediction.score:.3f}\t{text}")


def _slot_adapter(args: argparse.Namespace) -> Path:
    """What a device slot predicts with: its personal adapter while it was trained from the
    installed release, else the release's own `.onnx_adapter` (saying why)."""
    from fedpeft.core.trust.release import ONNX_ADAPTER_FILES
    from fedpeft.device.personal import personal_adapter

    if not (args.key and args.base_id):
        raise ConfigError("--state needs the operator key (--key) and the device's base (--base-id)")
    device = _device(args)
    device.current_release()  # verified again now
    personal, why = personal_adapter(device)
    if personal is not None:
        return personal
    print(f"fedpeft: note: {why}", file=sys.stderr)
    if device.current is None or not (device.current / ONNX_ADAPTER_FILES[0]).exists():
        raise ConfigError(f"{args.state} has no personal adapter and its release carries no .onnx_adapter")
    return device.current


def _device_train(args: argparse.Namespace) -> None:
    from fedpeft.core.training.data import labelled_split, read_rows
    from fedpeft.core.training.settings import TrainSettings
    from fedpeft.device.personal import PERSONAL_DIR, personalize
    from fedpeft.device.trainer import DeviceTrainer

    device = _device(args)
    trainer = DeviceTrainer(Path(args.export), device.operator_key, threads=args.threads)
    rows = labelled_split(read_rows(args.data), trainer.labels)
    settings = TrainSettings(epochs=args.epochs, batch_size=args.batch_size, learning_rate=args.learning_rate,
                             max_length=args.max_length, seed=args.seed, optimizer=args.optimizer)
    record = personalize(device, trainer, rows, settings, progress=lambda line: print(line, flush=True))
    print(f"personal adapter from v{record.version}: mean training loss {record.loss:.4f}; kept in "
          f"{device.folder / PERSONAL_DIR} (used by fedpeft predict --state; nothing was sent)")


def _certs(args: argparse.Namespace) -> None:
    from fedpeft.core.trust.tls import write_tls_files

    paths = write_tls_files(Path(args.out), args.host, args.valid_days)
    print(f"CA {paths['ca.crt']}, server certificate {paths['server.pem']} for {', '.join(args.host)}, "
          f"key {paths['server.key']} (mode 600)")


def _registry_client(args: argparse.Namespace):
    from fedpeft.device.registry_client import RegistryClient

    if not args.ca_cert and not args.insecure:
        raise ConfigError("give the registry's CA certificate (--ca-cert) or --insecure for a plaintext registry")
    return RegistryClient(args.registry, None if args.insecure else Path(args.ca_cert))


def _operator_key(args: argparse.Namespace):
    from fedpeft.core.trust.keys import load_operator_key

    return load_operator_key(Path(args.operator_key))


def _registry_serve(args: argparse.Namespace) -> None:
    from fedpeft.server.registry.serve import ServeSettings, run

    host = f"[{args.host}]" if ":" in args.host else args.host  # IPv6: gRPC's HOST:PORT wants brackets
    run(ServeSettings(store=Path(args.store), operators=Path(args.operators), host=host, port=args.port,
                      tls_cert=Path(args.tls_cert) if args.tls_cert else None,
                      tls_key=Path(args.tls_key) if args.tls_key else None, insecure=args.insecure,
                      publish_deadline=args.publish_deadline))


def _registry_publish(args: argparse.Namespace) -> None:
    from fedpeft.server.registry.operator import publish

    with _registry_client(args) as client:
        release = publish(client, _operator_key(args), Path(args.adapter), args.channel,
                          onnx_adapter=Path(args.onnx_adapter) if args.onnx_adapter else None, valid_days=args.valid_days)
    print(f"published v{release.version} ({release.release_id[:12]}) of base {release.base_id[:12]} "
          f"to {args.channel}; expires {release.manifest['expires']}")


def _registry_promote(args: argparse.Namespace) -> None:
    from fedpeft.server.registry.operator import promote, releases

    key = _operator_key(args)
    with _registry_client(args) as client:
        release = next((r for r in releases(client, key, args.base_id) if r.version == args.version), None)
        if release is None:
            raise ConfigError(f"no release v{args.version} of base {args.base_id[:12]} in the registry")
        promote(client, key, release, args.channel)
    print(f"{args.channel} now serves v{release.version} ({release.release_id[:12]})")


def _registry_rollback(args: argparse.Namespace) -> None:
    from fedpeft.server.registry.operator import rollback

    with _registry_client(args) as client:
        release = rollback(client, _operator_key(args), args.base_id, args.to_version, args.channel,
                           valid_days=args.valid_days)
    print(f"{args.channel} now serves v{release.version} ({release.release_id[:12]}), "
          f"the weights of v{args.to_version}")


def _registry_list(args: argparse.Namespace) -> None:
    from fedpeft.server.registry.operator import describe

    with _registry_client(args) as client:
        entries = client.releases(args.base_id or "")
    for entry in entries:
        print(describe(entry))  # listing only: devices verify before use


def _device(args: argparse.Namespace):
    from fedpeft.core.trust.keys import load_public_key
    from fedpeft.device.slot import Device

    return Device(Path(args.state), load_public_key(Path(args.key)), args.base_id, args.channel)


def _device_pull(args: argparse.Namespace) -> None:
    device = _device(args)
    with _registry_client(args) as client:
        result = device.pull(client)
    if result.status == "not-modified":
        print(f"up to date: v{result.version}")
    else:
        print(f"installed v{result.version} ({result.release_id[:12]}) in {device.current}; "
              f"{result.bytes_received} bytes received" + (f", {result.resumed_bytes} already on the device" if result.resumed_bytes else ""))


def _device_rollback(args: argparse.Namespace) -> None:
    entry = _device(args).rollback()
    print(f"now using v{entry['version']} ({entry['release_id'][:12]}); newer releases than the abandoned one still install")


def _run_arguments(parser: argparse.ArgumentParser) -> None:
    """Overrides of the run's TOML config that `simulate` and `deploy` share."""
    parser.add_argument("--config", help="TOML file (default: the bundled simulations/default.toml)")
    parser.add_argument("--data", help="CSV or JSONL file with text, label and optional client_id columns")
    parser.add_argument("--model", help="transformers model folder (default: the bundled all-MiniLM-L6-v2)")
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


# The command-line values that are no config key; the others use core/config.py's RANGES.
# Each is an argparse `type=`, so a bad value is refused with one line and exit code 2
# before any import, key or file (tests/test_cli_values.py drives every one).
NODES = Range(int, 2, 256, reason="a federation needs at least 2 SuperNodes")
RUN_TIMEOUT = Range(float, 0, 30 * DAY_S, low_open=True)
SHARE = Range(float, 0, 1)
CERTIFICATE_DAYS = Range(int, 1, 36_500)
PORT = Range(int, 0, 65_535)
PUBLISH_DEADLINE = Range(float, 0, DAY_S, low_open=True)
VERSION = Range(int, 1, 2**63 - 1, reason="SQLite's integer range")
THREADS = Range(int, 0, 1024)
_DNS_LABEL = re.compile(r"(?!-)[A-Za-z0-9-]{1,63}(?<!-)")


def _host(text: str) -> str:
    """--host: an IP address or a DNS name (RFC 1123), refused in one line here rather
    than as a gRPC or x509 traceback later; 256.1.1.1 is neither (a name's last label is
    never all digits)."""
    try:
        ipaddress.ip_address(text)
        return text
    except ValueError:
        pass
    labels = text.split(".")
    if len(text) <= 253 and all(_DNS_LABEL.fullmatch(label) for label in labels) and not labels[-1].isdigit():
        return text
    shown = text if len(text) <= 40 else text[:37] + "..."
    raise argparse.ArgumentTypeError(f"must be an IP address or a DNS name, got {shown!r}")


def _address(text: str) -> str:
    """HOST:PORT with _host's rules, an IPv6 host in brackets, and a port in 1..65535."""
    host, colon, port = text.rpartition(":")
    bracketed = host.startswith("[") and host.endswith("]")
    host = host[1:-1] if bracketed else host
    try:
        if not colon or bracketed != (":" in host):  # brackets around an IPv6 address, and only there
            raise ValueError
        _host(host)
        Range(int, 1, 65_535)(port)
    except (ValueError, argparse.ArgumentTypeError):
        shown = text if len(text) <= 40 else text[:37] + "..."
        raise argparse.ArgumentTypeError(f"must be HOST:PORT (an IP address or DNS name, a port in 1..65535), "
                                         f"got {shown!r}") from None
    return text


class _Parser(argparse.ArgumentParser):
    """argparse, but a bad command line is refused in one line (no usage block): the line
    names the option and what it allows, and --help has the rest."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def _command(group, name: str, text: str, example: str) -> argparse.ArgumentParser:
    """A subcommand whose --help ends with an example."""
    return group.add_parser(name, help=text, description=text, epilog=f"example:\n  {example}",
                            formatter_class=argparse.RawDescriptionHelpFormatter)


def _group(commands, name: str, text: str, dest: str):
    return commands.add_parser(name, help=text, description=text).add_subparsers(dest=dest, required=True)


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="fedpeft", description=__doc__)
    parser.add_argument("--version", action="version", version=f"fedpeft {version('fedpeft')}")
    commands = parser.add_subparsers(dest="command", required=True)

    sim = _command(commands, "simulate", "run a federation on Flower's simulation engine",
                   "fedpeft simulate --clients 20 --rounds 10 --method lora --out runs/lora")
    _run_arguments(sim)
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
    sim.set_defaults(run=_simulate)

    deploy = _group(commands, "deploy", "run the federation on Flower's Deployment Engine", "deploy_command")
    local = _command(deploy, "local", "a SuperLink and N SuperNodes as processes on 127.0.0.1 (TLS, node auth)",
                     "fedpeft deploy local --nodes 3 --rounds 3 --out runs/deploy")
    _run_arguments(local)
    local.add_argument("--nodes", type=NODES, default=2, help="SuperNodes, one data partition each (at least 2; "
                                                                   "default 2)")
    local.add_argument("--timeout", type=RUN_TIMEOUT, default=7200, help="seconds the whole run may take")
    local.set_defaults(run=_deploy_local)
    submit = _command(deploy, "run", "submit the federation to a running SuperLink (on its machine) and wait",
                      "fedpeft deploy run --superlink SERVER:9092 --ca-cert tls/ca.crt --keyring keyring.json")
    _run_arguments(submit)
    submit.add_argument("--superlink", type=_address, required=True, help="HOST:PORT of the SuperLink")
    submit.add_argument("--ca-cert", required=True, help="CA certificate that signed the SuperLink's (fedpeft certs)")
    submit.add_argument("--keyring", help="enrollment list of the SuperNodes' signing keys (fedpeft keys enroll)")
    submit.add_argument("--timeout", type=RUN_TIMEOUT, default=7200, help="seconds the whole run may take")
    submit.set_defaults(run=_deploy_run)
    node_key = _command(deploy, "node-key", "a SuperNode authentication key (P-384, OpenSSH) and its .pub",
                        "fedpeft deploy node-key --out node-auth.key")
    node_key.add_argument("--out", required=True, help="private key file to write (refuses to overwrite)")
    node_key.set_defaults(run=_deploy_node_key)

    keys = _group(commands, "keys", "Ed25519 keys: create them, enroll client keys", "keys_command")
    new = _command(keys, "new", "write NAME.key (mode 600) and NAME.pub", "fedpeft keys new keys/client-7.key")
    new.add_argument("path", help="private key file to create, e.g. keys/client-0.key")
    new.add_argument("--passphrase-env", metavar="VAR", help="encrypt the key with the passphrase in $VAR")
    new.set_defaults(run=_keys_new)
    enroll = _command(keys, "enroll", "add a client public key to the server's enrollment list",
                      "fedpeft keys enroll keys/client-7.pub --name client-7 --keyring keys/enrolled.json")
    enroll.add_argument("public_key", help="a .pub file written by `fedpeft keys new`")
    enroll.add_argument("--name", required=True, help="the client's name in logs and reports")
    enroll.add_argument("--keyring", required=True, help="enrollment list (JSON; created if absent)")
    enroll.set_defaults(run=_keys_enroll)
    listing = _command(keys, "list", "show the enrolled keys", "fedpeft keys list --keyring keys/enrolled.json")
    listing.add_argument("--keyring", required=True, help="enrollment list (JSON)")
    listing.set_defaults(run=_keys_list)

    verify = _command(commands, "verify", "check a published adapter folder's signed release",
                      "fedpeft verify runs/default/adapter --key keys/operator.pub")
    verify.add_argument("folder", help="adapter folder with release.json and release.sig")
    verify.add_argument("--key", required=True, help="the operator's public key (.pub)")
    verify.add_argument("--base-id", help="also require the release to be made for this base")
    verify.set_defaults(run=_verify)

    exp = _command(commands, "export", "ONNX models of a base with an adapter, signed, for ONNX Runtime",
                   "fedpeft export runs/default/adapter --key keys/operator.pub --out runs/export")
    exp.add_argument("adapter", help="adapter folder (PEFT format, with release.json/.sig)")
    exp.add_argument("--out", required=True, help="export folder to create")
    exp.add_argument("--key", help="operator public key that signed the adapter's release")
    exp.add_argument("--accept-unsigned", action="store_true", help="export an adapter without a release")
    exp.add_argument("--operator-key", help="private key that signs the export (default: security.operator_key)")
    exp.add_argument("--config", help="TOML file naming the base model and the held-out data")
    exp.add_argument("--model", help="transformers model folder of the base (default: bundled MiniLM)")
    exp.add_argument("--quantization", help="how the base was quantized for transport (identifies the base)")
    exp.add_argument("--data", help="data for the parity check (default: the config's)")
    exp.add_argument("--max-length", type=RANGES["train.max_length"], default=128,
                     help="tokenizer truncation on devices")
    exp.add_argument("--min-int8-agreement", type=SHARE,
                     help="refuse the export if int8 and PyTorch predictions agree less often (default 0.99)")
    exp.add_argument("--max-int8-accuracy-drop", type=SHARE, help="default 0.01")
    exp.add_argument("--int8-scheme", choices=["blockwise", "per-tensor"], default="blockwise",
                     help="how finely activations are quantized (export/int8.py)")
    exp.add_argument("--training-graph", action=argparse.BooleanOptionalAction, default=True,
                     help="write train.onnx for devices that train the adapter (default: on)")
    exp.add_argument("--onto", metavar="EXPORT", help="write only an .onnx_adapter for this existing export folder")
    exp.set_defaults(run=_export)

    pred = _command(commands, "predict", "classify texts with an export folder (ONNX Runtime, no torch)",
                    'fedpeft predict runs/export "the battery on my phone died" --key keys/operator.pub')
    pred.add_argument("folder", help="export folder")
    pred.add_argument("texts", nargs="+", help="texts to classify")
    pred.add_argument("--key", help="operator public key that signed the export")
    pred.add_argument("--no-verify", action="store_true", help="skip the signature check")
    pred.add_argument("--model", default="int8", choices=["fp32", "int8", "base"],
                      help="which exported model runs (base: the base graph with an .onnx_adapter)")
    pred.add_argument("--adapter", help="a folder from `fedpeft export --onto` to apply to the base model")
    pred.add_argument("--state", help="a device slot: its personal adapter, else its release's .onnx_adapter")
    pred.add_argument("--base-id", help="the device's base (with --state)")
    pred.add_argument("--channel", default="stable", help=argparse.SUPPRESS)
    pred.set_defaults(run=_predict)

    certs = _command(commands, "certs", "write a private CA and a server certificate (TLS for registry, SuperLink)",
                     "fedpeft certs --out tls --host 127.0.0.1")
    certs.add_argument("--out", required=True, help="folder for ca.crt, server.pem, server.key")
    certs.add_argument("--host", action="append", required=True, type=_host,
                       help="IP or DNS name of the server (repeatable)")
    certs.add_argument("--valid-days", type=CERTIFICATE_DAYS, default=365, help="certificate lifetime (default 365)")
    certs.set_defaults(run=_certs)

    def registry_address(sub: argparse.ArgumentParser) -> None:
        sub.add_argument("--registry", type=_address, default="127.0.0.1:50061",
                         help="HOST:PORT of `fedpeft registry serve`")
        sub.add_argument("--ca-cert", help="CA certificate that signed the registry's TLS certificate")
        sub.add_argument("--insecure", action="store_true", help="plaintext (a registry started with --insecure)")

    def operator(sub: argparse.ArgumentParser) -> None:
        registry_address(sub)
        sub.add_argument("--operator-key", required=True, help=f"operator private key (passphrase in ${OPERATOR_ENV})")

    registry = _group(commands, "registry", "adapter registry: serve, publish, promote, roll back", "registry_command")
    serve = _command(registry, "serve", "run the registry (gRPC, TLS) until SIGTERM",
                     "fedpeft registry serve --store registry --operators operators.json "
                     "--tls-cert tls/server.pem --tls-key tls/server.key")
    serve.add_argument("--store", required=True, help="folder of blobs and the SQLite index (created if absent)")
    serve.add_argument("--operators", required=True, help="keyring of operator public keys allowed to publish")
    serve.add_argument("--host", type=_host, default="127.0.0.1", help="address to listen on (default 127.0.0.1)")
    serve.add_argument("--port", type=PORT, default=50061, help="0: any free port (printed)")
    serve.add_argument("--tls-cert", help="server certificate (PEM), e.g. server.pem from `fedpeft certs`")
    serve.add_argument("--tls-key", help="its private key (PEM)")
    serve.add_argument("--insecure", action="store_true", help="plaintext; for a trusted laptop only")
    serve.add_argument("--publish-deadline", type=PUBLISH_DEADLINE, default=300.0,
                       help="seconds a publish stream may take before it is cut and its files discarded")
    serve.set_defaults(run=_registry_serve)
    pub = _command(registry, "publish", "publish a signed adapter folder as the next version of its base",
                   "fedpeft registry publish runs/default/adapter --operator-key keys/operator.key "
                   "--ca-cert tls/ca.crt --channel canary")
    pub.add_argument("adapter", help="adapter folder with release.json/.sig (e.g. runs/default/adapter)")
    operator(pub)
    pub.add_argument("--channel", default="canary", help="channel the release starts on (default canary)")
    pub.add_argument("--onnx-adapter", help="also ship this `fedpeft export --onto` folder's .onnx_adapter")
    pub.add_argument("--valid-days", type=RANGES["security.release_days"], default=30.0,
                     help="devices refuse the release after this")
    pub.set_defaults(run=_registry_publish)
    for name, version_flag, run, text in (
            ("promote", "--version", _registry_promote, "make a published version the current one of a channel"),
            ("rollback", "--to-version", _registry_rollback, "republish an earlier version's weights as a new version")):
        change = _command(registry, name, text, f"fedpeft registry {name} {version_flag} 1 --channel stable "
                                                "--base-id BASE --operator-key keys/operator.key --ca-cert tls/ca.crt")
        operator(change)
        change.add_argument("--base-id", required=True, help="the base whose releases this changes (summary.json)")
        change.add_argument(version_flag, type=VERSION, required=True, help="release version")
        change.add_argument("--channel", required=True, help="e.g. stable, canary")
        if name == "rollback":
            change.add_argument("--valid-days", type=RANGES["security.release_days"], default=30.0,
                                help="devices refuse the release after this")
        change.set_defaults(run=run)
    lst = _command(registry, "list", "show the published releases and their channels",
                   "fedpeft registry list --ca-cert tls/ca.crt")
    registry_address(lst)
    lst.add_argument("--base-id", help="only the releases of this base")
    lst.set_defaults(run=_registry_list)

    device = _group(commands, "device", "a device's adapter slot: pull from the registry, personalize, roll back", "device_command")
    for name, run, text in (("pull", _device_pull, "install the channel's release if it is newer and checks out"),
                            ("rollback", _device_rollback, "go back to the previous adapter")):
        sub = _command(device, name, text, f"fedpeft device {name} --state device --key keys/operator.pub --base-id BASE"
                                           + (" --ca-cert tls/ca.crt" if name == "pull" else ""))
        sub.add_argument("--state", required=True, help="the device's adapter folder (state.json, releases/)")
        sub.add_argument("--key", required=True, help="the operator public key the device trusts")
        sub.add_argument("--base-id", required=True, help="the base this device runs")
        sub.add_argument("--channel", default="stable", help="channel to follow (default stable)")
        if name == "pull":
            registry_address(sub)
        sub.set_defaults(run=run)
    train = _command(device, "train", "personalize the installed adapter on this device's rows (ONNX Runtime, no torch)",
                     "fedpeft device train --state device --export runs/export --data my-rows.csv "
                     "--key keys/operator.pub --base-id BASE")
    train.add_argument("--state", required=True, help="the device's adapter folder (state.json, releases/)")
    train.add_argument("--key", required=True, help="the operator public key the device trusts")
    train.add_argument("--base-id", required=True, help="the base this device runs")
    train.add_argument("--export", required=True, help="export folder with the training graph (fedpeft export)")
    train.add_argument("--data", required=True, help="CSV or JSONL with text and label columns; never leaves the device")
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
    train.add_argument("--channel", default="stable", help=argparse.SUPPRESS)
    train.set_defaults(run=_device_train)
    return parser


def _train_defaults():
    from fedpeft.core.training.settings import TrainSettings

    return TrainSettings()


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        args.run(args)
    except (FedPeftError, OSError) as exc:  # OSError: a path that is missing, unreadable or unwritable
        print(f"fedpeft: error: {exc}", file=sys.stderr)
        return 1 if args.command in ("verify", "predict", "device") else 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
