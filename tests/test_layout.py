"""The layout's import rules, checked on the source: device/ runs without torch, and
server/ and client/ lean on core/, never on each other."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
HEAVY = ("torch", "transformers", "peft", "ray")


def _imports(folder: str) -> dict[str, set[str]]:
    """Module file -> the absolute module names it imports (at any depth, lazily too)."""
    found: dict[str, set[str]] = {}
    for path in sorted((ROOT / folder).rglob("*.py")):
        names: set[str] = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                names.update(alias.name for alias in node.names)
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                names.add(node.module)
        found[str(path.relative_to(ROOT))] = names
    return found


@pytest.mark.parametrize("folder,forbidden", [("server", "fedpeft.client"), ("client", "fedpeft.server"),
                                              ("core", "fedpeft.server"), ("core", "fedpeft.client"),
                                              ("device", "fedpeft.server"), ("device", "fedpeft.client"),
                                              ("device", "fedpeft.export")])
def test_imports_flow_one_way(folder, forbidden):
    crossing = {f: sorted(n for n in names if n == forbidden or n.startswith(forbidden + "."))
                for f, names in _imports(folder).items()}
    assert not {f: n for f, n in crossing.items() if n}, f"{folder}/ imports {forbidden}"


def test_device_modules_import_without_torch():
    modules = [f"fedpeft.device.{p.stem}" for p in sorted((ROOT / "device").glob("*.py")) if p.stem != "__init__"]
    assert modules
    blocker = "; ".join(f"sys.modules[{name!r}] = None" for name in HEAVY)  # any import of these raises
    code = (f"import sys; {blocker}\n"
            f"import importlib\nfor m in {modules!r}: importlib.import_module(m)\n"
            f"print(sorted(m for m in sys.modules if m.split('.')[0] in {HEAVY!r} and sys.modules[m] is not None))")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.strip() == "[]"


def test_every_package_folder_is_installed():
    """A regular (non-editable) install ships only the packages pyproject.toml lists: a
    folder missing there works in the editable checkout and breaks every real install."""
    import tomllib

    setuptools = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]
    folders = {folder: package for package, folder in setuptools["package-dir"].items()}
    found = {".".join((folders[top], *init.parent.relative_to(ROOT / top).parts))
             for top in folders for init in (ROOT / top).rglob("__init__.py")}
    assert found == set(setuptools["packages"]), sorted(found ^ set(setuptools["packages"]))
