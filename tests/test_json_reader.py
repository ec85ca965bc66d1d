"""The guarded JSON reader (core/trust/json_reader.py), and that it is the only way the
code parses JSON."""

from __future__ import annotations

import ast
import os
from pathlib import Path

import pytest

from fedpeft.core.trust.json_reader import MAX_DEPTH, JSONRefused, depth_of, parse_json, read_json

ROOT = Path(__file__).resolve().parents[1]
READER = ROOT / "core" / "trust" / "json_reader.py"
CODE_FOLDERS = ("core", "server", "client", "device", "export", "deploy", "fedpeft", "simulations", "protos")


def _reason(data, **bounds) -> str:
    with pytest.raises(JSONRefused) as caught:
        parse_json(data, "input", **bounds)
    return caught.value.reason


def test_parses_documents_within_bounds():
    assert parse_json(b'{"a": [1, {"b": "c"}]}', "x") == {"a": [1, {"b": "c"}]}
    assert parse_json("[" * MAX_DEPTH + "]" * MAX_DEPTH, "x") is not None
    assert depth_of({"a": [1, {"b": []}]}) == 4 and depth_of([]) == 1 and depth_of(7) == 0


@pytest.mark.parametrize("depth", [MAX_DEPTH + 1, 5_000, 200_000])
def test_deep_nesting_is_refused_not_a_recursion_error(depth):
    assert _reason("[" * depth + "]" * depth) == "too-deep"
    assert _reason('{"a":' * depth + "1" + "}" * depth) == "too-deep"


def test_size_is_bounded_before_parsing():
    assert _reason(b"[" + b"1," * 600 + b"1]", limit=1000) == "too-large"


@pytest.mark.parametrize("data", [b"", b"{", b"\xff\xfe", b'{"a": 1} x', b"NaN", b'{"a": Infinity}', b"[-Infinity]"])
def test_malformed_and_non_finite_are_refused(data):
    assert _reason(data) == "malformed"


def test_non_finite_numbers_only_on_request():
    assert parse_json(b"[NaN]", "x", allow_nonfinite=True)[0] != parse_json(b"[NaN]", "x", allow_nonfinite=True)[0]


def test_read_json_wants_a_regular_small_file_holding_an_object(tmp_path):
    (tmp_path / "ok.json").write_text('{"a": 1}')
    assert read_json(tmp_path / "ok.json") == {"a": 1}
    (tmp_path / "list.json").write_text("[1]")
    os.mkfifo(tmp_path / "fifo.json")
    cases = {"missing.json": "unreadable", "fifo.json": "unreadable", "list.json": "malformed"}
    for name, reason in cases.items():
        with pytest.raises(JSONRefused) as caught:
            read_json(tmp_path / name)
        assert caught.value.reason == reason, name


def _json_parse_calls(path: Path) -> list[int]:
    """Lines of `json.load(...)` / `json.loads(...)` calls (and of names imported from json)."""
    lines = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Call):
            func = node.func
            if isinstance(func, ast.Attribute) and func.attr in ("load", "loads") \
                    and isinstance(func.value, ast.Name) and func.value.id == "json":
                lines.append(node.lineno)
        elif isinstance(node, ast.ImportFrom) and node.module == "json" \
                and any(alias.name in ("load", "loads", "JSONDecoder") for alias in node.names):
            lines.append(node.lineno)
    return lines


def test_no_code_parses_json_but_the_guarded_reader():
    sources = [p for folder in CODE_FOLDERS for p in sorted((ROOT / folder).rglob("*.py"))]
    assert READER in sources and len(sources) > 50
    assert _json_parse_calls(READER), "the walk must see the reader's own json.loads"
    bare = {str(p.relative_to(ROOT)): lines for p in sources if p != READER and (lines := _json_parse_calls(p))}
    assert not bare, f"bare JSON parsing outside core/trust/json_reader.py: {bare}"
