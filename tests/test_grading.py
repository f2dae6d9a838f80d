r"""Tests of moehooks.grading against answers graded by hand.

The oracle is ``tests/data/grading_pairs.jsonl``: one JSON object a line with ``benchmark``, ``response``,
``gold``, ``choices`` (the option texts the benchmark's recipe passes, or ``null``), ``verdict`` (decided by hand,
reading the response as a careful human grader would), ``note`` (why, where it is not obvious) and ``source``
(where the gold answer comes from). Gold answers are the published ones: GitHub ``mathllm/MATH-V`` at a1f5cc3
(``data/test.jsonl``, with real model responses from its ``outputs/``), ``ZrrSkywalker/MathVerse`` at 937b090
(``data/testmini_text_only.json``, whose answers its Vision Only items share), ``ZJU-REAL/GSM8K-V`` at 4033cb0
(``data/metadata``), MATH-500's ``test.jsonl`` (the copy in ``MobileLLM/BudgetThinker``
``evaluation/data/math500``, answers as published), the lab data; GPQA-Diamond is gated, so its rows have
options written in its style. Other responses are written by hand in the forms models produce.
"""

from __future__ import annotations

import json
import string
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from moehooks import evaluate, grading
from moehooks.grading import extract_answer, grade, grade_detail

PAIRS = [json.loads(line) for line in (Path(__file__).parent / "data" / "grading_pairs.jsonl").open(encoding="utf-8")]

KNOWN_DISAGREEMENTS = {
    ("45^2", r"\boxed{45}\text{ square units}"): "MATH-V's published answer '45^2' is its solution's '45 units^2' "
                                                "with the unit lost; a grader taking it as written reads 2025",
}
"""(gold, part of the response) of the table's rows where the grader and the hand verdict differ, with why."""

CHOICES = ["red", "green", "blue", "black"]
LITERAL = list("ABCDE")


def _known(row: dict[str, Any]) -> str | None:
    return next((why for (gold, part), why in KNOWN_DISAGREEMENTS.items()
                 if row["gold"] == gold and part in row["response"]), None)


def _pair_params() -> list[Any]:
    params = []
    for number, row in enumerate(PAIRS, start=1):
        why = _known(row)
        marks = [pytest.mark.xfail(strict=True, reason=why)] if why else []
        params.append(pytest.param(row, id=f"{number}-{row['benchmark']}", marks=marks))
    return params


def test_the_table_covers_every_benchmark_with_both_verdicts() -> None:
    assert len(PAIRS) >= 150
    for benchmark in ("math500", "gpqa", "mathverse", "mathvision", "gsm8k-v", "lab"):
        verdicts = {row["verdict"] for row in PAIRS if row["benchmark"] == benchmark}
        assert verdicts == {True, False}, benchmark
    assert all(row["source"] for row in PAIRS)
    known = [why for row in PAIRS if (why := _known(row))]
    assert sorted(known) == sorted(KNOWN_DISAGREEMENTS.values())


@pytest.mark.parametrize("row", _pair_params())
def test_grading_agrees_with_the_hand_verdict(row: dict[str, Any]) -> None:
    assert grade(row["response"], row["gold"], row["choices"]) is row["verdict"], row["note"]


def test_evaluate_reexports_grading() -> None:
    for name in ("grade", "grade_detail", "extract_answer", "normalize_answer", "strip_units"):
        assert getattr(evaluate, name) is getattr(grading, name)


# ------------------------------------------------------------------------------------------------ properties

_NUMBERS = st.one_of(
    st.integers(-10**6, 10**6).map(str),
    st.decimals(-1000, 1000, places=2, allow_nan=False, allow_infinity=False).map(str),
    st.tuples(st.integers(1, 99), st.integers(2, 99)).map(lambda t: rf"\frac{{{t[0]}}}{{{t[1]}}}"),
)
_FREE_FORM_GOLDS = sorted({row["gold"] for row in PAIRS if row["choices"] is None
                           and grading.answer_letters(row["gold"]) is None and row["gold"].isprintable()})


@given(st.one_of(_NUMBERS, st.sampled_from(_FREE_FORM_GOLDS)))
@settings(max_examples=80, deadline=None)
def test_a_boxed_answer_is_graded_correct(answer: str) -> None:
    """``grade(\\boxed{x}, x)`` for numbers, fractions and every published free-form answer of the table (but
    MATH-V's one with a form feed, which no model writes)."""
    assert grade(rf"Reasoning first. So the result is $\boxed{{{answer}}}$.", answer)


@given(st.integers(-10**7, 10**7), st.integers(-10**7, 10**7))
@settings(max_examples=60, deadline=None)
def test_numbers_compare_as_numbers(a: int, b: int) -> None:
    """Integers are equal only when equal, whatever thousands commas or units the prediction adds."""
    assert grade(rf"\boxed{{{a:,}}}", str(b)) is (a == b)
    assert grade(f"The total is {a} dollars.", str(b)) is (a == b)


_UNITS = ["cm", "m", "km", "kg", "g", "dollars", "km/h", "eV"]


@given(st.decimals(0, 1000, places=1, allow_nan=False, allow_infinity=False), st.sampled_from(_UNITS),
       st.sampled_from(_UNITS))
@settings(max_examples=60, deadline=None)
def test_units(value: Any, unit: str, other: str) -> None:
    """A unit on one side only is accepted; two different units are not."""
    assert grade(rf"\boxed{{{value} \text{{ {unit}}}}}", str(value))
    assert grade(rf"\boxed{{{value}}}", f"{value} {unit}")
    assert grade(rf"\boxed{{{value} \text{{ {unit}}}}}", f"{value} {other}") is (unit == other)


_WORDS = st.text(alphabet=string.ascii_letters, min_size=2, max_size=12)


@given(st.lists(_WORDS, min_size=1, max_size=6).map(" ".join), st.sampled_from(LITERAL),
       st.sampled_from(["{}", r"\boxed{{{}}}", "The answer: {}", "**{}**"]))
@settings(max_examples=150, deadline=None)
def test_a_letter_inside_a_word_is_never_a_choice(text: str, letter: str, form: str) -> None:
    """Words (two letters or more) never name an option, even when the options are literally A-E."""
    prediction = form.format(text)
    assert grade_detail(prediction, letter, LITERAL) == (False, None)
    assert not grade(prediction, letter)


@given(st.sampled_from(LITERAL), st.sampled_from(["{}", "({})", r"\boxed{{{}}}", r"\boxed{{\text{{({})}}}}",
                                                 "The answer is {}.", "the correct option is **{}**",
                                                 r"\boxed{{Shape {}}}", "Answer: ({}) 12"]))
@settings(deadline=None)
def test_a_letter_in_an_answer_shaped_place_is_read(letter: str, form: str) -> None:
    prediction = form.format(letter)
    for gold in LITERAL:
        assert grade_detail(prediction, gold, LITERAL) == (gold == letter, letter)


# ------------------------------------------------------------------------------------------------ examples


@pytest.mark.parametrize(
    ("prediction", "answer"),
    [
        (r"so the result is \boxed{\frac{1}{2}}", "0.5"),
        (r"\boxed{0.5}", r"\frac{1}{2}"),
        (r"first 3, then \boxed{7}", "7"),
        ("The answer is $7$.", "7"),
        ("3 + 4 = 7", "7"),
        (r"\boxed{\text{Evelyn}}", "Evelyn"),
        ("The answer is 1,000.", "1000"),
        (r"\boxed{(3, \frac{\pi}{2})}", r"\left( 3, \frac{\pi}{2} \right)"),
        (r"\boxed{B}", "(B)"),
    ],
)
def test_grade_accepts_equivalent_answers(prediction: str, answer: str) -> None:
    assert grade(prediction, answer)


@pytest.mark.parametrize(
    ("prediction", "answer"),
    [
        (r"\boxed{8}", "7"),
        (r"\boxed{\frac{1}{3}}", "0.5"),
        ("The answer is 12", "2"),
        (r"\boxed{7} was wrong, the answer is \boxed{9}", "7"),
        ("", "7"),
        ("I do not know", "7"),
        (r"\boxed{C}", "B"),
        ("ASE", "ESA"),
    ],
)
def test_grade_rejects_wrong_answers(prediction: str, answer: str) -> None:
    assert not grade(prediction, answer)


@pytest.mark.parametrize(
    ("prediction", "answer", "correct"),
    [
        ("The answer is (B).", "B", True),
        (r"\boxed{C}", "blue", True),
        ("B) green", "green", True),
        ("After thinking, I choose green", "B", True),
        ("**Answer: B**", "green", True),
        ("The correct answer is **(C) blue**.", "C", True),
        (r"\boxed{A}", "B", False),
        ("The answer is blue", "B", False),
        ("no idea", "A", False),
        (r"\boxed{greenish}", "B", False),
    ],
)
def test_grade_multiple_choice(prediction: str, answer: str, correct: bool) -> None:
    assert grade(prediction, answer, CHOICES) is correct


def test_multiple_choice_answer_outside_the_choices_is_an_error() -> None:
    with pytest.raises(ValueError, match="purple"):
        grade("A", "purple", CHOICES)


def test_exact_match_fallback_when_math_verify_fails(monkeypatch: pytest.MonkeyPatch) -> None:
    import math_verify

    def broken(*args: Any, **kwargs: Any) -> Any:
        raise RuntimeError("parser crashed")

    monkeypatch.setattr(math_verify, "parse", broken)
    assert grade(r"\boxed{\text{ Evelyn }}", "evelyn")
    assert grade(r"\boxed{\dfrac{1}{2}}", r"\frac{1}{2}")
    assert not grade(r"\boxed{\frac{1}{2}}", "0.5")


@pytest.mark.parametrize(
    ("prediction", "extracted"),
    [
        (r"x = 1 and \boxed{\frac{a}{b}} then", r"\frac{a}{b}"),
        (r"\boxed{1} hmm, \boxed{\sqrt{2}}", r"\sqrt{2}"),
        ("So the answer is: $x^2 + 1$.", "x^2 + 1"),
        ("work\nShe pays 3 * 6 = 18 dollars.", "18"),
        ("**Final answer:** $\\frac{3}{4}$", r"\frac{3}{4}"),
        ("Thus the answer is \\(x = 2\\).", "x = 2"),
        ("**42**", "42"),
        (r"work\nthus y = \frac{3}{4}", r"\frac{3}{4}"),
        ("   \n  ", None),
        (r"\boxed{45 \mathrm{~km}}$.The answer is: (E).", "(E)"),
        ("Final Answer: The final answer is $5$. I hope it is correct.", "5"),
        ("He runs 180 meters per session, so in total he runs", None),
        (r"so \boxed{5}.\n\nTo double-check the answer: 2*5=10, correct.", "5"),
        (r"\boxed{5}. Let me verify the answer: it satisfies both equations given above.", "5"),
    ],
)
def test_extract_answer(prediction: str, extracted: str | None) -> None:
    assert extract_answer(prediction) == extracted
