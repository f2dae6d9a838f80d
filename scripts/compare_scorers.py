"""Run the benchmarks' own rule-based scorers on the hand-graded pairs and count how often each agrees.

Example:
    python scripts/compare_scorers.py --math-v MATH-V --gsm8k-v GSM8K-V --lm-eval lm-evaluation-harness \\
        --prm800k prm800k

Each option is a checkout of the scorer's repository (GitHub ``mathllm/MATH-V``, ``ZJU-REAL/GSM8K-V``,
``EleutherAI/lm-evaluation-harness``, ``openai/prm800k``); their code is imported from there at run time, not
copied. The scorers need, in the Python that runs this script: ``latex2sympy2==1.9.1`` (it pins
``antlr4-python3-runtime==4.7.2``, so not the project's environment, whose ``math-verify`` needs 4.13),
``fire``, ``tqdm``, ``numpy`` (MATH-V), ``sympy`` and ``pylatexenc`` (prm800k). Scored rows:

- ``mathvision``: MATH-V's ``evaluation/evaluate.py`` ``evaluate()`` on a results file of the rows' ids and
  responses (it reads the answers and options from the checkout's ``data/test.jsonl``);
- ``gsm8k-v``: GSM8K-V's ``MathEvaluator`` (``utils/math_evaluator.py``): ``extract_answer`` then ``is_correct``;
- ``math500``: lm-evaluation-harness' ``hendrycks_math500`` task (``tasks/hendrycks_math/utils.py``
  ``process_results``, the solution given as ``\\boxed{answer}``; it reads the answer between the first and last
  ``$``, a few-shot format), the same file's ``is_equiv`` (MATH's) on the response's last ``\\boxed{}`` (read with
  its ``last_boxed_only_string``), and prm800k's ``grade_answer`` (MATH-500's own repository) on that box.

MathVerse scores with an LLM (extraction then judgement by GPT) and GPQA's repository could not be had, so
their rows are not scored here. Prints, per benchmark and scorer, the rows agreeing with the hand verdict.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib.util
import json
import os
import re
import sys
import tempfile
import types
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

PAIRS = Path(__file__).resolve().parent.parent / "tests" / "data" / "grading_pairs.jsonl"


def load_module(name: str, path: Path) -> types.ModuleType:
    """Import the file ``path`` as module ``name``."""
    spec = importlib.util.spec_from_file_location(name, path)
    if spec is None or spec.loader is None:
        raise SystemExit(f"error: cannot import {path}")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@contextlib.contextmanager
def inside(folder: Path, *paths: Path) -> Iterator[None]:
    """Run with ``folder`` as the working directory and ``paths`` first on ``sys.path``."""
    cwd, saved = Path.cwd(), list(sys.path)
    os.chdir(folder)
    sys.path[:0] = [str(p) for p in paths]
    try:
        yield
    finally:
        os.chdir(cwd)
        sys.path[:] = saved


def math_v(root: Path, rows: list[dict[str, Any]]) -> list[bool]:
    """MATH-V's ``evaluate()`` on the rows (their ``id`` read from ``source``)."""
    with inside(root, root / "evaluation"):
        module = load_module("math_v_evaluate", root / "evaluation" / "evaluate.py")
        with tempfile.TemporaryDirectory() as tmp:
            answers = Path(tmp) / "answers.jsonl"
            lines = [{"id": re.search(r"test\.jsonl id (\d+)", row["source"]).group(1), "response": row["response"]}
                     for row in rows]
            answers.write_text("".join(json.dumps(line) + "\n" for line in lines), encoding="utf-8")
            module.evaluate(str(answers), regen_answer=True)
            scored = [json.loads(line) for line in answers.read_text(encoding="utf-8").splitlines()]
    sys.modules.pop("utils", None)
    return [bool(line["correct"]) for line in scored]


def gsm8k_v(root: Path, rows: list[dict[str, Any]]) -> list[bool]:
    """GSM8K-V's ``MathEvaluator``: the extracted answer checked against the ground truth."""
    evaluator = load_module("gsm8k_v_math_evaluator", root / "utils" / "math_evaluator.py").MathEvaluator()
    return [evaluator.is_correct(evaluator.extract_answer(row["response"]), row["gold"]) for row in rows]


def hendrycks(root: Path) -> types.ModuleType:
    """lm-evaluation-harness' ``hendrycks_math`` task utilities (``datasets`` is only named in annotations)."""
    if "lm_eval_hendrycks_math" not in sys.modules:
        if "datasets" not in sys.modules and importlib.util.find_spec("datasets") is None:
            sys.modules["datasets"] = types.SimpleNamespace(Dataset=object)
        path = root / "lm_eval" / "tasks" / "hendrycks_math" / "utils.py"
        sys.modules["lm_eval_hendrycks_math"] = load_module("lm_eval_hendrycks_math", path)
    return sys.modules["lm_eval_hendrycks_math"]


def last_box(module: types.ModuleType, response: str) -> str | None:
    """The content of the response's last ``\\boxed{}``, read with the harness' helpers."""
    boxed = module.last_boxed_only_string(response)
    return module.remove_boxed(boxed) if boxed and boxed.startswith("\\boxed{") else None


def lm_eval_math(root: Path, rows: list[dict[str, Any]]) -> list[bool]:
    """The ``hendrycks_math500`` task's ``process_results`` (``exact_match``: the text between the first and
    last ``$`` against the solution's boxed answer)."""
    module = hendrycks(root)
    return [module.process_results({"solution": f"\\boxed{{{row['gold']}}}"}, [row["response"]])["exact_match"] == 1
            for row in rows]


def math_is_equiv(root: Path, rows: list[dict[str, Any]]) -> list[bool]:
    """MATH's ``is_equiv`` (the harness' copy) on the last ``\\boxed{}``, as the MATH paper scores."""
    module = hendrycks(root)
    return [(given := last_box(module, row["response"])) is not None and module.is_equiv(given, row["gold"])
            for row in rows]


def prm800k(root: Path, harness: Path, rows: list[dict[str, Any]]) -> list[bool]:
    """prm800k's ``grade_answer`` on the last ``\\boxed{}`` of each response."""
    module = hendrycks(harness)
    with inside(root / "prm800k", root / "prm800k"):
        grader = load_module("prm800k_grader", root / "prm800k" / "grading" / "grader.py")
    return [(given := last_box(module, row["response"])) is not None and bool(grader.grade_answer(given, row["gold"]))
            for row in rows]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pairs", type=Path, default=PAIRS, help="the hand-graded table (JSONL)")
    parser.add_argument("--math-v", type=Path, help="checkout of mathllm/MATH-V")
    parser.add_argument("--gsm8k-v", type=Path, help="checkout of ZJU-REAL/GSM8K-V")
    parser.add_argument("--lm-eval", type=Path, help="checkout of EleutherAI/lm-evaluation-harness")
    parser.add_argument("--prm800k", type=Path, help="checkout of openai/prm800k (needs --lm-eval too)")
    parser.add_argument("--show", action="store_true", help="list the rows where a scorer disagrees")
    args = parser.parse_args(argv)
    for option in ("math_v", "gsm8k_v", "lm_eval", "prm800k"):
        folder = getattr(args, option)
        if folder is not None and not folder.is_dir():
            parser.error(f"--{option.replace('_', '-')} {folder}: not a directory")
    if args.prm800k is not None and args.lm_eval is None:
        parser.error("--prm800k needs --lm-eval (the last \\boxed{} is read with the harness' helper)")
    pairs = [json.loads(line) for line in args.pairs.read_text(encoding="utf-8").splitlines() if line.strip()]
    scorers: list[tuple[str, str, Callable[[list[dict[str, Any]]], list[bool]]]] = []
    if args.math_v:
        scorers.append(("mathvision", "MATH-V evaluation/evaluate.py", lambda rows: math_v(args.math_v, rows)))
    if args.gsm8k_v:
        scorers.append(("gsm8k-v", "GSM8K-V MathEvaluator", lambda rows: gsm8k_v(args.gsm8k_v, rows)))
    if args.lm_eval:
        scorers.append(("math500", "lm-eval hendrycks_math500", lambda rows: lm_eval_math(args.lm_eval, rows)))
        scorers.append(("math500", "MATH is_equiv, last box", lambda rows: math_is_equiv(args.lm_eval, rows)))
    if args.prm800k:
        scorers.append(("math500", "prm800k grade_answer", lambda rows: prm800k(args.prm800k, args.lm_eval, rows)))
    if not scorers:
        parser.error("give at least one checkout (--math-v, --gsm8k-v, --lm-eval, --prm800k)")
    for benchmark, name, score in scorers:
        rows = [row for row in pairs if row["benchmark"] == benchmark]
        verdicts = score(rows)
        agree = sum(v == row["verdict"] for v, row in zip(verdicts, rows))
        print(f"{benchmark:11} {name:30} {agree}/{len(rows)} agree with the hand verdicts")
        if args.show:
            for v, row in zip(verdicts, rows):
                if v != row["verdict"]:
                    print(f"    scorer {v!s:5} hand {row['verdict']!s:5} gold {row['gold']!r}: "
                          f"{row['response'][-90:]!r}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
