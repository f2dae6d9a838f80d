r"""Grading: whether a model's free-text answer reaches a benchmark's reference answer, as a careful human judges it.

Example:
    >>> from moehooks.grading import grade, grade_detail
    >>> grade(r"... so the area is \boxed{113.1 \text{ cm}^2}", r"Area $=113.1 \mathrm{~cm}^{2}$")
    True
    >>> grade("Hence the correct option is **B**.", "B", ["4", "10^-4 eV", "6", "8"])
    True
    >>> grade(r"\boxed{10^{-4} \text{ eV}}", "B", ["4", "10^-4 eV", "6", "8"])
    True
    >>> grade_detail(r"\boxed{100}", "A", ["10", "20", "30", "40"])
    (False, None)

The final answer is read from answer-shaped places only: the last ``\boxed{}`` or a later "answer is" /
"answer:" / "correct option is" / "I choose", else the last line when it is short or ends a sentence with a value
(:func:`extract_answer`).

Multiple choice (``choices`` given, or a reference that is an option letter such as ``B``, ``(C)``,
``\text{(C)}`` or MathVerse's two-letter ``C\nD``): the prediction commits to a letter when its final answer is
the letter (``B``, ``(B)``, ``**B**``), starts with it as a label (``(B) 12``, ``B) green``), names it
(``Option B``, ``Shape B``), or equals the text of exactly one option (compared as answers are, below; a
substring is not enough, and no letter inside a word counts).

Free form: the answers are equal after normalisation (LaTeX spacing, ``\text{}``, ``\dfrac``, ``$``,
thousands separators, case), or ``math_verify`` finds them equivalent (``\frac{1}{2}`` = ``0.5``, intervals,
tuples, matrices; numbers compare as numbers, so ``100`` != ``10``; words only as text, ``ESA`` != ``ASE``), or they are after removing labels
(``Area =``, ``x \in``), units (``\mathrm{~cm}^{2}``, ``dollars``, ``km/h``, ``\text{ eV}``), degree signs
(``315^\circ T``, mojibake ``Â°`` / ``掳``) and percent signs from both (:func:`strip_units`), unless both carry
different known units (``4.4 cm`` is not ``4.4 m``, ``10 m/s`` is not ``10 km/h``); decimals agree when they
do to the fewer places of the two (``452.39`` reaches ``452.389``). The hand-graded table
``tests/data/grading_pairs.jsonl`` holds each benchmark's real answer forms with the verdicts this module must
reach.
"""

from __future__ import annotations

import re
import string
import threading
from collections.abc import Sequence
from decimal import ROUND_HALF_UP, Decimal

__all__ = ["answer_letters", "extract_answer", "grade", "grade_detail", "normalize_answer", "strip_units"]


def _last_braced(text: str, commands: Sequence[str]) -> tuple[int, str] | None:
    r"""``(position, content)`` of the last ``\cmd{...}`` (balanced braces) for any of ``commands``."""
    starts = [(m.start(), m.end()) for m in re.finditer("|".join(re.escape(c) + r"\s*\{" for c in commands), text)]
    for position, start in reversed(starts):
        depth = 1
        for pos in range(start, len(text)):
            depth += {"{": 1, "}": -1}.get(text[pos], 0)
            if depth == 0:
                return position, text[start:pos].strip()
    return None


_ANSWER_IS = re.compile(
    r"(?:(?:answers?|option|choice)(?:\*\*)?\s*(?:is|are|:)|\bI (?:choose|pick|select))\s*:?\s*(.+)", re.IGNORECASE
)
_SENTENCE_END = re.compile(r"\.\s+(?=[A-Z])")
_MATH_SEGMENT = re.compile(r"\$+([^$]+)\$+|\\\((.+?)\\\)|\\\[(.+?)\\\]")
_NUMBER = re.compile(r"-?\d[\d,]*(?:\.\d+)?(?:/\d+)?|-?\.\d+")
_SHORT_LINE = 30


def _final_span(text: str) -> tuple[str, str] | None:
    r"""``(span, source)``: the last answer statement, a boxed content (``"boxed"``) or what follows an "answer
    is" up to the end of its sentence (``"answer_is"``), whichever comes later (``\boxed{45}. The answer is:
    (E)`` commits to E; a later "answer is" followed by a long or ``=`` sentence is a check, not an answer);
    else the last non-empty line (``"line"``)."""
    boxed = _last_braced(text, (r"\boxed", r"\fbox"))
    stated = list(_ANSWER_IS.finditer(text))
    span = _unbold(_SENTENCE_END.split(stated[-1].group(1))[0]) if stated else ""
    if stated and (boxed is None or (stated[-1].start() > boxed[0] and len(span) <= _SHORT_LINE and "=" not in span)):
        return span, "answer_is"
    if boxed is not None:
        return boxed[1], "boxed"
    lines = [_unbold(line) for line in text.splitlines() if _unbold(line)]
    return (lines[-1], "line") if lines else None


def _unbold(text: str) -> str:
    """``text`` without surrounding whitespace and Markdown emphasis (``**B**`` -> ``B``)."""
    return text.strip().strip("*_").strip()


def _line_value(line: str) -> str | None:
    """The answer a final line gives without a box or "answer is": the right-hand side of its last ``=`` when
    that is a value, the number it ends with (units aside: ``She earns 460 dollars.``), the last number of a
    line ending a sentence, the whole line when short, else ``None`` (a line cut off mid-sentence gives no
    answer)."""
    tail = line.rsplit("=", 1)[-1].strip().rstrip(".").strip()
    if _VALUE_THEN_UNIT.fullmatch(tail):
        return _NUMBER.findall(tail)[0]
    if "\\" in tail:
        return tail
    ending = re.search(r"(?:^|[\s$])(" + _NUMBER.pattern + r")$", _without_trailing_units(tail))
    if ending:
        return ending.group(1)
    numbers = _NUMBER.findall(line)
    if numbers and line.rstrip().endswith((".", "!")):
        return numbers[-1]
    return tail if len(line) <= _SHORT_LINE else None


def extract_answer(prediction: str) -> str | None:
    r"""Read the final answer of a free-form prediction.

    The last answer statement wins: the last ``\boxed{}`` as is, or the text after an "answer is" that
    follows it (its last ``$...$`` segment if any) up to the end of that sentence. Else the final line: its
    last math segment and the right-hand side of its last ``=``; for plain text the value it ends with, the
    whole line when it is short, or ``None`` for a line cut off mid-sentence.

    Example:
        >>> extract_answer("so x = 3, hence \\boxed{\\frac{1}{2}}")
        '\\frac{1}{2}'
        >>> extract_answer("Final Answer: The final answer is $7$. I hope it is correct.")
        '7'
        >>> extract_answer("She pays 3 * 6 = 18 dollars.")
        '18'
        >>> extract_answer("Step 3: we multiply the cost of each apple by") is None
        True
    """
    found = _final_span(prediction)
    if found is None:
        return None
    span, source = found
    if source != "boxed":
        segments = [next(g for g in m.groups() if g is not None) for m in _MATH_SEGMENT.finditer(span)]
        if segments:
            span = segments[-1]
            if source == "line":
                span = span.rsplit("=", 1)[-1]
        elif source == "line":
            span = _line_value(span) or ""
    span = span.strip().rstrip(".").strip()
    return span or None


# ---------------------------------------------------------------------------------------------------------
# Normalisation

_LATEX_NOISE = re.compile(r"\\left|\\right|\\!|\\,|\\;|\\:|\\ |\\quad|\^\{?\\circ\}?|\\%|%|\$")
_TEXT_COMMAND = re.compile(r"\\(?:text|textbf|textrm|mathrm|mathbf|mbox|operatorname)\s*\{([^{}]*)\}")
_SUPERSCRIPTS = {"²": "^2", "³": "^3", "−": "-", "\u00a0": " "}


def _clean(text: str) -> str:
    r"""``text`` as LaTeX a parser reads: a form feed put back as ``\f`` (``\x0crac`` in MATH-V's answers), a
    boxed reference unwrapped, ``\dfrac`` as ``\frac``, a plain-text exponent braced (``10^-4`` ->
    ``10^{-4}``), thousands separators (``10,\!080``, ``1,000``) removed, ``$`` and Unicode superscripts replaced."""
    text = text.replace("\x0c", "\\f")
    boxed = _last_braced(text, (r"\boxed",))
    if boxed is not None:
        text = boxed[1]
    for old, new in _SUPERSCRIPTS.items():
        text = text.replace(old, new)
    text = text.replace(r"\dfrac", r"\frac").replace(r"\tfrac", r"\frac").replace("\\$", "").replace("$", "")
    text = re.sub(r",\\!\s*", ",", text)
    text = re.sub(r"(?<![\d.(\[,])(\d{1,3}(?:,\d{3})+)(?![\d,)\]])", lambda m: m.group(1).replace(",", ""), text)
    return re.sub(r"\^\s*(-?\d+(?:\.\d+)?)", r"^{\1}", text).strip()


def normalize_answer(text: str) -> str:
    r"""Normalise an answer for exact comparison (LaTeX spacing, ``\text{}``, ``$``, degrees, case, commas).

    Example:
        >>> normalize_answer("\\text{ Evelyn }.")
        'evelyn'
        >>> normalize_answer("1,000") == normalize_answer("1000")
        True
        >>> normalize_answer("10^{-4} \\text{ eV}") == normalize_answer("10^-4 eV")
        True
    """
    text = _TEXT_COMMAND.sub(r"\1", _clean(text))
    return re.sub(r"\s+", "", _LATEX_NOISE.sub("", text)).rstrip(".").lower()


_DEGREES = re.compile(r"(?:\^\s*\{?\\circ\}?|\\circ|\\degree|Â°|掳|°|\{degrees?\}|\\text\s*\{\s*degrees?\s*\})"
                      r"(?:\s*T\b)?")
_LABEL = re.compile(r"^\s*(?:[A-Za-z][A-Za-z\s.,()_{}\\]*?|\\[a-z]+\s*\{[A-Za-z\s]*\}[A-Za-z\s.]*?)\s*"
                    r"(?:=|\\in\b)\s*(?=\S)")
_RIGHT_LABEL = re.compile(r"^(.*\d.*?)\s*=\s*[A-Za-z]\s*$")
_UNIT_COMMAND = re.compile(r"\\(?:mathrm|text|textrm|mbox)\s*\{\s*~?\s*([A-Za-z][A-Za-z\s./]*)\}(?:\s*\^\s*\{?\d\}?)?")
_UNIT_WORDS = (
    "square", "cubic", "units?", "dollars?", "cents?", "metres?", "meters?", "centimet(?:er|re)s?",
    "millimet(?:er|re)s?", "kilomet(?:er|re)s?", "lit(?:er|re)s?", "inch(?:es)?", "feet", "foot", "ft", "yards?",
    "miles?", "mph", "hours?", "hrs?", "minutes?", "mins?", "seconds?", "secs?", "days?", "weeks?", "years?",
    "degrees?", "grams?", "kilograms?", "pounds?", "lbs?", "ounces?", "oz", "km", "cm", "mm", "kg", "mg", "ml", "sq",
    "eV", "keV", "MeV", "GeV", "nm", "Hz", "kHz", "MHz", "mol", "[km]?J",
)
_TRAILING_UNIT = re.compile(
    r"(?:(?<=\s)|(?<=\d)|(?<=\}))~?(?:" + "|".join(_UNIT_WORDS) + r")(?:\s*/\s*(?:[a-zA-Z]+))?"
    r"(?:\s*\^\s*\{?-?\d\}?)?\s*$",
    re.IGNORECASE,
)
_SHORT_UNIT = re.compile(r"(?<=\d)\s*~?[mgshlL](?:\s*/\s*[a-z]+)?(?:\s*\^\s*\{?\d\}?)?\s*$")
_VALUE_THEN_UNIT = re.compile(
    r"\s*\$?\s*(-?(?:\d[\d,]*(?:\.\d+)?|\.\d+)(?:\s*/\s*\d+(?:\.\d+)?)?)\s*~?\s*"
    r"(?:[A-Za-z][A-Za-z./]*(?:\s*\^\s*\{?\d\}?)?\s*)*"
)
_UNIT_SPELLINGS = {
    "mm": ("mm", "millimeter", "millimetre"), "cm": ("cm", "centimeter", "centimetre"), "m": ("m", "meter", "metre"),
    "km": ("km", "kilometer", "kilometre"), "g": ("g", "gram"), "kg": ("kg", "kilogram"), "mg": ("mg", "milligram"),
    "l": ("l", "liter", "litre"), "ml": ("ml", "milliliter", "millilitre"), "h": ("h", "hr", "hour"),
    "min": ("min", "minute"), "s": ("s", "sec", "second"), "mi": ("mile",), "ft": ("ft", "foot", "feet"),
    "in": ("inch",), "yd": ("yard",), "$": ("dollar",), "cent": ("cent",), "day": ("day",), "week": ("week",),
    "year": ("year",), "lb": ("lb", "pound"), "oz": ("oz", "ounce"), "ev": ("ev",), "kev": ("kev",),
    "mev": ("mev",), "gev": ("gev",), "mph": ("mph",),
}
_UNIT_NAME = {spelling: name for name, spellings in _UNIT_SPELLINGS.items() for spelling in spellings}
_GENERIC_UNITS = {"unit", "square", "cubic", "sq"}


def _without_trailing_units(text: str, units: list[str] | None = None) -> str:
    """``text`` without the unit words it ends with (``30 km/h`` -> ``30``), each appended to ``units``."""
    while True:
        match = _TRAILING_UNIT.search(text) or _SHORT_UNIT.search(text)
        if match is None or not text[:match.start()].strip():
            return text
        if units is not None:
            units.append(match.group(0))
        text = text[:match.start()].strip()


def _unit_key(word: str) -> str | None:
    """The canonical name of a unit word (``centimetres`` -> ``cm``), ``""`` for a generic one (``units``,
    ``square``), ``None`` for a word that is not a known unit."""
    word = word.lower()
    for candidate in (word, word[:-1], word[:-2]):
        if candidate in _GENERIC_UNITS:
            return ""
        if candidate in _UNIT_NAME and (candidate == word or len(word) > 2):
            return _UNIT_NAME[candidate]
    return None


def _split_unit(text: str) -> tuple[str, str | None]:
    """``(value, unit)`` of an answer: labels (``Area =``, ``x \\in``, ``5=s``), units, degree and percent
    signs and currency taken off. The unit is its canonical name (``\\mathrm{~cm}^{2}``, ``cm²`` and
    ``centimetres`` are all ``cm``; ``km/h``), ``""`` when none, ``None`` when it is not a known unit. Text
    that is only words keeps them as its value."""
    value = _DEGREES.sub("", _clean(text)).replace(r"\%", "").replace("%", "")
    while (label := _LABEL.match(value)) and not re.search(r"[\d+\-^*/]", label.group(0)):
        value = value[label.end():]
    right = _RIGHT_LABEL.match(value)
    value = right.group(1) if right else value
    units = [m.group(1) for m in _UNIT_COMMAND.finditer(value)]
    value = _without_trailing_units(_UNIT_COMMAND.sub("", value).strip(), units).rstrip(".").strip()
    if not re.search(r"[\d\\]", value):
        return _clean(text), ""
    words = re.findall(r"[A-Za-z]+|/", re.sub(r"\^\s*\{?-?\d\}?", "", " ".join(units)))
    keys = ["/" if word == "/" else _unit_key(word) for word in words]
    return value, None if None in keys else "".join(k for k in keys if k).strip("/")


def strip_units(text: str) -> str:
    r"""An answer without its label, unit, degree and percent sign, as free-form answers of MathVerse, MATH-500
    and GSM8K-V carry them: ``Area $=113.1 \mathrm{~cm}^{2}$``, ``4.4 m``, ``315^\circ T`` (a bearing),
    ``60Â°`` (mojibake), ``5.4 \text{ cents}``. Text without a number keeps its words.

    Example:
        >>> strip_units("Area $=113.1 \\mathrm{~cm}^{2}$")
        '113.1'
        >>> strip_units("315^\\circ T"), strip_units("4.4 m"), strip_units("x = \\frac{1}{2}")
        ('315', '4.4', '\\frac{1}{2}')
        >>> strip_units("30 km/h"), strip_units("Bugs Bunny")
        ('30', 'Bugs Bunny')
    """
    return _split_unit(text)[0]


def _math_equal(prediction: str, answer: str) -> bool:
    """``math_verify`` equivalence of two answer strings; ``False`` when it cannot parse or raises."""
    from math_verify import parse, verify

    timeout = 5 if threading.current_thread() is threading.main_thread() else None
    try:
        gold = parse(f"${answer}$", parsing_timeout=timeout)
        target = parse(f"${prediction}$", parsing_timeout=timeout)
        return bool(gold and target and verify(gold, target, timeout_seconds=timeout))
    except Exception:  # math_verify raises assorted sympy/timeout errors on odd inputs: fall back to exact match
        return False


def _rounded_equal(prediction: str, answer: str) -> bool:
    """Two decimals that agree to the fewer decimal places of the two (``452.39`` and ``452.389``)."""
    digits = [re.fullmatch(r"-?\d+\.(\d+)", text) for text in (prediction, answer)]
    if not all(digits):
        return False
    step = Decimal(1).scaleb(-min(len(d.group(1)) for d in digits if d))
    return Decimal(prediction).quantize(step, ROUND_HALF_UP) == Decimal(answer).quantize(step, ROUND_HALF_UP)


def _wordy(text: str) -> bool:
    """Whether ``text`` holds a word of three letters or more outside LaTeX commands (``Evelyn``,
    ``1,2,4-trimethylbenzene``): ``math_verify`` would read it as a product of symbols (``ESA`` = ``ASE``)."""
    return re.search(r"[A-Za-z]{3,}", re.sub(r"\\(?:begin|end)\{\w+\*?\}|\\[A-Za-z]+", "", text)) is not None


def _equal(prediction: str, answer: str) -> bool:
    """Equal after normalisation, as decimals to the fewer places, or (for math, not words) by ``math_verify``."""
    normalized, gold = normalize_answer(prediction), normalize_answer(answer)
    if normalized == gold or _rounded_equal(normalized, gold):
        return True
    return not (_wordy(prediction) or _wordy(answer)) and _math_equal(_clean(prediction), _clean(answer))


def _same_answer(prediction: str, answer: str) -> bool:
    """Whether two free-form answers agree: as they are, or without labels and units on both sides; never when
    both carry different known units."""
    if not prediction.strip():
        return False
    (value, unit), (gold, gold_unit) = _split_unit(prediction), _split_unit(answer)
    if unit and gold_unit and unit != gold_unit:
        return False
    if _equal(prediction, answer):
        return True
    return (value, gold) != (_clean(prediction), _clean(answer)) and _equal(value, gold)


# ---------------------------------------------------------------------------------------------------------
# Multiple choice

_NAMED_LETTER = re.compile(
    r"(?i:option|choice|answer|shape|figure|fig\.|graph|picture|image|diagram|letter)(?:\s+\(?|\s*\()([A-Z])\)?"
    r"(?![A-Za-z0-9])"
)
_LABELLED_LETTER = re.compile(r"(?:\(([A-Z])\)|([A-Z])[).:,;])(?=\s|$)|([A-Z])(?=\s+(?:because|since)\b)")
_LETTER_LIST = re.compile(r"\(?[A-Z]\)?(?:\s*(?:,|;|&|/|\\text\{\s*and\s*\}|and|\s)\s*\(?[A-Z]\)?)*")


def _plain(span: str) -> str:
    """An answer span as plain text: ``\\text{}`` unwrapped, no ``$``, no Markdown emphasis, no final period."""
    for _ in range(2):
        span = _TEXT_COMMAND.sub(r"\1", span)
    span = span.replace("$", "").replace("\\(", "").replace("\\)", "")
    return re.sub(r"^[\s*_]+|[\s*_.]+$", "", span)


def _read_letters(span: str, allowed: str) -> frozenset[str] | None:
    """The option letters an answer span names (see the module docstring), or ``None``."""
    span = _plain(span)
    if _LETTER_LIST.fullmatch(span):
        letters = frozenset(re.findall(r"(?<![A-Za-z])[A-Z](?![A-Za-z])", span))
        return letters if letters <= set(allowed) else None
    match = _LABELLED_LETTER.match(span) or _NAMED_LETTER.match(span)
    letter = match and next(g for g in match.groups() if g)
    return frozenset(letter) if letter and letter in allowed else None


def _choice_letters(prediction: str, choices: Sequence[str] | None) -> frozenset[str] | None:
    """The option letters a prediction commits to (by letter or by option text), or ``None``."""
    found = _final_span(prediction)
    if found is None:
        return None
    span = found[0]
    allowed = string.ascii_uppercase[: len(choices)] if choices else string.ascii_uppercase
    letters = _read_letters(span, allowed)
    if letters is not None or not choices:
        return letters
    value = extract_answer(prediction) or ""
    matching = [letter for letter, option in zip(allowed, choices) if _same_answer(value, option)]
    return frozenset(matching) if len(matching) == 1 else None


def answer_letters(answer: str, choices: Sequence[str] | None = None) -> frozenset[str] | None:
    """The reference's option letters: a letter (``B``, ``(C)``, ``\\text{(C)}``, ``C\\nD``) or, with
    ``choices``, an option's text; ``None`` for a free-form reference.

    Example:
        >>> sorted(answer_letters("C\\nD")), answer_letters("green", ["red", "green"]), answer_letters("12")
        (['C', 'D'], frozenset({'B'}), None)

    Raises:
        ValueError: with ``choices``, the answer is neither a valid letter nor one of the choices.
    """
    letters = string.ascii_uppercase[: len(choices)] if choices else string.ascii_uppercase
    span = _plain(answer)
    if _LETTER_LIST.fullmatch(span) and (choices or len(span) <= 3 or "\n" in answer):
        found = frozenset(re.findall(r"[A-Z]", span))
        if found <= set(letters):
            return found
    if not choices:
        return None
    options = [normalize_answer(c) for c in choices]
    if normalize_answer(answer) in options:
        return frozenset(letters[options.index(normalize_answer(answer))])
    raise ValueError(f"answer {answer!r} is neither a letter in {letters} nor one of the choices {list(choices)!r}")


def grade_detail(prediction: str, answer: str, choices: Sequence[str] | None = None) -> tuple[bool, str | None]:
    """Grade a prediction and return ``(correct, extracted answer)``; see :func:`grade`. For multiple choice the
    extracted answer is the letter(s) read (``"B"``, ``"CD"``) or ``None``.

    Example:
        >>> grade_detail("The answer is (B).", "B", ["1", "2", "3", "4"])
        (True, 'B')
    """
    gold = answer_letters(answer, choices)
    if gold is not None:
        letters = _choice_letters(prediction, choices)
        if letters is not None or choices:
            return letters == gold, "".join(sorted(letters)) if letters else None
    extracted = extract_answer(prediction)
    if extracted is None:
        return False, None
    return _same_answer(extracted, answer), extracted


def grade(prediction: str, answer: str, choices: Sequence[str] | None = None) -> bool:
    r"""Whether a prediction reaches the reference answer, by the rules of this module's docstring.

    With ``choices`` (option texts, lettered A, B, ...) the answer is a letter or one option's text; without
    them a letter answer (``B``, ``(C)``, ``C\nD``) is multiple choice too, any other answer free form.

    Example:
        >>> grade("so the result is \\boxed{0.5}", "\\frac{1}{2}")
        True
        >>> grade("The answer is C", "A", ["red", "green", "blue", "black"])
        False
        >>> grade("She earns 460 dollars.", "460")
        True

    Raises:
        ValueError: with ``choices``, the answer is neither a valid letter nor one of the choices.
    """
    return grade_detail(prediction, answer, choices)[0]
