"""The explicit reverse pass: equal to jax.grad, jittable, no autodiff inside, and its trace."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from manualgrad import backprop, core, losses, nn
from tests.helpers import as_float64, assert_trees_close, three_gradients

MODELS = {
    "relu-mlp": (lambda: nn.serial(nn.Linear(8), nn.ReLU(), nn.Linear(6), nn.ReLU(), nn.Linear(3)), losses.softmax_cross_entropy, "labels"),
    "sigmoid-tanh": (lambda: nn.serial(nn.Linear(5), nn.Sigmoid(), nn.Linear(4), nn.Tanh(), nn.Linear(2)), losses.mse, "regression"),
    "softplus-bce": (lambda: nn.serial(nn.Linear(5), nn.Softplus(), nn.Linear(3)), losses.binary_cross_entropy_with_logits, "binary"),
    "scaled-relu-sse": (lambda: nn.serial(nn.Linear(4), nn.ScaledReLU(3.0), nn.Linear(2), nn.Square()), losses.sse, "regression"),
    "fanout": (
        lambda: nn.serial(nn.Linear(6), nn.ReLU(), nn.fanout(nn.serial(nn.Linear(3)), nn.serial(nn.Linear(4), nn.Tanh(), nn.Linear(2)))),
        losses.multitask(losses.softmax_cross_entropy, losses.mse),
        "multi",
    ),
}


def make_case(name, batch=7, d_in=5, seed=0):
    build, loss, kind = MODELS[name]
    model = build()
    out_shape, params = model.init(jax.random.PRNGKey(seed), (batch, d_in))
    rng = np.random.default_rng(seed)
    x = jnp.asarray(rng.normal(size=(batch, d_in)))

    def target(shape, kind):
        if kind == "labels":
            return jnp.asarray(rng.integers(0, shape[-1], size=shape[:-1]))
        if kind == "binary":
            return jnp.asarray(rng.integers(0, 2, size=shape).astype(np.float64))
        return jnp.asarray(rng.normal(size=shape))

    t = (target(out_shape[0], "labels"), target(out_shape[1], "regression")) if kind == "multi" else target(out_shape, kind)
    return model, loss, as_float64(params), x, t


@pytest.mark.parametrize("name", sorted(MODELS))
def test_explicit_equals_jax_grad(name):
    model, loss, params, x, t = make_case(name)
    (ve, ge), (vm, gm), (vr, gr) = three_gradients(model, loss, params, x, t)
    np.testing.assert_allclose(ve, vr, rtol=1e-12)
    np.testing.assert_allclose(vm, vr, rtol=1e-12)
    assert_trees_close(ge, gr)
    assert_trees_close(gm, gr)


def test_explicit_pass_uses_no_autodiff_and_no_custom_vjp(monkeypatch):
    model, loss, params, x, t = make_case("fanout")
    want = backprop.value_and_grad(model, loss)(params, x, t)

    def forbidden(*a, **k):
        raise AssertionError("autodiff used inside the explicit pass")

    for name in ("grad", "vjp", "value_and_grad", "jvp"):
        monkeypatch.setattr(jax, name, forbidden)
    monkeypatch.setattr(core.Op, "__call__", forbidden)
    got = jax.jit(backprop.value_and_grad(model, loss))(params, x, t)
    assert_trees_close(got, want)


def test_trace_records_every_layer_in_order():
    model, loss, params, x, t = make_case("relu-mlp")
    value, grads, trace = jax.jit(backprop.value_and_grad(model, loss, trace=True))(params, x, t)
    names = [e.name for e in trace]
    assert names == ["Linear(8)", "ReLU", "Linear(6)", "ReLU", "Linear(3)", "manualgrad.losses.softmax_cross_entropy"]
    assert [e.path for e in trace][:5] == ["0", "1", "2", "3", "4"]
    np.testing.assert_array_equal(trace[0].x, x)
    for a, b in zip(trace.entries[:-1], trace.entries[1:]):
        np.testing.assert_array_equal(a.y, b.x)  # output of one layer is the input of the next
        np.testing.assert_array_equal(a.y_bar, b.x_bar)  # and the gradients chain back
    assert_trees_close(trace[0].params_bar, grads[0])
    assert trace[-1].y == value
    text = str(trace)
    assert "[0] 0  Linear(8)" in text and "dL/dw" in text and "dL/dy" in text


def test_trace_paths_in_fanout():
    model, loss, params, x, t = make_case("fanout")
    _, _, trace = backprop.value_and_grad(model, loss, trace=True)(params, x, t)
    assert [e.path for e in trace] == ["0", "1", "2.head0.0", "2.head1.0", "2.head1.1", "2.head1.2", ""]
    # the ReLU before the fanout receives the sum of both heads' input gradients
    np.testing.assert_allclose(trace[1].y_bar, trace[2].x_bar + trace[3].x_bar, rtol=1e-14)


def test_without_trace_nothing_is_recorded():
    model, loss, params, x, t = make_case("relu-mlp")
    out = backprop.value_and_grad(model, loss)(params, x, t)
    assert len(out) == 2
