"""The generated parts of the documentation site: an MkDocs hook (mkdocs.yml `hooks:`).

- `reference/cli.md`: every command, argument and example, read from `fedpeft.cli.build_parser()`.
- `reference/config.md`: every config key, read from the config dataclasses of
  `fedpeft.core.config` (defaults, types), its `RANGES`, `DESCRIPTIONS` and the bundled
  `simulations/default.toml`.
- The benchmark plots committed under `bench/results/` are served as `bench-results/*.png`.

A page asks for a generated part with a marker line (`<!-- fedpeft:cli -->`,
`<!-- fedpeft:config -->`). An option without help text or a key without a description
fails the build (and tests/test_docs.py), so the reference cannot fall behind the code.
"""

from __future__ import annotations

import argparse
import html
import tomllib
from dataclasses import fields
from importlib import resources
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
BENCH_RESULTS = ROOT / "bench" / "results"
WIDTH = 100  # usage lines wrap here, whatever the terminal


class Undocumented(ValueError):
    """An option without help text or a config key without a description."""


# ---------------------------------------------------------------- command line

def _subcommands(parser: argparse.ArgumentParser) -> list[tuple[str, str | None, argparse.ArgumentParser]]:
    """(name, its help line, its parser) for each subcommand of `parser`, in order."""
    found = []
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            helps = {choice.dest: choice.help for choice in action._choices_actions}
            found += [(name, helps.get(name), sub) for name, sub in action.choices.items()]
    return found


def commands(parser: argparse.ArgumentParser, path: tuple[str, ...] = ()) -> list[tuple[tuple[str, ...], argparse.ArgumentParser]]:
    """Every command path below `parser` (depth first), e.g. ("registry", "publish")."""
    found = []
    for name, _, sub in _subcommands(parser):
        found.append(((*path, name), sub))
        found += commands(sub, (*path, name))
    return found


def _documented_actions(parser: argparse.ArgumentParser) -> list[argparse.Action]:
    return [a for a in parser._actions
            if not isinstance(a, (argparse._SubParsersAction, argparse._HelpAction, argparse._VersionAction))]


def missing_help(parser: argparse.ArgumentParser) -> list[str]:
    """Every option, positional argument and subcommand that has no help text. An option
    hidden on purpose (`help=argparse.SUPPRESS`) is not missing."""
    missing = []
    for path, sub in [((), parser), *commands(parser)]:
        where = " ".join(("fedpeft", *path))
        for name, line, _ in _subcommands(sub):
            if not (line or "").strip():
                missing.append(f"{where} {name} (subcommand)")
        for action in _documented_actions(sub):
            if action.help == argparse.SUPPRESS:
                continue
            if not (action.help or "").strip():
                missing.append(f"{where} {'/'.join(action.option_strings) or action.dest}")
    return missing


def _cell(text: str) -> str:
    return html.escape(" ".join(str(text).split()), quote=False).replace("|", "\\|")


def _code(text: str) -> str:
    return f"`{text}`" if "`" not in text else f"``{text}``"


def _value(action: argparse.Action) -> str:
    if action.choices is not None:
        return " \\| ".join(_code(str(c)) for c in action.choices)
    if action.nargs == 0:
        return "flag"
    from fedpeft.core.config import Range

    if isinstance(action.type, Range):  # the same interval the option checks
        return _cell(str(action.type))
    return _code(action.metavar or action.dest.upper()) if action.option_strings else ""


def _default(action: argparse.Action) -> str:
    default = action.default
    if default is None or default == argparse.SUPPRESS or action.nargs == 0 and default is False:
        return ""
    if isinstance(default, list):
        return _code(" ".join(map(str, default))) if default else ""
    return _code(str(default))


def _options_table(parser: argparse.ArgumentParser) -> list[str]:
    formatter = parser.formatter_class(prog=parser.prog, width=WIDTH)
    rows = ["| argument | value | default | what it does |", "|---|---|---|---|"]
    for action in _documented_actions(parser):
        if action.help == argparse.SUPPRESS:
            continue
        invocation = formatter._format_action_invocation(action)
        rows.append(f"| {_code(invocation)} | {_value(action)} | {_default(action)} | "
                    f"{_cell(formatter._expand_help(action))} |")
    return rows if len(rows) > 2 else []


def _usage(parser: argparse.ArgumentParser) -> str:
    formatter = parser.formatter_class(prog=parser.prog, width=WIDTH)
    formatter.add_usage(parser.usage, parser._actions, parser._mutually_exclusive_groups)
    return formatter.format_help().strip()


def cli_reference(parser: argparse.ArgumentParser) -> str:
    """Markdown for every command of `parser`; Undocumented when any option lacks help."""
    missing = missing_help(parser)
    if missing:
        raise Undocumented("command-line arguments without help text: " + ", ".join(missing))
    lines = [f"{_cell(parser.description or '')}", "", "| command | what it does |", "|---|---|"]
    for path, sub in commands(parser):
        anchor = "-".join(path)
        lines.append(f"| [{_code(' '.join(('fedpeft', *path)))}](#{anchor}) | {_cell(sub.description or '')} |")
    for path, sub in commands(parser):
        depth = "#" * min(len(path) + 1, 4)
        lines += ["", f"{depth} {' '.join(('fedpeft', *path))} {{#{'-'.join(path)}}}", ""]
        if sub.description:
            lines += [_cell(sub.description), ""]
        lines += ["```text", _usage(sub), "```", ""]
        children = _subcommands(sub)
        if children:
            lines += ["| subcommand | what it does |", "|---|---|"]
            lines += [f"| [{_code(name)}](#{'-'.join((*path, name))}) | {_cell(line or '')} |"
                      for name, line, _ in children]
            lines.append("")
        table = _options_table(sub)
        if table:
            lines += table + [""]
        if sub.epilog:
            lines += ["```bash", *[line.strip() for line in sub.epilog.splitlines()
                                   if line.strip() and not line.strip().endswith(":")], "```", ""]
    return "\n".join(lines)


# ---------------------------------------------------------------- configuration

def _choices() -> dict[str, tuple[str, ...]]:
    """The names a key may take: the same tuples FederationConfig.check tests against."""
    from fedpeft.core import choices
    from fedpeft.core.base.tasks import TASKS  # the task list itself (torch: docs builds run in the full install)

    return {
        "model.task": tuple(TASKS), "model.quantization": choices.QUANTIZATION_MODES,
        "adapter.method": choices.METHODS, "data.partitioner": choices.PARTITIONERS,
        "federation.strategy": tuple(choices.STRATEGIES), "federation.delta_encoding": tuple(choices.DELTA_ENCODINGS),
        "train.optimizer": choices.OPTIMIZERS, "train.device": tuple(choices.DEVICES),
        "privacy.mode": choices.PRIVACY_MODES, "simulation.attacks": choices.ATTACKS,
    }


def config_keys() -> list[tuple[str, str, Any, str]]:
    """(section, key, default, annotation) of every config key, in the dataclasses' order."""
    from fedpeft.core.config import SEEDED_SECTIONS, FederationConfig

    keys = []
    for section in fields(FederationConfig):
        section_cls = section.default_factory
        defaults = section_cls()
        for item in fields(section_cls):
            if section.name in SEEDED_SECTIONS and item.name == "seed":
                continue  # not a key: [run] seed sets it
            keys.append((section.name, item.name, getattr(defaults, item.name), str(item.type)))
    return keys


def missing_descriptions() -> list[str]:
    """Config keys without a description, and descriptions of keys that do not exist."""
    from fedpeft.core.config import DESCRIPTIONS

    known = {f"{section}.{key}" for section, key, _, _ in config_keys()}
    missing = [key for key in sorted(known) if not DESCRIPTIONS.get(key, "").strip()]
    stale = [f"{key} (no such key)" for key in sorted(set(DESCRIPTIONS) - known)]
    return missing + stale


def _toml_value(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, bool):
        return _code("true" if value else "false")
    if isinstance(value, str):
        return _code(f'"{value}"')
    if isinstance(value, dict):
        return _code("{ " + ", ".join(f"{k} = {v!r}" for k, v in value.items()) + " }" if value else "{}")
    if isinstance(value, list):
        return _code("[" + ", ".join(f'"{v}"' for v in value) + "]")
    return _code(repr(value))


def config_reference() -> str:
    """Markdown tables of every config key; Undocumented when a key lacks a description."""
    from fedpeft.core.config import DESCRIPTIONS, RANGES

    missing = missing_descriptions()
    if missing:
        raise Undocumented("config keys without a description in core/config.py DESCRIPTIONS: " + ", ".join(missing))
    shipped = tomllib.loads(resources.files("fedpeft.simulations").joinpath("default.toml").read_text())
    choices = _choices()
    lines: list[str] = []
    current = None
    for section, key, default, annotation in config_keys():
        if section != current:
            current = section
            lines += ["", f"### [{section}]", "",
                      "| key | type | default | in default.toml | allowed | what it sets |", "|---|---|---|---|---|---|"]
        dotted = f"{section}.{key}"
        in_default = shipped.get(section, {}).get(key)
        if dotted in RANGES:
            allowed = _cell(str(RANGES[dotted]))
        elif dotted in choices:
            allowed = " \\| ".join(_code(c) for c in choices[dotted])
        else:
            allowed = ""
        lines.append(f"| `{key}` | {_cell(annotation)} | {_toml_value(default) or '(absent)'} | "
                     f"{_toml_value(in_default)} | {allowed} | {_cell(DESCRIPTIONS[dotted])} |")
    return "\n".join(lines).strip() + "\n"


# ---------------------------------------------------------------- MkDocs hook

MARKERS = {"<!-- fedpeft:cli -->": "cli", "<!-- fedpeft:config -->": "config"}


def on_files(files, config):
    """Serve bench/results/*.png as bench-results/*.png (the plots are committed once, there)."""
    from mkdocs.structure.files import File

    for plot in sorted(BENCH_RESULTS.glob("*.png")):
        files.append(File.generated(config, f"bench-results/{plot.name}", abs_src_path=str(plot)))
    return files


def on_page_markdown(markdown, page, config, files):
    for marker, part in MARKERS.items():
        if marker in markdown:
            if part == "cli":
                from fedpeft.cli import build_parser

                text = cli_reference(build_parser())
            else:
                text = config_reference()
            markdown = markdown.replace(marker, text)
    return markdown
