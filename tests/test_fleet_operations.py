"""Fleet operations against a real registry process on 127.0.0.1 over TLS: 50 simulated
devices send signed health reports, the automated canary promotes a good release to stable
and rolls a bad one back (each decision with its evidence), devices on stable end on the
good release, and forged, tampered, replayed, oversized and unknown-key reports are refused
by name and counted in /metrics."""

from __future__ import annotations

import hashlib
import json
import ssl
import subprocess
import time
import urllib.request
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
from conftest import DATA, release_adapter, torch_free_environment, world_key
from prometheus_client.parser import text_string_to_metric_families

from fedpeft.cli import main
from fedpeft.core.base.model import load_base
from fedpeft.core.training import synthetic_data
from fedpeft.core.training.synthetic_data import LABELS
from fedpeft.core.trust.device_report import sign_report
from fedpeft.core.trust.keys import Keyring, load_private_key, new_key_pair
from fedpeft.core.trust.tls import write_tls_files
from fedpeft.device.health import label_drift, latency_percentiles
from fedpeft.device.predict import Predictor, SlotRelease
from fedpeft.device.registry_client import RegistryClient, RegistryError
from fedpeft.device.slot import Device
from fedpeft.export.exporter import ExportRequest, export_adapter_only
from fedpeft.server.registry import operator
from fedpeft.server.registry.process import RegistryProcess
from fedpeft.server.registry.tuf_operator import rotate

DEVICES = 50
POLICY = """
[canary]
promote_to = "stable"
min_reports = 40
min_load_success = 0.999
min_validation_delta = -0.5
max_latency_ratio = 1.10
"""


@pytest.fixture
def fleet(tmp_path, tuf_world):
    """50 enrolled device keys (and 10 for the stable baseline), an automation key named by
    the canary and stable roles, and a registry judging canary by the policy above."""
    devices = Keyring(tmp_path / "devices.json")
    keys = []
    for index in range(DEVICES + 10):
        new_key_pair(tmp_path / "keys" / f"device-{index}.key")
        keys.append(load_private_key(tmp_path / "keys" / f"device-{index}.key"))
        devices.enroll(f"device-{index}", keys[-1].public_key())
    devices.save()
    new_key_pair(tmp_path / "automation.key")
    (tmp_path / "policy.toml").write_text(POLICY)
    registry = RegistryProcess(tmp_path, tuf_world["root"] / "operators.json", tuf_world["root"] / "tls", extra=(
        "--tuf", str(tuf_world["tuf"].registry), "--devices", str(tmp_path / "devices.json"),
        "--canary-policy", str(tmp_path / "policy.toml"), "--automation-key", str(tmp_path / "automation.key"),
        "--metrics-port", "0")).start()
    client = RegistryClient(registry.address, tuf_world["root"] / "tls" / "ca.crt", timeout_s=30)
    automation = load_private_key(tmp_path / "automation.key")
    for channel in ("canary", "stable"):  # the operator gives the automation key (only) these two roles
        rotate(client, channel, add=[automation], remove=[], delegator_keys=[tuf_world["key"]],
               role_keys=[world_key(tuf_world, channel)])
    yield {"registry": registry, "client": client, "keys": keys, "world": tuf_world}
    client.close()
    registry.stop()


def _report(key, world, release, channel, delta_rows: int, p95: float = 10.0, load_ok: bool = True,
            recent_labels: tuple[int, ...] | None = None):
    """A device's signed report; `recent_labels`: its recent inputs' predicted-label counts,
    against a reference of (25, 25, 25, 25)."""
    drift = label_drift((25, 25, 25, 25), recent_labels) if recent_labels else None
    return sign_report(key, base_id=world["base_id"], release_id=release.release_id, channel=channel,
                       load_ok=load_ok, latency_ms=(p95 / 2, p95), rows=100, correct=80 + delta_rows,
                       previous_correct=80, drift=drift)


def _id(signed) -> str:
    return hashlib.sha256(signed.manifest).hexdigest()


def _send_all(client, reports) -> list[str]:
    with ThreadPoolExecutor(8) as pool:
        return list(pool.map(lambda signed: client.report(*signed), reports))


def _scrape(fleet) -> dict:
    context = ssl.create_default_context(cafile=str(fleet["world"]["root"] / "tls" / "ca.crt"))
    with urllib.request.urlopen(fleet["registry"].metrics_url, context=context, timeout=10) as reply:
        return {(s.name, tuple(sorted(s.labels.items()))): s.value
                for family in text_string_to_metric_families(reply.read().decode()) for s in family.samples}


def test_the_canary_promotes_a_good_release_and_rolls_back_a_bad_one(fleet, tmp_path, capsys):
    client, keys, world = fleet["client"], fleet["keys"], fleet["world"]
    publish = lambda index, channel: operator.publish(  # noqa: E731
        client, world["key"], world["root"] / f"adapter-{index}", channel,
        channel_keys=[world_key(world, channel)])
    stable = [Device(tmp_path / f"stable-{i}", world["key"].public_key(), world["base_id"], "stable",
                     trusted_root=world["tuf"].root.read_bytes()) for i in range(3)]
    v1 = publish(1, "stable")
    assert all(device.pull(client).version == 1 for device in stable)
    assert _send_all(client, [_report(k, world, v1, "stable", 0) for k in keys[DEVICES:]]) == [""] * 10  # baseline

    good = publish(2, "canary")
    decisions = _send_all(client, [_report(k, world, good, "canary", +1, p95=10.5, recent_labels=(24, 26, 25, 25))
                                   for k in keys[:DEVICES]])
    assert decisions.count("promote") == 1 and set(decisions) == {"", "promote"}  # decided once, at 40 reports
    assert all(device.pull(client).release_id == good.release_id for device in stable)

    time.sleep(1.1)  # each device may report once a second
    bad = publish(1, "canary")  # the first weights again, as v3: worse on the devices' rows
    assert client.latest(world["base_id"], "stable", 0).manifest and \
        _id(client.latest(world["base_id"], "stable", 0)) == good.release_id  # the channel table follows too
    decisions = _send_all(client, [_report(k, world, bad, "canary", -10, recent_labels=(70, 10, 10, 10))
                                   for k in keys[:40]])  # min_reports: the 40th settles it
    assert decisions.count("rollback") == 1
    with pytest.raises(RegistryError, match="not-on-channel"):  # canary serves the good release again
        client.report(*_report(keys[45], world, bad, "canary", -10))
    assert _id(client.latest(world["base_id"], "canary", 0)) == good.release_id
    assert all(device.pull(client).status == "not-modified" for device in stable)
    assert all(device.version == good.version for device in stable)  # stable ends on the good release
    late = Device(tmp_path / "late-canary", world["key"].public_key(), world["base_id"], "canary",
                  trusted_root=world["tuf"].root.read_bytes())
    assert late.pull(client).release_id == good.release_id  # canary was moved back to what stable serves

    status = client.status()
    made = {(d["action"], d["release_id"]): d["evidence"] for d in status["decisions"]}
    assert set(made) == {("promote", good.release_id), ("rollback", bad.release_id)}
    assert made[("promote", good.release_id)]["rules"]["median_validation_delta"] == {"value": 1.0, "passed": True}
    assert made[("rollback", bad.release_id)]["rules"]["median_validation_delta"] == {"value": -10.0, "passed": False}
    assert made[("promote", good.release_id)]["health"]["reports"] == 40
    health = {h["release_id"]: h for h in status["health"]}
    assert health[good.release_id]["median_drift"] == pytest.approx(0.01) and not health[good.release_id]["drifting"]
    assert health[bad.release_id]["median_drift"] == pytest.approx(0.45) and health[bad.release_id]["drifting"]
    assert main(["registry", "status", "--registry", fleet["registry"].address,
                 "--ca-cert", str(world["root"] / "tls" / "ca.crt"), "--html", str(tmp_path / "status.html")]) == 0
    page = (tmp_path / "status.html").read_text()
    assert page.count('<span class="bad">drifting</span>') == 1 and page.count("<tr>") == (1 + 2) + (1 + 3) + (1 + 2)  # header + rows: channels, releases, decisions
    printed = capsys.readouterr().out
    assert "promote" in printed and "rollback" in printed and "median_validation_delta -10 FAILED" in printed
    assert printed.count("DRIFTING") == 1


def test_bad_reports_are_refused_by_name_and_counted(fleet, tmp_path):
    client, keys, world = fleet["client"], fleet["keys"], fleet["world"]
    release = operator.publish(client, world["key"], world["root"] / "adapter-1", "stable",
                               channel_keys=[world_key(world, "stable")])
    before = _scrape(fleet)
    new_key_pair(tmp_path / "stranger.key")
    payload, signature = _report(keys[0], world, release, "stable", 0)
    tampered, tampered_signature = _report(keys[3], world, release, "stable", 0)
    cases = {
        "unknown-key": _report(load_private_key(tmp_path / "stranger.key"), world, release, "stable", 0),
        "bad-signature": (tampered.replace(b'"load_ok":true', b'"load_ok":false'), tampered_signature),
        "oversized": _report(keys[1], world, release, "stable", 0)[0] + b" " * 4096,
        "malformed": sign_report(keys[2], base_id=world["base_id"], release_id=release.release_id, channel="stable",
                                 load_ok=True, latency_ms=(1.0, 2.0), rows=10, correct=11, previous_correct=0),
    }
    cases["oversized"] = (cases["oversized"], _report(keys[1], world, release, "stable", 0)[1])
    assert client.report(payload, signature) == ""
    with pytest.raises(RegistryError, match="too-often:"):  # at once: the same device within a second
        client.report(*_report(keys[0], world, release, "stable", +1))
    cases["not-on-channel"] = _report(keys[4], world, release, "canary", 0)  # canary does not serve it
    cases["unknown-release"] = sign_report(keys[5], base_id=world["base_id"], release_id="0" * 64, channel="stable",
                                           load_ok=True, latency_ms=(1.0, 2.0), rows=10, correct=5, previous_correct=5)
    for reason, (body, sig) in cases.items():
        with pytest.raises(RegistryError, match=f"{reason}:"):
            client.report(body, sig)
    time.sleep(1.1)
    with pytest.raises(RegistryError, match="replayed:"):  # the same signed report again
        client.report(payload, signature)
    assert client.report(*_report(keys[0], world, release, "stable", 0, p95=12.0)) == ""  # a later one replaces it
    after = _scrape(fleet)
    for reason in (*cases, "too-often", "replayed"):
        key = ("fedpeft_registry_refusals_total", (("call", "Report"), ("reason", reason)))
        assert after.get(key, 0) - before.get(key, 0) == 1, reason
    accepted = ("fedpeft_registry_device_reports_total", (("channel", "stable"),))
    assert after[accepted] - before.get(accepted, 0) == 2
    assert client.status()["health"] == [{"release_id": release.release_id, "reports": 1, "load_success": 1.0,
                                          "median_delta": 0.0, "p95_latency_ms": 12.0, "median_drift": None,
                                          "drifting": False}]  # the device counts once, with its latest figures


def test_what_a_device_measures_for_its_report():
    assert label_drift((10, 10), (10, 10)) == 0.0 and label_drift((10, 0), (0, 3)) == 1.0
    assert label_drift((25, 25, 25, 25), (70, 10, 10, 10)) == pytest.approx(0.45)
    for bad in (((1, 2), (1,)), ((0, 0), (1, 1)), ((1, -1), (1, 1))):
        with pytest.raises(ValueError):
            label_drift(*bad)
    p50, p95 = latency_percentiles([0.001 * i for i in range(1, 101)])
    assert p50 == pytest.approx(50.5) and p95 == pytest.approx(95.05)


def test_a_device_measures_its_installed_release_and_reports_it(trained_export, tiny_bert_dir, tmp_path):
    """`fedpeft device report`, run with torch unimportable: the installed release's
    .onnx_adapter on the device's held-out rows (ONNX Runtime), against the release before it
    (the trained adapter, then a spoiled one: a negative delta), sent signed."""
    key, root = trained_export["key"], tmp_path
    operators = Keyring(root / "operators.json")
    operators.enroll("ops", key.public_key())
    operators.save()
    write_tls_files(root / "tls", ["127.0.0.1"])
    new_key_pair(root / "device.key")
    devices = Keyring(root / "devices.json")
    devices.enroll("phone-1", load_private_key(root / "device.key").public_key())
    devices.save()
    base = load_base(trained_export["package"], len(LABELS), in_memory_quantization=False)
    template, rng = trained_export["template"], np.random.default_rng(0)
    spoiled = {n: (v + (rng.normal(scale=3.0, size=v.shape) if n in template.trainable_names else 0)).astype(np.float32)
               for n, v in trained_export["arrays"].items()}
    adapters = {"good": trained_export["root"] / "adapter",
                "spoiled": release_adapter(root / "spoiled", base, template, spoiled, key, method="ffa-lora")}
    for name, adapter in adapters.items():
        export_adapter_only(ExportRequest(adapter, root / f"onnx-{name}", tiny_bert_dir, release_key=key.public_key(),
                                          data=DATA), trained_export["export"], key.public_key(), key)
    rows = synthetic_data.generate(3, 0)[:24]
    (root / "rows.jsonl").write_text("".join(json.dumps({"text": r["text"], "label": r["label"]}) + "\n" for r in rows))
    (root / "recent.txt").write_text("\n".join(r["text"] for r in synthetic_data.generate(3, 1)[:12]))
    registry = RegistryProcess(root, root / "operators.json", root / "tls",
                               extra=("--devices", str(root / "devices.json"))).start()
    try:
        address = ["--registry", registry.address, "--ca-cert", str(root / "tls" / "ca.crt")]
        with RegistryClient(registry.address, root / "tls" / "ca.crt") as client:
            device = None
            for name, adapter in adapters.items():
                release = operator.publish(client, key, adapter, "stable", onnx_adapter=root / f"onnx-{name}")
                device = device or Device(root / "device", key.public_key(), release.base_id)
                assert device.pull(client).release_id == release.release_id
            truth = [r["label"] for r in rows]
            scored = [sum(p.label == t for p, t in zip(Predictor(trained_export["export"], key.public_key(), "base",
                                                                 SlotRelease(folder)).predict([r["text"] for r in rows]),
                                                       truth, strict=True))
                      for folder in (device.previous_release(), device.current)]
            expected = f"validation {100 * (scored[1] - scored[0]) / len(rows):+.2f} points on 24 rows"
            command = [str(torch_free_environment(root / "env") / "bin" / "fedpeft"), "device", "report", "--state",
                       str(root / "device"), "--key", str(trained_export["root"] / "operator.pub"), "--base-id",
                       release.base_id, "--export", str(trained_export["export"]), "--data", str(root / "rows.jsonl"),
                       "--device-key", str(root / "device.key"), "--recent", str(root / "recent.txt"), *address]
            done = subprocess.run(command, capture_output=True, text=True, timeout=300)
            assert done.returncode == 0, done.stderr[-2000:]
            assert "reported on v2: loaded yes" in done.stdout and expected in done.stdout, done.stdout
            assert scored[1] < scored[0]  # the spoiled release is worse on these rows
            (health,) = client.status()["health"]
            assert health["reports"] == 1 and health["load_success"] == 1.0
            assert health["median_delta"] == pytest.approx(100 * (scored[1] - scored[0]) / len(rows))
            assert 0 <= health["median_drift"] <= 1 and health["p95_latency_ms"] > 0
            time.sleep(1.1)  # a device may report once a second
            again = subprocess.run(command, capture_output=True, text=True, timeout=300)  # a periodic report
            assert again.returncode == 0, again.stderr[-2000:]
            assert client.status()["health"][0]["reports"] == 1  # the device still counts once
    finally:
        registry.stop()
