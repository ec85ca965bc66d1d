"""A worker process loads a base once and reuses it for every client it runs."""

from fedpeft.client import runtime
from fedpeft.client.task import local_update
from fedpeft.core.adapters.spec import TemplateSpec
from fedpeft.core.adapters.template import create_template
from fedpeft.core.base.cache import NodeCache
from fedpeft.core.training.data import DataSpec, client_data
from fedpeft.core.training.job import Job
from fedpeft.core.training.synthetic_data import LABELS


def test_clients_share_one_loaded_base(tmp_path, tiny_package, tiny_base):
    cache = NodeCache(tmp_path / "node")
    cache.put(tiny_package, tiny_package.base_id)
    template = create_template(tiny_base.model, tiny_base.task, TemplateSpec(rank=2), list(LABELS))
    cache.put_template(template, template.template_id)
    before = runtime.loaded_sessions()
    job = Job(tiny_package.base_id, template.template_id, DataSpec(num_clients=3))
    sessions = []
    for partition in range(3):
        session = runtime.session(cache, job.base_id, job.template_id)
        local_update(session, job, client_data(job.data, partition), dict(template.init), seed=partition)
        sessions.append(session)
    assert sessions[0] is sessions[1] is sessions[2]
    assert runtime.loaded_sessions() == before + 1


def test_node_cache_keeps_templates_verified(tmp_path, tiny_base):
    template = create_template(tiny_base.model, tiny_base.task, TemplateSpec(rank=2), list(LABELS))
    cache = NodeCache(tmp_path)
    cache.put_template(template, template.template_id)
    again = cache.load_template(template.template_id)
    assert again.template_id == template.template_id
    assert again.trainable_names == template.trainable_names
