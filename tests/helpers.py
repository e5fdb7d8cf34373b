"""Small helpers shared by the network tests."""

import jax
import jax.numpy as jnp
import numpy as np

from manualgrad import backprop, reference_mode


def three_gradients(model, loss, params, x, target):
    """Gradients by the explicit pass, by jax.grad through the manual VJPs, and by
    jax.grad through the plain references."""

    def objective(p):
        return loss(model.apply(p, x), target)

    explicit = jax.jit(backprop.value_and_grad(model, loss))(params, x, target)
    manual = jax.jit(jax.value_and_grad(objective))(params)
    with reference_mode():  # part of jit's cache key: this traces the references
        reference = jax.jit(jax.value_and_grad(objective))(params)
    return explicit, manual, reference


def assert_trees_close(a, b, rtol=1e-10, atol=1e-12):
    assert jax.tree_util.tree_structure(a) == jax.tree_util.tree_structure(b)
    for x, y in zip(jax.tree_util.tree_leaves(a), jax.tree_util.tree_leaves(b)):
        np.testing.assert_allclose(np.asarray(x), np.asarray(y), rtol=rtol, atol=atol)


def as_float64(tree):
    return jax.tree_util.tree_map(lambda a: jnp.asarray(a, jnp.float64), tree)
