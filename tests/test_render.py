"""Tests of moehooks.render: variants, sizes, determinism, fallbacks and errors.

Example:
    OMP_NUM_THREADS=1 .venv/bin/python -m pytest tests/test_render.py
"""

from __future__ import annotations

import warnings

import numpy as np
import pytest
from PIL import Image

from moehooks import installed
from moehooks import render as rendering
from moehooks.render import VARIANTS, MissingFontError, render, render_many, save_png


def ink_box(image: Image.Image) -> tuple[int, int, int, int]:
    """Bounding box of the non-background pixels (darker than the light grey grid)."""
    dark = np.asarray(image.convert("L")) < 150
    rows, cols = np.nonzero(dark)
    assert rows.size, "the image has no ink"
    return int(cols.min()), int(rows.min()), int(cols.max()) + 1, int(rows.max()) + 1


@pytest.fixture(autouse=True)
def quiet_synthetic_warning():
    """Silence the synthetic-handwriting warning outside the test that checks it."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        yield


def test_variants_give_same_size_pngs(tmp_path):
    sizes = set()
    for variant in VARIANTS:
        path = save_png(render("12+7=", variant, size=(120, 40)), tmp_path / f"{variant}.png")
        with Image.open(path) as image:
            assert image.format == "PNG"
            assert image.mode == "RGB"
            sizes.add(image.size)
    assert sizes == {(120, 40)}


def test_variants_differ():
    pixels = [np.asarray(render("12+7=", variant, size=(120, 40))) for variant in VARIANTS]
    assert not np.array_equal(pixels[0], pixels[1])
    assert not np.array_equal(pixels[1], pixels[2])


@pytest.mark.parametrize("variant", VARIANTS)
def test_same_input_gives_same_bytes(tmp_path, variant):
    first = save_png(render(r"$\frac{1}{2}$+3=", variant, seed=5), tmp_path / "a.png").read_bytes()
    rendering._draw.cache_clear()
    second = save_png(render(r"$\frac{1}{2}$+3=", variant, seed=5), tmp_path / "b.png").read_bytes()
    assert first == second
    assert b"tEXt" not in first and b"iTXt" not in first


def test_seed_changes_handwriting():
    a = np.asarray(render("3+4=", "v2", size=(64, 32), seed=0))
    b = np.asarray(render("3+4=", "v2", size=(64, 32), seed=1))
    assert not np.array_equal(a, b)


def test_render_many_pads_to_common_size():
    texts = ["1", "123+456=", r"$\frac{1}{2}$"]
    images = render_many(texts, "v3")
    assert len({image.size for image in images}) == 1
    widest = max(render(text, "v3").size[0] for text in texts)
    tallest = max(render(text, "v3").size[1] for text in texts)
    assert images[0].size == (widest, tallest)


def test_render_many_with_size_fits_each():
    images = render_many(["1", "22+33="], "v1", size=(64, 32))
    assert [image.size for image in images] == [(64, 32), (64, 32)]


def test_small_image_is_filled():
    left, top, right, bottom = ink_box(render("3+4=", "v1", size=(64, 32)))
    assert right - left >= 0.8 * 64 or bottom - top >= 0.8 * 32


def test_unknown_variant_lists_allowed():
    with pytest.raises(ValueError, match="v4.*v1, v2, v3"):
        render("1+1=", "v4")
    with pytest.raises(ValueError, match="v1, v2, v3"):
        render_many(["1+1="], "print")


def test_bad_size_and_empty_text_rejected():
    with pytest.raises(ValueError, match=r"\(0, 32\)"):
        render("1+1=", "v1", size=(0, 32))
    with pytest.raises(ValueError, match="no visible character"):
        render("   ", "v1")


def test_strict_without_handwriting_font_names_package():
    with pytest.raises(MissingFontError, match="apt-get install fonts-dkg-handwriting"):
        render("1+1=", "v2", strict=True)


def test_synthetic_handwriting_warns_once():
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        render("1+1=", "v2")
        render("2+2=", "v3")
    messages = [str(w.message) for w in caught if "synthetic handwriting" in str(w.message)]
    assert len(messages) == 1
    assert "fonts-dkg-handwriting" in messages[0]


def test_latex_renders_with_mathtext_fallback():
    fraction = render(r"$\frac{1}{2}$", "v1")
    one = render("1", "v1")
    left, top, right, bottom = ink_box(fraction)
    assert bottom - top > 1.5 * (ink_box(one)[3] - ink_box(one)[1])
    assert right - left < bottom - top


@pytest.mark.installed_tools
def test_a_partial_latex_install_falls_back_to_mathtext(monkeypatch):
    """``latex`` and ``dvipng`` present but matplotlib's usetex failing (no cm-super): not LaTeX."""
    import matplotlib.figure

    def broken(self, *args, **kwargs):
        raise RuntimeError("Missing cm-super package, required by Matplotlib")

    monkeypatch.setattr(installed.shutil, "which", lambda name: f"/usr/bin/{name}")
    monkeypatch.setattr(matplotlib.figure.Figure, "draw", broken)
    assert rendering.has_latex() and rendering.has_usetex() is False


@pytest.mark.installed_tools
def test_no_latex_on_path_means_no_latex(monkeypatch):
    monkeypatch.setattr(installed.shutil, "which", lambda name: None if name == "dvipng" else f"/usr/bin/{name}")
    assert rendering.has_latex() is False and rendering.has_usetex() is False


@pytest.mark.installed_tools
def test_an_installed_handwriting_font_is_found_and_drawn_with(monkeypatch):
    """A font registered under a handwriting family (here DejaVu Serif's file named "Comic Neue", the handwriting
    fonts really installed set aside) is the one the handwritten variants draw with: ``strict`` accepts it, no
    synthetic-handwriting warning."""
    from matplotlib import font_manager

    serif = font_manager.findfont(font_manager.FontProperties(family="DejaVu Serif"), fallback_to_default=False)
    fake = font_manager.FontEntry(fname=serif, name="Comic Neue")
    handwriting = {rendering._normalize_family(n) for n in rendering.HANDWRITING_FONT_CANDIDATES}
    others = [e for e in font_manager.fontManager.ttflist if rendering._normalize_family(e.name) not in handwriting]
    monkeypatch.setattr(font_manager.fontManager, "ttflist", [*others, fake])
    assert rendering.find_handwriting_font() == serif
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        image = render("1+1=", "v2", strict=True)
    assert not [w for w in caught if "synthetic handwriting" in str(w.message)]
    monkeypatch.setattr(installed, "find_handwriting_font", lambda: None)
    assert not np.array_equal(np.asarray(image), np.asarray(render("1+1=", "v2")))
