"""The command line a new user meets: a version, help on every option, an example per command."""

from __future__ import annotations

import argparse
import subprocess
import sys

from fedpeft.cli import build_parser


def _commands(parser: argparse.ArgumentParser, path: tuple[str, ...] = ("fedpeft",)):
    """(path, parser) of every command that runs something (the leaves of the tree)."""
    groups = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    if not groups:
        yield path, parser
    for group in groups:
        for name, sub in group.choices.items():
            yield from _commands(sub, (*path, name))


def test_every_option_of_every_command_has_help_and_every_command_an_example():
    leaves = list(_commands(build_parser()))
    assert len(leaves) >= 18
    for path, parser in leaves:
        undocumented = [a.option_strings or a.dest for a in parser._actions if not a.help]
        assert not undocumented, f"{' '.join(path)}: {undocumented}"
        assert parser.epilog and f"{' '.join(path)}" in parser.epilog, f"{' '.join(path)} has no example"


def test_version_and_help_answer_fast_without_loading_torch():
    code = ("import sys, contextlib, io\nfrom fedpeft.cli import main\n"
            "with contextlib.redirect_stdout(io.StringIO()):\n"
            "    try: main(['simulate', '--help'])\n    except SystemExit: pass\n"
            "print('torch' in sys.modules, 'peft' in sys.modules)")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert result.stdout.strip() == "False False", result.stderr
    version = subprocess.run([sys.executable, "-m", "fedpeft.cli", "--version"], capture_output=True, text=True,
                             timeout=60)
    assert version.returncode == 0 and version.stdout.startswith("fedpeft ")
