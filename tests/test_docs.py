"""The documentation site (mkdocs.yml, docs/): it builds with `mkdocs build --strict` (no
broken link or anchor, no page outside the navigation), its command-line and config
references are generated from the code and cover all of it, and every option and config
key is documented."""

from __future__ import annotations

import argparse
import importlib.util
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from fedpeft.cli import build_parser

ROOT = Path(__file__).resolve().parent.parent


def _generator():
    spec = importlib.util.spec_from_file_location("gen_reference", ROOT / "docs" / "gen_reference.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


gen = _generator()


def test_every_command_line_option_has_help_text():
    """Each option, positional argument and subcommand of `fedpeft` says what it does
    (`help=argparse.SUPPRESS` hides one on purpose and is allowed)."""
    assert gen.missing_help(build_parser()) == []


def test_every_config_key_has_a_description():
    """core/config.py DESCRIPTIONS covers every key of every section, and names no key
    that does not exist."""
    assert gen.missing_descriptions() == []


def test_the_checks_fail_for_an_undocumented_option_or_key(monkeypatch):
    parser = argparse.ArgumentParser(prog="fedpeft")
    commands = parser.add_subparsers(dest="command")
    run = commands.add_parser("run", help="run something")
    run.add_argument("--documented", help="says what it does")
    run.add_argument("--bare")
    run.add_argument("--hidden", help=argparse.SUPPRESS)
    commands.add_parser("silent")
    assert gen.missing_help(parser) == ["fedpeft silent (subcommand)", "fedpeft run --bare"]
    with pytest.raises(gen.Undocumented, match="--bare"):
        gen.cli_reference(parser)

    from fedpeft.core import config

    described = dict(config.DESCRIPTIONS)
    del described["federation.rounds"]
    described["federation.no_such_key"] = "stale"
    monkeypatch.setattr(config, "DESCRIPTIONS", described)
    assert gen.missing_descriptions() == ["federation.rounds", "federation.no_such_key (no such key)"]
    with pytest.raises(gen.Undocumented, match="federation.rounds"):
        gen.config_reference()


def test_the_site_builds_strictly_with_the_generated_references(tmp_path):
    """`mkdocs build --strict` passes: every link and anchor resolves and every page is in
    `nav`; the built references name every command and every config key."""
    settings = yaml.safe_load((ROOT / "mkdocs.yml").read_text())
    assert settings["validation"] == {"omitted_files": "warn", "absolute_links": "warn",
                                      "unrecognized_links": "warn", "anchors": "warn"}  # strict turns them into errors
    site = tmp_path / "site"
    done = subprocess.run([sys.executable, "-m", "mkdocs", "build", "--strict", "--config-file",
                           str(ROOT / "mkdocs.yml"), "--site-dir", str(site)],
                          cwd=ROOT, capture_output=True, text=True, timeout=300,
                          env={**os.environ, "NO_MKDOCS_2_WARNING": "1"})
    assert done.returncode == 0, done.stdout + done.stderr
    assert "WARNING" not in done.stderr, done.stderr

    cli = (site / "reference" / "cli" / "index.html").read_text()
    for path, parser in gen.commands(build_parser()):
        assert f'id="{"-".join(path)}"' in cli, path
        for action in parser._actions:
            if action.option_strings and action.help != argparse.SUPPRESS:
                assert action.option_strings[-1] in cli, (path, action.option_strings)
    config = (site / "reference" / "config" / "index.html").read_text()
    for section, key, _, _ in gen.config_keys():
        assert f"[{section}]" in config and f"<code>{key}</code>" in config, (section, key)
    assert (site / "bench-results" / "privacy_accuracy.png").is_file()


def test_the_readme_links_resolve():
    """The README is the front door: every relative link in it names a file that exists."""
    readme = (ROOT / "README.md").read_text()
    links = re.findall(r"\]\(([^)#\s]+)(?:#[^)]*)?\)", readme)
    relative = [link for link in links if "://" not in link]
    assert relative, "the README links into docs/"
    assert [link for link in relative if not (ROOT / link).exists()] == []
