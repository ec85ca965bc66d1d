"""SuperNode authentication keys: which SuperNode may connect to the SuperLink.

Flower's node authentication wants an elliptic-curve key (NIST P-384 here), the private
half in OpenSSH format for `flower-supernode --auth-supernode-private-key`, the public
half for `flwr supernode register`. This key only proves which node speaks; the node's
Ed25519 key (core/keys.py) signs its deltas.
"""

from __future__ import annotations

from pathlib import Path

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from fedpeft.core.trust.atomic import write_atomic, write_new_private
from fedpeft.core.trust.keys import public_key_path


def new_node_auth_key(path: Path) -> Path:
    """Write PATH (mode 600, never overwritten) and PATH.pub; returns the public key's path."""
    key = ec.generate_private_key(ec.SECP384R1())
    write_new_private(path, key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.OpenSSH,
                                              serialization.NoEncryption()))
    public = public_key_path(path)
    write_atomic(public, key.public_key().public_bytes(serialization.Encoding.OpenSSH,
                                                       serialization.PublicFormat.OpenSSH) + b"\n")
    return public
