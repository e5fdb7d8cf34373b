"""Layers: init, params layout, shape errors, serial/fanout and the seed-000 network."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from manualgrad import backprop, losses, nn
from tests.helpers import as_float64, assert_trees_close, three_gradients


def test_layer_is_the_stax_namedtuple_plus_init_state():
    assert nn.Layer._fields == ("init", "apply", "fwd", "bwd", "init_state")
    init, apply, fwd, bwd, init_state = nn.Linear(3)
    assert init_state((2, 4)) == ((2, 3), ())


def test_a_hand_made_four_function_layer_still_works_everywhere():
    """Migration: Layer(init, apply, fwd, bwd) of the stateless form, inside serial, trained and traced."""
    lin = nn.Linear(2)
    double = nn.Layer(lambda k, s: (s, ()), lambda p, x: 2.0 * x, lambda p, x: (2.0 * x, None), lambda r, g: ((), 2.0 * g))
    model = nn.serial(lin, double)
    _, params = model.init(jax.random.PRNGKey(0), (3, 4))
    assert nn.init_state(double, (3, 4)) == ((3, 4), ())
    assert model.init_state((3, 4)) == ((3, 2), ((), ()))
    x, y = jnp.ones((3, 4), jnp.float32), jnp.zeros((3, 2), jnp.float32)
    value, grads = backprop.value_and_grad(model, losses.mse)(params, x, y)
    ref_value, ref_grads = jax.value_and_grad(lambda p: losses.mse(model.apply(p, x), y))(params)
    assert_trees_close(grads, ref_grads, rtol=1e-6)
    np.testing.assert_allclose(value, ref_value, rtol=1e-6)


def test_linear_params_layout_and_shapes():
    out_shape, params = nn.Linear(7).init(jax.random.PRNGKey(0), (5, 3))
    assert out_shape == (5, 7)
    assert params["w"].shape == (3, 7) and params["b"].shape == (7,)
    np.testing.assert_array_equal(params["b"], 0.0)
    assert params["w"].dtype == jnp.float32


def test_he_and_glorot_initialisation_statistics():
    d_in, d_out = 400, 300
    _, he = nn.Linear(d_out, init="he").init(jax.random.PRNGKey(1), (1, d_in))
    assert np.std(he["w"]) == pytest.approx(math.sqrt(2 / d_in), rel=0.03)
    _, gl = nn.Linear(d_out, init="glorot").init(jax.random.PRNGKey(2), (1, d_in))
    a = math.sqrt(6 / (d_in + d_out))
    assert np.max(np.abs(gl["w"])) <= a
    assert np.std(gl["w"]) == pytest.approx(a / math.sqrt(3), rel=0.03)
    with pytest.raises(ValueError, match="init must be one of"):
        nn.Linear(3, init="zeros")


@pytest.mark.parametrize("use_jit", [False, True])
def test_layer_applied_to_wrong_feature_size(use_jit):
    model = nn.serial(nn.Linear(4), nn.ReLU(), nn.Linear(2))
    _, params = model.init(jax.random.PRNGKey(0), (-1, 3))
    apply = jax.jit(model.apply) if use_jit else model.apply
    with pytest.raises(ValueError, match=r"nn.Linear\(4\): manualgrad.ops.linear: x.shape=\(8, 5\) has 5 input features but w.shape=\(3, 4\) expects d_in=3"):
        apply(params, jnp.ones((8, 5)))
    fwd = jax.jit(model.fwd) if use_jit else model.fwd
    with pytest.raises(ValueError, match=r"nn.Linear\(4\).*expects d_in=3"):
        fwd(params, jnp.ones((8, 5)))


def test_flatten_and_activation_layers():
    model = nn.serial(nn.Flatten(), nn.Linear(3), nn.GELU(), nn.Linear(3), nn.LeakyReLU(0.1), nn.Linear(2), nn.LogSoftmax())
    shape, params = model.init(jax.random.PRNGKey(0), (4, 2, 5))
    assert shape == (4, 2)
    x = jax.random.normal(jax.random.PRNGKey(1), (4, 2, 5), jnp.float64)
    target = jnp.full((4, 2), -0.7)
    (ve, ge), (vm, gm), (vr, gr) = three_gradients(model, losses.mse, as_float64(params), x, target)
    assert ge[0] == () and ge[1]["w"].shape == (10, 3)
    assert_trees_close(ge, gr)
    assert_trees_close(gm, gr)


def seed000_network():
    def head():
        return nn.serial(nn.Linear(2), nn.ReLU(), nn.Linear(2), nn.ReLU())

    return nn.serial(nn.Linear(2), nn.ReLU(), nn.Linear(2), nn.ReLU(), nn.fanout(head(), head()))


def test_seed000_trunk_gradient_is_the_sum_over_both_heads():
    model = seed000_network()
    shape, params = model.init(jax.random.PRNGKey(3), (4, 2))
    assert shape == ((4, 2), (4, 2))
    params = jax.tree_util.tree_map(lambda a: jnp.asarray(a, jnp.float64) + 0.2, params)
    x = jax.random.normal(jax.random.PRNGKey(4), (4, 2), jnp.float64)
    targets = (jnp.ones((4, 2)), -jnp.ones((4, 2)))
    half = losses.scaled(losses.sse, 0.5)
    off = losses.scaled(losses.sse, 0.0)
    both = backprop.value_and_grad(model, losses.multitask(half, half))(params, x, targets)[1]
    one = backprop.value_and_grad(model, losses.multitask(half, off))(params, x, targets)[1]
    two = backprop.value_and_grad(model, losses.multitask(off, half))(params, x, targets)[1]
    for i in range(4):  # trunk layers
        summed = jax.tree_util.tree_map(lambda a, b: a + b, one[i], two[i])
        assert_trees_close(both[i], summed)
    assert not np.allclose(one[2]["w"], 0) and not np.allclose(two[2]["w"], 0)
    (_, ge), (_, gm), (_, gr) = three_gradients(model, losses.multitask(half, half), params, x, targets)
    assert_trees_close(ge, gr)
    assert_trees_close(gm, gr)


def test_fanout_output_and_params_layout():
    model = nn.fanout(nn.Linear(3), nn.serial(nn.Linear(2), nn.Tanh()))
    shapes, params = model.init(jax.random.PRNGKey(0), (5, 4))
    assert shapes == ((5, 3), (5, 2))
    assert isinstance(params, tuple) and len(params) == 2 and len(params[1]) == 2
    ys = model.apply(params, jnp.ones((5, 4), jnp.float32))
    assert isinstance(ys, tuple) and ys[0].shape == (5, 3) and ys[1].shape == (5, 2)


@pytest.mark.parametrize("out_dim", [0, -3, 2.5, True, "4"])
def test_linear_needs_a_positive_integer_width(out_dim):
    with pytest.raises(ValueError, match=r"nn.Linear\(.*\): out_dim must be a positive integer"):
        nn.Linear(out_dim)
    assert nn.Linear(np.int64(3)).init(jax.random.PRNGKey(0), (2, 4))[0] == (2, 3)
