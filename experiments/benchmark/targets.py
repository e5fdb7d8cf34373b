"""The benchmark's targets, in one table (:data:`TARGETS`), and their evaluation on a result.

Each :class:`Target` names the rows it compares (:class:`Rows`: a pattern over model names, and
batch or context ranges), the implementations it compares (a ratio of two, or one quantity), a
threshold and a direction. The report lists every target that some rows of the result match.
A new family of rows adds its targets here as entries.
"""

from __future__ import annotations

import dataclasses
import fractions
import math
import re
from typing import Any, Iterator

import numpy as np

#: model-name patterns of the families of rows; a named group captures the size the row is at
#: (``T`` the context length, ``V`` the vocabulary)
MLP = r"\d+(?:-\d+)+"
CNN = "cnn"
ATTENTION = r"attention-T(?P<T>\d+)"
TRANSFORMER = r"transformer-T(?P<T>\d+)"
LSTM = r"lstm-T(?P<T>\d+)"
LMHEAD = r"lmhead-V(?P<V>\d+)"

Range = tuple[int | None, int | None]  # inclusive; None leaves that end open


@dataclasses.dataclass(frozen=True)
class Rows:
    """Which rows a target compares: benchmark.json's ``section``, grouped by (model, batch).

    Attributes:
        model: a regular expression the model name must match in full; its named group (``T``,
            ``V``), if any, gives the size that ``size`` bounds and the target's text names.
        section: ``rows`` (train steps, attention), ``layers`` or ``epochs``.
        batch: the batch sizes, an inclusive range.
        size: the sizes (the pattern's named group), an inclusive range.
    """

    model: str
    section: str = "rows"
    batch: Range = (None, None)
    size: Range = (None, None)

    def groups(self, result: dict) -> Iterator[tuple[dict[str, Any], dict[str, dict]]]:
        """Each matching (model, batch): its names for the target's text and its rows by variant
        (the implementation; for epoch rows ``scan/manual``, ``loop/manual``, ...)."""
        grouped: dict[tuple[str, int], dict[str, dict]] = {}
        for row in result.get(self.section, []):
            variant = row["impl"] if "impl" in row else f"{row['epoch']}/{row['grad']}"
            grouped.setdefault((row["model"], row["batch"]), {})[variant] = row
        for (model, batch), rows in grouped.items():
            match = re.fullmatch(self.model, model)
            sizes = {k: int(v) for k, v in match.groupdict().items() if v is not None} if match else {}
            size = next(iter(sizes.values()), None)
            if match and within(batch, self.batch) and (self.size == (None, None) or size is not None and within(size, self.size)):
                yield {"at": f"{model}@{batch}", "model": model, "batch": batch, **sizes}, rows


def within(value: int, bounds: Range) -> bool:
    """Whether ``value`` lies in the inclusive range ``bounds``."""
    lo, hi = bounds
    return (lo is None or value >= lo) and (hi is None or value <= hi)


@dataclasses.dataclass(frozen=True)
class Target:
    """One target of the benchmark.

    Attributes:
        name: the report's text; ``{at}`` (``model@batch``), the size (``{T}``, ``{V}``), ``{batch}``, ``{op}`` and
            ``{threshold}`` are filled in.
        rows: the rows it compares.
        compare: ``(a, b)``: the quantity of variant ``a`` over that of ``b``; ``(a,)``: of ``a`` alone.
        op: ``<=`` or ``>=``: which side of the threshold meets the target.
        threshold: as the report shows it (``"0.60"``, ``"1/8"``); None: reported, no target.
        quantity: the rows' field compared: ``step_ms``, ``temp_bytes`` or ``fraction_of_peak``.
        over: ``each``: one line per (model, batch); ``every``: one line, the worst of them, each
            listed; ``median``: one line, their median.
    """

    name: str
    rows: Rows
    compare: tuple[str, ...]
    op: str = "<="
    threshold: str | None = None
    quantity: str = "step_ms"
    over: str = "each"

    def value(self, rows: dict[str, dict]) -> float | None:
        """The compared number for one group; None where a variant or its quantity is missing."""
        found = [rows.get(v, {}).get(self.quantity) for v in self.compare]
        if any(q is None for q in found):
            return None
        if len(found) == 1:
            return float(found[0])
        a, b = found
        return a / b if b else (1.0 if a == b else math.inf)

    def shown(self, rows: dict[str, dict], value: float) -> str:
        """The measured text of one group: the ratio, or for memory both byte counts."""
        if self.quantity != "temp_bytes":
            return f"{value:.3f}"
        a, b = (rows[v][self.quantity] for v in self.compare)
        if not 0 < a or b < 1.05 * a:  # equal, or within 5%: no factor to show
            return f"{a:,} vs {b:,}"
        return f"{a:,} vs {b:,} ({b / a:.{1 if b < 10 * a else 0}f}x less)"

    def met(self, value: float) -> bool:
        if self.threshold is None:
            return True
        limit = float(fractions.Fraction(self.threshold))
        return value <= limit if self.op == "<=" else value >= limit

    def evaluate(self, result: dict) -> list[tuple[str, str, bool]]:
        """``(what, measured, met)`` per line of the report (none where no rows match)."""
        groups = [(names, rows, self.value(rows)) for names, rows in self.rows.groups(result)]
        groups = [(names, rows, v) for names, rows, v in groups if v is not None]
        if self.over == "each":
            return [(self.text(names), self.shown(rows, v), self.met(v)) for names, rows, v in groups]
        if not groups:
            return []
        values = [v for _, _, v in groups]
        if self.over == "median":
            value = float(np.median(values))
            return [(self.text({}), f"{value:.3f}", self.met(value))]
        worst = max(values) if self.op == "<=" else min(values)
        listed = ", ".join(f"{names['at']} {v:.3f}" for names, _, v in groups)
        return [(self.text({}), listed, self.met(worst))]

    def text(self, names: dict[str, Any]) -> str:
        return self.name.format(op=self.op, threshold=self.threshold, **names)


TIME = ("manual", "reference")
#: every target of the benchmark, in the report's order
TARGETS: tuple[Target, ...] = (
    Target("MLP manual / reference step time, median over configs {op} {threshold}", Rows(MLP), TIME,
           threshold="1.00", over="median"),
    Target("MLP manual / reference, every config {op} {threshold}", Rows(MLP), TIME, threshold="1.05", over="every"),
    Target("CNN manual / reference at {at} {op} {threshold}", Rows(CNN, batch=(None, 128)), TIME, threshold="0.60"),
    Target("CNN manual / reference at {at} {op} {threshold}", Rows(CNN, batch=(129, None)), TIME, threshold="1.05"),
    Target("attention manual / reference time at T={T} {op} {threshold}", Rows(ATTENTION, size=(None, 512)), TIME,
           threshold="1.3"),
    Target("attention manual / reference time at T={T} {op} {threshold}", Rows(ATTENTION, size=(513, None)), TIME,
           threshold="1.0"),
    Target("attention manual temp bytes {op} {threshold} of reference at T={T}", Rows(ATTENTION, size=(2048, None)), TIME,
           threshold="1/8", quantity="temp_bytes"),
    Target("transformer manual / reference at {at} {op} {threshold}", Rows(TRANSFORMER), TIME, threshold="1.05"),
    Target("LSTM manual / reference time at T={T} {op} {threshold}", Rows(LSTM, size=(256, None)), TIME, threshold="0.8"),
    Target("LSTM manual temp bytes {op} {threshold} of reference at T={T}", Rows(LSTM, size=(256, None)), TIME,
           threshold="1/3", quantity="temp_bytes"),
    Target("torch / manual at {at} {op} {threshold}", Rows(LSTM, size=(256, None)), ("torch", "manual"), ">=", "0.8"),
    Target("lmhead manual / reference time at {at} {op} {threshold}", Rows(LMHEAD), TIME, threshold="1.0"),
    Target("lmhead manual temp bytes {op} {threshold} of reference at {at}", Rows(LMHEAD, size=(32768, None)), TIME,
           threshold="1/8", quantity="temp_bytes"),
    Target("torch / manual at {at} (reported, no target)", Rows(LMHEAD), ("torch", "manual")),
    Target("explicit / manual, every config {op} {threshold}", Rows(".+"), ("explicit", "manual"), threshold="1.10",
           over="every"),
    Target("torch / manual at {at} {op} {threshold}", Rows(MLP, batch=(None, 255)), ("torch", "manual"), ">=", "1.1"),
    Target("torch / manual at {at} {op} {threshold}", Rows(MLP, batch=(256, None)), ("torch", "manual"), ">=", "1.5"),
    Target("torch / manual, every MLP config {op} {threshold}", Rows(MLP), ("torch", "manual"), ">=", "1.0", over="every"),
    Target("torch / manual at {at} {op} {threshold}", Rows(CNN), ("torch", "manual"), ">=", "0.8"),
    Target("torch / manual at {at} {op} {threshold}", Rows(TRANSFORMER), ("torch", "manual"), ">=", "0.8"),
    Target("scanned epoch, batch {batch}: fraction of GEMM peak {op} {threshold}",
           Rows(MLP, section="epochs", batch=(None, 128)), ("scan/manual",), ">=", "0.60", "fraction_of_peak"),
    Target("scanned epoch, batch {batch}: fraction of GEMM peak {op} {threshold}",
           Rows(MLP, section="epochs", batch=(129, None)), ("scan/manual",), ">=", "0.75", "fraction_of_peak"),
    Target("temp bytes manual {op} reference at {at}", Rows(f"{MLP}|{CNN}|{TRANSFORMER}"), TIME, threshold="1",
           quantity="temp_bytes"),
)


def evaluate(result: dict, targets: tuple[Target, ...] = TARGETS) -> list[tuple[str, str, bool]]:
    """Every target's lines on ``result`` (a benchmark.json document).

    Returns:
        ``(what, measured, met)`` per line, in the table's order.
    """
    return [line for target in targets for line in target.evaluate(result)]
