"""Adapter templates, local training and deltas on a tiny random BERT."""

import numpy as np
import pytest
import torch

from fedpeft.client.runtime import Session
from fedpeft.client.task import local_update
from fedpeft.core.adapters.spec import TemplateSpec
from fedpeft.core.adapters.delta import apply_delta
from fedpeft.core.adapters.state import get_adapter_arrays, set_adapter_arrays
from fedpeft.core.adapters.template import create_template
from fedpeft.core.errors import ConfigError, IntegrityError
from fedpeft.core.training.data import DataSpec, client_data
from fedpeft.core.training.job import Job
from fedpeft.core.training.settings import TrainSettings
from fedpeft.core.training.synthetic_data import LABELS
from fedpeft.core.trust.hashing import tensors_id


def _base_state(model) -> dict[str, str]:
    """Hash of every base (non-adapter) tensor, torchao int8 data included."""
    hashes = {}
    for name, tensor in model.state_dict().items():
        if "lora_" in name or "modules_to_save" in name or "ia3_" in name:
            continue
        data = tensor.qdata if hasattr(tensor, "qdata") else tensor
        hashes[name] = tensors_id({"t": data.detach().contiguous().numpy()})
    return hashes


def _session(base, method: str) -> Session:
    template = create_template(base.model, base.task, TemplateSpec(method=method, rank=4), list(LABELS))
    return Session(base, template, template.attach(base.model))


def _job(session: Session) -> Job:
    return Job("0" * 64, session.template.template_id, DataSpec(num_clients=2),
               TrainSettings(epochs=1, learning_rate=1e-2, max_length=24))


@pytest.mark.parametrize("method", ["ffa-lora", "lora", "ia3"])
def test_local_training_leaves_the_base_bit_for_bit_unchanged(tiny_base, method):
    session = _session(tiny_base, method)
    before = _base_state(session.model)
    data = client_data(DataSpec(num_clients=2), 0)
    delta, result = local_update(session, _job(session), data.train, dict(session.template.init), seed=1)
    assert result.steps > 0
    assert _base_state(session.model) == before
    assert set(delta) == set(session.template.trainable_names)
    assert any(np.abs(d).max() > 0 for d in delta.values())


def test_ffa_lora_keeps_a_frozen_and_sends_no_a(tiny_base):
    session = _session(tiny_base, "ffa-lora")
    a_names = [n for n in session.template.init if ".lora_A." in n]
    assert a_names and not set(a_names) & set(session.template.trainable_names)
    data = client_data(DataSpec(num_clients=2), 1)
    local_update(session, _job(session), data.train, dict(session.template.init), seed=2)
    after = get_adapter_arrays(session.model)
    for name in a_names:
        np.testing.assert_array_equal(after[name], session.template.init[name])


def test_plain_lora_trains_a(tiny_base):
    session = _session(tiny_base, "lora")
    assert any(".lora_A." in n for n in session.template.trainable_names)
    a_names = [n for n in session.template.init if ".lora_A." in n]
    data = client_data(DataSpec(num_clients=2), 1)
    delta, result = local_update(session, _job(session), data.train, dict(session.template.init), seed=2)
    assert result.steps > 0 and a_names and set(a_names) <= set(delta)  # A travels up in the delta
    after = get_adapter_arrays(session.model)
    for name in a_names:  # ... and training moved every A
        assert np.abs(delta[name]).max() > 0
        assert not np.array_equal(after[name], session.template.init[name])


def test_template_id_is_reproducible_and_depends_on_the_seed(tiny_base):
    spec = TemplateSpec(rank=4, seed=3)
    first = create_template(tiny_base.model, tiny_base.task, spec, list(LABELS))
    second = create_template(tiny_base.model, tiny_base.task, spec, list(LABELS))
    other = create_template(tiny_base.model, tiny_base.task, TemplateSpec(rank=4, seed=4), list(LABELS))
    assert first.template_id == second.template_id != other.template_id


def test_attaching_a_template_leaves_its_id_unchanged(tiny_base):
    """PEFT extends config lists in place; the template's own config must not change."""
    template = create_template(tiny_base.model, tiny_base.task, TemplateSpec(method="lora", rank=4), list(LABELS))
    before = template.template_id
    template.attach(tiny_base.model)
    assert template.template_id == before


def test_template_id_does_not_depend_on_the_process_that_built_the_base(tiny_base, tiny_package, tmp_path):
    from fedpeft.core.base.cache import NodeCache
    from fedpeft.core.base.model import load_base

    cache = NodeCache(tmp_path / "other")
    cache.put(tiny_package, tiny_package.base_id)
    torch.manual_seed(12345)  # a different random state when the base is built
    other = load_base(cache.load(tiny_package.base_id), num_labels=len(LABELS))
    spec = TemplateSpec(rank=4, seed=3)
    assert (create_template(tiny_base.model, tiny_base.task, spec, list(LABELS)).template_id
            == create_template(other.model, other.task, spec, list(LABELS)).template_id)


def test_delta_applied_to_the_global_gives_the_local_adapter(tiny_base):
    session = _session(tiny_base, "lora")
    start = dict(session.template.init)
    delta, _ = local_update(session, _job(session), client_data(DataSpec(num_clients=2), 0).train, start, seed=5)
    local = get_adapter_arrays(session.model)
    rebuilt = apply_delta(start, delta)
    for name in local:
        np.testing.assert_allclose(rebuilt[name], local[name], atol=1e-6)


def test_setting_foreign_adapter_tensors_is_refused(tiny_base):
    session = _session(tiny_base, "lora")
    arrays = dict(session.template.init)
    arrays["base_model.model.bert.pooler.dense.lora_A.weight"] = np.zeros((4, 32), np.float32)
    with pytest.raises(IntegrityError, match="unexpected"):
        set_adapter_arrays(session.model, arrays)


def test_unknown_adapter_method_is_named(tiny_base):
    with pytest.raises(ConfigError, match="prefix"):
        create_template(tiny_base.model, tiny_base.task, TemplateSpec(method="prefix"), list(LABELS))


def test_gradients_flow_only_into_adapter_parameters(tiny_base):
    session = _session(tiny_base, "lora")
    trainable = [n for n, p in session.model.named_parameters() if p.requires_grad]
    assert trainable and all("lora_" in n or "modules_to_save" in n for n in trainable)
