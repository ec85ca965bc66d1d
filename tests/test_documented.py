"""Documented behaviours that had no test of their own (issue 24, item 8), each through
the real code path: `fedpeft verify`'s tensor-mismatch, the DP budget refused by the CLI and
by a resumed run, the privacy ledger rebuilt from a checkpoint, `deploy local` stopping what
a killed invocation left running, and `federation.min_clients`."""

from __future__ import annotations

import json
import math
import re
import subprocess
import sys
import time

import psutil
import pytest
from safetensors.numpy import load_file, save_file

from fedpeft.cli import main
from fedpeft.core.config import load_config
from fedpeft.core.errors import ConfigError, FedPeftError
from fedpeft.core.training.synthetic_data import LABELS
from fedpeft.core.trust.keys import Keyring, load_private_key, load_public_key, new_key_pair, public_key_path
from fedpeft.core.trust.release import ADAPTER_FILES, sign_release
from fedpeft.core.trust.signed_files import file_entries, write_signed
from fedpeft.server.privacy import epsilon


def test_verify_names_tensor_mismatch_when_the_signed_tensor_list_is_not_the_files(tmp_path, capsys):
    """A release whose file hashes match but whose signed tensor manifest describes other
    tensors (an operator's tooling that re-signed after swapping the weights file) is
    refused as tensor-mismatch, not accepted on the file hashes alone."""
    import numpy as np

    new_key_pair(tmp_path / "operator.key")
    key = load_private_key(tmp_path / "operator.key")
    folder = tmp_path / "adapter"
    folder.mkdir()
    (folder / "adapter_config.json").write_text("{}")
    save_file({"w": np.zeros((2, 2), np.float32)}, str(folder / "adapter_model.safetensors"))
    release = sign_release(folder, key, version=1, base_id="b" * 64, template_id="t" * 64, labels=list(LABELS),
                           parent=None, metrics={}, valid_days=1)
    args = ["verify", str(folder), "--key", str(tmp_path / "operator.pub")]
    assert main(args) == 0 and capsys.readouterr().out.startswith("OK:")

    save_file({"w": np.ones((2, 2), np.float32)}, str(folder / "adapter_model.safetensors"))
    manifest = {**release.manifest, "files": file_entries(folder, ADAPTER_FILES)}  # files re-hashed, tensors not
    write_signed(folder, "release", manifest, key)
    assert load_file(str(folder / "adapter_model.safetensors"))["w"].sum() == 4
    assert main(args) == 1
    err = capsys.readouterr().err
    assert "tensor-mismatch" in err and len(err.strip().splitlines()) == 1, err


DP_RUN = """
[privacy]
mode = "central"
clip = 1.0
noise_multiplier = 0.8
target_epsilon = {target}

[security]
operator_key = "keys/operator.key"
"""


def _planned_epsilon(err: str) -> float:
    return float(re.search(r"would spend epsilon ([0-9.e+-]+)", err).group(1))


def test_simulate_refuses_a_run_over_its_epsilon_target_before_flower_starts(tmp_path, tiny_bert_dir, monkeypatch,
                                                                             capsys):
    """`fedpeft simulate` plans the run's epsilon with the accountant at the sampling rate
    the run will use and refuses it, exit 2, one line, before any node starts; nothing is
    written. The rate is what Flower samples: --clients-per-round 2 of 4 is 0.5, and so is
    --clients-per-round 1, because federation.min_clients (2) is Flower's minimum sample
    (planned at 0.25 before issue 24, below what the run would spend)."""
    monkeypatch.chdir(tmp_path)
    (tmp_path / "dp.toml").write_text(DP_RUN.format(target=0.5))
    common = ["simulate", "--config", "dp.toml", "--model", str(tiny_bert_dir), "--clients", "4", "--rounds", "3",
              "--out", "result"]
    for extra, rate in (([], 1.0), (["--clients-per-round", "2"], 0.5),
                        (["--clients-per-round", "1"], 0.5)):
        assert main(common + extra) == 2
        err = capsys.readouterr().err
        assert "over privacy.target_epsilon 0.5" in err and len(err.strip().splitlines()) == 1, err
        assert _planned_epsilon(err) == pytest.approx(epsilon([(0.8, rate)] * 3, 1e-5), rel=1e-2)
    assert not (tmp_path / "result").exists() and not (tmp_path / "keys").exists()


def _resumable(tmp_path, tiny_bert_dir, target: float, rounds: int, rows: list[dict]):
    """A prepared run whose checkpoint says len(rows) DP rounds were spent (as `rows` say)."""
    from fedpeft.server.checkpoint import Checkpoint
    from fedpeft.server.federation import prepare

    keyring = Keyring(tmp_path / "keyring.json")
    new_key_pair(tmp_path / "client.key")
    keyring.enroll("client-0", load_public_key(public_key_path(tmp_path / "client.key")))
    keyring.save()
    if not (tmp_path / "operator.key").exists():
        new_key_pair(tmp_path / "operator.key")
    config = load_config(None).with_overrides(**{
        "model.path": str(tiny_bert_dir), "security.keyring": str(keyring.path), "federation.rounds": rounds,
        "security.operator_key": str(tmp_path / "operator.key"), "privacy.mode": "central",
        "privacy.noise_multiplier": 0.8, "privacy.target_epsilon": target})
    first = prepare(config, LABELS, tmp_path / "out")
    Checkpoint(len(rows), first.job.run_id, first.job.base_id, first.job.template_id, dict(first.template.init), {},
               rows).save(tmp_path / "out" / "checkpoint.safetensors")
    return prepare(config, LABELS, tmp_path / "out", resume=True)


def test_a_resumed_run_rebuilds_its_privacy_ledger_and_is_refused_over_budget(tmp_path, tiny_bert_dir, capsys):
    """The ledger of a resumed run starts from the rounds its checkpoint recorded (their
    noise and sampling rate, not fresh): a run whose spent epsilon is already over the target
    is refused before any round, and a finished one states what was spent."""
    from fedpeft.server.federation import Roster, federate

    rows = [{"round": 1, "noise_multiplier": 0.8, "sample_rate": 0.5},
            {"round": 2, "noise_multiplier": 0.4, "sample_rate": 0.25}]
    spent = epsilon([(0.8, 0.5), (0.4, 0.25)], 1e-5)
    fresh = epsilon([(0.8, 1.0)], 1e-5)  # what round 3 alone would cost (no node connected: rate 1)

    over = _resumable(tmp_path / "over", tiny_bert_dir, target=spent * 0.9, rounds=3, rows=rows)
    assert over.done == 2
    with pytest.raises(ConfigError, match="over privacy.target_epsilon") as refused:
        federate(None, over, Roster())  # refused before Flower's grid is touched
    assert _planned_epsilon(str(refused.value)) == pytest.approx(epsilon([(0.8, 0.5), (0.4, 0.25), (0.8, 1.0)], 1e-5),
                                                                 rel=1e-2)
    assert fresh < spent * 0.9  # round 3 alone is within the target: the rebuilt history is what refuses it

    done = _resumable(tmp_path / "done", tiny_bert_dir, target=spent * 1.01, rounds=2, rows=rows)
    capsys.readouterr()
    final, run_log = federate(None, done, Roster())
    out = capsys.readouterr().out
    assert "all 2 rounds were completed before" in out
    planned = float(re.search(r"the run spends epsilon ([0-9.e+-]+)", out).group(1))
    assert planned == pytest.approx(spent, rel=1e-2) and not math.isclose(planned, fresh, rel_tol=1e-2)
    assert run_log.rows == rows


def test_min_clients_nodes_must_be_connected_before_a_run_starts():
    """`federation.min_clients` connected nodes start a run; fewer, until the round timeout: a named error."""
    from fedpeft.server.federation import wait_for_nodes

    class Connected:
        def __init__(self, count: int) -> None:
            self.count = count

        def get_node_ids(self):
            return list(range(1, self.count + 1))

    minimum = load_config(None).with_overrides(**{"federation.min_clients": 4}).federation.min_clients
    assert wait_for_nodes(Connected(5), minimum, 0.0) == [1, 2, 3, 4, 5]
    with pytest.raises(FedPeftError, match="only 3 of the 4 required nodes connected within 0 s"):
        wait_for_nodes(Connected(3), minimum, 0.0)


def test_deploy_local_stops_the_flower_processes_a_killed_invocation_left_running(tmp_path):
    """A `deploy local` killed with kill -9 leaves its SuperLink (own session) running;
    the next invocation on the same work folder stops that process tree before it starts,
    and leaves alone a recorded pid that is no longer a Flower program."""
    from fedpeft.deploy.flower import process_tree
    from fedpeft.deploy.local import LocalDeployment

    new_key_pair(tmp_path / "operator.key")
    config = load_config(None).with_overrides(**{"security.operator_key": str(tmp_path / "operator.key")})
    work = tmp_path / "deployment"
    killed = LocalDeployment(work, 2)
    killed.prepare(config)
    killed.start_superlink()  # ... and then the invocation dies without stopping it
    tree = [p.pid for p in process_tree(killed.superlink.process.pid)]
    bystander = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)"])
    try:
        recorded = json.loads(killed.pid_file.read_text())
        assert recorded == [killed.superlink.process.pid]
        killed.pid_file.write_text(json.dumps(recorded + [bystander.pid]))  # a pid now used by something else

        LocalDeployment(work, 2).prepare(config)  # the next invocation
        killed.superlink.process.wait(timeout=30)
        deadline = time.monotonic() + 30
        while any(psutil.pid_exists(pid) and psutil.Process(pid).status() != psutil.STATUS_ZOMBIE for pid in tree):
            assert time.monotonic() < deadline, f"still running: {tree}"
            time.sleep(0.2)
        assert not killed.pid_file.exists()
        assert bystander.poll() is None  # not a Flower program: not killed
    finally:
        bystander.kill()
        bystander.wait()
        if killed.superlink.alive:
            killed.superlink.kill9()
