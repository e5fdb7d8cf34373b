"""MkDocs hook: the LaTeX that ``pymdownx.arithmatex`` (``generic: true``) marks, as MathML.

arithmatex leaves inline math as ``<span class="arithmatex">\\(...\\)</span>`` and display math
as ``<div class="arithmatex">\\[...\\]</div>``, meant for a JavaScript renderer. This hook
converts both at build time with latex2mathml, so the site shows its math with the browser's
own MathML support: no script, no font download, nothing fetched when a page is viewed.

latex2mathml does not raise on everything it cannot translate: an unknown command comes out
as the text ``\\foo``, and an environment it does not know leaves its ``&`` column separators
in the output. Both are treated as failures. A failure logs a warning naming the page and the
snippet, which ``mkdocs build --strict`` turns into a failed build, and leaves the snippet as
plain LaTeX on the page.
"""

from __future__ import annotations

import html
import logging
import re

from latex2mathml.converter import convert

log = logging.getLogger("mkdocs.hooks.mathml")

_INLINE = re.compile(r'<span class="arithmatex">\\\((.*?)\\\)</span>', re.S)
_DISPLAY = re.compile(r'<div class="arithmatex">\\\[(.*?)\\\]</div>', re.S)
# environments latex2mathml lacks but has an exact equivalent for in display math
_SYNONYMS = {r"\begin{aligned}": r"\begin{align*}", r"\end{aligned}": r"\end{align*}"}
# text of an element: an untranslated command (\foo) or a bare & (an unknown environment's column)
_TEXT = re.compile(r">([^<]*)<")
_LEFTOVER = re.compile(r"\\[A-Za-z]+|&(?!#x[0-9A-Fa-f]+;|#\d+;|[A-Za-z]+;)")
# latex2mathml writes \operatorname{softmax} and \max as operators (<mo>), which the browser spaces
# like a binary operator ("p = softmax (s)"), and infinity as an operator too; as identifiers they
# are set upright (several letters) and tight, as LaTeX sets them
_WORD_OPERATOR = re.compile(r"<mo>([A-Za-z]{2,})</mo>")
_INFINITY = "<mo>&#x0221E;</mo>"


class MathError(ValueError):
    pass


def to_mathml(latex: str, display: bool) -> str:
    """MathML for ``latex``; raises :class:`MathError` when latex2mathml cannot translate it."""
    for old, new in _SYNONYMS.items():
        latex = latex.replace(old, new)
    try:
        out = convert(latex, display="block" if display else "inline")
    except Exception as e:  # latex2mathml raises its own exception types, and IndexError etc.
        raise MathError(f"{type(e).__name__}: {e}".rstrip(": ")) from e
    for text in _TEXT.findall(out):
        bad = _LEFTOVER.search(text)
        if bad:
            raise MathError(f"not translated: {bad.group(0)!r}")
    return _WORD_OPERATOR.sub(r"<mi>\1</mi>", out).replace(_INFINITY, "<mi>&#x0221E;</mi>")


def convert_page(content: str, where: str) -> str:
    def replace(display: bool):
        def sub(m: re.Match) -> str:
            latex = html.unescape(m.group(1)).strip()
            try:
                return to_mathml(latex, display)
            except MathError as e:
                log.warning("%s: LaTeX that latex2mathml cannot convert (%s): %s", where, e, latex)
                return m.group(0)

        return sub

    content = _DISPLAY.sub(replace(True), content)
    return _INLINE.sub(replace(False), content)


def on_page_content(html_: str, page, config, files) -> str:  # noqa: ARG001 (MkDocs' hook signature)
    return convert_page(html_, page.file.src_uri)
