"""One process of the 2-process test in tests/test_accelerate.py; start it with torchrun.

    torchrun --nproc_per_node 2 tests/dist_worker.py MODEL_DIR TASKS GENERAL OUT_DIR

Runs ``pipeline.steer_study`` (identify -> baseline/soft/hard/random) and ``pipeline.record_items`` on the
tasks with the settings of ``STUDY`` below, sharded over the processes; the main process writes the summed
routing counts (totals and per sample) to ``OUT_DIR/routing.json``.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import torch
from accelerate import PartialState

from moehooks import distributed, evaluate, models, pipeline

STUDY = dict(tau=0.0, beta=2.0, batch_size=3, max_new_tokens=3, trials=1, seed=0)


def run(model_dir: str, tasks: Path, general: Path, out: Path) -> None:
    """The study and the routing record of ``tasks``; the same calls the 1-process reference makes."""
    model, tokenizer = models.load(model_dir, dtype=torch.float32)
    pipeline.steer_study(model, tokenizer, pipeline.StudyData(tasks=tasks, references=None, general=general), out,
                         **STUDY)
    rec = pipeline.record_items(model, tokenizer, evaluate.load_items(tasks), batch_size=STUDY["batch_size"],
                                per_sample=True)
    if distributed.is_main(distributed.launched_state()):
        routing = {"counts": rec.counts().tolist(), "tokens": rec.tokens().tolist(),
                   "samples": rec.sample_counts().tolist()}
        (out / "routing.json").write_text(json.dumps(routing))


if __name__ == "__main__":
    torch.set_num_threads(1)
    PartialState(cpu=True)
    try:
        run(sys.argv[1], Path(sys.argv[2]), Path(sys.argv[3]), Path(sys.argv[4]))
    finally:
        distributed.finish()
