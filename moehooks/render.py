"""Render text problems (LaTeX math allowed) to PNG images: printed, handwritten, handwritten on a grid.

Example:
    >>> from moehooks.render import render, render_many, save_png
    >>> image = render(r"What is $\\frac{1}{2}+\\frac{1}{4}$?", "v2")
    >>> small = render("3+4=", "v1", size=(64, 32))
    >>> small.size
    (64, 32)
    >>> images = render_many(["1+1=", "12+7="], "v3")
    >>> images[0].size == images[1].size
    True
    >>> save_png(small, "/tmp/problem.png").name
    'problem.png'

Variants:
    - ``v1``: a printed font (``seed`` picks one of matplotlib's bundled printed fonts, 0 is DejaVu Sans;
      seeds from ``len(PRINTED_FONTS)`` on also tilt and stretch the rendering slightly);
    - ``v2``: handwriting: glyphs drawn one by one with deterministic jitter (rotation, offset, size)
      seeded from the text and ``seed``;
    - ``v3``: the ``v2`` handwriting on a light grey grid.

Math between ``$...$`` is typeset with real LaTeX (matplotlib ``usetex``) when :func:`has_usetex` finds it
working (Debian: ``texlive-latex-base texlive-latex-extra texlive-fonts-recommended cm-super dvipng``), with
matplotlib mathtext otherwise. The handwriting font is a system font found by
matplotlib's font manager (fonts-dkg-handwriting, Comic Neue, Humor Sans, xkcd Script, ...); without
one, ``strict=True`` raises :class:`MissingFontError` and the default draws a synthetic handwriting
from matplotlib's bundled fonts (DejaVu Sans Oblique, Computer Modern math) and warns once.
Output is deterministic: the same arguments give the same pixels and :func:`save_png` the same bytes.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import os
import random
import re
import shutil
import subprocess
import tempfile
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
from matplotlib import font_manager, rc_context
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from PIL import Image, ImageDraw

VARIANTS: tuple[str, ...] = ("v1", "v2", "v3")
"""Render variants: printed, handwriting, handwriting on a grid."""

HANDWRITING_FONT_CANDIDATES: tuple[str, ...] = (
    "DKG Handwriting",
    "Comic Neue",
    "Humor Sans",
    "xkcd Script",
    "xkcd",
    "Comic Sans MS",
    "Indie Flower",
    "Patrick Hand",
    "Kalam",
    "Caveat",
)
"""Font families accepted as handwriting, in order of preference."""

HANDWRITING_INSTALL_HINT = "apt-get install fonts-dkg-handwriting"
"""Command that installs a real handwriting font on Debian/Ubuntu."""

DPI = 100
PAGE_WIDTH = 1600
"""Width in pixels that long problems are wrapped to (about 70 characters at the default font size)."""
LATEX_PREAMBLE = r"\usepackage{amsmath}\usepackage{amssymb}"
"""Packages of every LaTeX rendering (the benchmarks use amsmath environments and amssymb symbols)."""
LATEX_DPI = 200
"""Resolution of LaTeX pages (the paper typesets at 200 dpi)."""
PRINTED_FONTS: tuple[tuple[str, str], ...] = (
    ("DejaVu Sans", "dejavusans"),
    ("DejaVu Serif", "dejavuserif"),
    ("DejaVu Sans Mono", "dejavusans"),
    ("STIXGeneral", "stix"),
)
"""(text family, mathtext fontset) pairs of the printed variant, indexed by ``seed``."""

INK = {"v1": (0, 0, 0), "v2": (20, 30, 110), "v3": (20, 30, 110)}
GRID_GREY = (205, 205, 205)
_MATH_RE = re.compile(r"(\$[^$]+\$)")
_TEX_SPECIALS = {c: "\\" + c for c in "#%&_{}"}


class MissingFontError(RuntimeError):
    """No handwriting font is installed and ``strict=True`` was asked."""


class TypesetError(ValueError):
    """A text cannot be typeset (a LaTeX construct neither LaTeX nor the fallback handles); it is never drawn
    as source."""


@dataclass(frozen=True)
class _Style:
    """How to draw one piece of text: font family or file, mathtext fontset, italic or not, LaTeX or not."""

    family: str
    fontset: str
    italic: bool
    usetex: bool
    fontfile: str | None = None


@dataclass(frozen=True)
class _Piece:
    """An ink mask (mode ``L``, 255 = ink) and the row of its text baseline."""

    mask: Image.Image
    baseline: int


def _check_variant(variant: str) -> None:
    """Raise a ValueError naming ``variant`` and the allowed ones when it is unknown."""
    if variant not in VARIANTS:
        raise ValueError(f"unknown variant {variant!r}: expected one of {', '.join(VARIANTS)}")


@functools.cache
def has_latex() -> bool:
    """Return True when ``latex`` and ``dvipng`` are on PATH (Debian: ``texlive-latex-base dvipng``): the printed
    variant is then a LaTeX page.

    Example:
        >>> isinstance(has_latex(), bool)
        True
    """
    return shutil.which("latex") is not None and shutil.which("dvipng") is not None


@functools.cache
def has_usetex() -> bool:
    """Return True when matplotlib's ``usetex`` typesets with the installed LaTeX (probed once per process): it
    needs the packages of Debian's ``texlive-latex-extra texlive-fonts-recommended cm-super`` besides
    :func:`has_latex`; with ``texlive-latex-base`` alone it fails, and math falls back to mathtext.

    Example:
        >>> isinstance(has_usetex(), bool)
        True
    """
    if not has_latex():
        return False
    try:
        with rc_context({"text.usetex": True}):
            figure = Figure(figsize=(1, 1))
            FigureCanvasAgg(figure)
            figure.text(0.1, 0.1, r"$x^2$")
            figure.canvas.draw()
    except (RuntimeError, OSError):
        return False
    return True


def _normalize_family(name: str) -> str:
    """Lower-case a family name and drop spaces, dashes and underscores."""
    return re.sub(r"[\s_\-]", "", name).lower()


@functools.cache
def find_handwriting_font() -> str | None:
    """Return the path of an installed handwriting font (see HANDWRITING_FONT_CANDIDATES), or None.

    Example:
        >>> path = find_handwriting_font()
        >>> path is None or path.endswith((".ttf", ".otf"))
        True
    """
    by_family: dict[str, str] = {}
    for entry in sorted(font_manager.fontManager.ttflist, key=lambda e: (e.name, e.fname)):
        by_family.setdefault(_normalize_family(entry.name), entry.fname)
    for candidate in HANDWRITING_FONT_CANDIDATES:
        path = by_family.get(_normalize_family(candidate))
        if path is not None:
            return path
    return None


@functools.cache
def _warn_synthetic_handwriting() -> None:
    """Warn (once per process) that the synthetic handwriting is used."""
    warnings.warn(
        "no handwriting font found (looked for: "
        + ", ".join(HANDWRITING_FONT_CANDIDATES)
        + f"); drawing a synthetic handwriting from matplotlib's fonts. For a real one: {HANDWRITING_INSTALL_HINT}",
        stacklevel=3,
    )


def _handwriting_style(strict: bool) -> _Style:
    """Return the style of handwritten text: the system font, else the synthetic fallback (or raise if strict)."""
    path = find_handwriting_font()
    if path is not None:
        family = font_manager.FontProperties(fname=path).get_name()
        return _Style(family=family, fontset="custom", italic=False, usetex=False, fontfile=path)
    if strict:
        raise MissingFontError(
            "no handwriting font found (looked for: "
            + ", ".join(HANDWRITING_FONT_CANDIDATES)
            + f"); install one, e.g. `{HANDWRITING_INSTALL_HINT}`, or pass strict=False for a synthetic handwriting"
        )
    _warn_synthetic_handwriting()
    return _Style(family="DejaVu Sans", fontset="cm", italic=True, usetex=False)


def _rc(style: _Style) -> dict[str, object]:
    """Return the matplotlib rc settings that draw ``style``."""
    rc: dict[str, object] = {"text.usetex": style.usetex, "mathtext.fontset": style.fontset}
    if style.usetex:
        rc["text.latex.preamble"] = LATEX_PREAMBLE
    if style.fontset == "custom":
        rc.update({"mathtext.rm": style.family, "mathtext.it": style.family, "mathtext.bf": style.family})
    return rc


@functools.lru_cache(maxsize=8192)
def _draw(text: str, style: _Style, font_size: float) -> _Piece:
    """Draw ``text`` in ``style`` with matplotlib and return its ink mask, cropped around the ink, and baseline."""
    if style.fontfile is not None:
        prop = font_manager.FontProperties(fname=style.fontfile, size=font_size)
    else:
        prop = font_manager.FontProperties(
            family=style.family, style="italic" if style.italic else "normal", size=font_size
        )
    with rc_context(_rc(style)):
        probe = Figure(figsize=(1, 1), dpi=DPI)
        canvas = FigureCanvasAgg(probe)
        artist = probe.text(0, 0, text, fontproperties=prop, va="baseline", ha="left")
        box = artist.get_window_extent(canvas.get_renderer())
        pad = 0.25 * font_size
        width, height = box.width + 2 * pad, box.height + 2 * pad
        figure = Figure(figsize=(width / DPI, height / DPI), dpi=DPI, facecolor="white")
        canvas = FigureCanvasAgg(figure)
        baseline_from_bottom = pad - box.y0
        figure.text(
            pad / width,
            baseline_from_bottom / height,
            text,
            fontproperties=prop,
            va="baseline",
            ha="left",
            color="black",
        )
        canvas.draw()
        rgba = np.asarray(canvas.buffer_rgba())
    ink = 255 - rgba[..., :3].min(axis=2)
    mask = Image.fromarray(ink.astype(np.uint8), mode="L")
    baseline = rgba.shape[0] - int(round(baseline_from_bottom))
    return _Piece(mask=mask, baseline=baseline)


def _split(text: str) -> list[str]:
    """Split ``text`` into math segments (``$...$``) and plain segments, dropping empty ones."""
    return [segment for segment in _MATH_RE.split(text) if segment]


def _escape_tex(plain: str) -> str:
    """Escape the LaTeX special characters of text outside math."""
    return "".join(_TEX_SPECIALS.get(c, c) for c in plain)


def _printed(text: str, font_size: float, seed: int) -> _Piece:
    """Draw ``text`` in one go in the printed font chosen by ``seed`` (LaTeX when installed)."""
    family, fontset = PRINTED_FONTS[seed % len(PRINTED_FONTS)]
    if has_usetex():
        tex = "".join(s if _MATH_RE.fullmatch(s) else _escape_tex(s) for s in _split(text))
        return _draw(tex, _Style(family="serif", fontset=fontset, italic=False, usetex=True), font_size)
    return _draw(text, _Style(family=family, fontset=fontset, italic=False, usetex=False), font_size)


def _rng(text: str, seed: int) -> random.Random:
    """Return a random generator seeded from ``text`` and ``seed`` (stable across processes)."""
    digest = hashlib.sha256(f"{seed}\0{text}".encode()).digest()
    return random.Random(int.from_bytes(digest[:8], "big"))


def _jittered(piece: _Piece, rng: random.Random, font_size: float) -> _Piece:
    """Rotate, scale and shift one glyph's ink (deterministically from ``rng``)."""
    angle = rng.uniform(-9.0, 9.0)
    scale = rng.uniform(0.85, 1.15)
    shift = rng.uniform(-0.08, 0.08) * font_size
    width, height = piece.mask.size
    scaled = piece.mask.resize((max(1, round(width * scale)), max(1, round(height * scale))), Image.BICUBIC)
    rotated = scaled.rotate(angle, resample=Image.BICUBIC, expand=True, fillcolor=0)
    grow = (rotated.size[1] - scaled.size[1]) / 2
    baseline = round(piece.baseline * scale + grow + shift)
    return _Piece(mask=rotated, baseline=baseline)


def _crop_columns(piece: _Piece, blank_width: int) -> _Piece:
    """Crop a piece horizontally to its ink (a blank piece keeps ``blank_width`` columns)."""
    box = piece.mask.getbbox()
    if box is None:
        return _Piece(mask=Image.new("L", (blank_width, piece.mask.size[1]), 0), baseline=piece.baseline)
    return _Piece(mask=piece.mask.crop((box[0], 0, box[2], piece.mask.size[1])), baseline=piece.baseline)


def _handwritten(text: str, font_size: float, seed: int, strict: bool) -> _Piece:
    """Draw ``text`` glyph by glyph (math segments whole) with jitter seeded from the text and ``seed``."""
    style = _handwriting_style(strict)
    math_style = _Style(family=style.family, fontset=style.fontset, italic=False, usetex=has_usetex(), fontfile=None)
    rng = _rng(text, seed)
    space = max(1, round(0.35 * font_size))
    pieces = []
    for segment in _split(text):
        is_math = _MATH_RE.fullmatch(segment) is not None
        for unit in [segment] if is_math else list(segment):
            drawn = _draw(unit, math_style if is_math else style, font_size)
            pieces.append(_jittered(_crop_columns(drawn, space), rng, font_size))
    return _join(pieces, rng, font_size)


def _join(pieces: Sequence[_Piece], rng: random.Random, font_size: float) -> _Piece:
    """Lay pieces side by side on a common baseline with jittered gaps."""
    return _hjoin(pieces, [round(rng.uniform(0.02, 0.12) * font_size) for _ in pieces])


def _hjoin(pieces: Sequence[_Piece], gaps: Sequence[int]) -> _Piece:
    """Lay pieces side by side on a common baseline, ``gaps[i]`` pixels after piece ``i``."""
    above = max(p.baseline for p in pieces)
    below = max(p.mask.size[1] - p.baseline for p in pieces)
    width = sum(p.mask.size[0] for p in pieces) + sum(gaps[: len(pieces) - 1])
    line = Image.new("L", (max(1, width), above + below), 0)
    x = 0
    for piece, gap in zip(pieces, gaps):
        layer = Image.new("L", line.size, 0)
        layer.paste(piece.mask, (x, above - piece.baseline))
        line = Image.fromarray(np.maximum(np.asarray(line), np.asarray(layer)), mode="L")
        x += piece.mask.size[0] + gap
    return _Piece(mask=line, baseline=above)


# ---------------------------------------------------------------------------------------------------------
# Pages: problems wrapped to a page width, display math, environments, code (see moehooks.typeset)


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
            return replace(self.text_style(), usetex=has_usetex())
        style = _handwriting_style(self.strict)
        return _Style(family=style.family, fontset=style.fontset, italic=False, usetex=has_usetex())

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
        if variant == "v1" and has_latex():
            return _latex_page(text, width)
        return _page(text, _Pen(variant, font_size, seed, strict), width)
    except (ValueError, RuntimeError, subprocess.SubprocessError) as err:
        if isinstance(err, MissingFontError):
            raise
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise TypesetError(f"cannot typeset: {first[:200]}") from err


def _line(text: str, variant: str, font_size: float, seed: int, strict: bool) -> Image.Image:
    """The ink of a one-line text (words and ``$...$`` math), or :class:`TypesetError`."""
    try:
        if variant == "v1":
            return _printed(text, font_size, seed).mask
        return _handwritten(text, font_size, seed, strict).mask
    except ValueError as err:
        raise TypesetError(f"cannot typeset: {str(err).strip().splitlines()[0][:200]}") from err


def _ink(text: str, variant: str, font_size: float, seed: int, strict: bool,
         page_width: int = 0) -> Image.Image:
    """Return the ink mask of ``text`` in ``variant``, cropped to its ink; pages wrap at ``page_width``."""
    page_width = page_width or PAGE_WIDTH
    _check_variant(variant)
    if not text.strip():
        raise ValueError(f"nothing to render: text {text!r} has no visible character")
    if font_size <= 0:
        raise ValueError(f"font_size must be > 0, got {font_size!r}")
    mask = None
    if not needs_page(text):
        with contextlib.suppress(TypesetError):
            mask = _line(text, variant, font_size, seed, strict)
    if mask is None or mask.size[0] > page_width:
        mask = _typeset(text, variant, font_size, seed, strict, page_width)
    if variant == "v1" and seed >= len(PRINTED_FONTS):
        mask = _tilted(mask, _rng(text, seed))
    box = mask.getbbox()
    return mask if box is None else mask.crop(box)


def _tilted(mask: Image.Image, rng: random.Random) -> Image.Image:
    """Slightly rotate and stretch a printed rendering as a whole (deterministically from ``rng``)."""
    stretch = rng.uniform(0.85, 1.15)
    angle = rng.uniform(-4.0, 4.0)
    stretched = mask.resize((max(1, round(mask.size[0] * stretch)), mask.size[1]), Image.BICUBIC)
    return stretched.rotate(angle, resample=Image.BICUBIC, expand=True, fillcolor=0)


def _background(variant: str, size: tuple[int, int]) -> Image.Image:
    """Return the white background of ``variant`` at ``size``, with a light grey grid for ``v3``."""
    image = Image.new("RGB", size, "white")
    if variant == "v3":
        step = max(4, round(min(size) / 4))
        draw = ImageDraw.Draw(image)
        for x in range(step // 2, size[0], step):
            draw.line([(x, 0), (x, size[1] - 1)], fill=GRID_GREY)
        for y in range(step // 2, size[1], step):
            draw.line([(0, y), (size[0] - 1, y)], fill=GRID_GREY)
    return image


def _compose(mask: Image.Image, variant: str, size: tuple[int, int], fit: bool) -> Image.Image:
    """Place an ink mask centred on the variant's background of ``size`` (scaled down/up to fit if ``fit``)."""
    width, height = size
    if fit:
        margin = max(1, round(0.04 * min(size)))
        room_w, room_h = max(1, width - 2 * margin), max(1, height - 2 * margin)
        scale = min(room_w / mask.size[0], room_h / mask.size[1])
        new_size = (max(1, round(mask.size[0] * scale)), max(1, round(mask.size[1] * scale)))
        mask = mask.resize(new_size, Image.LANCZOS)
    image = _background(variant, size)
    offset = ((width - mask.size[0]) // 2, (height - mask.size[1]) // 2)
    ink = Image.new("RGB", mask.size, INK[variant])
    image.paste(ink, offset, mask)
    return image


def _check_size(size: tuple[int, int] | None) -> None:
    """Raise a ValueError unless ``size`` is None or a pair of positive ints."""
    if size is not None and not (
        len(size) == 2 and all(isinstance(v, int) and v > 0 for v in size)
    ):
        raise ValueError(f"size must be None or (width, height) with positive ints, got {size!r}")


def _natural_size(mask: Image.Image, font_size: float) -> tuple[int, int]:
    """Return the canvas size of a rendering at its natural scale (ink plus a margin)."""
    margin = max(2, round(0.3 * font_size))
    return mask.size[0] + 2 * margin, mask.size[1] + 2 * margin


def render(
    text: str,
    variant: str = "v1",
    *,
    size: tuple[int, int] | None = None,
    font_size: float = 28.0,
    strict: bool = False,
    seed: int = 0,
) -> Image.Image:
    """Render ``text`` (``$...$`` is math) as an RGB image in ``variant``.

    Example:
        >>> render("3+4=", "v1", size=(64, 32)).size
        (64, 32)

    Args:
        text: the problem; math between dollar signs.
        variant: one of VARIANTS.
        size: ``(width, height)``: the rendering is scaled to fit and padded to exactly this size;
            None: natural size (ink plus a margin).
        font_size: font size in points at 100 dpi.
        strict: raise MissingFontError for ``v2``/``v3`` when no handwriting font is installed.
        seed: another rendering of the same text: the printed font for ``v1``, the jitter for ``v2``/``v3``.
    """
    _check_size(size)
    mask = _ink(text, variant, font_size, seed, strict)
    if size is None:
        return _compose(mask, variant, _natural_size(mask, font_size), fit=False)
    return _compose(mask, variant, size, fit=True)


def render_many(
    texts: Sequence[str],
    variant: str = "v1",
    *,
    size: tuple[int, int] | None = None,
    font_size: float = 28.0,
    strict: bool = False,
    seed: int = 0,
) -> list[Image.Image]:
    """Render several texts in ``variant``, all padded to one common size.

    Example:
        >>> a, b = render_many(["1+1=", "$\\\\frac{1}{2}$"], "v2")
        >>> a.size == b.size
        True

    With ``size=None`` the common size is the largest natural size (renderings are centred, not
    scaled); with ``size`` each rendering is scaled to fit it as in :func:`render`.
    """
    _check_size(size)
    masks = [_ink(text, variant, font_size, seed, strict) for text in texts]
    if size is not None:
        return [_compose(mask, variant, size, fit=True) for mask in masks]
    if not masks:
        return []
    natural = [_natural_size(mask, font_size) for mask in masks]
    common = (max(w for w, _ in natural), max(h for _, h in natural))
    return [_compose(mask, variant, common, fit=False) for mask in masks]


def save_png(image: Image.Image, path: str | os.PathLike[str]) -> Path:
    """Write ``image`` as a PNG without metadata to ``path`` atomically (temp file + rename); return the path.

    Example:
        >>> save_png(render("1+2="), "/tmp/one_plus_two.png").name
        'one_plus_two.png'
    """
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
    try:
        with os.fdopen(fd, "wb") as handle:
            image.save(handle, format="PNG", optimize=False)
        os.replace(tmp, target)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return target
