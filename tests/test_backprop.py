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


def independent_relu_mlp(params, x, labels):
    """The relu-mlp case written with plain jax.numpy/jax.nn, no manualgrad: its activations,
    dL/d(input of each layer) by jax.grad of the rest of the network, and the loss."""
    (l1, _, l2, _, l3) = params
    layers = [
        lambda z: z @ l1["w"] + l1["b"], jax.nn.relu,
        lambda z: z @ l2["w"] + l2["b"], jax.nn.relu,
        lambda z: z @ l3["w"] + l3["b"],
    ]

    def loss(logits):
        return -jnp.mean(jnp.take_along_axis(jax.nn.log_softmax(logits), labels[:, None], axis=1))

    def rest(k):
        def f(z):
            for layer in layers[k:]:
                z = layer(z)
            return loss(z)
        return f

    inputs = [x]
    for layer in layers:
        inputs.append(layer(inputs[-1]))
    return inputs, [jax.grad(rest(k))(inputs[k]) for k in range(len(layers) + 1)], loss(inputs[-1])


def test_trace_values_equal_an_independent_model():
    model, loss, params, x, t = make_case("relu-mlp")
    value, grads, trace = jax.jit(backprop.value_and_grad(model, loss, trace=True))(params, x, t)
    acts, cotangents, _ = independent_relu_mlp(params, x, t)
    names = [e.name for e in trace]
    assert names == ["Linear(8)", "ReLU", "Linear(6)", "ReLU", "Linear(3)", "manualgrad.losses.softmax_cross_entropy"]
    assert [e.path for e in trace][:5] == ["0", "1", "2", "3", "4"]
    for k, e in enumerate(trace.entries[:-1]):
        np.testing.assert_allclose(e.x, acts[k], rtol=1e-12, atol=1e-14)
        np.testing.assert_allclose(e.y, acts[k + 1], rtol=1e-12, atol=1e-14)
        np.testing.assert_allclose(e.x_bar, cotangents[k], rtol=1e-10, atol=1e-14)
        np.testing.assert_allclose(e.y_bar, cotangents[k + 1], rtol=1e-10, atol=1e-14)
    def independent_loss(p):
        return independent_relu_mlp(p, x, t)[2]

    w_bar = jax.grad(independent_loss)(params)[0]["w"]
    np.testing.assert_allclose(trace[0].params_bar["w"], w_bar, rtol=1e-10, atol=1e-14)
    np.testing.assert_allclose(grads[0]["w"], w_bar, rtol=1e-10, atol=1e-14)
    assert float(trace[-1].y) == pytest.approx(float(independent_loss(params)), rel=1e-12)


def test_trace_paths_in_fanout_and_the_summed_gradient():
    model, loss, params, x, t = make_case("fanout")
    _, _, trace = backprop.value_and_grad(model, loss, trace=True)(params, x, t)
    assert [e.path for e in trace] == ["0", "1", "2", "2.head0.0", "2.head1.0", "2.head1.1", "2.head1.2", ""]
    assert trace[2].name == "fanout(2)"
    # the fanout's dL/dx is the sum of both heads' input gradients, and the ReLU before it receives it
    np.testing.assert_allclose(trace[2].x_bar, trace[3].x_bar + trace[4].x_bar, rtol=1e-14)
    np.testing.assert_allclose(trace[1].y_bar, trace[2].x_bar, rtol=1e-14)
    # ...which is jax.grad of the loss with respect to the trunk's output, through plain references
    trunk_out = trace[1].y

    (head0,), (lin1, _, lin2) = params[2]

    def from_trunk(h):  # the two heads and the multitask loss in plain jax.numpy
        logits = h @ head0["w"] + head0["b"]
        reg = jnp.tanh(h @ lin1["w"] + lin1["b"]) @ lin2["w"] + lin2["b"]
        ce = -jnp.mean(jnp.take_along_axis(jax.nn.log_softmax(logits), t[0][:, None], axis=1))
        return ce + jnp.mean((reg - t[1]) ** 2)

    np.testing.assert_allclose(trace[2].x_bar, jax.grad(from_trunk)(trunk_out), rtol=1e-10)


def test_printing_a_trace_works_for_two_heads_of_different_widths():
    model, loss, params, x, t = make_case("fanout")
    _, _, trace = jax.jit(backprop.value_and_grad(model, loss, trace=True))(params, x, t)
    text = str(trace)
    lines = text.splitlines()
    assert len(lines) == len(trace)  # one line per layer
    assert "fanout(2)" in lines[2] and "sum of 2 branches" in lines[2]
    assert "x(7,6) -> y((7,3), (7,2))" in lines[2]
    assert "|dL/dw|=" in lines[0] and "|dL/db|=" in lines[0] and "|dL/dx|=" in lines[0] and "|y|=" in lines[0]
    full = trace.format(arrays=True)
    assert "dL/dy[1]" in full and "(dL/dx is the sum of the branches' dL/dx)" in full
    norm = float(np.linalg.norm(np.asarray(trace[0].params_bar["w"])))
    assert f"|dL/dw|={norm:.4g}" in lines[0]


def test_without_trace_nothing_is_recorded():
    model, loss, params, x, t = make_case("relu-mlp")
    out = backprop.value_and_grad(model, loss)(params, x, t)
    assert len(out) == 2
