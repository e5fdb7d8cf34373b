r"""Batch and layer normalisation, with the three-term hand-written VJP they share.

Both normalise ``x`` over a set of axes ($m$ elements per statistic), then scale and shift per
channel (the last axis):

$$
\hat{x} = (x - \mu)\, r, \qquad r = \frac{1}{\sqrt{\sigma^2 + \epsilon}}, \qquad
\sigma^2 = \frac{1}{m} \sum_k (x_k - \mu)^2, \qquad y = \gamma \odot \hat{x} + \beta,
$$

with $\mu$ the mean and $\sigma^2$ the biased variance ($r$ is ``rstd`` in the code).

Derivation, for one statistic's $m$ elements. $\partial \mu / \partial x_k = 1/m$ and
$\partial \sigma^2 / \partial x_k = 2 (x_k - \mu) / m$, so
$\partial r / \partial x_k = -r^3 (x_k - \mu) / m = -r^2 \hat{x}_k / m$ and

$$
\frac{\partial \hat{x}_i}{\partial x_k} = r \left(\delta_{ik} - \frac{1}{m}\right) - \frac{r}{m}\, \hat{x}_i \hat{x}_k .
$$

With $h = g \odot \gamma$ (the cotangent of $\hat{x}$):

$$
\bar{x}_k = \sum_i h_i \frac{\partial \hat{x}_i}{\partial x_k}
= \frac{r}{m} \left(m\, h_k - \sum_i h_i - \hat{x}_k \sum_i h_i \hat{x}_i\right),
$$

the projection of $h$ that removes its mean and its component along $\hat{x}$. $\bar{\gamma}$
and $\bar{\beta}$ sum $g \odot \hat{x}$ and $g$ over every axis but the channel axis.
Residuals: $\hat{x}$, $r$ and $\gamma$; ``x`` itself is not kept.
"""

from __future__ import annotations

from typing import Callable

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from manualgrad.core import Example, defop
from manualgrad.errors import describe, fail, same_dtype


def _check_norm(where: str, min_rank: int, layout: str) -> Callable[..., None]:
    def check(x: jax.Array, gamma: jax.Array, beta: jax.Array, eps: float = 1e-5) -> None:
        if jnp.ndim(x) < min_rank:
            fail(where, f"{describe('x', x)}: x must have shape {layout}")
        c = np.shape(x)[-1]
        for name, v in (("gamma", gamma), ("beta", beta)):
            if np.shape(v) != (c,):
                fail(
                    where,
                    f"{name}.shape={np.shape(v)} does not match x.shape={np.shape(x)}: {name} needs one entry "
                    f"per channel (x's last axis), shape ({c},)",
                )
        if isinstance(eps, bool) or not isinstance(eps, (int, float)) or not eps > 0:
            fail(where, f"eps={eps!r} must be a positive number (1 / sqrt(var + eps) on a constant channel)")
        same_dtype(where, x=x, gamma=gamma, beta=beta)

    return check


def _norm_examples(plain: tuple, offset: tuple) -> Callable[[np.random.Generator], list[Example]]:
    """One example of shape ``plain``, and one of shape ``offset`` far from zero (x ~ 30 +- 2) with a larger eps."""

    def examples(rng: np.random.Generator) -> list[Example]:
        def case(shape: tuple, shift: float = 0.0, **params: float) -> Example:
            c = shape[-1]
            gamma, beta = 1 + 0.5 * rng.normal(size=c), rng.normal(size=c)
            return Example((rng.normal(size=shape) * 2 + shift, gamma, beta), params)

        return [case(plain), case(offset, shift=30.0, eps=1e-3)]

    return examples


def _normalize(x: jax.Array, axes: tuple[int, ...], eps: float) -> tuple[jax.Array, jax.Array]:
    """``(xhat, rstd)`` over ``axes`` (kept as size-1 axes in ``rstd``)."""
    centred = x - jnp.mean(x, axis=axes, keepdims=True)
    rstd = jax.lax.rsqrt(jnp.mean(centred * centred, axis=axes, keepdims=True) + eps)
    return centred * rstd, rstd


def _normalize_bwd(g: jax.Array, res: tuple, axes: tuple[int, ...]) -> tuple[jax.Array, jax.Array, jax.Array]:
    """The three-term rule, written with means: ``rstd (h - mean(h) - xhat mean(h xhat))``, ``h = g gamma``."""
    xhat, rstd, gamma = res
    h = g * gamma
    x_bar = rstd * (h - jnp.mean(h, axis=axes, keepdims=True) - xhat * jnp.mean(h * xhat, axis=axes, keepdims=True))
    lead = tuple(range(g.ndim - 1))
    return x_bar, jnp.sum(g * xhat, axis=lead), jnp.sum(g, axis=lead)


# -- batch_norm ----------------------------------------------------------------
_BATCH = "manualgrad.ops.batch_norm"


@defop(
    static=("eps",),
    check=_check_norm(_BATCH, 2, "(N, ..., C): statistics over every axis but the channel axis"),
    examples=_norm_examples((1, 3, 2, 4), (6, 3)),  # an NHWC batch of one image; a plain batch
)
def batch_norm(x: jax.Array, gamma: jax.Array, beta: jax.Array, eps: float = 1e-5) -> jax.Array:
    r"""Training-mode batch normalisation: statistics over every axis but the last (the batch and,
    for NHWC images, the spatial axes; $m$ = their product), biased variance; ``gamma``, ``beta``
    (C,).

    With the module's derivation ($h = g \odot \gamma$, and $\gamma$ constant over a statistic's
    elements), sums over every axis but the last:

    $$
    \bar{x} = \frac{\gamma\, r}{m} \left(m\, g - \sum g - \hat{x} \sum g \odot \hat{x}\right),
    \qquad \bar{\gamma} = \sum g \odot \hat{x}, \qquad \bar{\beta} = \sum g .
    $$

    A batch of one ($m = 1$) stays finite: $x = \mu$, so $\hat{x} = 0$ and $r = 1/\sqrt{\epsilon}$;
    $y = \beta$ and $\bar{x} = \gamma\, r\, (g - g - 0) = 0$. Only ``y`` is returned: a layer that keeps
    running statistics computes the batch mean and variance itself.
    """
    axes = tuple(range(jnp.ndim(x) - 1))
    mean = jnp.mean(x, axis=axes)
    var = jnp.mean(jnp.square(x - mean), axis=axes)
    return (x - mean) / jnp.sqrt(var + eps) * gamma + beta


def batch_norm_fwd(x: jax.Array, gamma: jax.Array, beta: jax.Array, eps: float = 1e-5) -> tuple[jax.Array, tuple]:
    xhat, rstd = _normalize(x, tuple(range(x.ndim - 1)), eps)
    return xhat * gamma + beta, (xhat, rstd, gamma)


def batch_norm_bwd(res: tuple, g: jax.Array, eps: float = 1e-5) -> tuple[jax.Array, jax.Array, jax.Array]:
    return _normalize_bwd(g, res, tuple(range(g.ndim - 1)))


batch_norm.defvjp(batch_norm_fwd, batch_norm_bwd)


# -- layer_norm ----------------------------------------------------------------
_LAYER = "manualgrad.ops.layer_norm"


@defop(
    static=("eps",),
    check=_check_norm(_LAYER, 1, "(..., C): statistics over the last axis"),
    examples=_norm_examples((2, 3, 4), (6,)),
)
def layer_norm(x: jax.Array, gamma: jax.Array, beta: jax.Array, eps: float = 1e-5) -> jax.Array:
    r"""Layer normalisation over the last axis ($m = C$ elements per statistic, one statistic per
    leading index), biased variance; ``gamma``, ``beta`` (C,).

    With the module's derivation, along the last axis ($h = g \odot \gamma$):

    $$
    \bar{x} = \frac{r}{C} \left(C\, h - \sum_c h_c - \hat{x} \sum_c h_c \hat{x}_c\right),
    $$

    and $\bar{\gamma} = \sum g \odot \hat{x}$, $\bar{\beta} = \sum g$ over every leading axis.

    The two sums along the channel axis are matrix-vector products with $\gamma$:
    $\sum_c h_c = g \gamma$ and $\sum_c h_c \hat{x}_c = (g \odot \hat{x})\, \gamma$, so the
    backward never forms $h$ for a reduction and reuses $g \odot \hat{x}$ for $\bar{\gamma}$
    (on XLA:CPU this drops a full-size broadcast of $\gamma$ and one pass over the activations).
    """
    mean = jnp.mean(x, axis=-1, keepdims=True)
    var = jnp.mean(jnp.square(x - mean), axis=-1, keepdims=True)
    return (x - mean) / jnp.sqrt(var + eps) * gamma + beta


def layer_norm_fwd(x: jax.Array, gamma: jax.Array, beta: jax.Array, eps: float = 1e-5) -> tuple[jax.Array, tuple]:
    xhat, rstd = _normalize(x, (-1,), eps)
    return xhat * gamma + beta, (xhat, rstd, gamma)


def layer_norm_bwd(res: tuple, g: jax.Array, eps: float = 1e-5) -> tuple[jax.Array, jax.Array, jax.Array]:
    xhat, rstd, gamma = res
    c = g.shape[-1]
    g_xhat = g * xhat

    def mean_h(a: jax.Array) -> jax.Array:  # mean over the channel axis of a * gamma, as a product
        return lax.dot_general(a, gamma, (((a.ndim - 1,), (0,)), ((), ())), precision=lax.Precision.HIGHEST)[..., None] / c

    x_bar = rstd * (g * gamma - mean_h(g) - xhat * mean_h(g_xhat))
    return x_bar, jnp.sum(g_xhat.reshape(-1, c), axis=0), jnp.sum(g.reshape(-1, c), axis=0)


layer_norm.defvjp(layer_norm_fwd, layer_norm_bwd)
