"""Reshapes with their (trivial) hand-written VJPs: ``flatten`` of a batch's feature axes, and
``split_heads``/``merge_heads``, which move attention heads to a leading axis and back."""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np

from manualgrad.core import Example, defop
from manualgrad.errors import describe, fail, positive_int


def _check_flatten(x: jax.Array) -> None:
    if jnp.ndim(x) < 1:
        fail("manualgrad.ops.flatten", f"{describe('x', x)}: x needs a leading batch axis")


def _flatten_examples(rng: np.random.Generator) -> list[Example]:
    return [Example((rng.normal(size=s),)) for s in [(2, 3, 4), (5,), (2, 1, 2, 3)]]


@defop(check=_check_flatten, examples=_flatten_examples)
def flatten(x: jax.Array) -> jax.Array:
    r"""Reshape ``(n, d1, d2, ...)`` to ``(n, d1 * d2 * ...)``, keeping the leading axis.

    A reshape keeps every entry and only changes how it is indexed, so its Jacobian is the
    identity on the entries and $\bar{x}$ is $g$ reshaped back: ``g.reshape(x.shape)``.
    Residual: ``x``, of which only the static shape is read; under ``jit`` no data of it is
    kept for the backward.
    """
    return jnp.reshape(x, (np.shape(x)[0], math.prod(np.shape(x)[1:])))


def flatten_fwd(x: jax.Array) -> tuple[jax.Array, jax.Array]:
    return jnp.reshape(x, (np.shape(x)[0], -1)), x


def flatten_bwd(res: jax.Array, g: jax.Array) -> tuple[jax.Array]:
    return (jnp.reshape(g, np.shape(res)),)


flatten.defvjp(flatten_fwd, flatten_bwd)


# -- split_heads / merge_heads ------------------------------------------------------------
def _check_split_heads(x: jax.Array, heads: int) -> None:
    positive_int("manualgrad.ops.split_heads", "heads", heads)
    if jnp.ndim(x) < 2 or np.shape(x)[-1] % heads:
        fail("manualgrad.ops.split_heads", f"{describe('x', x)}: x must be (..., T, D) with D divisible by heads={heads}")


def _split_heads_examples(rng: np.random.Generator) -> list[Example]:
    return [Example((rng.normal(size=(2, 3, 6)),), {"heads": 3}), Example((rng.normal(size=(4, 2)),), {"heads": 1})]


def _split(x: jax.Array, heads: int) -> jax.Array:
    *lead, t, d = np.shape(x)
    return jnp.swapaxes(jnp.reshape(x, (*lead, t, heads, d // heads)), -3, -2)


def _merge(x: jax.Array) -> jax.Array:
    *lead, h, t, dh = np.shape(x)
    return jnp.reshape(jnp.swapaxes(x, -3, -2), (*lead, t, h * dh))


@defop(static=("heads",), check=_check_split_heads, examples=_split_heads_examples)
def split_heads(x: jax.Array, heads: int) -> jax.Array:
    r"""``(..., T, H * d) -> (..., H, T, d)``: the feature axis cut into ``heads`` slices of ``d``
    and the head axis moved before the positions (attention's layout: heads as a leading axis).

    $y_{\ldots, h, t, j} = x_{\ldots, t, h d + j}$ only moves entries, so the VJP moves them back:

    $$
    \bar{x}_{\ldots, t, h d + j} = g_{\ldots, h, t, j},
    $$

    i.e. $\bar{x}$ = ``merge_heads(g)``. Residual: none.
    """
    return _split(x, heads)


def split_heads_fwd(x: jax.Array, heads: int) -> tuple[jax.Array, None]:
    return _split(x, heads), None


def split_heads_bwd(res: None, g: jax.Array, heads: int) -> tuple[jax.Array]:
    return (_merge(g),)


split_heads.defvjp(split_heads_fwd, split_heads_bwd)


def _check_merge_heads(x: jax.Array) -> None:
    if jnp.ndim(x) < 3:
        fail("manualgrad.ops.merge_heads", f"{describe('x', x)}: x must be (..., H, T, d)")


def _merge_heads_examples(rng: np.random.Generator) -> list[Example]:
    return [Example((rng.normal(size=(2, 3, 4, 2)),)), Example((rng.normal(size=(1, 5, 3)),))]


@defop(check=_check_merge_heads, examples=_merge_heads_examples)
def merge_heads(x: jax.Array) -> jax.Array:
    r"""``(..., H, T, d) -> (..., T, H * d)``, the inverse of [split_heads][manualgrad.ops.split_heads]:
    each position's heads side by side on the feature axis.

    $y_{\ldots, t, h d + j} = x_{\ldots, h, t, j}$ only moves entries, so
    $\bar{x}$ = ``split_heads(g, heads=H)`` with $H$ = ``x.shape[-3]``. Residual: ``x``, for its
    static shape only (as [flatten][manualgrad.ops.flatten]'s).
    """
    return _merge(x)


def merge_heads_fwd(x: jax.Array) -> tuple[jax.Array, jax.Array]:
    return _merge(x), x


def merge_heads_bwd(res: jax.Array, g: jax.Array) -> tuple[jax.Array]:
    return (_split(g, np.shape(res)[-3]),)


merge_heads.defvjp(merge_heads_fwd, merge_heads_bwd)
