import pytest

from fedpeft.core.config import FederationConfig, load_config
from fedpeft.core.errors import ConfigError


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
