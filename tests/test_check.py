"""The verification tools themselves: reports, tolerances, Jacobians (seed 003)."""

import jax.numpy as jnp
import numpy as np
import pytest

from manualgrad import check, losses, ops


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
    report = check.check_jacobian(lambda x: ops.softmax(ops.linear(x, w, jnp.zeros(4))), x)
    assert report.passed and report.rows[0].scale > 0
