"""Round zero: the head from the clients' class feature means (core/training/class_means.py)
and the server's checks of what clients send for it (server/class_means.py)."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch
from conftest import DATA
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from fedpeft.core.adapters.spec import TemplateSpec
from fedpeft.core.adapters.state import set_adapter_arrays
from fedpeft.core.adapters.template import create_template
from fedpeft.core.training import synthetic_data
from fedpeft.core.training.class_means import class_statistics, head_from_means, head_names, with_head
from fedpeft.core.training.class_sums import COUNTS, SUMS
from fedpeft.core.training.data import client_data
from fedpeft.core.base.model import load_base
from fedpeft.core.base.package import BasePackage
from fedpeft.core.base.tasks import get_task
from fedpeft.core.config import load_config
from fedpeft.core.training.loop import evaluate
from fedpeft.core.training.settings import TrainSettings
from fedpeft.core.trust.keys import Keyring
from fedpeft.core.wire.envelope import DeltaBinding, DeltaClaim, delta_content
from fedpeft.server import class_means
from fedpeft.server.verify import DeltaVerifier, RejectedDelta

CLASSES, FEATURES = 4, 6
KEYS = [Ed25519PrivateKey.generate() for _ in range(5)]
BINDING = DeltaBinding("run-1", "b" * 64, "t" * 64).for_round(0, "p" * 64)
SETTINGS = TrainSettings(max_length=32)


def _keyring() -> Keyring:
    keyring = Keyring()
    for i, key in enumerate(KEYS):
        keyring.enroll(f"client-{i}", key.public_key())
    return keyring


def _honest(seed: int) -> dict[str, np.ndarray]:
    """Sums and counts of rows drawn around fixed class centres, as a client computes them."""
    rng = np.random.default_rng(seed)
    centres = np.eye(CLASSES, FEATURES)
    counts = rng.integers(1, 20, CLASSES).astype(np.float32)
    sums = np.stack([c * centres[k] + rng.normal(0, 0.1, FEATURES) * np.sqrt(c) for k, c in enumerate(counts)])
    return {SUMS: sums.astype(np.float32), COUNTS: counts}


def _verified(stats: dict[str, np.ndarray], key: int = 0, examples: int | None = None, binding=BINDING,
              metrics: dict | None = None) -> class_means.ClassStatistics:
    claim = DeltaClaim(binding, int(stats[COUNTS].sum()) if examples is None else examples, metrics or {})
    content = delta_content(KEYS[key], claim, stats)
    verified = DeltaVerifier(_keyring()).verify(content, class_means.expectation(BINDING, CLASSES, FEATURES))
    return class_means.checked_statistics(verified)


def test_the_statistics_are_per_class_sums_of_the_pooled_features_and_the_label_counts(tiny_base):
    template = create_template(tiny_base.model, tiny_base.task, TemplateSpec(), list(synthetic_data.LABELS))
    model = template.attach(tiny_base.model)
    split = client_data(DATA, 0).train
    stats = class_statistics(model, tiny_base.task, tiny_base.tokenizer, split, SETTINGS, len(synthetic_data.LABELS))
    assert stats[COUNTS].tolist() == [split.labels.count(k) for k in range(len(synthetic_data.LABELS))]
    with torch.no_grad():  # what BERT's head reads: the pooler's output (dropout is off in eval)
        batch = tiny_base.task.batch(tiny_base.tokenizer, split.texts, split.labels, SETTINGS.max_length)
        pooled = model.get_base_model().bert(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"],
                                             token_type_ids=batch["token_type_ids"]).pooler_output.numpy()
    for k in range(len(synthetic_data.LABELS)):
        np.testing.assert_allclose(stats[SUMS][k], pooled[np.array(split.labels) == k].sum(0), atol=1e-4)


@pytest.mark.model
def test_the_class_means_head_classifies_before_any_training_and_beats_the_template_head():
    """The learning round zero does, on the bundled MiniLM (a pretrained backbone: its
    features separate the topics): on the clients' held-out rows, the head made from their
    training rows' class means scores far above the template's random head."""
    config = load_config(None)
    labels = list(synthetic_data.LABELS)
    package = BasePackage.from_pretrained(config.model.folder(), get_task("seq-cls"), "int8")
    base = load_base(package, len(labels))
    template = create_template(base.model, base.task, config.template_spec(), labels)
    model = template.attach(base.model)
    clients = [client_data(DATA, p) for p in range(3)]
    stats = [class_statistics(model, base.task, base.tokenizer, c.train, SETTINGS, len(labels)) for c in clients]
    weight, bias = head_from_means(sum(s[SUMS] for s in stats), sum(s[COUNTS] for s in stats))

    def accuracy() -> float:
        results = [evaluate(model, base.task, base.tokenizer, c.test, SETTINGS) for c in clients]
        return sum(r.accuracy * r.examples for r in results) / sum(r.examples for r in results)

    before = accuracy()
    set_adapter_arrays(model, with_head(template.init, head_names(template.init, base.task), weight, bias))
    after = accuracy()
    assert after >= before + 0.3 and after >= 0.6, (before, after)


def test_the_head_replaces_the_adapters_head_tensors_only(tiny_base):
    labels = list(synthetic_data.LABELS)
    template = create_template(tiny_base.model, tiny_base.task, TemplateSpec(), labels)
    names = head_names(template.init, tiny_base.task)
    weight = np.ones_like(template.init[names[0]])
    bias = np.full_like(template.init[names[1]], 2.0)
    started = with_head(template.init, names, weight, bias)
    assert sorted(n for n in template.init if not np.array_equal(started[n], template.init[n])) == sorted(names)
    with pytest.raises(ValueError, match="does not fit"):
        with_head(template.init, names, weight[:, :3], bias)


def test_the_nearest_mean_head_puts_each_mean_in_its_class_and_rows_near_them_never_in_an_empty_class():
    rng = np.random.default_rng(0)
    means = rng.normal(size=(5, 8))
    counts = np.array([3.0, 7.0, 0.0, 1.0, 12.0])
    weight, bias = head_from_means(means * counts[:, None], counts)
    logits = means @ weight.T + bias
    held = np.flatnonzero(counts)
    assert (logits[held].argmax(1) == held).all()
    near = means[held].repeat(50, 0) + rng.normal(0, 0.3, size=(50 * len(held), 8))
    assert 2 not in (near @ weight.T + bias).argmax(1)


def test_honest_replies_combine_into_the_count_weighted_class_sums():
    replies = [_verified(_honest(i), key=i) for i in range(3)]
    sums, counts, refused = class_means.combine(replies, max_weight_ratio=0.0)
    assert refused == []
    np.testing.assert_allclose(counts, sum(_honest(i)[COUNTS] for i in range(3)))
    np.testing.assert_allclose(sums, sum(_honest(i)[SUMS] for i in range(3)), rtol=1e-5)


@pytest.mark.parametrize("edit, examples", [
    (lambda s: {**s, COUNTS: s[COUNTS] + np.float32(0.5)}, None),   # not whole rows
    (lambda s: {**s, COUNTS: s[COUNTS] * np.float32(-1)}, 1),        # negative
    (lambda s: s, 999),                                             # counts do not add up to the signed rows
])
def test_counts_that_are_not_rows_are_refused_by_name(edit, examples):
    stats = edit(_honest(0))
    with pytest.raises(RejectedDelta) as refused:
        _verified(stats, examples=examples if examples is not None else int(np.ceil(stats[COUNTS].sum())))
    assert refused.value.reason == "bad-class-counts" and refused.value.client == "client-0"


@pytest.mark.parametrize("binding, metrics, reason", [
    (BINDING.for_round(1, "p" * 64), None, "wrong-round"),          # a round's delta is not round zero's
    (BINDING.for_round(0, "q" * 64), None, "wrong-parent"),         # made from another adapter than the template's
    (BINDING, {"train-loss": 1.0}, "bad-metrics"),                 # round zero's header carries no metrics
])
def test_a_reply_bound_elsewhere_is_refused_by_the_delta_checks(binding, metrics, reason):
    with pytest.raises(RejectedDelta) as refused:
        _verified(_honest(0), binding=binding, metrics=metrics)
    assert refused.value.reason == reason


def test_a_blown_up_reply_and_a_second_reply_under_one_key_are_refused_and_the_rest_combine():
    honest = [_verified(_honest(i), key=i) for i in range(3)]
    scaled = _honest(3)
    scaled[SUMS] *= 100  # signed and counted right, but its means lie far outside everyone's
    replies = [*honest, _verified(scaled, key=3), _verified(_honest(4), key=0)]
    sums, counts, refused = class_means.combine(replies, max_weight_ratio=0.0)
    assert sorted((r.reason, r.client) for r in refused) == [("duplicate", "client-0"), ("norm-too-large", "client-3")]
    np.testing.assert_allclose(counts, sum(_honest(i)[COUNTS] for i in range(3)))


def test_a_client_claiming_many_rows_weighs_no_more_than_the_cap():
    """A client whose every class holds 1,000 rows (consistent sums, so no check fails)
    moves the means only as far as the capped weight allows."""
    honest = [_verified(_honest(i), key=i) for i in range(3)]
    loud = {COUNTS: np.full(CLASSES, 1000, np.float32), SUMS: np.full((CLASSES, FEATURES), 1000 * 0.5, np.float32)}
    sums, counts, refused = class_means.combine([*honest, _verified(loud, key=3)], max_weight_ratio=3.0)
    assert refused == []
    cap = np.floor(3 * np.median([r.counts.sum() for r in [*honest, _verified(loud, key=3)]]))
    assert counts.sum() == pytest.approx(sum(r.counts.sum() for r in honest) + cap)


def test_means_that_barely_differ_give_a_bounded_head():
    """A backbone whose features do not separate the classes (a random tiny model): the head
    stays of the features' own scale instead of growing without bound."""
    means = np.ones((4, 8)) + np.random.default_rng(0).normal(0, 1e-6, (4, 8))
    weight, bias = head_from_means(means * 10, np.full(4, 10.0))
    assert np.abs(weight).max() < 1e3 and np.isfinite(bias).all()
