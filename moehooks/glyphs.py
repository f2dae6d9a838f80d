"""Text drawn into ink masks with matplotlib: a printed line, handwriting glyph by glyph with jitter, pieces joined.

A piece is an ink mask (mode ``L``, 255 = ink) with the row of its baseline:

    >>> from moehooks.glyphs import _hjoin, _printed
    >>> one, two = _printed("1", 20.0, 0), _printed("2", 20.0, 0)
    >>> _hjoin([one, two], [3, 0]).mask.size[0] == one.mask.size[0] + 3 + two.mask.size[0]
    True
"""

from __future__ import annotations

import functools
import hashlib
import random
import re
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from matplotlib import font_manager, rc_context
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from PIL import Image

from . import installed

DPI = 100

LATEX_PREAMBLE = r"\usepackage{amsmath}\usepackage{amssymb}"
"""Packages of every LaTeX rendering (the benchmarks use amsmath environments and amssymb symbols)."""

PRINTED_FONTS: tuple[tuple[str, str], ...] = (
    ("DejaVu Sans", "dejavusans"),
    ("DejaVu Serif", "dejavuserif"),
    ("DejaVu Sans Mono", "dejavusans"),
    ("STIXGeneral", "stix"),
)
"""(text family, mathtext fontset) pairs of the printed variant, indexed by ``seed``."""

_MATH_RE = re.compile(r"(\$[^$]+\$)")
_TEX_SPECIALS = {c: "\\" + c for c in "#%&_{}"}


class MissingFontError(RuntimeError):
    """No handwriting font is installed and ``strict=True`` was asked."""


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


def _handwriting_style(strict: bool) -> _Style:
    """Return the style of handwritten text: the system font, else the synthetic fallback (or raise if strict)."""
    path = installed.find_handwriting_font()
    if path is not None:
        family = font_manager.FontProperties(fname=path).get_name()
        return _Style(family=family, fontset="custom", italic=False, usetex=False, fontfile=path)
    if strict:
        raise MissingFontError(
            "no handwriting font found (looked for: "
            + ", ".join(installed.HANDWRITING_FONT_CANDIDATES)
            + f"); install one, e.g. `{installed.HANDWRITING_INSTALL_HINT}`, "
            "or pass strict=False for a synthetic handwriting"
        )
    installed._warn_synthetic_handwriting()
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
    if installed.has_usetex():
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
    math_style = _Style(family=style.family, fontset=style.fontset, italic=False, usetex=installed.has_usetex(),
                        fontfile=None)
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
