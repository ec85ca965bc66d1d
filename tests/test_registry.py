"""The adapter registry as a real process on 127.0.0.1 over TLS: publish, pull, apply,
promote and roll back; a device refusing every kind of bad release while keeping its
current adapter; restarts after kill -9; 200 concurrent pulls; 1,000 refused anonymous
publishes while operator streams hold every slot. Publish requests: test_registry_publish.py."""

from __future__ import annotations

import asyncio
import contextlib
import json
import re
import shutil
import sqlite3
import subprocess
import sys
import threading
import time
from concurrent.futures import Future, ThreadPoolExecutor
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
from fedpeft.core.trust.hashing import sha256_hex
from fedpeft.core.trust.release import PROMOTION_VALID, Release, sign_promotion, sign_release
from fedpeft.core.trust.signed_files import (
    ManifestError,
    check_signed,
    sign_manifest,
    timestamp,
    validity,
    write_signed,
)
from fedpeft.core.trust.tls import write_tls_files
from fedpeft.device.predict import ADAPTER_EXPORT_NAME, ADAPTER_EXPORT_TYPE
from fedpeft.device.registry_client import RegistryClient, RegistryError
from fedpeft.device.slot import Device
from fedpeft.protos import registry_pb2 as pb
from fedpeft.protos import registry_pb2_grpc
from fedpeft.server.registry import operator
from fedpeft.server.registry.process import RegistryProcess
from fedpeft.server.registry.publish_request import PUBLISH_REQUEST_TYPE, PUBLISH_REQUEST_VALID, sign_publish_request
from fedpeft.server.registry.service import FIRST_MESSAGE_S, LIST_PAGE, MAX_PUBLISHES

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


def _refused(device, client, reason, now=None):
    before_state, before_files = json.dumps(device.state), _tensors(device.current)
    with pytest.raises(ManifestError) as refused:
        device.pull(client, now=now)
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
        # valid for a day; the device's clock is moved past it (v1 is valid for 30 days)
        v2 = operator.publish(client, _operator(material), material / "adapter-2", "stable", valid_days=1)
        expires = datetime.fromisoformat(v2.manifest["expires"])
        _refused(device, client, "expired", now=expires + timedelta(seconds=1))
        assert device.pull(client).version == 2  # on time, the same release installs


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
        for requester in (_operator(material), intruder):  # an operator's request: still not an operator's release
            with pytest.raises(RegistryError) as refused:
                _send(client, requester, forged)
            assert refused.value.code == grpc.StatusCode.PERMISSION_DENIED
            assert "not an operator key" in str(refused.value)
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
            _send(client, key, (manifest, signature), {})  # version 1 again
        staged = tmp_path / "staged"
        shutil.copytree(material / "adapter-1", staged)
        release = sign_release(staged, key, version=7, base_id=v1.base_id, template_id=v1.template_id,
                               labels=v1.labels, parent=None, metrics={}, valid_days=30)
        wrong = tmp_path / "wrong.bin"
        wrong.write_bytes(b"x" * release.files["adapter_config.json"]["size"])
        with pytest.raises(RegistryError, match="DATA_LOSS"):
            _send(client, key, staged, {release.files["adapter_config.json"]["sha256"]: wrong})
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
        _send(client, _operator(material), big, progress=kill_after_first_chunk)
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


def _send(client, key, release, blobs=None, channel="stable", **options):
    """Publish a signed release (a folder, or (release.json, release.sig) bytes) with a fresh
    publish request signed by `key` for this registry; `blobs` default: the folder's files."""
    signed = _signed_files(release) if isinstance(release, Path) else release
    request = sign_publish_request(key, client.identity(), Release(sha256_hex(signed[0]), json.loads(signed[0])),
                                   channel)
    return client.publish(request, signed, _blobs(release) if blobs is None else blobs, **options)


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


def _signed_copy(material, folder: Path, version: int, **release) -> Path:
    """adapter-2's files in `folder` with a new operator-signed release of `version`: a
    release the operator has signed (as every run folder holds one) but not published."""
    shutil.copytree(material / "adapter-2", folder)
    manifest = json.loads((folder / "release.json").read_bytes())
    fields = dict(base_id=manifest["base_id"], template_id=manifest["template_id"], labels=manifest["labels"],
                  parent=None, metrics={}, valid_days=30)
    sign_release(folder, _operator(material), version=version, **{**fields, **release})
    return folder


def _first(signed: tuple[bytes, bytes], request: tuple[bytes, bytes] | None) -> pb.PublishRequest:
    """A publish stream's first message: the signed release, with `request` (None: without one)."""
    start = pb.PublishStart(release=pb.SignedManifest(manifest=signed[0], signature=signed[1]))
    if request is not None:
        start.request.CopyFrom(pb.SignedManifest(manifest=request[0], signature=request[1]))
    return pb.PublishRequest(start=start)


def _requested(folder: Path, key, registry_id: str, channel: str = "stable", **when) -> pb.PublishRequest:
    """The first message an operator sends to publish `folder`'s release."""
    signed = _signed_files(folder)
    release = Release(sha256_hex(signed[0]), json.loads(signed[0]))
    return _first(signed, sign_publish_request(key, registry_id, release, channel, **when))


async def _stream(stub, first: pb.PublishRequest | None, hold) -> tuple:
    """One Publish stream: `first` (None: nothing is ever sent), then 1 KiB of the adapter
    blob its release lists, then held open for `hold` (seconds, or until an asyncio.Event is
    set), as a slow or hostile caller would; returns (gRPC status code, details)."""
    async def messages():
        if first is None:
            await asyncio.Event().wait()  # never: the registry has to cut the stream
        yield first
        blob = json.loads(first.start.release.manifest)["files"]["adapter_model.safetensors"]["sha256"]
        yield pb.PublishRequest(chunk=pb.BlobChunk(sha256=blob, offset=0, data=b"x" * 1024))
        await (hold.wait() if isinstance(hold, asyncio.Event) else asyncio.sleep(hold))

    try:
        await stub.Publish(messages(), timeout=120)
        return grpc.StatusCode.OK, ""
    except grpc.aio.AioRpcError as error:
        return error.code(), error.details()


@contextlib.asynccontextmanager
async def _stubs(registry, material, count: int = 10):
    """`count` TLS channels to the registry (the streams of a test spread over them)."""
    credentials = grpc.ssl_channel_credentials((material / "tls" / "ca.crt").read_bytes())
    channels = [grpc.aio.secure_channel(registry.address, credentials) for _ in range(count)]
    try:
        yield [registry_pb2_grpc.RegistryStub(channel) for channel in channels]
    finally:
        for channel in channels:
            await channel.close()


def _streams(registry, material, firsts: list, hold: float = 0.0) -> list:
    """Streams opening with each of `firsts` at once (see _stream); their (code, details)."""
    async def run() -> list:
        async with _stubs(registry, material) as stubs:
            return await asyncio.gather(*(_stream(stubs[i % len(stubs)], first, hold)
                                          for i, first in enumerate(firsts)))
    return asyncio.run(run())


async def _until(condition, poller: Future, timeout_s: float = 120.0) -> None:
    """Wait (generously: this is not a latency check) until `condition()`; a failed poller fails at once."""
    async with asyncio.timeout(timeout_s):
        while not condition():
            if poller.done():
                poller.result()
            await asyncio.sleep(0.05)


def _slots_taken(registry) -> list[int]:
    """The versions whose publish streams took a slot, from the registry's log."""
    taken = [line for line in list(registry.log) if "publish slot taken" in line]
    return sorted(int(re.search(r"for v(\d+) ", line)[1]) for line in taken)


def test_1000_concurrent_anonymous_publishes_hold_nothing_and_devices_are_still_served(registry, material, tmp_path,
                                                                                         tiny_package):
    """Releases are public (List): anyone can replay one into Publish, without a publish
    request or with one already used. While MAX_PUBLISHES operator streams hold every publish
    slot, one more operator publish is turned away (RESOURCE_EXHAUSTED) and 1,000 anonymous
    replays are each refused by name before they could take a slot; a device polling
    throughout is served while the slots are held (any failure of its thread fails the
    test), and nothing is left in incoming/."""
    key = _operator(material)
    with _client(registry, material) as client:
        operator.publish(client, key, material / "adapter-1", "stable")
        signed = client.releases(tiny_package.base_id)[0].release
        device = _device(tmp_path / "device", material, tiny_package.base_id)
        assert device.pull(client).version == 1
        registry_id = client.identity()
    used = _index(registry).execute("SELECT statement, signature FROM promotions").fetchone()  # v1's request
    anonymous = [_first((signed.manifest, signed.signature), None), _first((signed.manifest, signed.signature), used)]
    operators = [_requested(_signed_copy(material, tmp_path / f"v{v}", v), key, registry_id)
                 for v in range(2, MAX_PUBLISHES + 3)]  # one more than there are slots
    pulls: list[float] = []  # when each completed pull started
    stop = threading.Event()

    def poll() -> None:
        with _client(registry, material) as client:
            while not stop.is_set():
                started = time.monotonic()
                assert device.pull(client).status == "not-modified"
                pulls.append(started)

    async def scenario(poller: Future) -> tuple:
        release = asyncio.Event()
        async with _stubs(registry, material) as stubs:
            holders = [asyncio.create_task(_stream(stubs[0], first, release)) for first in operators[:-1]]
            await _until(lambda: _slots_taken(registry) == list(range(1, MAX_PUBLISHES + 2)), poller)  # v1, then v2...
            held_at = time.monotonic()
            one_more = await _stream(stubs[1], operators[-1], 0)
            codes = await asyncio.gather(*(_stream(stubs[i % 10], anonymous[i % 2], 1.0) for i in range(1000)))
            await _until(lambda: sum(t >= held_at for t in pulls) >= 3, poller)  # served while every slot is held
            assert _slots_taken(registry) == list(range(1, MAX_PUBLISHES + 2))  # nobody else took one meanwhile
            release.set()
            return one_more, codes, await asyncio.gather(*holders)

    with ThreadPoolExecutor(1) as pool:
        poller = pool.submit(poll)
        try:
            one_more, replies, held = asyncio.run(scenario(poller))
        finally:
            stop.set()
        poller.result()  # the device's failures and exceptions reach the test
    assert one_more[0] == grpc.StatusCode.RESOURCE_EXHAUSTED and "busy" in one_more[1], one_more
    codes = [code for code, _ in replies]
    assert set(codes) <= {grpc.StatusCode.ALREADY_EXISTS, grpc.StatusCode.PERMISSION_DENIED}, set(codes)
    assert len(codes) == 1000 and pulls, (len(codes), len(pulls))
    assert all("no-request" in details for _, details in replies[0::2]), {d for _, d in replies[0::2]}
    assert all("replayed-request" in details for _, details in replies[1::2]), {d for _, d in replies[1::2]}
    assert [code for code, _ in held] == [grpc.StatusCode.DATA_LOSS] * MAX_PUBLISHES  # 1 KiB is not the blob
    assert list((registry.root / "store" / "incoming").iterdir()) == []
    with _client(registry, material) as client:
        assert [json.loads(e.release.manifest)["version"] for e in client.releases()] == [1]


def test_a_publish_stream_that_stalls_is_cut_at_its_deadline(material, tmp_path, tiny_package):
    """A stream that stalls after a valid first message is cut at the publish deadline; one
    that never sends a first message is cut at the same (shorter than FIRST_MESSAGE_S) wait."""
    registry = RegistryProcess(tmp_path, material / "operators.json", material / "tls",
                               extra=("--publish-deadline", "2")).start()
    try:
        fresh = _signed_copy(material, tmp_path / "fresh", 5, template_id="c" * 64, valid_days=1)
        with _client(registry, material) as client:
            first = _requested(fresh, _operator(material), client.identity())
        start = time.monotonic()
        replies = _streams(registry, material, [first, None], hold=30)
        assert [code for code, _ in replies] == [grpc.StatusCode.DEADLINE_EXCEEDED] * 2, replies
        assert "took more than 2 s" in replies[0][1] and "no first message within 2 s" in replies[1][1], replies
        assert time.monotonic() - start < 15
        assert list((registry.root / "store" / "incoming").iterdir()) == []
        with _client(registry, material) as client:
            assert client.releases(tiny_package.base_id) == []
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


def test_a_leaked_signed_release_or_publish_request_publishes_nothing(registry, material, tmp_path, tiny_package):
    """Every run folder holds an operator-signed release: holding one, or a publish request
    for another release, registry or time, or one already used (even across a kill -9), must
    not publish it and move the base's version floor. Each is refused by name; the
    operator's own fresh request publishes it and moves the channel it names."""
    key, intruder = _operator(material), load_private_key(material / "intruder.key")
    leaked, other = _signed_copy(material, tmp_path / "leaked", 2), _signed_copy(material, tmp_path / "other", 3)
    signed = _signed_files(leaked)
    with _client(registry, material) as client:
        operator.publish(client, key, material / "adapter-1", "stable")
        registry_id = client.identity()
    now = datetime.now(UTC)
    for_other = _requested(other, key, registry_id).start.request
    too_long = sign_manifest({  # signed 11 minutes ago, claiming a year: the registry's own bound holds
        "type": PUBLISH_REQUEST_TYPE, "registry_id": registry_id, "channel": "stable",
        "release_id": sha256_hex(signed[0]), "base_id": tiny_package.base_id, "version": 2, "files": {},
        "expires": timestamp(now + timedelta(days=365)),
        "created": (now - PUBLISH_REQUEST_VALID - timedelta(minutes=1)).strftime("%Y-%m-%dT%H:%M:%S.%fZ")}, key)
    attempts = [
        (_first(signed, None), grpc.StatusCode.PERMISSION_DENIED, "no-request"),
        (_requested(leaked, intruder, registry_id), grpc.StatusCode.PERMISSION_DENIED, "not-operator"),
        (_first(signed, (for_other.manifest, for_other.signature)), grpc.StatusCode.PERMISSION_DENIED, "wrong-release"),
        (_requested(leaked, key, "0" * 32), grpc.StatusCode.PERMISSION_DENIED, "wrong-registry"),
        (_requested(leaked, key, registry_id, now=now - PUBLISH_REQUEST_VALID - timedelta(seconds=5)),
         grpc.StatusCode.INVALID_ARGUMENT, "expired"),
        (_first(signed, too_long), grpc.StatusCode.INVALID_ARGUMENT, "expired"),
        (_requested(leaked, key, registry_id, now=now + timedelta(hours=1)), grpc.StatusCode.FAILED_PRECONDITION,
         "not-yet-valid"),
    ]
    replies = _streams(registry, material, [first for first, _, _ in attempts])
    for (_, code, reason), (got, details) in zip(attempts, replies, strict=True):
        assert got == code and details.startswith(reason), (reason, got, details)

    # a valid request whose stream fails is used up, and stays used after a kill -9
    used = _requested(leaked, key, registry_id)
    assert [code for code, _ in _streams(registry, material, [used])] == [grpc.StatusCode.DATA_LOSS]
    registry.kill9()
    registry.start()
    request = (used.start.request.manifest, used.start.request.signature)
    with _client(registry, material) as client:
        with pytest.raises(RegistryError, match="ALREADY_EXISTS: replayed-request"):
            client.publish(request, signed, _blobs(leaked))
        assert [json.loads(e.release.manifest)["version"] for e in client.releases()] == [1]  # the floor did not move
        _send(client, key, leaked)  # the operator's fresh request
        assert client.latest(tiny_package.base_id, "stable", 1).manifest == signed[0]
        # a request signed 8 minutes ago is still valid (channel beta: stable has newer statements)
        old = sign_publish_request(key, registry_id, Release(sha256_hex(_signed_files(other)[0]),
                                                             json.loads(_signed_files(other)[0])), "beta",
                                   now=now - PUBLISH_REQUEST_VALID + timedelta(minutes=2))
        client.publish(old, _signed_files(other), _blobs(other))
        with pytest.raises(RegistryError, match="ALREADY_EXISTS: replayed-request"):
            client.publish(old, _signed_files(other), _blobs(other))
        listed = {json.loads(e.release.manifest)["version"]: list(e.channels) for e in client.releases()}
    assert listed == {1: [], 2: ["stable"], 3: ["beta"]}


def test_streams_that_never_send_a_first_message_hold_no_publish_slot(registry, material):
    """Twice MAX_PUBLISHES anonymous streams that open and send nothing take no slot (it is
    taken only after a valid signed first message): the operator publishes meanwhile, and
    each silent stream is cut after FIRST_MESSAGE_S, by name."""
    async def scenario() -> tuple:
        async with _stubs(registry, material) as stubs:
            silent = [asyncio.create_task(_stream(stubs[i % len(stubs)], None, 0)) for i in range(2 * MAX_PUBLISHES)]
            await asyncio.sleep(0.5)  # let them open (not a timing assertion: see the break in the closing note)

            def publish():
                with _client(registry, material) as client:
                    return operator.publish(client, _operator(material), material / "adapter-1", "stable")

            return await asyncio.to_thread(publish), await asyncio.gather(*silent)

    release, silent = asyncio.run(scenario())
    assert release.version == 1
    assert [code for code, _ in silent] == [grpc.StatusCode.DEADLINE_EXCEEDED] * 2 * MAX_PUBLISHES
    assert all(f"no first message within {FIRST_MESSAGE_S:g} s" in details for _, details in silent), silent


@pytest.mark.parametrize("name", ["adapter\x00.json", "/etc/passwd", "../escape", "a/../../b", "./a", "a//b", "a/", "",
                                  "a\\b", "a\nb", "a\x1b[2J", "x" * 256])
def test_a_signed_file_name_must_be_a_plain_relative_name(material, name):
    key = _operator(material)
    files = {name: {"size": 1, "sha256": "0" * 64}}
    payload, signature = sign_manifest({"type": "t", "files": files, **validity(1)}, key)
    with pytest.raises(ManifestError) as refused:
        check_signed(payload, signature, key.public_key(), "t")
    assert refused.value.reason == "bad-file-name"


def test_publishing_an_export_that_lists_a_nul_file_name_is_refused_by_name(registry, material, tmp_path, tiny_package):
    """The signed ONNX adapter manifest of `publish --onnx-adapter` lists a name with a NUL
    byte: a named refusal (it was a ValueError from the OS), and nothing is published."""
    key = _operator(material)
    onnx = tmp_path / "onnx"
    onnx.mkdir()
    (onnx / "adapter.onnx_adapter").write_bytes(b"weights")
    write_signed(onnx, ADAPTER_EXPORT_NAME, {
        "type": ADAPTER_EXPORT_TYPE, "base_id": tiny_package.base_id, "release_id": "0" * 64,
        "files": {"adapter.onnx_adapter\x00": {"size": 7, "sha256": sha256_hex(b"weights")}}, **validity(1)}, key)
    with _client(registry, material) as client:
        with pytest.raises(ManifestError) as refused:
            operator.publish(client, key, material / "adapter-1", "stable", onnx_adapter=onnx)
        assert refused.value.reason == "bad-file-name"
        assert client.releases() == []


def test_promotions_are_valid_for_10_minutes(registry, material):
    """A promotion statement signed more than PROMOTION_VALID ago is refused (the signer's
    clock is injected); one signed 8 minutes ago still applies."""
    key = _operator(material)
    with _client(registry, material) as client:
        v1 = operator.publish(client, key, material / "adapter-1", "canary")
        now = datetime.now(UTC)
        with pytest.raises(RegistryError, match="INVALID_ARGUMENT: expired"):
            client.promote(*sign_promotion(key, v1, "stable", now=now - PROMOTION_VALID - timedelta(seconds=5)))
        client.promote(*sign_promotion(key, v1, "beta", now=now - PROMOTION_VALID + timedelta(minutes=2)))
        assert [list(e.channels) for e in client.releases()] == [["beta", "canary"]]


def test_registry_cli_publishes_and_lists_what_it_can_read(registry, material):
    """`fedpeft registry publish` signs the publish request itself; `registry list` prints a
    line a release, and a garbage answer (too deep, not an object, missing keys) is named."""
    address = ["--registry", registry.address, "--ca-cert", str(material / "tls" / "ca.crt")]
    published = subprocess.run([sys.executable, "-m", "fedpeft.cli", "registry", "publish", str(material / "adapter-1"),
                                "--operator-key", str(material / "operator.key"), "--channel", "stable", *address],
                               capture_output=True, text=True)
    assert published.returncode == 0 and "published v1" in published.stdout, published.stderr
    listed = subprocess.run([sys.executable, "-m", "fedpeft.cli", "registry", "list", *address],
                            capture_output=True, text=True)
    assert listed.returncode == 0 and listed.stdout.startswith("v1\tbase ") and "\tstable\t" in listed.stdout
    garbage = {b"[" * 100_000 + b"]" * 100_000: "too-deep", b"[]": "malformed", b'{"version": 1}': "malformed",
               b'{"version": "x", "base_id": "b", "expires": "e"}': "malformed"}
    for manifest, reason in garbage.items():
        entry = pb.ReleaseEntry(release=pb.SignedManifest(manifest=manifest, signature=b"{}"))
        assert operator.describe(entry) == f"unreadable entry: {reason}"
