"""pyproject.toml against the code: every runtime dependency is imported by the package, and the ``moehooks``
console command names a callable of the installed package."""

from __future__ import annotations

import ast
import importlib
import re
from pathlib import Path

import pytest

tomllib = pytest.importorskip("tomllib", reason="Python 3.11 reads TOML (tomllib); 3.10 has no reader")
ROOT = Path(__file__).resolve().parents[1]
PROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
IMPORT_NAMES = {"pillow": "PIL", "math-verify": "math_verify"}  # distributions whose import name differs


def _imported() -> set[str]:
    """Top-level names of the modules that moehooks' files import (at any depth: lazy imports count)."""
    names: set[str] = set()
    for path in (ROOT / "moehooks").rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                names.update(alias.name.split(".")[0] for alias in node.names)
            elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
                names.add(node.module.split(".")[0])
    return names


def test_every_dependency_is_imported_by_the_package():
    wanted = {re.split(r"[<>=!~;\[ ]", spec, maxsplit=1)[0] for spec in PROJECT["dependencies"]}
    unused = sorted(name for name in wanted if IMPORT_NAMES.get(name, name.replace("-", "_")) not in _imported())
    assert unused == []


def test_the_console_command_is_a_callable_of_the_package():
    module, _, name = PROJECT["scripts"]["moehooks"].partition(":")
    assert module.startswith("moehooks.") and callable(getattr(importlib.import_module(module), name))
