r"""Page layout of benchmark problems written in LaTeX (MATH-500, GPQA), for :func:`moehooks.render.render`.

Paragraphs wrapped to a page width, display math, math environments and Asymptote code.

    >>> from moehooks.typeset import blocks, to_mathtext
    >>> [kind for kind, _ in blocks(r"Let $x \le 3$. \[x^2 \le 9\] [asy]draw((0,0)--(1,1));[/asy]")]
    ['text', 'display', 'code']
    >>> to_mathtext(r"\dbinom{5}{2} \le n \pmod{7}")
    '\\binom{5}{2} \\leq n \\ (\\mathrm{mod}\\ 7)'

With real LaTeX installed (Debian: ``apt-get install texlive-latex-base dvipng`` puts ``latex`` and ``dvipng``
on PATH) the printed variant is a LaTeX document set in a minipage of the page width and rasterised by
``dvipng`` at :data:`moehooks.render.LATEX_DPI`, and the math of the handwritten variants is drawn by
matplotlib's ``usetex`` (which also wants ``texlive-latex-extra texlive-fonts-recommended cm-super``; tables are
then still laid out here). Without it, math goes through matplotlib's mathtext after :func:`to_mathtext`
rewrites what mathtext lacks (``\le``, ``\dbinom``, ``\pmod``, ``\displaystyle``, ...), and the environments
mathtext has none of (``pmatrix``/``bmatrix``/``vmatrix``/``matrix``, ``cases``, ``array``, ``aligned``) are
laid out as grids of cells here, as are ``tabular`` tables. Text that neither path can typeset raises
:class:`moehooks.render.TypesetError`: it is never drawn as source.
"""

from __future__ import annotations

import re
from collections.abc import Iterator

BLOCK = re.compile(
    r"\[asy\](?P<code>.*?)\[/asy\]"
    r"|\\\[(?P<bracket>.*?)\\\]"
    r"|\$\$(?P<dollars>.*?)\$\$"
    r"|\\begin\{(?P<env>align|equation|gather|eqnarray|multline)(?P<star>\*?)\}(?P<body>.*?)\\end\{(?P=env)(?P=star)\}"
    r"|\\begin\{tabular\}\s*\{[^{}]*\}(?P<table>.*?)\\end\{tabular\}",
    re.DOTALL,
)
INLINE = re.compile(r"(?<!\\)\$(.+?)(?<!\\)\$|\\\((.+?)\\\)", re.DOTALL)
ENVIRONMENT = re.compile(r"\\begin\{(pmatrix|bmatrix|Bmatrix|vmatrix|Vmatrix|matrix|smallmatrix|cases|array|aligned|"
                         r"split|gathered)\}")
DELIMITERS = {"pmatrix": ("(", ")"), "bmatrix": ("[", "]"), "Bmatrix": ("\\{", "\\}"), "vmatrix": ("|", "|"),
              "Vmatrix": ("\\Vert", "\\Vert"), "cases": ("\\{", None)}
"""Left and right delimiters of the environments laid out as grids (none for the others)."""

_MACROS = [
    (r"\\dfrac\b", r"\\frac"), (r"\\tfrac\b", r"\\frac"), (r"\\dbinom\b", r"\\binom"), (r"\\tbinom\b", r"\\binom"),
    (r"\\le\b", r"\\leq"), (r"\\ge\b", r"\\geq"), (r"\\ne\b", r"\\neq"), (r"\\lvert\b", "|"),
    (r"\\rvert\b", "|"), (r"\\lVert\b", r"\\Vert"), (r"\\rVert\b", r"\\Vert"), (r"\\implies\b", r"\\Rightarrow"),
    (r"\\impliedby\b", r"\\Leftarrow"), (r"\\iff\b", r"\\Leftrightarrow"), (r"\\textbf\s*\{", r"\\mathbf{"),
    (r"\\textit\s*\{", r"\\mathit{"), (r"\\emph\s*\{", r"\\mathit{"), (r"\\mbox\s*\{", r"\\text{"),
    (r"\\textrm\s*\{", r"\\text{"), (r"\\bmod\b", r"\\ \\mathrm{mod}\\ "), (r"\\dots[bcmio]?\b", r"\\ldots"),
    (r"\\(?:displaystyle|textstyle|scriptstyle|limits|nolimits|hline|notag|nonumber)\b", ""),
    (r"\\(?:left|right)\s*\.", ""), (r"\\tiny|\\small|\\large|\\Large", ""), (r"\\lbrace\b", r"\\{"),
    (r"\\rbrace\b", r"\\}"), (r"\\varnothing\b", r"\\emptyset"), (r"\\mathrm\s*\{\s*\}", ""),
    (r"\\cfrac\b", r"\\frac"), (r"\\hphantom\b", r"\\phantom"), (r"\\stackrel\b", r"\\overset"),
    (r"\\square\b", r"\\boxdot"), (r"\\(?:hbox|textup|textnormal)\s*\{", r"\\text{"),
    (r"\\textsf\s*\{", r"\\mathsf{"), (r"\\texttt\s*\{", r"\\mathtt{"), (r"\\lnot\b", r"\\neg"),
    (r"\\land\b", r"\\wedge"), (r"\\lor\b", r"\\vee"), (r"\\(frac|binom)\s*(\d)\s*(\d)", r"\\\1{\2}{\3}"),
    (r"\\sqrt\s*(\d)", r"\\sqrt{\1}"), (r"\\[Bb]ig+[lrm]?\b", ""),
]
_WORD_END = re.compile(r"(?<!\\)\\b")
"""``\\b`` in the patterns above, read as: no letter follows (so ``\\le`` never matches inside ``\\left``)."""
_MACRO_RES = [(re.compile(_WORD_END.sub("(?![A-Za-z])", pattern)), replacement) for pattern, replacement in _MACROS]
_TEXT_MACROS = [
    (r"\\\$", "$"), (r"\\%", "%"), (r"\\&", "&"), (r"\\#", "#"), (r"\\_", "_"), (r"~", "\u00a0"), (r"---", "\u2014"),
    (r"--", "\u2013"), (r"``", "\u201c"), (r"''", "\u201d"), (r"\\(?:textbf|textit|emph|text|textrm|mbox|underline)"
                                                                r"\s*\{([^{}]*)\}", r"\1"),
    (r"\\(?:noindent|indent|medskip|bigskip|smallskip|par|centering)\b\s*", ""), (r"\\(?:quad|qquad)\b", "  "),
    (r"\\[hv]space\*?\s*\{[^{}]*\}", " "), (r"\\(?:begin|end)\{center\}", ""),
    (r"\\underline\s*\{\\hphantom\{[^{}]*\}\}", "____"),
    (r"\\ldots\b|\\dots\b", "\u2026"), (r"\\,|\\ |\\;", " "),
]
_TEXT_MACRO_RES = [(re.compile(_WORD_END.sub("(?![A-Za-z])", pattern)), replacement)
                   for pattern, replacement in _TEXT_MACROS]
_LEFTOVER = re.compile(r"\\[A-Za-z]+|\\begin|\\end")


def blocks(text: str) -> Iterator[tuple[str, str]]:
    """``(kind, content)`` in order: ``"text"`` (paragraph text with inline math), ``"display"`` (the body of
    ``\[...\]``, ``$$...$$``, ``align*``, ...; rows separated by ``\\``), ``"table"`` (a ``tabular`` body
    without rules) and ``"code"`` (``[asy]`` source)."""
    position = 0
    for match in BLOCK.finditer(text):
        if text[position:match.start()].strip():
            yield "text", text[position:match.start()].strip("\n ")
        if match.group("code") is not None:
            yield "code", match.group("code").strip("\n")
        elif match.group("table") is not None:
            yield "table", re.sub(r"\\hline|\\cline\{[^{}]*\}", "", match.group("table"))
        else:
            yield "display", next(g for g in (match.group("bracket"), match.group("dollars"), match.group("body"))
                                  if g is not None)
        position = match.end()
    if text[position:].strip():
        yield "text", text[position:].strip("\n ")


def split_top(text: str, separator: str) -> list[str]:
    r"""Split at ``separator`` outside braces and ``\begin...\end`` pairs (escaped characters never split).

    Example:
        >>> split_top(r"a & \begin{pmatrix}1 & 2\end{pmatrix} & c \& d", "&")
        ['a ', ' \\begin{pmatrix}1 & 2\\end{pmatrix} ', ' c \\& d']
    """
    parts, depth, start, i = [], 0, 0, 0
    while i < len(text):
        if depth == 0 and text.startswith(separator, i):
            parts.append(text[start:i])
            start = i = i + len(separator)
        elif text.startswith("\\begin{", i) or text.startswith("\\end{", i):
            opening = text[i + 1] == "b"
            depth += 1 if opening else -1
            i += 6 if opening else 4
        elif text[i] == "\\":
            i += 2
        else:
            depth += {"{": 1, "}": -1}.get(text[i], 0)
            i += 1
    parts.append(text[start:])
    return parts


def rows(body: str) -> list[str]:
    r"""The rows of a display or environment body: split at top-level ``\\``, ``&`` dropped only by the caller."""
    found = [row for row in split_top(body, "\\\\") if row.strip()]
    return found or [body]


def to_mathtext(math: str) -> str:
    r"""Rewrite LaTeX math into what matplotlib's mathtext parses (macros it lacks replaced by equivalents).

    Example:
        >>> to_mathtext(r"\left. x \right|_{0}^{1}, \tfrac{1}{2}, \lvert y \rvert")
        ' x \\right|_{0}^{1}, \\frac{1}{2}, | y |'
    """
    out = _pmod(math)
    for pattern, replacement in _MACRO_RES:
        out = pattern.sub(replacement, out)
    for command in (r"\boxed", r"\underbrace", r"\overbrace"):
        out = _replace_command(out, command, lambda arg: arg)
    return out


def _braced(text: str, start: int) -> tuple[str, int] | None:
    """``(content, end)`` of the balanced ``{...}`` at ``text[start]`` (after spaces), or ``None``."""
    i = start
    while i < len(text) and text[i] == " ":
        i += 1
    if i >= len(text) or text[i] != "{":
        return None
    depth = 0
    for j in range(i, len(text)):
        depth += {"{": 1, "}": -1}.get(text[j], 0)
        if depth == 0:
            return text[i + 1:j], j + 1
    return None


def _replace_command(text: str, command: str, build) -> str:
    out, position = [], 0
    for match in re.finditer(re.escape(command) + r"(?![A-Za-z])", text):
        if match.start() < position:
            continue
        found = _braced(text, match.end())
        if found is None:
            continue
        out.append(text[position:match.start()] + build(found[0]))
        position = found[1]
    return "".join(out) + text[position:]


def _pmod(math: str) -> str:
    return _replace_command(math, r"\pmod", lambda arg: rf"\ (\mathrm{{mod}}\ {arg})")


def text_words(text: str) -> str:
    r"""Paragraph text outside math as plain characters (``\$`` -> ``$``, ``\%`` -> ``%``, ``\textbf{x}`` -> ``x``,
    ``~`` -> no-break space); raises ``ValueError`` naming a command left over.

    Example:
        >>> text_words(r"It costs \$5, a 10\% discount~on \textbf{every} item.")
        'It costs $5, a 10% discount\xa0on every item.'
    """
    out = text
    for pattern, replacement in _TEXT_MACRO_RES:
        out = pattern.sub(replacement, out)
    leftover = _LEFTOVER.search(out)
    if leftover:
        raise ValueError(f"text command {leftover.group(0)!r} has no plain-text rendering")
    return out


_LEFT = re.compile(r"\\left\s*(\\[{|]|\\[A-Za-z]+|[(\[|.])\s*$")
_RIGHT = re.compile(r"\s*\\right\s*(\\[}|]|\\[A-Za-z]+|[)\]|.])")


def math_parts(math: str) -> list[tuple[str, str, str, tuple[str | None, str | None] | None]]:
    r"""Math split into ``("math", source, "", None)`` runs and ``("env", body, name, delimiters)``
    environments (outermost only); a ``\left( ... \right)`` pair around an environment becomes its delimiters
    (``None`` for ``.``; ``delimiters`` is ``None`` when the environment brings its own).

    Example:
        >>> math_parts(r"A = \begin{pmatrix} 1 & 2 \end{pmatrix}.")
        [('math', 'A = ', '', None), ('env', ' 1 & 2 ', 'pmatrix', None), ('math', '.', '', None)]
        >>> math_parts(r"f = \left\{ \begin{array}{cl} 1 \end{array} \right.")[1][3]
        ('\\{', None)
    """
    parts: list[tuple[str, str, str, tuple[str | None, str | None] | None]] = []
    position = 0
    token = re.compile(r"\\begin\{[A-Za-z*]+\}|\\end\{[A-Za-z*]+\}")
    while True:
        match = ENVIRONMENT.search(math, position)
        if match is None:
            break
        name, depth, end = match.group(1), 1, None
        for inner in token.finditer(math, match.end()):
            depth += 1 if inner.group(0).startswith("\\begin") else -1
            if depth == 0:
                end = inner
                break
        if end is None:
            raise ValueError(f"\\begin{{{name}}} has no matching \\end")
        before, after_start = math[position:match.start()], end.end()
        delimiters = None
        left, right = _LEFT.search(before), _RIGHT.match(math, after_start)
        if left and right:
            before, after_start = before[:left.start()], right.end()
            delimiters = tuple(None if d == "." else d for d in (left.group(1), right.group(1)))
        if before:
            parts.append(("math", before, "", None))
        body = math[match.end():end.start()]
        if name == "array":
            spec = _braced(body, 0)
            body = body[spec[1]:] if spec else body
        parts.append(("env", body, name, delimiters))
        position = after_start
    if math[position:]:
        parts.append(("math", math[position:], "", None))
    return parts
