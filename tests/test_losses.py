"""Losses: stability, shape errors, labels, targets with zero cotangent, combinators."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from manualgrad import losses, reference_mode


@pytest.mark.parametrize("dtype", [jnp.float32, jnp.float64])
def test_cross_entropy_is_stable_for_huge_logits(dtype):
    logits = jnp.array([[1e4, -1e4, 0.0], [-1e4, 1e4, 1e4]], dtype)
    labels = jnp.array([1, 0])
    loss, g = jax.value_and_grad(losses.softmax_cross_entropy)(logits, labels)
    assert jnp.isfinite(loss) and loss.dtype == dtype
    # row 0: lse = 1e4, loss 2e4; row 1: lse = 1e4 + log 2, loss 2e4 + log 2
    np.testing.assert_allclose(loss, (2e4 + 2e4 + np.log(2)) / 2, rtol=1e-6)
    p = np.array([[1.0, 0.0, 0.0], [0.0, 0.5, 0.5]])
    onehot = np.eye(3)[[1, 0]]
    np.testing.assert_allclose(g, (p - onehot) / 2, atol=1e-7)


def test_cross_entropy_probability_labels_equal_class_ids_when_one_hot():
    rng = np.random.default_rng(0)
    logits = jnp.asarray(rng.normal(size=(5, 4)))
    ids = jnp.array([0, 3, 1, 1, 2])
    onehot = jax.nn.one_hot(ids, 4, dtype=jnp.float64)
    a, ga = jax.value_and_grad(losses.softmax_cross_entropy)(logits, ids)
    b, gb = jax.value_and_grad(losses.softmax_cross_entropy)(logits, onehot)
    np.testing.assert_allclose(a, b, rtol=1e-14)
    np.testing.assert_allclose(ga, gb, atol=1e-15)


def test_cross_entropy_gradient_is_softmax_minus_onehot_over_m():
    """Seed 002's eq. (4.8) claims S - Y/m; the right answer is (S - Y)/m."""
    rng = np.random.default_rng(1)
    logits = jnp.asarray(rng.normal(size=(6, 3)))
    ids = jnp.asarray(rng.integers(0, 3, size=6))
    S, Y = jax.nn.softmax(logits), jax.nn.one_hot(ids, 3)
    g = jax.grad(losses.softmax_cross_entropy)(logits, ids)
    np.testing.assert_allclose(g, (S - Y) / 6, atol=1e-15)
    assert not np.allclose(g, S - Y / 6)


def test_out_of_range_class_ids():
    logits = jnp.zeros((3, 4))
    with pytest.raises(ValueError, match=r"softmax_cross_entropy: class ids must lie in \[0, 4\), got \[4, -1\]"):
        losses.softmax_cross_entropy(logits, jnp.array([4, 0, -1]))
    # Under jit values are unknown at trace time: the bad row is NaN, never a quiet number.
    loss, g = jax.jit(jax.value_and_grad(losses.softmax_cross_entropy))(logits, jnp.array([4, 0, 1]))
    assert jnp.isnan(loss)
    assert np.isnan(g[0]).all() and np.isfinite(g[1:]).all()
    with reference_mode():
        assert jnp.isnan(jax.jit(losses.softmax_cross_entropy)(logits, jnp.array([4, 0, 1])))


def test_non_finite_inputs_propagate():
    for loss, target in [(losses.mse, jnp.zeros(3)), (losses.softmax_cross_entropy, jnp.array(1))]:
        value, g = jax.value_and_grad(loss)(jnp.array([0.0, jnp.nan, 1.0]), target)
        assert not jnp.isfinite(value) and not jnp.isfinite(g).all()


@pytest.mark.parametrize("dtype", [jnp.float32, jnp.float64])
def test_binary_cross_entropy_is_stable(dtype):
    z = jnp.array([1e4, -1e4, 0.0, 30.0], dtype)
    t = jnp.array([0.0, 0.0, 1.0, 1.0], dtype)
    loss, g = jax.value_and_grad(losses.binary_cross_entropy_with_logits)(z, t)
    assert jnp.isfinite(loss)
    np.testing.assert_allclose(loss, (1e4 + 0.0 + np.log(2) + np.log1p(np.exp(-30.0))) / 4, rtol=1e-6)
    np.testing.assert_allclose(g, (np.array([1.0, 0.0, 0.5, 1 / (1 + np.exp(-30.0))]) - t) / 4, atol=1e-7)


@pytest.mark.parametrize(
    "loss", [losses.mse, losses.sse, losses.binary_cross_entropy_with_logits], ids=lambda l: l.name
)
@pytest.mark.parametrize("use_jit", [False, True])
def test_prediction_and_target_shapes_must_match(loss, use_jit):
    f = jax.jit(loss) if use_jit else loss
    pred, target = ("logits", "targets") if loss is losses.binary_cross_entropy_with_logits else ("pred", "target")
    with pytest.raises(ValueError, match=rf"{loss.name}: {pred}.shape=\(4, 1\) .* and {target}.shape=\(4, 2\) .* differ") as e:
        f(jnp.zeros((4, 1)), jnp.zeros((4, 2)))
    assert "broadcast" in str(e.value)
    with pytest.raises(ValueError, match=r"\(4,\)"):
        f(jnp.zeros((4, 1)), jnp.zeros((4,)))


@pytest.mark.parametrize("use_jit", [False, True])
def test_class_id_batch_must_match_logits(use_jit):
    f = jax.jit(losses.softmax_cross_entropy) if use_jit else losses.softmax_cross_entropy
    with pytest.raises(ValueError, match=r"labels.shape=\(5,\) int.* must have shape logits.shape\[:-1\]=\(4,\)"):
        f(jnp.zeros((4, 3)), jnp.zeros(5, jnp.int32))
    with pytest.raises(ValueError, match=r"probabilities, so it must have the shape of logits"):
        f(jnp.zeros((4, 3)), jnp.zeros((4, 2)))


def test_targets_get_zero_cotangent():
    pred, target = jnp.array([1.0, 2.0]), jnp.array([0.5, -1.0])
    for loss in (losses.mse, losses.sse, losses.binary_cross_entropy_with_logits):
        g_target = jax.grad(loss, argnums=1)(pred, jnp.clip(target, 0, 1))
        np.testing.assert_array_equal(g_target, 0.0)
        with reference_mode():
            np.testing.assert_array_equal(jax.grad(loss, argnums=1)(pred, jnp.clip(target, 0, 1)), 0.0)
    probs = jnp.array([[0.2, 0.8]])
    np.testing.assert_array_equal(jax.grad(losses.softmax_cross_entropy, argnums=1)(jnp.ones((1, 2)), probs), 0.0)


def test_mse_and_sse_values():
    pred, target = jnp.array([[1.0, 2.0], [3.0, 4.0]]), jnp.array([[0.0, 2.0], [5.0, 4.0]])
    assert losses.mse(pred, target) == pytest.approx(5.0 / 4)
    assert losses.sse(pred, target) == pytest.approx(5.0)
    np.testing.assert_allclose(jax.grad(losses.mse)(pred, target), 2 * (pred - target) / 4)


def test_scaled_and_multitask():
    half = losses.scaled(losses.mse, 0.5)
    p, t = jnp.array([1.0, 3.0]), jnp.array([0.0, 0.0])
    assert half(p, t) == pytest.approx(0.5 * (1 + 9) / 2)
    np.testing.assert_allclose(jax.grad(half)(p, t), 0.5 * 2 * (p - t) / 2, rtol=1e-15)  # closed form
    both = losses.multitask(losses.sse, losses.softmax_cross_entropy)
    logits, label = jnp.array([[2.0, 0.0]]), jnp.array([0])
    value = both((p, logits), (t, label))
    assert value == pytest.approx(10.0 + np.log1p(np.exp(-2.0)))  # sse + (-log softmax(2, 0)[0])
    gp, gl = jax.grad(both)((p, logits), (t, label))
    np.testing.assert_allclose(gp, 2 * (p - t), rtol=1e-15)
    softmax = np.exp([2.0, 0.0]) / np.sum(np.exp([2.0, 0.0]))
    np.testing.assert_allclose(gl, [softmax - np.array([1.0, 0.0])], rtol=1e-14)
    with pytest.raises(ValueError, match=r"multitask.*preds must be a tuple with one entry per loss \(2\)"):
        both(p, (t, jnp.array([0])))
    with pytest.raises(ValueError, match=r"sse: pred.shape=\(2,\).*target.shape=\(3,\)"):
        both((p, logits), (jnp.zeros(3), jnp.array([0])))
