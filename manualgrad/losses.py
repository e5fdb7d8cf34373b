"""Losses: scalar functions of a prediction and a target, with hand-written VJPs.

Every loss takes ``(prediction, target)``. The target is an ordinary argument
(not a ``nondiff_argnums``) whose cotangent is zero: the backward rules return
``None`` for it and the references wrap it in ``lax.stop_gradient``.

Shapes are checked at trace time and never broadcast: a ``(4, 1)`` prediction
against a ``(4, 2)`` target is a ``ValueError``, not a silently wrong mean.
Values are not checked under ``jit`` (they are unknown while tracing):

* non-finite predictions or targets give a non-finite loss and gradient
  (nothing is clipped), so a training loop can detect them.
* out-of-range class ids (``< 0`` or ``>= C``) in
  [softmax_cross_entropy][manualgrad.losses.softmax_cross_entropy] make that example's loss
  and gradient ``NaN`` (never a quietly wrong number);
  called outside ``jit`` with concrete labels, it raises ``ValueError`` instead.
"""

from __future__ import annotations

from typing import Callable

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from manualgrad.core import Example, Op, defop, register
from manualgrad.errors import describe, fail, real_number
from manualgrad.linear_cross_entropy import head_cross_entropy, linear_softmax_cross_entropy

__all__ = [
    "mse",
    "sse",
    "softmax_cross_entropy",
    "binary_cross_entropy_with_logits",
    "linear_softmax_cross_entropy",
    "head_cross_entropy",
    "scaled",
    "multitask",
]


def _same_shape(where: str, names: tuple[str, str] = ("pred", "target")) -> Callable[[jax.Array, jax.Array], None]:
    """A check that the loss's two arguments, called ``names``, have one shape."""
    def check(pred: jax.Array, target: jax.Array) -> None:
        if np.shape(pred) != np.shape(target):
            fail(
                where,
                f"{describe(names[0], pred)} and {describe(names[1], target)} differ; "
                "the loss compares them elementwise and does not broadcast",
            )

    return check


def _regression_examples(rng: np.random.Generator) -> list[Example]:
    return [Example((rng.normal(size=s), rng.normal(size=s))) for s in [(4, 1), (5, 3), (7,), (2, 3, 2)]]


# -- mse -----------------------------------------------------------------------
@defop(constant=("target",), check=_same_shape("manualgrad.losses.mse"), examples=_regression_examples)
def mse(pred: jax.Array, target: jax.Array) -> jax.Array:
    r"""Mean squared error over all $n$ elements: $L = \frac{1}{n} \sum (p - t)^2$, with $p$ = ``pred``
    and $t$ = ``target``.

    $\partial L / \partial p = \frac{2}{n} (p - t)$; with upstream $g$: $\bar{p} = 2 g\, d / n$
    where $d = p - t$. Residual: $d$.
    """
    return jnp.mean((pred - lax.stop_gradient(target)) ** 2)


def mse_fwd(pred: jax.Array, target: jax.Array) -> tuple[jax.Array, jax.Array]:
    d = pred - target
    return jnp.mean(d * d), d


def mse_bwd(res: jax.Array, g: jax.Array) -> tuple[jax.Array, None]:
    d = res
    return (2.0 / d.size) * g * d, None


mse.defvjp(mse_fwd, mse_bwd)


# -- sse -----------------------------------------------------------------------
@defop(constant=("target",), check=_same_shape("manualgrad.losses.sse"), examples=_regression_examples)
def sse(pred: jax.Array, target: jax.Array) -> jax.Array:
    r"""Sum of squared errors: $L = \sum (p - t)^2$, with $p$ = ``pred`` and $t$ = ``target``.

    $\partial L / \partial p = 2 (p - t)$, so $\bar{p} = 2 g\, d$ with $d = p - t$.
    Residual: $d$.
    """
    return jnp.sum((pred - lax.stop_gradient(target)) ** 2)


def sse_fwd(pred: jax.Array, target: jax.Array) -> tuple[jax.Array, jax.Array]:
    d = pred - target
    return jnp.sum(d * d), d


def sse_bwd(res: jax.Array, g: jax.Array) -> tuple[jax.Array, None]:
    return 2.0 * g * res, None


sse.defvjp(sse_fwd, sse_bwd)


# -- softmax_cross_entropy -----------------------------------------------------
def _check_cross_entropy(logits: jax.Array, labels: jax.Array) -> None:
    where = "manualgrad.losses.softmax_cross_entropy"
    if jnp.ndim(logits) < 1:
        fail(where, f"{describe('logits', logits)}: logits need a class axis, shape (..., C)")
    if jnp.issubdtype(jnp.result_type(labels), jnp.integer):
        if np.shape(labels) != np.shape(logits)[:-1]:
            fail(
                where,
                f"{describe('labels', labels)} holds class ids, so it must have shape "
                f"logits.shape[:-1]={np.shape(logits)[:-1]} ({describe('logits', logits)})",
            )
        if not isinstance(labels, jax.core.Tracer):
            bad = np.asarray(labels)
            bad = bad[(bad < 0) | (bad >= np.shape(logits)[-1])]
            if bad.size:
                fail(where, f"class ids must lie in [0, {np.shape(logits)[-1]}), got {bad[:5].tolist()}")
    elif jnp.issubdtype(jnp.result_type(labels), jnp.floating):
        if np.shape(labels) != np.shape(logits):
            fail(
                where,
                f"{describe('labels', labels)} holds probabilities, so it must have the "
                f"shape of logits ({describe('logits', logits)}); class ids must be integers",
            )
    else:
        fail(where, f"{describe('labels', labels)}: labels must be integer class ids or float probabilities")


def _cross_entropy_examples(rng: np.random.Generator) -> list[Example]:
    probs = rng.dirichlet(np.ones(4), size=3)
    return [
        Example((rng.normal(size=(5, 4)) * 2, rng.integers(0, 4, size=(5,)))),
        Example((rng.normal(size=(3,)), rng.integers(0, 3, size=()))),
        Example((rng.normal(size=(2, 3, 6)), rng.integers(0, 6, size=(2, 3)))),
        Example((rng.normal(size=(3, 4)), probs)),
        # soft labels need not sum to one (label weights): the gradient then keeps p * sum(y)
        Example((rng.normal(size=(3, 4)), rng.uniform(0.1, 1.0, size=(3, 4)))),
    ]


def _log_softmax_and_probs(logits: jax.Array) -> tuple[jax.Array, jax.Array]:
    s = logits - lax.stop_gradient(jnp.max(logits, axis=-1, keepdims=True))
    e = jnp.exp(s)
    total = jnp.sum(e, axis=-1, keepdims=True)
    return s - jnp.log(total), e / total


def _class_ids(logits: jax.Array, labels: jax.Array) -> tuple[jax.Array, jax.Array]:
    """One-hot rows for integer ``labels`` and the mask of ids inside ``[0, C)``."""
    n_classes = logits.shape[-1]
    labels = jnp.asarray(labels)
    valid = (labels >= 0) & (labels < n_classes)
    onehot = (labels[..., None] == jnp.arange(n_classes)).astype(logits.dtype)
    return onehot, valid


@defop(constant=("labels",), check=_check_cross_entropy, examples=_cross_entropy_examples)
def softmax_cross_entropy(logits: jax.Array, labels: jax.Array) -> jax.Array:
    r"""Softmax followed by cross-entropy, fused, averaged over the $m$ rows (every axis
    but the last, the class axis).

    With $z$ = ``logits``, $p = \operatorname{softmax}(z)$ and target distribution $y$ (one-hot
    of an integer class id, or given probabilities):

    $$
    L = -\frac{1}{m} \sum_{\text{rows}} \sum_c y_c \log p_c ,
    $$

    where $\log p_c = z_c - \operatorname{logsumexp}(z)$ is evaluated on $z - \max(z)$ so logits
    of $\pm 10^4$ give a finite loss.

    Derivation, for one row:
    $-\sum_c y_c \log p_c = \big(\sum_c y_c\big) \operatorname{logsumexp}(z) - \sum_c y_c z_c$
    and $\partial \operatorname{logsumexp}(z) / \partial z_j = p_j$, so

    $$
    \frac{\partial L}{\partial z_j} = \frac{1}{m} \Big(p_j \sum_c y_c - y_j\Big),
    $$

    which is $(p - y) / m$ for a distribution $y$ (one-hot or probabilities summing to one). This
    is $(S - Y) / m$, not the $S - Y / m$ of seed 002's eq. (4.8).

    The fused backward needs no softmax Jacobian: the forward already forms
    $d = \big(p \sum_c y_c - y\big) / m$ and the backward is $\bar{z} = g\, d$. Residual: $d$.
    Out-of-range integer ids give ``NaN`` for their row's loss and gradient.
    """
    log_p, _ = _log_softmax_and_probs(logits)
    if jnp.issubdtype(jnp.result_type(labels), jnp.integer):
        onehot, valid = _class_ids(logits, labels)
        per_row = jnp.where(valid, -jnp.sum(onehot * log_p, axis=-1), jnp.nan)
    else:
        per_row = -jnp.sum(lax.stop_gradient(labels) * log_p, axis=-1)
    return jnp.mean(per_row)


def softmax_cross_entropy_fwd(logits: jax.Array, labels: jax.Array) -> tuple[jax.Array, jax.Array]:
    log_p, p = _log_softmax_and_probs(logits)
    m = p.size // p.shape[-1]
    if jnp.issubdtype(jnp.result_type(labels), jnp.integer):
        y, valid = _class_ids(logits, labels)
        per_row = jnp.where(valid, -jnp.sum(y * log_p, axis=-1), jnp.nan)
        d = jnp.where(valid[..., None], p - y, jnp.nan)
    else:
        per_row = -jnp.sum(labels * log_p, axis=-1)
        d = p * jnp.sum(labels, axis=-1, keepdims=True) - labels
    return jnp.mean(per_row), d / m


def softmax_cross_entropy_bwd(res: jax.Array, g: jax.Array) -> tuple[jax.Array, None]:
    return g * res, None


softmax_cross_entropy.defvjp(softmax_cross_entropy_fwd, softmax_cross_entropy_bwd)


# -- binary_cross_entropy_with_logits -----------------------------------------
def _binary_examples(rng: np.random.Generator) -> list[Example]:
    return [Example((rng.normal(size=s) * 3, rng.uniform(size=s))) for s in [(6,), (4, 1), (2, 3)]] + [
        Example((rng.normal(size=(5,)), rng.integers(0, 2, size=(5,)).astype(np.float64)))
    ]


@defop(
    constant=("targets",),
    check=_same_shape("manualgrad.losses.binary_cross_entropy_with_logits", ("logits", "targets")),
    examples=_binary_examples,
)
def binary_cross_entropy_with_logits(logits: jax.Array, targets: jax.Array) -> jax.Array:
    r"""Sigmoid followed by binary cross-entropy, fused and averaged over all $n$ elements.

    With $z$ = ``logits``, $p = \sigma(z)$ and targets $t \in [0, 1]$ (``targets``):

    $$
    l = -t \log p - (1 - t) \log(1 - p) = \operatorname{softplus}(z) - t z ,
    $$

    and $\operatorname{softplus}(z) = \max(z, 0) + \log(1 + e^{-|z|})$, computed with ``log1p``,
    never overflows. $\partial l / \partial z = \sigma(z) - t$, the familiar
    $(1 - t)/(1 - p) - t/p$ of seed 003 times $\partial p / \partial z = p (1 - p)$. So
    $\bar{z} = g\, (\sigma(z) - t) / n$. Residual: that difference $\sigma(z) - t$.
    """
    t = lax.stop_gradient(targets)
    return jnp.mean(jnp.maximum(logits, 0.0) - logits * t + jnp.log1p(jnp.exp(-jnp.abs(logits))))


def binary_cross_entropy_with_logits_fwd(logits: jax.Array, targets: jax.Array) -> tuple[jax.Array, jax.Array]:
    loss = jnp.mean(jnp.maximum(logits, 0.0) - logits * targets + jnp.log1p(jnp.exp(-jnp.abs(logits))))
    return loss, jax.nn.sigmoid(logits) - targets


def binary_cross_entropy_with_logits_bwd(res: jax.Array, g: jax.Array) -> tuple[jax.Array, None]:
    return (g / res.size) * res, None


binary_cross_entropy_with_logits.defvjp(binary_cross_entropy_with_logits_fwd, binary_cross_entropy_with_logits_bwd)


# -- combinators ----------------------------------------------------------------
def scaled(loss: Op, factor: float) -> Op:
    r"""``factor * loss(pred, target)`` as an op of its own.

    By linearity, with $a$ = ``factor``, $\bar{p}$ (the cotangent of ``pred``) is ``loss``'s
    backward for the upstream $a\, g$: ``loss.bwd(res, factor * g)``. Seed 002's printed
    gradients, for instance, are those of ``scaled(mse, 0.5)``.
    """
    factor = real_number("manualgrad.losses.scaled", "factor", factor, " (a Python or NumPy scalar)")

    def reference(pred, target):
        return factor * loss.reference(pred, target)

    def check(pred, target):
        loss.bind((pred, target), {})

    def fwd(pred, target):
        value, res = loss.fwd(pred, target)
        return factor * value, res

    def bwd(res, g):
        return loss.bwd(res, factor * g)

    op = Op(reference, name=f"{factor:g}*{loss.name}", constant=("target",), check=check, smooth=loss.smooth)
    op.__doc__ = scaled.__doc__
    return op.defvjp(fwd, bwd)


def multitask(*losses: Op) -> Op:
    r"""The sum of one loss per output of a ``fanout`` model.

    With $L_k$ = ``losses[k]``, $p_k$ = ``preds[k]`` and $t_k$ = ``targets[k]``,

    $$
    L = \sum_k L_k(p_k, t_k) ;
    $$

    ``preds`` and ``targets`` are tuples with one entry per loss. Each term depends only on its
    own prediction, so $\bar{p}_k$ is $L_k$'s backward for the same upstream $g$:
    ``losses[k].bwd(res[k], g)``.
    """
    if not losses:
        raise ValueError("manualgrad.losses.multitask: give at least one loss")
    name = f"multitask({', '.join(l.name for l in losses)})"

    def reference(preds, targets):
        return sum(l.reference(p, t) for l, p, t in zip(losses, preds, targets))

    def check(preds, targets):
        for what, v in (("preds", preds), ("targets", targets)):
            if not isinstance(v, tuple) or len(v) != len(losses):
                got = f"a tuple of {len(v)}" if isinstance(v, tuple) else describe(what, v)
                fail(name, f"{what} must be a tuple with one entry per loss ({len(losses)}), got {got}")
        for l, p, t in zip(losses, preds, targets):
            l.bind((p, t), {})

    def fwd(preds, targets):
        outs = [l.fwd(p, t) for l, p, t in zip(losses, preds, targets)]
        return sum(v for v, _ in outs), tuple(r for _, r in outs)

    def bwd(res, g):
        return tuple(l.bwd(r, g)[0] for l, r in zip(losses, res)), None

    op = Op(
        reference,
        name=name,
        constant=("targets",),
        check=check,
        smooth=all(l.smooth for l in losses),
    )
    op.__doc__ = multitask.__doc__
    op.parts = losses  # each head's loss, for per-head evaluation
    return op.defvjp(fwd, bwd)


def _multitask_examples(rng: np.random.Generator) -> list[Example]:
    logits = rng.normal(size=(4, 3))
    labels = rng.integers(0, 3, size=(4,))
    return [Example(((rng.normal(size=(4, 2)), logits), (rng.normal(size=(4, 2)), labels)))]


register(scaled(mse, 0.5), _regression_examples)
register(multitask(sse, softmax_cross_entropy), _multitask_examples)
