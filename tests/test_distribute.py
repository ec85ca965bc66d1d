"""The install phase (server/federation.py `distribute`) against real ClientApp handlers:
the server builds the base's install content once, however many nodes need it, and nodes
that share a cache (simulated ones) get the base once, not once per node."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
from flwr.app import Context, Message, RecordDict
from flwr.supercore.task_identity import TaskIdentity

from fedpeft.client import client_app
from fedpeft.core.adapters.spec import TemplateSpec
from fedpeft.core.adapters.template import create_template
from fedpeft.core.base.cache import NodeCache
from fedpeft.core.config import FederationConfig
from fedpeft.core.training.job import Job
from fedpeft.core.training.synthetic_data import LABELS
from fedpeft.server.federation import INSTALL_BATCH, Roster, distribute


@pytest.fixture(autouse=True)
def _flower_run():
    """Messages need the run and node they belong to, as inside a ServerApp."""
    TaskIdentity.run_id, TaskIdentity.node_id, TaskIdentity.task_id = 1, 0, 1
    yield
    TaskIdentity.run_id = TaskIdentity.node_id = TaskIdentity.task_id = None


class _Nodes:
    """The network: each node answers with fedpeft's own status and install handlers."""

    def __init__(self, caches: dict[int, str]) -> None:
        self.caches = caches
        self.installs: list[Message] = []

    def send_and_receive(self, messages, timeout):
        replies = []
        for message in messages:
            node = message.metadata.dst_node_id
            context = Context(1, node, {"partition-id": node, "cache-dir": self.caches[node]}, RecordDict(), {})
            if message.metadata.message_type == "query.install":
                self.installs.append(message)
                replies.append(client_app.install(message, context))
            else:
                replies.append(client_app.status(message, context))
        return replies


@pytest.fixture
def setup(tiny_package, tiny_base):
    template = create_template(tiny_base.model, tiny_base.task, TemplateSpec(rank=2), list(LABELS))
    return SimpleNamespace(job=Job(tiny_package.base_id, template.template_id), config=FederationConfig(),
                           template=template, package=tiny_package)


def test_nodes_sharing_a_cache_get_the_base_once(setup, tmp_path):
    nodes = list(range(1, 2 * INSTALL_BATCH + 2))
    grid = _Nodes({n: str(tmp_path / "shared") for n in nodes})
    roster = Roster()
    distribute(grid, nodes, setup, roster)
    assert roster.ready == set(nodes)
    assert roster.base_sent_to == 1 and len(grid.installs) == 1


def test_nodes_with_caches_of_their_own_share_one_copy_of_the_install_content(setup, tmp_path):
    nodes = list(range(1, 2 * INSTALL_BATCH + 2))
    has_base = nodes[-1]  # one node already holds the base: it gets the template alone
    NodeCache(tmp_path / str(has_base)).put(setup.package, setup.package.base_id)
    grid = _Nodes({n: str(tmp_path / str(n)) for n in nodes})
    roster = Roster()
    distribute(grid, nodes, setup, roster)
    assert roster.ready == set(nodes)
    assert roster.base_sent_to == len(nodes) - 1
    with_base = [m for m in grid.installs if "base" in m.content.array_records]
    assert len(with_base) == len(nodes) - 1 and has_base not in {m.metadata.dst_node_id for m in with_base}
    assert len({id(m.content) for m in with_base}) == 1  # one RecordDict (one serialized base) for all
    for node in nodes:
        assert NodeCache(tmp_path / str(node)).load(setup.package.base_id).base_id == setup.package.base_id
