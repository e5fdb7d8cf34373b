"""Every registered op, walked from the registry: forward, VJP, jit, vmap, FD, second order.

The registry is filled by ``defop(examples=...)`` and ``register``; an op that exists in
``manualgrad.ops`` or ``manualgrad.losses`` but is missing here fails ``test_every_op_is_registered``.

Every example of every op (its shapes, parameters and edge cases) is held to ``jax.vjp`` of the
reference in float64 under ``jit``, the first one eagerly too. The other checks (float32,
``vmap``, finite differences, second order) test the rule, not the example's case: they run on
the op's first example, which keeps the suite's compile time in bounds.
"""

import inspect

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import manualgrad as mg
from manualgrad.check import cast, check_hvp, check_vjp, stack_examples
from manualgrad.core import REGISTRY, Op

NAMES = sorted(REGISTRY)


def examples(name, seed=0):
    return REGISTRY[name].examples(np.random.default_rng(seed))


def test_every_op_is_registered_and_complete():
    public = [v for m in (mg.ops, mg.losses) for v in vars(m).values() if isinstance(v, Op)]
    assert len(public) == 38  # embedding, attention, add, split_heads, merge_heads since the vision ops; concat,
    # rnn_step, lstm_step, gru_step, rnn, lstm, gru; linear_softmax_cross_entropy, head_cross_entropy
    for op in public:
        assert op.name in REGISTRY, f"{op.name} has no registered examples"
    for name in NAMES:
        op = REGISTRY[name].op
        assert op.complete, f"{name}: no fwd/bwd"
        assert op.reference is not None and callable(op.reference)
        assert r"\bar" in (op.__doc__ or ""), f"{name}: the docstring must derive the VJP ($\\bar{{x}} = ...$)"
        assert examples(name), f"{name}: no examples"


@pytest.mark.parametrize("name", NAMES)
def test_vjp_float64_eager_and_jit(name):
    op = REGISTRY[name].op
    for n, ex in enumerate(examples(name)):
        args = cast(ex.args, jnp.float64)
        if n == 0:
            check_vjp(op, *args, seed=n, **ex.params).assert_ok()
        check_vjp(op, *args, seed=n, jit=True, **ex.params).assert_ok()


@pytest.mark.parametrize("name", NAMES)
def test_vjp_float32(name):
    op = REGISTRY[name].op
    ex = examples(name)[0]
    report = check_vjp(op, *cast(ex.args, jnp.float32), jit=True, **ex.params).assert_ok()
    assert report.dtype == "float32"


@pytest.mark.parametrize("dtype", [jnp.float64])  # float32 is checked eagerly and under jit above
@pytest.mark.parametrize("name", NAMES)
def test_vjp_under_vmap(name, dtype):
    op = REGISTRY[name].op
    stacked = stack_examples([examples(name, seed)[0] for seed in range(3)])
    check_vjp(op, *cast(stacked.args, dtype), jit=True, vmap=True, **stacked.params).assert_ok()


@pytest.mark.parametrize("name", [n for n in NAMES if REGISTRY[n].op.smooth])
def test_vjp_against_finite_differences(name):
    op = REGISTRY[name].op
    ex = examples(name)[0]
    check_vjp(op, *cast(ex.args, jnp.float64), method="fd", **ex.params).assert_ok()


@pytest.mark.parametrize("name", NAMES)
def test_second_order_matches_reference(name):
    """Hessian-vector products (grad of grad) through the manual rules equal the reference's.

    The backward rules are written in differentiable jax.numpy, so JAX can differentiate
    them again; residuals such as sigmoid's output carry the dependence on the input.
    """
    op = REGISTRY[name].op
    ex = examples(name)[0]
    check_hvp(op, *cast(ex.args, jnp.float64), **ex.params).assert_ok()


def test_first_order_only_ops_are_marked():
    """Piecewise-linear ops are marked ``smooth=False``: their second derivative is zero
    almost everywhere (a Dirac at the kink is not representable), and finite differences
    are refused for them."""
    marked = {n for n in NAMES if not REGISTRY[n].op.smooth}
    assert marked == {"manualgrad.ops.relu", "manualgrad.ops.leaky_relu", "manualgrad.ops.scaled_relu",
                      "manualgrad.ops.max_pool2d"}
    for name in marked:
        op = REGISTRY[name].op
        (x,), params = examples(name)[-1].args, examples(name)[-1].params
        x, v = jnp.asarray(x), jnp.asarray(np.random.default_rng(1).normal(size=np.shape(x)))
        hess = jax.grad(lambda x: jnp.vdot(jax.grad(lambda y: jnp.sum(op(y, **params)))(x), v))(x)
        np.testing.assert_array_equal(hess, 0.0)
        with pytest.raises(ValueError, match="not smooth"):
            check_vjp(op, x, method="fd", **params)


@pytest.mark.parametrize("name", NAMES)
def test_fwd_bwd_structure_and_dtypes(name):
    """``fwd`` returns ``(y, res)`` with y like the reference's output; ``bwd`` returns one
    cotangent per array argument with that argument's structure, shape and dtype
    (``None`` only for constant arguments such as targets)."""
    op = REGISTRY[name].op
    for dtype in (jnp.float64, jnp.float32):
        for ex in examples(name):
            args = cast(ex.args, dtype)

            def structure(*args):
                y, res = op.fwd(*args, **ex.params)
                return y, op.reference(*args, **ex.params), res, op.bwd(res, jax.tree_util.tree_map(jnp.ones_like, y))

            y, y_ref, res, cts = jax.eval_shape(structure, *args)  # shapes and dtypes only: nothing is computed
            assert jax.tree_util.tree_structure(y) == jax.tree_util.tree_structure(y_ref)
            for a, b in zip(jax.tree_util.tree_leaves(y), jax.tree_util.tree_leaves(y_ref)):
                assert a.shape == b.shape and a.dtype == b.dtype == dtype
            for leaf in jax.tree_util.tree_leaves(res):  # integer residuals: dropout's key, embedding's ids
                ok = leaf.dtype in (dtype, jnp.bool_, jnp.uint32) or jnp.issubdtype(leaf.dtype, jnp.integer)
                assert ok, f"{name}: residual of dtype {leaf.dtype}"
            assert len(cts) == len(op.arg_names)
            for arg_name, arg, ct in zip(op.arg_names, args, cts):
                if arg_name in op.constant:
                    assert ct is None
                    continue
                assert jax.tree_util.tree_structure(ct) == jax.tree_util.tree_structure(arg)
                for c, a in zip(jax.tree_util.tree_leaves(ct), jax.tree_util.tree_leaves(arg)):
                    assert c.shape == a.shape and c.dtype == a.dtype


def _float_bytes(res):
    return sum(a.nbytes for a in jax.tree_util.tree_leaves(res) if jnp.issubdtype(a.dtype, jnp.floating))


@pytest.mark.parametrize(
    "name, float_copies",
    [
        ("manualgrad.ops.identity", 0),
        ("manualgrad.ops.relu", 0),  # a boolean mask only
        ("manualgrad.ops.leaky_relu", 0),
        ("manualgrad.ops.scaled_relu", 0),
        ("manualgrad.ops.sigmoid", 1),  # its output
        ("manualgrad.ops.tanh", 1),
        ("manualgrad.ops.softmax", 1),
        ("manualgrad.ops.log_softmax", 1),
        ("manualgrad.ops.square", 1),
        ("manualgrad.losses.mse", 1),  # pred - target
        ("manualgrad.losses.softmax_cross_entropy", 1),  # (softmax - onehot) / m
        ("manualgrad.losses.binary_cross_entropy_with_logits", 1),
    ],
)
def test_residuals_are_minimal(name, float_copies):
    op = REGISTRY[name].op
    ex = examples(name)[0]
    args = cast(ex.args, jnp.float32)
    _, res = op.fwd(*args, **ex.params)
    assert _float_bytes(res) == float_copies * args[0].size * 4
    if name.startswith("manualgrad.ops.") and "relu" in name:
        assert res.values.dtype == jnp.bool_


def test_sigmoid_and_tanh_keep_their_output():
    x = jnp.linspace(-3, 3, 7)
    for op in (mg.ops.sigmoid, mg.ops.tanh):
        y, res = op.fwd(x)
        assert res.values is y


@pytest.mark.parametrize("name", ["manualgrad.ops.relu", "manualgrad.ops.leaky_relu", "manualgrad.ops.scaled_relu"])
def test_relu_family_derivative_at_zero(name):
    """At exactly 0 the ReLU derivative is 0 (PyTorch, jax.nn.relu); leaky_relu's is its slope."""
    op = REGISTRY[name].op
    params = examples(name)[0].params
    g = jax.grad(lambda x: jnp.sum(op(x, **params)))(jnp.zeros(3))
    expected = params.get("negative_slope", 0.0)
    np.testing.assert_array_equal(g, expected)
    with mg.reference_mode():
        np.testing.assert_array_equal(jax.grad(lambda x: jnp.sum(op(x, **params)))(jnp.zeros(3)), expected)
    if name == "manualgrad.ops.relu":
        np.testing.assert_array_equal(jax.grad(lambda x: jnp.sum(jax.nn.relu(x)))(jnp.zeros(3)), 0.0)


@pytest.mark.parametrize("name", ["manualgrad.ops.relu", "manualgrad.ops.leaky_relu", "manualgrad.ops.scaled_relu"])
def test_relu_family_propagates_nan(name):
    """A NaN input is never silently zeroed (as in PyTorch and jax.nn.relu); -inf maps to 0 or -inf*slope."""
    op = REGISTRY[name].op
    params = examples(name)[0].params
    x = jnp.array([jnp.nan, -jnp.inf, -1.0, 0.0, 2.0])
    for y in (op(x, **params), op.fwd(x, **params)[0], op.reference(x, **params)):
        assert np.isnan(np.asarray(y)[0])
        np.testing.assert_array_equal(np.asarray(y)[1:], np.asarray(op.reference(x[1:], **params)))
    assert np.isnan(np.asarray(jax.nn.relu(x))[0])
    # ...and the backward: a NaN cotangent stays NaN, a NaN input gives a NaN-free mask decision
    g = jnp.array([1.0, 1.0, 1.0, jnp.nan, 2.0])
    _, pullback = jax.vjp(lambda x: op(x, **params), x)
    (x_bar,) = pullback(g)
    with mg.reference_mode():
        _, ref_pullback = jax.vjp(lambda x: op(x, **params), x)
        (ref_bar,) = ref_pullback(g)
    np.testing.assert_array_equal(np.isnan(np.asarray(x_bar)), np.isnan(np.asarray(ref_bar)))
    assert np.isnan(np.asarray(x_bar)[3]) or params.get("negative_slope", 0.0) == 0.0


def test_ops_are_documented_with_their_signature():
    assert list(inspect.signature(mg.ops.linear).parameters) == ["x", "w", "b"]
    assert inspect.signature(mg.ops.leaky_relu).parameters["negative_slope"].default == 0.01
    assert list(inspect.signature(mg.ops.scaled_relu).parameters) == ["x", "scale"]
    assert inspect.signature(mg.ops.softmax).parameters["axis"].default == -1


@pytest.mark.parametrize("name", NAMES)
def test_fwd_is_not_the_reference_in_disguise(name):
    """A forward that returns ``reference(...)`` makes the forward check compare the reference
    with itself; allowed only where the docstring says why the two are the same function."""
    op = REGISTRY[name].op
    source = inspect.getsource(op._fwd)
    if "reference(" in source:
        assert "same function" in (op.__doc__ or ""), f"{name}: fwd returns its reference"
