"""The fused output layer + cross-entropy (``losses.linear_softmax_cross_entropy``) and the
transformer that ends in it: the plain composition at block boundaries, logits of 1e4, bad
input, training and checking the model, and the memory it saves."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from manualgrad import backprop, check, data, losses, nn, ops, train
from manualgrad.core import reference_mode
from tests.helpers import assert_trees_close

fused = losses.linear_softmax_cross_entropy


def composition(x, w, b, labels):
    """The unfused loss: the hand-written linear and cross-entropy ops, the (..., V) logits in between."""
    return losses.softmax_cross_entropy(ops.linear(x, w, b), labels)


def problem(lead, d, v, seed=0, scale=1.0, dtype=jnp.float64):
    rng = np.random.default_rng(seed)
    x, w, b = (jnp.asarray(rng.normal(size=s) * scale, dtype) for s in ((*lead, d), (d, v), (v,)))
    return x, w, b, jnp.asarray(rng.integers(0, v, lead), jnp.int32)


def value_and_grads(f, x, w, b, labels):
    return jax.jit(jax.value_and_grad(f, argnums=(0, 1, 2)))(x, w, b, labels)


@pytest.mark.parametrize("lead, chunk", [((7,), 3), ((7,), 1), ((7,), 64), ((2, 3), 4), ((), 2)])
def test_equals_the_composition_at_block_boundaries(lead, chunk):
    """7 rows in blocks of 3 (the last one padded), of 1, in one block (chunk larger than the rows);
    leading axes (2, 3); a single row. Rows are the only blocked axis: each block's softmax
    runs over the whole vocabulary (V = 11 here, any V works)."""
    x, w, b, labels = problem(lead, 5, 11)
    got = value_and_grads(lambda *a: fused(*a, chunk=chunk), x, w, b, labels)
    want = value_and_grads(composition, x, w, b, labels)
    assert_trees_close(got, want, rtol=1e-12, atol=1e-15)
    assert_trees_close(fused(x, w, b, labels, chunk=chunk), want[0], rtol=1e-12, atol=0)  # eager call


def test_logits_of_1e4_are_stable():
    for dtype, rtol in ((jnp.float64, 1e-12), (jnp.float32, 1e-5)):
        x, w, b, labels = problem((6,), 4, 7, scale=50.0, dtype=dtype)  # logits of order 1e4
        assert float(jnp.max(jnp.abs(x @ w + b))) > 1e4
        got = value_and_grads(lambda *a: fused(*a, chunk=4), x, w, b, labels)
        want = value_and_grads(composition, x, w, b, labels)
        assert all(bool(jnp.all(jnp.isfinite(a))) for a in jax.tree_util.tree_leaves(got))
        assert_trees_close(got, want, rtol=rtol, atol=rtol * 1e-3)


BAD = [
    (lambda x, w, b, y: (x, w, b, y[:-1]), r"labels.shape=\(5,\) .* must have shape x.shape\[:-1\]=\(6,\)"),
    (lambda x, w, b, y: (x, w, b, y.astype(jnp.float32)), r"labels.shape=\(6,\) float32: labels must be integer"),
    (lambda x, w, b, y: (x, w.T, b, y), r"w.shape=\(7, 4\) .* must be \(D, V\) with D=4"),
    (lambda x, w, b, y: (x, w, b[:-1], y), r"b.shape=\(6,\) .* must be \(V,\)=\(7,\)"),
]


@pytest.mark.parametrize("jit", [False, True], ids=["eager", "jit"])
@pytest.mark.parametrize("bad, match", BAD, ids=["labels shape", "float labels", "w shape", "b shape"])
def test_bad_input_names_the_op_and_the_shapes(bad, match, jit):
    args = bad(*problem((6,), 4, 7))
    call = jax.jit(fused) if jit else fused
    with pytest.raises(ValueError, match="manualgrad.losses.linear_softmax_cross_entropy: " + match):
        call(*args)


@pytest.mark.parametrize("chunk", [0, -2, 2.5, True])
def test_chunk_must_be_a_positive_int(chunk):
    with pytest.raises(ValueError, match=r"linear_softmax_cross_entropy: chunk must be a positive integer"):
        fused(*problem((6,), 4, 7), chunk=chunk)


def test_out_of_range_labels_as_softmax_cross_entropy_documents():
    """Eagerly a ValueError; under jit the row's loss and gradient are NaN, so the mean loss and
    w's and b's gradients are too, and every other row of x's gradient is untouched."""
    x, w, b, labels = problem((6,), 4, 7)
    bad = labels.at[2].set(7)
    with pytest.raises(ValueError, match=r"linear_softmax_cross_entropy: class ids must lie in \[0, 7\), got \[7\]"):
        fused(x, w, b, bad)
    value, (x_bar, w_bar, b_bar) = value_and_grads(lambda *a: fused(*a, chunk=4), x, w, b, bad)
    _, (x_want, _, _) = value_and_grads(composition, x, w, b, bad)
    assert np.isnan(float(value)) and bool(jnp.all(jnp.isnan(w_bar))) and bool(jnp.all(jnp.isnan(b_bar)))
    assert bool(jnp.all(jnp.isnan(x_bar[2])))
    rows = np.array([0, 1, 3, 4, 5])
    np.testing.assert_allclose(x_bar[rows], x_want[rows], rtol=1e-5, atol=1e-7)


def test_the_head_loss_takes_the_triple_and_names_itself():
    x, w, b, labels = problem((6,), 4, 7)
    np.testing.assert_allclose(losses.head_cross_entropy((x, w, b), labels, chunk=4), fused(x, w, b, labels), rtol=1e-6)
    with pytest.raises(ValueError, match=r"head_cross_entropy: head must be the triple \(x, w, b\)"):
        losses.head_cross_entropy((x, w), labels)
    with pytest.raises(ValueError, match=r"head_cross_entropy: manualgrad.losses.linear_softmax_cross_entropy: b.shape"):
        losses.head_cross_entropy((x, w, b[:-1]), labels)


# -- models that end in the fused head ------------------------------------------------------------
V, T = 11, 6


def models():
    """A small language model with a Linear output layer and the same with the fused head, and their
    params, which are equal: a checkpoint of one loads into the other."""
    plain, fused_lm = (nn.serial(nn.Embedding(V, 8), nn.LayerNorm(), out(V)) for out in (nn.Linear, nn.LinearCrossEntropyHead))
    _, params = plain.init(jax.random.key(0), (2, T))
    _, fused_params = fused_lm.init(jax.random.key(0), (2, T))
    assert_trees_close(fused_params, params, rtol=0, atol=0)
    return plain, fused_lm, params


def token_data(n):
    rng = np.random.default_rng(0)
    ids = rng.integers(0, V, (n, T + 1)).astype(np.int32)
    return ids[:, :-1], ids[:, 1:]


def test_the_fused_transformer_outputs_h_w_b_with_the_plain_ones_params():
    """(Its explicit pass is checked against jax.vjp of its apply by the layer registry's entry
    TransformerLM-fused; shapes only here, nothing is compiled.)"""
    plain, fused_lm = (nn.TransformerLM(V, T, width=8, depth=1, heads=2, fused_head=f) for f in (False, True))
    _, params = jax.eval_shape(lambda k: plain.init(k, (3, T)), jax.random.key(0))
    _, fused_params = jax.eval_shape(lambda k: fused_lm.init(k, (3, T)), jax.random.key(0))
    assert fused_params == params
    h, w, b = jax.eval_shape(fused_lm.apply, params, jax.ShapeDtypeStruct((3, T), jnp.int32))
    assert (h.shape, w.shape, b.shape) == ((3, T, 8), (8, V), (V,))


def test_the_explicit_pass_and_its_trace_give_the_plain_models_loss_and_gradients():
    """The explicit pass over a model ending in the fused head, with head_cross_entropy, against
    jax.grad of the plain model with softmax_cross_entropy."""
    plain, fused_lm, params = models()
    x, y = (jnp.asarray(a) for a in token_data(3))
    want = jax.jit(jax.value_and_grad(lambda p: losses.softmax_cross_entropy(plain.apply(p, x), y)))(params)
    head_loss = functools.partial(losses.head_cross_entropy, chunk=4)  # 18 rows: 5 blocks
    value, grads, trace = jax.jit(backprop.value_and_grad(fused_lm, head_loss, trace=True))(params, x, y)
    assert_trees_close((value, grads), want, rtol=2e-5, atol=1e-6)
    assert trace.entries[-2].x_bar.shape == (3, T, 8)
    assert "LinearCrossEntropyHead(11)  x(3,6,8) -> y((3,6,8), (8,11), (11,))" in str(trace)
    h, w, b = trace.entries[-2].y  # logits where they are wanted (for sampling: the last position)
    np.testing.assert_allclose(losses.softmax_cross_entropy(ops.linear(h, w, b), y), value, rtol=1e-6)


def test_check_model_passes_on_a_fused_model():
    _, fused_lm, params = models()
    x, y = token_data(2)
    report = check.check_model(fused_lm, functools.partial(losses.head_cross_entropy, chunk=5), params, x, y,
                               dtypes=(jnp.float64,))
    report.assert_ok()
    assert any(layer.name == "LinearCrossEntropyHead(11)" and layer.rows for layer in report.layers)


def test_fit_trains_a_fused_model_as_the_plain_one():
    """Two steps of fit: the fused model with its loss takes the plain model's steps, and evaluate
    reports the same test loss."""
    plain, fused_lm, params = models()
    x, y = token_data(8)
    ds = data.Dataset("tokens", x, y, x[:4], y[:4])

    def run(model, loss):
        return train.fit(model, loss, train.sgd_with_clipping(0.5, 1.0), params, ds, epochs=1, batch_size=4,
                         key=jax.random.key(1))

    want = run(plain, losses.softmax_cross_entropy)
    got = run(fused_lm, functools.partial(losses.head_cross_entropy, chunk=8))  # 24 rows a step: 3 blocks
    assert len(got.step_losses[0]) == 2
    np.testing.assert_allclose(got.step_losses, want.step_losses, rtol=1e-5)
    np.testing.assert_allclose(got.epochs[0]["test_loss"], want.epochs[0]["test_loss"], rtol=1e-5)
    assert_trees_close(got.params, want.params, rtol=1e-4, atol=1e-6)


def test_temp_memory_is_far_below_the_composition():
    """Compiled value-and-grad at 2048 rows, D 32, V 4096, float32: jax.grad of the composition
    holds the (2048, 4096) logits and their gradient (32 MiB each), the fused op two (256, 4096)
    arrays of one block of rows (4 MiB each)."""
    args = problem((2048,), 32, 4096, dtype=jnp.float32)

    def temp(f):
        compiled = jax.jit(jax.value_and_grad(f, argnums=(0, 1, 2))).lower(*args).compile()
        return compiled.memory_analysis().temp_size_in_bytes

    manual = temp(fused)
    with reference_mode():  # jax.grad of the plain composition, fused's reference
        reference = temp(fused)
    assert reference >= 2 * 2048 * 4096 * 4
    assert manual * 8 <= reference, (manual, reference)
