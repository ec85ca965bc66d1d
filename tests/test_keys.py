"""Key files and the enrollment list, with the bad inputs an operator will meet."""

from __future__ import annotations

import json
import os
import stat
import subprocess
import sys

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from fedpeft.core.errors import ConfigError, IntegrityError
from fedpeft.core.trust.keys import Keyring, key_id, load_private_key, load_public_key, new_key_pair, public_key_path


def test_new_key_pair_is_private_and_loads(tmp_path):
    path = tmp_path / "keys" / "client-0.key"
    kid = new_key_pair(path)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    private, public = load_private_key(path), load_public_key(public_key_path(path))
    assert key_id(private.public_key()) == key_id(public) == kid
    public.verify(private.sign(b"x"), b"x")


def test_a_key_is_never_overwritten(tmp_path):
    path = tmp_path / "a.key"
    new_key_pair(path)
    before = path.read_bytes()
    with pytest.raises(ConfigError, match="refusing to overwrite"):
        new_key_pair(path)
    assert path.read_bytes() == before


def test_passphrase_protects_the_key(tmp_path):
    path = tmp_path / "a.key"
    new_key_pair(path, b"correct horse")
    assert b"ENCRYPTED" in path.read_bytes()
    load_private_key(path, b"correct horse")
    with pytest.raises(ConfigError, match="passphrase|encrypted"):
        load_private_key(path)
    with pytest.raises(ConfigError, match="wrong passphrase"):
        load_private_key(path, b"wrong")


def test_a_key_readable_by_others_is_refused(tmp_path):
    path = tmp_path / "a.key"
    new_key_pair(path)
    os.chmod(path, 0o644)
    with pytest.raises(ConfigError, match="chmod 600"):
        load_private_key(path)


def test_keys_of_another_kind_or_no_key_are_named(tmp_path):
    ec_key = ec.generate_private_key(ec.SECP256R1())
    path = tmp_path / "ec.key"
    path.write_bytes(ec_key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                          serialization.NoEncryption()))
    os.chmod(path, 0o600)
    with pytest.raises(ConfigError, match="not Ed25519"):
        load_private_key(path)
    pub = tmp_path / "ec.pub"
    pub.write_bytes(ec_key.public_key().public_bytes(serialization.Encoding.PEM,
                                                      serialization.PublicFormat.SubjectPublicKeyInfo))
    with pytest.raises(ConfigError, match="not Ed25519"):
        load_public_key(pub)
    (tmp_path / "junk.pub").write_text("hello")
    with pytest.raises(ConfigError, match="not a PEM public key"):
        load_public_key(tmp_path / "junk.pub")
    with pytest.raises(ConfigError, match="cannot read"):
        load_public_key(tmp_path / "absent.pub")


def test_keyring_round_trip_and_refusals(tmp_path):
    paths = [tmp_path / f"c{i}.key" for i in range(3)]
    for path in paths:
        new_key_pair(path)
    ring_path = tmp_path / "ring.json"
    ring = Keyring.load(ring_path)
    first = ring.enroll("c0", load_public_key(public_key_path(paths[0])))
    ring.enroll("c1", load_public_key(public_key_path(paths[1])))
    ring.save()
    loaded = Keyring.load(ring_path)
    assert sorted(k.name for k in loaded.keys.values()) == ["c0", "c1"]
    assert key_id(loaded.get(first.key_id).public_key) == first.key_id
    with pytest.raises(ConfigError, match="already enrolled as 'c0'"):
        loaded.enroll("again", load_public_key(public_key_path(paths[0])))
    with pytest.raises(ConfigError, match="name 'c1' already belongs"):
        loaded.enroll("c1", load_public_key(public_key_path(paths[2])))


def test_a_corrupted_keyring_is_refused_not_emptied(tmp_path):
    new_key_pair(tmp_path / "c.key")
    ring_path = tmp_path / "ring.json"
    ring = Keyring(ring_path)
    entry = ring.enroll("c", load_public_key(tmp_path / "c.pub"))
    ring.save()
    data = json.loads(ring_path.read_text())
    data["keys"][entry.key_id]["public_key"] = "00" * 32  # an entry whose key is not its id
    ring_path.write_text(json.dumps(data))
    with pytest.raises(IntegrityError, match="ring.json"):
        Keyring.load(ring_path)
    ring_path.write_text("{not json")
    with pytest.raises(IntegrityError, match="unreadable"):
        Keyring.load(ring_path)


def _cli(*args: str, cwd, env=None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "fedpeft.cli", *args], capture_output=True, text=True,
                          cwd=cwd, env={**os.environ, **(env or {})}, timeout=120)


def test_keys_cli(tmp_path):
    made = _cli("keys", "new", "k/client-0.key", cwd=tmp_path)
    assert made.returncode == 0, made.stderr
    kid = made.stdout.split()[0]
    enrolled = _cli("keys", "enroll", "k/client-0.pub", "--name", "client-0", "--keyring", "ring.json", cwd=tmp_path)
    assert enrolled.returncode == 0, enrolled.stderr
    again = _cli("keys", "enroll", "k/client-0.pub", "--name", "other", "--keyring", "ring.json", cwd=tmp_path)
    assert again.returncode == 2 and "already enrolled" in again.stderr
    listed = _cli("keys", "list", "--keyring", "ring.json", cwd=tmp_path)
    assert listed.stdout.split() == [kid, "client-0"]
    missing = _cli("keys", "new", "k/op.key", "--passphrase-env", "FEDPEFT_TEST_UNSET", cwd=tmp_path)
    assert missing.returncode == 2 and "FEDPEFT_TEST_UNSET" in missing.stderr
    assert not (tmp_path / "k" / "op.key").exists()
    encrypted = _cli("keys", "new", "k/op.key", "--passphrase-env", "PW", cwd=tmp_path, env={"PW": "s3cret"})
    assert encrypted.returncode == 0 and "encrypted" in encrypted.stdout
    load_private_key(tmp_path / "k" / "op.key", b"s3cret")
