"""The root conftest the docstrings' usage examples run under: the lab names, a temporary directory each, and an
error for an example that leaves hooks on the model (oracle: a hook registered by hand, and one removed again)."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

EXAMPLES = '''"""Examples run by the root conftest.

>>> from pathlib import Path
>>> sorted(path.name for path in Path(".").iterdir())     # a fresh directory
[]
>>> _ = Path("written.txt").write_text("x")
"""


def clean():
    """
    >>> gate = model.model.language_model.layers[0].mlp.gate
    >>> handle = gate.register_forward_hook(lambda *args: None)
    >>> handle.remove()
    >>> processor.tokenizer.padding_side, [item.id for item in items], tuple(inputs["input_ids"].shape)
    ('left', ['arith_v1_00', 'arith_v1_01'], (2, 29))
    """


def leaky():
    """
    >>> handle = model.model.language_model.layers[0].mlp.gate.register_forward_hook(lambda *args: None)
    """
'''


def test_examples_get_the_lab_a_fresh_directory_and_fail_when_they_leave_a_hook(tmp_path: Path) -> None:
    shutil.copy(ROOT / "conftest.py", tmp_path / "conftest.py")
    (tmp_path / "examples.py").write_text(EXAMPLES)
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    done = subprocess.run([sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "-o", "addopts=", "-q",
                           "--doctest-modules", "examples.py", "-rA"], cwd=tmp_path, env=env, capture_output=True,
                          text=True, timeout=600)
    report = done.stdout
    assert "PASSED examples.py::examples\n" in report, report
    assert "PASSED examples.py::examples.clean" in report, report
    assert "ERROR examples.py::examples.leaky - AssertionError: examples.leaky left hooks" in report, report
    assert "3 passed, 1 error" in report, report
    assert not (tmp_path / "written.txt").exists()
