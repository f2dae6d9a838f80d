"""The README's examples, run: every Python block, every command line, every ``moehooks.x.y`` name it cites.

* Python blocks run in order in one namespace (a later block uses the names of an earlier one), in a temporary
  folder.
* Every command of a ``bash`` block is parsed by the CLI itself (unknown options and bad values fail here).
  Commands that use the lab model and files the repository ships (or that this test writes: ``problems.jsonl``),
  and ``--dry-run`` commands, are then run for real (marked ``slow``); the others are reported as skipped with
  the reason (a hub model, a multi-process launcher, a user's data file, the whole study / the test suite
  behind ``make``, or a system set-up command such as ``apt-get``).
* A block preceded by ``<!-- not run: REASON -->`` is not run (its commands are still parsed).
"""

from __future__ import annotations

import importlib
import json
import re
import shlex
from dataclasses import dataclass
from pathlib import Path

import click
import pytest
import typer
from typer.testing import CliRunner

import cli

ROOT = Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text(encoding="utf-8")
BLOCK = re.compile(r"(?:<!--\s*not run:\s*(?P<reason>.*?)\s*-->\s*\n)?```(?P<lang>\w*)\n(?P<body>.*?)```", re.DOTALL)
LAUNCHERS = {"accelerate", "torchrun"}
PROBLEMS = [{"id": "p1", "question": "2+3=", "answer": "5"}, {"id": "p2", "question": "4+4=", "answer": "8"}]


@dataclass(frozen=True)
class Command:
    line: str
    launcher: list[str]
    args: list[str]
    skip: str | None

    def __str__(self) -> str:
        return self.line[:70]


def blocks(lang: str) -> list[tuple[str, str | None]]:
    return [(m["body"], m["reason"]) for m in BLOCK.finditer(README) if m["lang"] == lang]


def _commands() -> list[Command]:
    found = []
    for body, reason in blocks("bash"):
        for line in body.replace("\\\n", " ").splitlines():
            tokens = [t for t in shlex.split(line, comments=True) if "=" not in t or t.startswith("-")]
            if not tokens:
                continue
            if tokens[0] == "make":
                recipe = _make_recipe(tokens[1])
                found.append(Command(line.strip(), ["make"], recipe,
                                     f"`make {tokens[1]}` is the {'whole study' if tokens[1] == 'run' else 'test suite'}"))
                continue
            if "cli.py" not in tokens:
                found.append(Command(line.strip(), tokens, [], f"not a moehooks command ({tokens[0]}: system set-up)"))
                continue
            at = tokens.index("cli.py")
            found.append(Command(line.strip(), tokens[:at], tokens[at + 1:], reason or _why_not_run(tokens[:at],
                                                                                                  tokens[at + 1:])))
    return found


def _make_recipe(target: str) -> list[str]:
    """The cli.py arguments of a Makefile target (``[]`` for a target that runs no cli.py)."""
    text = (ROOT / "Makefile").read_text()
    match = re.search(rf"^{target}:.*\n((?:\t.*\n)+)", text, re.MULTILINE)
    assert match, f"Makefile has no target {target!r}"
    for recipe in match[1].splitlines():
        parts = shlex.split(recipe.strip())
        if "cli.py" in parts:
            return parts[parts.index("cli.py") + 1:]
    return []


def _why_not_run(launcher: list[str], args: list[str]) -> str | None:
    if LAUNCHERS & set(launcher):
        return f"launched as several processes ({launcher[0]})"
    if "--dry-run" in args:
        return None  # a dry run prints its plan and loads no model or data, whatever the model
    for flag in ("--model", "-m"):
        if flag in args and args[args.index(flag) + 1] != "lab":
            return f"needs model {args[args.index(flag) + 1]!r} from the hub (and a GPU)"
    files = [a for a in args if re.search(r"\.(jsonl|csv|parquet|safetensors)$", a) and not a.startswith("runs/")]
    missing = [f for f in files if f != "problems.jsonl" and not (ROOT / f).is_file()]
    return f"names data only a user has: {', '.join(missing)}" if missing else None


COMMANDS = _commands()


def _parse(args: list[str]) -> None:
    """Let the CLI parse ``args`` without running them: unknown commands/options and bad types raise."""
    group = typer.main.get_command(cli.app)
    if not args or args[0] not in group.commands:
        raise click.UsageError(f"no command {args[:1]}; commands: {', '.join(group.commands)}")
    with group.commands[args[0]].make_context(args[0], list(args[1:])):
        pass


@pytest.fixture
def workdir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A scratch folder standing in for the repository root: ``moehooks/`` linked, ``problems.jsonl`` written."""
    (tmp_path / "moehooks").symlink_to(ROOT / "moehooks")
    (tmp_path / "problems.jsonl").write_text("".join(json.dumps(r) + "\n" for r in PROBLEMS))
    monkeypatch.chdir(tmp_path)
    return tmp_path


@pytest.mark.parametrize("command", [pytest.param(c, marks=[] if c.skip else [pytest.mark.slow], id=str(c))
                                     for c in COMMANDS])
def test_readme_command(command: Command, workdir: Path) -> None:
    try:
        if command.args or "cli.py" in command.line:  # `make test` and set-up commands run no cli.py
            _parse(command.args)
    except click.ClickException as err:
        pytest.fail(f"README command {command.line!r} does not parse: {err.format_message()}")
    if command.skip:
        pytest.skip(f"parsed, not run: {command.skip}")
    result = CliRunner().invoke(cli.app, command.args)
    assert result.exit_code == 0, f"{command.line}\n{result.output}{result.exception!r}"


def test_readme_python_blocks_run(workdir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """Every Python block runs; the library example demonstrates the method: experts identified on text that is
    not a test item, in the alias's layers, and soft steering that does not lower the image accuracy it prints."""
    from moehooks import models

    namespace: dict = {"__name__": "readme"}
    ran = 0
    for body, reason in blocks("python"):
        if reason is None:
            exec(compile(body, "README.md", "exec"), namespace)
            ran += 1
            if ran == 1:
                printed = capsys.readouterr().out
    assert ran >= 2
    found = re.search(r"image problems \((\d+) held-out\): baseline ([\d.]+)% -> soft steering ([\d.]+)%", printed)
    assert found, printed
    count, before, after = int(found[1]), float(found[2]), float(found[3])
    items, domain = namespace["items"], namespace["domain"]
    assert count == len(items) >= 40 and all(item.image for item in items)
    assert not {it.id for it in items} & {it.id for it in domain} and not any(it.image for it in domain)
    first, last = models.resolve("lab").layers
    assert list(namespace["layers"]) == list(range(first, last + 1)) and set(namespace["experts"]) <= set(
        namespace["layers"])
    assert after > before, printed
    assert f"baseline {before:.1f}% -> soft steering {after:.1f}%" in README


def _cited_names() -> set[str]:
    names = set()
    for match in re.finditer(r"`(moehooks(?:\.\w+)+)(?:\.\{([^}]*)\})?", README):
        if match[2]:
            names |= {f"{match[1]}.{part.strip()}" for part in match[2].split(",")}
        else:
            names.add(match[1])
    return names


@pytest.mark.parametrize("name", sorted(_cited_names()))
def test_readme_names_resolve(name: str) -> None:
    parts = name.split(".")
    target = importlib.import_module(parts[0])
    for i, part in enumerate(parts[1:], start=1):
        if not hasattr(target, part):
            importlib.import_module(".".join(parts[: i + 1]))
        target = getattr(target, part)  # moehooks.swap is the function: moehooks.swap.x fails here
