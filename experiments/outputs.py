"""What a run leaves behind besides the checkpoint: ``curves.png`` and its panels, and the progress bar.

Floor 1 of the experiments (see :mod:`experiments.harness`): imports none of theirs.
"""

from __future__ import annotations

import pathlib
from typing import Any, Callable, Sequence

import numpy as np

from manualgrad import train

#: draws one panel of ``curves.png`` on the matplotlib ``Axes`` it is given
Panel = Callable[[Any], None]


def save_figure(path: pathlib.Path, panels: Sequence[Panel]) -> None:
    """Draw ``panels`` side by side, each with a light grid, and save them as a PNG at ``path``."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(panels), figsize=(2 + 4 * len(panels), 4), squeeze=False)
    for ax, panel in zip(axes[0], panels):
        panel(ax)
        ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def loss_panel(history: train.History, *, title: str, ylabel: str, test_label: str = "test",
               scale: float = 1.0) -> Panel:
    """The loss per epoch (train and test) over the training loss of every step.

    Args:
        history: what :func:`manualgrad.train.fit` returned.
        title: the panel's title.
        ylabel: the y axis' label (the loss' name and unit).
        test_label: the legend's name for the held-out split ("test", "validation").
        scale: each loss is multiplied by it (``1 / ln 2``: bits instead of nats).

    Returns:
        The panel; its y axis is logarithmic (one noisy batch can be 100x the epoch mean).
    """

    def draw(ax: Any) -> None:
        from matplotlib.ticker import MaxNLocator

        epochs = history.epochs
        e = [r["epoch"] for r in epochs]
        # step k (0-based) of the s steps of epoch e sits at e - 1 + (k + 1) / s: the last one on e itself
        steps_x = [r["epoch"] - 1 + (k + 1) / len(per_step)
                   for r, per_step in zip(epochs, history.step_losses) for k in range(len(per_step))]
        steps_y = [scale * v for per_step in history.step_losses for v in per_step]
        test = [scale * r["test_loss"] for r in epochs]
        ax.plot(steps_x, steps_y, "-", color="C0", lw=0.6, alpha=0.4, label="train (each step)")
        ax.plot(e, [scale * r["train_loss"] for r in epochs], "o-", color="C0", label="train (epoch mean)")
        ax.plot(e, test, "s--", color="C1", label=test_label)
        ax.set(xlabel="epoch", ylabel=ylabel, title=title)
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        if min(steps_y + test, default=0) > 0:
            ax.set_yscale("log")
        ax.legend()

    return draw


def metric_panel(history: train.History, key: str, title: str) -> Panel:
    """The epoch entries' ``key`` (``test_accuracy``) per epoch."""

    def draw(ax: Any) -> None:
        from matplotlib.ticker import MaxNLocator

        ax.plot([r["epoch"] for r in history.epochs], [r[key] for r in history.epochs], "o-", color="C2")
        ax.set(xlabel="epoch", ylabel=key.replace("_", " "), title=title)
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))

    return draw


def prediction_panel(predicted: np.ndarray, true: np.ndarray, title: str) -> Panel:
    """Predicted against true values (regression), with the line y = x."""

    def draw(ax: Any) -> None:
        pred, want = np.asarray(predicted).reshape(-1), np.asarray(true).reshape(-1)
        lo, hi = float(min(pred.min(), want.min())), float(max(pred.max(), want.max()))
        ax.scatter(want, pred, s=4, alpha=0.3, color="C2", linewidths=0)
        ax.plot([lo, hi], [lo, hi], "k-", lw=0.8, label="y = x")
        ax.set(xlabel="true value", ylabel="predicted value", aspect="equal", title=title)
        ax.legend()

    return draw


def progress_bar(total: int, description: str, disabled: bool) -> Any:
    """A tqdm bar over ``total`` epochs (tqdm is loaded here, not when the module is imported)."""
    from tqdm import tqdm

    return tqdm(total=total, desc=description, unit="epoch", disable=disabled)
