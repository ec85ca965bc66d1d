"""Client-level DP (server/privacy.py): the accountant against a hand computation, clipping,
the noise's spread, the budget refusal, and the strategy's DP average on signed replies."""

from __future__ import annotations

import math

import numpy as np
import pytest
from flwr.app import ConfigRecord
from opacus.accountants import RDPAccountant
from test_strategy import GLOBAL, KEYS, ROUND, TRAINED, _deltas, _flower_run, _Nodes, _reply, _signed, _strategy  # noqa: F401

from fedpeft.core.config import FederationConfig, PrivacySection
from fedpeft.core.errors import ConfigError
from fedpeft.core.privacy import noise_share, noisy_norm_bound, share_std
from fedpeft.core.wire.records import from_record, to_record
from fedpeft.server.privacy import PrivacyLedger, epsilon, noisy_mean


@pytest.mark.parametrize("noise, rounds, delta", [(1.0, 1, 1e-5), (2.0, 10, 1e-5), (0.8, 3, 1e-6)])
def test_epsilon_without_sampling_is_the_gaussian_mechanisms_rdp_by_hand(noise, rounds, delta):
    """Every client every round (sampling rate 1): the Gaussian mechanism's Renyi DP at order
    a is a / (2 z^2) per round and adds up over rounds; converted to (epsilon, delta) as in
    Balle et al. 2020 (eps = rdp + log((a-1)/a) - (log delta + log a) / (a-1)), best order."""
    by_hand = min(rounds * a / (2 * noise ** 2) + math.log((a - 1) / a) - (math.log(delta) + math.log(a)) / (a - 1)
                  for a in RDPAccountant.DEFAULT_ALPHAS)
    assert epsilon([(noise, 1.0)] * rounds, delta) == pytest.approx(by_hand, rel=1e-9)


def test_epsilon_grows_with_rounds_and_sampling_and_shrinks_with_noise():
    base = epsilon([(1.0, 0.02)] * 50, 1e-5)
    assert epsilon([(1.0, 0.02)] * 100, 1e-5) > base
    assert epsilon([(1.0, 0.05)] * 50, 1e-5) > base
    assert epsilon([(2.0, 0.02)] * 50, 1e-5) < base
    assert epsilon([(1.0, 0.02)] * 49 + [(0.5, 0.02)], 1e-5) > base  # one noisier-than-planned round costs
    assert epsilon([], 1e-5) == 0.0 and epsilon([(0.0, 0.02)], 1e-5) == math.inf


def test_each_delta_is_clipped_and_the_sum_divided_by_the_clients_asked():
    settings = PrivacySection(mode="central", clip=1.0, noise_multiplier=0.0)
    big, small = np.array([3.0, 4.0], np.float32), np.array([0.1, 0.0], np.float32)
    mean = noisy_mean([big, small], [5.0, 0.1], asked=4, settings=settings, rng=np.random.default_rng(0))
    np.testing.assert_allclose(mean, (big / 5 + small) / 4)


def test_the_noise_has_the_calibrated_spread():
    settings = PrivacySection(mode="central", clip=0.5, noise_multiplier=2.0)
    mean = noisy_mean([np.zeros(200_000, np.float32)], [0.0], asked=10, settings=settings,
                      rng=np.random.default_rng(1))
    assert mean.std() == pytest.approx(2.0 * 0.5 / 10, rel=0.02)


def test_a_run_over_its_epsilon_target_is_refused_before_any_round():
    ledger = PrivacyLedger(PrivacySection(mode="central", noise_multiplier=0.5, target_epsilon=8.0))
    with pytest.raises(ConfigError, match="over privacy.target_epsilon 8"):
        ledger.check_budget(rounds_left=100, sample_rate=0.5)
    assert ledger.check_budget(rounds_left=5, sample_rate=0.02) <= 8.0


def test_the_dp_average_of_signed_deltas_clips_divides_by_the_asked_and_spends_epsilon():
    deltas = _deltas(31, 2)
    privacy = PrivacySection(mode="central", clip=0.5, noise_multiplier=0.0)
    strategy = _strategy(privacy=privacy)
    arrays, _ = strategy.aggregate_train(1, [_reply(_signed(d, KEYS[i], num_examples=10 * (i + 1)))
                                             for i, d in enumerate(deltas)])
    result = from_record(arrays)
    norms = [math.sqrt(sum(float(np.sum(d[n].astype(np.float64) ** 2)) for n in TRAINED)) for d in deltas]
    for name in TRAINED:  # equal weights whatever the signed counts; the denominator is the 3 nodes asked
        expected = GLOBAL[name] + sum(d[name] * min(1, 0.5 / n) for d, n in zip(deltas, norms)) / len(_Nodes.ids)
        np.testing.assert_allclose(result[name], expected, rtol=1e-5, atol=1e-7)
    np.testing.assert_array_equal(result["frozen"], GLOBAL["frozen"])
    assert strategy.traffic.epsilon == math.inf  # no noise: no privacy, and it says so


def test_central_dp_needs_fedavg_and_a_known_mode():
    with pytest.raises(ConfigError, match="fedavg"):
        FederationConfig.from_dict({"privacy": {"mode": "central"}, "federation": {"strategy": "fedmedian"}})
    with pytest.raises(ConfigError, match="privacy.mode"):
        FederationConfig.from_dict({"privacy": {"mode": "local"}})


def test_a_clients_noise_share_clips_then_adds_its_part_of_the_central_noise():
    rng = np.random.default_rng(3)
    delta = {"a": np.full((300, 300), 0.1, np.float32), "b": np.full(10_000, 0.3, np.float32)}
    clean = noise_share(delta, clip=2.0, std=0.0, rng=rng)
    norm = math.sqrt(sum(float(np.sum(t.astype(np.float64) ** 2)) for t in clean.values()))
    assert norm == pytest.approx(2.0, rel=1e-6)
    np.testing.assert_allclose(clean["b"] / clean["a"][0, 0], 3.0, rtol=1e-5)  # one scale for every tensor
    std = share_std(noise_multiplier=1.5, clip=2.0, asked=9)
    assert std * math.sqrt(9) == pytest.approx(1.5 * 2.0)  # nine shares add up to the central noise
    noised = noise_share(delta, clip=2.0, std=std, rng=rng)
    assert (noised["a"] - clean["a"]).std() == pytest.approx(std, rel=0.01)
    bound = noisy_norm_bound(2.0, std, 100_000)
    assert norm < math.sqrt(sum(float(np.sum(t.astype(np.float64) ** 2)) for t in noised.values())) < bound


def test_distributed_dp_tells_clients_their_share_and_accounts_for_the_deltas_that_came():
    """The server asks 3 nodes: each train message carries the clip and a noise share of
    z x clip / sqrt(3); the round's bound makes room for the noise; 2 of 3 deltas arrive,
    so the sum holds 2 shares and the round is accounted at z x sqrt(2/3)."""
    privacy = PrivacySection(mode="distributed", clip=0.5, noise_multiplier=1.2)
    strategy = _strategy(privacy=privacy)
    sent = list(strategy.configure_train(1, to_record(GLOBAL), ConfigRecord(), _Nodes()))
    std = 1.2 * 0.5 / math.sqrt(3)
    for msg in sent:
        config = msg.content.config_records["config"]
        assert config["dp-clip"] == 0.5 and config["dp-noise-std"] == pytest.approx(std)
    count = strategy.expectation.layout.count
    assert strategy.expectation.max_norm == pytest.approx(0.5 + std * (math.sqrt(count) + 10))
    deltas = _deltas(32, 2)
    arrays, _ = strategy.aggregate_train(1, [_reply(_signed(d, KEYS[i], num_examples=10 * (i + 1)))
                                             for i, d in enumerate(deltas)])
    result = from_record(arrays)
    for name in TRAINED:  # summed as they came (clipped and noised on the devices), divided by the 3 asked
        np.testing.assert_allclose(result[name], GLOBAL[name] + (deltas[0][name] + deltas[1][name]) / 3, rtol=1e-5)
    assert strategy.traffic.noise_multiplier == pytest.approx(1.2 * math.sqrt(2 / 3))
    assert strategy.traffic.epsilon == pytest.approx(epsilon([(1.2 * math.sqrt(2 / 3), 1.0)], 1e-5))
