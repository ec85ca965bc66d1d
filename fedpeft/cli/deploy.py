"""`fedpeft deploy`: the federation on Flower's Deployment Engine, locally or on a SuperLink."""

from __future__ import annotations

import argparse
from pathlib import Path

from fedpeft.core.config import Range
from fedpeft.core.errors import ConfigError

from .common import NODES, RUN_TIMEOUT, address, command, group
from .runs import print_summary, run_arguments, run_config


def add_commands(commands) -> None:
    deploy = group(commands, "deploy", "run the federation on Flower's Deployment Engine", "deploy_command")
    local = command(deploy, "local", "a SuperLink and N SuperNodes as processes on 127.0.0.1 (TLS, node auth)",
                    "fedpeft deploy local --nodes 3 --rounds 3 --out runs/deploy")
    run_arguments(local)
    local.add_argument("--nodes", type=NODES, default=2, help="SuperNodes, one data partition each (at least 2; "
                                                                  "default 2)")
    local.add_argument("--device-nodes", type=Range(int, 0, 256), default=0,
                       help="device nodes besides --nodes: fedpeft device join, ONNX Runtime and numpy, no torch")
    local.add_argument("--device-env", help="virtual environment the device nodes run from (the device install and "
                                            "flwr; default this one)")
    local.add_argument("--timeout", type=RUN_TIMEOUT, default=7200, help="seconds the whole run may take")
    local.set_defaults(run=_deploy_local)
    submit = command(deploy, "run", "submit the federation to a running SuperLink (on its machine) and wait",
                     "fedpeft deploy run --superlink SERVER:9092 --ca-cert tls/ca.crt --keyring keyring.json")
    run_arguments(submit)
    submit.add_argument("--superlink", type=address, required=True, help="HOST:PORT of the SuperLink")
    submit.add_argument("--ca-cert", required=True, help="CA certificate that signed the SuperLink's (fedpeft certs)")
    submit.add_argument("--keyring", help="enrollment list of the SuperNodes' signing keys (fedpeft keys enroll)")
    submit.add_argument("--timeout", type=RUN_TIMEOUT, default=7200, help="seconds the whole run may take")
    submit.set_defaults(run=_deploy_run)
    node_key = command(deploy, "node-key", "a SuperNode authentication key (P-384, OpenSSH) and its .pub",
                       "fedpeft deploy node-key --out node-auth.key")
    node_key.add_argument("--out", required=True, help="private key file to write (refuses to overwrite)")
    node_key.set_defaults(run=_deploy_node_key)


def _deploy_local(args: argparse.Namespace) -> None:
    from fedpeft.deploy.local import run_local
    from fedpeft.simulate import ensure_operator_key

    config = run_config(args)
    ensure_operator_key(Path(config.security.operator_key))
    device_env = Path(args.device_env) if args.device_env else None
    print_summary(run_local(config, args.nodes, args.timeout, args.device_nodes, device_env), config.run.out)


def _deploy_run(args: argparse.Namespace) -> None:
    from fedpeft.deploy.flower import FlowerCli
    from fedpeft.deploy.submit import submit_and_wait

    config = run_config(args).with_overrides(**{"security.keyring": args.keyring})
    if not config.security.keyring:
        raise ConfigError("give the keyring that enrolls the SuperNodes' signing keys (--keyring or security.keyring)")
    work = Path(config.run.out) / "deployment"
    cli = FlowerCli(work / "flwr-home", args.superlink, Path(args.ca_cert))
    print_summary(submit_and_wait(cli, config, work, args.timeout), config.run.out)


def _deploy_node_key(args: argparse.Namespace) -> None:
    from fedpeft.deploy.node_auth import new_node_auth_key

    public = new_node_auth_key(Path(args.out))
    print(f"SuperNode authentication key {args.out} (mode 600); register {public} with "
          f"`flwr supernode register {public} <connection>`")
