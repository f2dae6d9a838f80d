"""What this machine has installed for rendering: LaTeX, a working matplotlib ``usetex``, a handwriting font.

Each probe runs once per process (``functools.cache``; ``cache_clear()`` forgets the answer):

    >>> from moehooks.installed import has_latex, has_usetex
    >>> isinstance(has_latex(), bool) and isinstance(has_usetex(), bool)
    True
"""

from __future__ import annotations

import functools
import re
import shutil
import warnings

from matplotlib import font_manager, rc_context
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

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
