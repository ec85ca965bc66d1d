"""A worker process loads a base once and reuses it for every client it runs; a node
answers status and install without loading a model."""

import json
import subprocess
import sys

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
        local_update(session, job, client_data(job.data, partition).train, dict(template.init), seed=partition)
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


NO_MODEL_NODE = """
import json, sys
for heavy in ("torch", "transformers", "peft", "onnxruntime"):
    sys.modules[heavy] = None  # importing any of them now raises
from flwr.app import ConfigRecord, Context, Message, RecordDict
from flwr.supercore.task_identity import TaskIdentity
from fedpeft.client import client_app
from fedpeft.core.base.cache import NodeCache
from fedpeft.core.wire.install import install_content

TaskIdentity.run_id, TaskIdentity.node_id, TaskIdentity.task_id = 1, 0, 1
source, node, base_id, template_id = sys.argv[1:]
context = Context(1, 0, {"partition-id": 0, "cache-dir": node}, RecordDict(), {})
ids = ConfigRecord({"base-id": base_id, "template-id": template_id})

def status():
    reply = client_app.status(Message(RecordDict({"config": ids}), dst_node_id=0, message_type="query.status"), context)
    return dict(reply.content.config_records["status"])

before = status()
content = install_content(NodeCache(source).load_template(template_id), NodeCache(source).load(base_id))
content["config"] = ids
client_app.install(Message(content, dst_node_id=0, message_type="query.install"), context)
print(json.dumps({"before": before, "after": status()}))
"""


def test_status_and_install_need_no_torch(tmp_path, tiny_package, tiny_base):
    """What a deployed node's fresh process does for `query.status` and `query.install`,
    in a Python where importing torch, transformers, peft or onnxruntime raises."""
    source = NodeCache(tmp_path / "server")
    source.put(tiny_package, tiny_package.base_id)
    template = create_template(tiny_base.model, tiny_base.task, TemplateSpec(rank=2), list(LABELS))
    source.put_template(template, template.template_id)
    proc = subprocess.run([sys.executable, "-c", NO_MODEL_NODE, str(source.root), str(tmp_path / "node"),
                           tiny_package.base_id, template.template_id], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-3000:]
    replies = json.loads(proc.stdout.splitlines()[-1])
    assert replies["before"] == {"has-base": False, "has-template": False, "device": False}
    assert replies["after"] == {"has-base": True, "has-template": True, "device": False}
    assert NodeCache(tmp_path / "node").load(tiny_package.base_id).base_id == tiny_package.base_id
