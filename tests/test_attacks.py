"""Attacks by validly signed clients (simulations/attacks.py) and FLTrust's weighting."""

from __future__ import annotations

import math

import numpy as np
import pytest

from fedpeft.core.errors import ConfigError
from fedpeft.core.training.data import DataSpec, TextSplit
from fedpeft.server.fltrust import root_split, trust_mean
from fedpeft.simulations import attacks, misbehaving


def test_attackers_are_seeded_apart_from_misbehaving_clients_and_start_when_told():
    plan = misbehaving.choose_plan(10, 0.2, seed=3, attackers=0.3, attacks=["backdoor", "scaled"],
                                   attack_from_round=2)
    bad, attacking = set(plan["partitions"]), set(plan["attack"]["partitions"])
    assert len(bad) == 2 and len(attacking) == 3 and not bad & attacking
    assert plan == misbehaving.choose_plan(10, 0.2, seed=3, attackers=0.3, attacks=["backdoor", "scaled"],
                                           attack_from_round=2)
    one = int(min(attacking))
    assert misbehaving.behaviour(plan, one, 1) is None  # before attack_from_round: honest
    kinds = {misbehaving.behaviour(plan, int(p), r) for p in attacking for r in (2, 3)}
    assert kinds == {"backdoor", "scaled"}
    assert misbehaving.expected_rejections(plan, 3) == misbehaving.expected_rejections(
        misbehaving.choose_plan(10, 0.2, seed=3), 3)  # attacks pass every check: no rejection expected
    assert misbehaving.choose_plan(10, 0.0, seed=0, attackers=0.2)["attack"]["kinds"] == ["sign-flip"]
    with pytest.raises(ConfigError, match="gossip"):
        misbehaving.choose_plan(10, 0.0, seed=0, attackers=0.2, attacks=["gossip"])
    with pytest.raises(ConfigError, match="norm bound"):
        misbehaving.choose_plan(10, 0.0, seed=0, attackers=0.2, attacks=["colluding"])


def test_label_flip_and_backdoor_poison_the_rows_not_their_count():
    split = TextSplit([f"row {i}" for i in range(8)], [0, 1, 2, 3, 1, 2, 0, 3])
    flipped = attacks.poisoned("label-flip", split, num_labels=4)
    assert flipped.texts == split.texts and flipped.labels == [3, 2, 1, 0, 2, 1, 3, 0]
    backdoored = attacks.poisoned("backdoor", split, num_labels=4)
    assert len(backdoored) == len(split)
    triggered = [i for i, t in enumerate(backdoored.texts) if t.startswith(attacks.TRIGGER)]
    assert triggered == [1, 3, 5]  # every other row not already of the backdoor label
    assert all(backdoored.labels[i] == attacks.BACKDOOR_LABEL for i in triggered)
    assert [backdoored.labels[i] for i in range(8) if i not in triggered] == [0, 2, 1, 0, 3]
    measured = attacks.backdoor_rows(split)
    assert len(measured) == 6 and set(measured.labels) == {attacks.BACKDOOR_LABEL}
    assert all(t.startswith(attacks.TRIGGER) for t in measured.texts)


def test_model_poisoning_deltas():
    rng = np.random.default_rng(0)
    honest, global_values = rng.normal(size=50).astype(np.float32), rng.normal(size=50).astype(np.float32)
    np.testing.assert_array_equal(attacks.attacked_delta("scaled", honest, global_values, 0), honest * 10)
    np.testing.assert_array_equal(attacks.attacked_delta("sign-flip", honest, global_values, 0), -honest)
    colluding = attacks.attacked_delta("colluding", honest, global_values, 7.0)
    assert np.linalg.norm(colluding) == pytest.approx(0.99 * 7.0, rel=1e-6)
    np.testing.assert_allclose(colluding / np.linalg.norm(colluding), -global_values / np.linalg.norm(global_values),
                               rtol=1e-5)
    np.testing.assert_array_equal(colluding, attacks.attacked_delta("colluding", -honest, global_values, 7.0))


def test_trust_mean_by_hand():
    """Root (1, 0): (2, 0) has trust 1 and shrinks to (1, 0); (-1, 0) has trust 0; (1, 1)
    has trust 1/sqrt 2 and becomes (1, 1)/sqrt 2. Step: their trust-weighted mean."""
    step, trusts = trust_mean([np.array([2.0, 0]), np.array([-1.0, 0]), np.array([1.0, 1.0])], np.array([1.0, 0]))
    r = 1 / math.sqrt(2)
    assert trusts == pytest.approx([1.0, 0.0, r])
    np.testing.assert_allclose(step, (np.array([1.0, 0]) + r * np.array([r, r])) / (1 + r))
    nothing, none_trusted = trust_mean([np.array([-1.0, 0])], np.array([1.0, 0]))
    assert none_trusted == [0.0] and not nothing.any()


def test_root_set_is_seeded_and_sized():
    spec = DataSpec(num_clients=6)
    root = root_split(spec, 50, seed=1)
    assert len(root) == 50 and root.texts == root_split(spec, 50, seed=1).texts
    assert root.texts != root_split(spec, 50, seed=2).texts
