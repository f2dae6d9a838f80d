"""A multi-line problem drawn as one page of ink: wrapped paragraphs, display math, grids, code, or a LaTeX page.

The blocks, rows and math parts come from :mod:`moehooks.typeset`; the words and math are drawn by
:mod:`moehooks.glyphs`.

    >>> from moehooks.pages import needs_page
    >>> needs_page("What is $1+2$?"), needs_page("Line one\\nline two")
    (False, True)
"""

from __future__ import annotations

import subprocess
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
from PIL import Image

from . import installed
from .glyphs import (DPI, LATEX_PREAMBLE, PRINTED_FONTS, MissingFontError, _crop_columns, _draw, _handwriting_style,
                     _handwritten, _hjoin, _jittered, _Piece, _rng, _Style)

LATEX_DPI = 200
"""Resolution of LaTeX pages (the paper typesets at 200 dpi)."""


class TypesetError(ValueError):
    """A text cannot be typeset (a LaTeX construct neither LaTeX nor the fallback handles); it is never drawn
    as source."""


@dataclass(frozen=True)
class _Pen:
    """How one page draws words, math and code."""

    variant: str
    font_size: float
    seed: int
    strict: bool

    @property
    def em(self) -> int:
        return max(1, round(self.font_size * DPI / 72))

    def text_style(self) -> _Style:
        family, fontset = PRINTED_FONTS[self.seed % len(PRINTED_FONTS)]
        return _Style(family=family, fontset=fontset, italic=False, usetex=False)

    def word(self, word: str) -> _Piece:
        if self.variant == "v1":
            return _crop_columns(_draw(word.replace("$", r"\$"), self.text_style(), self.font_size), self.em // 3)
        return _handwritten(word, self.font_size, self.seed, self.strict)

    def math_style(self) -> _Style:
        if self.variant == "v1":
            return replace(self.text_style(), usetex=installed.has_usetex())
        style = _handwriting_style(self.strict)
        return _Style(family=style.family, fontset=style.fontset, italic=False, usetex=installed.has_usetex())

    def math(self, math: str, inline: bool) -> _Piece:
        piece = _math_piece(math, self.math_style(), self.font_size)
        if inline and self.variant != "v1":
            piece = _jittered(piece, _rng(math, self.seed), self.font_size)
        return piece

    def code(self, line: str) -> _Piece:
        style = _Style(family="DejaVu Sans Mono", fontset="dejavusans", italic=False, usetex=False)
        return _draw(line.replace("$", r"\$") or " ", style, 0.7 * self.font_size)


def _math_piece(math: str, style: _Style, font_size: float) -> _Piece:
    """One line of math: LaTeX itself when installed, else mathtext runs and grid-laid environments."""
    from .typeset import math_parts, to_mathtext

    if not math.strip():
        return _Piece(mask=Image.new("L", (1, 1), 0), baseline=0)
    if style.usetex:
        return _crop_columns(_draw(f"${' '.join(math.split())}$", style, font_size), 1)
    pieces = []
    for kind, body, name, delimiters in math_parts(math):
        if kind == "env":
            pieces.append(_grid_piece(body, name, style, font_size, delimiters))
        elif body.strip():
            pieces.append(_crop_columns(_draw(f"${to_mathtext(' '.join(body.split()))}$", style, font_size), 1))
    if not pieces:
        return _Piece(mask=Image.new("L", (1, 1), 0), baseline=0)
    return _hjoin(pieces, [max(2, round(0.15 * font_size))] * len(pieces))


def _grid_piece(body: str, name: str, style: _Style, font_size: float,
                delimiters: tuple[str | None, str | None] | None = None) -> _Piece:
    """A matrix / cases / array environment as a grid of math cells between stretched delimiters (the
    environment's own, or ``delimiters`` from a surrounding ``\\left ... \\right``)."""
    from .typeset import DELIMITERS, rows, split_top

    cells = [[_math_piece(cell.strip(), style, font_size) for cell in split_top(row, "&")] for row in rows(body)]
    em = max(1, round(font_size * DPI / 72))
    center = _grid(cells, em, left_aligned=name in ("cases", "aligned", "split", "array"))
    left, right = delimiters or DELIMITERS.get(name, (None, None))
    parts = [_delimiter(d, center.mask.size[1], style, font_size) if d else None for d in (left, right)]
    pieces = [p for p in (parts[0], center, parts[1]) if p is not None]
    return _hjoin(pieces, [max(2, em // 6)] * len(pieces))


def _grid(cells: Sequence[Sequence[_Piece]], em: int, *, left_aligned: bool) -> _Piece:
    """Cells laid out in rows and columns (an em between columns), baseline at the math axis of the middle."""
    columns = max(len(row) for row in cells)
    widths = [max((row[c].mask.size[0] for row in cells if c < len(row)), default=1) for c in range(columns)]
    aboves = [max(p.baseline for p in row) for row in cells]
    belows = [max(p.mask.size[1] - p.baseline for p in row) for row in cells]
    row_gap = em // 3
    width = sum(widths) + em * (columns - 1)
    height = sum(aboves) + sum(belows) + row_gap * (len(cells) - 1)
    grid = Image.new("L", (max(1, width), max(1, height)), 0)
    y = 0
    for row, above, below in zip(cells, aboves, belows):
        x = 0
        for c, piece in enumerate(row):
            offset = 0 if left_aligned else (widths[c] - piece.mask.size[0]) // 2
            grid.paste(piece.mask, (x + offset, y + above - piece.baseline), piece.mask)
            x += widths[c] + em
        y += above + below + row_gap
    return _Piece(mask=grid, baseline=height // 2 + round(0.3 * em))


def _delimiter(symbol: str, height: int, style: _Style, font_size: float) -> _Piece:
    """``symbol`` drawn with mathtext and stretched to ``height`` pixels (plus a little overshoot)."""
    glyph = _draw(f"${symbol}$", replace(style, usetex=False), font_size).mask
    box = glyph.getbbox() or (0, 0, 1, 1)
    glyph = glyph.crop(box)
    tall = max(1, height + 6)
    stretched = glyph.resize((max(1, round(glyph.size[0] * min(2.0, max(1.0, tall / glyph.size[1]) ** 0.3))), tall),
                             Image.BICUBIC)
    em = max(1, round(font_size * DPI / 72))
    return _Piece(mask=stretched, baseline=tall // 2 + round(0.3 * em))


def _wrap(tokens: Sequence[tuple[_Piece, bool]], space: int, width: int) -> list[_Piece]:
    """Greedy line breaking of ``(piece, glued)`` word / inline-math tokens into lines at most ``width`` pixels
    wide; a glued token follows the previous one without a space and never starts a line."""
    lines: list[list[tuple[_Piece, bool]]] = [[]]
    used = 0
    for token, glued in tokens:
        extra = token.mask.size[0] + (space if lines[-1] and not glued else 0)
        if lines[-1] and not glued and used + extra > width:
            lines.append([])
            used, extra = 0, token.mask.size[0]
        lines[-1].append((token, glued))
        used += extra
    return [_hjoin([piece for piece, _ in line], [0 if i + 1 < len(line) and line[i + 1][1] else space
                                                  for i in range(len(line))]) for line in lines if line]


def _paragraph_tokens(line: str, pen: _Pen) -> list[tuple[_Piece, bool]]:
    """Words and inline math of one source line as ``(piece, glued to the previous token)``."""
    from .typeset import INLINE, text_words

    tokens: list[tuple[_Piece, bool]] = []
    position = 0
    for match in [*INLINE.finditer(line), None]:
        end = match.start() if match else len(line)
        plain = text_words(line[position:end])
        for k, word in enumerate(plain.split()):
            tokens.append((pen.word(word), k == 0 and bool(tokens) and not plain[:1].isspace()))
        if match is None:
            break
        glued = bool(tokens) and bool(plain) and not plain[-1:].isspace()
        tokens.append((pen.math(match.group(1) if match.group(1) is not None else match.group(2), inline=True),
                       glued))
        position = match.end()
    return tokens


def _page_lines(text: str, pen: _Pen, width: int) -> list[tuple[_Piece, str, int]]:
    """``(line, alignment, gap before)`` of a page: wrapped paragraphs, centred display rows, code lines."""
    from .typeset import blocks, rows, split_top

    em, lines = pen.em, []
    space = max(2, round(0.3 * em))
    for kind, content in blocks(text):
        gap = em // 2
        if kind == "code":
            for source in content.splitlines() or [""]:
                lines.append((pen.code(source.rstrip()), "left", gap))
                gap = 0
            continue
        if kind == "table":
            blank = _Piece(mask=Image.new("L", (1, 1), 0), baseline=0)
            cells = [[_hjoin(tokens, [space] * len(tokens)) if tokens else blank
                      for tokens in ([t for t, _ in _paragraph_tokens(cell.strip(), pen)]
                                     for cell in split_top(row, "&"))] for row in rows(content) if row.strip()]
            lines.append((_grid(cells, em, left_aligned=False), "center", gap))
            continue
        if kind == "display":
            for row in rows(content):
                lines.append((pen.math(" ".join(split_top(row, "&")), inline=False), "center", gap))
                gap = em // 4
            continue
        for source in content.split("\n"):
            if not source.strip():
                gap = em // 2
                continue
            for line in _wrap(_paragraph_tokens(source, pen), space, width):
                lines.append((line, "left", gap))
                gap = em // 5
    return lines


def _page(text: str, pen: _Pen, width: int) -> Image.Image:
    """The ink mask of a page of ``text`` at most ``width`` pixels wide (display rows wider are scaled down)."""
    lines = []
    for line, align, gap in _page_lines(text, pen, width):
        mask = line.mask
        if mask.size[0] > width:
            mask = mask.resize((width, max(1, round(mask.size[1] * width / mask.size[0]))), Image.LANCZOS)
        lines.append((mask, align, gap))
    if not lines:
        raise ValueError("nothing to typeset")
    page_width = max(mask.size[0] for mask, _, _ in lines)
    height = sum(mask.size[1] + gap for mask, _, gap in lines)
    page = Image.new("L", (page_width, height), 0)
    y = 0
    for mask, align, gap in lines:
        y += gap
        x = (page_width - mask.size[0]) // 2 if align == "center" else 0
        page.paste(mask, (x, y), mask)
        y += mask.size[1]
    return page


def _latex_page(text: str, width: int) -> Image.Image:
    """A LaTeX document (12 pt) of ``text`` in a minipage ``width`` pixels wide, rasterised by dvipng at
    LATEX_DPI; ``[asy]`` blocks become ``verbatim`` (monospace)."""
    from .typeset import BLOCK

    body = BLOCK.sub(lambda m: f"\n\\begin{{verbatim}}\n{m.group('code').strip()}\n\\end{{verbatim}}\n"
                     if m.group("code") is not None else m.group(0), text)
    points = width / LATEX_DPI * 72.27
    source = (f"\\documentclass[12pt]{{article}}\n{LATEX_PREAMBLE}\n\\pagestyle{{empty}}\n\\begin{{document}}\n"
              f"\\begin{{minipage}}{{{points:.1f}pt}}\n{body}\n\\end{{minipage}}\n\\end{{document}}\n")
    with tempfile.TemporaryDirectory(prefix="moehooks-tex-") as folder:
        (Path(folder) / "page.tex").write_text(source, encoding="utf-8")
        run = subprocess.run(["latex", "-interaction=nonstopmode", "-halt-on-error", "page.tex"], cwd=folder,
                             capture_output=True, text=True, timeout=60)
        if run.returncode != 0:
            errors = [line for line in run.stdout.splitlines() if line.startswith("!")]
            raise ValueError(f"latex failed: {errors[0] if errors else run.stdout[-200:]}")
        subprocess.run(["dvipng", "-D", str(LATEX_DPI), "-T", "tight", "-bg", "rgb 1 1 1", "-fg", "rgb 0 0 0",
                        "-o", "page.png", "page.dvi"], cwd=folder, capture_output=True, check=True, timeout=60)
        with Image.open(Path(folder) / "page.png") as image:
            return Image.fromarray(255 - np.asarray(image.convert("L")), mode="L")


def needs_page(text: str) -> bool:
    r"""Whether ``text`` needs the page layout: line breaks, display math, environments, code, or commands
    outside math (a single line of words and ``$...$`` math does not).

    Example:
        >>> needs_page("What is $1+2$?"), needs_page(r"Let \[x=1\]"), needs_page(r"It costs \$5.")
        (False, True, True)
    """
    from .typeset import BLOCK, ENVIRONMENT, INLINE

    outside = INLINE.sub("", text)
    return "\n" in text.strip() or bool(BLOCK.search(text) or ENVIRONMENT.search(text)) or "\\" in outside


def _typeset(text: str, variant: str, font_size: float, seed: int, strict: bool, width: int) -> Image.Image:
    """The ink of a page, or :class:`TypesetError` naming what could not be typeset."""
    try:
        if variant == "v1" and installed.has_latex():
            return _latex_page(text, width)
        return _page(text, _Pen(variant, font_size, seed, strict), width)
    except (ValueError, RuntimeError, subprocess.SubprocessError) as err:
        if isinstance(err, MissingFontError):
            raise
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise TypesetError(f"cannot typeset: {first[:200]}") from err
