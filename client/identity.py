"""The node's signing key: which Ed25519 key signs this node's deltas.

A deployed node names its key file in its node config (`key-file=...`); simulated nodes
find theirs as `client-<partition-id>.key` in the folder that FEDPEFT_KEYS_DIR names. A
device node also names the operator's public key it checks its training export with.
An encrypted key's passphrase comes from FEDPEFT_KEY_PASSPHRASE.
"""

from __future__ import annotations

import os
from functools import lru_cache
from pathlib import Path

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from fedpeft.core.errors import ConfigError
from fedpeft.core.trust.keys import load_private_key, load_public_key, passphrase_from_env

KEYS_DIR_ENV = "FEDPEFT_KEYS_DIR"
PASSPHRASE_ENV = "FEDPEFT_KEY_PASSPHRASE"
OPERATOR_KEY_ENV = "FEDPEFT_OPERATOR_PUB"  # the operator public key a node is provisioned with


def simulated_key_path(keys_dir: Path, partition: int) -> Path:
    return Path(keys_dir) / f"client-{partition}.key"


def key_path(node_config: dict, partition: int) -> Path:
    if node_config.get("key-file"):
        return Path(str(node_config["key-file"]))
    if os.environ.get(KEYS_DIR_ENV):
        return simulated_key_path(Path(os.environ[KEYS_DIR_ENV]), partition)
    raise ConfigError(f"this node has no signing key: set key-file in its node config (or {KEYS_DIR_ENV})")


def signing_key(node_config: dict, partition: int) -> Ed25519PrivateKey:
    return _load(key_path(node_config, partition))


def operator_key(node_config: dict | None = None) -> Ed25519PublicKey:
    """The operator key that signed what the node runs (a device's training export): the
    node config's `operator-key` file (a deployed device node), else FEDPEFT_OPERATOR_PUB."""
    configured = (node_config or {}).get("operator-key") or os.environ.get(OPERATOR_KEY_ENV)
    if not configured:
        raise ConfigError(f"this node has no operator key to check exports with: set operator-key in its node "
                          f"config (or {OPERATOR_KEY_ENV})")
    return _public(Path(str(configured)))


@lru_cache(maxsize=None)
def _public(path: Path) -> Ed25519PublicKey:
    return load_public_key(path)


@lru_cache(maxsize=None)
def _load(path: Path) -> Ed25519PrivateKey:
    return load_private_key(path, passphrase_from_env(PASSPHRASE_ENV))
