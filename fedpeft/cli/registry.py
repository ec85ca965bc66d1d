"""`fedpeft registry`: serve the adapter registry, and the operator's publish, promote,
roll back and list against it."""

from __future__ import annotations

import argparse
from pathlib import Path

from fedpeft.core.config import RANGES
from fedpeft.core.errors import ConfigError

from .common import (
    PORT,
    SHARE,
    TIMESTAMP_VALID,
    PUBLISH_DEADLINE,
    VERSION,
    channel,
    command,
    group,
    host,
    operator_arguments,
    private_keys,
    registry_arguments,
    registry_client,
)


def add_commands(commands) -> None:
    registry = group(commands, "registry", "adapter registry: serve, publish, promote, roll back", "registry_command")
    serve = command(registry, "serve", "run the registry (gRPC, TLS) until SIGTERM",
                    "fedpeft registry serve --store registry --operators operators.json "
                    "--tls-cert tls/server.pem --tls-key tls/server.key")
    serve.add_argument("--store", required=True, help="folder of blobs and the SQLite index (created if absent)")
    serve.add_argument("--operators", required=True, help="keyring of operator public keys allowed to publish")
    serve.add_argument("--host", type=host, default="127.0.0.1", help="address to listen on (default 127.0.0.1)")
    serve.add_argument("--port", type=PORT, default=50061, help="0: any free port (printed)")
    serve.add_argument("--tls-cert", help="server certificate (PEM), e.g. server.pem from `fedpeft certs`")
    serve.add_argument("--tls-key", help="its private key (PEM)")
    serve.add_argument("--insecure", action="store_true", help="plaintext; for a trusted laptop only")
    serve.add_argument("--publish-deadline", type=PUBLISH_DEADLINE, default=300.0,
                       help="seconds a publish stream may take before it is cut and its files discarded")
    serve.add_argument("--tuf", help="serve TUF metadata: the registry/ folder `fedpeft keys tuf-init` wrote "
                                     "(online snapshot and timestamp keys, the first metadata)")
    serve.add_argument("--timestamp-valid", type=TIMESTAMP_VALID, default=600.0,
                       help="seconds a TUF timestamp stays valid (re-signed at half; devices refuse a staler one)")
    serve.add_argument("--metrics-port", type=PORT, help="serve Prometheus metrics at /metrics on this port (0: any "
                                                         "free port, printed; TLS with the registry's certificate)")
    serve.add_argument("--devices", help="keyring of enrolled device keys (`fedpeft keys enroll`): health reports "
                                         "are taken from these only")
    serve.add_argument("--canary-policy", help="TOML promotion policy per channel (needs --devices and --tuf)")
    serve.add_argument("--automation-key", help="private key the channel roles name for automated canary decisions "
                                                "(without it, decisions are recorded and nothing moves)")
    serve.add_argument("--drift-threshold", type=SHARE, default=0.25,
                       help="flag a release whose devices' median reported drift is above this (0..1)")
    serve.set_defaults(run=_registry_serve)
    pub = command(registry, "publish", "publish a signed adapter folder as the next version of its base",
                  "fedpeft registry publish runs/default/adapter --operator-key keys/operator.key "
                  "--ca-cert tls/ca.crt --channel canary")
    pub.add_argument("adapter", help="adapter folder with release.json/.sig (e.g. runs/default/adapter)")
    operator_arguments(pub)
    pub.add_argument("--channel", type=channel, default="canary", help="channel the release starts on (default canary)")
    pub.add_argument("--onnx-adapter", help="also ship this `fedpeft export --onto` folder's .onnx_adapter")
    pub.add_argument("--valid-days", type=RANGES["security.release_days"], default=30.0,
                     help="devices refuse the release after this")
    _channel_key_argument(pub)
    pub.set_defaults(run=_registry_publish)
    for name, version_flag, run, text in (
            ("promote", "--version", _registry_promote, "make a published version the current one of a channel"),
            ("rollback", "--to-version", _registry_rollback, "republish an earlier version's weights as a new version")):
        change = command(registry, name, text, f"fedpeft registry {name} {version_flag} 1 --channel stable "
                                               "--base-id BASE --operator-key keys/operator.key --ca-cert tls/ca.crt")
        operator_arguments(change)
        change.add_argument("--base-id", required=True, help="the base whose releases this changes (summary.json)")
        change.add_argument(version_flag, type=VERSION, required=True, help="release version")
        change.add_argument("--channel", type=channel, required=True, help="e.g. stable, canary")
        if name == "rollback":
            change.add_argument("--valid-days", type=RANGES["security.release_days"], default=30.0,
                                help="devices refuse the release after this")
        _channel_key_argument(change)
        change.set_defaults(run=run)
    lst = command(registry, "list", "show the published releases and their channels",
                  "fedpeft registry list --ca-cert tls/ca.crt")
    registry_arguments(lst)
    lst.add_argument("--base-id", help="only the releases of this base")
    lst.set_defaults(run=_registry_list)
    status = command(registry, "status", "channels, device report aggregates and canary decisions",
                     "fedpeft registry status --ca-cert tls/ca.crt")
    registry_arguments(status)
    status.add_argument("--html", help="also write the status as an HTML page to this file")
    status.set_defaults(run=_registry_status)


def _channel_key_argument(sub: argparse.ArgumentParser) -> None:
    sub.add_argument("--channel-key", action="append", default=[],
                     help="a TUF registry: the channel's key, which signs the channel's next metadata (repeat for "
                          "a threshold)")


def _operator_key(args: argparse.Namespace):
    from fedpeft.core.trust.keys import load_operator_key

    return load_operator_key(Path(args.operator_key))


def _registry_serve(args: argparse.Namespace) -> None:
    from fedpeft.server.registry.serve import ServeSettings, run

    listen = f"[{args.host}]" if ":" in args.host else args.host  # IPv6: gRPC's HOST:PORT wants brackets
    run(ServeSettings(store=Path(args.store), operators=Path(args.operators), host=listen, port=args.port,
                      tls_cert=Path(args.tls_cert) if args.tls_cert else None,
                      tls_key=Path(args.tls_key) if args.tls_key else None, insecure=args.insecure,
                      publish_deadline=args.publish_deadline, tuf=Path(args.tuf) if args.tuf else None,
                      timestamp_valid=args.timestamp_valid, metrics_port=args.metrics_port,
                      devices=Path(args.devices) if args.devices else None,
                      canary_policy=Path(args.canary_policy) if args.canary_policy else None,
                      automation_key=Path(args.automation_key) if args.automation_key else None,
                      drift_threshold=args.drift_threshold))


def _registry_publish(args: argparse.Namespace) -> None:
    from fedpeft.server.registry.operator import publish

    with registry_client(args) as client:
        release = publish(client, _operator_key(args), Path(args.adapter), args.channel,
                          onnx_adapter=Path(args.onnx_adapter) if args.onnx_adapter else None, valid_days=args.valid_days,
                          channel_keys=private_keys(args.channel_key))
    print(f"published v{release.version} ({release.release_id[:12]}) of base {release.base_id[:12]} "
          f"to {args.channel}; expires {release.manifest['expires']}")


def _registry_promote(args: argparse.Namespace) -> None:
    from fedpeft.server.registry.operator import promote, releases

    key = _operator_key(args)
    with registry_client(args) as client:
        release = next((r for r in releases(client, key, args.base_id) if r.version == args.version), None)
        if release is None:
            raise ConfigError(f"no release v{args.version} of base {args.base_id[:12]} in the registry")
        promote(client, key, release, args.channel, private_keys(args.channel_key))
    print(f"{args.channel} now serves v{release.version} ({release.release_id[:12]})")


def _registry_rollback(args: argparse.Namespace) -> None:
    from fedpeft.server.registry.operator import rollback

    with registry_client(args) as client:
        release = rollback(client, _operator_key(args), args.base_id, args.to_version, args.channel,
                           valid_days=args.valid_days, channel_keys=private_keys(args.channel_key))
    print(f"{args.channel} now serves v{release.version} ({release.release_id[:12]}), "
          f"the weights of v{args.to_version}")


def _registry_list(args: argparse.Namespace) -> None:
    from fedpeft.server.registry.operator import describe

    with registry_client(args) as client:
        entries = client.releases(args.base_id or "")
    for entry in entries:
        print(describe(entry))  # listing only: devices verify before use



def _registry_status(args: argparse.Namespace) -> None:
    from fedpeft.core.trust.atomic import write_atomic
    from fedpeft.server.registry.status_page import render, status_lines

    with registry_client(args) as client:
        status = client.status()
    try:  # what the registry said: every value checked and made printable before it is shown
        lines, page = status_lines(status), render(status) if args.html else ""
    except (KeyError, TypeError, ValueError, AttributeError, OverflowError) as exc:
        raise ConfigError(f"the registry's status is malformed: {type(exc).__name__}") from None
    if args.html:
        write_atomic(Path(args.html), page.encode())
    print("\n".join(lines))
