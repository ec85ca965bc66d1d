"""train.round_decay: a learning rate that falls round by round, on the clients and in the
centralized reference alike, held to its range on the node."""

from __future__ import annotations

import json
from dataclasses import asdict, replace

import pytest

from fedpeft.core.errors import ConfigError
from fedpeft.core.training.job import Job
from fedpeft.core.training.settings import TrainSettings
from fedpeft.server.centralized import decayed_rounds


def test_each_round_trains_at_the_decayed_rate_and_round_one_at_the_configured_one():
    settings = TrainSettings(learning_rate=1e-2, round_decay=0.5)
    assert [settings.for_round(r).learning_rate for r in (1, 2, 3)] == pytest.approx([1e-2, 5e-3, 2.5e-3])
    assert TrainSettings(learning_rate=1e-2).for_round(5).learning_rate == 1e-2


@pytest.mark.parametrize("rounds, epochs", [(5, 1), (5, 2), (5, 0.5), (3, 0.1), (10, 0.25)])
def test_the_reference_trains_as_many_epochs_as_before_spread_over_the_rounds(rounds, epochs):
    plan = decayed_rounds(rounds, epochs)
    assert sum(e for _, e in plan) == max(1, round(rounds * epochs))
    assert [r for r, _ in plan] == sorted({r for r, _ in plan}) and all(1 <= r <= rounds for r, _ in plan)


@pytest.mark.parametrize("decay", [0.0, 1.5, -0.5])  # (a NaN never gets this far: the JSON reader refuses it)
def test_a_decay_outside_0_to_1_from_the_server_is_refused_on_the_node(decay):
    config = Job("b" * 64, "t" * 64).to_config()
    config["train"] = json.dumps(asdict(replace(TrainSettings(), round_decay=decay)))
    with pytest.raises(ConfigError, match="round_decay"):
        Job.from_config(config)
