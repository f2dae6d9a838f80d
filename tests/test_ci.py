""".ci/run's logic with stand-ins for make, apt-get and id on a PATH without LaTeX, dvipng or tesseract: what it
installs and where, that every run happens, the skipped groups it lists, and its exit status."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
TOOLS = ("bash", "sed", "tee", "mktemp", "rm", "dirname", "cat")
FAKE_MAKE = """#!/bin/bash
echo "make $1 PYTEST_ADDOPTS=${PYTEST_ADDOPTS:-}" >> "$CALLS"
case "$1" in install) exit "${FAIL_INSTALL:-0}";; lint) exit "${FAIL_LINT:-0}";; esac
echo "SKIPPED [2] tests/test_typeset.py:55: tesseract is not installed ($1)"
echo "SKIPPED [1] tests/tiny.py:189: transformers x: an upstream bug"
echo "7 passed, 3 skipped in 1.00s"
[ "$1" = "${FAIL_RUN:-}" ] && exit 1
exit 0
"""


def run_ci(tmp_path: Path, uid: int, **env: str) -> tuple[int, str, list[str]]:
    """.ci/run's exit status, output and the calls it made to make / apt-get."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for tool in TOOLS:
        (bin_dir / tool).symlink_to(shutil.which(tool))
    for name, body in {"make": FAKE_MAKE, "apt-get": '#!/bin/bash\necho "apt-get $*" >> "$CALLS"\n',
                       "id": f"#!/bin/bash\necho {uid}\n"}.items():
        (bin_dir / name).write_text(body)
        (bin_dir / name).chmod(0o755)
    calls = tmp_path / "calls"
    result = subprocess.run([str(bin_dir / "bash"), str(ROOT / ".ci" / "run")], capture_output=True, text=True,
                            env={"PATH": str(bin_dir), "CALLS": str(calls), **env}, timeout=60, check=False)
    return result.returncode, result.stdout + result.stderr, calls.read_text().splitlines()


def test_without_root_nothing_is_installed_every_run_happens_and_skips_are_listed(tmp_path: Path) -> None:
    rc, out, calls = run_ci(tmp_path, uid=1000)
    assert rc == 0
    assert "latex dvipng tesseract missing and apt-get is not usable as root here" in out
    assert [c.split(" PYTEST")[0] for c in calls] == ["make install", "make lint", "make test", "make test-oldest",
                                                       "make test-latest"]
    assert all("-rs" in c for c in calls[2:])  # the test runs list their skips
    listed = out.split("skipped, by group", 1)[1].splitlines()[1:]
    assert listed == [f"  {run}: {line}" for run in ("test", "test-oldest", "test-latest") for line in (
        f"[2] tests/test_typeset.py:55: tesseract is not installed ({run})",
        "[1] tests/tiny.py:189: transformers x: an upstream bug")]
    assert "7 passed, 3 skipped in 1.00s" in out


def test_as_root_the_tools_are_installed_with_apt_get(tmp_path: Path) -> None:
    rc, _, calls = run_ci(tmp_path, uid=0)
    assert rc == 0
    assert calls[:2] == ["apt-get update -qq",
                         "apt-get install -y -qq --no-install-recommends texlive-latex-base dvipng tesseract-ocr"]


@pytest.mark.parametrize("failing", ["test", "test-oldest", "test-latest"])
def test_a_failed_run_fails_ci_after_every_run_and_the_list(tmp_path: Path, failing: str) -> None:
    rc, out, calls = run_ci(tmp_path, uid=1000, FAIL_RUN=failing)
    assert rc == 1
    assert len(calls) == 5 and out.rstrip().endswith(f"failed: make {failing}")
    assert out.count("tesseract is not installed") == 3 * 2  # each run's own output, then its line in the list


def test_a_failed_lint_fails_ci_after_every_run(tmp_path: Path) -> None:
    rc, out, calls = run_ci(tmp_path, uid=1000, FAIL_LINT="1")
    assert rc == 1 and len(calls) == 5 and out.rstrip().endswith("failed: make lint")


def test_a_failed_set_up_stops_ci(tmp_path: Path) -> None:
    rc, _, calls = run_ci(tmp_path, uid=1000, FAIL_INSTALL="2")
    assert rc == 1 and calls == ["make install PYTEST_ADDOPTS="]


def test_the_script_is_executable() -> None:
    assert os.access(ROOT / ".ci" / "run", os.X_OK)
