"""Ed25519 keys: client and operator key files, and the server's enrollment list.

Key files are PEM (PKCS#8 private, SubjectPublicKeyInfo public), so `openssl` and other
tools read them. A key is named by its key id: the SHA-256 of its raw 32-byte public key.
"""

from __future__ import annotations

import json
import os
import stat
import time
from dataclasses import dataclass
from pathlib import Path

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from fedpeft.core.errors import ConfigError, IntegrityError

from .atomic import write_atomic, write_new_private
from .files import UnreadableFile, read_small
from .hashing import sha256_hex
from .json_reader import JSONRefused, parse_json_object

PRIVATE_KEY_MODE = 0o600
OPERATOR_PASSPHRASE_ENV = "FEDPEFT_OPERATOR_PASSPHRASE"
KEYRING_FORMAT = 1

KEY_FILE_BYTES = 64 * 1024  # a PEM key is well under 1 KiB


def raw_public_bytes(public_key: Ed25519PublicKey) -> bytes:
    return public_key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)


def key_id(public_key: Ed25519PublicKey) -> str:
    return sha256_hex(raw_public_bytes(public_key))


def public_key_path(private_path: Path) -> Path:
    return private_path.with_name(private_path.name.removesuffix(".key") + ".pub")


def new_key_pair(private_path: Path, passphrase: bytes | None = None) -> str:
    """Write `<name>.key` (mode 0600) and `<name>.pub`; never overwrites; returns the key id."""
    private_path = Path(private_path)
    public_path = public_key_path(private_path)
    for path in (private_path, public_path):
        if path.exists():
            raise ConfigError(f"{path} already exists; refusing to overwrite a key")
    key = Ed25519PrivateKey.generate()
    encryption = (serialization.BestAvailableEncryption(passphrase) if passphrase
                  else serialization.NoEncryption())
    write_new_private(private_path, key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                                      encryption), PRIVATE_KEY_MODE)
    public_path.write_bytes(key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo))
    return key_id(key.public_key())


def load_private_key(path: Path, passphrase: bytes | None = None) -> Ed25519PrivateKey:
    path = Path(path)
    try:
        mode = stat.S_IMODE(path.stat().st_mode)
        data = read_small(path, KEY_FILE_BYTES)
    except (OSError, UnreadableFile) as exc:
        raise ConfigError(f"cannot read private key {path}: {getattr(exc, 'strerror', None) or exc}") from exc
    if mode & 0o077:
        raise ConfigError(f"private key {path} is readable by others (mode {mode:o}); run chmod 600 {path}")
    try:
        key = serialization.load_pem_private_key(data, password=passphrase)
    except TypeError as exc:  # encrypted without a passphrase, or a passphrase for a plain key
        raise ConfigError(f"private key {path}: {exc}") from exc
    except ValueError as exc:
        raise ConfigError(f"private key {path}: not a PEM private key, or a wrong passphrase") from exc
    if not isinstance(key, Ed25519PrivateKey):
        raise ConfigError(f"private key {path} is {type(key).__name__}, not Ed25519")
    return key


def load_public_key(path: Path) -> Ed25519PublicKey:
    path = Path(path)
    try:
        data = read_small(path, KEY_FILE_BYTES)
    except UnreadableFile as exc:
        raise ConfigError(f"cannot read public key {exc}") from exc
    try:
        key = serialization.load_pem_public_key(data)
    except ValueError as exc:
        raise ConfigError(f"public key {path}: not a PEM public key") from exc
    if not isinstance(key, Ed25519PublicKey):
        raise ConfigError(f"public key {path} is {type(key).__name__}, not Ed25519")
    return key


def passphrase_from_env(variable: str) -> bytes | None:
    value = os.environ.get(variable)
    return value.encode() if value else None


def load_operator_key(path: Path) -> Ed25519PrivateKey:
    """The operator's signing key; an encrypted one's passphrase comes from FEDPEFT_OPERATOR_PASSPHRASE."""
    return load_private_key(Path(path), passphrase_from_env(OPERATOR_PASSPHRASE_ENV))


def verify_signature(public_key: Ed25519PublicKey, signature: bytes, payload: bytes) -> bool:
    try:
        public_key.verify(signature, payload)
    except InvalidSignature:
        return False
    return True


@dataclass(frozen=True)
class EnrolledKey:
    key_id: str
    name: str
    public_key: Ed25519PublicKey
    enrolled_at: float


class Keyring:
    """The server's enrollment list: which client public keys may sign deltas.

    Stored as JSON (`{"format": 1, "keys": {key_id: {name, public_key, enrolled_at}}}`)
    with the raw public keys in hex; rewritten atomically, so a failed enrollment leaves
    the previous list intact.
    """

    def __init__(self, path: Path | None = None, keys: dict[str, EnrolledKey] | None = None) -> None:
        self.path = Path(path) if path is not None else None
        self.keys: dict[str, EnrolledKey] = dict(keys or {})

    @classmethod
    def load(cls, path: Path) -> Keyring:
        """The list at `path`; an absent file is an empty list."""
        path = Path(path)
        if not path.exists():
            return cls(path)
        try:
            text = read_small(path).decode()
        except (UnreadableFile, UnicodeDecodeError) as exc:
            raise IntegrityError(f"keyring {path} is unreadable: {exc}") from exc
        return cls.from_json(text, path)

    @classmethod
    def from_json(cls, text: str, path: Path | None = None) -> Keyring:
        """A list from its JSON text (a keyring file, or the copy a server checkpoint holds)."""
        try:
            data = parse_json_object(text, f"keyring {path or '(checkpoint copy)'}")
            if data.get("format") != KEYRING_FORMAT:
                raise ValueError(f"unsupported format {data.get('format')!r}")
            keys = {}
            for kid, entry in data["keys"].items():
                public = Ed25519PublicKey.from_public_bytes(bytes.fromhex(entry["public_key"]))
                if key_id(public) != kid:
                    raise ValueError(f"entry {kid[:12]} holds the key {key_id(public)[:12]}")
                keys[kid] = EnrolledKey(kid, str(entry["name"]), public, float(entry["enrolled_at"]))
        except (JSONRefused, ValueError, KeyError, TypeError, AttributeError) as exc:
            raise IntegrityError(f"keyring {path or '(checkpoint copy)'} is unreadable: {exc}") from exc
        return cls(path, keys)

    def enroll(self, name: str, public_key: Ed25519PublicKey) -> EnrolledKey:
        kid = key_id(public_key)
        if not name:
            raise ConfigError("an enrolled key needs a name")
        if kid in self.keys:
            raise ConfigError(f"key {kid[:12]} is already enrolled as {self.keys[kid].name!r}")
        taken = [k for k in self.keys.values() if k.name == name]
        if taken:
            raise ConfigError(f"name {name!r} already belongs to key {taken[0].key_id[:12]}")
        entry = EnrolledKey(kid, name, public_key, time.time())
        self.keys[kid] = entry
        return entry

    def get(self, kid: str) -> EnrolledKey | None:
        return self.keys.get(kid)

    def to_json(self) -> str:
        data = {"format": KEYRING_FORMAT, "keys": {
            k.key_id: {"name": k.name, "public_key": raw_public_bytes(k.public_key).hex(), "enrolled_at": k.enrolled_at}
            for k in sorted(self.keys.values(), key=lambda k: k.name)
        }}
        return json.dumps(data, indent=1, sort_keys=True) + "\n"

    def save(self) -> None:
        if self.path is None:
            raise ConfigError("this keyring has no file to save to")
        write_atomic(self.path, self.to_json().encode())
