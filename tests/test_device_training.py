"""Devices that train: the export's training graph against PyTorch, the numpy optimizers
against torch.optim, and personalization on a device in a process without torch."""

from __future__ import annotations

import json
import subprocess
import sys
from dataclasses import replace

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from conftest import DATA, registry_trusting
from peft import PeftModel

from fedpeft.cli import main
from fedpeft.core.adapters.spec import TemplateSpec
from fedpeft.core.adapters.state import get_adapter_arrays, set_adapter_arrays
from fedpeft.core.adapters.template import create_template
from fedpeft.core.base.model import load_base
from fedpeft.core.base.tasks import get_task
from fedpeft.core.training.data import TextSplit, client_data
from fedpeft.core.training.loop import train as torch_train
from fedpeft.core.training.settings import TrainSettings
from fedpeft.core.training.synthetic_data import LABELS
from fedpeft.device.personal import personal_adapter
from fedpeft.device.registry_client import RegistryClient
from fedpeft.device.slot import Device
from fedpeft.device.trainer import DeviceTrainer
from fedpeft.export.exporter import _int8_weights
from fedpeft.export.ort_adapter import adapter_input_names
from fedpeft.export.training_graph import export_training_graph, gradient_difference
from fedpeft.server.registry import operator as registry_operator

BLOCK_TORCH = "import sys\nfor name in ('torch', 'transformers', 'peft'): sys.modules[name] = None\n"


@pytest.fixture(scope="module")
def setup(trained_export):
    return trained_export


def _torch_model(setup) -> PeftModel:
    """The exported adapter in PyTorch, its FFA-LoRA tensors (B and head) trainable."""
    base = load_base(setup["package"], len(LABELS), in_memory_quantization=False)
    model = PeftModel.from_pretrained(base.model, str(setup["root"] / "adapter")).eval()
    for name, parameter in model.named_parameters():
        parameter.requires_grad_(".lora_B." in name or ".modules_to_save." in name)
    return model


def test_the_export_carries_a_training_graph_with_an_int8_base(setup):
    training, parity = setup["manifest"]["training"], setup["manifest"]["parity"]
    assert training["method"] == "ffa-lora" and training["base_weights"] == "int8"
    assert not any(".lora_A." in name for name in training["trained"])  # FFA-LoRA: A stays frozen
    assert any(".lora_B." in name for name in training["trained"]) and any("classifier" in n for n in training["trained"])
    assert 0 <= parity["gradient_max_abs"] <= 1e-4
    graph = onnx.load(str(setup["export"] / training["graph"]))
    int8 = [i for i in graph.graph.initializer if i.data_type == onnx.TensorProto.INT8]
    assert int8 and sum(n.op_type == "DequantizeLinear" for n in graph.graph.node) == len(int8)
    assert {i.name for i in graph.graph.input} >= set(setup["manifest"]["adapter_inputs"].values())


def test_device_gradients_match_pytorch_on_unseen_shapes(setup):
    trainer = DeviceTrainer(setup["export"], setup["key"].public_key())
    model = _torch_model(setup)
    texts = ["the match ended in a draw after extra time and penalties", "stocks", "rain", "my code crashed"]
    labels = [0, 1, 2, 3]
    loss, gradients = trainer.loss_and_gradients(setup["arrays"], texts, labels, max_length=32)
    tokenizer = load_base(setup["package"], len(LABELS), in_memory_quantization=False).tokenizer
    batch = tokenizer(texts, padding=True, truncation=True, max_length=32, return_tensors="pt")
    trained = [p for n, p in model.named_parameters() if p.requires_grad]
    expected = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"],
                     labels=torch.tensor(labels)).loss
    expected.backward()
    torch_gradients = {n: p.grad.numpy() for n, p in model.named_parameters() if p.grad is not None}
    assert trained and abs(loss - float(expected.detach())) < 1e-5
    names = {v: k for k, v in trainer.graph_names.items()}
    for name, gradient in torch_gradients.items():
        np.testing.assert_allclose(gradients[names["model." + name]], gradient, atol=1e-5)


@pytest.mark.parametrize("optimizer", ["adamw", "sgd"])
def test_ten_device_steps_track_the_pytorch_loop(setup, optimizer):
    """Same rows, seed, batches and hyper-parameters: the numpy optimizer over ONNX
    gradients ends where torch.optim over autograd does."""
    data = client_data(DATA, 0).train
    split = TextSplit(data.texts[:40], data.labels[:40])
    settings = TrainSettings(epochs=2, batch_size=8, learning_rate=1e-2, max_length=32, optimizer=optimizer)
    trainer = DeviceTrainer(setup["export"], setup["key"].public_key())
    device_arrays, device_result = trainer.train(setup["arrays"], split, settings, dropout=False)
    model = _torch_model(setup)
    tokenizer = load_base(setup["package"], len(LABELS), in_memory_quantization=False).tokenizer
    torch_result = torch_train(model, get_task("seq-cls"), tokenizer, split, settings, dropout=False)
    torch_arrays = get_adapter_arrays(model)
    assert device_result.steps == torch_result.steps == 10
    assert abs(device_result.loss - torch_result.loss) < 1e-3
    moved = max(float(np.abs(device_arrays[n] - setup["arrays"][n]).max()) for n in device_arrays)
    assert moved > 1e-3  # it trained
    for name in device_arrays:
        np.testing.assert_allclose(device_arrays[name], torch_arrays[name], atol=1e-4)


@pytest.mark.parametrize("method", ["lora", "ia3"])
def test_training_graphs_of_other_methods_match_pytorch(tiny_package, tmp_path, method):
    base = load_base(tiny_package, len(LABELS), in_memory_quantization=False)
    template = create_template(base.model, get_task("seq-cls"), TemplateSpec(method=method, rank=4), list(LABELS))
    model = template.attach(base.model).eval()
    rng = np.random.default_rng(0)
    set_adapter_arrays(model, {n: (v + rng.normal(scale=0.2, size=v.shape)).astype(np.float32)
                               for n, v in template.init.items()})
    names = adapter_input_names(model)
    encode = lambda texts: {k: v.astype(np.int64) for k, v in base.tokenizer(  # noqa: E731
        texts, padding=True, return_tensors="np").items() if k != "token_type_ids"}
    sample = {**encode(["the match", "stocks fell today"]), "labels": np.array([0, 1])}
    trained = export_training_graph(model, names, template.trainable_names,
                                    {k: torch.from_numpy(v) for k, v in sample.items()}, tmp_path / "train.onnx", 32,
                                    _int8_weights(tiny_package))
    assert sorted(trained) == sorted(names[k] for k in template.trainable_names)
    session = ort.InferenceSession(str(tmp_path / "train.onnx"), providers=["CPUExecutionProvider"])
    batches = [{**encode(["a long sentence about the weather and rain", "x", "cats"]), "labels": np.array([1, 2, 3])}]
    dropped = session.run(None, {**batches[0], "dropout": np.array(1.0, np.float32)})[0]
    plain = session.run(None, {**batches[0], "dropout": np.array(0.0, np.float32)})[0]
    assert dropped != plain  # the dropout input switches the model's dropout on
    assert gradient_difference(model, names, trained, lambda feed: session.run(None, feed), batches) <= 1e-4


def test_a_device_personalizes_its_release_without_torch_and_predicts_with_it(setup, tmp_path, capsys):
    """Pull a release from a real registry, personalize it on the device's rows with the
    CLI in a process where torch cannot be imported, and predict with the result."""
    key, root = setup["key"], setup["root"]
    with registry_trusting(tmp_path, key) as (address, ca):
        with RegistryClient(address, ca) as client:
            release = registry_operator.publish(client, key, root / "adapter", "stable")
        client_rows = client_data(DATA, 1)
        rows = tmp_path / "rows.jsonl"
        rows.write_text("".join(json.dumps({"text": t, "label": LABELS[y]}) + "\n"
                                for t, y in zip(client_rows.train.texts, client_rows.train.labels)))
        common = ["--state", str(tmp_path / "device"), "--key", str(root / "operator.pub"), "--base-id", release.base_id]
        code = BLOCK_TORCH + (
            "from pathlib import Path\n"
            "from fedpeft.cli import main\n"
            "from fedpeft.core.trust.keys import load_public_key\n"
            "from fedpeft.device.slot import Device\n"
            "from fedpeft.device.personal import personal_adapter\n"
            f"common = {common!r}\n"
            f"assert main(['device', 'pull', *common, '--registry', {address!r}, '--ca-cert', {str(ca)!r}]) == 0\n"
            f"device = Device(Path({str(tmp_path / 'device')!r}), load_public_key(Path(common[3])), common[5])\n"
            f"assert main(['device', 'train', *common, '--export', {str(setup['export'])!r}, '--data', {str(rows)!r},"
            " '--epochs', '5', '--max-length', '32']) == 0\n"
            "assert personal_adapter(device)[0] is not None\n"
            f"assert main(['predict', {str(setup['export'])!r}, 'the striker scored twice', *common]) == 0\n"
            "assert sys.modules['torch'] is None  # blocked: any import of it raised\n"
        )
        proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
        assert proc.returncode == 0, proc.stderr[-3000:]
        # A newer release arrives: the personal adapter made from v1 is not used silently.
        with RegistryClient(address, ca) as client:
            registry_operator.publish(client, key, root / "adapter", "stable")
            device = Device(tmp_path / "device", key.public_key(), release.base_id)
            assert device.pull(client).version == 2
    assert "personal adapter from v1" in proc.stdout
    prediction = [line for line in proc.stdout.splitlines() if line.endswith("the striker scored twice")]
    assert prediction and prediction[0].split("\t")[0] in LABELS
    path, why = personal_adapter(device)
    assert path is None and "trained from v1" in why and "now holds v2" in why
    assert main(["predict", str(setup["export"]), "the striker scored twice", *common]) == 1
    err = capsys.readouterr().err
    assert "run fedpeft device train again" in err and "carries no .onnx_adapter" in err


def test_personal_accuracy_beats_the_release_on_the_devices_own_test_rows(setup):
    """Learning, measured the way a device would: train on a client's rows, score its test rows.
    The accuracy is measured on a run without dropout, which is deterministic (ONNX Runtime's
    dropout draws its own masks; one lucky or unlucky draw must not decide the test)."""
    trainer = DeviceTrainer(setup["export"], setup["key"].public_key())
    rows = client_data(DATA, 2)
    settings = TrainSettings(epochs=8, batch_size=8, learning_rate=1e-2, max_length=32)
    before = trainer.evaluate(setup["arrays"], rows.test, settings).accuracy
    plain = [trainer.train(setup["arrays"], rows.train, settings, dropout=False)[0] for _ in range(2)]
    trained = plain[0]
    after = trainer.evaluate(trained, rows.test, settings).accuracy
    assert after >= before + 0.2, (before, after)
    dropped = [trainer.train(setup["arrays"], rows.train, replace(settings, seed=0))[0] for _ in range(2)]
    again = dropped[1]
    assert not all(np.array_equal(again[n], dropped[0][n]) for n in trained)  # dropout draws differ run to run
    assert not all(np.array_equal(again[n], trained[n]) for n in trained)  # and dropout changes what is learnt
    assert all(np.array_equal(plain[0][n], plain[1][n]) for n in trained)  # without it: deterministic
