"""Concatenation along one axis and its hand-written VJP (a bidirectional recurrent layer joins
its two directions' outputs on the feature axis, as PyTorch does)."""

from __future__ import annotations

from typing import Sequence

import jax
import jax.numpy as jnp
import numpy as np

from manualgrad.core import Example, defop
from manualgrad.errors import describe, fail, same_dtype

_WHERE = "manualgrad.ops.concat"


def _check_concat(xs: Sequence[jax.Array], axis: int = -1) -> None:
    if not isinstance(xs, (tuple, list)) or not xs:
        fail(_WHERE, f"xs must be a non-empty tuple of arrays, got {type(xs).__name__}")
    ndim = jnp.ndim(xs[0])
    if isinstance(axis, bool) or not isinstance(axis, (int, np.integer)) or not -ndim <= axis < max(ndim, 1):
        fail(_WHERE, f"axis={axis!r} must be an int in [-{ndim}, {ndim}) for {describe('xs[0]', xs[0])}")
    kept = [np.delete(np.shape(x), axis) if jnp.ndim(x) == ndim else None for x in xs]
    if any(k is None or tuple(k) != tuple(kept[0]) for k in kept):
        shapes = ", ".join(str(tuple(np.shape(x))) for x in xs)
        fail(_WHERE, f"shapes {shapes} must agree on every axis but axis={axis}")
    same_dtype(_WHERE, **{f"xs[{i}]": x for i, x in enumerate(xs)})


def _concat_examples(rng: np.random.Generator) -> list[Example]:
    return [
        Example(((rng.normal(size=(2, 3)), rng.normal(size=(2, 2))),)),
        Example(((rng.normal(size=(2, 1, 3)), rng.normal(size=(2, 2, 3)), rng.normal(size=(2, 1, 3))),), {"axis": 1}),
    ]


@defop(static=("axis",), check=_check_concat, examples=_concat_examples)
def concat(xs: Sequence[jax.Array], axis: int = -1) -> jax.Array:
    r"""``jnp.concatenate(xs, axis)``: the arrays of the tuple ``xs`` side by side along ``axis``
    (their other axes equal).

    Derivation. Every entry of $y$ is one entry of one $x_k$ (the $k$-th array of ``xs``). With
    indices written along ``axis`` only (every other index is the same on both sides) and $n_k$
    the size of $x_k$ along ``axis``,

    $$
    y_{o_k + j} = (x_k)_j, \qquad o_k = n_1 + \dots + n_{k-1},
    $$

    $o_k$ being the sum of the sizes of $x_1, \dots, x_{k-1}$ along ``axis``. So
    $\partial y / \partial x_k$ copies and $\bar{x}_k = g_{o_k : o_k + n_k}$ (along ``axis``):
    the cotangent of ``xs`` is $g$ cut back into the pieces ``xs`` came in. Residual: ``xs``,
    for their static sizes only (under ``jit`` no data of them is kept for the backward).
    """
    return jnp.concatenate(xs, axis=axis)


def concat_fwd(xs: Sequence[jax.Array], axis: int = -1) -> tuple[jax.Array, Sequence[jax.Array]]:
    return jnp.concatenate(xs, axis=axis), xs


def concat_bwd(res: Sequence[jax.Array], g: jax.Array, axis: int = -1) -> tuple[Sequence[jax.Array]]:
    cuts = np.cumsum([np.shape(x)[axis] for x in res])[:-1]
    return (type(res)(jnp.split(g, cuts, axis=axis)),)  # a tuple for a tuple, a list for a list


concat.defvjp(concat_fwd, concat_bwd)
