"""Softmax and log-softmax along one axis, numerically stable, with hand-written VJPs."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from manualgrad.core import Example, defop
from manualgrad.errors import describe, fail


def _check_axis(where: str):
    def check(x: jax.Array, axis: int = -1) -> None:
        if not -jnp.ndim(x) <= axis < jnp.ndim(x):
            fail(where, f"axis={axis} is out of range for {describe('x', x)}")

    return check


def _softmax_examples(rng: np.random.Generator) -> list[Example]:
    return [
        Example((rng.normal(size=(4, 5)) * 3,), {"axis": -1}),
        Example((rng.normal(size=(6,)),), {"axis": -1}),
        Example((rng.normal(size=(2, 3, 4)),), {"axis": 1}),
        Example((rng.normal(size=(3, 2)) + 50.0,), {"axis": 0}),
    ]


def _shifted(x: jax.Array, axis: int) -> jax.Array:
    """``x - max(x)`` along ``axis``: the same softmax, with every exponent <= 0."""
    return x - lax.stop_gradient(jnp.max(x, axis=axis, keepdims=True))


@defop(static=("axis",), check=_check_axis("manualgrad.ops.softmax"), examples=_softmax_examples)
def softmax(x: jax.Array, axis: int = -1) -> jax.Array:
    r"""$y_i = \exp(x_i) / \sum_k \exp(x_k)$ along ``axis``, computed on $x - \max(x)$.

    Jacobian: $\partial y_i / \partial x_j = y_i (\delta_{ij} - y_j)$. Its transpose applied to
    $g$:

    $$
    \bar{x}_j = \sum_i g_i\, y_i (\delta_{ij} - y_j) = y_j \Big(g_j - \sum_i g_i y_i\Big),
    $$

    i.e. $\bar{x} = y \odot \big(g - \sum g \odot y\big)$, the sum along ``axis``, with no
    Jacobian materialised. Residual: the output $y$. The forward calls the reference, the same function,
    $\exp(x - \max) / \sum \exp(x - \max)$: $x - \max$ is exact, where
    $\exp(x - \operatorname{logsumexp}(x))$ carries logsumexp's rounding into every output (5% in
    bfloat16 at $x \approx 50$). Pinned to ``jax.nn.softmax`` and PyTorch's by the tests.
    """
    e = jnp.exp(_shifted(x, axis))
    return e / jnp.sum(e, axis=axis, keepdims=True)


def softmax_fwd(x: jax.Array, axis: int = -1) -> tuple[jax.Array, jax.Array]:
    y = softmax.reference(x, axis=axis)
    return y, y


def softmax_bwd(res: jax.Array, g: jax.Array, axis: int = -1) -> tuple[jax.Array]:
    y = res
    return (y * (g - jnp.sum(g * y, axis=axis, keepdims=True)),)


softmax.defvjp(softmax_fwd, softmax_bwd)


@defop(static=("axis",), check=_check_axis("manualgrad.ops.log_softmax"), examples=_softmax_examples)
def log_softmax(x: jax.Array, axis: int = -1) -> jax.Array:
    r"""$y_i = x_i - \log \sum_k \exp(x_k)$ along ``axis``, computed on $x - \max(x)$.

    $\partial y_i / \partial x_j = \delta_{ij} - \operatorname{softmax}(x)_j$, so

    $$
    \bar{x}_j = g_j - \operatorname{softmax}(x)_j \sum_i g_i ,
    $$

    i.e. $\bar{x} = g - \exp(y) \sum g$, the sum along ``axis``: the softmax is recovered from
    the output as $\exp(y)$. Residual: the output $y$. The forward calls the reference (the
    same function), $(x - \max) - \log \sum \exp(x - \max)$, for softmax's reason: $x - \max$
    is exact.
    """
    s = _shifted(x, axis)
    return s - jnp.log(jnp.sum(jnp.exp(s), axis=axis, keepdims=True))


def log_softmax_fwd(x: jax.Array, axis: int = -1) -> tuple[jax.Array, jax.Array]:
    y = log_softmax.reference(x, axis=axis)
    return y, y


def log_softmax_bwd(res: jax.Array, g: jax.Array, axis: int = -1) -> tuple[jax.Array]:
    y = res
    return (g - jnp.exp(y) * jnp.sum(g, axis=axis, keepdims=True),)


log_softmax.defvjp(log_softmax_fwd, log_softmax_bwd)
