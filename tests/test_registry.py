"""The adapter registry as a real process on 127.0.0.1 over TLS: publish, pull, apply,
promote and roll back; a device refusing every kind of bad release while keeping its
current adapter; restarts after kill -9; 200 concurrent pulls."""

from __future__ import annotations

import json
import shutil
import sqlite3
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np
import pytest
import torch
from peft import PeftModel
from safetensors.numpy import load_file, save_file

from fedpeft.core.adapters.spec import TemplateSpec
from fedpeft.core.adapters.template import create_template
from fedpeft.core.base.tasks import get_task
from fedpeft.core.training.synthetic_data import LABELS
from fedpeft.core.trust.keys import Keyring, load_private_key, load_public_key, new_key_pair
from fedpeft.core.trust.release import sign_promotion, sign_release
from fedpeft.core.trust.signed_files import ManifestError
from fedpeft.core.trust.tls import write_tls_files
from fedpeft.device.registry_client import RegistryClient, RegistryError
from fedpeft.device.slot import Device
from fedpeft.protos import registry_pb2 as pb
from fedpeft.protos import registry_pb2_grpc
from fedpeft.server.registry import operator
from fedpeft.server.registry.process import RegistryProcess
from fedpeft.server.registry.service import LIST_PAGE

grpc = pytest.importorskip("grpc")


@pytest.fixture(scope="module")
def material(tmp_path_factory, tiny_package):
    """Keys, the operator list, TLS files and two signed adapter folders of the tiny base."""
    root = tmp_path_factory.mktemp("registry-material")
    new_key_pair(root / "operator.key")
    new_key_pair(root / "intruder.key")
    operators = Keyring(root / "operators.json")
    operators.enroll("ops", load_public_key(root / "operator.pub"))
    operators.save()
    write_tls_files(root / "tls", ["127.0.0.1"])
    from fedpeft.core.base.model import load_base
    template = create_template(load_base(tiny_package, num_labels=len(LABELS)).model,
                               get_task("seq-cls"), TemplateSpec("lora", 4, 8), list(LABELS))
    key = load_private_key(root / "operator.key")
    for index in (1, 2):
        folder = root / f"adapter-{index}"
        torch.manual_seed(index)
        base = load_base(tiny_package, num_labels=len(LABELS))
        template.attach(base.model).save_pretrained(str(folder))
        tensors = load_file(str(folder / "adapter_model.safetensors"))
        save_file({k: v + np.float32(index) for k, v in tensors.items()}, str(folder / "adapter_model.safetensors"))
        sign_release(folder, key, version=1, base_id=tiny_package.base_id, template_id=template.template_id,
                     labels=list(LABELS), parent=None, metrics={}, valid_days=30)
    return root


@pytest.fixture
def registry(tmp_path, material):
    process = RegistryProcess(tmp_path, material / "operators.json", material / "tls").start()
    yield process
    process.stop()


def _client(registry, material) -> RegistryClient:
    return RegistryClient(registry.address, material / "tls" / "ca.crt", timeout_s=30)


def _device(folder, material, base_id, key="operator.pub") -> Device:
    return Device(folder, load_public_key(material / key), base_id, "stable")


def _operator(material):
    return load_private_key(material / "operator.key")


def _tensors(folder: Path) -> dict:
    return load_file(str(folder / "adapter_model.safetensors"))


def _index(registry) -> sqlite3.Connection:
    return sqlite3.connect(registry.root / "store" / "index.sqlite", isolation_level=None)


def _blob(registry, sha256: str) -> Path:
    return registry.root / "store" / "blobs" / sha256[:2] / sha256


def test_publish_pull_apply_promote_and_roll_back(registry, material, tmp_path, tiny_package):
    key = _operator(material)
    with _client(registry, material) as client:
        v1 = operator.publish(client, key, material / "adapter-1", "canary")
        device = _device(tmp_path / "device", material, tiny_package.base_id)
        with pytest.raises(RegistryError, match="NOT_FOUND"):  # nothing in stable yet
            device.pull(client)
        operator.promote(client, key, v1, "stable")
        first = device.pull(client)
        assert (first.status, first.version, first.release_id) == ("installed", 1, v1.release_id)
        assert first.bytes_received == sum(e["size"] for e in v1.files.values())
        assert device.pull(client).status == "not-modified"

        # apply: PEFT loads the installed folder, and its weights are the published ones
        from fedpeft.core.base.model import load_base
        model = PeftModel.from_pretrained(load_base(tiny_package, num_labels=len(LABELS)).model,
                                          str(device.current))
        loaded = {k.replace(".default", ""): v.detach().numpy() for k, v in model.named_parameters() if "lora_" in k}
        published = _tensors(material / "adapter-1")
        assert loaded and set(loaded) <= set(published)
        for name, array in loaded.items():
            np.testing.assert_array_equal(array, published[name])

        v2 = operator.publish(client, key, material / "adapter-2", "stable")
        assert device.pull(client).version == 2 and device.state["previous"]["version"] == 1
        for name, array in _tensors(material / "adapter-2").items():
            np.testing.assert_array_equal(_tensors(device.current)[name], array)

        v3 = operator.rollback(client, key, tiny_package.base_id, 1, "stable")
        assert v3.version == 3 and v3.manifest["rollback_of"] == v1.release_id
        third = device.pull(client)
        assert third.version == 3 and third.bytes_received == 0  # the weights of v1 were on the device
        np.testing.assert_equal(_tensors(device.current), _tensors(material / "adapter-1"))
        listed = {json.loads(e.release.manifest)["version"]: list(e.channels) for e in client.releases()}
        assert listed == {1: ["canary"], 2: [], 3: ["stable"]}
    assert v2.version == 2


def _install_v1(registry, material, tmp_path, base_id, client):
    operator.publish(client, _operator(material), material / "adapter-1", "stable")
    device = _device(tmp_path / "device", material, base_id)
    assert device.pull(client).version == 1
    return device


def _refused(device, client, reason):
    before_state, before_files = json.dumps(device.state), _tensors(device.current)
    with pytest.raises(ManifestError) as refused:
        device.pull(client)
    assert refused.value.reason == reason, refused.value
    assert json.dumps(device.state) == before_state
    np.testing.assert_equal(_tensors(device.current), before_files)
    reloaded = Device(device.folder, device.operator_key, device.base_id)
    assert reloaded.state == device.state
    return refused.value


def test_device_refuses_a_tampered_blob(registry, material, tmp_path, tiny_package):
    with _client(registry, material) as client:
        device = _install_v1(registry, material, tmp_path, tiny_package.base_id, client)
        v2 = operator.publish(client, _operator(material), material / "adapter-2", "stable")
        blob = _blob(registry, v2.files["adapter_model.safetensors"]["sha256"])
        data = bytearray(blob.read_bytes())
        data[-1] ^= 1
        blob.write_bytes(bytes(data))
        _refused(device, client, "file-mismatch")
        assert not (device.folder / "downloads" / f"{blob.name}.part").exists()  # the bad bytes are not kept


def test_device_refuses_a_wrong_signature_and_a_wrong_key(registry, material, tmp_path, tiny_package):
    with _client(registry, material) as client:
        device = _install_v1(registry, material, tmp_path, tiny_package.base_id, client)
        v2 = operator.publish(client, _operator(material), material / "adapter-2", "stable")
        manifest = json.loads(_index(registry).execute("SELECT manifest FROM releases WHERE version = 2").fetchone()[0])
        manifest["labels"] = list(reversed(manifest["labels"]))  # the registry's copy altered after signing
        _index(registry).execute("UPDATE releases SET manifest = ? WHERE release_id = ?",
                                 (json.dumps(manifest).encode(), v2.release_id))
        _refused(device, client, "bad-signature")
        stranger = _device(tmp_path / "stranger", material, tiny_package.base_id, key="intruder.pub")
        with pytest.raises(ManifestError, match="wrong-key"):
            stranger.pull(client)


def test_device_refuses_an_older_version(registry, material, tmp_path, tiny_package):
    key = _operator(material)
    with _client(registry, material) as client:
        v1 = operator.publish(client, key, material / "adapter-1", "stable")
        operator.publish(client, key, material / "adapter-2", "stable")
        device = _device(tmp_path / "device", material, tiny_package.base_id)
        assert device.pull(client).version == 2
        # a compromised registry index serves v1 as if it were new
        _index(registry).execute("UPDATE releases SET version = 99 WHERE release_id = ?", (v1.release_id,))
        _index(registry).execute("UPDATE channels SET release_id = ? WHERE channel = 'stable'", (v1.release_id,))
        _refused(device, client, "older-version")


def test_device_refuses_a_replayed_release_even_after_a_local_rollback(registry, material, tmp_path, tiny_package):
    with _client(registry, material) as client:
        device = _install_v1(registry, material, tmp_path, tiny_package.base_id, client)
        operator.publish(client, _operator(material), material / "adapter-2", "stable")
        assert device.pull(client).version == 2
        assert device.rollback()["version"] == 1  # the device goes back on its own...
        _refused(device, client, "replayed")      # ...and the registry cannot push v2 on it again
        assert device.state["floor"] == 2


def test_device_refuses_expired_metadata(registry, material, tmp_path, tiny_package):
    with _client(registry, material) as client:
        device = _install_v1(registry, material, tmp_path, tiny_package.base_id, client)
        # valid for 5 s: long enough for the registry to accept it on a loaded machine
        v2 = operator.publish(client, _operator(material), material / "adapter-2", "stable", valid_days=5 / 86400)
        expires = datetime.fromisoformat(v2.manifest["expires"])
        time.sleep(max(0.0, (expires - datetime.now(UTC)).total_seconds()) + 0.2)
        _refused(device, client, "expired")


def test_a_frozen_registry_cannot_keep_a_device_on_an_expired_release(registry, material, tmp_path, tiny_package):
    """The registry answers "not modified" for ever; once the installed release expires the
    device says so (TUF's freeze attack) instead of running it silently."""
    with _client(registry, material) as client:
        device = _install_v1(registry, material, tmp_path, tiny_package.base_id, client)
        assert device.pull(client).status == "not-modified"
        expires = datetime.fromisoformat(device.current_release().manifest["expires"])
        with pytest.raises(ManifestError, match="expired") as refused:
            device.pull(client, now=expires + timedelta(seconds=1))
        assert refused.value.reason == "expired" and device.version == 1


def test_device_refuses_a_release_for_another_base(registry, material, tmp_path, tiny_package):
    foreign = tmp_path / "foreign"
    shutil.copytree(material / "adapter-2", foreign)
    manifest = json.loads((foreign / "release.json").read_bytes())
    sign_release(foreign, _operator(material), version=1, base_id="f" * 64, template_id=manifest["template_id"],
                 labels=manifest["labels"], parent=None, metrics={}, valid_days=30)
    with _client(registry, material) as client:
        device = _install_v1(registry, material, tmp_path, tiny_package.base_id, client)
        other = operator.publish(client, _operator(material), foreign, "stable")
        assert other.base_id == "f" * 64
        _index(registry).execute("UPDATE releases SET base_id = ?, version = 50 WHERE release_id = ?",
                                 (tiny_package.base_id, other.release_id))
        _index(registry).execute("UPDATE channels SET release_id = ? WHERE base_id = ?",
                                 (other.release_id, tiny_package.base_id))
        _refused(device, client, "wrong-base")


def test_truncated_stream_is_refused_and_the_next_pull_resumes(registry, material, tmp_path, tiny_package):
    with _client(registry, material) as client:
        device = _install_v1(registry, material, tmp_path, tiny_package.base_id, client)
        v2 = operator.publish(client, _operator(material), material / "adapter-2", "stable")
        blob = _blob(registry, v2.files["adapter_model.safetensors"]["sha256"])
        whole = blob.read_bytes()
        blob.write_bytes(whole[:len(whole) // 2])
        _refused(device, client, "truncated")
        blob.write_bytes(whole)
        result = device.pull(client)
        kept = len(whole) // 2 + v2.files["adapter_config.json"]["size"]  # both parts from the first attempt
        assert result.version == 2 and result.resumed_bytes == kept
        assert result.bytes_received == len(whole) - len(whole) // 2


def test_only_operator_keys_publish_and_promote(registry, material, tmp_path, tiny_package):
    intruder = load_private_key(material / "intruder.key")
    forged = tmp_path / "forged"
    shutil.copytree(material / "adapter-2", forged)
    manifest = json.loads((forged / "release.json").read_bytes())
    sign_release(forged, intruder, version=1, base_id=tiny_package.base_id, template_id=manifest["template_id"],
                 labels=manifest["labels"], parent=None, metrics={}, valid_days=30)
    with _client(registry, material) as client:
        device = _install_v1(registry, material, tmp_path, tiny_package.base_id, client)
        with pytest.raises(RegistryError) as refused:
            client.publish(*_signed_files(forged), _blobs(forged))
        assert refused.value.code == grpc.StatusCode.PERMISSION_DENIED and "not an operator key" in str(refused.value)
        v1 = operator.releases(client, _operator(material), tiny_package.base_id)[0]
        with pytest.raises(RegistryError, match="PERMISSION_DENIED"):
            client.promote(*sign_promotion(intruder, v1, "canary"))
        assert len(client.releases()) == 1 and not list((registry.root / "store" / "incoming").iterdir())
        assert device.pull(client).status == "not-modified"


def test_the_registry_refuses_stale_versions_replayed_promotions_and_bad_blobs(registry, material, tmp_path):
    key = _operator(material)
    with _client(registry, material) as client:
        v1 = operator.publish(client, key, material / "adapter-1", "stable")
        old_promotion = sign_promotion(key, v1, "stable")
        operator.publish(client, key, material / "adapter-2", "stable")
        with pytest.raises(RegistryError, match="FAILED_PRECONDITION: stale-promotion"):
            client.promote(*old_promotion)  # replaying an earlier statement cannot demote the channel
        manifest, signature = (material / "adapter-1" / "release.json").read_bytes(), (material / "adapter-1" / "release.sig").read_bytes()
        with pytest.raises(RegistryError, match="FAILED_PRECONDITION: stale-version"):
            client.publish(manifest, signature, {})  # version 1 again
        staged = tmp_path / "staged"
        shutil.copytree(material / "adapter-1", staged)
        release = sign_release(staged, key, version=7, base_id=v1.base_id, template_id=v1.template_id,
                               labels=v1.labels, parent=None, metrics={}, valid_days=30)
        wrong = tmp_path / "wrong.bin"
        wrong.write_bytes(b"x" * release.files["adapter_config.json"]["size"])
        with pytest.raises(RegistryError, match="DATA_LOSS"):
            client.publish((staged / "release.json").read_bytes(), (staged / "release.sig").read_bytes(),
                           {release.files["adapter_config.json"]["sha256"]: wrong})
        for bad in ("../../index.sqlite", "A" * 64, ""):
            with pytest.raises(RegistryError, match="INVALID_ARGUMENT"):
                client.fetch_blob(bad, 10, tmp_path / "part")
        assert [json.loads(e.release.manifest)["version"] for e in client.releases()] == [1, 2]


def _big_adapter(material, tmp_path) -> Path:
    """An adapter folder whose tensors span many 256 KiB chunks (32 MB: more than gRPC's
    flow-control windows, so a killed server cannot have sent it all already)."""
    folder = tmp_path / "big"
    shutil.copytree(material / "adapter-2", folder)
    tensors = _tensors(folder)
    tensors[next(iter(tensors))] = np.random.default_rng(0).standard_normal(8_000_000).astype(np.float32)
    save_file(tensors, str(folder / "adapter_model.safetensors"))
    manifest = json.loads((folder / "release.json").read_bytes())
    # version 2: newer than the v1 a test installs first, so the registry takes its bytes
    # (a release that is not newer is refused before any byte is read)
    sign_release(folder, _operator(material), version=2, base_id=manifest["base_id"],
                 template_id=manifest["template_id"], labels=manifest["labels"], parent=None, metrics={}, valid_days=30)
    return folder


def test_kill_9_during_publish_and_during_a_pull_loses_nothing(registry, material, tmp_path, tiny_package):
    big = _big_adapter(material, tmp_path)
    with _client(registry, material) as client:
        device = _install_v1(registry, material, tmp_path, tiny_package.base_id, client)

    def kill_after_first_chunk(sent, *_):
        if sent >= 256 * 1024 and registry.process.poll() is None:
            registry.kill9()

    with _client(registry, material) as client, pytest.raises(RegistryError):
        client.publish(*_signed_files(big), _blobs(big), progress=kill_after_first_chunk)
    registry.start()  # same store, same port
    assert "1 release(s)" in registry.banner
    with _client(registry, material) as client:
        assert [json.loads(e.release.manifest)["version"] for e in client.releases()] == [1]
        assert not list((registry.root / "store" / "incoming").iterdir())
        assert device.pull(client).status == "not-modified"
        v2 = operator.publish(client, _operator(material), big, "stable")  # the same publish now completes

    with _client(registry, material) as client, pytest.raises(RegistryError, match="UNAVAILABLE|CANCELLED|INTERNAL"):
        device.pull(client, progress=kill_after_first_chunk)
    assert device.version == 1
    registry.start()
    with _client(registry, material) as client:
        result = device.pull(client)
    assert result.version == 2 and result.release_id == v2.release_id and result.resumed_bytes >= 256 * 1024
    np.testing.assert_equal(_tensors(device.current), _tensors(big))


def _signed_files(folder):
    return (folder / "release.json").read_bytes(), (folder / "release.sig").read_bytes()


def _blobs(folder):
    manifest = json.loads((folder / "release.json").read_bytes())
    return {entry["sha256"]: folder / name for name, entry in manifest["files"].items()}


def test_200_concurrent_device_pulls(registry, material, tmp_path, tiny_package):
    key = _operator(material)
    with _client(registry, material) as client:
        release = operator.publish(client, key, material / "adapter-1", "stable")
    public = load_public_key(material / "operator.pub")

    def pull(index: int):
        device = Device(tmp_path / f"device-{index}", public, tiny_package.base_id)
        with _client(registry, material) as client:
            return device.pull(client)

    with ThreadPoolExecutor(200) as pool:
        results = list(pool.map(pull, range(200)))
    assert [r.release_id for r in results] == [release.release_id] * 200
    assert {r.bytes_received for r in results} == {sum(e["size"] for e in release.files.values())}


def test_serve_refuses_to_start_without_tls_or_operators(material, tmp_path):
    command = [sys.executable, "-m", "fedpeft.cli", "registry", "serve", "--store", str(tmp_path / "s"), "--port", "0"]
    no_tls = subprocess.run(command + ["--operators", str(material / "operators.json")], capture_output=True, text=True)
    assert no_tls.returncode == 2 and "--tls-cert" in no_tls.stderr
    no_ops = subprocess.run(command + ["--operators", str(tmp_path / "none.json"), "--insecure"],
                            capture_output=True, text=True)
    assert no_ops.returncode == 2 and "no operator key" in no_ops.stderr


def _replay_publishes(registry, material, signed: pb.SignedManifest, count: int, stall: float = 0.0) -> list:
    """`count` anonymous Publish streams at once, each sending `signed` and one chunk of a blob
    it lists, then holding the stream `stall` seconds; returns each stream's gRPC status code."""
    import asyncio

    blob = json.loads(signed.manifest)["files"]["adapter_model.safetensors"]["sha256"]
    credentials = grpc.ssl_channel_credentials((material / "tls" / "ca.crt").read_bytes())

    async def attempt(stub) -> grpc.StatusCode:
        async def messages():
            yield pb.PublishRequest(release=signed)
            yield pb.PublishRequest(chunk=pb.BlobChunk(sha256=blob, offset=0, data=b"x" * 1024))
            await asyncio.sleep(stall)  # then hold the stream open, as a slow or hostile caller would

        try:
            await stub.Publish(messages(), timeout=60)
            return grpc.StatusCode.OK
        except grpc.aio.AioRpcError as error:
            return error.code()

    async def run() -> list:
        channels = [grpc.aio.secure_channel(registry.address, credentials) for _ in range(10)]
        stubs = [registry_pb2_grpc.RegistryStub(c) for c in channels]
        codes = await asyncio.gather(*(attempt(stubs[i % 10]) for i in range(count)))
        for channel in channels:
            await channel.close()
        return codes

    return asyncio.run(run())


def test_1000_concurrent_anonymous_publishes_hold_nothing_and_devices_are_still_served(registry, material, tmp_path,
                                                                                         tiny_package):
    """Releases are public (List): anyone can replay one into Publish. Each replay is refused
    before any file opens (ALREADY_EXISTS) or turned away at once (RESOURCE_EXHAUSTED); a
    device pull meanwhile answers within a second and nothing is left in incoming/."""
    with _client(registry, material) as client:
        operator.publish(client, _operator(material), material / "adapter-1", "stable")
        signed = client.releases(tiny_package.base_id)[0].release
        device = _device(tmp_path / "device", material, tiny_package.base_id)
        assert device.pull(client).version == 1
    latencies = []
    stop = threading.Event()

    def poll():
        with _client(registry, material) as client:
            while not stop.is_set():
                start = time.monotonic()
                assert device.pull(client).status == "not-modified"
                latencies.append(time.monotonic() - start)

    poller = threading.Thread(target=poll)
    poller.start()
    try:
        codes = _replay_publishes(registry, material, signed, 1000, stall=1.0)
    finally:
        stop.set()
        poller.join()
    assert set(codes) <= {grpc.StatusCode.ALREADY_EXISTS, grpc.StatusCode.RESOURCE_EXHAUSTED}, set(codes)
    assert len(codes) == 1000 and latencies and max(latencies) < 1.0, (len(latencies), max(latencies or [0]))
    assert list((registry.root / "store" / "incoming").iterdir()) == []


def test_a_publish_stream_that_stalls_is_cut_at_its_deadline(material, tmp_path, tiny_package):
    registry = RegistryProcess(tmp_path, material / "operators.json", material / "tls",
                               extra=("--publish-deadline", "2")).start()
    try:
        fresh = tmp_path / "fresh"
        shutil.copytree(material / "adapter-2", fresh)
        release = sign_release(fresh, _operator(material), version=5, base_id=tiny_package.base_id,
                               template_id="c" * 64, labels=list(LABELS), parent=None, metrics={}, valid_days=1)
        signed = pb.SignedManifest(manifest=(fresh / "release.json").read_bytes(),
                                   signature=(fresh / "release.sig").read_bytes())
        start = time.monotonic()
        assert _replay_publishes(registry, material, signed, 1, stall=30) == [grpc.StatusCode.DEADLINE_EXCEEDED]
        assert time.monotonic() - start < 15
        assert list((registry.root / "store" / "incoming").iterdir()) == []
        with _client(registry, material) as client:
            assert client.releases(release.base_id) == []
    finally:
        registry.stop()


def test_list_answers_in_pages_and_the_client_reads_them_all(registry, material):
    key = _operator(material)
    with _client(registry, material) as client:
        for _ in range(LIST_PAGE + 3):
            operator.publish(client, key, material / "adapter-1", "stable")
        first = client._call("List", pb.ListRequest())
        assert len(first.releases) == LIST_PAGE and first.next_page_token
        versions = [json.loads(e.release.manifest)["version"] for e in client.releases()]
    assert versions == list(range(1, LIST_PAGE + 4))
