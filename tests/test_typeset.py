"""Problems written like MATH-500's render typeset and wrapped to the page width in v1 / v2 / v3: read back with
OCR (Debian `tesseract-ocr`), no LaTeX source is left on the image (Asymptote code is shown as code, in
monospace); what cannot be typeset is skipped by id."""

from __future__ import annotations

import re
import shutil
import subprocess
import warnings
from pathlib import Path

import pytest
from PIL import Image

from moehooks import benchmarks, render as rendering
from moehooks.evaluate import Item
from moehooks.render import PAGE_WIDTH, TypesetError, render, save_png

PROBLEMS = {
    "binom": r"Compute $\dbinom{8}{4}$ and find all $n \le 10$ such that $n^2 \equiv 1 \pmod{8}$.",
    "matrix": "Find the matrix $\\mathbf{M}$ such that\n\\[\\mathbf{M} \\begin{pmatrix} 1 & -4 \\\\ 3 & -2 "
              "\\end{pmatrix} = \\begin{pmatrix} -16 & -6 \\\\ 7 & 2 \\end{pmatrix}.\\]",
    "align": "Solve the system\n\\begin{align*}\nx + 2y &= 7, \\\\\n3x - y &= 0.\n\\end{align*}\n"
             "Enter the ordered pair $(x,y)$.",
    "cases": "Let \\[f(x) = \\left\\{\n\\begin{array}{cl} ax+3, &\\text{ if }x>2, \\\\\nx-5 &\\text{ if } -2 \\le x "
             "\\le 2, \\\\\n2x-b &\\text{ if } x <-2.\n\\end{array}\n\\right.\\]Find $a+b$ if the piecewise function "
             "is continuous.",
    "piecewise": r"Define $g(n) = \begin{cases} n/2 & \text{if } n \text{ is even}, \\ 3n+1 & \text{if } n "
                 r"\text{ is odd}. \end{cases}$ What is $g(g(7))$?",
    "money": r"A shirt costs \$25 and is on sale for 20\% off. How many dollars does Sam pay?",
    "diagram": "In the diagram, $AB = 12$ and $\\angle ABC = 90^\\circ$. What is the area?\n\n[asy]\n"
               "draw((0,0)--(12,0)--(0,5)--cycle);\nlabel(\"$A$\",(0,0),SW);\n[/asy]",
    "table": "The stem-and-leaf plot shows the ages.\n\n\\begin{tabular}{c|l}\n\\hline\nStem & Leaves \\\\ \\hline\n"
             "2 & $0 \\ 3 \\ 5$ \\\\\n3 & $1 \\ 1 \\ 8$ \\\\\n\\end{tabular}\n\nWhat is the median? Write "
             "\\underline{\\hphantom{xx}} as $\\cfrac12 \\cdot \\sqrt2$ if needed.",
}
WORDS = {"binom": "Compute", "matrix": "matrix", "align": "system", "cases": "continuous", "piecewise": "even",
         "money": "$25", "diagram": "diagram", "table": "median"}
SOURCE = re.compile(r"\\[A-Za-z]{2,}|begin\s*\{|end\s*\{|\[/?asy\]|\\\[|\\\]|\\[$%]|\$[A-Za-z\\]")
"""LaTeX source on an image: commands, environments, Asymptote tags, display brackets, escapes, ``$x``."""


@pytest.fixture(autouse=True)
def quiet_synthetic_warning():
    """Typeset without LaTeX (the fallback under test: conftest hides what is installed), with the
    synthetic-handwriting warning silenced."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        yield


def ocr(image: Image.Image, tmp_path: Path) -> str:
    if shutil.which("tesseract") is None:
        pytest.skip("tesseract is not installed (Debian: apt-get install tesseract-ocr)")
    path = save_png(image, tmp_path / "ocr.png")
    return subprocess.run(["tesseract", str(path), "stdout", "--psm", "6"], capture_output=True, text=True,
                          check=True, timeout=60).stdout


@pytest.mark.parametrize("variant", ["v1", "v2", "v3"])
@pytest.mark.parametrize("name", list(PROBLEMS))
def test_problem_renders_typeset_with_no_source_left(name: str, variant: str, tmp_path: Path) -> None:
    image = render(PROBLEMS[name], variant)
    assert image.width <= PAGE_WIDTH + 40
    text = ocr(image, tmp_path)
    if name == "diagram":
        text, code = text.split("draw", 1)
        assert "cycle" in code
    assert not SOURCE.search(text), (name, variant, text)
    if variant == "v1":
        assert WORDS[name].lower() in text.lower(), text


def test_the_ocr_check_sees_latex_source_when_it_is_drawn(tmp_path: Path) -> None:
    """Control: the same check fails on an image of the raw source (drawn as code)."""
    pen = rendering._Pen("v1", 28.0, 0, False)
    source = pen.code(r"\begin{pmatrix} 1 & -4 \end{pmatrix} \dbinom{8}{4} [asy]").mask
    image = Image.merge("RGB", [Image.eval(source, lambda v: 255 - v)] * 3)
    assert SOURCE.search(ocr(image, tmp_path))


def test_long_problems_wrap_to_the_page_width() -> None:
    sentence = r"The sum of the first $n$ positive integers is $\frac{n(n+1)}{2}$, and the next term is $n+1$. "
    text = sentence * 40
    lines = render(sentence, "v1")
    page = render(text, "v1")
    assert len(text) > 3000 and page.width <= PAGE_WIDTH + 40 and page.height > 10 * lines.height
    narrow = rendering._ink(text, "v2", 28.0, 0, False, page_width=600)
    assert narrow.width <= 600


def test_items_that_cannot_be_typeset_are_skipped_by_id(tmp_path: Path) -> None:
    items = [Item(id="good", question="q", answer="1", text_reference=PROBLEMS["money"]),
             Item(id="bad-macro", question="q", answer="1", text_reference=r"Let \foo{x} be a widget."),
             Item(id="bad-math", question="q", answer="1", text_reference=r"Let $\frac{1}$ be\nsomething.")]
    with pytest.raises(TypesetError, match=r"\\foo"):
        render(items[1].text_reference, "v1")
    skipped: list[str] = []
    with pytest.warns(UserWarning, match="2 item.*bad-macro.*bad-math"):
        rendered = benchmarks.render_images(items, tmp_path, "v2", skipped=skipped)
    assert [it.id for it in rendered] == ["good"] and skipped == ["bad-macro", "bad-math"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["good-v2.png"]
    with pytest.raises(TypesetError):
        benchmarks.render_images(items[1:], tmp_path, "v1")


@pytest.mark.installed_tools
def test_real_latex_typesets_the_page(tmp_path: Path) -> None:
    if not rendering.has_latex():
        pytest.skip("LaTeX is not installed (Debian: apt-get install texlive-latex-base dvipng)")
    image = render(PROBLEMS["matrix"], "v1")
    assert image.width <= PAGE_WIDTH + 40
    assert not SOURCE.search(ocr(image, tmp_path))
