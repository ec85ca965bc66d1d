"""The server checkpoint: what a resumed run starts from, and refusals of damaged files."""

import json

import numpy as np
import pytest
from test_strategy import BINDING, KEYS, _content, _flower_run, _keyring, _Nodes, _reply  # noqa: F401  (_flower_run: messages need a Flower run)

from fedpeft.core.errors import ConfigError, IntegrityError
from fedpeft.core.trust.keys import Keyring
from fedpeft.core.wire.envelope import DeltaBinding
from fedpeft.server.checkpoint import Checkpoint, load_checkpoint
from fedpeft.server.strategy import StrategySettings, build_strategy
from fedpeft.server.verify import DeltaVerifier, VerifyPolicy


@pytest.fixture
def checkpoint(tmp_path) -> Checkpoint:
    rng = np.random.default_rng(0)
    adapter = {"layer.lora_B": rng.normal(size=(8, 4)).astype(np.float32),
               "head.weight": rng.normal(size=(4, 8)).astype(np.float32)}
    state = {"m_t": {n: a * 0.1 for n, a in adapter.items()}, "v_t": {n: a * a for n, a in adapter.items()}}
    return Checkpoint(2, "ab" * 16, "b" * 64, "c" * 64, adapter, state,
                      [{"round": 1, "accepted": 3}, {"round": 2, "accepted": 2}])


def test_round_trip_keeps_every_field_bit_exact(tmp_path, checkpoint):
    path = tmp_path / "checkpoint.safetensors"
    checkpoint.save(path)
    loaded = load_checkpoint(path)
    assert (loaded.round, loaded.run_id, loaded.base_id, loaded.template_id) == (2, "ab" * 16, "b" * 64, "c" * 64)
    assert loaded.adapter_id == checkpoint.adapter_id
    assert loaded.rows == checkpoint.rows
    for attr in ("m_t", "v_t"):
        for name, value in checkpoint.strategy_state[attr].items():
            assert np.array_equal(loaded.strategy_state[attr][name], value)


def test_absent_checkpoint_is_none(tmp_path):
    assert load_checkpoint(tmp_path / "none.safetensors") is None


def test_saving_again_replaces_the_file_whole(tmp_path, checkpoint):
    path = tmp_path / "checkpoint.safetensors"
    checkpoint.save(path)
    checkpoint.round = 3
    checkpoint.save(path)
    assert load_checkpoint(path).round == 3
    assert [p.name for p in tmp_path.iterdir() if "checkpoint" in p.name] == ["checkpoint.safetensors"]


def test_truncated_file_is_refused(tmp_path, checkpoint):
    path = tmp_path / "checkpoint.safetensors"
    checkpoint.save(path)
    path.write_bytes(path.read_bytes()[:-100])
    with pytest.raises(IntegrityError, match="unreadable"):
        load_checkpoint(path)


@pytest.mark.parametrize("where", ["first", "last"])  # an adapter tensor, a strategy tensor
def test_tensor_that_no_longer_matches_its_stored_hash_is_refused(tmp_path, checkpoint, where):
    path = tmp_path / "checkpoint.safetensors"
    checkpoint.save(path)
    data = bytearray(path.read_bytes())
    header = 8 + int.from_bytes(data[:8], "little")
    data[header if where == "first" else -1] ^= 0x01  # one bit of tensor data
    path.write_bytes(bytes(data))
    with pytest.raises(IntegrityError, match="do not match the hash"):
        load_checkpoint(path)


def test_unknown_format_and_missing_metadata_are_refused(tmp_path, checkpoint):
    from safetensors.numpy import save_file

    path = tmp_path / "checkpoint.safetensors"
    save_file(checkpoint.adapter, str(path))  # a safetensors file, but not a checkpoint
    with pytest.raises(IntegrityError, match="unreadable"):
        load_checkpoint(path)
    save_file({f"adapter/{n}": a for n, a in checkpoint.adapter.items()}, str(path),
              metadata={"fedpeft-checkpoint": json.dumps({"format": 99})})
    with pytest.raises(IntegrityError, match="unsupported format 99"):
        load_checkpoint(path)


def test_fedadam_moments_go_into_the_checkpoint_and_come_back(tmp_path, checkpoint):
    tensors = {n: ("<f4", a.shape) for n, a in checkpoint.adapter.items()}
    verifier = DeltaVerifier(Keyring(), VerifyPolicy(0.0, 100, 0))
    strategy = build_strategy(StrategySettings("fedadam", min_clients=2), DeltaBinding("r", "b" * 64, "c" * 64),
                              tensors, verifier)
    assert strategy.state_arrays() == {}  # no round aggregated yet
    checkpoint.save(tmp_path / "checkpoint.safetensors")  # the moments go through the file
    strategy.restore_state(load_checkpoint(tmp_path / "checkpoint.safetensors").strategy_state)
    state = strategy.state_arrays()
    assert set(state) == {"m_t", "v_t"}
    assert all(np.array_equal(state["v_t"][n], checkpoint.strategy_state["v_t"][n]) for n in checkpoint.adapter)
    assert all(np.array_equal(state["m_t"][n], checkpoint.strategy_state["m_t"][n]) for n in checkpoint.adapter)
    with pytest.raises(ConfigError, match="'eta'"):
        strategy.restore_state({"eta": {}})


@pytest.mark.parametrize("field,value", [("round", 7), ("run_id", "cd" * 16), ("rows", [])])
def test_edited_metadata_no_longer_matches_the_stored_hash(tmp_path, checkpoint, field, value):
    """The round, the run's identity and the metrics are covered by the hash, not only the tensors."""
    from safetensors import safe_open
    from safetensors.numpy import save_file

    path = tmp_path / "checkpoint.safetensors"
    checkpoint.save(path)
    with safe_open(path, framework="np") as handle:
        meta = json.loads(handle.metadata()["fedpeft-checkpoint"])
        tensors = {k: handle.get_tensor(k) for k in handle.keys()}
    meta[field] = value
    save_file(tensors, str(path), metadata={"fedpeft-checkpoint": json.dumps(meta)})
    with pytest.raises(IntegrityError, match="do not match the hash"):
        load_checkpoint(path)


def test_a_checkpoint_holds_no_enrollment_list(tmp_path, checkpoint):
    """A resumed run verifies deltas against the keyring file as it is now (server/federation.py
    prepare): a key revoked after the checkpoint was written stays revoked."""
    from safetensors import safe_open

    path = tmp_path / "checkpoint.safetensors"
    checkpoint.save(path)
    with safe_open(path, framework="np") as handle:
        assert "keyring" not in json.loads(handle.metadata()["fedpeft-checkpoint"])


def test_resume_trusts_the_keyring_file_not_the_keys_enrolled_when_the_checkpoint_was_written(tmp_path, tiny_bert_dir):
    from fedpeft.core.config import load_config
    from fedpeft.core.training.synthetic_data import LABELS
    from fedpeft.core.trust.keys import load_public_key, new_key_pair, public_key_path
    from fedpeft.server.federation import prepare

    keyring = Keyring(tmp_path / "keyring.json")
    for name in ("client-0", "client-1"):
        new_key_pair(tmp_path / f"{name}.key")
        keyring.enroll(name, load_public_key(public_key_path(tmp_path / f"{name}.key")))
    keyring.save()
    new_key_pair(tmp_path / "operator.key")
    config = load_config(None).with_overrides(**{"model.path": str(tiny_bert_dir), "security.keyring": str(keyring.path),
                                                 "security.operator_key": str(tmp_path / "operator.key")})
    first = prepare(config, LABELS, tmp_path / "out")
    Checkpoint(1, first.job.run_id, first.job.base_id, first.job.template_id, dict(first.template.init), {},
               [{"round": 1}]).save(tmp_path / "out" / "checkpoint.safetensors")
    revoked = Keyring.load(keyring.path)
    revoked.keys.pop(next(k for k, v in revoked.keys.items() if v.name == "client-1"))
    revoked.save()
    resumed = prepare(config, LABELS, tmp_path / "out", resume=True)
    assert resumed.done == 1 and resumed.job.run_id == first.job.run_id
    assert sorted(e.name for e in resumed.keyring.keys.values()) == ["client-0"]


def _rounds_of(strategy, arrays: dict, rounds: range, keys, deltas) -> dict:
    """`strategy` run through `rounds` (the run's round numbers) from `arrays`: each round it
    sends the global down and aggregates the signed deltas `deltas[round]` bound to it."""
    from flwr.app import ConfigRecord

    from fedpeft.core.trust.hashing import tensors_id
    from fedpeft.core.wire.envelope import DeltaClaim, EncodedDelta, sign_delta
    from fedpeft.core.wire.records import from_record, to_record

    for flower_round, server_round in enumerate(rounds, start=1):
        list(strategy.configure_train(flower_round, to_record(arrays), ConfigRecord(), _Nodes()))
        claim = DeltaClaim(BINDING.for_round(server_round, tensors_id(arrays)), 10, {"train-loss": 1.0, "steps": 1})
        replies = [_reply(_content(d, sign_delta(k, claim, EncodedDelta.of(d)))) for k, d in zip(keys, deltas[server_round])]
        result, _ = strategy.aggregate_train(flower_round, replies)
        arrays = from_record(result)
    return arrays


@pytest.mark.parametrize("name, options, state", [
    ("fedadam", {"eta": 0.05}, {"m_t", "v_t"}),
    ("fedavgm", {"server_learning_rate": 1.0, "server_momentum": 0.9}, {"momentum_vector"}),
])
def test_a_server_optimizer_resumed_from_a_checkpoint_file_takes_the_uninterrupted_step(tmp_path, name, options, state):
    """Rounds 1-2, the checkpoint written to disk and read back as a restarted server does,
    round 3 by a new strategy that restored it: the adapter is the one an uninterrupted
    strategy reaches, bit for bit. A strategy that starts round 3 without the state (FedAdam's
    moments, FedAvgM's momentum) takes another step."""
    rng = np.random.default_rng(5)
    start = {"a": rng.normal(size=(2, 3)).astype(np.float32), "b": rng.normal(size=4).astype(np.float32)}
    tensors = {n: ("<f4", a.shape) for n, a in start.items()}
    deltas = {r: [{n: rng.normal(size=a.shape).astype(np.float32) for n, a in start.items()} for _ in range(2)]
              for r in (1, 2, 3)}

    def strategy(offset: int = 0):
        return build_strategy(StrategySettings(name, options=dict(options), round_offset=offset), BINDING, tensors,
                              DeltaVerifier(_keyring(), VerifyPolicy()))

    whole = _rounds_of(strategy(), start, range(1, 4), KEYS, deltas)

    first = strategy()
    after_two = _rounds_of(first, start, range(1, 3), KEYS, deltas)
    path = tmp_path / "checkpoint.safetensors"
    Checkpoint(2, "ab" * 16, BINDING.base_id, BINDING.template_id, after_two, first.state_arrays(), []).save(path)
    loaded = load_checkpoint(path)
    assert set(loaded.strategy_state) == state
    resumed = strategy(offset=2)
    resumed.restore_state(loaded.strategy_state)
    for attr in state:  # what came back from the file is what the strategy held
        for key, value in first.state_arrays()[attr].items():
            np.testing.assert_array_equal(resumed.state_arrays()[attr][key], value)
    result = _rounds_of(resumed, loaded.adapter, range(3, 4), KEYS, deltas)
    for n in start:
        np.testing.assert_array_equal(result[n], whole[n])

    forgetful = _rounds_of(strategy(offset=2), loaded.adapter, range(3, 4), KEYS, deltas)
    assert any(not np.array_equal(forgetful[n], whole[n]) for n in start)
