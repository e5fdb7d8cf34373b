"""The documentation site: every page's Python runs, and the site builds in strict mode.

Each page's ```python blocks run in order in one fresh interpreter (a tutorial builds on its
earlier blocks), as a reader would paste them. A block whose first line is ``# not run: <why>``
is skipped, and says so on the page. The build needs the ``docs`` extra; without it those tests
skip (a plain ``.[test]`` install has no mkdocs).
"""

import importlib.util
import os
import pathlib
import re
import subprocess
import sys

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]
DOCS = ROOT / "docs"
SKIP_MARK = "# not run:"
# a fence opening with ```python (attributes such as title="..." allowed), at any indentation
FENCE = re.compile(r"^(?P<indent>[ \t]*)```python\b[^\n]*\n(?P<body>.*?)^(?P=indent)```[ \t]*$", re.S | re.M)


def python_blocks(text: str) -> list[tuple[int, str]]:
    """``(line, code)`` of each runnable ```python block of a Markdown page."""
    blocks = []
    for m in FENCE.finditer(text):
        indent = len(m["indent"])
        code = "".join(line[indent:] for line in m["body"].splitlines(keepends=True))
        if not code.lstrip().startswith(SKIP_MARK):
            blocks.append((text.count("\n", 0, m.start()) + 2, code))
    return blocks


PAGES = sorted(p for p in DOCS.rglob("*.md") if python_blocks(p.read_text()))


def test_blocks_are_found():
    sample = 'a\n```python title="x.py"\nprint(1)\n```\n\n    ```python\n    # not run: no\n    ```\n  ```python\n  y = 2\n  ```\n'
    assert python_blocks(sample) == [(3, "print(1)\n"), (10, "y = 2\n")]
    assert len(PAGES) >= 5, "the tutorials' code blocks were not found"


@pytest.mark.parametrize("page", PAGES, ids=lambda p: str(p.relative_to(DOCS)))
def test_page_code_runs(page):
    # one interpreter per page; each block compiled under its page and line, so a traceback says
    # which block failed; __name__ is "__main__", as in a script
    blocks = [(f"{page.relative_to(ROOT)}:{line}", code) for line, code in python_blocks(page.read_text())]
    runner = (
        f"BLOCKS = {blocks!r}\n"
        "namespace = {'__name__': '__main__'}\n"
        "for where, code in BLOCKS:\n"
        "    exec(compile(code, where, 'exec'), namespace)\n"
    )
    out = subprocess.run([sys.executable, "-c", runner], cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-4000:]


def _docs_tools_missing() -> str | None:
    for module in ("mkdocs", "material", "mkdocstrings_handlers.python", "latex2mathml"):
        try:
            found = importlib.util.find_spec(module) is not None
        except ModuleNotFoundError:
            found = False
        if not found:
            return f"{module} is not installed: the site needs the docs extra (pip install -e '.[docs]')"
    return None


@pytest.fixture(scope="module")
def site(tmp_path_factory):
    missing = _docs_tools_missing()
    if missing:
        pytest.skip(missing)
    out = tmp_path_factory.mktemp("site")
    env = {**os.environ, "NO_MKDOCS_2_WARNING": "1"}
    build = subprocess.run([sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(out)],
                           cwd=ROOT, capture_output=True, text=True, timeout=600, env=env)
    assert build.returncode == 0, build.stderr[-6000:]
    return out


def _hook(name):
    missing = _docs_tools_missing()
    if missing:
        pytest.skip(missing)
    spec = importlib.util.spec_from_file_location(f"docs_hook_{name}", DOCS / "hooks" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # its dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


def test_latex_that_latex2mathml_cannot_convert_is_an_error(caplog):
    mathml = _hook("mathml")
    assert mathml.to_mathml(r"\operatorname{softmax}(s)", display=False).count("<mi>softmax</mi>") == 1
    assert "<mtable" in mathml.to_mathml(r"\begin{aligned} a &= b \\ c &= d \end{aligned}", display=True)
    for bad in (r"\foo{x}", r"x_{", r"\begin{weird} a & b \end{weird}"):
        with pytest.raises(mathml.MathError):
            mathml.to_mathml(bad, display=False)
    page = '<p>a <span class="arithmatex">\\(\\foo + 1\\)</span> b</p>'
    with caplog.at_level("WARNING"):
        assert mathml.convert_page(page, "api/x.md") == page  # left as it was, and logged
    assert "api/x.md" in caplog.text and "\\foo + 1" in caplog.text


def test_benchmark_plots_read_the_step_tables():
    plots = _hook("benchmark_plots")
    rows = plots.step_rows((ROOT / "BENCHMARKS.md").read_text())
    assert {r.impl for r in rows} >= {"manual", "reference"}
    for draw in plots.PLOTS.values():
        assert draw(rows).startswith("<svg")


def test_site_builds_in_strict_mode(site):
    assert (site / "index.html").exists() and (site / "api" / "ops" / "linear.html").exists()


def test_math_is_mathml_and_nothing_is_fetched(site):
    linear = (site / "api" / "ops" / "linear.html").read_text()
    assert "<math" in linear, "the linear op's derivation was not rendered as MathML"
    remote = re.compile(r"<(?:script|link)\b[^>]*(?:src|href)=[\"'](?:https?:)?//", re.I)
    for page in site.rglob("*.html"):
        text = page.read_text()
        assert "arithmatex" not in text, f"{page.relative_to(site)}: LaTeX left for a JavaScript renderer"
        assert not remote.search(text), f"{page.relative_to(site)}: {remote.search(text).group(0)}"
        assert not re.search(r"<(?:script|link)\b[^>]*cdn", text, re.I), f"{page.relative_to(site)}: a CDN asset"


def test_docstrings_completed_at_import_show_their_whole_text(site):
    """The recurrent ops' docstrings are templates filled at import; the page shows the filled text."""
    page = (site / "api" / "ops" / "recurrent.html").read_text()
    assert not re.search(r"\{(?:lengths|backward)\}", page), "a docstring's {placeholder} reached the page"
    text = " ".join(re.sub(r"<[^>]+>", "", page).split())
    assert text.count("keeps its initial state") == 3 and text.count("Backward through time") == 3
