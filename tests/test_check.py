"""The verification tools themselves: reports, tolerances, Jacobians (seed 003)."""

import re

import jax.numpy as jnp
import numpy as np
import pytest

from manualgrad import check, losses, nn, ops


def test_report_has_one_row_per_argument_and_cotangent():
    x, w, b = jnp.ones((2, 3)), jnp.ones((3, 4)), jnp.ones(4)
    report = check.check_vjp(ops.linear, x, w, b, cotangents=2)
    assert [r.what for r in report.rows] == ["forward", "x_bar#0", "w_bar#0", "b_bar#0", "x_bar#1", "w_bar#1", "b_bar#1"]
    assert report.passed and report.dtype == "float64"
    assert report.rows[0].rtol == check.TOLERANCES[jnp.dtype(jnp.float64)][0] == 1e-10
    assert "max_abs=" in str(report)


def test_tolerances_follow_the_dtype():
    x = jnp.ones((2, 3), jnp.float32)
    report = check.check_vjp(ops.tanh, x)
    assert report.dtype == "float32" and report.rows[0].rtol == 1e-5


def test_finite_differences_need_float64():
    with pytest.raises(ValueError, match="need float64"):
        check.check_vjp(ops.tanh, jnp.ones(3, jnp.float32), method="fd")


def test_integer_labels_have_no_cotangent_row():
    report = check.check_vjp(losses.softmax_cross_entropy, jnp.ones((2, 3)), jnp.array([0, 2]))
    assert [r.what for r in report.rows] == ["forward", "logits_bar#0", "logits_bar#1"]


W1 = jnp.array([[2.0, -1.0], [0.5, 3.0]])
W2 = jnp.array([[1.0, 4.0], [-2.0, 0.5]])
ZERO = jnp.zeros(2)


def f(x):
    return ops.linear(x, W1.T, ZERO)  # seed 003's f(x) = W1 x


def g(x):
    return ops.linear(x, W2.T, ZERO)


@pytest.mark.parametrize(
    "fn, expected",
    [
        (f, W1),
        (g, W2),
        (lambda x: f(x) + g(x), W1 + W2),
        (lambda x: g(f(x)), W2 @ W1),
        (lambda x: f(f(x)), W1 @ W1),
    ],
    ids=["W1x", "W2x", "sum", "composition", "W1=W2 composition"],
)
def test_seed003_jacobians(fn, expected):
    x = jnp.array([0.3, -0.7])
    np.testing.assert_allclose(check.jacobian(fn)(x), expected, rtol=1e-15)
    check.check_jacobian(fn, x).assert_ok()


def test_jacobian_layout_matches_jacrev():
    x = jnp.arange(6.0).reshape(2, 3) / 10
    w = jnp.arange(12.0).reshape(3, 4) / 7
    jac = check.jacobian(ops.linear, argnums=1)(x, w, jnp.zeros(4))
    assert jac.shape == (2, 4, 3, 4)
    # d y[n, j] / d w[i, k] = x[n, i] * delta_jk, written out
    want = np.einsum("ni,jk->njik", np.asarray(x), np.eye(4))
    np.testing.assert_allclose(jac, want, rtol=1e-15, atol=1e-15)
    report = check.check_jacobian(lambda x: ops.softmax(ops.linear(x, w, jnp.zeros(4))), x)
    assert report.passed and report.rows[0].scale > 0


# -- the checker checked: planted rules must fail every kind of check ---------------------
import jax  # noqa: E402

from manualgrad.core import Example, defop  # noqa: E402

PLANTED = {
    "correct": lambda x_bar, y: x_bar,
    "finite factor": lambda x_bar, y: 2 * x_bar,
    "one NaN": lambda x_bar, y: x_bar.at[..., 0].set(jnp.nan),
    "all NaN": lambda x_bar, y: jnp.full_like(x_bar, jnp.nan),
    "inf": lambda x_bar, y: x_bar.at[..., 0].set(jnp.inf),
    "NaN plus a wrong finite element": lambda x_bar, y: x_bar.at[..., 0].set(jnp.nan).at[..., 1].multiply(1.5),
    "wrong dtype": lambda x_bar, y: x_bar.astype(jnp.float16),
    "wrong shape": lambda x_bar, y: jnp.concatenate([x_bar, x_bar[..., :1]], axis=-1),
}


def planted_sqrt(kind):
    """``y = sqrt(x)``, ``x_bar = g / (2 y)``, with the backward broken as ``kind`` says."""

    @defop(name=f"test_check.sqrt[{kind}]")
    def sqrt(x):
        """``y = sqrt(x)``; ``x_bar = g / (2 y)``."""
        return jnp.sqrt(x)

    def sqrt_fwd(x):
        y = jnp.sqrt(x)
        return y, y

    def sqrt_bwd(y, g):
        return (PLANTED[kind](g / (2 * y), y),)

    return sqrt.defvjp(sqrt_fwd, sqrt_bwd)


def every_check_kind(op, x):
    stacked = jnp.stack([x, x * 1.5, x + 0.25])
    return {
        "vjp": check.check_vjp(op, x),
        "vjp+jit": check.check_vjp(op, x, jit=True),
        "vjp+jit+vmap": check.check_vjp(op, stacked, jit=True, vmap=True),
        "hvp": check.check_hvp(op, x),
        "jacobian": check.check_jacobian(op, x),
        "fd": check.check_vjp(op, x, method="fd"),
    }


X = jnp.array([0.7, 1.3, 2.2, 0.4])


@pytest.mark.parametrize("kind", [k for k in PLANTED if k != "correct"])
def test_every_planted_rule_fails_every_check_kind(kind):
    reports = every_check_kind(planted_sqrt(kind), X)
    passed = [mode for mode, r in reports.items() if r.passed]
    assert not passed, f"{kind}: passed {passed}"
    for r in reports.values():
        assert "FAILED" in str(r)


def test_the_correct_rule_passes_every_check_kind():
    for mode, r in every_check_kind(planted_sqrt("correct"), X).items():
        assert r.passed, f"{mode}: {r}"


def test_matching_nans_agree_but_never_hide_another_error():
    """sqrt of a negative number is NaN on both sides: that element agrees. A wrong finite
    element beside it must still fail (the audit's "one NaN hides every other error")."""
    x = jnp.array([-1.0, 1.3, 2.2, 0.4])
    ok = check.check_vjp(planted_sqrt("correct"), x)
    assert ok.passed and np.isnan(np.asarray(planted_sqrt("correct")(x))[0])
    wrong = check.check_vjp(planted_sqrt("finite factor"), x)
    assert not wrong.passed and np.isfinite(wrong.rows[1].max_abs)


def test_softmax_backward_times_two_with_one_nan_is_caught():
    """The audit's first planted bug, in a temporary copy of softmax."""

    @defop(name="test_check.bad_softmax", static=("axis",))
    def bad_softmax(x, axis=-1):
        """Softmax; ``x_bar = y * (g - sum(g * y))``."""
        return ops.softmax.reference(x, axis)

    def bwd(y, g, axis=-1):
        return ((2 * y * (g - jnp.sum(g * y, axis=axis, keepdims=True))).at[0, 0].set(jnp.nan),)

    bad_softmax.defvjp(lambda x, axis=-1: (ops.softmax.reference(x, axis),) * 2, bwd)
    reports = check.check_op(bad_softmax, lambda rng: [Example((rng.normal(size=(4, 5)),), {"axis": -1})])
    vjp_reports = [r for r in reports if r.mode.startswith(("vjp", "fd", "hvp"))]
    assert vjp_reports and not any(r.passed for r in vjp_reports)
    assert any("inf" in str(r) for r in vjp_reports)


def test_reports_name_the_failing_example_and_explain_the_rows():
    reports = check.check_op(planted_sqrt("finite factor"), lambda rng: [Example((rng.uniform(1, 2, size=(3, 2)),))])
    text = str(next(r for r in reports if not r.passed))
    assert "example (3,2)" in text and "x_bar#0" in text and "k-th random output cotangent" in text


def test_check_vjp_of_a_model_says_what_to_use():
    model = nn.serial(nn.Linear(2))
    with pytest.raises(TypeError, match="check_model"):
        check.check_vjp(model.apply, jnp.ones(3))


# -- check_model ------------------------------------------------------------------------
def two_heads():
    model = nn.serial(nn.Linear(6), nn.ReLU(), nn.fanout(nn.Linear(3), nn.serial(nn.Linear(4), nn.Tanh(), nn.Linear(2))))
    _, params = model.init(jax.random.PRNGKey(0), (-1, 5))
    rng = np.random.default_rng(0)
    return model, losses.multitask(losses.softmax_cross_entropy, losses.mse), params, rng.normal(size=(7, 5)), (
        rng.integers(0, 3, 7), rng.normal(size=(7, 2)))


def test_check_model_passes_a_correct_two_head_model_in_float32_and_float64():
    report = check.check_model(*two_heads()).assert_ok()
    text = str(report)
    assert {layer.dtype for layer in report.layers} == {"float32", "float64"}
    assert "2.head1.1  Tanh" in text and "fanout(2)" in text and text.endswith("PASSED")
    kinds = {r.what for layer in report.layers for r in layer.rows}
    assert {"dL/dx manual", "dL/dx explicit", "dL/dw manual", "dL/dw explicit", "dL/db explicit"} <= kinds


def test_check_model_names_the_layer_with_a_wrong_rule():
    model, loss, params, x, y = two_heads()
    wrong = planted_sqrt("finite factor")
    broken = nn.serial(nn.Linear(6), nn.Sigmoid(), nn.from_op(wrong, "Sqrt"), nn.fanout(nn.Linear(3), nn.serial(nn.Linear(4), nn.Tanh(), nn.Linear(2))))
    _, params = broken.init(jax.random.PRNGKey(0), (-1, 5))
    report = check.check_model(broken, loss, params, x, y, dtypes=(jnp.float64,))
    assert not report.passed
    failing = {(layer.path, layer.name) for layer in report.layers if not layer.passed}
    assert ("2", "Sqrt") in failing and ("0", "Linear(6)") in failing  # the wrong rule and what lies before it
    assert ("3.head0", "Linear(3)") not in failing  # after it (in forward order) the gradients are right
    # the backward reaches the wrong rule first: it is named the source, the layers before it downstream of it
    assert report.sources() == {"float64": 2}
    text = str(report)
    assert re.search(r"\[2\] 2\s+Sqrt\s+FAILED <- the error enters here", text)
    assert re.search(r"\[0\] 0\s+Linear\(6\)\s+FAILED \(downstream of \[2\]", text)
    assert "scale" not in text.split("[1] 1")[0]  # no diagnosis printed for what only carries the error
    with pytest.raises(AssertionError, match=r"\[2\] 2\s+Sqrt\s+FAILED"):
        report.assert_ok()


# -- narrow dtypes ----------------------------------------------------------------------
def test_narrow_dtypes_allow_the_references_own_rounding_and_still_catch_a_mistake():
    # softmax's sums round in bfloat16: by up to 2e-2 for jax.vjp of the reference itself, so a
    # fixed 2e-2 failed the correct rule; the tolerance now follows the reference's own error
    for dtype in (jnp.bfloat16, jnp.float16):
        assert all(r.passed for r in check.check_op(ops.softmax, dtypes=(dtype,))), dtype
    x = jnp.linspace(0.5, 2.0, 12, dtype=jnp.bfloat16).reshape(3, 4)
    ok, wrong = (check.check_vjp(planted_sqrt(kind), x) for kind in ("correct", "finite factor"))
    assert ok.passed and ok.rows[1].rtol == check.TOLERANCES[jnp.dtype(jnp.bfloat16)][0]  # sqrt rounds little
    assert wrong.failed[0].diagnosis.startswith("scale 1.99")  # 2, to bfloat16 rounding
