"""Property tests over shapes, batch sizes and leading axes (hypothesis)."""

import jax
import jax.numpy as jnp
import numpy as np
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from manualgrad import backprop, check, losses, nn, ops
from tests.helpers import as_float64, assert_trees_close, three_gradients

SETTINGS = settings(max_examples=8, deadline=None, suppress_health_check=[HealthCheck.too_slow])
dims = st.integers(1, 6)
leading = st.lists(st.integers(1, 4), min_size=0, max_size=3)


@SETTINGS
@given(lead=leading, d_in=dims, d_out=dims, seed=st.integers(0, 2**16))
def test_linear_any_leading_axes(lead, d_in, d_out, seed):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(*lead, d_in))
    w, b = rng.normal(size=(d_in, d_out)), rng.normal(size=d_out)
    check.check_vjp(ops.linear, *check.cast((x, w, b), jnp.float64), seed=seed, jit=True).assert_ok()


@SETTINGS
@given(shape=st.lists(st.integers(1, 5), min_size=1, max_size=3), seed=st.integers(0, 2**16))
def test_regression_losses_any_shape(shape, seed):
    rng = np.random.default_rng(seed)
    pred, target = check.cast((rng.normal(size=shape), rng.normal(size=shape)), jnp.float64)
    for loss in (losses.mse, losses.sse):
        check.check_vjp(loss, pred, target, seed=seed, jit=True).assert_ok()
    check.check_vjp(losses.binary_cross_entropy_with_logits, pred, jnp.clip(target, 0, 1), seed=seed, jit=True).assert_ok()


@SETTINGS
@given(lead=st.lists(st.integers(1, 5), min_size=0, max_size=2), classes=st.integers(1, 6), seed=st.integers(0, 2**16))
def test_cross_entropy_any_batch(lead, classes, seed):
    rng = np.random.default_rng(seed)
    logits = jnp.asarray(rng.normal(size=(*lead, classes)) * 4)
    ids = jnp.asarray(rng.integers(0, classes, size=tuple(lead)))
    check.check_vjp(losses.softmax_cross_entropy, logits, ids, seed=seed, jit=True).assert_ok()
    probs = jnp.asarray(rng.dirichlet(np.ones(classes), size=tuple(lead)))
    check.check_vjp(losses.softmax_cross_entropy, logits, probs, seed=seed, jit=True).assert_ok()


ACTIVATIONS = [nn.ReLU, nn.Tanh, nn.Sigmoid, nn.GELU, nn.Softplus, lambda: nn.LeakyReLU(0.2)]


@st.composite
def networks(draw):
    """A random serial MLP, optionally ending in a fanout of two heads."""

    def mlp(depth):
        layers = []
        for _ in range(depth):
            layers += [nn.Linear(draw(dims)), draw(st.sampled_from(ACTIVATIONS))()]
        return layers

    trunk = mlp(draw(st.integers(0, 2)))
    if draw(st.booleans()):
        heads = [nn.serial(*mlp(draw(st.integers(0, 1))), nn.Linear(draw(dims))) for _ in range(2)]
        return nn.serial(*trunk, nn.fanout(*heads)), True
    return nn.serial(*trunk, nn.Linear(draw(dims))), False


@SETTINGS
@given(net=networks(), batch=st.integers(1, 6), d_in=dims, seed=st.integers(0, 2**16))
def test_random_networks_explicit_equals_jax_grad(net, batch, d_in, seed):
    model, is_fanout = net
    out_shape, params = model.init(jax.random.PRNGKey(seed), (batch, d_in))
    rng = np.random.default_rng(seed)
    x = jnp.asarray(rng.normal(size=(batch, d_in)))
    if is_fanout:
        loss = losses.multitask(losses.mse, losses.sse)
        target = tuple(jnp.asarray(rng.normal(size=s)) for s in out_shape)
    else:
        loss, target = losses.mse, jnp.asarray(rng.normal(size=out_shape))
    (ve, ge), (vm, gm), (vr, gr) = three_gradients(model, loss, as_float64(params), x, target)
    np.testing.assert_allclose(ve, vr, rtol=1e-12)
    assert_trees_close(ge, gr, rtol=1e-9, atol=1e-12)
    assert_trees_close(gm, gr, rtol=1e-9, atol=1e-12)
    # every model the library can build prints its trace, one line per layer
    _, _, trace = jax.jit(backprop.value_and_grad(model, loss, trace=True))(as_float64(params), x, target)
    assert len(str(trace).splitlines()) == len(trace)
    assert ("sum of 2 branches" in str(trace)) == is_fanout
