"""The op mechanism: defop/defvjp, registration, static and constant arguments, errors."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import manualgrad as mg
from manualgrad import ops
from manualgrad.check import cast, check_op, check_vjp
from manualgrad.core import Example, REGISTRY, defop


def _cube_examples(rng):
    return [Example((rng.normal(size=(3, 2)),))]


def make_cube(bwd_factor=3.0):
    """A user-defined op, defined the way the tutorials define theirs (with a switch to break its rule)."""

    @defop(name="test.cube")
    def cube(x):
        """``y = x**3``; ``dy/dx = 3 x**2`` so ``x_bar = 3 x**2 g``. Residual: ``x``."""
        return x**3

    def cube_fwd(x):
        return x**3, x

    def cube_bwd(res, g):
        return (bwd_factor * res**2 * g,)

    cube.defvjp(cube_fwd, cube_bwd)
    return cube


def test_user_op_passes_every_check():
    cube = make_cube()
    reports = check_op(cube, _cube_examples)
    assert reports and all(r.passed for r in reports)
    modes = {r.mode for r in reports}
    assert {"vjp", "vjp+jit", "vjp+jit+vmap", "fd", "hvp"} <= modes


def test_a_wrong_backward_is_caught():
    wrong = make_cube(bwd_factor=2.0)
    x = jnp.array([[1.0, -2.0]])
    report = check_vjp(wrong, x)
    assert not report.passed
    assert "x_bar#0" in str(report) and "FAILED" in str(report)
    with pytest.raises(AssertionError, match="FAILED"):
        report.assert_ok()
    assert not check_vjp(wrong, x, method="fd").passed


def test_registering_adds_to_the_registry_and_redefining_replaces():
    cube = make_cube()
    mg.register(cube, _cube_examples)
    try:
        assert REGISTRY["test.cube"].op is cube
        again = make_cube()  # a notebook cell run twice: the new definition wins, no error
        mg.register(again, _cube_examples)
        assert REGISTRY["test.cube"].op is again
    finally:
        del REGISTRY["test.cube"]


def test_ops_register_under_their_module_qualified_name():
    def swish_examples(rng):
        return [Example((rng.normal(size=3),))]

    made = {}
    for module in ("project_a.layers", "project_b.layers"):
        def swish(x):
            """``y = x sigmoid(x)``; ``x_bar = g (s + x s (1 - s))``."""
            return x * jax.nn.sigmoid(x)

        swish.__module__ = module
        made[module] = defop(examples=swish_examples)(swish)
    try:
        assert made["project_a.layers"].name.startswith("project_a.layers.")
        assert made["project_b.layers"].name.startswith("project_b.layers.")
        assert REGISTRY[made["project_a.layers"].name].op is made["project_a.layers"]
        assert REGISTRY[made["project_b.layers"].name].op is made["project_b.layers"]
    finally:
        for op in made.values():
            del REGISTRY[op.name]


def test_an_op_without_vjp_says_so():
    @defop(name="test.half")
    def half(x):
        return x / 2

    with pytest.raises(NotImplementedError, match=r"test.half: no VJP defined; call half.defvjp"):
        half(jnp.ones(2))
    with mg.reference_mode():
        np.testing.assert_allclose(half(jnp.ones(2)), 0.5)


# One mechanism (defop's custom_vjp and its reference switch) serves every op; these cover each way an
# op is built or called: plain, static and constant arguments, pytree arguments, a PRNG key, integer
# ids, a loss combinator, jitted loops inside the op, the fused head.
SWITCHED = sorted({
    "manualgrad.ops.linear", "manualgrad.ops.softmax", "manualgrad.losses.softmax_cross_entropy",
    "manualgrad.ops.concat", "manualgrad.ops.dropout", "manualgrad.ops.embedding", "manualgrad.ops.lstm",
    "manualgrad.ops.attention", "manualgrad.ops.conv2d", "manualgrad.losses.head_cross_entropy",
    "0.5*manualgrad.losses.mse", "multitask(manualgrad.losses.sse, manualgrad.losses.softmax_cross_entropy)",
})


def test_the_switched_ops_are_registered():
    assert set(SWITCHED) <= set(REGISTRY)


@pytest.mark.parametrize("name", SWITCHED)
def test_reference_mode_switches_every_op_even_through_an_outer_jit(name):
    """A function jitted outside reference_mode and called inside it must not replay its
    manual trace: with a wrong backward planted, the two modes must give different answers."""
    op = REGISTRY[name].op
    ex = REGISTRY[name].examples(np.random.default_rng(0))[0]
    args = cast(ex.args, jnp.float64)
    argnums = tuple(i for i, n in enumerate(op.arg_names) if n not in op.constant)
    out = jax.eval_shape(lambda *a: op(*a, **ex.params), *args)
    u = jax.tree_util.tree_map(lambda s: jnp.asarray(np.random.default_rng(1).normal(size=s.shape)), out)

    def objective(*a):
        pairs = zip(jax.tree_util.tree_leaves(u), jax.tree_util.tree_leaves(op(*a, **ex.params)))
        return sum(jnp.vdot(c, y) for c, y in pairs)

    f = jax.jit(jax.grad(objective, argnums))
    calls, original = [], op._bwd

    def wrong(res, g, **static):
        calls.append(1)
        return tuple(None if c is None else jax.tree_util.tree_map(lambda a: 3 * a, c) for c in original(res, g, **static))

    op._bwd = wrong
    try:
        manual = f(*args)
        with mg.reference_mode():
            inside = f(*args)
            want = jax.grad(objective, argnums)(*args)
    finally:
        op._bwd = original
    assert calls == [1]  # traced once outside; inside, the references ran
    for m, i, w in zip(*(jax.tree_util.tree_leaves(t) for t in (manual, inside, want))):
        np.testing.assert_allclose(i, w, rtol=1e-12, atol=1e-15)
        np.testing.assert_allclose(m, 3 * w, rtol=1e-12, atol=1e-15)


def test_forward_mode_is_unavailable_and_says_so():
    """custom_vjp functions have no JVP: this is the error users see, and the way out."""
    x, v = jnp.array([0.5, -1.0]), jnp.array([1.0, 0.0])
    with pytest.raises(TypeError, match="can't apply forward-mode autodiff \\(jvp\\) to a custom_vjp function"):
        jax.jvp(ops.tanh, (x,), (v,))
    with pytest.raises(TypeError, match="forward-mode"):
        jax.jacfwd(ops.sigmoid)(x)
    with mg.reference_mode():
        _, tangent = jax.jvp(ops.tanh, (x,), (v,))
    np.testing.assert_allclose(tangent, (1 - jnp.tanh(x) ** 2) * v)


def test_static_params_must_be_python_values():
    x = jnp.ones(3)
    with pytest.raises(ValueError, match="leaky_relu: negative_slope is a static parameter"):
        ops.leaky_relu(x, negative_slope=jnp.array(0.1))
    with pytest.raises(ValueError, match="softmax: axis is a static parameter and must be a hashable"):
        ops.softmax(x, axis=[0])
    np.testing.assert_allclose(ops.leaky_relu(-x, 0.2), -0.2)  # positional static params work


def test_differentiated_arguments_must_be_floating():
    with pytest.raises(ValueError, match=r"ops.relu: x.shape=\(3,\) int.*must be floating point"):
        ops.relu(jnp.arange(3))
    with pytest.raises(ValueError, match=r"ops.linear: x.shape=\(2, 3\) uint8"):
        ops.linear(jnp.zeros((2, 3), jnp.uint8), jnp.zeros((3, 1)), jnp.zeros(1))


def test_wrong_arguments_name_the_op():
    with pytest.raises(TypeError, match="manualgrad.ops.linear: missing a required argument: 'b'"):
        ops.linear(jnp.ones((2, 3)), jnp.ones((3, 1)))
    with pytest.raises(ValueError, match="axis=2 is out of range"):
        ops.softmax(jnp.ones((2, 3)), axis=2)


@pytest.mark.parametrize("use_jit", [False, True])
def test_linear_shape_errors(use_jit):
    f = jax.jit(ops.linear) if use_jit else ops.linear
    x, w, b = jnp.ones((4, 5)), jnp.ones((3, 2)), jnp.ones(2)
    with pytest.raises(ValueError, match=r"ops.linear: x.shape=\(4, 5\) has 5 input features but w.shape=\(3, 2\) expects d_in=3"):
        f(x, w, b)
    with pytest.raises(ValueError, match=r"ops.linear: b.shape=\(3,\) does not match w.shape=\(5, 2\)"):
        f(x, jnp.ones((5, 2)), jnp.ones(3))
    with pytest.raises(ValueError, match=r"ops.linear: w.shape=\(5,\) float.*: w must be a matrix"):
        f(x, jnp.ones(5), jnp.ones(3))
    with pytest.raises(ValueError, match=r"ops.linear: x, w and b must share one dtype, got x float32"):
        f(x.astype(jnp.float32), jnp.ones((5, 2)), jnp.ones(2))


def run_check_cli(*args, pythonpath=""):
    import os
    import subprocess
    import sys

    from tests.conftest import ROOT

    env = {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in (pythonpath, str(ROOT)) if p)}
    return subprocess.run([sys.executable, "-m", "manualgrad.check", *args], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=600)


def test_check_cli_answers_help_and_checks_one_op():
    out = run_check_cli("--help")
    assert out.returncode == 0 and "--op NAME" in out.stdout and "--module MODULE" in out.stdout
    out = run_check_cli("--op", "relu")
    assert out.returncode == 0, out.stdout + out.stderr
    assert "manualgrad.ops.relu" in out.stdout and "leaky_relu" not in out.stdout
    out = run_check_cli("--op", "nope")
    assert out.returncode != 0 and "matches no op" in out.stderr


MY_OPS = '''
from manualgrad import defop, Example

def ex(rng):
    return [Example((rng.normal(size=(3, 2)),))]

@defop(examples=ex)
def cube(x):
    """y = x**3; x_bar = 3 x**2 g."""
    return x ** 3

cube.defvjp(lambda x: (x ** 3, x), lambda x, g: (2 * x ** 2 * g,))  # wrong: 2, not 3
'''


def test_check_cli_checks_a_users_module_and_explains_failures(tmp_path):
    (tmp_path / "my_ops.py").write_text(MY_OPS)
    out = run_check_cli("--module", "my_ops", pythonpath=str(tmp_path))
    assert out.returncode == 1, out.stderr
    listing = out.stdout.split("largest errors")[0]
    assert "my_ops.cube" in listing and "manualgrad.ops" not in listing
    assert "example (3,2)" in out.stdout and "x_bar#0" in out.stdout and "k-th random output cotangent" in out.stdout
