"""Pictures of a failed comparison: the reference, the manual array and their difference.

matplotlib is imported inside :func:`heatmaps` only, so the library runs without it; figures
are drawn on a ``matplotlib.figure.Figure`` (no pyplot, no global backend state).
"""

from __future__ import annotations

import pathlib

import numpy as np

__all__ = ["heatmaps", "worst_slice"]


def worst_slice(a: np.ndarray, index: tuple | None) -> tuple[np.ndarray, str]:
    """A 2-D view of ``a``: itself for 2 axes, one row for 0 or 1 axes, and otherwise the slice
    over the last two axes through ``index`` (the worst element; the first slice without one).

    Returns:
      ``(view, label)``, the label naming the slice, e.g. ``[1, :, :]``.
    """
    a = np.asarray(a, np.float64)
    if a.ndim <= 2:
        return a.reshape((1,) * (2 - a.ndim) + a.shape), ""
    lead = tuple(index[-a.ndim:-2]) if index and len(index) >= a.ndim else (0,) * (a.ndim - 2)
    return a[lead], "[" + ", ".join([str(i) for i in lead] + [":", ":"]) + "]"


def heatmaps(
    reference: np.ndarray, manual: np.ndarray, path: str | pathlib.Path, title: str, index: tuple | None = None
) -> pathlib.Path:
    """Write a PNG of three heatmaps: reference, manual, manual - reference.

    Args:
      reference: the reference array.
      manual: the manual array (of another shape only for a transpose; then no difference).
      path: the PNG file to write.
      title: the figure's heading (may span lines).
      index: the worst element's index, marked on every panel and choosing the 2-D slice.

    Returns:
      ``path`` as a :class:`pathlib.Path`.
    """
    try:
        from matplotlib.figure import Figure
        from matplotlib.ticker import FixedLocator, MaxNLocator
    except ImportError as e:  # pragma: no cover - depends on the environment
        raise ImportError("manualgrad.check pictures need matplotlib: pip install matplotlib") from e

    ref, where = worst_slice(reference, index)
    man, _ = worst_slice(manual, index)
    panels = [("reference" + where, ref), ("manual" + where, man)]
    if ref.shape == man.shape:
        panels.append(("manual - reference", man - ref))
    shared = np.nanmax(np.abs(np.nan_to_num(np.concatenate([ref.ravel(), man.ravel()]), posinf=0, neginf=0)), initial=0) or 1.0
    height = 3.6 + 0.2 * title.count("\n")
    fig = Figure(figsize=(4.2 * len(panels), height))
    fig.subplots_adjust(left=0.05, right=0.97, bottom=0.08, top=1 - (0.45 + 0.17 * title.count("\n")) / height, wspace=0.25)
    fig.suptitle(title, fontsize=8)
    for ax, (name, values) in zip(fig.subplots(1, len(panels), squeeze=False)[0], panels):
        finite = np.nan_to_num(values, nan=0.0, posinf=0.0, neginf=0.0)
        limit = shared if name != "manual - reference" else (np.max(np.abs(finite), initial=0) or 1.0)
        image = ax.imshow(values, cmap="RdBu_r", vmin=-limit, vmax=limit, interpolation="nearest", aspect="auto")
        bad = ~np.isfinite(values)
        if bad.any():  # NaN and infinity: crosses over their cells
            rows, cols = np.nonzero(bad)
            ax.scatter(cols, rows, marker="x", color="black", s=40, label="NaN/inf")
        if index and values.shape == ref.shape:
            r, c = (0, index[-1]) if np.ndim(reference) == 1 else index[-2:]
            ax.add_patch(_square(r, c))
        for axis, size in ((ax.yaxis, values.shape[0]), (ax.xaxis, values.shape[1])):  # element indices
            axis.set_major_locator(FixedLocator(range(size)) if size <= 12 else MaxNLocator(integer=True))
        ax.set_title(name, fontsize=9)
        fig.colorbar(image, ax=ax, shrink=0.8)
    path = pathlib.Path(path)
    fig.savefig(path, dpi=90)
    return path


def _square(row: int, col: int):
    """A black square around the cell ``(row, col)``: the worst element."""
    from matplotlib.patches import Rectangle

    return Rectangle((col - 0.5, row - 0.5), 1, 1, fill=False, edgecolor="black", linewidth=2)
