"""Federation configurations in TOML; `default.toml` is what `fedpeft simulate` runs."""
