"""Hostile device folders and adapter folders (issue 23, findings 6 and 7): a device slot
never follows a link or a path out of its folder, an adapter ONNX Runtime would choke on
is refused by name, adapter exports keep a version floor, and `fedpeft.load_adapter`
verifies before it parses and bounds what it reads. Real registry, real exports, real
files; every refusal is an IntegrityError with a name, never a library's own error."""

from __future__ import annotations

import json
import shutil
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from conftest import DATA, registry_trusting

from fedpeft import load_adapter
from fedpeft.cli import main
from fedpeft.core.errors import ConfigError, IntegrityError
from fedpeft.core.training.data import client_data
from fedpeft.core.training.settings import TrainSettings
from fedpeft.core.trust.files import UnreadableFile, file_sha256
from fedpeft.core.trust.release import MAX_LABELS, ONNX_ADAPTER_FILES, RELEASE_NAME, sign_release, verify_release
from fedpeft.core.trust.signed_files import ManifestError, file_entries, write_signed
from fedpeft.device.personal import PERSONAL_DIR, RECORD, PersonalAdapter, personal_adapter, personalize
from fedpeft.device.predict import ADAPTER_EXPORT_NAME, Predictor, open_export
from fedpeft.device.registry_client import RegistryClient
from fedpeft.device.slot import Device
from fedpeft.device.slot_state import STATE_FILE, release_folder_name
from fedpeft.device.trainer import DeviceTrainer
from fedpeft.export.exporter import ExportRequest, export_adapter_only
from fedpeft.server.registry import operator as registry_operator


@pytest.fixture(scope="module")
def world(trained_export, tiny_bert_dir, tmp_path_factory):
    """A real registry holding the trained export's adapter as v1 on `stable`, and a device
    slot that pulled it."""
    root = tmp_path_factory.mktemp("hostile-device")
    key = trained_export["key"]
    with registry_trusting(root, key) as (address, ca):
        with RegistryClient(address, ca) as client:
            release = registry_operator.publish(client, key, trained_export["root"] / "adapter", "stable")
            device = Device(root / "device", key.public_key(), release.base_id)
            assert device.pull(client).version == 1
        yield {**trained_export, "root": root, "trained_root": trained_export["root"], "model": tiny_bert_dir,
               "pub": trained_export["root"] / "operator.pub", "address": address, "ca": ca, "release": release,
               "device": device}


def _client(world) -> RegistryClient:
    return RegistryClient(world["address"], world["ca"])


def _slot_copy(world, tmp_path) -> Path:
    folder = tmp_path / "device"
    shutil.copytree(world["device"].folder, folder, symlinks=True)
    return folder


def _open(world, folder: Path) -> Device:
    return Device(folder, world["key"].public_key(), world["release"].base_id)


def _state(folder: Path) -> dict:
    return json.loads((folder / STATE_FILE).read_text())


# -- finding 6: state.json -------------------------------------------------------------

def _outside(state: dict, folder: Path) -> dict:
    """Point `current` at a copy of its own (valid, signed) release outside the slot."""
    outside = folder.parent / "elsewhere" / state["current"]["folder"]
    shutil.copytree(folder / "releases" / state["current"]["folder"], outside)
    return {**state, "current": {**state["current"], "folder": f"../../elsewhere/{state['current']['folder']}"}}


@pytest.mark.parametrize("tamper", [
    _outside,
    lambda s, f: {**s, "current": {**s["current"], "folder": "/tmp"}},
    lambda s, f: {**s, "current": {**s["current"], "folder": "v1-" + "0" * 12}},            # another id's name
    lambda s, f: {**s, "current": {**s["current"], "folder": "v2-" + s["current"]["release_id"][:12]}},
    lambda s, f: {**s, "current": {**s["current"], "version": 2}},                          # above the floor
    lambda s, f: {**s, "floor": 0},                                                         # floor reset
    lambda s, f: {**s, "floor": -1},
    lambda s, f: {**s, "seen": []},
    lambda s, f: {**s, "current": [1, 2]},
    lambda s, f: {**s, "current": {**s["current"], "extra": 1}},
    lambda s, f: {**s, "previous": {**s["current"], "folder": "."}},
    lambda s, f: [s],
], ids=["outside", "absolute", "other-id", "other-version", "above-floor", "floor-reset", "negative-floor",
        "unseen", "list-entry", "extra-key", "dot-folder", "not-an-object"])
def test_a_state_file_pointing_anywhere_else_is_refused_by_name(world, tmp_path, tamper):
    folder = _slot_copy(world, tmp_path)
    (folder / STATE_FILE).write_text(json.dumps(tamper(_state(folder), folder)))
    with pytest.raises(IntegrityError, match=r"device state .* is unusable"):
        _open(world, folder)


@pytest.mark.parametrize("data", [b"[" * 100_000 + b"]" * 100_000, b'{"floor": NaN}', b"\xff", b"{"])
def test_a_state_file_that_is_not_json_is_refused_by_name(world, tmp_path, data):
    folder = _slot_copy(world, tmp_path)
    (folder / STATE_FILE).write_bytes(data)
    with pytest.raises(IntegrityError, match="is unusable"):
        _open(world, folder)


def test_a_release_folder_must_hold_the_release_state_json_names(world, tmp_path):
    """state.json names release A, its folder holds another valid release: refused."""
    folder = _slot_copy(world, tmp_path)
    current = folder / "releases" / _state(folder)["current"]["folder"]
    sign_release(current, world["key"], version=1, base_id=world["release"].base_id,
                 template_id=world["template"].template_id, labels=world["release"].labels, parent=None,
                 metrics={"re-signed": 1.0}, valid_days=1)  # another release id, same folder
    with pytest.raises(ManifestError, match="state-mismatch"):
        _open(world, folder).current_release()


# -- finding 6: links planted in the slot -------------------------------------------------

@pytest.fixture(scope="module")
def v2(world):
    """The adapter published again (v2): a device at v1 has something to pull."""
    with _client(world) as client:
        return registry_operator.publish(client, world["key"], world["trained_root"] / "adapter", "stable")


@pytest.mark.parametrize("dangling", [False, True])
def test_a_link_planted_under_downloads_is_refused_and_nothing_outside_is_written(world, v2, tmp_path, dangling):
    folder = _slot_copy(world, tmp_path)
    victim = tmp_path / "victim.bin"
    if not dangling:
        victim.write_bytes(b"precious")
    entry = v2.files["adapter_model.safetensors"]
    (folder / "downloads").mkdir(exist_ok=True)
    (folder / "downloads" / f"{entry['sha256']}.part").symlink_to(victim)
    device = _open(world, folder)
    with _client(world) as client, pytest.raises(UnreadableFile, match="symbolic link") as refused:
        device.pull(client)
    assert refused.value.reason == "link"
    assert (not victim.exists()) if dangling else victim.read_bytes() == b"precious"
    assert _open(world, folder).version == 1  # nothing switched


def _snapshot(path: Path) -> object:
    return path.read_bytes() if path.is_file() else sorted(str(p.relative_to(path)) for p in path.rglob("*"))


@pytest.mark.parametrize("planted", ["downloads", "releases", STATE_FILE])
def test_a_slot_folder_or_state_file_that_is_a_link_is_refused(world, v2, tmp_path, planted):
    folder = _slot_copy(world, tmp_path)
    target, elsewhere = folder / planted, tmp_path / "elsewhere"
    if target.exists():
        shutil.move(target, elsewhere)  # the slot's own content, now outside it
    else:
        elsewhere.mkdir()
    if elsewhere.is_dir():
        (elsewhere / "keep-me").write_text("not the slot's")
    target.symlink_to(elsewhere)
    before = _snapshot(elsewhere)
    with pytest.raises(IntegrityError, match="symbolic link"):
        device = _open(world, folder)
        with _client(world) as client:
            device.pull(client)
    assert _snapshot(elsewhere) == before  # nothing written into, nothing pruned out of, the link's target


def test_a_link_planted_in_an_installed_release_is_refused(world, tmp_path):
    folder = _slot_copy(world, tmp_path)
    current = folder / "releases" / _state(folder)["current"]["folder"]
    outside = tmp_path / "adapter_config.json"
    (current / "adapter_config.json").rename(outside)  # same bytes, same hash: only the link is wrong
    (current / "adapter_config.json").symlink_to(outside)
    with pytest.raises(UnreadableFile, match="symbolic link"):
        _open(world, folder).current_release()


# -- finding 6: adapters ONNX Runtime would choke on ----------------------------------------

@pytest.fixture(scope="module")
def personal(world):
    """The slot's release personalized on a client's rows; the slot copied before each use."""
    trainer = DeviceTrainer(world["export"], world["key"].public_key())
    rows = client_data(DATA, 1).train
    personalize(world["device"], trainer, rows, TrainSettings(epochs=1, batch_size=8, max_length=32))
    return world["device"].folder / PERSONAL_DIR


def test_the_personal_adapter_is_bound_to_its_record_by_hash(world, personal, tmp_path):
    folder = _slot_copy(world, tmp_path)
    checked, _ = personal_adapter(_open(world, folder))
    path, texts = checked.path, ["the striker scored twice"]
    assert Predictor(world["export"], world["key"].public_key(), "base", adapter=checked).logits(texts).shape == (1, 4)
    # under the operator key a personal adapter comes only through the slot, never as a path
    with pytest.raises(ManifestError, match="unsigned-adapter"):
        Predictor(world["export"], world["key"].public_key(), "base", adapter=path)
    # a valid .onnx_adapter of the same graph swapped in (ONNX Runtime would load it happily)
    shutil.copyfile(world["export"] / "adapter.onnx_adapter", path)
    with pytest.raises(IntegrityError, match="differs from the SHA-256"):
        personal_adapter(_open(world, folder))
    with pytest.raises(IntegrityError, match="differs from the SHA-256"):  # --no-verify still checks the hash
        Predictor(world["export"], None, "base", adapter=path)
    path.write_bytes(b"garbage" * 10)
    with pytest.raises(IntegrityError, match="differs from the SHA-256"):
        Predictor(world["export"], None, "base", adapter=path)


@pytest.mark.parametrize("damage", ["no-hash", "record-link", "folder-link", "deep"])
def test_a_damaged_personal_record_is_refused_by_name(world, personal, tmp_path, damage):
    folder = _slot_copy(world, tmp_path)
    record = folder / PERSONAL_DIR / RECORD
    if damage == "no-hash":  # written by an older fedpeft, or edited
        fields = json.loads(record.read_text())
        record.write_text(json.dumps({k: v for k, v in fields.items() if k != "adapter_sha256"}))
    elif damage == "record-link":
        (tmp_path / "record.json").write_bytes(record.read_bytes())
        record.unlink()
        record.symlink_to(tmp_path / "record.json")
    elif damage == "folder-link":
        shutil.move(folder / PERSONAL_DIR, tmp_path / "personal")
        (folder / PERSONAL_DIR).symlink_to(tmp_path / "personal")
    else:
        record.write_bytes(b"[" * 100_000 + b"]" * 100_000)
    with pytest.raises(IntegrityError, match="unusable"):
        personal_adapter(_open(world, folder))


def test_predict_refuses_a_bare_or_corrupt_adapter_by_name(world, tmp_path, capsys):
    key, export = world["key"], world["export"]
    bare = tmp_path / "mine.onnx_adapter"
    shutil.copyfile(export / "adapter.onnx_adapter", bare)
    with pytest.raises(ManifestError, match="unsigned-adapter"):
        Predictor(export, key.public_key(), "base", adapter=bare)
    assert main(["predict", str(export), "cats", "--model", "base", "--adapter", str(bare),
                 "--key", str(world["pub"])]) == 1
    err = capsys.readouterr().err
    assert "unsigned-adapter" in err and "Traceback" not in err and len(err.strip().splitlines()) == 1
    # an operator-signed adapter export whose file ONNX Runtime cannot read
    corrupt = _adapter_export(world, tmp_path / "corrupt", world["trained_root"] / "adapter")
    (corrupt / "adapter.onnx_adapter").write_bytes(b"not an adapter" * 8)
    manifest = open_export(corrupt, None, name=ADAPTER_EXPORT_NAME)
    write_signed(corrupt, ADAPTER_EXPORT_NAME, {**manifest, "files": file_entries(corrupt, ["adapter.onnx_adapter"])},
                 key)
    with pytest.raises(IntegrityError, match="does not load in ONNX Runtime"):
        Predictor(_export_copy(world, tmp_path), key.public_key(), "base", adapter=corrupt)


def test_a_forged_personal_record_does_not_make_an_adapter_trusted(world, tmp_path, capsys):
    """Anyone can write a personal.json naming any release id and the file's own SHA-256:
    under the operator key an .onnx_adapter given by path is refused even with one beside it."""
    forged = tmp_path / "personal" / "adapter.onnx_adapter"
    forged.parent.mkdir()
    shutil.copyfile(world["export"] / "adapter.onnx_adapter", forged)
    record = PersonalAdapter("ab" * 32, 1, world["release"].base_id, 1, 1, 0.0, "2024-01-01T00:00:00+00:00",
                             file_sha256(forged, follow_links=False))
    (forged.parent / RECORD).write_text(record.to_json())
    with pytest.raises(ManifestError, match="unsigned-adapter"):
        Predictor(world["export"], world["key"].public_key(), "base", adapter=forged)
    assert main(["predict", str(world["export"]), "cats", "--model", "base", "--adapter", str(forged),
                 "--key", str(world["pub"])]) == 1
    err = capsys.readouterr().err
    assert "unsigned-adapter" in err and "Traceback" not in err


def _export_copy(world, tmp_path) -> Path:
    """A private copy of the session's export: the adapter floor is written into it."""
    copy = tmp_path / "export"
    if not copy.exists():
        shutil.copytree(world["export"], copy)
    return copy


def _adapter_export(world, out: Path, adapter: Path) -> Path:
    request = ExportRequest(adapter, out, world["model"], release_key=world["key"].public_key(), data=DATA)
    export_adapter_only(request, world["export"], world["key"].public_key(), world["key"])
    return out


def test_an_older_adapter_export_does_not_load_after_a_newer_one(world, v2, tmp_path):
    key = world["key"].public_key()
    export = _export_copy(world, tmp_path)
    older = _adapter_export(world, tmp_path / "v1", world["trained_root"] / "adapter")
    newer_release = tmp_path / "v2-release"
    shutil.copytree(world["trained_root"] / "adapter", newer_release)
    sign_release(newer_release, world["key"], version=2, base_id=world["release"].base_id,
                 template_id=world["template"].template_id, labels=world["release"].labels, parent=None, metrics={},
                 valid_days=1)
    newer = _adapter_export(world, tmp_path / "v2", newer_release)
    Predictor(export, key, "base", adapter=older)   # v1: the floor is 0
    Predictor(export, key, "base", adapter=newer)   # v2 raises it
    Predictor(export, key, "base", adapter=newer)   # the same version again is fine
    with pytest.raises(ManifestError, match="older-version"):
        Predictor(export, key, "base", adapter=older)
    (export / "adapter-floor.json").unlink()
    (export / "adapter-floor.json").symlink_to(tmp_path / "v1" / "adapter.json")
    with pytest.raises(ManifestError, match="symbolic link"):
        Predictor(export, key, "base", adapter=newer)


def _release_with_onnx_adapter(world, tmp_path, version: int):
    """A signed release folder at `version` carrying an `fedpeft export --onto` .onnx_adapter."""
    folder = tmp_path / f"release-v{version}"
    shutil.copytree(world["trained_root"] / "adapter", folder)
    sign = dict(version=version, base_id=world["release"].base_id, template_id=world["template"].template_id,
                labels=world["release"].labels, parent=None, metrics={}, valid_days=1)
    sign_release(folder, world["key"], **sign)
    onnx = _adapter_export(world, tmp_path / f"onnx-v{version}", folder)
    for name in ONNX_ADAPTER_FILES:
        shutil.copyfile(onnx / name, folder / name)
    return folder, sign_release(folder, world["key"], **sign)  # now listing the .onnx_adapter files too


def test_an_older_release_folder_given_as_adapter_does_not_load_after_a_newer_one(world, tmp_path, capsys):
    """A release folder given as --adapter keeps the export's floor (on its release version),
    as an adapter export does; the slot's own current release (--state) does not, so a local
    `device rollback` still predicts."""
    key = world["key"].public_key()
    export = _export_copy(world, tmp_path)
    (older, v1), (newer, v2) = (_release_with_onnx_adapter(world, tmp_path, v) for v in (1, 2))
    Predictor(export, key, "base", adapter=older)
    Predictor(export, key, "base", adapter=newer)  # raises the floor to 2
    with pytest.raises(ManifestError, match="older-version"):
        Predictor(export, key, "base", adapter=older)
    assert json.loads((export / "adapter-floor.json").read_text())["release_version"] == 2
    # a slot at v2 with v1 before it, rolled back on the device: predict --state still works
    slot = tmp_path / "device"
    entries = [{"version": r.version, "release_id": r.release_id,
                "folder": release_folder_name(r.version, r.release_id)} for r in (v1, v2)]
    for source, entry in zip((older, newer), entries):
        shutil.copytree(source, slot / "releases" / entry["folder"])
    (slot / STATE_FILE).write_text(json.dumps({"base_id": world["release"].base_id, "current": entries[1],
                                               "previous": entries[0], "floor": 2,
                                               "seen": [v1.release_id, v2.release_id]}))
    common = ["--state", str(slot), "--key", str(world["pub"]), "--base-id", world["release"].base_id]
    assert main(["predict", str(export), "cats", *common]) == 0
    assert main(["device", "rollback", *common]) == 0
    assert _state(slot)["current"]["version"] == 1
    assert main(["predict", str(export), "cats", *common]) == 0, capsys.readouterr().err
    with pytest.raises(ManifestError, match="older-version"):  # the same folder given as --adapter: the floor
        Predictor(export, key, "base", adapter=slot / "releases" / entries[0]["folder"])


# -- issue 24 item 8: predict on an expired slot ---------------------------------------------

def test_predict_on_a_slot_whose_release_has_expired_refuses(world, tmp_path, capsys):
    """A release installed while it was valid and since expired (signed three days ago for
    one day): `predict --state` refuses it, with no wall clock to wait on."""
    folder = tmp_path / "device"
    base_id = world["release"].base_id
    stale = tmp_path / "stale"
    shutil.copytree(world["trained_root"] / "adapter", stale)
    release = sign_release(stale, world["key"], version=1, base_id=base_id, template_id=world["template"].template_id,
                           labels=world["release"].labels, parent=None, metrics={}, valid_days=1,
                           now=datetime.now(UTC) - timedelta(days=3))
    name = release_folder_name(release.version, release.release_id)
    shutil.copytree(stale, folder / "releases" / name)
    (folder / STATE_FILE).write_text(json.dumps({
        "base_id": base_id, "current": {"version": 1, "release_id": release.release_id, "folder": name},
        "previous": None, "floor": 1, "seen": [release.release_id]}))
    verify_release(folder / "releases" / name, world["key"].public_key(), now=datetime.now(UTC) - timedelta(days=2.5))
    with pytest.raises(ManifestError, match="expired"):
        _open(world, folder).current_release()
    code = main(["predict", str(world["export"]), "cats", "--state", str(folder), "--key", str(world["pub"]),
                 "--base-id", base_id])
    err = capsys.readouterr().err
    assert code == 1 and "expired" in err and "Traceback" not in err


# -- finding 7: fedpeft.load_adapter ------------------------------------------------------

@pytest.fixture
def adapter_copy(world, tmp_path) -> Path:
    copy = tmp_path / "adapter"
    shutil.copytree(world["trained_root"] / "adapter", copy)
    return copy


def test_load_adapter_verifies_before_it_parses(world, adapter_copy, tiny_bert_dir):
    (adapter_copy / "adapter_config.json").write_bytes(b"[" * 100_000 + b"]" * 100_000)
    with pytest.raises(ManifestError) as refused:
        load_adapter(adapter_copy, key=world["pub"], model=tiny_bert_dir)
    assert refused.value.reason == "file-mismatch"  # the signature check spoke first, not the parser


@pytest.mark.parametrize("config", [
    b"{", b"[1]", b"\xff\xfe", b"[" * 100_000 + b"]" * 100_000, b'{"r": NaN}',
    {"base_model_name_or_path": 5}, {"peft_type": "NOPE"}, {"r": "x"}, {"target_modules": 7},
    {"modules_to_save": [[1]]}, {"lora_alpha": "q"}, {"r": -1}, "drop:peft_type",
], ids=lambda c: str(c)[:24])
def test_load_adapter_refuses_any_malformed_config_with_one_named_error(adapter_copy, tiny_bert_dir, config):
    path = adapter_copy / "adapter_config.json"
    good = json.loads(path.read_text())
    if isinstance(config, bytes):
        path.write_bytes(config)
    elif config == "drop:peft_type":
        path.write_text(json.dumps({k: v for k, v in good.items() if k != "peft_type"}))
    else:
        path.write_text(json.dumps({**good, **config}))
    with pytest.raises(ManifestError):
        load_adapter(adapter_copy, model=tiny_bert_dir)


def test_load_adapter_refuses_a_config_linked_from_outside(adapter_copy, tiny_bert_dir):
    outside = adapter_copy.parent / "outside.json"
    (adapter_copy / "adapter_config.json").rename(outside)
    (adapter_copy / "adapter_config.json").symlink_to(outside)
    with pytest.raises(ManifestError, match="symbolic link") as refused:
        load_adapter(adapter_copy, model=tiny_bert_dir)
    assert refused.value.reason == "link"


@pytest.mark.parametrize("labels, reason", [
    (b"[" + b"0," * 19_999_999 + b"0]", "too-large"),  # 20M labels: the reader's size bound, not a MemoryError
    (["x"] * (MAX_LABELS + 1), "too-many-labels"),
    (["a", "b", "c", "d", "e"], "label-mismatch"),  # the head has 4 rows
    ("abcd", "malformed"),
    ([1, 2, 3, 4], "malformed"),
])
def test_load_adapter_bounds_unsigned_labels_before_they_size_the_head(adapter_copy, tiny_bert_dir, labels, reason):
    manifest = json.loads((adapter_copy / f"{RELEASE_NAME}.json").read_bytes())
    text = json.dumps({**manifest, "labels": "LABELS"}).encode()
    encoded = labels if isinstance(labels, bytes) else json.dumps(labels).encode()
    (adapter_copy / f"{RELEASE_NAME}.json").write_bytes(text.replace(b'"LABELS"', encoded))
    with pytest.raises(ManifestError) as refused:
        load_adapter(adapter_copy, model=tiny_bert_dir)
    assert refused.value.reason == reason


def test_load_adapter_still_loads_a_signed_or_unsigned_adapter_with_its_labels(world, adapter_copy, tiny_bert_dir):
    signed = load_adapter(adapter_copy, key=world["pub"], model=tiny_bert_dir)
    assert signed.release is not None and signed.labels == world["release"].labels
    loaded = load_adapter(adapter_copy, model=tiny_bert_dir)
    assert loaded.release is None and loaded.labels == world["release"].labels
    with pytest.raises(ConfigError, match="give its transformers folder"):
        load_adapter(adapter_copy)
