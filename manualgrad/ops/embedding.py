"""Embedding lookup: a gather forward and a scatter-add backward, written by hand."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from manualgrad.core import Example, defop
from manualgrad.errors import describe, fail

_WHERE = "manualgrad.ops.embedding"


def _check_embedding(ids: jax.Array, table: jax.Array) -> None:
    if not jnp.issubdtype(jnp.result_type(ids), jnp.integer):
        fail(_WHERE, f"{describe('ids', ids)}: ids must be integers (token ids), not {jnp.result_type(ids)}")
    if jnp.ndim(table) != 2:
        fail(_WHERE, f"{describe('table', table)}: table must be (V, D), one row per id")
    if not isinstance(ids, jax.core.Tracer):  # concrete ids: out-of-range ones are caught here
        ids = np.asarray(ids)
        v = np.shape(table)[0]
        if ids.size and (ids.min() < 0 or ids.max() >= v):
            bad = ids[(ids < 0) | (ids >= v)]
            fail(_WHERE, f"ids must be in [0, {v}) for table.shape={np.shape(table)}; got {bad[:5].tolist()}")


def _embedding_examples(rng: np.random.Generator) -> list[Example]:
    # repeated ids (their rows' cotangents must add up), an unused row, a batch of sequences
    return [
        Example((np.array([0, 2, 2, 4, 0]), rng.normal(size=(6, 3)))),
        Example((np.array([[1, 1, 3], [0, 3, 3]]), rng.normal(size=(5, 4)))),
    ]


@defop(constant=("ids",), check=_check_embedding, examples=_embedding_examples)
def embedding(ids: jax.Array, table: jax.Array) -> jax.Array:
    r"""``table[ids]``: ``ids`` integer of any shape (a constant argument, no cotangent), ``table``
    (V, D); the result has shape ``ids.shape + (D,)``.

    Derivation. Write ``table`` as $E$ and ``ids`` as $k$. Then $y_{i,:} = E_{k_i,:}$ ($i$
    running over every position of ``ids``), so $\partial y_{i,:} / \partial E_{v,:}$ is the
    identity where $k_i = v$ and 0 elsewhere, and

    $$
    \bar{E}_v = \sum_{i \,:\, k_i = v} g_i ,
    $$

    the sum over the positions $i$ with $k_i = v$: a scatter-add, in which a repeated id
    accumulates every one of its positions' cotangents and an unused row gets 0.

    Residual: ``ids`` (and ``table``, for its shape; a parameter, alive anyway). Bad ids: concrete
    ids out of ``[0, V)`` are an error; under ``jit`` they cannot be checked, and the gather fills
    their rows with NaN (``jnp.take``'s ``mode="fill"``) while the backward drops them. Negative
    ids included: they do not count from the end, as a NumPy index would.
    """
    return jnp.take(table, _no_wrap(ids, table), axis=0, mode="fill")


def _no_wrap(ids: jax.Array, table: jax.Array) -> jax.Array:
    """``ids`` with the negative ones moved past the last row, so that gather and scatter treat
    them as out of range instead of counting from the end."""
    return jnp.where(ids < 0, table.shape[0], ids)


def embedding_fwd(ids: jax.Array, table: jax.Array) -> tuple[jax.Array, tuple]:
    ids = _no_wrap(ids, table)
    return jnp.take(table, ids, axis=0, mode="fill"), (ids, table)


def embedding_bwd(res: tuple, g: jax.Array) -> tuple[None, jax.Array]:
    ids, table = res
    return None, jnp.zeros(table.shape, g.dtype).at[ids].add(g, mode="drop")


embedding.defvjp(embedding_fwd, embedding_bwd)
