"""The names the usage examples of moehooks' docstrings use, for ``pytest --doctest-modules moehooks``.

An example that names ``model``, ``processor``, ``items`` or ``inputs`` gets the embedded lab model (a tiny trained
Qwen3-VL-MoE, loaded once per session), its processor, two of its image problems and their encoded batch; every
example runs in a fresh temporary directory (``runs/...`` paths land there) and must leave the model with exactly
the hooks it had before.
"""

from __future__ import annotations

import os
import re
from typing import Any

os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")

import pytest  # noqa: E402
import torch  # noqa: E402
from _pytest.doctest import DoctestItem  # noqa: E402

LAB_NAMES = ("model", "processor", "items", "inputs")
"""The names an example uses to ask for the lab model (:func:`lab_namespace`)."""


@pytest.fixture(scope="session")
def lab_namespace() -> dict[str, Any]:
    """``model``, ``processor`` (``moehooks.lab.load_lab``), ``items`` (the first two image problems of the lab's
    ``arith_image.jsonl``: ``9+9=`` and ``5+6=`` rendered) and ``inputs`` (their left-padded batch)."""
    from moehooks.generation import build_inputs
    from moehooks.items import load_items
    from moehooks.lab import DATA_DIR, load_lab

    torch.set_num_threads(1)
    model, processor = load_lab()
    items = load_items(DATA_DIR / "arith_image.jsonl")[:2]
    return {"model": model, "processor": processor, "items": items, "inputs": build_inputs(processor, items)}


def hook_state(model: torch.nn.Module) -> list[tuple[str, int, int, int, int]]:
    """Per module: its name and how many forward pre-hooks, forward hooks, backward hooks and instance attributes
    it holds (a context that patched ``generate`` on the instance shows as one more attribute)."""
    return [(name, len(module._forward_pre_hooks), len(module._forward_hooks), len(module._backward_hooks),
             len(vars(module))) for name, module in model.named_modules()]


@pytest.fixture(autouse=True)
def doctest_setup(request: pytest.FixtureRequest) -> Any:
    """For a doctest (other tests get nothing): a temporary working directory, the lab names when its examples use
    one, and a check that the model's hooks are as before."""
    if not isinstance(request.node, DoctestItem):
        yield
        return
    request.getfixturevalue("monkeypatch").chdir(request.getfixturevalue("tmp_path"))
    doctest_namespace = request.getfixturevalue("doctest_namespace")
    source = "\n".join(example.source for example in request.node.dtest.examples)
    if not re.search(rf"\b({'|'.join(LAB_NAMES)})\b", source):
        yield
        return
    lab = request.getfixturevalue("lab_namespace")
    doctest_namespace.update(lab)
    before = hook_state(lab["model"])
    yield
    assert hook_state(lab["model"]) == before, f"{request.node.name} left hooks or attributes on the model"
