"""Flattening the feature axes of a batch, with its (trivial) hand-written VJP."""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np

from manualgrad.core import Example, defop, describe, fail


def _check_flatten(x: jax.Array) -> None:
    if jnp.ndim(x) < 1:
        fail("manualgrad.ops.flatten", f"{describe('x', x)}: x needs a leading batch axis")


def _flatten_examples(rng: np.random.Generator) -> list[Example]:
    return [Example((rng.normal(size=s),)) for s in [(2, 3, 4), (5,), (2, 1, 2, 3)]]


@defop(check=_check_flatten, examples=_flatten_examples)
def flatten(x: jax.Array) -> jax.Array:
    """Reshape ``(n, d1, d2, ...)`` to ``(n, d1 * d2 * ...)``, keeping the leading axis.

    A reshape keeps every entry and only changes how it is indexed, so its Jacobian is the
    identity on the entries and
    ``x_bar = g.reshape(x.shape)``. Residual: ``x``, of which only the static shape is
    read; under ``jit`` no data of it is kept for the backward.
    """
    return jnp.reshape(x, (np.shape(x)[0], math.prod(np.shape(x)[1:])))


def flatten_fwd(x: jax.Array) -> tuple[jax.Array, jax.Array]:
    return jnp.reshape(x, (np.shape(x)[0], -1)), x


def flatten_bwd(res: jax.Array, g: jax.Array) -> tuple[jax.Array]:
    return (jnp.reshape(g, np.shape(res)),)


flatten.defvjp(flatten_fwd, flatten_bwd)
