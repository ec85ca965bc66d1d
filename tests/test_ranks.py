"""Devices of different sizes: clients below the template's LoRA rank train the first r
columns of B, send zero elsewhere, and the server averages each column over the clients
that trained it (core/adapters/rank.py, server/strategy.py `_column_mean`)."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
from conftest import DATA
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from flwr.app import ConfigRecord, Message, RecordDict

from fedpeft.core.adapters.rank import restored_outside, trained_positions, truncated
from fedpeft.core.config import load_config
from fedpeft.core.errors import ConfigError
from fedpeft.core.trust.hashing import tensors_id
from fedpeft.core.trust.keys import Keyring
from fedpeft.core.wire.delta_codec import DeltaEncoding
from fedpeft.core.wire.envelope import DELTA_RECORD, ENVELOPE_RECORD, DeltaBinding, DeltaClaim, EncodedDelta, \
    envelope_record, sign_delta
from fedpeft.core.wire.records import from_record, to_record
from fedpeft.server.strategy import StrategySettings, build_strategy
from fedpeft.server.verify import DeltaVerifier, VerifyPolicy
from test_strategy import _flower_run, _Nodes  # noqa: F401  (_flower_run: the autouse fixture that sets up a Flower run)

A, B, HEAD = "m.lora_A.default.weight", "m.lora_B.default.weight", "classifier.modules_to_save.default.weight"
RANK = 4
GLOBAL = {A: np.arange(RANK * 3, dtype=np.float32).reshape(RANK, 3), B: np.ones((5, RANK), np.float32),
          HEAD: np.zeros((2, 5), np.float32)}
TRAINED = (B, HEAD)  # FFA-LoRA: A frozen
BINDING, ROUND = DeltaBinding("run", "b" * 64, "t" * 64), 1
KEYS = [Ed25519PrivateKey.generate() for _ in range(3)]


def test_a_lower_rank_runs_the_first_columns_and_leaves_the_rest_where_they_were():
    cut = truncated(GLOBAL, 2)
    assert (cut[B][:, :2] == 1).all() and (cut[B][:, 2:] == 0).all() and cut[A] is GLOBAL[A]
    assert truncated(GLOBAL, 0)[B] is GLOBAL[B] and truncated(GLOBAL, RANK)[B] is GLOBAL[B]
    trained = {**cut, B: cut[B] + 3, A: GLOBAL[A] * 2}
    back = restored_outside(trained, GLOBAL, 2)
    assert (back[B][:, :2] == 4).all() and (back[B][:, 2:] == 1).all()     # untrained columns: as sent
    assert (back[A][:2] == GLOBAL[A][:2] * 2).all() and (back[A][2:] == GLOBAL[A][2:]).all()
    mask = trained_positions({n: v.shape for n, v in GLOBAL.items()}, [A, B, HEAD], 2)
    assert mask.sum() == 2 * 3 + 5 * 2 + 2 * 5


def _signed(delta: dict[str, np.ndarray], key: Ed25519PrivateKey, rank: int | None, examples: int = 10) -> Message:
    metrics = {"train-loss": 1.0, "steps": 1.0, **({"rank": rank} if rank else {})}
    claim = DeltaClaim(BINDING.for_round(ROUND, tensors_id(GLOBAL)), examples, metrics)
    encoded = EncodedDelta.of(delta, DeltaEncoding())
    content = RecordDict({DELTA_RECORD: encoded.record(), ENVELOPE_RECORD: envelope_record(sign_delta(key, claim, encoded))})
    return Message(content, dst_node_id=0, message_type="train")


def _strategy(name: str = "fedavg", **options):
    keyring = Keyring()
    for i, key in enumerate(KEYS):
        keyring.enroll(f"client-{i}", key.public_key())
    tensors = {n: (GLOBAL[n].dtype.str, GLOBAL[n].shape) for n in TRAINED}
    strategy = build_strategy(StrategySettings(name, options=options), BINDING, tensors,
                              DeltaVerifier(keyring, VerifyPolicy(max_update_norm=1e6)))
    list(strategy.configure_train(ROUND, to_record(GLOBAL), ConfigRecord(), _Nodes()))
    return strategy


def test_each_column_is_averaged_over_the_clients_that_trained_it():
    rng = np.random.default_rng(0)
    full = [{n: rng.normal(size=GLOBAL[n].shape).astype(np.float32) for n in TRAINED} for _ in range(2)]
    small = {n: rng.normal(size=GLOBAL[n].shape).astype(np.float32) for n in TRAINED}
    small[B][:, 2:] = 1000.0  # outside its rank: ignored, not averaged in
    replies = [_signed(full[0], KEYS[0], None, 10), _signed(full[1], KEYS[1], None, 30), _signed(small, KEYS[2], 2, 60)]
    strategy = _strategy()
    result = from_record(strategy.aggregate_train(ROUND, replies)[0])
    everyone = (10 * full[0][B] + 30 * full[1][B] + 60 * small[B]) / 100
    wide = (10 * full[0][B] + 30 * full[1][B]) / 40
    np.testing.assert_allclose(result[B][:, :2], GLOBAL[B][:, :2] + everyone[:, :2], rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(result[B][:, 2:], GLOBAL[B][:, 2:] + wide[:, 2:], rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(result[HEAD], (10 * full[0][HEAD] + 30 * full[1][HEAD] + 60 * small[HEAD]) / 100,
                               rtol=1e-5, atol=1e-7)
    assert strategy.traffic.accepted == 3 and set(strategy.traffic.bytes_up_by_rank) == {0, 2}


@pytest.mark.parametrize("strategy,rank", [("fedavg", RANK), ("fedavg", 0), ("fedmedian", 2)])
def test_a_rank_claim_the_round_cannot_average_is_refused_by_name(strategy, rank):
    delta = {n: np.zeros_like(GLOBAL[n]) for n in TRAINED}
    metrics = {"train-loss": 1.0, "steps": 1.0, "rank": rank}
    claim = DeltaClaim(BINDING.for_round(ROUND, tensors_id(GLOBAL)), 10, metrics)
    encoded = EncodedDelta.of(delta, DeltaEncoding())
    content = RecordDict({DELTA_RECORD: encoded.record(), ENVELOPE_RECORD: envelope_record(sign_delta(KEYS[0], claim, encoded))})
    chosen = _strategy(strategy)
    chosen.aggregate_train(ROUND, [Message(content, dst_node_id=0, message_type="train")])
    assert chosen.traffic.rejected == {"bad-metrics": 1}


def test_a_client_below_the_template_rank_trains_only_its_columns(tiny_base):
    from fedpeft.client.runtime import Session
    from fedpeft.client.task import TorchLearner
    from fedpeft.core.adapters.spec import TemplateSpec
    from fedpeft.core.adapters.template import create_template
    from fedpeft.core.training import synthetic_data
    from fedpeft.core.training.data import client_data
    from fedpeft.core.training.job import Job
    from fedpeft.core.training.personalization import local_update
    from fedpeft.core.training.settings import TrainSettings

    template = create_template(tiny_base.model, tiny_base.task, TemplateSpec(rank=4), list(synthetic_data.LABELS))
    learner = TorchLearner(Session(tiny_base, template, template.attach(tiny_base.model)))
    start = {n: v + 0.01 if ".lora_B." in n else v for n, v in template.init.items()}  # a global with every column set
    job = Job("b" * 64, template.template_id, train=TrainSettings(max_length=32, rank=2, learning_rate=1e-2))
    delta, _ = local_update(learner, job, client_data(DATA, 0).train, start, seed=0)
    b_names = [n for n in delta if ".lora_B." in n]
    assert b_names and all((delta[n][:, 2:] == 0).all() for n in b_names)
    assert all(np.abs(delta[n][:, :2]).max() > 0 for n in b_names)
    assert any(np.abs(v).max() > 0 for n, v in delta.items() if ".lora_B." not in n)  # the head trained too


def test_rank_mixes_are_checked_and_drawn_by_seed():
    config = load_config(None)
    with pytest.raises(ConfigError, match="add up to"):
        config.with_overrides(**{"simulation.rank_mix": {"2": 0.5}})
    with pytest.raises(ConfigError, match="1..adapter.rank"):
        config.with_overrides(**{"simulation.rank_mix": {"16": 1.0}})
    with pytest.raises(ConfigError, match="fedavg"):
        config.with_overrides(**{"simulation.rank_mix": {"2": 0.5, "8": 0.5}, "federation.strategy": "fedmedian"})
    mixed = config.with_overrides(**{"simulation.rank_mix": {"2": 0.5, "8": 0.5}})
    drawn = mixed.rank_of_partitions(8)
    assert sorted(drawn) == [0] * 4 + [2] * 4 and drawn == mixed.rank_of_partitions(8)
    assert dataclasses.replace(mixed, run=dataclasses.replace(mixed.run, seed=1)).rank_of_partitions(8) != drawn
