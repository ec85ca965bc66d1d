"""Local files someone else may have placed: checked by type and size before a byte is read."""

from __future__ import annotations

import os
import threading

import pytest

from fedpeft.core.config import load_config
from fedpeft.core.errors import ConfigError, DataError, IntegrityError
from fedpeft.core.training.data import read_rows
from fedpeft.core.trust.files import UnreadableFile, open_append, read_small
from fedpeft.core.trust.keys import Keyring, load_public_key
from fedpeft.core.trust.signed_files import ManifestError, check_files


def test_a_link_to_a_device_a_fifo_or_a_folder_is_refused_without_reading(tmp_path):
    (tmp_path / "zero.pub").symlink_to("/dev/zero")  # read whole, this would never end
    os.mkfifo(tmp_path / "pipe.toml")                 # opened, this would block for ever
    (tmp_path / "folder.csv").mkdir()
    done = threading.Event()

    def attempts():
        with pytest.raises(ConfigError, match="not a regular file"):
            load_public_key(tmp_path / "zero.pub")
        with pytest.raises(ConfigError, match="not a regular file"):
            load_config(tmp_path / "pipe.toml")
        with pytest.raises(DataError, match="not a regular file"):
            read_rows(tmp_path / "folder.csv")
        with pytest.raises(IntegrityError, match="not a regular file"):
            Keyring.load(tmp_path / "zero.pub")
        done.set()

    worker = threading.Thread(target=attempts, daemon=True)
    worker.start()
    worker.join(timeout=20)
    assert done.is_set(), "a check read or blocked on a device or FIFO"


def test_a_file_over_its_limit_is_refused_by_its_size(tmp_path):
    big = tmp_path / "big.json"
    with open(big, "wb") as handle:
        handle.truncate(64 * 1024 * 1024)  # sparse: no disk used, but a 64 MiB file
    with pytest.raises(UnreadableFile, match="more than") as refused:
        read_small(big)
    assert refused.value.reason == "too-large"


def test_a_signed_file_of_another_size_is_refused_before_hashing(tmp_path):
    (tmp_path / "weights.bin").symlink_to("/dev/zero")
    with pytest.raises(ManifestError, match="missing-file"):
        check_files(tmp_path, {"weights.bin": {"size": 10, "sha256": "0" * 64}})
    (tmp_path / "small.bin").write_bytes(b"abc")
    with pytest.raises(ManifestError, match="file-mismatch"):
        check_files(tmp_path, {"small.bin": {"size": 4, "sha256": "0" * 64}})


def test_bad_tls_files_and_state_files_are_one_line_errors_that_leave_nothing(tmp_path):
    import subprocess
    import sys

    from fedpeft.core.trust.keys import new_key_pair

    new_key_pair(tmp_path / "op.key")
    operators = Keyring(tmp_path / "ops.json")
    operators.enroll("ops", load_public_key(tmp_path / "op.pub"))
    operators.save()
    (tmp_path / "bad.pem").write_text("garbage\n")
    (tmp_path / "device").mkdir()
    (tmp_path / "device" / "state.json").write_text("{not json")
    commands = {
        "TLS key": ["registry", "serve", "--store", "store", "--operators", "ops.json", "--tls-cert", "bad.pem",
                    "--tls-key", "bad.pem", "--port", "0"],
        "TLS certificate": ["registry", "list", "--ca-cert", "bad.pem", "--registry", "127.0.0.1:9"],
        "device state": ["device", "rollback", "--state", "device", "--key", "op.pub", "--base-id", "a" * 64],
    }
    for named, args in commands.items():
        proc = subprocess.run([sys.executable, "-m", "fedpeft.cli", *args], cwd=tmp_path, capture_output=True,
                              text=True, timeout=60)
        assert proc.returncode in (1, 2) and "Traceback" not in proc.stderr, proc.stderr
        assert proc.stderr.startswith(f"fedpeft: error: {named}") or named in proc.stderr, proc.stderr
        assert len(proc.stderr.strip().splitlines()) == 1, proc.stderr  # one line, as the name says
    assert not (tmp_path / "store").exists()


def test_signed_file_entries_stream_files_larger_than_a_manifest(tmp_path):
    """Export and release manifests list model files of ~100 MB: hashed as streams, not refused."""
    import hashlib

    from fedpeft.core.trust.files import SMALL_FILE_BYTES
    from fedpeft.core.trust.signed_files import file_entries

    big = tmp_path / "model.onnx"
    with open(big, "wb") as handle:
        handle.truncate(SMALL_FILE_BYTES + 1)
    entries = file_entries(tmp_path, ["model.onnx"])
    digest = hashlib.sha256(b"\0" * (SMALL_FILE_BYTES + 1)).hexdigest()
    assert entries == {"model.onnx": {"sha256": digest, "size": SMALL_FILE_BYTES + 1}}
    check_files(tmp_path, entries)


def test_appending_never_writes_through_a_link_or_into_a_fifo(tmp_path):
    """What a device's download appends to (device/registry_client.fetch_blob): a link
    planted at the part file is refused and its target untouched; a FIFO does not hang."""
    victim = tmp_path / "victim"
    victim.write_bytes(b"keep")
    (tmp_path / "planted.part").symlink_to(victim)
    with pytest.raises(UnreadableFile) as caught:
        open_append(tmp_path / "planted.part")
    assert caught.value.reason == "link" and victim.read_bytes() == b"keep"
    os.mkfifo(tmp_path / "fifo.part")
    with pytest.raises(UnreadableFile) as caught:
        open_append(tmp_path / "fifo.part")
    assert caught.value.reason == "not-a-file"
    with open_append(tmp_path / "new.part") as handle:
        handle.write(b"ab")
    with open_append(tmp_path / "new.part") as handle:
        handle.write(b"cd")
    assert (tmp_path / "new.part").read_bytes() == b"abcd"
