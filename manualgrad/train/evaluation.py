"""Evaluation: the test loss and metrics of a model in evaluation mode, and the finiteness check
of training metrics."""

from __future__ import annotations

import functools
from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np

from manualgrad.core import Op
from manualgrad.errors import fail
from manualgrad.nn import Layer
from manualgrad.trees import num_examples

__all__ = ["NonFiniteError", "check_finite", "METRICS", "metric_names", "evaluate"]


class NonFiniteError(FloatingPointError):
    """A loss or gradient became NaN or infinite during training."""



def check_finite(metrics: dict, epoch: int, first_step: int = 1) -> None:
    """Raise :class:`NonFiniteError` naming the epoch and the first step whose loss or gradient is not finite.

    ``metrics`` holds per-step arrays (``"loss"``, ``"grad_norm"``, ...) as returned by
    :func:`make_epoch` (or a single step's scalars); ``first_step`` numbers the first entry.
    """
    loss = np.atleast_1d(np.asarray(metrics["loss"]))
    norm = np.atleast_1d(np.asarray(metrics["grad_norm"]))
    bad = np.flatnonzero(~(np.isfinite(loss) & np.isfinite(norm)))
    if bad.size:
        i = int(bad[0])
        raise NonFiniteError(
            f"manualgrad.train: non-finite training at epoch {epoch}, step {first_step + i}: "
            f"loss={loss[i]}, gradient norm={norm[i]}; the parameters of this epoch are discarded"
        )


def _accuracy(pred: jax.Array, y: jax.Array) -> tuple[jax.Array, int]:
    """Correct argmax predictions: ``y`` class ids of shape ``pred.shape[:-1]``, or one-hot rows /
    probabilities of ``pred``'s shape (the class with the largest probability is the right one)."""
    want = y if jnp.issubdtype(y.dtype, jnp.integer) else jnp.argmax(y, axis=-1)
    return jnp.sum(jnp.argmax(pred, axis=-1) == want), want.size


def _binary_accuracy(pred: jax.Array, y: jax.Array) -> tuple[jax.Array, int]:
    """Correct yes/no decisions of logits (``pred > 0``) against 0/1 (or probability) targets (``y > 0.5``)."""
    return jnp.sum((pred > 0) == (y > 0.5)), y.size


def _mse(pred: jax.Array, y: jax.Array) -> tuple[jax.Array, int]:
    """Squared errors over every element."""
    return jnp.sum(jnp.square(pred.astype(jnp.result_type(pred, y)) - y)), y.size


#: name -> per-chunk ``(sum, count)`` of a test metric; :func:`evaluate` reports ``sum / count``.
METRICS: dict[str, Callable[[jax.Array, jax.Array], tuple[jax.Array, int]]] = {
    "accuracy": _accuracy,
    "binary_accuracy": _binary_accuracy,
    "mse": _mse,
}


def metric_names(metric: Any, y: Any) -> tuple:
    """``metric`` as one entry (a name or None) per target; tuple targets need one per head."""
    heads = isinstance(y, tuple)
    metrics = metric if isinstance(metric, tuple) else ((metric,) * len(y) if heads and metric is None else (metric,))
    if len(metrics) != (len(y) if heads else 1):
        fail(
            "manualgrad.train.evaluate",
            f"metric={metric!r} gives {len(metrics)} metrics for {len(y) if heads else 1} target(s); "
            "give one name (or None) per head",
        )
    for m in metrics:
        if m is not None and m not in METRICS:
            fail("manualgrad.train.evaluate", f"metric must be one of {tuple(METRICS)} or None, got {m!r}")
    return metrics


def evaluate(
    model: Layer,
    params: Any,
    x: Any,
    y: Any,
    loss: Op,
    *,
    metric: str | None | tuple[str | None, ...] = None,
    batch_size: int = 8192,
    state: Any = None,
) -> dict[str, float]:
    """Mean loss over ``(x, y)`` and the test metric you name.

    ``metric`` is one of :data:`METRICS`: ``"accuracy"`` (argmax against class ids, one-hot
    rows or probabilities), ``"binary_accuracy"`` (logits against 0/1 targets, for
    binary cross-entropy) or ``"mse"`` (regression), or ``None`` for the loss alone. For a
    two-head model (``y`` a tuple with one target per head) give a tuple with one metric per
    head; the result then holds ``head{i}_{metric}`` and, when ``loss`` is a
    :func:`manualgrad.losses.multitask`, each head's own ``head{i}_loss``.

    The model runs in evaluation mode (dropout off; batch norm with the running statistics
    in ``state``, which models with batch norm need). Runs in chunks of ``batch_size`` examples (one compilation for the full chunks and one
    for the remainder) and weights each chunk by its size, so the result is the mean over
    all examples whatever the chunking.
    """
    n = num_examples("manualgrad.train.evaluate", x=x, y=y)
    metrics = metric_names(metric, y)
    totals: dict[str, float] = {}
    for start in range(0, n, batch_size):
        chunk = slice(start, start + batch_size)
        xb, yb = (jax.tree_util.tree_map(lambda a: jnp.asarray(a[chunk]), t) for t in (x, y))
        for k, v in _evaluate_chunk(model, loss, metrics, params, xb, yb, state).items():
            totals[k] = totals.get(k, 0.0) + float(v)
    return {k: totals[k] / (n if k.endswith("loss") else totals[f"{k}/count"]) for k in totals if not k.endswith("/count")}


@functools.partial(jax.jit, static_argnums=(0, 1, 2))
def _evaluate_chunk(model, loss, metrics, params, x, y, state):
    """Sums over the chunk: losses times its size, and each metric's sum and count."""
    pred, _ = model.call(params, state, x)
    m = num_examples("manualgrad.train.evaluate", x=x)
    out = {"loss": loss(pred, y) * m}
    heads = isinstance(y, tuple)
    preds, ys = (pred, y) if heads else ((pred,), (y,))
    parts = getattr(loss, "parts", None)
    for i, (p, t, metric) in enumerate(zip(preds, ys, metrics)):
        prefix = f"head{i}_" if heads else ""
        if heads and parts is not None:
            out[f"{prefix}loss"] = parts[i](p, t) * m
        if metric is not None:
            total, count = METRICS[metric](p, t)
            out[f"{prefix}{metric}"], out[f"{prefix}{metric}/count"] = total, count
    return out
