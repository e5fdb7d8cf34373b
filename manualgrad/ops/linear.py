"""The affine map ``y = x @ w + b`` and its hand-written VJP."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from manualgrad.core import Example, defop
from manualgrad.errors import describe, fail, same_dtype


def _check_linear(x: jax.Array, w: jax.Array, b: jax.Array) -> None:
    where = "manualgrad.ops.linear"
    if jnp.ndim(x) < 1:
        fail(where, f"{describe('x', x)}: x needs a feature axis, shape (..., d_in)")
    if jnp.ndim(w) != 2:
        fail(where, f"{describe('w', w)}: w must be a matrix of shape (d_in, d_out)")
    if jnp.ndim(b) != 1:
        fail(where, f"{describe('b', b)}: b must be a vector of shape (d_out,)")
    d_in, d_out = np.shape(w)
    if np.shape(x)[-1] != d_in:
        fail(
            where,
            f"x.shape={np.shape(x)} has {np.shape(x)[-1]} input features but "
            f"w.shape={np.shape(w)} expects d_in={d_in} (x's last axis must equal w's first)",
        )
    if np.shape(b)[0] != d_out:
        fail(where, f"b.shape={np.shape(b)} does not match w.shape={np.shape(w)}: b needs d_out={d_out} entries")
    same_dtype(where, x=x, w=w, b=b)


def _linear_examples(rng: np.random.Generator) -> list[Example]:
    def case(x_shape: tuple, d_out: int) -> Example:
        d_in = x_shape[-1]
        return Example((rng.normal(size=x_shape), rng.normal(size=(d_in, d_out)), rng.normal(size=d_out)))

    return [case((4, 3), 5), case((3,), 2), case((2, 3, 4), 3), case((1, 1), 1)]


@defop(check=_check_linear, examples=_linear_examples)
def linear(x: jax.Array, w: jax.Array, b: jax.Array) -> jax.Array:
    r"""Affine map ``y = x @ w + b``; ``x`` (..., d_in), ``w`` (d_in, d_out), ``b`` (d_out,).

    Derivation. Write every leading axis of ``x`` as one batch index $n$, and ``w`` as $W$:

    $$
    y_{nj} = \sum_i x_{ni} W_{ij} + b_j .
    $$

    With upstream cotangent $g = \partial L / \partial y$,

    $$
    \frac{\partial L}{\partial x_{ni}} = \sum_j g_{nj} W_{ij}, \qquad
    \frac{\partial L}{\partial W_{ij}} = \sum_n x_{ni} g_{nj}, \qquad
    \frac{\partial L}{\partial b_j} = \sum_n g_{nj},
    $$

    so, in matrix form:

    * $\bar{x} = g\, W^\top$;
    * $\bar{W} = x^\top g$, summed over every leading axis (the batch and any others), because
      $W$ is shared by all rows;
    * $\bar{b}_j = \sum_n g_{nj}$: $g$ summed over the leading axes, the transpose of
      broadcasting $b$ to every row.

    Residuals: ``x`` and ``w`` (``b`` is not needed). Forward and backward work on the rows
    of ``x`` and ``g`` (every leading axis merged, a free reshape), so every product is a 2-D
    ``dot_general`` contraction that the GEMM reads in place: no transposed copy of ``x``,
    ``w`` or ``g`` is made (a contraction over several leading axes made XLA:CPU transpose the
    residual, and fuse its producer into that strided copy).
    """
    return x @ w + b


def _rows(a: jax.Array) -> jax.Array:
    """``a`` as a matrix of rows, ``(n, features)``: a free reshape of the contiguous array."""
    return a.reshape(-1, a.shape[-1])


def linear_fwd(x: jax.Array, w: jax.Array, b: jax.Array) -> tuple[jax.Array, tuple]:
    return (_rows(x) @ w + b).reshape(*x.shape[:-1], w.shape[1]), (x, w)


def linear_bwd(res: tuple, g: jax.Array) -> tuple[jax.Array, jax.Array, jax.Array]:
    x, w = res
    rows_g = _rows(g)
    x_bar = lax.dot_general(rows_g, w, (((1,), (1,)), ((), ()))).reshape(x.shape)
    w_bar = lax.dot_general(_rows(x), rows_g, (((0,), (0,)), ((), ())))
    return x_bar, w_bar, jnp.sum(rows_g, axis=0)


linear.defvjp(linear_fwd, linear_bwd)
