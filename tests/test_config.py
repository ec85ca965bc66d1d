import math
import re
import subprocess
import sys
from dataclasses import fields

import pytest
from flwr.app import ConfigRecord

from fedpeft.core.config import RANGES, FederationConfig, load_config
from fedpeft.core.errors import ConfigError, FedPeftError
from fedpeft.core.training.job import Job


def test_bundled_default_is_a_small_federation():
    config = load_config(None)
    assert config.data.clients >= 8 and config.federation.rounds >= 5
    assert config.model.folder().joinpath("config.json").is_file()


def test_overrides_replace_only_what_is_given():
    config = load_config(None).with_overrides(**{"federation.rounds": 2, "data.source": None})
    assert config.federation.rounds == 2
    assert config.data.source == "synthetic"


def test_unknown_keys_and_sections_are_named(tmp_path):
    path = tmp_path / "c.toml"
    path.write_text("[federation]\nrouns = 3\n")
    with pytest.raises(ConfigError, match="rouns"):
        load_config(path)
    with pytest.raises(ConfigError, match=r"\[serve\]"):
        FederationConfig.from_dict({"serve": {}})
    with pytest.raises(ConfigError, match=r"seed is set in \[run\]"):
        FederationConfig.from_dict({"adapter": {"seed": 3}})


def test_adapter_and_train_sections_are_the_library_specs_seeded_by_run():
    config = FederationConfig.from_dict({"adapter": {"method": "lora", "rank": 4}, "train": {"epochs": 2},
                                         "run": {"seed": 7}})
    spec, settings = config.template_spec(), config.train_settings()
    assert (spec.method, spec.rank, spec.seed) == ("lora", 4, 7)
    assert (settings.epochs, settings.seed) == (2, 7)


def test_out_of_range_values_are_named():
    with pytest.raises(ConfigError, match="federation.fraction"):
        load_config(None).with_overrides(**{"federation.fraction": 1.5})
    with pytest.raises(ConfigError, match="federation.rounds"):
        load_config(None).with_overrides(**{"federation.rounds": 0})
    with pytest.raises(ConfigError, match="simulation.misbehaving"):
        load_config(None).with_overrides(**{"simulation.misbehaving": 1.0})
    with pytest.raises(ConfigError, match="security.max_update_norm"):
        load_config(None).with_overrides(**{"security.max_update_norm": -1.0})


def test_default_bounds_update_norms_and_needs_two_accepted_deltas():
    security = load_config(None).security
    assert security.max_update_norm > 0 and security.min_accepted == 2


def test_invalid_toml_and_missing_model_are_named(tmp_path):
    bad = tmp_path / "bad.toml"
    bad.write_text("[model\n")
    with pytest.raises(ConfigError, match="invalid TOML"):
        load_config(bad)
    config = load_config(None).with_overrides(**{"model.path": str(tmp_path)})
    with pytest.raises(ConfigError, match="no config.json"):
        config.model.folder()


@pytest.mark.parametrize("key,value,named", [
    ("federation.strategy", "fedsgd", "federation.strategy 'fedsgd'"),
    ("adapter.method", "dora", "adapter.method 'dora'"),
    ("model.quantization", "int3", "model.quantization 'int3'"),
    ("data.partitioner", "random", "data.partitioner 'random'"),
    ("security.max_update_norm", float("nan"), "security.max_update_norm must be a finite number"),
    ("federation.round_timeout", float("inf"), "federation.round_timeout must be a finite number"),
])
def test_unknown_choices_and_non_finite_numbers_are_named(key, value, named):
    with pytest.raises(ConfigError, match=re.escape(named)):
        load_config(None).with_overrides(**{key: value})


def test_toml_values_of_the_wrong_type_are_named(tmp_path):
    path = tmp_path / "c.toml"
    for body, named in (('[federation]\nrounds = "five"\n', "[federation] rounds must be int, got str"),
                        ("[adapter]\ntarget_modules = [1]\n", "target_modules must be a list of strings"),
                        ("[simulation]\nmisbehaving = true\n", "[simulation] misbehaving must be float, got bool")):
        path.write_text(body)
        with pytest.raises(ConfigError, match=re.escape(named)):
            load_config(path)


@pytest.mark.parametrize("args,named", [
    (["--strategy", "fedsgd"], "invalid choice: 'fedsgd'"),
    (["--config", "missing.toml"], "cannot read config"),
    (["--data", "missing.csv"], "missing.csv"),
    (["--max-update-norm", "nan"], "must be a finite number"),
    (["--rounds", "0"], "argument --rounds: must be an integer in 1..100000, got '0'"),
    (["--learning-rate=-inf"], "argument --learning-rate: must be a finite number in (0, 10]"),
])
def test_bad_simulate_input_fails_in_seconds_with_one_line_and_writes_nothing(tmp_path, args, named):
    """Before Ray, torch or any model loads: no traceback, no output folder, no key file."""
    proc = subprocess.run([sys.executable, "-m", "fedpeft.cli", "simulate", *args, "--out", "out"], cwd=tmp_path,
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2
    lines = [line for line in proc.stderr.splitlines() if "error:" in line]
    assert len(lines) == 1 and named in lines[0], proc.stderr
    assert "Traceback" not in proc.stderr
    assert list(tmp_path.iterdir()) == []


def test_every_numeric_config_value_has_a_range_and_the_shipped_values_are_in_it():
    """A numeric field added to a config dataclass without a range in RANGES fails here."""
    numeric = {f"{section.name}.{item.name}" for section in fields(FederationConfig)
               for item in fields(section.default_factory) if item.type in ("int", "float")}
    assert numeric == set(RANGES), f"without a range: {sorted(numeric - set(RANGES))}"
    shipped, defaults = load_config(None), FederationConfig()
    for key, allowed in RANGES.items():
        section, name = key.split(".")
        assert allowed.allows(getattr(getattr(shipped, section), name)), key
        assert allowed.allows(getattr(getattr(defaults, section), name)), key


@pytest.mark.parametrize("key", sorted(RANGES))
def test_hostile_config_values_are_refused_by_name(key):
    allowed = RANGES[key]
    hostile = [-1, 10**22, 10**400, float("nan"), float("inf"), -float("inf"), allowed.high * 2 + 1, True]
    hostile += [allowed.low] * allowed.low_open + [allowed.high] * allowed.high_open + [allowed.low - 1]
    if allowed.kind is int:
        hostile.append(0.5)
    for value in hostile:
        with pytest.raises(ConfigError, match=re.escape(key) + " must be an? "):
            load_config(None).with_overrides(**{key: value})
    if allowed.kind is float:
        assert not allowed.allows(math.nextafter(allowed.high, math.inf))


@pytest.mark.parametrize("key,value", [("personal-epochs", 10**22), ("local-only-epochs", -1), ("delta-block", 0),
                                       ("dp-clip", float("nan")), ("dp-noise-std", float("inf")),
                                       ("train", '{"epochs": 10000000000000000000000}'),
                                       ("train", '{"learning_rate": NaN}')])
def test_a_node_holds_the_servers_job_to_the_same_ranges(key, value):
    """A node does not trust the server to have checked the numbers it sends."""
    honest = Job("b" * 64, "t" * 64).to_config()
    assert Job.from_config(honest) == Job("b" * 64, "t" * 64)
    hostile = ConfigRecord({**honest, key: value})
    with pytest.raises(FedPeftError, match="train settings|" + re.escape(key)):
        Job.from_config(hostile)
