"""Cotangents in their primal's dtype: every registered op, narrow primals against wider
targets, with x64 off (what users run) and on; then the train step and the scanned epoch.

This module runs with ``jax_enable_x64`` off unless a test turns it on for itself.
"""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from manualgrad import losses, nn, train
from manualgrad.check import TOLERANCES
from manualgrad.core import REGISTRY, Example, defop

NAMES = sorted(n for n in REGISTRY if n.startswith(("manualgrad.", "0.5*manualgrad.", "multitask(manualgrad.")))


@pytest.fixture(autouse=True)
def x64_off():
    with jax.enable_x64(False):
        yield


def mixed(op, ex, primal, wide):
    """The example's differentiated arguments in ``primal``, its float constants (targets) in ``wide``."""

    def cast(a, dtype):
        a = np.asarray(a)
        return jnp.asarray(a, dtype) if np.issubdtype(a.dtype, np.floating) else jnp.asarray(a)

    return tuple(
        jax.tree_util.tree_map(lambda a: cast(a, wide if name in op.constant else primal), arg)
        for name, arg in zip(op.arg_names, ex.args)
    )


# narrow primals against wider targets: x64 off (what users run) and on
CASES = [(jnp.float16, jnp.float32, False), (jnp.bfloat16, jnp.float32, False), (jnp.float32, jnp.float64, True)]


@pytest.mark.parametrize("primal, wide, x64", CASES, ids=lambda v: str(getattr(v, "__name__", v)))
@pytest.mark.parametrize("name", NAMES)
def test_cotangents_have_the_primal_dtype(name, primal, wide, x64):
    op = REGISTRY[name].op
    rtol = TOLERANCES[jnp.dtype(primal)][0] * 10
    with jax.enable_x64(x64):
        for ex in REGISTRY[name].examples(np.random.default_rng(0))[:1]:  # the dtype rule, not the example's case
            args = mixed(op, ex, primal, wide)
            y = jax.eval_shape(lambda *a: op(*a, **ex.params), *args)
            rng = np.random.default_rng(1)
            g = jax.tree_util.tree_map(lambda a: jnp.asarray(rng.normal(size=a.shape), a.dtype), y)

            @jax.jit  # one compiled program per example: eager dispatch of every small op is slower
            def three(args, g):
                manual = jax.vjp(lambda *a: op(*a, **ex.params), *args)[1](g)
                with jax.default_matmul_precision("highest"):
                    reference = jax.vjp(lambda *a: op.reference(*a, **ex.params), *args)[1](g)
                return manual, reference, op.bwd(op.fwd(*args, **ex.params)[1], g)

            manual, reference, explicit = three(args, g)
            for arg_name, arg, m, r, e in zip(op.arg_names, args, manual, reference, explicit):
                if arg_name in op.constant:
                    assert e is None
                    continue
                for a, mm, rr, ee in zip(*(jax.tree_util.tree_leaves(t) for t in (arg, m, r, e))):
                    assert rr.dtype == a.dtype  # what jax.grad of the reference does
                    assert mm.dtype == a.dtype and mm.shape == a.shape, f"{name}: {arg_name}_bar {mm.dtype}{mm.shape}"
                    assert ee.dtype == a.dtype and ee.shape == a.shape
                    scale = float(jnp.max(jnp.abs(rr.astype(jnp.float32)))) or 1.0
                    for got in (mm, ee):
                        err = float(jnp.max(jnp.abs(got.astype(jnp.float32) - rr.astype(jnp.float32))))
                        assert err <= rtol * (scale + 1.0), f"{name} {arg_name}_bar: {err} vs {scale}"


def _examples(rng):
    return [Example((rng.normal(size=(3,)),))]


def rule(bwd):
    @defop(name="test_dtypes.planted")
    def planted(x):
        """``y = 2x``; ``x_bar = 2 g``."""
        return 2 * x

    planted.defvjp(lambda x: (2 * x, ()), lambda res, g: (bwd(g),))
    return planted


@pytest.mark.parametrize(
    "bwd, message",
    [
        (lambda g: (2 * g).astype(jnp.float16), "x_bar of dtype float16 for x of dtype float32"),
        (lambda g: jnp.stack([2 * g, 2 * g]), r"x_bar.shape=\(2, 3\) for x.shape=\(3,\)"),
        (lambda g: None, "x_bar with structure"),
    ],
    ids=["narrower-dtype", "wrong-shape", "missing"],
)
def test_a_wrong_cotangent_is_an_error_naming_the_op(bwd, message):
    op = rule(bwd)
    x = jnp.ones(3, jnp.float32)
    with pytest.raises(TypeError, match="test_dtypes.planted: bwd returned " + message):
        jax.grad(lambda x: jnp.sum(op(x)))(x)
    with pytest.raises(TypeError, match="test_dtypes.planted: bwd returned " + message):
        op.bwd(op.fwd(x)[1], jnp.ones(3, jnp.float32))


def test_a_float64_cotangent_for_a_float32_op_without_wider_inputs_is_an_error():
    with jax.enable_x64(True):
        op = rule(lambda g: (2 * g).astype(jnp.float64))
        with pytest.raises(TypeError, match="x_bar of dtype float64 for x of dtype float32"):
            jax.grad(lambda x: jnp.sum(op(x)))(jnp.ones(3, jnp.float32))


def problem(param_dtype, target_dtype, two_heads=False):
    trunk = [nn.Linear(8), nn.ReLU()]
    if two_heads:
        model = nn.serial(*trunk, nn.fanout(nn.Linear(3), nn.Linear(2)))
        loss = losses.multitask(losses.softmax_cross_entropy, losses.mse)
    else:
        model, loss = nn.serial(*trunk, nn.Linear(2)), losses.mse
    _, params = model.init(jax.random.PRNGKey(0), (-1, 4))
    params = jax.tree_util.tree_map(lambda a: a.astype(param_dtype), params)
    rng = np.random.default_rng(0)
    x = jnp.asarray(rng.normal(size=(64, 4)), param_dtype)
    reg = jnp.asarray(rng.normal(size=(64, 2)), target_dtype)
    y = (jnp.asarray(rng.integers(0, 3, 64)), reg) if two_heads else reg
    return model, loss, params, x, y


@pytest.mark.parametrize(
    "param_dtype, target_dtype, x64, two_heads",
    [(jnp.float32, jnp.float64, True, False), (jnp.bfloat16, jnp.float32, False, False), (jnp.float32, jnp.float64, True, True)],
    ids=["mlp-float32", "mlp-bfloat16", "two-heads-float32"],
)
@pytest.mark.parametrize("grad", train.GRADS)
def test_training_keeps_the_params_dtype(grad, param_dtype, target_dtype, x64, two_heads):
    """The issue's report: float32 params with float64 targets made manual/explicit gradients
    float64 and the scanned epoch fail on its carry types."""
    with jax.enable_x64(x64):
        model, loss, params, x, y = problem(param_dtype, target_dtype, two_heads)
        opt = train.sgd_with_clipping(0.05, 1.0, 0.9)
        value, grads = train.loss_and_grad(model, loss, grad)(params, x, y)
        assert jax.tree_util.tree_map(lambda g: g.dtype, grads) == jax.tree_util.tree_map(lambda p: p.dtype, params)
        epoch = train.make_epoch(model, loss, opt, batch_size=16, grad=grad)
        new, state, metrics = epoch(params, opt.init(params), x, y, jax.random.PRNGKey(1))
        assert jax.tree_util.tree_map(lambda p: p.dtype, new) == jax.tree_util.tree_map(lambda p: p.dtype, params)
        assert metrics["loss"].shape == (4,) and np.isfinite(np.asarray(metrics["loss"], np.float32)).all()


def test_this_module_runs_with_x64_off():
    assert not jax.config.jax_enable_x64
    assert jnp.asarray(np.zeros(2)).dtype == jnp.float32
    opt = optax.sgd(0.1)
    assert opt.init(jnp.zeros(2)) is not None
