"""The real bundled all-MiniLM-L6-v2: the size budgets of the default federation."""

import pytest

from fedpeft.config import load_config
from fedpeft.core.base_model import load_base
from fedpeft.core.base_package import BasePackage
from fedpeft.core.node_cache import NodeCache
from fedpeft.core.synthetic_data import LABELS
from fedpeft.core.tasks import get_task
from fedpeft.core.templates import create_template

pytestmark = pytest.mark.model


@pytest.fixture(scope="module")
def minilm(tmp_path_factory):
    config = load_config(None)
    package = BasePackage.from_pretrained(config.model.folder(), get_task("seq-cls"), "int8")
    cache = NodeCache(tmp_path_factory.mktemp("cache"))
    cache.put(package, package.base_id)
    base = load_base(cache, package.base_id, len(LABELS))
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
