"""A device scores adapters and computes round zero with ONNX Runtime as a PyTorch client
does with the same base: the training export's evaluation graph against PyTorch, on the
tiny BERT with a real vocabulary."""

from __future__ import annotations

import numpy as np
import pytest
from conftest import DATA

from fedpeft.client.runtime import Session
from fedpeft.client.task import TorchLearner
from fedpeft.core.training.class_sums import COUNTS, SUMS
from fedpeft.core.training.data import client_data
from fedpeft.core.training.settings import TrainSettings
from fedpeft.device.trainer import DeviceTrainer
from fedpeft.export.exporter import EVAL_FILE, TRAINING_FILE

SETTINGS = TrainSettings(max_length=32)


@pytest.fixture(scope="module")
def pair(tiny_training_export):
    """A PyTorch learner and the device trainer of one training export of the same template."""
    made = tiny_training_export
    base, template = made["base"], made["template"]
    torch_learner = TorchLearner(Session(base, template, template.attach(base.model)))
    return (torch_learner, DeviceTrainer(made["folder"], made["key"].public_key()), template, made["manifest"],
            made["folder"])


def _moved(arrays: dict[str, np.ndarray], seed: int) -> dict[str, np.ndarray]:
    """An adapter away from the template (what a round sends), so the check is not at zeros."""
    rng = np.random.default_rng(seed)
    return {k: (v + rng.normal(0, 0.05, v.shape)).astype(np.float32) for k, v in arrays.items()}


def test_the_training_export_carries_an_int8_evaluation_graph_checked_against_pytorch(pair):
    _, _, _, manifest, folder = pair
    assert manifest["models"] == {"eval": EVAL_FILE} and manifest["outputs"] == ["logits", "features"]
    assert manifest["parity"]["eval_logits_max_abs"] < 1e-4
    # the base's int8 weights as int8 initializers: about as small as the training graph, not 4x it
    assert (folder / EVAL_FILE).stat().st_size < 1.5 * (folder / TRAINING_FILE).stat().st_size


@pytest.mark.parametrize("seed", [None, 1])
def test_a_device_scores_an_adapter_as_pytorch_does(pair, seed):
    torch_learner, device, template, _, _ = pair
    arrays = template.init if seed is None else _moved(template.init, seed)
    for split in (client_data(DATA, 1).val, client_data(DATA, 2).test):
        want, got = torch_learner.evaluate(arrays, split, SETTINGS), device.evaluate(arrays, split, SETTINGS)
        assert got.examples == want.examples == len(split)
        assert abs(got.loss - want.loss) < 1e-3, (got.loss, want.loss)
        assert abs(got.accuracy - want.accuracy) <= 1 / len(split) + 1e-9  # at most one near-tie flips


def test_a_devices_round_zero_sums_are_pytorchs(pair):
    torch_learner, device, template, _, _ = pair
    split = client_data(DATA, 2).train
    want, got = torch_learner.class_sums(template.init, split, SETTINGS), device.class_sums(template.init, split, SETTINGS)
    np.testing.assert_array_equal(got[COUNTS], want[COUNTS])
    assert got[COUNTS].sum() == len(split)
    # per-row features within 5e-3 (PyTorch clients run the int8 base through torchao, the graph dequantizes)
    counts = np.maximum(want[COUNTS], 1)[:, None]
    np.testing.assert_allclose(got[SUMS] / counts, want[SUMS] / counts, atol=5e-3)
    assert np.abs(want[SUMS]).max() > 0.1  # features that are not all zero

