"""Elementwise addition with NumPy broadcasting, and its hand-written VJP (a residual connection,
a position table added to every sequence of a batch)."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from manualgrad.core import Example, defop
from manualgrad.errors import describe, fail, same_dtype

_WHERE = "manualgrad.ops.add"


def _check_add(x: jax.Array, y: jax.Array) -> None:
    try:
        np.broadcast_shapes(np.shape(x), np.shape(y))
    except ValueError:
        fail(_WHERE, f"{describe('x', x)} and {describe('y', y)} do not broadcast together")
    same_dtype(_WHERE, x=x, y=y)


def _add_examples(rng: np.random.Generator) -> list[Example]:
    # equal shapes (a residual), a table added to every sequence, size-1 axes on both sides
    return [
        Example((rng.normal(size=(2, 3)), rng.normal(size=(2, 3)))),
        Example((rng.normal(size=(2, 4, 3)), rng.normal(size=(4, 3)))),
        Example((rng.normal(size=(3, 1, 2)), rng.normal(size=(1, 4, 1)))),
    ]


def unbroadcast(g: jax.Array, shape: tuple) -> jax.Array:
    """``g`` summed back to ``shape``: over the leading axes broadcasting added and over the axes
    where ``shape`` has size 1 (the transpose of broadcasting ``shape`` to ``g.shape``)."""
    lead = g.ndim - len(shape)
    stretched = tuple(lead + i for i, n in enumerate(shape) if n == 1 and g.shape[lead + i] != 1)
    return jnp.sum(g, axis=tuple(range(lead)) + stretched).reshape(shape)


@defop(check=_check_add, examples=_add_examples)
def add(x: jax.Array, y: jax.Array) -> jax.Array:
    r"""``x + y`` with broadcasting.

    Derivation. $z = x + y$ has $\partial z / \partial x = \partial z / \partial y = 1$
    entrywise, so before broadcasting both cotangents are $g$ itself. Broadcasting copies an
    entry of $x$ to every position of an added or stretched (size-1) axis, and the transpose of
    a copy is a sum: $\bar{x}$ is $g$ summed over the axes broadcasting added to ``x`` (kept
    with size 1 where ``x`` had them), and likewise $\bar{y}$. A residual connection
    ``x + f(x)`` gets $\bar{x} = g$ on the skip path; a position table ``(T, D)`` added to a
    batch ``(B, T, D)`` gets

    $$
    \bar{y}_{td} = \sum_b g_{btd} .
    $$

    Residual: ``x`` and ``y``, for their static shapes only.
    """
    return x + y


def add_fwd(x: jax.Array, y: jax.Array) -> tuple[jax.Array, tuple]:
    return x + y, (x, y)


def add_bwd(res: tuple, g: jax.Array) -> tuple[jax.Array, jax.Array]:
    x, y = res
    return unbroadcast(g, np.shape(x)), unbroadcast(g, np.shape(y))


add.defvjp(add_fwd, add_bwd)
