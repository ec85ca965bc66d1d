"""Device updates on TUF: a real registry process on 127.0.0.1 over TLS serving python-tuf
metadata, devices following channels through python-tuf's updater, and TUF's attack list
(key rotation, revocation, threshold, channel mix-up, freeze, rollback, mix-and-match) each
refused by name, on the registry when it is asked to store it and on the device when a
compromised registry (one holding the online keys) serves it anyway."""

from __future__ import annotations

import json
import re
import shutil
import sqlite3
import ssl
import time
import urllib.request
from datetime import UTC, datetime, timedelta
from pathlib import Path

import jsonschema
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from prometheus_client.parser import text_string_to_metric_families
from tuf.api.metadata import Metadata

from fedpeft.core.errors import ConfigError
from fedpeft.core.trust.files import UnreadableFile
from fedpeft.core.trust.json_reader import parse_json_object
from fedpeft.core.trust.keys import key_id, load_private_key, new_key_pair
from fedpeft.core.trust.release import sign_promotion
from fedpeft.core.trust.signed_files import ManifestError
from fedpeft.core.trust.tuf_roles import sign, sign_endorsement, with_release
from fedpeft.device.registry_client import RegistryClient, RegistryError
from fedpeft.device.slot import Device
from fedpeft.protos import registry_pb2 as pb
from fedpeft.server.registry import operator
from fedpeft.server.registry.process import RegistryProcess
from fedpeft.server.registry.store import RegistryStore, StoreError
from fedpeft.server.registry.tuf_operator import rotate
from fedpeft.server.registry.tuf_repository import OnlineKeys, TufRepository

from conftest import world_key as _key

grpc = pytest.importorskip("grpc")


@pytest.fixture(scope="module")
def world(tuf_world):
    return tuf_world


@pytest.fixture
def registry(tmp_path, world):
    process = RegistryProcess(tmp_path, world["root"] / "operators.json", world["root"] / "tls",
                              extra=("--tuf", str(world["tuf"].registry))).start()
    yield process
    process.stop()


def _client(registry, world) -> RegistryClient:
    return RegistryClient(registry.address, world["root"] / "tls" / "ca.crt", timeout_s=30)


def _device(folder: Path, world, channel: str = "stable", provisioned: bool = True) -> Device:
    return Device(folder, world["key"].public_key(), world["base_id"], channel,
                  trusted_root=world["tuf"].root.read_bytes() if provisioned else None)


def _publish(client, world, index: int, channel: str = "stable", signer: str = "operator"):
    return operator.publish(client, _key(world, signer), world["root"] / f"adapter-{index}", channel,
                            channel_keys=[_key(world, channel)])


def _refused(device: Device, client, reason: str) -> ManifestError:
    """The pull is refused by `reason` and the device's state is what it was."""
    before = dict(device.state)
    with pytest.raises(ManifestError) as refused:
        device.pull(client)
    assert refused.value.reason == reason, refused.value
    assert device.state == before
    return refused.value


def _store_refuses(client, batch, reason: str) -> None:
    with pytest.raises(RegistryError) as refused:
        client.put_metadata(batch)
    assert f"{reason}:" in str(refused.value), refused.value


def _compromise(registry, world, rows: list[tuple[str, int, bytes]]) -> None:
    """What a compromised registry (it holds the online keys) can do: store any bytes as a
    role's metadata and re-sign snapshot and timestamp over them."""
    store = RegistryStore(registry.root / "store")
    repository = TufRepository(store, OnlineKeys.load(world["tuf"].registry))
    with store.transaction():
        for role, version, body in rows:
            store.db.execute("INSERT OR REPLACE INTO tuf_metadata VALUES (?, ?, ?)", (role, version, body))
        repository._resign(snapshot=True)  # noqa: SLF001 (the attacker's own signing)
    store.close()


def _channel_role(client, world, channel: str, release, signed_with: str, path_channel: str | None = None) -> bytes:
    """`channel`'s next metadata pointing at `release`, listed under `path_channel`'s paths."""
    listed = client.releases(world["base_id"])
    stored = next(e.release for e in listed if e.release.manifest and release.release_id in _ids(e))
    role = with_release(Metadata.from_bytes(client.metadata(channel)), path_channel or channel, world["base_id"],
                        stored.manifest, stored.signature, release.version, release.release_id)
    return sign(role, [_key(world, signed_with)])


def _ids(entry) -> str:
    from fedpeft.core.trust.hashing import sha256_hex

    return sha256_hex(entry.release.manifest)


def test_devices_follow_their_channel_through_tuf(registry, world, tmp_path):
    with _client(registry, world) as client:
        stable, canary = _device(tmp_path / "stable", world), _device(tmp_path / "canary", world, "canary")
        v1 = _publish(client, world, 1, "canary")
        _refused(stable, client, "not-listed")
        assert canary.pull(client).version == 1
        operator.promote(client, world["key"], v1, "stable", channel_keys=[_key(world, "stable")])
        first = stable.pull(client)
        assert (first.status, first.version, first.release_id) == ("installed", 1, v1.release_id)
        assert stable.pull(client).status == "not-modified"
        _publish(client, world, 2, "canary")
        assert canary.pull(client).version == 2 and stable.pull(client).status == "not-modified"
        assert (tmp_path / "stable" / "tuf" / "root_history" / "1.root.json").is_file()
        # a promotion without the channel's metadata, or signed with another channel's key, moves nothing
        with pytest.raises(RegistryError, match="tuf-required"):
            client.promote(*sign_promotion(world["key"], v1, "canary"))
        with pytest.raises(ConfigError, match="not signed by the key"):  # the operator's side checks first
            operator.promote(client, world["key"], v1, "canary", channel_keys=[_key(world, "stable")])
        wrong = pb.RoleMetadata(role="canary", metadata=_channel_role(client, world, "canary", v1, "stable"))
        with pytest.raises(RegistryError, match="below-threshold"):
            client.promote(*sign_promotion(world["key"], v1, "canary"), channel_role=wrong)
        assert canary.pull(client).status == "not-modified" and canary.version == 2


def test_rotating_the_operator_key_and_revoking_the_old_one(registry, world, tmp_path):
    with _client(registry, world) as client:
        device = _device(tmp_path / "device", world)
        _publish(client, world, 1)
        assert device.pull(client).version == 1
        roots = [_key(world, "root-1"), _key(world, "root-2")]
        rotate(client, "targets", add=[_key(world, "operator-2")], remove=[world["key"].public_key()],
               delegator_keys=roots, role_keys=[world["key"]])
        # the device follows the rotation with no new provisioning: v3 is signed by the new key
        v3 = operator.publish(client, _key(world, "operator-2"), world["root"] / "adapter-3", "stable",
                              channel_keys=[_key(world, "stable")])
        assert device.pull(client).release_id == v3.release_id
        offline = Device(device.folder, world["key"].public_key(), world["base_id"])  # no pull: the cached root's keys
        assert offline.current_release().release_id == v3.release_id
        assert set(offline._operator_keys) == {key_id(_key(world, "operator-2").public_key())}  # noqa: SLF001
        # a release signed by the revoked key is refused, even when its channel lists it
        newer = _device(tmp_path / "other", world)
        _publish(client, world, 2)
        assert _refused(newer, client, "revoked-key")
        assert _refused(device, client, "revoked-key")


def test_rotating_a_channel_key(registry, world, tmp_path):
    with _client(registry, world) as client:
        device = _device(tmp_path / "device", world)
        v1 = _publish(client, world, 1)
        assert device.pull(client).version == 1
        rotate(client, "stable", add=[_key(world, "stable-2")], remove=[_key(world, "stable").public_key()],
               delegator_keys=[world["key"]], role_keys=[_key(world, "stable")])
        v2 = operator.publish(client, world["key"], world["root"] / "adapter-2", "stable",
                              channel_keys=[_key(world, "stable-2")])
        assert device.pull(client).release_id == v2.release_id
        # the old stable key moves nothing any more: refused by the registry...
        _store_refuses(client, [("stable", _channel_role(client, world, "stable", v1, "stable"))], "below-threshold")
        # ...and by the device when a compromised registry serves it anyway
        body = _channel_role(client, world, "stable", v1, "stable")
        _compromise(registry, world, [("stable", Metadata.from_bytes(body).signed.version, body)])
        _refused(device, client, "unsigned-metadata")


def test_one_root_key_of_two_cannot_rotate_root(registry, world, tmp_path):
    with _client(registry, world) as client:
        device = _device(tmp_path / "device", world)
        _publish(client, world, 1)
        assert device.pull(client).version == 1
        root = Metadata.from_bytes(client.metadata("root"))
        root.signed.version += 1
        root.signed.roles["targets"].keyids = [next(iter(root.signed.keys))]  # an attacker's targets key
        one_key = sign(root, [_key(world, "root-1")])
        _store_refuses(client, [("root", one_key)], "below-threshold")
        _compromise(registry, world, [("root", 2, one_key)])
        _refused(device, client, "unsigned-metadata")
        # two of three root keys do rotate root, and the device follows
        fixed = Metadata.from_bytes(client.metadata("root", 1))
        fixed.signed.version += 1
        store = sqlite3.connect(registry.root / "store" / "index.sqlite")
        store.execute("DELETE FROM tuf_metadata WHERE role = 'root' AND version = 2")
        store.commit()
        store.close()
        client.put_metadata([("root", sign(fixed, [_key(world, "root-2"), _key(world, "root-3")]))])
        assert device.pull(client).status == "not-modified"
        assert (tmp_path / "device" / "tuf" / "root_history" / "2.root.json").is_file()
        # a chain: root v3 replaces root-1 with a new key, signed by 2 old and 2 new keys; the device walks v2 -> v3
        new_key_pair(tmp_path / "root-4.key")
        rotate(client, "root", add=[load_private_key(tmp_path / "root-4.key")], remove=[_key(world, "root-1").public_key()],
               delegator_keys=[_key(world, "root-2"), _key(world, "root-3")],
               role_keys=[_key(world, "root-2"), _key(world, "root-3")])
        assert device.pull(client).status == "not-modified"
        assert (tmp_path / "device" / "tuf" / "root_history" / "3.root.json").is_file()
        # root-1 alone (now revoked) and root-4 alone are each one key short of root v4
        for keys in ([_key(world, "root-1"), _key(world, "root-2")], [load_private_key(tmp_path / "root-4.key")]):
            nxt = Metadata.from_bytes(client.metadata("root"))
            nxt.signed.version += 1
            _store_refuses(client, [("root", sign(nxt, keys))], "below-threshold")


def test_a_canary_release_offered_on_stable_is_refused(registry, world, tmp_path):
    with _client(registry, world) as client:
        device = _device(tmp_path / "device", world)
        _publish(client, world, 1)
        v2 = _publish(client, world, 2, "canary")
        assert device.pull(client).version == 1
        # the canary key may list only canary/ paths: the registry refuses the rest...
        mixed = _channel_role(client, world, "canary", v2, "canary", path_channel="stable")
        _store_refuses(client, [("canary", mixed)], "outside-channel")
        # ...and a compromised registry that serves it still cannot move stable devices
        _compromise(registry, world, [("canary", Metadata.from_bytes(mixed).signed.version, mixed)])
        assert device.pull(client).status == "not-modified" and device.version == 1
        # nor by serving canary's metadata as stable's
        resigned = Metadata.from_bytes(client.metadata("canary"))
        resigned.signed.version = Metadata.from_bytes(client.metadata("stable")).signed.version + 1
        _compromise(registry, world, [("stable", resigned.signed.version, sign(resigned, [_key(world, "canary")]))])
        _refused(device, client, "unsigned-metadata")


def test_a_frozen_registry_is_refused_once_its_timestamp_expires(world, tmp_path):
    extra = ("--tuf", str(world["tuf"].registry), "--timestamp-valid", "3")
    primary = RegistryProcess(tmp_path, world["root"] / "operators.json", world["root"] / "tls", extra=extra).start()
    try:
        with _client(primary, world) as client:
            device = _device(tmp_path / "device", world)
            _publish(client, world, 1)
            assert device.pull(client).version == 1
            time.sleep(4)  # past one timestamp's validity: the registry has re-signed it since
            assert device.pull(client).status == "not-modified"
    finally:
        primary.kill9()
    # the same store served by a registry that re-signs nothing (a mirror, or a frozen host)
    mirror = RegistryProcess(tmp_path, world["root"] / "operators.json", world["root"] / "tls").start()
    try:
        with _client(mirror, world) as client:
            time.sleep(3.5)
            _refused(device, client, "expired-metadata")
            with pytest.raises(RegistryError, match="read-only"):
                _publish(client, world, 2)
    finally:
        mirror.stop()


def test_rollback_and_mix_and_match_are_refused(registry, world, tmp_path):
    with _client(registry, world) as client:
        device = _device(tmp_path / "device", world)
        _publish(client, world, 1)
        old_timestamp, old_stable = client.metadata("timestamp"), client.metadata("stable")
        _publish(client, world, 2)
        assert device.pull(client).version == 2
        index = sqlite3.connect(registry.root / "store" / "index.sqlite")
        # rollback: the timestamp this device saw before v2
        newest_timestamp = client.metadata("timestamp")
        index.execute("UPDATE tuf_metadata SET body = ? WHERE role = 'timestamp'", (old_timestamp,))
        index.commit()
        _refused(device, client, "rollback")
        index.execute("UPDATE tuf_metadata SET body = ? WHERE role = 'timestamp'", (newest_timestamp,))
        index.commit()
        # mix-and-match: a new snapshot names stable's next version; the registry serves an old one in its place
        _publish(client, world, 1)  # its weights again, as v3
        newest = Metadata.from_bytes(client.metadata("stable")).signed.version
        index.execute("UPDATE tuf_metadata SET body = ? WHERE role = 'stable' AND version = ?", (old_stable, newest))
        index.commit()
        index.close()
        _refused(device, client, "mix-and-match")


def test_a_tuf_device_still_makes_every_check_of_its_own(registry, world, tmp_path):
    """What TUF does not cover stays: a tampered blob, an expired release, another base."""
    with _client(registry, world) as client:
        device = _device(tmp_path / "device", world)
        v1 = _publish(client, world, 1)
        blob = v1.files["adapter_model.safetensors"]["sha256"]
        path = registry.root / "store" / "blobs" / blob[:2] / blob
        original = path.read_bytes()
        path.write_bytes(original[:-4] + b"XXXX")
        _refused(device, client, "file-mismatch")
        path.write_bytes(original)
        assert device.pull(client).version == 1
        with pytest.raises(ManifestError, match="expired"):
            device.pull(client, now=datetime.now(UTC) + timedelta(days=31))
        # python-tuf's cache in the slot: a planted link is refused by name, never followed or read
        (tmp_path / "device" / "tuf" / "stable.json").unlink()
        (tmp_path / "device" / "tuf" / "stable.json").symlink_to("/dev/zero")
        with pytest.raises(UnreadableFile) as planted:
            device.pull(client)
        assert planted.value.reason == "link" and device.version == 1


def test_the_registry_refuses_a_change_that_would_strand_devices(registry, world):
    with _client(registry, world) as client:
        targets = Metadata.from_bytes(client.metadata("targets"))
        targets.signed.version += 1
        del targets.signed.delegations.roles["canary"]  # devices refuse a snapshot that drops a role they saw
        _store_refuses(client, [("targets", sign(targets, [world["key"]]))], "removes-channel")
        again = Metadata.from_bytes(client.metadata("stable"))
        _store_refuses(client, [("stable", sign(again, [_key(world, "stable")]))], "stale-version")
        with pytest.raises(ConfigError, match="online key"):
            rotate(client, "timestamp", add=[], remove=[], delegator_keys=[])


def test_an_installed_device_moves_to_tuf_and_keeps_its_floor(world, tmp_path):
    """A device that trusts only the operator key installs v1 from a registry without TUF;
    the registry then serves TUF metadata; the device's next pull moves it to TUF (the root
    is taken only with the operator key's endorsement) without lowering its floor."""
    legacy = RegistryProcess(tmp_path, world["root"] / "operators.json", world["root"] / "tls").start()
    device = _device(tmp_path / "device", world, provisioned=False)
    try:
        with _client(legacy, world) as client:
            v1 = operator.publish(client, world["key"], world["root"] / "adapter-1", "stable")
            v2 = operator.publish(client, world["key"], world["root"] / "adapter-2", "stable")
            assert device.pull(client).version == 2
    finally:
        legacy.stop()
    on_tuf = RegistryProcess(tmp_path, world["root"] / "operators.json", world["root"] / "tls",
                             extra=("--tuf", str(world["tuf"].registry))).start()
    try:
        with _client(on_tuf, world) as client:
            # stable's role points at v1, a release this device left behind: nothing moves
            operator.promote(client, world["key"], v1, "stable", channel_keys=[_key(world, "stable")])
            assert device.pull(client).status == "not-modified" and device.version == 2
            assert (tmp_path / "device" / "tuf" / "root_history" / "1.root.json").is_file()
            with pytest.raises(ManifestError, match="older-version"):
                device.check(*_signed(client, v1))
            v3 = operator.publish(client, world["key"], world["root"] / "adapter-1", "stable",
                                  channel_keys=[_key(world, "stable")])
            assert device.pull(client).release_id == v3.release_id and device.state["floor"] == 3
            assert v2.version == 2
    finally:
        on_tuf.stop()


def test_migration_needs_the_operator_keys_endorsement(world, tmp_path):
    intruder = tmp_path / "intruder.key"
    new_key_pair(intruder)
    folder = tmp_path / "tuf"
    shutil.copytree(world["tuf"].registry, folder)
    payload, signature = sign_endorsement(load_private_key(intruder), (folder / "metadata" / "1.root.json").read_bytes())
    (folder / "metadata" / "root-endorsement.json").write_bytes(payload)
    (folder / "metadata" / "root-endorsement.sig").write_bytes(signature)
    process = RegistryProcess(tmp_path, world["root"] / "operators.json", world["root"] / "tls",
                              extra=("--tuf", str(folder))).start()
    try:
        with _client(process, world) as client:
            _publish(client, world, 1)
            device = _device(tmp_path / "device", world, provisioned=False)
            with pytest.raises(ManifestError) as refused:
                device.pull(client)
            assert refused.value.reason == "wrong-key" and device.version == 0
            assert not (tmp_path / "device" / "tuf").exists()
    finally:
        process.stop()


def _signed(client, release) -> tuple[bytes, bytes]:
    entry = next(e for e in client.releases(release.base_id) if _ids(e) == release.release_id)
    return entry.release.manifest, entry.release.signature


def test_the_cli_sets_up_publishes_pulls_and_rotates_a_channel_key(world, tmp_path, capsys):
    from fedpeft.cli import main

    tuf, operator_key = tmp_path / "tuf", str(world["root"] / "operator.key")
    assert main(["keys", "tuf-init", str(tuf), "--operator-key", operator_key]) == 0
    assert main(["keys", "tuf-init", str(tuf), "--operator-key", operator_key]) == 2
    assert "not empty" in capsys.readouterr().err
    process = RegistryProcess(tmp_path, world["root"] / "operators.json", world["root"] / "tls",
                              extra=("--tuf", str(tuf / "registry"))).start()
    try:
        address = ["--registry", process.address, "--ca-cert", str(world["root"] / "tls" / "ca.crt")]
        publish = ["registry", "publish", "--operator-key", operator_key, "--channel", "stable", *address]
        assert main([*publish, str(world["root"] / "adapter-1")]) == 2
        assert "--channel-key" in capsys.readouterr().err
        assert main([*publish, str(world["root"] / "adapter-1"), "--channel-key", str(tuf / "offline" / "stable.key")]) == 0
        pull = ["device", "pull", "--state", str(tmp_path / "device"), "--key", str(world["root"] / "operator.pub"),
                "--base-id", world["base_id"], *address]
        assert main([*pull, "--trusted-root", str(tuf / "root.json")]) == 0
        assert "installed v1" in capsys.readouterr().out
        new_key_pair(tmp_path / "stable-2.key")
        assert main(["keys", "rotate", "stable", "--add", str(tmp_path / "stable-2.key"),
                     "--remove", str(tuf / "offline" / "stable.pub"), "--delegator-key", operator_key,
                     "--role-key", str(tuf / "offline" / "stable.key"), *address]) == 0
        assert "accepted: targets v2, stable v3; revoked 1 key(s)" in capsys.readouterr().out
        assert main([*publish, str(world["root"] / "adapter-2"), "--channel-key", str(tuf / "offline" / "stable.key")]) == 2
        assert "not signed by the key" in capsys.readouterr().err
        assert main([*publish, str(world["root"] / "adapter-2"), "--channel-key", str(tmp_path / "stable-2.key")]) == 0
        assert main(pull) == 0  # the trusted root is kept in the slot
        assert "installed v2" in capsys.readouterr().out
    finally:
        process.stop()


@pytest.fixture(scope="module")
def repository(tmp_path_factory, world):
    """A TUF repository over a store, in this process: the registry's checks without the wire."""
    store = RegistryStore(tmp_path_factory.mktemp("tuf-store"))
    repository = TufRepository(store, OnlineKeys.load(world["tuf"].registry))
    repository.initialize(world["tuf"].registry / "metadata")
    yield repository
    store.close()


ROLES = st.sampled_from(["root", "targets", "stable", "canary", "snapshot", "timestamp", "nobody", ""])
JSONISH = st.recursive(st.none() | st.booleans() | st.integers() | st.text(max_size=20),
                       lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=12), inner, max_size=4),
                       max_leaves=20)


@settings(deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(role=ROLES, body=st.binary(max_size=600) | JSONISH.map(lambda v: json.dumps(v).encode())
       | JSONISH.map(lambda v: json.dumps({"signed": v, "signatures": []}).encode()))
def test_any_uploaded_metadata_is_stored_or_refused_by_name(repository, role, body):
    """Whatever bytes arrive as a role's metadata, the registry's checks end in a named
    StoreError (nothing hostile here is signed, so nothing is accepted)."""
    before = repository.get("timestamp")
    with pytest.raises(StoreError) as refused:
        repository.check([(role, body)])
    assert refused.value.reason in {"bad-metadata", "stale-version", "below-threshold", "unknown-role"}
    assert repository.get("timestamp") == before


def _scrape(registry, world) -> dict[tuple[str, tuple], float]:
    context = ssl.create_default_context(cafile=str(world["root"] / "tls" / "ca.crt"))
    with urllib.request.urlopen(registry.metrics_url, context=context, timeout=10) as reply:
        text = reply.read().decode()
    return {(sample.name, tuple(sorted(sample.labels.items()))): sample.value
            for family in text_string_to_metric_families(text) for sample in family.samples}


SIGNERS = {"root": ["root-1", "root-2"], "targets": ["operator"], "stable": ["stable"]}
REASONS = {"bad-metadata", "stale-version", "below-threshold", "unknown-role", "outside-channel", "expired",
           "online-key-mismatch", "removes-channel", "unknown-release"}


@settings(deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(role=st.sampled_from(sorted(SIGNERS)), field=st.sampled_from(
    ["version", "expires", "spec_version", "_type", "targets", "delegations", "keys", "roles", "consistent_snapshot",
     "new_field"]), value=JSONISH, bump=st.booleans())
def test_validly_signed_but_altered_metadata_is_refused_by_name_or_accepted(repository, world, role, field, value,
                                                                             bump):
    """Metadata signed with the right keys but with any field changed goes through every
    check (state, delegations, paths, releases, online keys): it is accepted, or refused
    by a name; nothing else escapes, and nothing is stored by a check."""
    current = Metadata.from_bytes(repository.get(role))
    signed = current.signed.to_dict()
    signed["version"] += bump
    signed[field] = value
    try:
        altered = Metadata.from_dict({"signed": signed, "signatures": {}})
    except Exception:  # python-tuf refuses to build it: what arrives is unsigned JSON
        body = json.dumps({"signed": signed, "signatures": []}, default=str).encode()
    else:
        body = sign(altered, [_key(world, name) for name in SIGNERS[role]])
    before = repository.get("timestamp")
    try:
        repository.check([(role, body)])
    except StoreError as refused:
        assert refused.reason in REASONS, refused
    assert repository.get("timestamp") == before


def test_registry_metrics_count_pulls_refusals_changes_and_latency(world, tmp_path):
    """The registry's Prometheus metrics, scraped over TLS while devices pull and a publish is
    refused: the counters move by exactly what happened, and what a caller names (a channel)
    cannot grow the label set."""
    registry = RegistryProcess(tmp_path, world["root"] / "operators.json", world["root"] / "tls",
                               extra=("--tuf", str(world["tuf"].registry), "--metrics-port", "0")).start()
    try:
        assert registry.metrics_url.startswith("https://127.0.0.1:")
        before = _scrape(registry, world)
        with RegistryClient(registry.address, world["root"] / "tls" / "ca.crt", timeout_s=30) as client:
            v1 = operator.publish(client, world["key"], world["root"] / "adapter-1", "stable",
                                  channel_keys=[_key(world, "stable")])
            legacy = _device(tmp_path / "legacy", world, provisioned=False)
            client.latest(world["base_id"], "stable", 0)                  # a release
            client.latest(world["base_id"], "stable", 1)                  # not modified
            for name in ("nobody-1", "nobody-2", "nobody-3"):             # channels nobody serves
                with pytest.raises(RegistryError, match="NOT_FOUND"):
                    client.latest(world["base_id"], name, 0)
            with pytest.raises(RegistryError, match="tuf-required"):
                client.promote(*sign_promotion(world["key"], v1, "canary"))  # without canary's metadata
            assert legacy.pull(client).version == 1                        # moves to TUF on the way
        after = _scrape(registry, world)
    finally:
        registry.stop()

    def moved(name: str, **labels) -> float:
        key = (name, tuple(sorted(labels.items())))
        return after.get(key, 0.0) - before.get(key, 0.0)

    assert moved("fedpeft_registry_pulls_total", channel="stable", answer="release") == 2  # the client, the device
    assert moved("fedpeft_registry_pulls_total", channel="stable", answer="not-modified") == 1
    assert moved("fedpeft_registry_pulls_total", channel="-", answer="not-found") == 3
    assert not any("nobody" in str(labels) for _, labels in after)
    assert moved("fedpeft_registry_refusals_total", call="Promote", reason="tuf-required") == 1
    assert moved("fedpeft_registry_changes_total", kind="publish", channel="stable") == 1
    assert after[("fedpeft_registry_channel_version", (("base", world["base_id"][:12]), ("channel", "stable")))] == 1
    assert moved("fedpeft_registry_tuf_metadata_total", role="timestamp") >= 1
    assert moved("fedpeft_registry_request_seconds_count", call="GetLatest") == 6
    assert after[("fedpeft_registry_publish_streams", ())] == 0
    # the Grafana dashboard shipped for these metrics asks only for series the registry exports
    dashboard = parse_json_object((Path(__file__).parents[1] / "deploy" / "grafana" / "registry.json").read_bytes(),
                                  "registry.json")
    asked = {name for panel in dashboard["panels"] for target in panel["targets"]
             for name in re.findall(r"fedpeft_registry_[a-z_]+", target["expr"])}
    assert len(asked) >= 7 and asked <= {name for name, _ in after}, asked - {name for name, _ in after}
    assert len({panel["id"] for panel in dashboard["panels"]}) == len(dashboard["panels"])
    jsonschema.validate(dashboard, GRAFANA_DASHBOARD)
    with pytest.raises(jsonschema.ValidationError):  # the schema does refuse a panel with no query
        jsonschema.validate({**dashboard, "panels": [{**dashboard["panels"][0], "targets": []}]}, GRAFANA_DASHBOARD)


# The part of Grafana's dashboard model (schemaVersion 39) the shipped dashboard uses, as a JSON schema.
GRAFANA_DASHBOARD = {
    "type": "object", "required": ["title", "uid", "schemaVersion", "panels"],
    "properties": {
        "title": {"type": "string", "minLength": 1}, "uid": {"type": "string", "pattern": "^[A-Za-z0-9_-]{1,40}$"},
        "schemaVersion": {"type": "integer", "minimum": 36}, "refresh": {"type": "string"},
        "time": {"type": "object", "required": ["from", "to"]},
        "templating": {"type": "object", "properties": {"list": {"type": "array", "items": {
            "type": "object", "required": ["name", "type"]}}}},
        "panels": {"type": "array", "minItems": 1, "items": {
            "type": "object", "required": ["id", "type", "title", "gridPos", "targets"],
            "properties": {
                "id": {"type": "integer"}, "type": {"enum": ["timeseries", "stat", "gauge", "table", "bargauge"]},
                "gridPos": {"type": "object", "required": ["h", "w", "x", "y"], "properties": {
                    "w": {"type": "integer", "minimum": 1, "maximum": 24}, "x": {"type": "integer", "minimum": 0,
                                                                               "maximum": 23}}},
                "datasource": {"type": "object", "required": ["type", "uid"]},
                "targets": {"type": "array", "minItems": 1, "items": {
                    "type": "object", "required": ["refId", "expr"],
                    "properties": {"expr": {"type": "string", "minLength": 1}}}}}}}}}
