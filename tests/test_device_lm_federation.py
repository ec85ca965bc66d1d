"""`fedpeft simulate --device-clients` for a causal LM: two of three users of the tiny
Llama next-word federation (tests/test_next_word_federation.py) train as devices, with the
LM training graph in ONNX Runtime and numpy AdamW instead of PyTorch."""

import json

import pytest
from test_next_word_federation import CONFIG, simulate

pytestmark = pytest.mark.lm_device  # language-model export and device runs: `pytest -m lm_device`

CLIENTS, DEVICES = 3, 2


@pytest.fixture(scope="module")
def run(tiny_llama_dir, tmp_path_factory):
    return simulate(tiny_llama_dir, tmp_path_factory.mktemp("lm-device-run"),
                    CONFIG + "\n[run]\ncentralized_baseline = false\n", "--device-clients", "0.67")


def test_language_model_devices_train_with_onnx_runtime_and_their_deltas_are_accepted(run):
    out, stdout = run
    summary = json.loads((out / "summary.json").read_text())
    assert len(summary["device_clients"]) == DEVICES and f"{DEVICES} of {CLIENTS} clients train as devices" in stdout
    export = json.loads((out / "device-export" / "export.json").read_text())
    assert export["training"]["task"] == "causal-lm" and export["parity"]["gradient_max_abs"] <= 1e-4
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["accepted"] for r in rows] == [CLIENTS] * 3  # every device delta passes every check


def test_the_language_model_learns_from_device_clients(run):
    summary = json.loads((run[0] / "summary.json").read_text())
    assert summary["global_perplexity"] < summary["initial_perplexity"] / 5
    assert summary["initial_top3"] < summary["global_top3"]
