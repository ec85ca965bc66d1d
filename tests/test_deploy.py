"""The federation on Flower's Deployment Engine: real SuperLink and SuperNode processes on
127.0.0.1 with TLS and SuperNode authentication, a mixed fleet (PyTorch nodes and device
nodes that cannot import torch), a device node killed mid-round and brought back, and the
server killed with kill -9 after round 2 and restarted (resume).

One deployment serves all tests of this module (each ClientApp message starts a Python
process with torch, so a deployed round takes tens of seconds on two cores).
"""

from __future__ import annotations

import json
import threading
import time
from pathlib import Path

import psutil
import pytest
from conftest import torch_free_environment

from fedpeft.core.config import load_config
from fedpeft.core.trust.keys import load_public_key, new_key_pair
from fedpeft.core.trust.release import verify_release
from fedpeft.deploy.flower import FlowerProcess, flower_environment
from fedpeft.deploy.local import LocalDeployment
from fedpeft.deploy.supernode import SuperNodeSettings
from fedpeft.deploy.node_auth import new_node_auth_key
from fedpeft.deploy.submit import wait_for_run, write_run_files
from fedpeft.server.checkpoint import CHECKPOINT_FILE, load_checkpoint

TORCH_NODES, DEVICE_NODES, ROUNDS = 2, 2, 3
NODES = TORCH_NODES + DEVICE_NODES
DROPPED = NODES - 1  # a device node


def _wait(condition, timeout: float, what: str, deployment: LocalDeployment) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        deployment.check_alive()
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.5)


def _running(program: str) -> list[int]:
    return [p.pid for p in psutil.process_iter(["cmdline"]) if program in " ".join(p.info["cmdline"] or ())]


def _auth_public_key_line(private_key: Path) -> str:
    """The first base64 line of the PEM public key a SuperNode with this key presents (what
    the SuperLink logs when it refuses the key)."""
    from cryptography.hazmat.primitives import serialization

    key = serialization.load_ssh_private_key(private_key.read_bytes(), password=None)
    pem = key.public_key().public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    return pem.decode().splitlines()[1]


def _checkpoint_round(out: Path) -> int:
    checkpoint = load_checkpoint(out / CHECKPOINT_FILE)
    return checkpoint.round if checkpoint else 0


@pytest.fixture(scope="module")
def deployed(tiny_bert_dir, tmp_path_factory):
    root = tmp_path_factory.mktemp("deploy")
    out = root / "out"
    new_key_pair(root / "operator.key")
    config = load_config(None).with_overrides(**{
        "model.path": str(tiny_bert_dir), "federation.rounds": ROUNDS, "federation.round_timeout": 90.0,
        "run.out": str(out), "security.operator_key": str(root / "operator.key"),
    })
    deployment = LocalDeployment(out / "deployment", TORCH_NODES, DEVICE_NODES,
                                 torch_free_environment(root / "device-env"))
    config = deployment.prepare(config)
    facts: dict = {"root": root, "out": out, "deployment": deployment}
    try:
        deployment.start()
        # A SuperNode whose key was never registered is refused by the SuperLink.
        stranger_key = root / "stranger.key"
        new_node_auth_key(stranger_key)
        stranger = FlowerProcess("stranger", SuperNodeSettings(
            deployment.address, deployment.tls / "ca.crt", stranger_key, port=deployment.node_ports[0] + 1000,
            node_config={"partition-id": 0, "num-partitions": NODES}).command(),
            root / "stranger.log", flower_environment(deployment.cli.home)).start()

        settings, app = write_run_files(deployment.work, config)
        first_run = deployment.cli.submit(app, {"config": str(settings), "resume": True})
        # SuperNode 2 dies while it trains in round 1, and comes back once round 1 is done.
        dropped_log = deployment.supernodes[DROPPED].log
        _wait(lambda: "Receiving: train message" in dropped_log.read_text(), 300, "round 1 training", deployment)
        deployment.supernodes[DROPPED].kill9()
        _wait(lambda: _checkpoint_round(out) >= 1, 300, "round 1", deployment)
        # (in the background: the SuperLink lets its key in again only once its heartbeats lapsed)
        rejoin = threading.Thread(target=deployment.start_supernodes, args=([DROPPED],))
        rejoin.start()
        # The server (SuperLink, its SuperExec and the ServerApp) is killed after round 2.
        _wait(lambda: _checkpoint_round(out) >= 2, 300, "round 2", deployment)
        deployment.superlink.kill9()
        facts["serverapps_after_kill"] = _running("flwr-serverapp")
        facts["killed_at"] = load_checkpoint(out / CHECKPOINT_FILE)
        facts["rows_before_kill"] = (out / "metrics.jsonl").read_text().splitlines()
        time.sleep(3)
        facts["round_after_kill"] = _checkpoint_round(out)  # nothing of the killed run goes on writing

        deployment.start_superlink()
        rejoin.join()
        deployment.wait_online(list(range(NODES)))
        second_run = deployment.cli.submit(app, {"config": str(settings), "resume": True})
        facts["status"] = wait_for_run(deployment.cli, second_run, 600, deployment.check_alive)
        facts["server_log"] = deployment.cli.run_log(second_run)
        facts["first_run"], facts["second_run"] = first_run, second_run
        facts["stranger_online"] = stranger.alive and "SuperNode ID" in stranger.log_text()
        facts["stranger_log"] = stranger.log_text()
        facts["stranger_public_key"] = _auth_public_key_line(stranger_key)
        stranger.stop()
        facts["superlink_log"] = deployment.superlink.log.read_text()  # both starts of the SuperLink
    finally:
        deployment.stop()
    assert facts["status"] == "finished:completed", facts["server_log"][-3000:]
    facts["summary"] = json.loads((out / "summary.json").read_text())
    facts["rows"] = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    return facts


@pytest.mark.deploy
def test_runs_to_completion_with_tls_node_auth_and_signed_deltas(deployed):
    deployment = deployed["deployment"]
    assert "Uvicorn running on https://" in deployment.superlink.log_text()
    rows = deployed["rows"]
    assert [r["round"] for r in rows] == list(range(1, ROUNDS + 1))
    assert all(r["accepted"] >= 2 and not r["rejected"] for r in rows)  # every delta verified against the keyring
    summary = deployed["summary"]
    # the device nodes (torch unimportable there) trained, scored and personalized too
    assert summary["device_nodes"] == DEVICE_NODES and summary["clients_reported"] == NODES
    release = verify_release(deployed["out"] / "adapter", load_public_key(deployed["root"] / "operator.pub"))
    assert release.version == ROUNDS
    assert summary["clients"] == NODES


@pytest.mark.deploy
def test_an_unregistered_supernode_is_refused(deployed):
    assert not deployed["stranger_online"], deployed["stranger_log"][-2000:]
    # Not merely dead: the SuperLink refused its key (Flower's Fleet.ActivateNode error, logged
    # with the key it was offered), and the SuperNode was told so.
    refusals = [line for line in deployed["superlink_log"].splitlines()
                if "No SuperNode found with the given public key" in line]
    assert any(deployed["stranger_public_key"] in line for line in refusals), \
        (refusals, deployed["superlink_log"][-2000:])
    assert "Failed to activate SuperNode" in deployed["stranger_log"], deployed["stranger_log"][-2000:]


@pytest.mark.deploy
def test_a_supernode_killed_mid_round_does_not_stop_the_round_and_rejoins(deployed):
    rows = deployed["rows"]
    assert rows[0]["accepted"] == NODES - 1  # round 1 went on without the killed node
    assert any(r["accepted"] == NODES for r in rows[1:])  # the node came back and trained again
    cache = deployed["deployment"].nodes[DROPPED].folder / "cache"
    assert [p.name for p in cache.iterdir() if p.name == "bases"] == []  # a device node never gets the base
    assert len(list((cache / "exports").iterdir())) == 1  # its training export, received once, survived its restart


@pytest.mark.deploy
def test_killed_server_resumes_from_last_completed_round_with_same_adapter(deployed):
    killed_at, summary, rows = deployed["killed_at"], deployed["summary"], deployed["rows"]
    assert killed_at.round == 2 and deployed["round_after_kill"] == 2
    assert deployed["serverapps_after_kill"] == []  # the ServerApp died with the SuperLink
    assert summary["resumed_after_round"] == 2
    assert f"after round 2/{ROUNDS}, global adapter {killed_at.adapter_id[:12]}" in deployed["server_log"]
    assert rows[2]["start_adapter"] == killed_at.adapter_id  # round 3 trained from the checkpointed adapter
    assert [json.dumps(r) for r in rows[:2]] == deployed["rows_before_kill"]
    assert summary["base_sent_to"] == 0  # every SuperNode still had the base cached by its hash
    assert summary["export_sent_to"] == 0  # and every device node its verified training export
    assert deployed["first_run"] != deployed["second_run"]
    final = load_checkpoint(deployed["out"] / CHECKPOINT_FILE)
    assert final.round == ROUNDS and final.run_id == killed_at.run_id
    assert summary["adapter_id"] == final.adapter_id


def test_deploy_commands_refuse_bad_input_with_a_named_reason(tmp_path, monkeypatch, capsys):
    from fedpeft.cli import main

    monkeypatch.chdir(tmp_path)
    with pytest.raises(SystemExit) as refused:
        main(["deploy", "local", "--nodes", "1", "--out", "run"])
    assert refused.value.code == 2
    assert "at least 2 SuperNodes, got '1'" in capsys.readouterr().err
    assert list(tmp_path.iterdir()) == []  # nothing started, nothing written (no operator key either)

    assert main(["deploy", "run", "--superlink", "127.0.0.1:9", "--ca-cert", "ca.crt", "--out", "run"]) == 2
    assert "--keyring" in capsys.readouterr().err

    keyring = tmp_path / "keyring.json"
    keyring.write_text('{"format": 1, "keys": {}}')
    (tmp_path / "ca.crt").write_text("not a certificate")
    assert main(["deploy", "run", "--superlink", "127.0.0.1:9", "--ca-cert", "ca.crt", "--keyring", str(keyring),
                 "--out", "run"]) == 2
    assert "`flwr run" in capsys.readouterr().err  # no SuperLink there: Flower's own error, passed on
