"""The task layer: a causal LM is a second task type on the same base/adapter/delta path."""

import numpy as np
import pytest

from fedpeft.client.runtime import Session
from fedpeft.client.task import local_update
from fedpeft.core.adapters.spec import TemplateSpec
from fedpeft.core.adapters.template import create_template
from fedpeft.core.base.cache import NodeCache
from fedpeft.core.base.model import load_base
from fedpeft.core.base.package import BasePackage
from fedpeft.core.base.tasks import get_task
from fedpeft.core.errors import ConfigError
from fedpeft.core.training.data import DataSpec, client_data
from fedpeft.core.training.job import Job
from fedpeft.core.training.settings import TrainSettings
from fedpeft.core.trust.hashing import tensors_id


def _base_hashes(model) -> dict[str, str]:
    """Hash of every base (non-adapter) tensor, the quantized data of torchao tensors included."""
    hashes = {}
    for name, tensor in model.state_dict().items():
        if "lora_" not in name:
            data = tensor.qdata if hasattr(tensor, "qdata") else tensor
            hashes[name] = tensors_id({"t": data.detach().contiguous().float().numpy()})
    return hashes


@pytest.mark.parametrize("quantization", ["int8", "int4", "none"])
def test_causal_lm_trains_adapters_over_a_frozen_base(tmp_path, tiny_gpt2_dir, quantization):
    task = get_task("causal-lm")
    package = BasePackage.from_pretrained(tiny_gpt2_dir, task, quantization)
    assert "lm_head.weight" not in package.manifest["tensors"]  # tied to the embeddings: sent once
    cache = NodeCache(tmp_path / "cache")
    cache.put(package, package.base_id)
    base = load_base(cache.load(package.base_id), num_labels=0)
    assert base.model.lm_head.weight.data_ptr() == base.model.transformer.wte.weight.data_ptr()
    template = create_template(base.model, task, TemplateSpec(method="lora", rank=2), [])
    session = Session(base, template, template.attach(base.model))
    job = Job(package.base_id, template.template_id, DataSpec(num_clients=2), TrainSettings(max_length=24))
    before = _base_hashes(session.model)
    delta, result = local_update(session, job, client_data(job.data, 0).train, dict(template.init), seed=0)
    assert result.steps > 0 and result.loss > 0
    assert delta and all(".lora_" in name for name in delta)
    assert any(np.abs(d).max() > 0 for d in delta.values())  # the adapter trained ...
    assert _base_hashes(session.model) == before  # ... over a base that did not change, bit for bit


def test_unknown_task_is_named():
    with pytest.raises(ConfigError, match="seq2seq"):
        get_task("seq2seq")
