"""Device selection (core/training/accelerator.py): the logic runs on the CPU machines CI has."""

from __future__ import annotations

import subprocess
import sys

import pytest
import torch

from fedpeft.core.errors import ConfigError
from fedpeft.core.training.accelerator import client_resources, pick_device


@pytest.mark.parametrize("requested, cuda, picked", [
    ("cpu", True, "cpu"), ("cpu", False, "cpu"), ("auto", True, "cuda"), ("auto", False, "cpu"), ("cuda", True, "cuda"),
])
def test_each_request_picks_its_device(requested, cuda, picked):
    assert pick_device(requested, cuda_available=cuda) == picked


def test_auto_asks_pytorch_on_this_machine():
    assert pick_device("auto") == ("cuda" if torch.cuda.is_available() else "cpu")


@pytest.mark.parametrize("requested, message", [("cuda", "no CUDA GPU"), ("tpu", "unknown train.device")])
def test_a_device_that_is_not_there_is_named(requested, message):
    with pytest.raises(ConfigError, match=message):
        pick_device(requested, cuda_available=False)


def test_clients_share_a_gpu_by_fractions_and_take_none_on_the_cpu():
    assert client_resources("cuda", 4) == {"num_cpus": 1, "num_gpus": 0.25}
    assert client_resources("cpu", 4) == {"num_cpus": 1, "num_gpus": 0.0}
    with pytest.raises(ConfigError, match="clients_per_gpu"):
        client_resources("cuda", 0)


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the refusal on a machine without a GPU")
def test_simulate_on_a_missing_gpu_stops_in_one_line_before_anything_is_written(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "fedpeft.cli", "simulate", "--device", "cuda", "--out", "run"],
                          capture_output=True, text=True, timeout=120, cwd=tmp_path)
    assert proc.returncode != 0
    assert "PyTorch sees no CUDA GPU" in proc.stderr and "Traceback" not in proc.stderr
    assert not (tmp_path / "run").exists() and not (tmp_path / "keys").exists()
