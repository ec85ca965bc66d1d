"""`fedpeft keys`: Ed25519 signing keys, and the enrollment list the server verifies deltas against."""

from __future__ import annotations

import argparse
from pathlib import Path

from fedpeft.core.errors import ConfigError

from .common import ROOT_KEYS, channel, command, group, private_keys, registry_arguments, registry_client


def add_commands(commands) -> None:
    keys = group(commands, "keys", "Ed25519 keys: create them, enroll client keys, set up and rotate TUF keys", "keys_command")
    new = command(keys, "new", "write NAME.key (mode 600) and NAME.pub", "fedpeft keys new keys/client-7.key")
    new.add_argument("path", help="private key file to create, e.g. keys/client-0.key")
    new.add_argument("--passphrase-env", metavar="VAR", help="encrypt the key with the passphrase in $VAR")
    new.set_defaults(run=_keys_new)
    enroll = command(keys, "enroll", "add a client public key to the server's enrollment list",
                     "fedpeft keys enroll keys/client-7.pub --name client-7 --keyring keys/enrolled.json")
    enroll.add_argument("public_key", help="a .pub file written by `fedpeft keys new`")
    enroll.add_argument("--name", required=True, help="the client's name in logs and reports")
    enroll.add_argument("--keyring", required=True, help="enrollment list (JSON; created if absent)")
    enroll.set_defaults(run=_keys_enroll)
    listing = command(keys, "list", "show the enrolled keys", "fedpeft keys list --keyring keys/enrolled.json")
    listing.add_argument("--keyring", required=True, help="enrollment list (JSON)")
    listing.set_defaults(run=_keys_list)
    tuf = command(keys, "tuf-init", "create a TUF repository's keys and first metadata for the registry and devices",
                  "fedpeft keys tuf-init tuf --operator-key keys/operator.key --channels canary stable")
    tuf.add_argument("out", help="folder to create: offline/ (root and channel keys), registry/ (online keys and "
                                 "metadata for `registry serve --tuf`), root.json (for devices)")
    tuf.add_argument("--operator-key", required=True, help="the operator key: signs targets and release.json, and "
                                                           "endorses the root for devices that trust only it")
    tuf.add_argument("--channels", nargs="+", type=channel, default=["canary", "stable"],
                     help="one delegated role (and key) per channel (default canary stable)")
    tuf.add_argument("--root-keys", type=ROOT_KEYS, default=3, help="root keys to create (default 3)")
    tuf.add_argument("--root-threshold", type=ROOT_KEYS, default=2, help="root keys a root change needs (default 2)")
    tuf.set_defaults(run=_keys_tuf_init)
    rotate = command(keys, "rotate", "add, rotate or revoke a key of a TUF role on the registry (devices follow); "
                     "with no key change, renew the role's expiry",
                     "fedpeft keys rotate targets --add keys/operator-2.key --remove keys/operator.pub "
                     "--delegator-key tuf/offline/root-1.key --delegator-key tuf/offline/root-2.key "
                     "--role-key keys/operator.key --ca-cert tls/ca.crt")
    registry_arguments(rotate)
    rotate.add_argument("role", type=channel, help="root, targets, or a channel (canary, stable, ...)")
    rotate.add_argument("--add", action="append", default=[], help="private key to add (it signs the role's next version)")
    rotate.add_argument("--remove", action="append", default=[], help="public key to remove: revoked from now on")
    rotate.add_argument("--delegator-key", action="append", required=True,
                        help="keys of the delegating role: root keys (a threshold; for root, the old ones) for root "
                             "and targets, the operator key for a channel")
    rotate.add_argument("--role-key", action="append", default=[], help="the role's current private keys you hold")
    rotate.add_argument("--threshold", type=ROOT_KEYS, help="the role's new signature threshold")
    rotate.set_defaults(run=_keys_rotate)


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


def _keys_tuf_init(args: argparse.Namespace) -> None:
    from fedpeft.core.trust.keys import load_operator_key
    from fedpeft.server.registry.tuf_operator import init_repository

    made = init_repository(Path(args.out), load_operator_key(Path(args.operator_key)), tuple(args.channels),
                           args.root_keys, args.root_threshold)
    print(f"TUF keys and metadata in {args.out}: offline keys (root x{args.root_keys}, threshold "
          f"{args.root_threshold}; {', '.join(args.channels)}) in {made.offline}, keep them off the registry host; "
          f"`fedpeft registry serve --tuf {made.registry}`; devices: `fedpeft device pull --trusted-root {made.root}`")


def _keys_rotate(args: argparse.Namespace) -> None:
    from fedpeft.core.trust.keys import load_public_key
    from fedpeft.server.registry.tuf_operator import rotate

    with registry_client(args) as client:
        accepted = rotate(client, args.role, add=private_keys(args.add),
                          remove=[load_public_key(Path(path)) for path in args.remove], delegator_keys=private_keys(args.delegator_key), role_keys=private_keys(args.role_key),
                          threshold=args.threshold)
    print("accepted: " + ", ".join(f"{role} v{version}" for role, version in accepted)
          + (f"; revoked {len(args.remove)} key(s)" if args.remove else ""))
