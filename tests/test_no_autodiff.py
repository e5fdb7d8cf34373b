"""No JAX autodiff inside a hand-written rule: every op's backward and the explicit reverse
pass over a model holding every layer and every loss are traced with autodiff switched off
at its source (JAX's JVP/linearize traces and transpose), so aliases are caught too."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax import grad as _grad  # the audit's aliases
from jax import vjp as _vjp

from manualgrad import backprop, check, losses, nn, train
from manualgrad.check import AutodiffError, cast, no_autodiff
from manualgrad.core import REGISTRY, Example, defop
from tests.helpers import as_float64, assert_trees_close

NAMES = sorted(REGISTRY)


@pytest.mark.parametrize("name", NAMES)
def test_every_registered_backward_is_autodiff_free(name):
    op = REGISTRY[name].op
    for ex in REGISTRY[name].examples(np.random.default_rng(0)):
        check.check_no_autodiff(op, *cast(ex.args, jnp.float64), **ex.params).assert_ok()


@pytest.mark.parametrize(
    "call",
    [lambda f, x: jax.grad(lambda x: jnp.sum(f(x)))(x), lambda f, x: jax.vjp(f, x), lambda f, x: jax.jvp(f, (x,), (x,)),
     lambda f, x: jax.linearize(f, x), lambda f, x: jax.linear_transpose(lambda v: 2 * v, x)(x),
     lambda f, x: _grad(lambda x: jnp.sum(f(x)))(x), lambda f, x: _vjp(f, x)],
    ids=["grad", "vjp", "jvp", "linearize", "linear_transpose", "aliased grad", "aliased vjp"],
)
def test_the_guard_catches_autodiff_by_any_name(call):
    with pytest.raises(AutodiffError, match="here: JAX autodiff"):
        with no_autodiff("here"):
            call(jnp.sin, jnp.ones(3))
    call(jnp.sin, jnp.ones(3))  # restored afterwards


def autodiff_gelu():
    """The audit's planted bug: gelu's "hand-written" backward is jax.vjp of its reference."""
    from manualgrad import ops

    @defop(name="test_no_autodiff.gelu")
    def gelu(x):
        """GELU; ``x_bar = g * (Phi(x) + x phi(x))``."""
        return ops.gelu.reference(x)

    def gelu_bwd(x, g):
        return _vjp(ops.gelu.reference, x)[1](g)

    return gelu.defvjp(lambda x: (ops.gelu.reference(x), x), gelu_bwd)


def test_an_op_whose_backward_is_autodiff_fails_its_checks():
    op = autodiff_gelu()
    reports = check.check_op(op, lambda rng: [Example((rng.normal(size=(3, 2)),))])
    failing = {r.mode for r in reports if not r.passed}
    assert failing == {"no-autodiff"}  # its numbers are right: only the guard can tell
    assert "test_no_autodiff.gelu.bwd: JAX autodiff" in str(next(r for r in reports if not r.passed))


def every_layer_model():
    """A model holding every layer of manualgrad.nn, and a loss holding every loss."""
    trunk = nn.serial(
        nn.RandomFlip(), nn.RandomShift(1), nn.Conv2D(3, 3, padding="SAME"), nn.BatchNorm(), nn.MaxPool2D(2),
        nn.AvgPool2D(1), nn.LayerNorm(),
        nn.Dropout(0.3), nn.Flatten(), nn.Linear(6), nn.ReLU(), nn.Linear(6, init="glorot"), nn.LeakyReLU(0.1), nn.ScaledReLU(2.0),
        nn.Sigmoid(), nn.Tanh(), nn.Softplus(), nn.GELU(), nn.GELU(approximate=True), nn.Square(), nn.Identity(),
        nn.from_op(REGISTRY["manualgrad.ops.tanh"].op, "FromOp"),
    )
    heads = nn.fanout(
        nn.serial(nn.Linear(3), nn.Softmax()), nn.serial(nn.Linear(3), nn.LogSoftmax()), nn.Linear(4), nn.Linear(2),
        nn.LinearCrossEntropyHead(3),
    )
    loss = losses.multitask(losses.mse, losses.scaled(losses.sse, 0.5), losses.softmax_cross_entropy,
                            losses.binary_cross_entropy_with_logits, losses.head_cross_entropy)
    model = nn.serial(trunk, heads)
    _, params = model.init(jax.random.PRNGKey(0), (5, 4, 4, 2))
    rng = np.random.default_rng(0)
    x = jnp.asarray(rng.normal(size=(5, 4, 4, 2)))
    y = (jnp.asarray(rng.dirichlet(np.ones(3), 5)), jnp.asarray(rng.normal(size=(5, 3))),
         jnp.asarray(rng.integers(0, 4, 5)), jnp.asarray(rng.integers(0, 2, (5, 2)).astype(np.float64)),
         jnp.asarray(rng.integers(0, 3, 5)))
    return model, loss, as_float64(params), x, y


def sequence_model():
    """Every sequence layer: a transformer language model with dropout, both kinds of positions,
    an extra bidirectional attention and a residual around a plain layer."""
    model = nn.serial(
        nn.TransformerLM(7, 6, width=4, depth=1, heads=2, dropout=0.2),
        nn.PositionalEmbedding(6, "sinusoidal"),
        nn.residual(nn.MultiHeadAttention(1, causal=False, block=2), nn.Tanh()),
    )
    _, params = model.init(jax.random.PRNGKey(0), (3, 5))
    rng = np.random.default_rng(1)
    x, y = jnp.asarray(rng.integers(0, 7, (3, 5))), jnp.asarray(rng.integers(0, 7, (3, 5)))
    return model, losses.softmax_cross_entropy, as_float64(params), x, y


def recurrent_model():
    """Every recurrent layer on a padded batch ``(x, lengths)`` (a row of length 0 included): both
    directions, the per-position head after DropLengths and the last-state head."""
    model = nn.serial(
        nn.RNN(3), nn.GRU(2, bidirectional=True),
        nn.fanout(nn.serial(nn.DropLengths(), nn.Linear(3)), nn.serial(nn.LSTM(2, output="last"), nn.Linear(2))),
    )
    _, params = model.init(jax.random.PRNGKey(0), ((3, 4, 2), (3,)))
    rng = np.random.default_rng(2)
    x = (jnp.asarray(rng.normal(size=(3, 4, 2))), jnp.array([4, 0, 2]))
    y = (jnp.asarray(rng.integers(0, 3, (3, 4))), jnp.asarray(rng.integers(0, 2, 3)))
    return model, losses.multitask(losses.softmax_cross_entropy, losses.softmax_cross_entropy), as_float64(params), x, y


MODELS = [every_layer_model, sequence_model, recurrent_model]
COMPOSITES = {"TransformerBlock", "TransformerLM", "LSTMLM"}  # serials of the other layers: their parts are traced


def test_the_models_hold_every_layer_and_every_loss():
    names = set()
    for make in MODELS:
        model, loss, params, x, y = make()
        _, _, trace = jax.jit(lambda p, x, y: backprop.value_and_grad(model, loss, trace=True)(p, x, y, key=KEY))(params, x, y)
        names |= {e.name.split("(")[0] for e in trace}
    layers = {n for n in nn.__all__ if n[0].isupper() and n not in ("Layer", "LAYERS", "LayerExample")} - COMPOSITES
    assert layers <= names | {"Linear"}, f"layers missing from the models: {layers - names}"
    assert {"FromOp", "fanout", "residual"} <= names
    model, loss, params, x, y = every_layer_model()
    used = " ".join(p.name for p in loss.parts)
    # linear_softmax_cross_entropy(x, w, b, labels) is in the loss as its (prediction, target) form head_cross_entropy
    for name in [n for n in losses.__all__ if n not in ("scaled", "multitask", "linear_softmax_cross_entropy")]:
        assert f"manualgrad.losses.{name}" in used, f"{name} is missing from the loss"
    assert "0.5*manualgrad.losses.sse" in used  # the combinators: scaled inside multitask


KEY = jax.random.key(3)  # dropout's, in training mode


def explicit_pass(model, loss):
    return lambda params, x, y: backprop.value_and_grad(model, loss)(params, x, y, key=KEY)


def aliased_grad_pass(model, loss):
    """Planted: gradients by an aliased jax.grad, not by the layers' rules."""
    def run(params, x, y):
        def objective(p):
            return loss(model.apply(p, x, key=KEY, train=True), y)

        return objective(params), _grad(objective)(params)
    return run


def aliased_vjp_pass(model, loss):
    """Planted: the hand-written backward fills the trace, but the returned gradients come
    from an aliased jax.vjp of model.fwd."""
    def run(params, x, y):
        value, grads = explicit_pass(model, loss)(params, x, y)
        (pred, _), pullback = _vjp(lambda p: model.fwd(p, x, key=KEY, train=True), params)
        y_bar = jax.grad(lambda z: loss(z, y))(pred)
        return value, pullback((y_bar, jax.tree_util.tree_map(jnp.zeros_like, _)))[0]
    return run


@pytest.mark.parametrize("make", MODELS, ids=["vision", "sequence", "recurrent"])
def test_the_explicit_pass_over_every_layer_and_loss_uses_no_autodiff(make):
    model, loss, params, x, y = make()
    with no_autodiff("the explicit pass"):
        value, grads = jax.jit(explicit_pass(model, loss))(params, x, y)
        jax.make_jaxpr(lambda p, x, y: train.loss_and_grad(model, loss, "explicit")(p, x, y, key=KEY))(params, x, y)
    (_, want) = jax.jit(lambda p, x, y: train.loss_and_grad(model, loss, "reference")(p, x, y, key=KEY))(params, x, y)
    assert_trees_close(grads, want, rtol=1e-9, atol=1e-12)


@pytest.mark.parametrize("planted", [aliased_grad_pass, aliased_vjp_pass], ids=["aliased grad", "aliased vjp of model.fwd"])
def test_planted_autodiff_in_the_explicit_pass_is_caught(planted):
    model, loss, params, x, y = every_layer_model()
    # the planted passes give the right numbers...
    assert_trees_close(jax.jit(planted(model, loss))(params, x, y)[1], jax.jit(explicit_pass(model, loss))(params, x, y)[1],
                       rtol=1e-9, atol=1e-12)
    # ...but not by hand
    with pytest.raises(AutodiffError, match="the explicit pass: JAX autodiff"):
        with no_autodiff("the explicit pass"):
            jax.make_jaxpr(planted(model, loss))(params, x, y)
