"""`fedpeft simulate --device-clients 1.0`: a fleet in which no client uses PyTorch (one
of them below the template's LoRA rank).

The simulation runs with tests/torch_blocker on PYTHONPATH: in Flower's client workers
(Ray's default_worker.py) torch, transformers and peft raise ImportError; the server's
process keeps them. Every client trains, scores, sends round zero and personalizes with
ONNX Runtime and numpy, or its reply fails. The control run (every client on PyTorch,
same blocker) shows the blocker bites."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

BLOCKER = Path(__file__).parent / "torch_blocker"
CLIENTS, ROUNDS = 3, 2


def _simulate(tiny_bert_dir: Path, out: Path, device_clients: str, *extra: str) -> subprocess.CompletedProcess:
    out.mkdir(parents=True, exist_ok=True)
    # one of the three devices can afford LoRA rank 2 only (the template's is 8)
    (out / "run.toml").write_text('[security]\noperator_key = "keys/operator.key"\n'
                                  '[simulation]\nrank_mix = { 2 = 0.34, 8 = 0.66 }\n')
    cmd = [sys.executable, "-m", "fedpeft.cli", "simulate", "--config", "run.toml", "--model", str(tiny_bert_dir),
           "--clients", str(CLIENTS), "--rounds", str(ROUNDS), "--device-clients", device_clients,
           "--out", "result", *extra]
    env = {**os.environ, "FEDPEFT_CACHE": str(out / "cache"), "FEDPEFT_TEST_BLOCK_TORCH": "ray-workers",
           "PYTHONPATH": os.pathsep.join(filter(None, [str(BLOCKER), os.environ.get("PYTHONPATH")]))}
    return subprocess.run(cmd, capture_output=True, text=True, timeout=600, env=env, cwd=out)


@pytest.fixture(scope="module")
def torch_free(tiny_bert_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("torch-free")
    proc = _simulate(tiny_bert_dir, out, "1.0")
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return json.loads((out / "result" / "summary.json").read_text()), proc.stdout, out / "result"


def test_every_client_works_without_torch_and_every_delta_is_accepted(torch_free):
    summary, stdout, out = torch_free
    assert len(summary["device_clients"]) == CLIENTS and f"{CLIENTS} of {CLIENTS} clients train as devices" in stdout
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["accepted"] for r in rows] == [CLIENTS] * ROUNDS and not any(r["rejected"] for r in rows)
    assert all(set(r["bytes_up_by_rank"]) == {"2", "full"} for r in rows)  # a rank-2 device's delta was accepted
    assert "1 clients at LoRA rank 2, 2 clients at LoRA rank 8" in stdout
    assert summary["head_init"]["clients"] == CLIENTS  # round zero from the devices' evaluation graph
    assert not summary["head_init"]["refused"] and summary["head_init"]["no_reply"] == 0
    # every device scored the template, the global, personalized and local-only adapters
    assert summary["clients_reported"] == CLIENTS and not summary["missing_clients"]
    assert summary["global_accuracy"] > summary["initial_accuracy"]


def test_the_blocker_bites_a_pytorch_client(tiny_bert_dir, tmp_path):
    proc = _simulate(tiny_bert_dir, tmp_path, "0", "--rounds", "1")
    assert proc.returncode != 0
    log = (tmp_path / "result" / "run.log").read_text()
    assert "is blocked in this process" in log
