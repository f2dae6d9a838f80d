"""Every MoE model type of the installed transformers: one memory-capped process each (``tests/moe_sweep.py``).

CI runs this on the locked transformers release and on the newest one (``.ci/run``); the table is printed.
"""

from __future__ import annotations

import pytest

import moehooks
import transformers
from moehooks.adapters.verified import TRANSFORMERS, VERIFIED
from moe_sweep import moe_model_types, sweep, table

#: statuses of a sweep row that are a defect of moehooks (``no-tiny-model`` / ``model-fails`` are the harness's
#: or the model's own limits at this size, ``record-only`` / ``partial`` are blocks no known rule reproduces)
DEFECTS = ("fail", "error", "crashed", "timeout", "unsupported")
#: model types moehooks knowingly cannot adapt, and why
KNOWN_GAPS: dict[str, str] = {}


@pytest.fixture(scope="module")
def results() -> list[dict]:
    return sweep()


@pytest.mark.slow
def test_every_moe_model_type_runs_as_verified(results, capsys):
    with capsys.disabled():
        print("\n" + table(results))
    defects = [(r["type"], r["status"], r.get("detail", "")) for r in results
               if r["status"] in DEFECTS and r["type"] not in KNOWN_GAPS]
    assert not defects
    adapted = {r["type"]: r["status"] for r in results if r["status"] in ("ok", "partial", "record-only")}
    judged = {r["type"] for r in results if r["status"] not in ("no-tiny-model", "model-fails")}
    regressed = {t: (status, adapted.get(t)) for t, (_, status) in VERIFIED.items()
                 if t in judged and adapted.get(t) != status}
    assert not regressed, "re-run scripts/architectures.py --sweep after checking these"
    unlisted = sorted(set(adapted) - set(VERIFIED))
    if transformers.__version__ == TRANSFORMERS:  # a newer release may add types: in the table, not a failure
        assert not unlisted, "new model types adapt: add them with scripts/architectures.py --sweep"
        assert set(adapted) <= set(moehooks.supported_architectures())


def test_discovery_finds_composite_and_text_types():
    types = moe_model_types()
    assert {"qwen3_moe", "minimax_m2", "minimax_m3_vl", "minimax_m3_vl_text", "deepseek_v4", "phimoe"} <= set(types)


def test_readme_lists_what_the_registry_covers():
    import importlib.util
    from pathlib import Path

    script = Path(__file__).resolve().parent.parent / "scripts" / "architectures.py"
    spec = importlib.util.spec_from_file_location("architectures", script)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    text = module.README.read_text()
    assert module.render(text) == text, "README is stale: run python scripts/architectures.py"
    assert f"lists {len(moehooks.supported_architectures())} model types" in text
