"""A real federation: `fedpeft simulate` in its own process, Flower's engine, tiny BERT."""

import json
import os
import subprocess
import sys
import time
from types import SimpleNamespace

import numpy as np
import pytest
from peft import PeftModel

from fedpeft import load_adapter
from fedpeft.core.base.model import load_base
from fedpeft.core.base.package import BasePackage
from fedpeft.core.base.tasks import get_task
from fedpeft.core.errors import ConfigError
from fedpeft.core.training.data import DataSpec, client_data
from fedpeft.core.training.loop import evaluate
from fedpeft.core.training.settings import TrainSettings
from fedpeft.core.trust.keys import load_public_key
from fedpeft.core.trust.release import verify_release
from fedpeft.server.checkpoint import CHECKPOINT_FILE, load_checkpoint
from fedpeft.server.report import ARMS

ROUNDS, CLIENTS, BAD = 3, 4, 1
# One of the four clients misbehaves: it tampers in round 1, replays its round-1 reply in
# round 2 (state kept by Flower across rounds) and sends a NaN in round 3. Half of them
# train as devices: the ONNX training graph and a numpy optimizer instead of PyTorch.
# It also holds its personalization report past the phase's deadline ("slow-report"); the
# deadline is generous (honest clients report in seconds), the slow one holds past it. In
# round zero it sends its class statistics blown up 1000x and signed.
CONFIG = """
[simulation]
misbehaving = 0.25
behaviours = ["tamper", "replay", "nan", "slow-report", "blown-class-means"]
device_clients = 0.5

[federation]
evaluation_timeout = 40.0

[security]
operator_key = "keys/operator.key"
max_update_norm = 1000.0
"""


@pytest.fixture(scope="module")
def run(tiny_bert_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("run")
    (out / "run.toml").write_text(CONFIG)
    cmd = [sys.executable, "-m", "fedpeft.cli", "simulate", "--config", "run.toml", "--model", str(tiny_bert_dir),
           "--clients", str(CLIENTS), "--rounds", str(ROUNDS), "--learning-rate", "0.01", "--out", "result",
           "--track", "tensorboard"]
    env = {**os.environ, "FEDPEFT_CACHE": str(out / "cache")}
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600, env=env, cwd=out)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return out / "result", proc.stdout


def test_outputs_are_written(run):
    out, stdout = run
    assert (out / "adapter" / "adapter_config.json").is_file()
    assert (out / "adapter" / "adapter_model.safetensors").is_file()
    assert (out / "curves.png").stat().st_size > 1000
    assert (out / "clients.png").stat().st_size > 1000
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["round"] for r in rows] == list(range(1, ROUNDS + 1))
    assert all(r["bytes_up"] > 0 and r["bytes_down"] > 0 and r["accepted"] == CLIENTS - BAD for r in rows)
    assert [r["rejected"] for r in rows] == [{"tensor-hash-mismatch": 1}, {"wrong-round": 1}, {"non-finite": 1}]
    assert f"round {ROUNDS}/{ROUNDS}" in stdout
    assert "personalized" in stdout


def test_console_shows_fedpeft_progress_and_the_log_file_the_rest(run):
    out, stdout = run
    lines = stdout.splitlines()
    assert all(line.startswith("[fedpeft]") or line.split()[0] in ("adapter", *ARMS) for line in lines), lines
    assert len(lines) < 25
    log = (out / "run.log").read_text()
    assert "flwr" in log and "Registered 4 nodes" in log


def test_summary_has_the_promised_keys_and_budgets(run):
    summary = json.loads((run[0] / "summary.json").read_text())
    for key in ("rounds", "clients", "global_accuracy", "personalized_accuracy", "local_only_accuracy",
                "initial_accuracy", "bytes_up_per_client_round", "base_fp32_bytes", "base_download_bytes",
                "trainable_params", "total_params"):
        assert key in summary, key
    assert summary["rounds"] == ROUNDS and summary["clients"] == CLIENTS
    assert summary["base_download_bytes"] < 0.4 * summary["base_fp32_bytes"]
    # float32 payload, plus per tensor a serialization header and a signed manifest entry
    assert 4 * summary["trainable_params"] < summary["bytes_up_per_client_round"] < 8 * summary["trainable_params"]
    assert 0 < summary["trainable_params"] < summary["total_params"]


def test_the_federation_learns(run):
    """The tiny model sees real tokens of the synthetic data: three rounds must lift the
    global adapter clearly above the seeded template (about 0.18 -> 0.57 here)."""
    summary = json.loads((run[0] / "summary.json").read_text())
    assert summary["global_accuracy"] >= summary["initial_accuracy"] + 0.25, summary
    assert summary["personalized_accuracy"] >= summary["initial_accuracy"] + 0.25, summary


def test_a_client_that_misses_the_reporting_deadline_is_named_not_dropped(run):
    out, stdout = run
    summary = json.loads((out / "summary.json").read_text())
    assert summary["clients"] == CLIENTS and summary["clients_reported"] == CLIENTS - BAD
    assert len(json.loads((out / "clients.json").read_text())) == CLIENTS - BAD
    (missing,) = summary["missing_clients"]
    assert missing["reason"] == "no reply within 40 s"
    assert f"[fedpeft] 1 of {CLIENTS} clients did not report: node {missing['node']} (no reply within 40 s)" in stdout


def test_the_summary_carries_the_centralized_reference(run):
    """The same adapter trained on all clients' rows pooled, for as many epochs as the
    federation gave each row: the reference the global adapter is measured against."""
    out, stdout = run
    summary = json.loads((out / "summary.json").read_text())
    clients = json.loads((out / "clients.json").read_text())
    reference = summary["centralized"]
    assert reference["epochs"] == ROUNDS and reference["test_examples"] > sum(c["examples"] for c in clients)
    assert summary["centralized_accuracy"] == reference["accuracy"] >= summary["initial_accuracy"] + 0.2
    assert "[fedpeft] centralized reference" in stdout
    assert any(line.startswith("[fedpeft] done") and "centralized" in line for line in stdout.splitlines())


def test_device_clients_train_with_onnx_runtime_and_their_deltas_are_accepted(run):
    out, stdout = run
    summary = json.loads((out / "summary.json").read_text())
    assert len(summary["device_clients"]) == CLIENTS // 2
    assert f"{CLIENTS // 2} of {CLIENTS} clients train as devices" in stdout
    export = json.loads((out / "device-export" / "export.json").read_text())
    assert export["training"]["method"] == "ffa-lora" and export["parity"]["gradient_max_abs"] <= 1e-4
    honest_devices = set(summary["device_clients"]) - {r["client"] for r in summary["rejections"]}
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert honest_devices and all(r["accepted"] == CLIENTS - BAD for r in rows)  # devices' deltas pass every check


def test_round_zero_sets_the_head_from_the_honest_clients_class_means(run):
    """The bad client's round-zero reply is refused by name; the other three set the head."""
    out, stdout = run
    summary = json.loads((out / "summary.json").read_text())
    head = summary["head_init"]
    assert head["asked"] == CLIENTS and head["clients"] == CLIENTS - BAD and head["refused"] == {"bad-class-counts": 1}
    assert 0 < head["bytes_up_per_client"] < summary["bytes_up_per_client_round"]  # 0.4 percent on MiniLM
    assert f"round 0: head set from the class feature means of {CLIENTS - BAD} clients" in stdout


def test_every_bad_delta_is_rejected_and_counted_in_the_summary(run):
    summary = json.loads((run[0] / "summary.json").read_text())
    assert summary["rejected"] == summary["misbehaving"]["expected_rejected"]
    assert summary["rejected"] == {"non-finite": 1, "tensor-hash-mismatch": 1, "wrong-round": 1}
    bad_client = f"client-{next(iter(summary['misbehaving']['plan']['partitions']))}"
    assert {r["client"] for r in summary["rejections"]} == {bad_client}
    assert summary["unchanged_rounds"] == []


def test_published_adapter_is_a_verified_release(run):
    out, _ = run
    key = out.parent / "keys" / "operator.pub"
    ok = subprocess.run([sys.executable, "-m", "fedpeft.cli", "verify", str(out / "adapter"), "--key", str(key)],
                        capture_output=True, text=True, timeout=120)
    assert ok.returncode == 0, ok.stderr
    summary = json.loads((out / "summary.json").read_text())
    release = verify_release(out / "adapter", load_public_key(key), base_id=summary["base_id"])
    assert release.release_id == summary["release_id"]
    assert release.version == ROUNDS and release.manifest["template_id"] == summary["template_id"]


def _reported_tests(out, summary) -> list:
    """Test splits of the clients whose accuracies the summary averages (not the slow reporter's)."""
    spec = DataSpec(num_clients=CLIENTS, labels=tuple(summary["labels"]))
    reported = {c["client"] for c in json.loads((out / "clients.json").read_text())}
    return [client_data(spec, p).test for p in range(CLIENTS) if f"client-{p}" in reported]  # named by enrolled key


def test_saved_adapter_loads_with_peft_and_reproduces_global_accuracy(run, tiny_bert_dir, tmp_path):
    out, _ = run
    summary = json.loads((out / "summary.json").read_text())
    package = BasePackage.from_pretrained(tiny_bert_dir, get_task("seq-cls"), "int8")
    assert package.base_id == summary["base_id"]
    base = load_base(package, num_labels=len(summary["labels"]))
    model = PeftModel.from_pretrained(base.model, str(out / "adapter"))
    correct = total = 0
    for test in _reported_tests(out, summary):
        result = evaluate(model, base.task, base.tokenizer, test, TrainSettings())
        correct += round(result.accuracy * len(test))
        total += len(test)
    assert correct / total == pytest.approx(summary["global_accuracy"], abs=1e-9)


def test_bad_data_stops_before_the_federation_starts(tmp_path):
    data = tmp_path / "d.csv"
    data.write_text("text,client_id\nhello,a\n")
    proc = subprocess.run([sys.executable, "-m", "fedpeft.cli", "simulate", "--data", str(data),
                           "--out", str(tmp_path / "o")], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2
    assert "'label'" in proc.stderr
    assert not (tmp_path / "o").exists()


def test_load_adapter_verifies_the_release_and_finds_its_base(run, tiny_bert_dir):
    out, _ = run
    summary = json.loads((out / "summary.json").read_text())
    key = out.parent / "keys" / "operator.pub"
    loaded = load_adapter(out / "adapter", key=key, model=tiny_bert_dir)
    assert loaded.release.release_id == summary["release_id"] and loaded.labels == summary["labels"]
    tests = _reported_tests(out, summary)
    base_task = get_task("seq-cls")
    correct = sum(round(evaluate(loaded.model, base_task, loaded.tokenizer, t, TrainSettings()).accuracy * len(t))
                  for t in tests)
    assert correct / sum(len(t) for t in tests) == pytest.approx(summary["global_accuracy"], abs=1e-9)
    config = json.loads((out / "adapter" / "adapter_config.json").read_text())
    assert config["base_model_name_or_path"] == tiny_bert_dir.name  # no path of the training machine
    assert len(config["modules_to_save"]) == len(set(config["modules_to_save"]))
    assert summary["base_id"] in (out / "adapter" / "README.md").read_text()
    with pytest.raises(ConfigError, match="made for base"):
        load_adapter(out / "adapter", key=key, model=tiny_bert_dir, quantization="int4")
    with pytest.raises(ConfigError, match="give its transformers folder"):
        load_adapter(out / "adapter")


def _finished_run(folder, config: str, tiny_bert_dir, rounds: int, *extra: str) -> tuple[dict, list[dict], str]:
    """`fedpeft simulate` of 4 tiny-BERT clients with `config` (and `extra` options), run to
    the end: its summary, metrics rows and console."""
    (folder / "run.toml").write_text(config)
    cmd = [sys.executable, "-m", "fedpeft.cli", "simulate", "--config", "run.toml", "--model", str(tiny_bert_dir),
           "--clients", "4", "--rounds", str(rounds), "--out", "result", *extra]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600, cwd=folder,
                          env={**os.environ, "FEDPEFT_CACHE": str(folder / "cache")})
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    rows = [json.loads(line) for line in (folder / "result" / "metrics.jsonl").read_text().splitlines()]
    return json.loads((folder / "result" / "summary.json").read_text()), rows, proc.stdout


HOSTILE = """
[simulation]
misbehaving = 0.25
behaviours = ["crafted-tensor", "extra-metric", "inflated-count", "bad-eval"]

[security]
operator_key = "keys/operator.key"

[privacy]
mode = "distributed"
clip = 50.0
noise_multiplier = 0.05
"""


def test_validly_signed_hostile_replies_are_counted_and_every_round_completes(tiny_bert_dir, tmp_path):
    """An enrolled client that signs what it sends: a tensor as a zip archive, an extra
    metric, 100,000 claimed examples, a NaN-and-extra-key evaluate reply, one per round.
    At 36a7475 the first two ended the run; here each is counted and the run finishes.
    The run is also client-level DP with the noise added on the devices (distributed): each
    round is accounted at the multiplier of the shares that arrived, epsilon grows round by
    round, and the summary, the signed release and the model card state it. (Central DP's
    server path: tests/test_privacy.py.)"""
    summary, rows, stdout = _finished_run(tmp_path, HOSTILE, tiny_bert_dir, rounds=4)
    assert [r["round"] for r in rows] == [1, 2, 3, 4] and summary["unchanged_rounds"] == []
    assert summary["rejected"] == {"bad-metrics": 1, "malformed": 1} == summary["misbehaving"]["expected_rejected"]
    assert summary["bad_replies"] == {"evaluate: bad-metrics": 1}
    evaluated = [r["eval_rejected"] for r in rows]  # the bad evaluate reply, counted in its round's row
    assert evaluated.count({"bad-metrics": 1}) == 1 and evaluated.count({}) == 3, evaluated
    assert [r["capped_weights"] for r in rows] == [0, 0, 1, 0]
    assert summary["clients"] == 4
    spent = [r["epsilon"] for r in rows]
    assert spent == sorted(spent) and spent[0] > 0 and summary["privacy"]["epsilon"] == spent[-1]
    assert [r["noise_multiplier"] for r in rows] == pytest.approx([0.05 * (r["accepted"] / 4) ** 0.5 for r in rows])
    assert summary["privacy"]["mode"] == "distributed"
    release = json.loads((tmp_path / "result" / "adapter" / "release.json").read_text())
    assert release["metrics"]["epsilon"] == spent[-1] and release["metrics"]["delta"] == 1e-5
    assert f"epsilon {spent[-1]:.3g} at delta 1e-05" in (tmp_path / "result" / "adapter" / "README.md").read_text()
    assert "epsilon" in stdout


LEAN = """
[run]
centralized_baseline = false

[personalization]
epochs = 1
local_only_epochs = 1

[security]
operator_key = "keys/operator.key"
"""


def _simulate(folder, tiny_bert_dir, *extra) -> subprocess.Popen:
    cmd = [sys.executable, "-m", "fedpeft.cli", "simulate", "--config", "run.toml", "--model", str(tiny_bert_dir),
           "--clients", "3", "--rounds", "3", "--out", "result", *extra]
    return subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, cwd=folder,
                            env={**os.environ, "FEDPEFT_CACHE": str(folder / "cache")})


def test_a_simulation_killed_after_round_2_resumes_to_the_same_adapter(tiny_bert_dir, tmp_path):
    """Killed (the whole process tree, SIGKILL) once round 2's checkpoint is written, then
    run again with the same --out: it goes on from round 3 and ends with the adapter an
    uninterrupted run of the same seed publishes, hash for hash. The strategy is FedAdam,
    whose moments (m_t, v_t) are in the checkpoint: a resumed run that lost them would
    take another round-3 step. The uninterrupted run is `--restart` in the same --out,
    which ignores the checkpoint there and starts afresh."""
    from fedpeft.deploy.flower import kill_tree

    killed = tmp_path / "killed"
    killed.mkdir()
    (killed / "run.toml").write_text(LEAN)
    options = ("--delta-encoding", "int8", "--strategy", "fedadam")
    victim = _simulate(killed, tiny_bert_dir, *options)
    checkpoint = killed / "result" / CHECKPOINT_FILE
    deadline = time.monotonic() + 600
    while (load_checkpoint(checkpoint) or SimpleNamespace(round=0)).round < 2:  # written atomically
        assert victim.poll() is None and time.monotonic() < deadline, "the run ended before round 2"
        time.sleep(0.1)
    kill_tree(victim.pid)
    victim.wait(timeout=60)
    assert not (killed / "result" / "summary.json").exists()
    at_kill = load_checkpoint(checkpoint)
    assert set(at_kill.strategy_state) == {"m_t", "v_t"}  # FedAdam's moments after round 2
    assert all(np.abs(v).max() > 0 for moment in at_kill.strategy_state.values() for v in moment.values())

    resumed = _simulate(killed, tiny_bert_dir, *options)
    resumed_out = resumed.communicate(timeout=600)[0]
    assert resumed.returncode == 0, resumed_out[-3000:]
    assert "resuming run" in resumed_out
    resumed_rows = [json.loads(line) for line in (killed / "result" / "metrics.jsonl").read_text().splitlines()]
    rounds = [r["round"] for r in resumed_rows]
    summary = json.loads((killed / "result" / "summary.json").read_text())
    assert rounds == [1, 2, 3] and summary["resumed_after_round"] == 2
    assert load_checkpoint(checkpoint).run_id == at_kill.run_id
    assert resumed_rows[2]["start_adapter"] == at_kill.adapter_id

    restarted = _simulate(killed, tiny_bert_dir, *options, "--restart")
    restarted_out = restarted.communicate(timeout=600)[0]
    assert restarted.returncode == 0, restarted_out[-3000:]
    assert "resuming run" not in restarted_out
    expected = json.loads((killed / "result" / "summary.json").read_text())
    assert expected["resumed_after_round"] == 0 and load_checkpoint(checkpoint).run_id != at_kill.run_id
    whole_rows = [json.loads(line) for line in (killed / "result" / "metrics.jsonl").read_text().splitlines()]
    assert [r["round"] for r in whole_rows] == [1, 2, 3]
    assert whole_rows[2]["start_adapter"] == at_kill.adapter_id  # the same rounds 1-2 ...
    assert summary["adapter_id"] == expected["adapter_id"], (resumed_rows[2], whole_rows[2])  # ... and round 3


# From the template's random head: on the tiny random BERT the class-means head is near
# uniform, and FLTrust's naming of an attacker below holds from the random head only (from
# round zero's head it distrusted no attacker in rounds 2-3 of this tiny run).
ATTACKED = LEAN + """
[federation]
strategy = "fltrust"
root_examples = 40
head_init = "none"

[simulation]
attackers = 0.5
attacks = ["label-flip", "backdoor"]
attack_from_round = 2
"""


def test_validly_signed_attackers_pass_every_check_and_fltrust_weighs_them(tiny_bert_dir, tmp_path):
    """Two of four clients poison their data from round 2 (labels flipped, a backdoor
    trigger), train and sign honestly: every delta is accepted; the server's FLTrust root
    update weighs them, each round says how many it distrusted, and the run measures the
    backdoor on the published adapter."""
    summary, rows, stdout = _finished_run(tmp_path, ATTACKED, tiny_bert_dir, rounds=3)
    assert [r["accepted"] for r in rows] == [4, 4, 4] and summary["rejected"] == {}
    assert all(isinstance(r["distrusted"], int) for r in rows)
    attack = summary["attack"]
    assert len(attack["partitions"]) == 2 and attack["kinds"] == ["label-flip", "backdoor"]
    assert 0.0 <= attack["backdoor_success"] <= 1.0
    assert "attacking clients (validly signed)" in stdout and "fltrust: the server trains" in stdout
    assert "backdoor success" in stdout
    # FLTrust names whom it gave no weight, and in an attack round that includes an attacker.
    # (Not only attackers: on this tiny model an honest client whose rows are unlike the root
    # set's is distrusted too, and the backdoor attacker's delta still agrees with the root's.)
    attackers = {f"client-{p}" for p in attack["partitions"]}
    assert all(r["distrusted"] == len(r["distrusted_clients"]) for r in rows)
    assert any(attackers & set(r["distrusted_clients"]) for r in rows[1:]), rows


SAMPLED = LEAN + """
[privacy]
mode = "central"
clip = 1.0
noise_multiplier = 0.8
"""


def test_a_sampled_federation_asks_clients_per_round_reports_report_clients_and_accounts_at_its_rate(
        tiny_bert_dir, tmp_path):
    """--clients-per-round 2 of 4: each round sends work to 2 clients (and evaluates on 2),
    the privacy accountant is told the sampling rate 0.5 and spends less than at rate 1;
    --report-clients 3: 3 clients are asked for the end-of-run report."""
    from fedpeft.server.privacy import epsilon

    summary, rows, stdout = _finished_run(tmp_path, SAMPLED, tiny_bert_dir, 2, "--clients-per-round", "2",
                                          "--report-clients", "3")
    assert [r["round"] for r in rows] == [1, 2] and summary["unchanged_rounds"] == []
    assert all(r["replies"] == 2 and r["accepted"] == 2 and r["sample_rate"] == 0.5 for r in rows), rows
    assert [r["noise_multiplier"] for r in rows] == [0.8, 0.8]
    spent = epsilon([(0.8, 0.5)] * 2, 1e-5)
    assert rows[-1]["epsilon"] == pytest.approx(spent, rel=1e-9) and summary["privacy"]["epsilon"] == rows[-1]["epsilon"]
    assert spent < epsilon([(0.8, 1.0)] * 2, 1e-5)
    assert summary["clients"] == summary["clients_reported"] == 3 and summary["missing_clients"] == []
    assert len(json.loads((tmp_path / "result" / "clients.json").read_text())) == 3
    log = (tmp_path / "result" / "run.log").read_text()
    assert "Sampled 2 nodes (out of 4)" in log
    assert "personalization: evaluating on each client's test split (3 clients" in stdout


def test_track_tensorboard_writes_events_tensorboard_reads_back(run):
    """`simulate --track tensorboard`: TensorBoard's own reader finds every round's metrics,
    the rejected deltas by reason, the final accuracies and the plots."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    out, stdout = run
    assert "[fedpeft] tensorboard: " in stdout
    events = EventAccumulator(str(out / "tensorboard"), size_guidance={"images": 0})
    events.Reload()
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [(e.step, round(e.value, 4)) for e in events.Scalars("round/val_accuracy")] == \
        [(r["round"], round(r["val_accuracy"], 4)) for r in rows]
    assert [e.value for e in events.Scalars("round/rejected/wrong-round")] == [1.0]
    summary = json.loads((out / "summary.json").read_text())
    assert events.Scalars("final/personalized_accuracy")[0].value == pytest.approx(summary["personalized_accuracy"])
    assert {"plots/curves", "plots/clients"} <= set(events.Tags()["images"])


def test_track_mlflow_records_the_run_and_the_adapter_in_a_local_store(run):
    """`fedpeft track RUN --to mlflow`: the run, its per-round metrics and the adapter as an
    artifact tagged with its base and release, in a local SQLite store (no server)."""
    import mlflow

    from fedpeft.cli import main

    out, _ = run
    assert main(["track", str(out), "--to", "mlflow"]) == 0
    mlflow.set_tracking_uri(f"sqlite:///{out / 'mlflow.db'}")
    client = mlflow.tracking.MlflowClient()
    (found,) = client.search_runs([mlflow.get_experiment_by_name("fedpeft").experiment_id])
    summary = json.loads((out / "summary.json").read_text())
    assert found.data.tags["fedpeft.base_id"] == summary["base_id"]
    assert found.data.tags["fedpeft.release_id"] == summary["release_id"]
    history = client.get_metric_history(found.info.run_id, "bytes_up")
    assert [m.step for m in history] == list(range(1, ROUNDS + 1))
    assert found.data.metrics["global_accuracy"] == pytest.approx(summary["global_accuracy"])
    artifacts = {a.path for a in client.list_artifacts(found.info.run_id, "adapter")}
    assert {"adapter/adapter_model.safetensors", "adapter/release.json"} <= artifacts


def test_the_run_writes_its_totals_in_prometheus_text_format(run):
    """metrics.prom: what a textfile scraper reads, agreeing with metrics.jsonl."""
    from prometheus_client.parser import text_string_to_metric_families

    out, _ = run
    samples = {(s.name, tuple(sorted(s.labels.items()))): s.value for family in
               text_string_to_metric_families((out / "metrics.prom").read_text()) for s in family.samples}
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert samples[("fedpeft_run_rounds", ())] == ROUNDS
    assert samples[("fedpeft_run_accepted_deltas", ())] == sum(r["accepted"] for r in rows)
    assert samples[("fedpeft_run_bytes_up", ())] == sum(r["bytes_up"] for r in rows)
    assert {labels: value for (name, labels), value in samples.items() if name == "fedpeft_run_rejected_deltas"} == \
        {(("reason", "tensor-hash-mismatch"),): 1, (("reason", "wrong-round"),): 1, (("reason", "non-finite"),): 1}
    assert samples[("fedpeft_run_val_accuracy", ())] == pytest.approx(rows[-1]["val_accuracy"])

