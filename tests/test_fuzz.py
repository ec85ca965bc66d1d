"""Property-based fuzzing of every parser of untrusted bytes: any input is accepted or
refused with fedpeft's named error (a FedPeftError), never another exception or a hang.

The default suite runs a short pass (FUZZ_EXAMPLES per parser); `FEDPEFT_FUZZ_EXAMPLES=5000
pytest tests/test_fuzz.py tests/test_hostile_replies.py` is the long run (README)."""

from __future__ import annotations

import json
import os
from datetime import UTC, datetime

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from fedpeft.core.config import FederationConfig, load_config
from fedpeft.core.errors import FedPeftError
from fedpeft.core.training.data import read_rows
from fedpeft.core.trust.keys import Keyring
from fedpeft.core.trust.release import PROMOTION_TYPE, RELEASE_TYPE, check_promotion, check_release
from fedpeft.core.trust.signed_files import sign_manifest
from fedpeft.server.checkpoint import load_checkpoint

FUZZ_EXAMPLES = int(os.environ.get("FEDPEFT_FUZZ_EXAMPLES", "200"))
FUZZ = settings(max_examples=FUZZ_EXAMPLES, deadline=None, suppress_health_check=list(HealthCheck))
KEY = Ed25519PrivateKey.generate()
NOW = datetime(2026, 1, 1, tzinfo=UTC)

json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-2**70, 2**70) | st.floats(allow_nan=False) | st.text(max_size=30),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=12), inner, max_size=4),
    max_leaves=20)
manifest_like = st.fixed_dictionaries({}, optional={
    "type": st.sampled_from([RELEASE_TYPE, PROMOTION_TYPE, "x"]) | st.text(max_size=5),
    "version": json_values | st.integers(-3, 5), "base_id": st.text(max_size=64) | st.just("a" * 64),
    "template_id": json_values, "labels": json_values, "tensors": json_values, "channel": json_values,
    "release_id": json_values, "created": st.sampled_from(["2026-01-01", "2026-01-01T00:00:00Z", "x"]) | json_values,
    "expires": st.sampled_from(["2030-01-01T00:00:00Z", "2030-01-01", "2020-01-01T00:00:00+00:00", "bad"]) | json_values,
    "files": json_values | st.dictionaries(st.sampled_from(["adapter_config.json", "adapter_model.safetensors",
                                                            "../x", "/etc/passwd", ""]),
                                           st.fixed_dictionaries({"size": json_values, "sha256": json_values}),
                                           max_size=3),
})


def _accepted_or_named(parse, *args) -> None:
    try:
        parse(*args)
    except FedPeftError:
        pass


@FUZZ
@given(manifest=manifest_like, raw=st.binary(max_size=200), signed_raw=st.booleans())
def test_release_and_promotion_manifests(manifest, raw, signed_raw):
    """Signed by the operator key, so the parser (not the signature check) meets the input."""
    payload = raw if signed_raw else json.dumps(manifest).encode()
    _, signature = sign_manifest({}, KEY)
    record = json.loads(signature)
    record["signature"] = KEY.sign(payload).hex()
    signature = json.dumps(record).encode()
    _accepted_or_named(check_release, payload, signature, KEY.public_key(), )
    _accepted_or_named(lambda: check_release(payload, signature, KEY.public_key(), base_id="a" * 64, now=NOW))
    _accepted_or_named(lambda: check_promotion(payload, signature, KEY.public_key(), now=NOW))


@FUZZ
@given(signature=st.binary(max_size=300) | json_values.map(lambda v: json.dumps(v).encode()))
def test_signature_files(signature):
    _accepted_or_named(check_release, b"{}", signature, KEY.public_key())


@FUZZ
@given(data=st.binary(max_size=2000))
def test_checkpoint_files(tmp_path_factory, data):
    path = tmp_path_factory.mktemp("ckpt") / "checkpoint.safetensors"
    path.write_bytes(data)
    _accepted_or_named(load_checkpoint, path)


@FUZZ
@given(text=st.text(max_size=400), suffix=st.sampled_from([".csv", ".jsonl"]))
def test_user_data_files(tmp_path_factory, text, suffix):
    path = tmp_path_factory.mktemp("data") / f"rows{suffix}"
    path.write_text(text)
    _accepted_or_named(read_rows, path)


@FUZZ
@given(text=st.text(max_size=300), values=st.dictionaries(
    st.sampled_from(["model", "adapter", "data", "federation", "train", "security", "run", "x"]),
    st.dictionaries(st.sampled_from(["rounds", "method", "rank", "fraction", "strategy", "clients", "labels", "path",
                                     "max_update_norm", "seed", "target_modules", "strategy_options", "y"]),
                    json_values, max_size=4), max_size=4))
def test_config_files(tmp_path_factory, text, values):
    path = tmp_path_factory.mktemp("config") / "run.toml"
    path.write_text(text)
    _accepted_or_named(load_config, path)
    _accepted_or_named(FederationConfig.from_dict, values)


@FUZZ
@given(text=st.text(max_size=300) | json_values.map(json.dumps))
def test_keyring_files(text):
    _accepted_or_named(Keyring.from_json, text)


@pytest.mark.parametrize("expires", ["2030-01-01", "2030-01-01T00:00:00"])
def test_an_expiry_without_a_time_zone_is_malformed_not_a_crash(expires):
    """Found by the fuzzer: a naive timestamp could not be compared with the aware clock."""
    payload = json.dumps({"type": RELEASE_TYPE, "expires": expires, "files": {}}).encode()
    record = json.loads(sign_manifest({}, KEY)[1])
    record["signature"] = KEY.sign(payload).hex()
    with pytest.raises(FedPeftError, match="malformed"):
        check_release(payload, json.dumps(record).encode(), KEY.public_key())
