"""A device trains a causal LM's adapter without torch: the training-only export of a
tiny Llama (SmolLM2's vocabulary) template, its gradients on unseen texts against
PyTorch's, and `fedpeft device train --data messages.txt`, then `generate` and `predict`
with the personal adapter on the release's generation export, in a process where torch
cannot be imported."""

import subprocess
import sys

import numpy as np
import pytest
from conftest import registry_trusting

from fedpeft.core.adapters.spec import TemplateSpec
from fedpeft.core.adapters.state import set_adapter_arrays
from fedpeft.core.adapters.template import create_template
from fedpeft.core.base.model import load_base
from fedpeft.core.base.package import BasePackage
from fedpeft.core.base.tasks import get_task
from fedpeft.core.errors import DataError
from fedpeft.core.training.data import DataSpec, TextSplit, read_messages
from fedpeft.core.trust.keys import load_private_key, new_key_pair
from fedpeft.core.trust.release import sign_release
from fedpeft.device.registry_client import RegistryClient
from fedpeft.device.trainer import DeviceTrainer
from fedpeft.export.exporter import ExportRequest, export, export_training
from fedpeft.export.parity import ParityLimits
from fedpeft.export.ort_adapter import adapter_input_names
from fedpeft.server.registry import operator as registry_operator

pytestmark = pytest.mark.lm_device  # language-model export and device runs: `pytest -m lm_device`

BLOCK_TORCH = "import sys\nfor name in ('torch', 'transformers', 'peft'): sys.modules[name] = None\n"
MESSAGES = [f"hi {name} see you at {place} at {hour} {sign_off}"
            for name, place, sign_off in (("ana", "the park", "cheers"), ("ben", "the cafe", "later"))
            for hour in ("six", "seven", "eight", "nine", "ten", "noon")] * 2


@pytest.fixture(scope="module")
def lm(tiny_llama_dir, tmp_path_factory):
    """A signed LoRA release of a tiny Llama template and a training-only export of the template."""
    root = tmp_path_factory.mktemp("device-lm")
    new_key_pair(root / "operator.key")
    key = load_private_key(root / "operator.key")
    package = BasePackage.from_pretrained(tiny_llama_dir, get_task("causal-lm"), "int8")
    base = load_base(package, 0, in_memory_quantization=False)
    template = create_template(base.model, base.task, TemplateSpec(method="lora", rank=4), [])
    rng = np.random.default_rng(1)
    arrays = {n: (v + rng.normal(scale=0.1, size=v.shape)).astype(np.float32) for n, v in template.init.items()}
    model = template.attach(base.model)
    set_adapter_arrays(model, arrays)
    model.save_pretrained(str(root / "adapter"))
    model.unload()
    sign_release(root / "adapter", key, version=1, base_id=package.base_id, template_id=template.template_id,
                 method="lora", labels=[], parent=None, metrics={}, valid_days=1)
    manifest = export_training(package, template, root / "export", key, TextSplit(MESSAGES, [0] * len(MESSAGES)), 32)
    (root / "messages.csv").write_text("text,client_id\n" + "".join(f"{m},u{i % 2}\n" for i, m in enumerate(MESSAGES)))
    export(ExportRequest(adapter=root / "adapter", out=root / "export-lm", model_folder=tiny_llama_dir, task="causal-lm",
                         release_key=key.public_key(), training_graph=False, max_length=32,
                         data=DataSpec(source=str(root / "messages.csv"), task="causal-lm", partitioner="natural"),
                         limits=ParityLimits(generation_min_agreement=0.0)), key, progress=lambda _: None)
    return {"root": root, "key": key, "package": package, "template": template, "arrays": arrays,
            "manifest": manifest}


def test_the_training_export_of_a_language_model(lm):
    manifest = lm["manifest"]
    assert manifest["task"] == "causal-lm" and manifest["training"]["task"] == "causal-lm"
    assert manifest["labels"] == [] and manifest["parity"]["gradient_max_abs"] <= 1e-4
    assert len(manifest["training"]["trained"]) == 8  # LoRA: A and B of q_proj and v_proj, 2 layers


def test_device_lm_gradients_match_pytorch_on_unseen_texts(lm):
    """The device tokenizes and builds next-token labels itself: the same loss and
    gradients as a PyTorch client's batch (`task.batch`) of the same texts."""
    trainer = DeviceTrainer(lm["root"] / "export", lm["key"].public_key())
    texts = ["running late, the bus broke down again", "ok", "where are you?"]
    loss, gradients = trainer.loss_and_gradients(lm["arrays"], texts, None, max_length=32)
    base = load_base(lm["package"], 0, in_memory_quantization=False)
    model = lm["template"].attach(base.model).eval()
    set_adapter_arrays(model, lm["arrays"])
    names = adapter_input_names(model)
    parameters = dict(model.named_parameters())
    trained = [parameters[names[key].removeprefix("model.")] for key in trainer.trained]
    for parameter in trained:
        parameter.requires_grad_(True)
    expected = model(**base.task.batch(base.tokenizer, texts, [], 32)).loss
    expected.backward()
    assert trainer.causal_lm and abs(loss - float(expected.detach())) < 1e-5
    for key, parameter in zip(trainer.trained, trained, strict=True):
        np.testing.assert_allclose(gradients[key], parameter.grad.numpy(), atol=1e-5)


def test_a_device_personalizes_a_language_model_from_a_text_file_without_torch(lm, tmp_path):
    """Pull the LM release, then train it on the device's own messages (a .txt file) with
    the CLI and with the trainer, in a process where torch cannot be imported: the loss on
    the messages falls."""
    key, root = lm["key"], lm["root"]
    messages = tmp_path / "messages.txt"
    messages.write_text("\n".join(MESSAGES[:12]) + "\n\n")  # a blank line is no message
    with registry_trusting(tmp_path, key) as (address, ca):
        with RegistryClient(address, ca) as client:
            release = registry_operator.publish(client, key, root / "adapter", "stable")
        common = ["--state", str(tmp_path / "device"), "--key", str(root / "operator.pub"), "--base-id", release.base_id]
        code = BLOCK_TORCH + (
            "from pathlib import Path\n"
            "from safetensors.numpy import load_file\n"
            "from fedpeft.cli import main\n"
            "from fedpeft.core.training.data import read_messages\n"
            "from fedpeft.core.training.settings import TrainSettings\n"
            "from fedpeft.core.trust.keys import load_public_key\n"
            "from fedpeft.device.personal import personal_adapter\n"
            "from fedpeft.device.slot import Device\n"
            "from fedpeft.device.trainer import DeviceTrainer\n"
            f"common = {common!r}\n"
            f"assert main(['device', 'pull', *common, '--registry', {address!r}, '--ca-cert', {str(ca)!r}]) == 0\n"
            f"assert main(['device', 'train', *common, '--export', {str(root / 'export')!r}, '--data', "
            f"{str(messages)!r}, '--epochs', '2', '--learning-rate', '5e-2', '--max-length', '32']) == 0\n"
            f"device = Device(Path({str(tmp_path / 'device')!r}), load_public_key(Path(common[3])), common[5])\n"
            "assert personal_adapter(device)[0] is not None\n"
            f"trainer = DeviceTrainer(Path({str(root / 'export')!r}), device.operator_key)\n"
            f"rows = read_messages({str(messages)!r})\n"
            "arrays = load_file(str(device.current / 'adapter_model.safetensors'))\n"
            "before = trainer.loss_and_gradients(arrays, rows.texts, None, 32)[0]\n"
            "settings = TrainSettings(epochs=3, batch_size=4, learning_rate=5e-2, max_length=32)\n"
            "trained, result = trainer.train(arrays, rows, settings, dropout=False)\n"
            "after = trainer.loss_and_gradients(trained, rows.texts, None, 32)[0]\n"
            "print('LOSS', before, after, result.steps)\n"
            f"lm = {str(root / 'export-lm')!r}\n"  # the generation export of the same release
            "assert main(['generate', lm, 'hi ana see you at', *common, '--max-tokens', '6']) == 0\n"
            "assert main(['predict', lm, 'hi ana see you at', *common]) == 0\n"
            "assert sys.modules['torch'] is None  # blocked: any import of it raised\n"
        )
        proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    assert "personalizing v1 on 12 local rows" in proc.stdout and "personal adapter from v1" in proc.stdout
    generated, suggested = proc.stdout.strip().splitlines()[-2:]  # with the personal adapter (--state)
    assert generated.strip() and len(suggested.split("\t")[0].split(" | ")) == 3
    before, after, steps = next(line for line in proc.stdout.splitlines() if line.startswith("LOSS ")).split()[1:]
    assert int(steps) == 9 and float(after) < float(before) - 1.5, (before, after)  # perplexity / 4.5 at least


def test_device_text_files_are_read_as_messages(tmp_path):
    (tmp_path / "m.txt").write_text("first message\r\n\n  second one  \n")
    assert read_messages(tmp_path / "m.txt").texts == ["first message", "second one"]
    (tmp_path / "m.csv").write_text("text,client_id\nhello there,u1\n")
    split = read_messages(tmp_path / "m.csv")
    assert split.texts == ["hello there"] and split.labels == [0]
    (tmp_path / "empty.txt").write_text("\n \n")
    with pytest.raises(DataError, match="no rows"):
        read_messages(tmp_path / "empty.txt")
    (tmp_path / "bad.txt").write_bytes(b"\xff\xfe\x00 not utf-8")
    with pytest.raises(DataError, match="cannot read file"):
        read_messages(tmp_path / "bad.txt")
