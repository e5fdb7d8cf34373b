"""Griffe extension: the docstrings' Sphinx roles (``:func:`relu```) as cross-references.

manualgrad's docstrings name other objects the Sphinx way, ``:func:`check_op```,
``:class:`~manualgrad.check.Report```, ``:data:`TOLERANCES```, which Markdown would show as
the literal text ``:func:`` before the code. Before mkdocstrings renders a docstring, this
extension resolves each such name in the scope of the object the docstring belongs to (a
module's members and imports, then its parents', as Python would) and writes it as an
optional mkdocs-autorefs reference: a link where the target is documented on some page, plain
code where it is not (a private helper). A name that resolves to nothing is a broken reference:
it is logged as a warning, which fails ``mkdocs build --strict``. ``~`` keeps the last
component only, as in Sphinx. Names outside manualgrad (``jax.vjp``) stay code.

A docstring the module completes at import (the recurrent ops share their paragraphs on lengths
and on the backward through ``__doc__.format``) is read from the imported object first, so the
page shows what ``help()`` shows rather than the ``{placeholder}``.
"""

from __future__ import annotations

import html
import importlib
import inspect
import logging
import re
from typing import Any

import griffe

log = logging.getLogger("mkdocs.plugins.griffe_rst_roles")

PLACEHOLDER = re.compile(r"\{[A-Za-z_]\w*\}")
ROLE = re.compile(r":(?:py:)?(?:func|class|mod|data|attr|meth|exc|obj|const):`(~?)([\w.]+)(?:\(\))?`")
PACKAGE = "manualgrad"


def _exists(collection: Any, path: str) -> bool:
    try:
        collection[path]
    except (KeyError, ValueError, griffe.AliasResolutionError, griffe.CyclicAliasError):
        return False
    return True


def _resolve(obj: griffe.Object, name: str) -> str | None:
    """The full path ``name`` means inside ``obj``'s docstring: a manualgrad path, ``""`` for a
    name outside manualgrad, or None when it names nothing."""
    collection = obj.modules_collection
    head, _, rest = name.partition(".")
    scope: griffe.Object | None = obj
    while scope is not None:  # the object itself, then its parents (a method's docstring sees its class)
        try:
            base = PACKAGE if head == PACKAGE else scope.resolve(head)
        except griffe.NameResolutionError:
            base = None
        if base is not None:
            if base.split(".")[0] != PACKAGE:
                return ""  # an import from elsewhere: jax, numpy, ...
            path = f"{base}.{rest}" if rest else base
            if _exists(collection, path):
                return path
        scope = scope.parent
    return "" if _defined_at_runtime(obj, name) else None


MISSING = object()


def _imported(module: str, parts: list[str]) -> Any:
    """``module.parts[0].parts[1]...`` as Python sees it after importing ``module``; ``MISSING``
    when the import fails or an attribute is not there."""
    try:
        value: Any = importlib.import_module(module)
    except Exception:  # noqa: BLE001 (any import failure means: not found)
        return MISSING
    for part in parts:
        value = getattr(value, part, MISSING)
        if value is MISSING:
            break
    return value


def _defined_at_runtime(obj: griffe.Object, name: str) -> bool:
    """Whether ``name`` exists in ``obj``'s module when imported: names that static analysis does
    not see (``A, B = f()``) are still real, though they cannot be linked."""
    parts = name.split(".")
    if parts[0] == PACKAGE:
        return _imported(PACKAGE, parts[1:]) is not MISSING
    return _imported(obj.module.path, parts) is not MISSING


def rewrite(obj: griffe.Object, text: str) -> str:
    def sub(m: re.Match) -> str:
        short, name = m.group(1), m.group(2)
        code = f"<code>{html.escape(name.rsplit('.', 1)[-1] if short else name)}</code>"
        path = _resolve(obj, name)
        if path is None:
            log.warning("%s: the docstring names %r, which is not defined there (%s)", obj.path, name, m.group(0))
            return code
        if not path:
            return code
        return f'<autoref identifier="{html.escape(path)}" optional>{code}</autoref>'

    return ROLE.sub(sub, text)


def _live_docstring(obj: griffe.Object) -> str | None:
    """The docstring of the imported object when the source's is a template that the module
    completes at import (``f.__doc__ = f.__doc__.format(...)``): static analysis sees only the
    ``{placeholder}``; None when the source's docstring is already the whole text."""
    if not PLACEHOLDER.search(obj.docstring.value):
        return None
    value = _imported(obj.module.path, obj.path[len(obj.module.path) + 1 :].split("."))
    if value is MISSING:  # not importable: keep the source's docstring
        return None
    live = inspect.cleandoc(value.__doc__ or "")
    return live if live and live != obj.docstring.value else None


class RstRoles(griffe.Extension):
    def on_package(self, *, pkg: griffe.Module, **kwargs: Any) -> None:
        if pkg.name != PACKAGE:
            return
        seen: set[int] = set()

        def walk(obj: griffe.Object) -> None:
            if id(obj) in seen:
                return
            seen.add(id(obj))
            if obj.docstring is not None and (live := _live_docstring(obj)) is not None:
                obj.docstring.value = live
            if obj.docstring is not None and ":" in obj.docstring.value:
                obj.docstring.value = rewrite(obj, obj.docstring.value)
            for member in obj.members.values():
                if not member.is_alias:
                    walk(member)

        walk(pkg)
