"""The package's layout: every module imports on its own, imports form no cycle, each module says its idea in its
first docstring line, and every ``moehooks.X`` the README names resolves after ``import moehooks``."""

from __future__ import annotations

import ast
import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "moehooks"



def _modules() -> dict[str, Path]:
    found = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        parts = path.relative_to(ROOT).with_suffix("").parts
        found[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return found


def _targets(module: str, node: ast.Import | ast.ImportFrom, package: bool, known: set[str]) -> set[str]:
    """The moehooks modules an import statement loads (``from . import x`` names the module ``x``)."""
    if isinstance(node, ast.Import):
        names = [alias.name for alias in node.names]
    else:
        base = module.split(".") if package else module.split(".")[:-1]
        if node.level:
            base = base[: len(base) - node.level + 1]
            prefix = ".".join([*base, *([node.module] if node.module else [])])
        else:
            prefix = str(node.module)
        names = [prefix, *(f"{prefix}.{alias.name}" for alias in node.names)]
    return {name for name in names if name in known and name != module}


def import_graph() -> tuple[dict[str, set[str]], dict[str, set[str]]]:
    """``(top_level, in_function)``: per module, the moehooks modules it imports at import time and inside
    functions."""
    modules = _modules()
    top: dict[str, set[str]] = {name: set() for name in modules}
    lazy: dict[str, set[str]] = {name: set() for name in modules}
    for name, path in modules.items():
        tree = ast.parse(path.read_text(encoding="utf-8"))
        at_top = {id(node) for node in tree.body}
        for node in ast.walk(tree):
            if isinstance(node, (ast.Import, ast.ImportFrom)):
                into = top if id(node) in at_top else lazy
                into[name] |= _targets(name, node, path.name == "__init__.py", set(modules))
    return top, lazy


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan), each sorted."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    found: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        for target in graph[node]:
            if target not in index:
                visit(target)
                low[node] = min(low[node], low[target])
            elif target in stack:
                low[node] = min(low[node], index[target])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for node in graph:
        if node not in index:
            visit(node)
    return found


def test_cycle_finder_finds_a_hand_made_cycle():
    """Oracle: a graph drawn by hand with one three-module cycle and a tail."""
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a", "d"}, "d": set()}
    assert cycles(graph) == [["a", "b", "c"]]
    assert cycles({"a": {"b"}, "b": set()}) == []


def test_no_import_cycles_not_even_hidden_in_functions():
    top, lazy = import_graph()
    assert cycles(top) == []
    assert cycles({name: top[name] | lazy[name] for name in top}) == []


def test_every_module_imports_first_in_a_fresh_interpreter():
    """Each module is imported with no moehooks module loaded before it (torch and transformers stay loaded, as
    they hold no moehooks state), so an import that works only after another module was loaded shows."""
    script = """
import importlib, json, sys
failed = {}
for name in json.loads(sys.argv[1]):
    for loaded in [m for m in sys.modules if m == "moehooks" or m.startswith("moehooks.")]:
        del sys.modules[loaded]
    try:
        importlib.import_module(name)
    except Exception as err:
        failed[name] = f"{type(err).__name__}: {err}"
print(json.dumps(failed))
"""
    names = sorted(_modules())
    done = subprocess.run([sys.executable, "-c", script, json.dumps(names)], capture_output=True, text=True,
                          cwd=ROOT, timeout=600, check=True)
    assert json.loads(done.stdout.strip().splitlines()[-1]) == {}


@pytest.mark.parametrize("name", sorted(_modules()))
def test_module_says_its_idea_in_its_first_docstring_line(name):
    docstring = ast.get_docstring(ast.parse(_modules()[name].read_text(encoding="utf-8")))
    assert docstring, f"{name} has no docstring"
    assert len(docstring.splitlines()[0].strip()) >= 20, f"{name}: first docstring line too short"


def test_every_name_the_readme_gives_resolves_after_import_moehooks():
    """``moehooks.artefacts``, ``moehooks.adapters.base.module_tensor``... as the README writes them."""
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    named = sorted(set(re.findall(r"\bmoehooks(?:\.[A-Za-z_]\w*)+", readme)))
    assert "moehooks.artefacts" in named
    script = """
import json, sys
import moehooks
missing = []
for dotted in json.loads(sys.argv[1]):
    value = moehooks
    try:
        for part in dotted.split(".")[1:]:
            value = getattr(value, part)
    except AttributeError as err:
        missing.append(f"{dotted}: {err}")
print(json.dumps(missing))
"""
    done = subprocess.run([sys.executable, "-c", script, json.dumps(named)], capture_output=True, text=True,
                          cwd=ROOT, timeout=600, check=True)
    assert json.loads(done.stdout.strip().splitlines()[-1]) == []
