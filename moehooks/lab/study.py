"""The lab study (what ``make run`` runs): every step of the paper on the lab model and its undistracted control.

    from moehooks.lab import study
    result = study.run("runs", report=lambda step, model, outcome: print(step, model, outcome))
    result.steering.summary["soft"].delta, result.control_steering.summary["soft"].delta

(Minutes on a CPU, so not run as a doctest: its ``steer`` step on the first four test tasks is the example of
``moehooks.pipeline``.)

Steps, in order, each reported as it ends (``report(step, model, outcome)``; ``model`` is ``"lab"`` or
``"control"``): ``load`` (the :class:`moehooks.models.ModelSpec`), ``read`` (the reading probe on the test split),
``tune`` (tau, beta and layers chosen on the dev split, ``dev/tune.json``), ``analyze`` (image vs text routing of
the test split, ``test/analyze``), ``steer`` (the study runner, ``moehooks.study.run``, with the tuned settings,
``test/steer``), ``swap`` (the concept-swap sweep, ``swap``), then ``load``, ``analyze`` and ``steer`` of the
control model (``control/``). ``stage(step, done, total)`` follows each step's progress.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from moehooks import distributed, pipeline, runs
from moehooks.items import load_items
from moehooks.lab import CONTROL_DIR
from moehooks.study import SteerResult
from moehooks.swap import SwapSweep

Stage = Callable[[str, int, int], None] | None
Report = Callable[[str, str, Any], None] | None

TAUS = (0.05, 0.1, 0.2)
"""Expert thresholds tried on the dev split."""
BETAS = (0.5, 1.0, 2.0)
"""Soft-steering strengths tried on the dev split."""
LAYER_SETS = (None, [1, 2, 3, 4])
"""Layer sets tried on the dev split: every MoE layer, and the four inner ones."""
ANALYSIS_TAU = 0.1
"""Threshold of the visual experts in the routing analysis."""
RANDOM_SEEDS = range(5)
"""Random-expert draws measured beside the ``random`` row on the lab model."""
TITLES = {"lab": "lab model (distracted)", "control": "lab control (undistracted)"}
"""How the figures' titles name the two models, so their figures cannot be taken for each other."""


@dataclass
class LabStudy:
    """Outcome of :func:`run`: one attribute per step."""

    reading: float
    tuning: pipeline.Tuning
    analysis: pipeline.Analysis
    steering: SteerResult
    swap: SwapSweep
    control_analysis: pipeline.Analysis
    control_steering: SteerResult


def run(out_dir: str | Path = "runs", *, stage: Stage = None, report: Report = None) -> LabStudy:
    """Run the lab study into ``out_dir`` (``dev/``, ``test/``, ``control/``, ``swap/``; each checked writable
    before the model loads); see the module's docstring for the steps."""
    out = Path(out_dir)
    for name in ("dev", "test", "control", "swap"):
        runs.check_output_dir(out / name)
    test, dev = pipeline.lab_study("test"), pipeline.lab_study("dev")
    items = load_items(test.tasks)
    state = distributed.launched_state()
    device_map = None if state is None else {"": str(state.device)}  # one device per launched process

    def tell(step: str, model: str, outcome: Any) -> Any:
        if report is not None:
            report(step, model, outcome)
        return outcome

    def progress(step: str) -> Callable[[int, int], None] | None:
        return (lambda done, total: stage(step, done, total)) if stage else None

    lm, processor, spec = pipeline.load_model("lab", device_map=device_map)
    tell("load", "lab", spec)
    reading = tell("read", "lab", pipeline.read_probe(lm, processor, items, question=pipeline.LAB_READ_QUESTION))
    loaded = pipeline.load_study(dev)
    tuning = pipeline.tune_steering(lm, processor, loaded.tasks, loaded.references, loaded.general, taus=TAUS,
                                    betas=BETAS, layer_sets=LAYER_SETS, max_new_tokens=8,
                                    generation_kwargs=dict(spec.generation_kwargs) or None,
                                    progress=progress("lab tune"))
    pipeline.save_tuning(tuning, out / "dev" / "tune.json")
    tell("tune", "lab", tuning)
    best = tuning.best
    options = dict(tau=best["tau"], beta=best["beta"], layers=best["layers"], methods=list(pipeline.METHODS),
                   trials=1, seed=0, limit=None, batch_size=32, max_new_tokens=8)

    def analyze(model: Any, folder: Path, name: str) -> pipeline.Analysis:
        return tell("analyze", name, pipeline.analyze(model, processor, items, tau=ANALYSIS_TAU, out_dir=folder,
                                                      dataset=test.tasks.name, progress=progress(f"{name} analyze"),
                                                      model_name=TITLES[name], max_new_tokens=8,
                                                      generation_kwargs=dict(spec.generation_kwargs) or None))

    def steer(model: Any, model_spec: Any, folder: Path, name: str, seeds: Any) -> SteerResult:
        return tell("steer", name, pipeline.steer_study(model, processor, test, folder, spec=model_spec,
                                                        progress=progress(f"{name} steer"), random_seeds=seeds,
                                                        **options))

    analysis = analyze(lm, out / "test" / "analyze", "lab")
    steering = steer(lm, spec, out / "test" / "steer", "lab", RANDOM_SEEDS)
    sweep = tell("swap", "lab", pipeline.swap_study(lm, processor, None, source="3", target="5", alpha=1.0,
                                                    out_dir=out / "swap", progress=progress("lab swap sweep"),
                                                    model_name=TITLES["lab"]))
    control, processor, control_spec = pipeline.load_model(str(CONTROL_DIR), device_map=device_map)
    tell("load", "control", control_spec)
    return LabStudy(reading=reading, tuning=tuning, analysis=analysis, steering=steering, swap=sweep,
                    control_analysis=analyze(control, out / "control" / "analyze", "control"),
                    control_steering=steer(control, control_spec, out / "control" / "steer", "control", ()))
