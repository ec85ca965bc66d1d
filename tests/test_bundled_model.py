"""The real bundled all-MiniLM-L6-v2: the size budgets of the default federation and
the parity of its export."""

import pytest

from fedpeft.core.adapters.template import create_template
from fedpeft.core.base.model import load_base
from fedpeft.core.base.package import BasePackage
from fedpeft.core.base.tasks import get_task
from fedpeft.core.config import load_config
from fedpeft.core.training.data import TextSplit, client_data, num_partitions
from fedpeft.core.training.loop import train
from fedpeft.core.training.synthetic_data import LABELS
from fedpeft.core.trust.keys import load_private_key, new_key_pair
from fedpeft.core.trust.release import sign_release
from fedpeft.export.exporter import ExportRequest, export

pytestmark = pytest.mark.model


@pytest.fixture(scope="module")
def minilm(tmp_path_factory):
    config = load_config(None)
    package = BasePackage.from_pretrained(config.model.folder(), get_task("seq-cls"), "int8")
    base = load_base(package, len(LABELS))
    return config, package, base


def test_base_download_is_at_most_30_percent_of_fp32(minilm):
    _, package, _ = minilm
    assert package.fp32_bytes > 80e6
    assert package.download_bytes <= 0.30 * package.fp32_bytes


@pytest.mark.parametrize("method", ["ffa-lora", "lora"])
def test_upload_per_round_is_at_most_1_percent_of_fp32(minilm, method):
    config, package, base = minilm
    spec = config.with_overrides(**{"adapter.method": method}).template_spec()
    template = create_template(base.model, base.task, spec, list(LABELS))
    upload = sum(template.init[n].nbytes for n in template.trainable_names)
    assert upload <= 0.01 * package.fp32_bytes


def test_a_trained_minilm_adapter_exports_within_the_parity_limits(minilm, tmp_path):
    """The export's default limits (fp32 1e-4, int8 >= 99% agreement and <= 1 point of
    accuracy, adapter graph = merged graph) on the real model with a trained adapter."""
    config, package, base = minilm
    spec = config.data_spec(tuple(LABELS))
    template = create_template(base.model, base.task, config.template_spec(), list(LABELS))
    model = template.attach(base.model)
    train_texts = TextSplit()
    for partition in range(num_partitions(spec)):
        split = client_data(spec, partition).train
        train_texts.texts.extend(split.texts)
        train_texts.labels.extend(split.labels)
    train(model, base.task, base.tokenizer, train_texts, config.train_settings())
    model.save_pretrained(str(tmp_path / "adapter"))
    model.unload()
    new_key_pair(tmp_path / "operator.key")
    key = load_private_key(tmp_path / "operator.key")
    sign_release(tmp_path / "adapter", key, version=1, base_id=package.base_id, template_id=template.template_id,
                 labels=list(LABELS), parent=None, metrics={}, valid_days=1)
    request = ExportRequest(tmp_path / "adapter", tmp_path / "export", config.model.folder(),
                            release_key=key.public_key(), data=spec)
    manifest = export(request, key, progress=lambda _: None)  # raises if a limit is missed
    parity = manifest["parity"]
    assert manifest["training"]["base_weights"] == "int8" and parity["gradient_max_abs"] <= 1e-4  # train.onnx
    assert parity["torch_accuracy"] > 0.6
    assert parity["torch_accuracy"] - parity["int8_accuracy"] <= 0.01
    sizes = {name: (tmp_path / "export" / manifest["models"][name]).stat().st_size for name in ("fp32", "int8")}
    assert sizes["int8"] <= 0.3 * sizes["fp32"]
