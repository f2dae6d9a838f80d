"""The GPU check script runs its steps end to end (on the CPU here, tiny; CUDA-only steps say they were skipped)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

BENCHES = Path(__file__).resolve().parents[1] / "benches"


def test_gpu_check_runs_on_the_cpu_and_writes_its_figures(tmp_path):
    done = subprocess.run([sys.executable, str(BENCHES / "gpu_check.py"), "--device", "cpu", "--smoke", "--out",
                           str(tmp_path)], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    result = json.loads((tmp_path / "gpu_check_cpu.json").read_text())
    assert set(result["overhead"]) == {"unhooked", "record", "record per_sample", "soft steer", "record+steer+swap"}
    assert result["overhead"]["unhooked"]["ratio"] == 1.0
    assert all(row["median_s"] > 0 for row in result["overhead"].values())
    assert result["syncs"] == {"skipped": "no CUDA device"}
    assert result["compiled_static_cache"]["recompiles_per_step"] is False


@pytest.mark.skipif(torch.cuda.is_available(), reason="a CUDA device is here: the real check would run")
def test_gpu_check_without_a_gpu_says_so_in_one_line():
    done = subprocess.run([sys.executable, str(BENCHES / "gpu_check.py")], capture_output=True, text=True,
                          timeout=300)
    assert done.returncode == 1
    assert done.stderr.strip().splitlines() == ["error: no CUDA device here; run with --device cpu --smoke for the CPU steps"]
