"""Every numeric command-line value has a range (core/config.py's `Range`, an argparse
`type=`), and a hostile value (negative, zero, NaN, infinite, huge, not a number) is
refused by every command in one line with exit code 2: no traceback, nothing written,
no heavy import, in well under 5 s.

The options are found by walking the parser, so a new numeric option without a range
fails here; each command's values run in one subprocess (one interpreter start per
command, not per value), and the findings of issue 23 run as real `fedpeft` processes."""

from __future__ import annotations

import argparse
import json
import math
import subprocess
import sys
import time
from pathlib import Path

import pytest
from test_cli import _commands

from fedpeft.cli import build_parser
from fedpeft.cli.common import address, channel, host
from fedpeft.core.config import Range

CHECKED_TEXT = (host, address, channel)  # validated string options, driven like the numbers
HUGE = "1" + "0" * 22
PER_VALUE_S = 5.0


LEAVES = {path[1:]: parser for path, parser in _commands(build_parser())}  # without the leading "fedpeft"


def _refuses(check, text: str) -> bool:
    try:
        check(text)
    except argparse.ArgumentTypeError:
        return True
    return False


def _hostile(check) -> list[str]:
    """The values `check` must refuse: every value of the fixed list (not filtered: a range
    that lets one through fails the test), just past each end of a Range, and the values
    that are hostile only for some ranges (0, 1e3) where this one refuses them."""
    if check in CHECKED_TEXT:
        return ["256.1.1.1", "", "-x", "a b", "x" * 300, "127.0.0.1:70000", "host:0", "host:-1", "host:nan",
                "::1:5", "host"] if check is address \
            else ["256.1.1.1", "", "-x", "a b", "x" * 300, *(["Stable", "a/b"] if check is channel else [])]
    always = ["-1", "nan", "-nan", "inf", "-inf", "1e400", HUGE, "1" + "0" * 400, "9" * 5000, "", "abc", "0x10"]
    if check.kind is int:
        edges = [str(int(check.low) - 1), str(int(check.high) + 1)]
    else:
        edges = [repr(math.nextafter(check.low, -math.inf)), repr(math.nextafter(check.high, math.inf))]
        edges += [repr(float(check.low))] * check.low_open + [repr(float(check.high))] * check.high_open
    return sorted({*always, *edges, *(c for c in ("0", "1e3") if _refuses(check, c))})


def _checked_options(parser: argparse.ArgumentParser) -> list[argparse.Action]:
    return [a for a in parser._actions if isinstance(a.type, Range) or a.type in CHECKED_TEXT]


def _valid_command_line(path: tuple[str, ...], parser: argparse.ArgumentParser) -> list[str]:
    """The command with every positional and required option filled in with a plausible value."""
    argv = list(path)
    for action in parser._actions:
        if action.option_strings and not action.required:
            continue
        if action.choices:
            value = next(iter(action.choices))
        elif isinstance(action.type, Range):
            value = str(action.type.kind(action.type.low) + (action.type.kind is int))
        elif action.type is address:
            value = "127.0.0.1:9"
        else:
            value = "x"
        argv += [*action.option_strings[:1], value]
    return argv


def test_every_numeric_option_has_a_range_that_admits_its_default():
    ranged = 0
    for path, parser in LEAVES.items():
        for action in parser._actions:
            where = f"fedpeft {' '.join(path)} {'/'.join(action.option_strings) or action.dest}"
            assert action.type not in (int, float), f"{where}: a bare {action.type.__name__} has no range; use a Range"
            numeric_default = isinstance(action.default, (int, float)) and not isinstance(action.default, bool)
            assert not (numeric_default and action.type is None), f"{where}: a number without a type (and a range)"
            if isinstance(action.type, Range):
                ranged += 1
                if action.default is not None:
                    assert action.type.allows(action.default), f"{where}: the default {action.default} is out of range"
                for value in _hostile(action.type):
                    assert _refuses(action.type, value), f"{where}: {action.type} lets {value[:40]!r} through"
    assert ranged >= 40


_DRIVER = r"""
import contextlib, io, json, os, sys, time, traceback
from fedpeft.cli import main
results = []
for argv in json.loads(sys.argv[1]):
    err, out = io.StringIO(), io.StringIO()
    start = time.perf_counter()
    try:
        with contextlib.redirect_stderr(err), contextlib.redirect_stdout(out):
            code = main(argv)
    except SystemExit as exc:
        code = exc.code
    except BaseException:
        code, err = "raised", io.StringIO(traceback.format_exc())
    results.append({"argv": argv, "code": code, "stderr": err.getvalue(), "stdout": out.getvalue(),
                    "seconds": time.perf_counter() - start, "written": sorted(os.listdir("."))})
heavy = sorted(m for m in ("torch", "transformers", "peft", "flwr", "onnxruntime", "grpc", "ray") if m in sys.modules)
print(json.dumps({"results": results, "heavy": heavy}))
"""


@pytest.mark.parametrize("path", [p for p, parser in LEAVES.items() if _checked_options(parser)], ids=" ".join)
def test_hostile_values_are_refused_in_one_line_before_anything_runs(tmp_path, path):
    parser = LEAVES[path]
    base = _valid_command_line(path, parser)
    calls = [[*base, f"{option}={value}"] for action in _checked_options(parser)
             for option in action.option_strings[:1] for value in _hostile(action.type)]
    proc = subprocess.run([sys.executable, "-c", _DRIVER, json.dumps(calls)], cwd=tmp_path, capture_output=True,
                          text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-3000:]
    report = json.loads(proc.stdout)
    assert not report["heavy"], f"range errors must come before heavy imports: {report['heavy']}"
    prog = f"fedpeft {' '.join(path)}"
    for result in report["results"]:
        option = result["argv"][-1].split("=", 1)[0]
        lines = result["stderr"].splitlines()
        shown = f"{' '.join(result['argv'])[:200]} -> {result['code']}: {result['stderr'][-2000:]}"
        assert result["code"] == 2, shown
        assert len(lines) == 1 and lines[0].startswith(f"{prog}: error: argument {option}"), shown
        assert "must be" in lines[0] and "Traceback" not in result["stderr"], shown
        assert result["stdout"] == "" and result["written"] == [], shown
        assert result["seconds"] < PER_VALUE_S, shown
    assert list(tmp_path.iterdir()) == []


FINDINGS = [  # issue 23, finding 9: each was a traceback, a hang, a NaN adapter or training for ever
    ("device train", "--epochs", "0"), ("device train", "--epochs", "-3"), ("device train", "--epochs", HUGE),
    ("device train", "--batch-size", "0"), ("device train", "--batch-size", "-1"),
    ("device train", "--learning-rate", "nan"), ("device train", "--max-length", "0"),
    ("device train", "--threads", "-5"), ("export", "--max-length", "0"), ("export", "--max-length", "-1"),
    ("export", "--min-int8-agreement", "nan"), ("registry serve", "--port", "70000"),
    ("registry serve", "--host", "256.1.1.1"), ("registry serve", "--publish-deadline", "nan"),
    ("registry serve", "--publish-deadline", "-1"), ("simulate", "--rounds", "0"), ("deploy local", "--timeout", "inf"),
]


@pytest.mark.parametrize("command,option,value", FINDINGS, ids=["{} {}={}".format(*f)[:40] for f in FINDINGS])
def test_the_reported_values_fail_as_a_fedpeft_process(tmp_path, command, option, value):
    path = tuple(command.split())
    argv = [*_valid_command_line(path, LEAVES[path])[len(path):], f"{option}={value}"]
    start = time.monotonic()
    proc = subprocess.run([sys.executable, "-m", "fedpeft.cli", *path, *argv], cwd=tmp_path, capture_output=True,
                          text=True, timeout=60)
    seconds = time.monotonic() - start
    assert proc.returncode == 2, proc.stderr
    assert proc.stderr.count("\n") == 1 and f"error: argument {option}: must be" in proc.stderr, proc.stderr
    assert proc.stdout == "" and list(tmp_path.iterdir()) == []
    assert seconds < PER_VALUE_S, f"{seconds:.1f} s"


def test_a_failed_export_prints_its_one_line_not_the_libraries_load_report(tmp_path, tiny_bert_dir):
    """Loading a base for a new head made transformers print a LOAD REPORT (the head's
    missing weights) and a progress bar before the export's one error line."""
    import shutil

    from safetensors.numpy import load_file, save_file

    from fedpeft.core.trust.keys import new_key_pair

    headless = tmp_path / "headless"
    shutil.copytree(tiny_bert_dir, headless)
    weights = load_file(str(headless / "model.safetensors"))
    save_file({k: v for k, v in weights.items() if not k.startswith("classifier.")}, str(headless / "model.safetensors"))
    new_key_pair(tmp_path / "op.key")
    (tmp_path / "adapter").mkdir()
    proc = subprocess.run([sys.executable, "-m", "fedpeft.cli", "export", "adapter", "--out", "out", "--operator-key",
                           "op.key", "--model", str(headless)], cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 2, proc.stderr
    assert proc.stderr.count("\n") == 1 and "adapter_config.json is missing" in proc.stderr, proc.stderr
    assert "LOAD REPORT" not in proc.stdout + proc.stderr and not (tmp_path / "out").exists()
