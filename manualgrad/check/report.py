"""Reports: one :class:`Row` per compared quantity, gathered in a :class:`Report` per check.

Errors are measured normwise, per row: ``max_abs = max |manual - reference|`` and
``max_rel = max_abs / max |reference|``; a row passes when
``max_abs <= atol + rtol * max |reference|``. Non-finite values are compared exactly: NaN
against NaN in the same place, or the same infinity, agree; a NaN or infinity on one side
only is an infinite error, so one NaN never hides the other elements' errors. A cotangent
of the wrong dtype, shape or structure, and a manual rule that raises, fail their row.

A failed row says where and how: ``worst`` (the index, manual and reference values of its
largest error) and ``diagnosis`` (see :mod:`manualgrad.check.diagnose`); a failed row of
values keeps the two arrays, which :meth:`Row.plot` and :meth:`Report.plot` draw.
"""

from __future__ import annotations

import dataclasses
import pathlib
import re
import textwrap
from typing import Any, Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from manualgrad.check import plot
from manualgrad.check.diagnose import Finding, Worst, diagnose, diagnose_shapes, error_map
from manualgrad.core import fail

__all__ = ["Row", "Report", "compare", "error_row", "raised"]


@dataclasses.dataclass(frozen=True)
class Row:
    """One compared quantity: ``scale`` is ``max |reference|``. A failed row carries ``worst``
    (``None`` where no element can be compared) and ``diagnosis``, and a failed row of values
    the ``manual`` and ``reference`` arrays that hold its worst element."""

    what: str
    max_abs: float
    scale: float
    rtol: float
    atol: float
    error: str = ""  # a mismatch that is not a number: dtype, shape, an exception raised
    worst: Worst | None = None
    diagnosis: str = ""
    manual: np.ndarray | None = dataclasses.field(default=None, repr=False, compare=False)
    reference: np.ndarray | None = dataclasses.field(default=None, repr=False, compare=False)

    @property
    def max_rel(self) -> float:
        if self.scale:
            return self.max_abs / self.scale
        return 0.0 if self.max_abs == 0 else float("inf")

    @property
    def passed(self) -> bool:
        return not self.error and self.max_abs <= self.atol + self.rtol * self.scale

    def __str__(self) -> str:
        verdict = "ok" if self.passed else "FAILED"
        if self.error:
            return f"{self.what:<14} {verdict}: {self.error}"
        return (f"{self.what:<14} max_abs={self.max_abs:.3e} max_rel={self.max_rel:.3e} "
                f"(rtol={self.rtol:g}, atol={self.atol:g}) {verdict}")

    def explain(self) -> str:
        """The diagnosis, then the largest error (index, manual and reference values)."""
        if self.worst is None:
            return self.diagnosis
        at = f" at {self.worst.index}" if self.worst.index else ""
        return (f"{self.diagnosis}\nlargest error{at}: manual {self.worst.manual:.7g}, "
                f"reference {self.worst.reference:.7g}")

    def plot(self, path: str | pathlib.Path, title: str = "") -> pathlib.Path:
        """Draw the reference, the manual array and their difference to the PNG ``path``.

        Args:
          path: the PNG file to write.
          title: a heading; the row's name and diagnosis follow it.

        Returns:
          ``path``. Needs matplotlib; only failed rows of values keep arrays to draw.
        """
        if self.manual is None or self.reference is None:
            fail("manualgrad.check.Row.plot", f"row {self.what!r} has no arrays to draw: only failed rows of values keep them")
        heading = f"{title}  {self.what}".strip()
        index = self.worst.index if self.worst is not None else None
        return plot.heatmaps(self.reference, self.manual, path, f"{heading}\n{textwrap.fill(self.diagnosis, 120)}", index)


@dataclasses.dataclass(frozen=True)
class Report:
    """The outcome of one check: one :class:`Row` per compared quantity."""

    op: str
    mode: str
    dtype: str
    rows: tuple[Row, ...]
    example: str = ""  # the example's shapes and static params, when checked by check_op

    @property
    def passed(self) -> bool:
        return all(r.passed for r in self.rows)

    @property
    def max_abs(self) -> float:
        return max((r.max_abs for r in self.rows), default=0.0)

    @property
    def max_rel(self) -> float:
        return max((r.max_rel for r in self.rows), default=0.0)

    @property
    def failed(self) -> tuple[Row, ...]:
        return tuple(r for r in self.rows if not r.passed)

    def __str__(self) -> str:
        where = f", example {self.example}" if self.example else ""
        head = f"{self.op} [{self.mode}, {self.dtype}{where}]: {'ok' if self.passed else 'FAILED'}"
        explained: dict[str, list[Row]] = {}  # rows with one diagnosis (x_bar#0 and x_bar#1) share its lines
        for r in self.failed:
            explained.setdefault(r.diagnosis, []).append(r)
        diagnoses = [f"  {', '.join(r.what for r in rows)}: " + rows[0].explain().replace("\n", "\n    ")
                     for rows in explained.values()]
        legend = []
        if any("#" in r.what for r in self.rows):
            legend = ["  (x_bar#k: the cotangent of argument x for the k-th random output cotangent)"]
        return "\n".join([head] + diagnoses + [f"  {r}" for r in self.rows] + legend)

    def assert_ok(self) -> "Report":
        if not self.passed:
            raise AssertionError(str(self))
        return self

    def plot(self, directory: str | pathlib.Path, rows: Sequence[Row] | None = None) -> list[pathlib.Path]:
        """Draw every failed row that kept its arrays (see :meth:`Row.plot`) into ``directory``.

        Args:
          directory: where the PNGs go (created if missing), one per row, named after the
            op, mode, dtype, example and row.
          rows: draw only these of the failed rows.

        Returns:
          The paths written (none for a report that passed).
        """
        directory = pathlib.Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        title = f"{self.op} [{self.mode}, {self.dtype}{', ' + self.example if self.example else ''}]"
        stem = "_".join(_slug(part) for part in (self.op, self.mode, self.dtype, self.example) if part)
        return [r.plot(directory / f"{stem}_{_slug(r.what)}.png", title) for r in self.failed
                if r.manual is not None and (rows is None or r in rows)]


def _slug(text: str) -> str:
    """``text`` fit for a file name: runs of other characters than letters, digits, ``_.+`` become ``-``."""
    return re.sub(r"[^\w.+]+", "-", text).strip("-")


def compare(got: np.ndarray, want: np.ndarray) -> tuple[float, float]:
    """``(max_abs, scale)`` of one array pair, NaN- and infinity-aware (see the module docstring)."""
    w = np.asarray(want, np.float64)
    scale = float(np.max(np.abs(w[np.isfinite(w)]), initial=0.0))
    return float(np.max(error_map(got, want), initial=0.0)), scale


def error_row(what: str, error: str, tol: tuple[float, float], finding: Finding | None = None) -> Row:
    """A row that failed before its values could be compared; ``finding`` explains it, else
    its diagnosis is ``unexplained`` with the error."""
    if finding is None:
        return Row(what, float("inf"), 0.0, *tol, error=error, diagnosis=f"unexplained — {what}: {error}")
    return Row(what, float("inf"), 0.0, *tol, error=error, diagnosis=finding.diagnosis,
               manual=finding.manual, reference=finding.reference)


def raised(what: str, e: Exception, tol: tuple[float, float]) -> Row:
    """The row of a manual rule that raised ``e``."""
    return error_row(what, f"the manual rule raised {type(e).__name__}: {e}", tol)


def _leaves(tree: Any) -> list[tuple[str, Any]]:
    """``(path, leaf)`` pairs; integer inputs have float0 cotangents, with nothing to compare."""
    return [(jax.tree_util.keystr(path), a) for path, a in jax.tree_util.tree_leaves_with_path(tree)
            if jnp.result_type(a) != jax.dtypes.float0]


def row(what: str, got: Any, want: Any, tol: tuple[float, float], rescaled: Callable[[], Any] | None = None) -> Row:
    """One row comparing two pytrees leaf by leaf: structure, shapes, dtypes, then values.

    Args:
      what: the row's name, e.g. ``x_bar#0``.
      got: the manual pytree.
      want: the reference pytree.
      tol: ``(rtol, atol)``.
      rescaled: for a cotangent, reruns the manual rule with the output cotangent doubled and
        returns this row's pytree (used only to diagnose a failure).

    Returns:
      The :class:`Row`; a failed one carries ``worst`` and ``diagnosis``.
    """
    got_leaves, want_leaves = _leaves(got), _leaves(want)
    if len(got_leaves) != len(want_leaves):
        return error_row(what, f"structure {jax.tree_util.tree_structure(got)}, reference {jax.tree_util.tree_structure(want)}", tol)
    max_abs, scale = 0.0, 0.0
    for (_, g), (_, w) in zip(got_leaves, want_leaves):
        if np.shape(g) != np.shape(w):
            return error_row(what, f"shape {np.shape(g)}, reference {np.shape(w)}", tol, diagnose_shapes(what, g, w, *tol))
        if jnp.result_type(g) != jnp.result_type(w):
            return error_row(what, f"dtype {jnp.result_type(g)}, reference {jnp.result_type(w)}", tol)
        leaf_abs, leaf_scale = compare(g, w)
        max_abs, scale = max(max_abs, leaf_abs), max(scale, leaf_scale)
    result = Row(what, max_abs, scale, *tol)
    if result.passed:
        return result
    finding = diagnose(
        what, [g for _, g in got_leaves], [w for _, w in want_leaves], *tol, paths=[p for p, _ in want_leaves],
        rescaled=None if rescaled is None else lambda: [a for _, a in _leaves(rescaled())],
    )
    return dataclasses.replace(result, worst=finding.worst, diagnosis=finding.diagnosis,
                               manual=finding.manual, reference=finding.reference)
