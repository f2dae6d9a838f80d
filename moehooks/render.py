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
import os
import random
import tempfile
from collections.abc import Sequence
from pathlib import Path

from PIL import Image, ImageDraw

from .glyphs import (DPI, LATEX_PREAMBLE, PRINTED_FONTS, MissingFontError, _draw, _handwritten,  # noqa: F401
                     _printed, _rng)
from .installed import (HANDWRITING_FONT_CANDIDATES, HANDWRITING_INSTALL_HINT,  # noqa: F401
                        _normalize_family, _warn_synthetic_handwriting, find_handwriting_font, has_latex, has_usetex)
from .pages import LATEX_DPI, TypesetError, _Pen, _typeset, needs_page  # noqa: F401

VARIANTS: tuple[str, ...] = ("v1", "v2", "v3")
"""Render variants: printed, handwriting, handwriting on a grid."""

PAGE_WIDTH = 1600
"""Width in pixels that long problems are wrapped to (about 70 characters at the default font size)."""

INK = {"v1": (0, 0, 0), "v2": (20, 30, 110), "v3": (20, 30, 110)}
GRID_GREY = (205, 205, 205)


def _check_variant(variant: str) -> None:
    """Raise a ValueError naming ``variant`` and the allowed ones when it is unknown."""
    if variant not in VARIANTS:
        raise ValueError(f"unknown variant {variant!r}: expected one of {', '.join(VARIANTS)}")


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
