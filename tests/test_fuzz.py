"""Property-based fuzzing of every parser of untrusted bytes and every checked value: any
input is accepted or refused with fedpeft's named error (a FedPeftError; for a command-line
value, argparse's error), never another exception or a hang.

Parsers: release and promotion manifests, signature files, checkpoints, user data rows,
config files, keyrings, the guarded JSON reader, a device's state.json and personal.json,
evaluate and personalization reports,
and every numeric or address value of the command line. The example count of every
property-based test comes from FEDPEFT_FUZZ_EXAMPLES (tests/conftest.py's profile; 200 by
default): `FEDPEFT_FUZZ_EXAMPLES=5000 .venv/bin/pytest tests/test_fuzz.py
tests/test_hostile_replies.py tests/test_delta_codec.py` is the long run (README)."""

from __future__ import annotations

import argparse
import ast
import json
from datetime import UTC, datetime
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st
from flwr.app import Message, MetricRecord, RecordDict
from flwr.supercore.task_identity import TaskIdentity

from fedpeft.cli import build_parser
from fedpeft.cli.common import address, channel, host
from fedpeft.core.config import FederationConfig, Range, load_config
from fedpeft.core.errors import FedPeftError, IntegrityError
from fedpeft.core.training.data import read_rows
from fedpeft.core.trust.json_reader import MAX_DEPTH, JSONRefused, depth_of, parse_json
from fedpeft.core.trust.keys import Keyring
from fedpeft.core.trust.release import PROMOTION_TYPE, RELEASE_TYPE, check_promotion, check_release
from fedpeft.core.trust.signed_files import sign_manifest
from fedpeft.device.personal_record import RECORD, read_record
from fedpeft.device.slot import Device
from fedpeft.device.slot_state import STATE_FILE
from fedpeft.server.checkpoint import load_checkpoint
from fedpeft.server.replies import BAD_REPLY_REASONS, evaluate_reply, personalize_reply
from fedpeft.server.verify import checked_reports, weight_cap

FUZZ = settings(suppress_health_check=list(HealthCheck))  # the example count: conftest.py's profile
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


nested = st.integers(1, 3 * MAX_DEPTH).flatmap(lambda depth: st.tuples(
    st.just(depth), st.lists(st.sampled_from(['[', '{"a":']), min_size=depth, max_size=depth)))


@FUZZ
@given(data=st.binary(max_size=400) | st.text(max_size=400) | json_values.map(json.dumps)
       | st.integers(1, 200_000).map(lambda n: "[" * n + "]" * n), nest=nested, limit=st.integers(0, 500))
def test_json_reader(data, nest, limit):
    """Only JSONRefused, whatever the bytes, size or depth; what it returns is within its bounds."""
    depth, opens = nest
    deep = "".join(opens) + "1" + "".join("]" if o == "[" else "}" for o in reversed(opens))
    for text, bound in ((data, 16 * 1024 * 1024), (deep, 16 * 1024 * 1024), (data, limit)):
        try:
            value = parse_json(text, "fuzzed", limit=bound)
        except JSONRefused as exc:
            assert exc.reason in ("too-large", "too-deep", "malformed")
        else:
            assert depth_of(value) <= MAX_DEPTH and len(text) <= bound
    if depth <= MAX_DEPTH:
        assert parse_json(deep, "fuzzed") is not None


SHA = st.sampled_from(["a" * 64, "b" * 64, "0" * 63, "A" * 64]) | st.text(max_size=3)
entry = st.none() | json_values | st.fixed_dictionaries({
    "version": st.integers(-2, 3) | json_values, "release_id": SHA,
    "folder": st.sampled_from(["v1-aaaaaaaaaaaa", "v2-bbbbbbbbbbbb", "../x", "/etc", "v1-aaaaaaaaaaaa/../..", "", "."])
    | st.text(max_size=20)})
state_like = st.fixed_dictionaries({}, optional={
    "base_id": st.sampled_from(["c" * 64, "d" * 64]) | json_values, "floor": st.integers(-1, 4) | json_values,
    "seen": st.lists(SHA, max_size=3) | json_values, "current": entry, "previous": entry, "extra": json_values})
files = st.binary(max_size=300) | json_values.map(lambda v: json.dumps(v).encode()) \
    | state_like.map(lambda v: json.dumps(v).encode()) | st.just(b"[" * 50_000 + b"]" * 50_000)


@FUZZ
@given(state=files, record=files | st.fixed_dictionaries({}, optional={
    "release_id": SHA, "version": json_values | st.integers(-1, 3), "base_id": SHA, "examples": json_values,
    "epochs": json_values, "loss": st.floats() | json_values, "trained_at": json_values, "adapter_sha256": SHA,
}).map(lambda v: json.dumps(v).encode()))
def test_device_state_files(tmp_path_factory, state, record):
    """A device folder's state.json and personal/personal.json, written by anyone: only
    IntegrityError (a FedPeftError naming why) or a usable state."""
    folder = tmp_path_factory.mktemp("slot")
    (folder / STATE_FILE).write_bytes(state)
    (folder / "personal").mkdir()
    (folder / "personal" / RECORD).write_bytes(record)
    try:
        device = Device(folder, KEY.public_key(), "c" * 64)
    except IntegrityError:
        pass
    else:
        assert device.version >= 0
        try:
            device.current_release()
        except IntegrityError:
            pass
    try:
        read_record(folder / "personal")
    except IntegrityError:
        pass


def _value_checks() -> dict[str, object]:
    """Every checked command-line value (option -> its argparse type), found in the parser."""
    checks, stack = {}, [build_parser()]
    while stack:
        parser = stack.pop()
        for action in parser._actions:
            if isinstance(action, argparse._SubParsersAction):
                stack.extend(action.choices.values())
            elif isinstance(action.type, Range) or action.type in (host, address, channel):
                checks[f"{parser.prog} {(action.option_strings or [action.dest])[0]}"] = action.type
    return checks


VALUE_CHECKS = _value_checks()
numbers = st.one_of(st.integers(-2**80, 2**80).map(str), st.integers(10**300, 10**400).map(str), st.floats().map(repr), st.floats().map(str),
                    st.sampled_from(["nan", "-nan", "inf", "-Infinity", "1e400", "0x1f", "1_000", " 7 ", "٣", "1e-400"]))


@FUZZ
@given(option=st.sampled_from(sorted(VALUE_CHECKS)), text=st.text(max_size=60) | numbers)
def test_command_line_values(option, text):
    """Arbitrary text to any checked option: argparse's error, or a value in the range."""
    check = VALUE_CHECKS[option]
    try:
        value = check(text)
    except argparse.ArgumentTypeError as exc:
        assert "\n" not in str(exc) and "must be" in str(exc)
        return
    if isinstance(check, Range):
        assert check.allows(value), f"{option} let {text!r} through as {value!r}"


def test_every_fuzz_test_takes_its_count_from_the_environment():
    """A property-based test with its own max_examples would ignore FEDPEFT_FUZZ_EXAMPLES."""
    fixed = []
    for path in sorted(Path(__file__).parent.glob("test_*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Call) and getattr(node.func, "id", None) == "settings" \
                    and any(k.arg == "max_examples" for k in node.keywords):
                fixed.append(f"{path.name}:{node.lineno}")
    assert not fixed, f"max_examples set in the test instead of by FEDPEFT_FUZZ_EXAMPLES: {fixed}"
    assert settings.default.max_examples > 0 and len(VALUE_CHECKS) >= 40


metric_values = st.integers(-2**63, 2**63 - 1) | st.floats() | st.booleans() | st.lists(st.floats(), max_size=3)
ARMS = ("initial", "global", "personalized", "local-only")
count = st.one_of(*[st.integers(1, 1_100_000)] * 4, st.integers(-5, 10), metric_values)  # mostly plausible
share = st.one_of(*[st.floats(0, 1)] * 6, metric_values)
well_formed = {  # reports of the right shape (with hostile counts and values), as often as arbitrary ones
    "evaluate": st.fixed_dictionaries({"num-examples": count, "eval-loss": st.one_of(*[st.floats(0, 10)] * 6, metric_values),
                                       "eval-acc": share}),
    "query.personalize": st.fixed_dictionaries({"num-examples": count, **{f"{arm}-acc": share for arm in ARMS}}),
}
arbitrary = st.dictionaries(st.sampled_from(["num-examples", "eval-loss", "eval-acc", *(f"{a}-acc" for a in ARMS),
                                             "client", "x" * 300]) | st.text(max_size=12), metric_values, max_size=6)
round_of_reports = st.sampled_from(sorted(well_formed)).flatmap(lambda kind: st.tuples(st.just(kind), st.lists(
    st.tuples(st.integers(1, 5), well_formed[kind] | arbitrary, st.sampled_from([1, 1, 1, 0, 2])), max_size=6)))


@FUZZ
@given(round_=round_of_reports, ratio=st.sampled_from([0.0, 2.0, 5.0]))
def test_evaluate_and_personalization_reports(round_, ratio):
    """Reports from any node with any metrics: each is refused with a named BadReply or
    kept, named by its enrolled key (or its node id), weighed at most the cap."""
    TaskIdentity.run_id, TaskIdentity.node_id, TaskIdentity.task_id = 1, 0, 1  # as inside a ServerApp
    kind, replies = round_
    parse = (lambda c: evaluate_reply(c, 1_000_000)) if kind == "evaluate" \
        else (lambda c: personalize_reply(c, ARMS, 1_000_000))
    messages = []
    for node, metrics, records in replies:
        content = RecordDict({f"m{i}": MetricRecord(metrics) for i in range(records)}) if _metric_record_ok(metrics) \
            else RecordDict()
        messages.append(Message(content, reply_to=Message(RecordDict(), dst_node_id=node, message_type=kind)))
    signers = {1: "client-1", 2: "client-2", 3: "client-1"}  # nodes 1 and 3 hold one key
    reports, refused = checked_reports(messages, parse, signers, ratio)
    assert len(reports) + len(refused) == len(messages)
    assert all(bad.reason in BAD_REPLY_REASONS for _, bad in refused)
    cap = weight_cap([r.claimed for r in reports], ratio)
    for report in reports:
        node = report.reply.metadata.src_node_id
        assert report.client == signers.get(node, f"node {node}")
        assert 1 <= report.examples <= min(report.claimed, cap)
    enrolled = [r.client for r in reports if r.client.startswith("client-")]
    assert len(set(enrolled)) == len(enrolled)  # one report per enrolled key
    event(f"{len(reports)} kept")


def _metric_record_ok(metrics: dict) -> bool:
    """Flower's MetricRecord takes only numbers and lists of one numeric type."""
    try:
        MetricRecord(metrics)
    except (TypeError, ValueError):
        return False
    return True
