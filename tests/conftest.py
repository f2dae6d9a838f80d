"""Shared test set-up: one intra-op thread (shared 2-core machines), quiet transformers logging, and the same
machine for every test: rendering sees no LaTeX and no handwriting font, whatever is installed, and its probes'
caches are emptied around each test (a test marked ``installed_tools`` sees the real probes instead)."""

import os

os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")

import pytest  # noqa: E402
import torch  # noqa: E402
from hypothesis import settings  # noqa: E402

from moehooks import installed, render  # noqa: E402

torch.set_num_threads(1)
# CI replays the same examples every run (derandomize); local runs keep exploring new ones.
settings.register_profile("ci", derandomize=True, print_blob=True)
if os.environ.get("CI"):
    settings.load_profile("ci")


def pytest_configure(config):
    config.addinivalue_line("markers", "slow: takes tens of seconds (torch.compile, training); deselect with -m 'not slow'")
    config.addinivalue_line("markers", "installed_tools: sees the machine's LaTeX and fonts through render's real probes "
                                       "(emptied before and after the test); skip where what it needs is absent")


PROBES = (installed.has_latex, installed.has_usetex, installed.find_handwriting_font,
          installed._warn_synthetic_handwriting)
"""The cached probes of the machine (and the once-per-process warning) that rendering asks."""


@pytest.fixture(autouse=True)
def same_machine(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch):
    """No test's outcome depends on what is installed or on what another test probed: the probes' caches are
    emptied around every test, and outside ``installed_tools`` tests the probes answer "absent" (in
    ``moehooks.installed``, where rendering asks them, and in ``moehooks.render``, which re-exports them)."""
    for probe in PROBES:
        probe.cache_clear()
    if request.node.get_closest_marker("installed_tools") is None:
        for module in (installed, render):
            monkeypatch.setattr(module, "has_latex", lambda: False)
            monkeypatch.setattr(module, "has_usetex", lambda: False)
            monkeypatch.setattr(module, "find_handwriting_font", lambda: None)
    yield
    for probe in PROBES:
        probe.cache_clear()
