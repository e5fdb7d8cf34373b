"""ops.embedding: repeated ids accumulate, bad ids are named, and what jit does with ids it cannot check."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from manualgrad import ops


def test_repeated_ids_accumulate_their_cotangents():
    table = jnp.arange(12.0).reshape(4, 3)
    ids = jnp.array([[2, 0], [2, 2]])
    y, pullback = jax.vjp(lambda t: ops.embedding(ids, t), table)
    np.testing.assert_array_equal(y, np.asarray(table)[np.asarray(ids)])
    g = jnp.arange(12.0).reshape(2, 2, 3)
    (table_bar,) = pullback(g)
    want = np.zeros((4, 3))
    want[2] = g[0, 0] + g[1, 0] + g[1, 1]  # three positions hold id 2
    want[0] = g[0, 1]
    np.testing.assert_array_equal(table_bar, want)  # rows 1 and 3 are unused: zero


@pytest.mark.parametrize(
    "ids, table, message",
    [
        (jnp.array([0.0, 1.0]), jnp.zeros((3, 2)), r"ops.embedding: ids.shape=\(2,\) float.*ids must be integers"),
        (jnp.array([0, 3, -1]), jnp.zeros((3, 2)), r"ops.embedding: ids must be in \[0, 3\) for table.shape=\(3, 2\); got \[3, -1\]"),
        (jnp.array([0]), jnp.zeros((3,)), r"ops.embedding: table.shape=\(3,\) .*table must be \(V, D\)"),
    ],
    ids=["float-ids", "out-of-range", "table-rank"],
)
def test_bad_ids_and_tables_are_named(ids, table, message):
    with pytest.raises(ValueError, match=message):
        ops.embedding(ids, table)


def test_under_jit_out_of_range_ids_give_nan_rows_and_no_gradient():
    # documented: jit cannot look at the ids' values; the gather fills, the scatter-add drops
    table = jnp.ones((3, 2))
    f = jax.jit(lambda ids, t: jax.vjp(lambda t: ops.embedding(ids, t), t))
    y, pullback = f(jnp.array([1, 5]), table)
    assert np.all(np.isnan(y[1])) and np.array_equal(y[0], [1.0, 1.0])
    np.testing.assert_array_equal(pullback(jnp.ones((2, 2)))[0], [[0, 0], [1, 1], [0, 0]])
    with pytest.raises(ValueError, match="ids must be integers"):  # the dtype is known under jit
        jax.jit(ops.embedding)(jnp.array([0.0]), table)


def test_under_jit_negative_ids_are_out_of_range_too():
    # a NumPy index would count -1 from the end (the last row, which would then get the gradient)
    table = jnp.arange(6.0).reshape(3, 2)
    f = jax.jit(lambda ids, t: jax.vjp(lambda t: ops.embedding(ids, t), t))
    y, pullback = f(jnp.array([-1, 2]), table)
    assert np.all(np.isnan(y[0])) and np.array_equal(y[1], [4.0, 5.0])
    np.testing.assert_array_equal(pullback(jnp.ones((2, 2)))[0], [[0, 0], [0, 0], [1, 1]])
    np.testing.assert_array_equal(jax.jit(ops.embedding.reference)(jnp.array([-1]), table), [[np.nan, np.nan]])
