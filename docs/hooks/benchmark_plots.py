"""MkDocs hook: plots of BENCHMARKS.md's tables, drawn as inline SVG when the site is built.

A page asks for a plot with a line ``<!-- benchmark-plot: NAME -->``; NAME is one of
:data:`PLOTS`. The numbers come from the step tables of BENCHMARKS.md (header ``| model | batch |
impl | step ms | ... | ratio | XLA temp bytes |``), the file the benchmark's report is kept in
and the performance page includes whole, so the plots cannot disagree with the tables beside
them and there is no second copy of any number. The SVG is written here, without matplotlib:
the docs extra stays small and the build needs no plotting backend.

An unknown plot name, or a BENCHMARKS.md without the rows a plot needs, is logged as a warning,
which fails ``mkdocs build --strict``.
"""

from __future__ import annotations

import html
import logging
import math
import pathlib
import re
from dataclasses import dataclass

log = logging.getLogger("mkdocs.hooks.benchmark_plots")

MARKER = re.compile(r"^<!-- benchmark-plot: ([\w-]+) -->[ \t]*$", re.M)
STEP_HEADER = ["model", "batch", "impl", "step ms", "GFLOP/s", "% of GEMM rate", "ratio", "XLA temp bytes"]
COLOURS = {"explicit": "#3f51b5", "reference": "#ef6c00", "torch": "#2e7d32", "manual": "#757575"}


@dataclass(frozen=True)
class Row:
    model: str
    batch: int
    impl: str
    ms: float
    temp: int | None  # XLA temp bytes; None where not measured (PyTorch)


def step_rows(text: str) -> list[Row]:
    """Every row of every step table in ``text``, in order; a (model, batch, impl) measured twice
    keeps its first (latest) row."""
    rows, seen, in_table = [], set(), False
    for line in text.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")] if line.startswith("|") else None
        if cells is None:
            in_table = False
        elif cells == STEP_HEADER:
            in_table = True
        elif in_table and not set("".join(cells)) <= set("-: "):
            model, batch, impl, ms, *_, temp = cells
            key = (model, int(batch), impl)
            if key not in seen:
                seen.add(key)
                digits = temp.replace(",", "")
                rows.append(Row(model, int(batch), impl, float(ms), int(digits) if digits.isdigit() else None))
    return rows


def _configs(rows: list[Row], per_op: bool) -> list[tuple[str, dict[str, Row]]]:
    out: dict[str, dict[str, Row]] = {}
    for r in rows:
        if ("/" in r.model) == per_op:
            out.setdefault(f"{r.model} @ {r.batch}", {})[r.impl] = r
    return [(name, impls) for name, impls in out.items() if "manual" in impls]


def _log_axis(lo: float, hi: float) -> tuple[float, float, list[float]]:
    ticks = [2.0**k for k in range(-6, 11)]
    lo = max(t for t in ticks if t <= lo)
    hi = min(t for t in ticks if t >= hi)
    return lo, hi, [t for t in ticks if lo <= t <= hi]


def _tick_label(t: float) -> str:
    return f"{t:g}" if t >= 1 or t in (0.5, 0.25) else f"1/{round(1 / t)}"


def bar_chart(groups: list[tuple[str, list[tuple[str, float, str]]]], axis_label: str, title: str) -> str:
    """Horizontal bars on a log axis with a line at 1: ``groups`` of ``(series, value, tooltip)``."""
    if not groups:
        raise ValueError("no rows to plot")
    values = [v for _, bars in groups for _, v, _ in bars]
    lo, hi, ticks = _log_axis(min(values + [1.0]), max(values + [1.0]))
    left, width, bar, gap, top = 250, 470, 9, 10, 44
    height = top + sum(len(bars) * bar + gap for _, bars in groups) + 34

    def x(v: float) -> float:
        return left + width * (math.log(v) - math.log(lo)) / (math.log(hi) - math.log(lo))

    series = list(dict.fromkeys(s for _, bars in groups for s, _, _ in bars))
    out = [f'<svg class="benchmark-plot" width="{left + width + 30}" height="{height}" '
           f'viewBox="0 0 {left + width + 30} {height}" role="img" '
           f'aria-label="{html.escape(title)}" xmlns="http://www.w3.org/2000/svg">',
           f"<title>{html.escape(title)}</title>"]
    for i, s in enumerate(series):  # legend
        lx = left + i * 120
        out.append(f'<rect x="{lx}" y="6" width="12" height="12" fill="{COLOURS.get(s, "#999")}"/>'
                   f'<text x="{lx + 17}" y="16" class="legend">{html.escape(s)}</text>')
    y = top
    for t in ticks:  # grid
        out.append(f'<line x1="{x(t):.1f}" y1="{top - 6}" x2="{x(t):.1f}" y2="{height - 30}" class="grid"/>'
                   f'<text x="{x(t):.1f}" y="{height - 16}" class="tick">{_tick_label(t)}</text>')
    for name, bars in groups:
        out.append(f'<text x="{left - 8}" y="{y + len(bars) * bar / 2 + 4:.1f}" class="group">{html.escape(name)}</text>')
        for s, v, tip in bars:
            x0, x1 = sorted((x(1.0), x(v)))
            out.append(f'<rect x="{x0:.1f}" y="{y}" width="{max(x1 - x0, 1):.1f}" height="{bar - 1}" '
                       f'fill="{COLOURS.get(s, "#999")}"><title>{html.escape(tip)}</title></rect>')
            y += bar
        y += gap
    out.append(f'<line x1="{x(1.0):.1f}" y1="{top - 6}" x2="{x(1.0):.1f}" y2="{height - 30}" class="one"/>')
    out.append(f'<text x="{left + width / 2}" y="{height - 2}" class="axis">{html.escape(axis_label)}</text>')
    out.append("</svg>")
    return "".join(out)


def time_plot(rows: list[Row], per_op: bool) -> str:
    groups = []
    for name, impls in _configs(rows, per_op):
        manual = impls["manual"].ms
        bars = [(impl, r.ms / manual, f"{name}, {impl}: {r.ms:g} ms, {r.ms / manual:.2f}x manual's {manual:g} ms")
                for impl, r in impls.items() if impl in ("explicit", "reference", "torch")]
        if bars:
            groups.append((name.replace("transformer-T128/", "") if per_op else name, bars))
    what = "each op of the transformer at T=128" if per_op else "each train step"
    return bar_chart(groups, "time relative to the hand-written (manual) rules; right of 1 is slower",
                     f"Time of {what}, relative to the hand-written rules")


def memory_plot(rows: list[Row]) -> str:
    groups = []
    for name, impls in _configs(rows, False):
        manual, reference = impls["manual"].temp, impls.get("reference")
        if manual and reference is not None and reference.temp:
            factor = reference.temp / manual
            tip = f"{name}: reference {reference.temp:,} bytes, manual {manual:,} bytes ({factor:.2f}x)"
            groups.append((name, [("reference", factor, tip)]))
    return bar_chart(groups, "XLA temporary memory of jax.grad of the reference, relative to the hand-written rules",
                     "XLA temporary memory of the reference, relative to the hand-written rules")


PLOTS = {
    "step-time": lambda rows: time_plot(rows, per_op=False),
    "op-time": lambda rows: time_plot(rows, per_op=True),
    "temp-memory": memory_plot,
}


def on_page_markdown(markdown: str, page, config, files) -> str:  # noqa: ARG001 (MkDocs' hook signature)
    if not MARKER.search(markdown):
        return markdown
    source = pathlib.Path(config.config_file_path).parent / "BENCHMARKS.md"
    rows = step_rows(source.read_text(encoding="utf-8")) if source.exists() else []

    def draw(m: re.Match) -> str:
        name = m.group(1)
        if name not in PLOTS:
            log.warning("%s: unknown benchmark plot %r (known: %s)", page.file.src_uri, name, ", ".join(PLOTS))
            return ""
        try:
            svg = PLOTS[name](rows)
        except ValueError as e:  # no rows to draw: min() of nothing
            log.warning("%s: benchmark plot %r has no data in %s (%s)", page.file.src_uri, name, source, e)
            return ""
        return f'<figure class="benchmark-plot" markdown="0">\n{svg}\n</figure>\n'

    return MARKER.sub(draw, markdown)
