"""A device node's trust boundary: the training export the install message carries is
checked by name here (core/wire/install.py) and by signature, hashes, base, template and
listing before it is stored (device/export_cache.py); its own rows are cut as a PyTorch
node cuts its partition (core/training/data.py `own_data`). Bad input is refused by name
and leaves nothing stored."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from conftest import DATA
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from flwr.app import ConfigRecord, RecordDict

from fedpeft.core.errors import DataError, IntegrityError
from fedpeft.core.training import synthetic_data
from fedpeft.core.training.data import client_data, own_data
from fedpeft.core.trust.signed_files import ManifestError
from fedpeft.core.wire.install import EXPORT_MAX_FILES, export_from_content, install_content
from fedpeft.device.export_cache import ExportCache

OTHER_ID = "ab" * 32


@pytest.fixture(scope="module")
def sent(tiny_training_export, tiny_package):
    """A run's training export as the install message carries it, and what it was made for."""
    made = tiny_training_export
    content = install_content(made["template"], None, made["folder"])
    return {"files": export_from_content(content), "base": tiny_package.base_id,
            "template": made["template"].template_id, "key": made["key"].public_key()}


def test_a_verified_export_is_stored_once_and_found_again(sent, tmp_path):
    cache = ExportCache(tmp_path)
    assert not cache.has(sent["base"], sent["template"])
    path = cache.put(sent["files"], sent["base"], sent["template"], sent["key"])
    assert cache.has(sent["base"], sent["template"]) and (path / "export.json").is_file()
    assert set(p.relative_to(path).as_posix() for p in path.rglob("*") if p.is_file()) == set(sent["files"])
    assert cache.put({}, sent["base"], sent["template"], sent["key"]) == path  # held: kept as it is


def _flipped(files: dict[str, bytes], name: str) -> dict[str, bytes]:
    data = bytearray(files[name])
    data[len(data) // 2] ^= 1
    return {**files, name: bytes(data)}


@pytest.mark.parametrize("spoil,reason", [
    (lambda s: (_flipped(s["files"], "train.onnx"), s["base"], s["template"], s["key"]), "file-mismatch"),
    (lambda s: (_flipped(s["files"], "export.json"), s["base"], s["template"], s["key"]), "bad-signature"),
    (lambda s: ({k: v for k, v in s["files"].items() if k != "eval.onnx"}, s["base"], s["template"], s["key"]),
     "missing-file"),
    (lambda s: ({**s["files"], "extra.onnx": b"x"}, s["base"], s["template"], s["key"]), "unlisted-file"),
    (lambda s: (s["files"], OTHER_ID, s["template"], s["key"]), "wrong-base"),
    (lambda s: (s["files"], s["base"], OTHER_ID, s["key"]), "wrong-template"),
    (lambda s: (s["files"], s["base"], s["template"], Ed25519PrivateKey.generate().public_key()), "wrong-key"),
])
def test_a_bad_export_is_refused_by_name_and_nothing_is_stored(sent, tmp_path, spoil, reason):
    files, base_id, template_id, key = spoil(sent)
    cache = ExportCache(tmp_path)
    with pytest.raises(ManifestError) as caught:
        cache.put(files, base_id, template_id, key)
    assert caught.value.reason == reason
    assert not cache.has(base_id, template_id)
    assert [p for p in (tmp_path / "exports").iterdir()] == []  # no scratch folder left either


@pytest.mark.parametrize("meta", [
    {"file:../escape": b"x"}, {"file:/etc/passwd": b"x"}, {"file:a/../../b": b"x"}, {"file:~root/x": b"x"},
    {"file:.hidden": b"x"}, {"nofile": b"x"}, {"file:train.onnx": "text, not bytes"},
    {f"file:f{i}": b"x" for i in range(EXPORT_MAX_FILES + 1)},
])
def test_export_entries_that_are_not_plain_relative_files_are_refused(meta):
    with pytest.raises(IntegrityError):
        export_from_content(RecordDict({"export": ConfigRecord(meta)}))


def test_an_install_message_without_an_export_is_refused():
    with pytest.raises(IntegrityError, match="no training export"):
        export_from_content(RecordDict({}))


def test_a_device_nodes_rows_cut_as_a_pytorch_node_cuts_its_partition(tmp_path):
    spec = DATA
    data = client_data(spec, 1)
    rows = [{"text": t, "label": synthetic_data.LABELS[y], "split": split}
            for split, part in (("train", data.train), ("val", data.val), ("test", data.test))
            for t, y in zip(part.texts, part.labels)]
    path = tmp_path / "rows.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in reversed(rows)))
    own = own_data(path, spec, data.client)
    for mine, theirs in ((own.train, data.train), (own.val, data.val), (own.test, data.test)):
        assert sorted(zip(mine.texts, mine.labels)) == sorted(zip(theirs.texts, theirs.labels))
    # without a split column: the seeded 60/20/20 cut, the same for the same name and seed
    plain = tmp_path / "plain.csv"
    plain.write_text("text,label\n" + "".join(f'"{r["text"]}",{r["label"]}\n' for r in rows))
    first, again = own_data(plain, spec, "me"), own_data(plain, spec, "me")
    assert first.train.texts == again.train.texts and len(first.train) == int(len(rows) * 0.6)


@pytest.mark.parametrize("row,message", [
    ({"text": "hi", "label": synthetic_data.LABELS[0], "split": "holdout"}, "split must be one of"),
    ({"text": "hi", "label": "no-such-label", "split": "train"}, "unknown label"),
])
def test_bad_device_rows_are_refused_by_name(tmp_path, row, message):
    path = tmp_path / "rows.jsonl"
    good = {"text": "a", "label": synthetic_data.LABELS[0], "split": "train"}
    path.write_text("".join(json.dumps(r) + "\n" for r in (good, good, row)))
    with pytest.raises(DataError, match=message):
        own_data(path, DATA, "me")


def test_device_join_refuses_a_missing_file_in_one_line(tmp_path, capsys):
    from fedpeft.cli import main

    for name in ("ca.crt", "auth.key", "client.key", "operator.pub"):
        (tmp_path / name).write_text("x")
    code = main(["device", "join", "--superlink", "127.0.0.1:9092", "--ca-cert", str(tmp_path / "ca.crt"),
                 "--auth-key", str(tmp_path / "auth.key"), "--key", str(tmp_path / "client.key"),
                 "--operator-key", str(tmp_path / "operator.pub"), "--data", str(tmp_path / "rows.csv"),
                 "--state", str(tmp_path / "state")])
    err = capsys.readouterr().err
    assert code == 1 and err.count("\n") == 1 and "--data" in err and "rows.csv" in err  # device commands: 1
    assert not Path(tmp_path / "state").exists()
