"""Every op's derivation is math that the documentation site renders and ``help()`` still reads.

The site (mkdocstrings, ``pymdownx.arithmatex`` and the latex2mathml hook in ``docs/hooks``)
turns the docstrings' LaTeX into MathML. The convention the docstrings follow:

* inline math is ``$...$`` and closes on the line it opens, with no space just inside either
  ``$`` (arithmatex reads ``$ x $`` as two dollar signs, not as math);
* display math is a paragraph of its own: a line holding only ``$$``, the LaTeX lines, a line
  holding only ``$$``, with blank lines around it;
* every snippet converts with latex2mathml, and converts completely: latex2mathml leaves a
  command it does not know as the text ``\\foo`` and an environment it does not know with bare
  ``&`` column separators, which the site's hook treats as failures too.

Checked for every registered op of manualgrad, every public function of ``manualgrad.losses``,
and the module docstrings and public members of the modules that hold them. Each registered op
must also contain at least one math snippet: its VJP's derivation renders as math. Code
(double backticks) is left out before looking for ``$``.
"""

from __future__ import annotations

import importlib
import inspect
import pkgutil
import re

import pytest

import manualgrad
import manualgrad.linear_cross_entropy
import manualgrad.losses
import manualgrad.ops
from manualgrad.core import REGISTRY, Op

try:
    from latex2mathml.converter import convert
except ImportError:  # the docs extra is not installed
    convert = None

# the library's own registered ops (tests register ops of their own, e.g. ``test.cube``)
OPS = {
    name: reg.op
    for name, reg in REGISTRY.items()
    if (getattr(reg.op.reference, "__module__", "") or "").startswith("manualgrad.")
}

MODULES = [
    manualgrad.ops,
    *(importlib.import_module(f"manualgrad.ops.{m.name}") for m in pkgutil.iter_modules(manualgrad.ops.__path__)),
    manualgrad.losses,
    manualgrad.linear_cross_entropy,
]


def _documented() -> dict[str, str]:
    """``{dotted name: docstring}`` of everything the checks read."""
    docs = {name: op.__doc__ or "" for name, op in OPS.items()}
    seen = {id(op) for op in OPS.values()}  # an op is checked once, under its registered name

    def add(name: str, obj: object) -> None:
        if id(obj) not in seen:
            seen.add(id(obj))
            docs[name] = obj.__doc__ or ""

    for name in manualgrad.losses.__all__:
        add(f"manualgrad.losses.{name}", getattr(manualgrad.losses, name))
    for module in MODULES:
        add(module.__name__, module)
        for name, value in vars(module).items():
            defined_here = getattr(value, "__module__", None) == module.__name__
            if not name.startswith("_") and defined_here and (
                inspect.isfunction(value) or inspect.isclass(value) or isinstance(value, Op)
            ):
                add(f"{module.__name__}.{name}", value)
    return docs


DOCS = _documented()

CODE = re.compile(r"``.+?``|`[^`\n]+`")  # code spans: never math
INLINE = re.compile(r"\$([^$]*)\$")
# what latex2mathml leaves untranslated (as docs/hooks/mathml.py judges it): in an element's
# text, a command (\foo) or a bare & (the column separator of an environment it does not know)
TEXT = re.compile(r">([^<]*)<")
LEFTOVER = re.compile(r"\\[A-Za-z]+|&(?!#x[0-9A-Fa-f]+;|#\d+;|[A-Za-z]+;)")
SYNONYMS = {r"\begin{aligned}": r"\begin{align*}", r"\end{aligned}": r"\end{align*}"}  # as the hook maps them


def parse(doc: str) -> tuple[list[tuple[int, str, bool]], list[str]]:
    """``(snippets, problems)`` of a docstring: each snippet ``(line, latex, display)``; each problem
    a sentence naming its line (1-based, in the cleaned docstring)."""
    lines = inspect.cleandoc(doc).splitlines()
    snippets, problems = [], []
    opened = None  # the line of an open $$
    for n, line in enumerate(lines, start=1):
        if line.strip() == "$$":
            if opened is None:
                if n > 1 and lines[n - 2].strip():
                    problems.append(f"line {n}: no blank line before the opening $$")
                opened = n
            else:
                body = "\n".join(lines[opened:n - 1])
                if not body.strip():
                    problems.append(f"line {opened}: empty display block")
                snippets.append((opened, body, True))
                if n < len(lines) and lines[n].strip():
                    problems.append(f"line {n}: no blank line after the closing $$")
                opened = None
            continue
        if opened is not None:
            if "$" in line:
                problems.append(f"line {n}: a $ inside the display block opened on line {opened}")
            continue
        text = CODE.sub("", line)
        if "$$" in text:
            problems.append(f"line {n}: $$ must stand alone on its line: {line.strip()!r}")
        elif text.count("$") % 2:
            problems.append(f"line {n}: an inline $ that does not close on its line: {line.strip()!r}")
        else:
            for m in INLINE.finditer(text):
                latex = m.group(1)
                if not latex.strip() or latex != latex.strip():
                    problems.append(f"line {n}: ${latex}$ has a space just inside a $ (not read as math)")
                snippets.append((n, latex, False))
    if opened is not None:
        problems.append(f"line {opened}: $$ opened and never closed")
    return snippets, problems


def untranslated(latex: str, display: bool) -> str | None:
    """Why latex2mathml fails on ``latex``, or None when it converts completely."""
    for old, new in SYNONYMS.items():
        latex = latex.replace(old, new)
    try:
        out = convert(latex, display="block" if display else "inline")
    except Exception as e:  # latex2mathml raises its own exception types, IndexError, ...
        return f"{type(e).__name__}: {e}"
    for text in TEXT.findall(out):
        bad = LEFTOVER.search(text)
        if bad:
            return f"not translated: {bad.group(0)!r}"
    if "<mi>" not in out and "<mn>" not in out and "<mo>" not in out and "<mtext>" not in out:
        return "converted to nothing"
    return None


def test_parse():
    doc = """First line with $a$ and ``$not math$``.

    $$
    x = 1
    $$

    Unclosed $b here.
    Spaced $ c $.
    Text
    $$
    y
    $$
    After.
    """
    snippets, problems = parse(doc)
    assert [(s[1], s[2]) for s in snippets] == [("a", False), ("x = 1", True), (" c ", False), ("y", True)]
    assert [p.split(":")[0] for p in problems] == ["line 7", "line 8", "line 10", "line 12"]


@pytest.mark.parametrize("name", sorted(DOCS))
def test_delimiters(name):
    _, problems = parse(DOCS[name])
    assert not problems, f"{name}:\n  " + "\n  ".join(problems)


@pytest.mark.skipif(convert is None, reason="latex2mathml is not installed: it comes with the docs extra (pip install -e '.[docs]')")
@pytest.mark.parametrize("name", sorted(DOCS))
def test_math_converts(name):
    snippets, _ = parse(DOCS[name])
    failures = [f"line {n}: {why}: {latex!r}" for n, latex, display in snippets if (why := untranslated(latex, display))]
    assert not failures, f"{name}:\n  " + "\n  ".join(failures)


@pytest.mark.parametrize("name", sorted(OPS))
def test_every_op_derives_its_vjp_in_math(name):
    snippets, _ = parse(OPS[name].__doc__ or "")
    assert snippets, f"{name}: the docstring has no math; its VJP's derivation must render as math ($...$, $$ blocks)"


def test_the_walk_sees_the_library():
    assert len(OPS) >= 38 and "manualgrad.ops.linear" in OPS and "manualgrad.losses.mse" in OPS
    assert "manualgrad.losses.scaled" in DOCS and "manualgrad.ops.windows" in DOCS
