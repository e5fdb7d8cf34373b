"""Batch normalisation with given statistics (evaluation mode) and its hand-written VJP."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from manualgrad.core import Example, defop
from manualgrad.errors import describe, fail, same_dtype


def _check(x: jax.Array, gamma: jax.Array, beta: jax.Array, mean: jax.Array, var: jax.Array, eps: float = 1e-5) -> None:
    where = "manualgrad.ops.batch_norm_inference"
    if jnp.ndim(x) < 1:
        fail(where, f"{describe('x', x)}: x needs a channel axis (the last)")
    c = np.shape(x)[-1]
    for name, a in (("gamma", gamma), ("beta", beta), ("mean", mean), ("var", var)):
        if np.shape(a) != (c,):
            fail(where, f"{describe(name, a)} must have shape (C,)=({c},) for {describe('x', x)}")
    if not eps > 0:
        fail(where, f"eps must be > 0, got {eps!r}")
    same_dtype(where, x=x, gamma=gamma, beta=beta)


def _examples(rng: np.random.Generator) -> list[Example]:
    def case(shape: tuple) -> Example:
        c = shape[-1]
        return Example((rng.normal(size=shape), rng.normal(size=c), rng.normal(size=c), rng.normal(size=c),
                        rng.uniform(0.5, 2.0, size=c)))

    return [case((4, 3)), case((2, 3, 3, 2)), case((1, 5))]


@defop(static=("eps",), constant=("mean", "var"), check=_check, examples=_examples)
def batch_norm_inference(
    x: jax.Array, gamma: jax.Array, beta: jax.Array, mean: jax.Array, var: jax.Array, eps: float = 1e-5
) -> jax.Array:
    r"""Batch norm with fixed per-channel statistics: ``y = gamma * (x - mean) / sqrt(var + eps) + beta``.

    The statistics (running averages, [manualgrad.nn.BatchNorm][manualgrad.nn.BatchNorm]'s state)
    are constants, so $y$ is affine in $x$ per channel. With $\mu$ = ``mean``, $\sigma^2$ = ``var``,
    $\epsilon$ = ``eps``, $r = 1 / \sqrt{\sigma^2 + \epsilon}$, $\hat{x} = (x - \mu)\, r$ and
    upstream $g$, so that $y = \gamma \odot \hat{x} + \beta$:

    * $\bar{x} = g \odot \gamma\, r$ ($\partial y / \partial x = \gamma\, r$, channel by channel);
    * $\bar{\gamma} = \sum_{\text{rows}} g \odot \hat{x}$ (summed over every axis but the channel
      axis);
    * $\bar{\beta} = \sum_{\text{rows}} g$.

    Residuals: $\hat{x}$ and $\gamma\, r$.
    """
    mean, var = lax.stop_gradient(mean), lax.stop_gradient(var)
    return gamma * (x - mean) / jnp.sqrt(var + eps) + beta


def batch_norm_inference_fwd(
    x: jax.Array, gamma: jax.Array, beta: jax.Array, mean: jax.Array, var: jax.Array, eps: float = 1e-5
) -> tuple[jax.Array, tuple]:
    r = lax.rsqrt(var + eps)
    xhat = (x - mean) * r
    return gamma * xhat + beta, (xhat, gamma * r)


def batch_norm_inference_bwd(res: tuple, g: jax.Array, eps: float = 1e-5) -> tuple[jax.Array, ...]:
    xhat, scale = res
    rows = tuple(range(g.ndim - 1))
    return g * scale, jnp.sum(g * xhat, axis=rows), jnp.sum(g, axis=rows), None, None


batch_norm_inference.defvjp(batch_norm_inference_fwd, batch_norm_inference_bwd)
