"""Sequence layers beyond the registry walk: what each computes (against formulas written out here),
causality, the whole language model checked layer by layer, and bad input."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from manualgrad import backprop, check, losses, nn


def test_multi_head_attention_is_the_textbook_formula():
    layer = nn.MultiHeadAttention(2)
    _, p = layer.init(jax.random.key(0), (2, 5, 4))
    x = np.asarray(jax.random.normal(jax.random.key(1), (2, 5, 4)), np.float64)
    p = jax.tree_util.tree_map(lambda a: np.asarray(a, np.float64), p)
    proj = {n: x @ p[n]["w"] + p[n]["b"] for n in "qkv"}
    heads = {n: proj[n].reshape(2, 5, 2, 2).transpose(0, 2, 1, 3) for n in "qkv"}  # (B, H, T, d)
    scores = heads["q"] @ heads["k"].transpose(0, 1, 3, 2) / math.sqrt(2)
    scores = np.where(np.tril(np.ones((5, 5), bool)), scores, -np.inf)
    probs = np.exp(scores - scores.max(-1, keepdims=True))
    probs /= probs.sum(-1, keepdims=True)
    merged = (probs @ heads["v"]).transpose(0, 2, 1, 3).reshape(2, 5, 4)
    with jax.enable_x64(True):
        np.testing.assert_allclose(layer.apply(p, x), merged @ p["o"]["w"] + p["o"]["b"], rtol=1e-12)


def test_the_language_model_is_causal():
    model = nn.TransformerLM(11, 8, width=8, depth=2, heads=2)
    _, params = model.init(jax.random.key(0), (1, 8))
    ids = jnp.array([[1, 2, 3, 4, 5, 6, 7, 8]])
    changed = ids.at[0, 5].set(0)
    apply = jax.jit(model.apply)
    a, b = apply(params, ids), apply(params, changed)
    np.testing.assert_array_equal(a[0, :5], b[0, :5])  # positions before the change see nothing of it
    assert not np.allclose(a[0, 5:], b[0, 5:])
    # the gradient of a position's loss reaches no later position's embedding
    g = jax.jit(jax.grad(lambda t: model.apply((t, *params[1:]), ids)[0, 2].sum()))(params[0])
    assert np.all(g["table"][ids[0, 3:]] == 0) and np.any(g["table"][ids[0, :3]] != 0)


def test_sinusoidal_positions_are_the_vaswani_table():
    table = nn.sequence.sinusoids(6, 5)
    t, i = 4, 1
    assert table[t, 2 * i] == pytest.approx(math.sin(t / 10000 ** (2 * i / 5)))
    assert table[t, 2 * i + 1] == pytest.approx(math.cos(t / 10000 ** (2 * i / 5)))
    layer = nn.PositionalEmbedding(6, "sinusoidal")
    _, params = layer.init(jax.random.key(0), (2, 4, 5))
    x = jnp.zeros((2, 4, 5), jnp.float32)
    np.testing.assert_allclose(layer.apply(params, x), np.broadcast_to(table[:4], (2, 4, 5)), rtol=1e-6, atol=1e-7)
    assert params == ()


def test_residual_adds_the_skip_path_in_the_trace():
    model = nn.residual(nn.Linear(3), nn.Tanh())
    _, params = model.init(jax.random.key(0), (2, 3))
    x = jax.random.normal(jax.random.key(1), (2, 3), jnp.float32)
    np.testing.assert_allclose(model.apply(params, x), x + jnp.tanh(x @ params[0]["w"] + params[0]["b"]), rtol=1e-6)
    _, _, trace = backprop.value_and_grad(model, losses.mse, trace=True)(params, x, jnp.zeros((2, 3), jnp.float32))
    entry, linear = trace[0], trace[1]
    assert entry.name == "residual(2)" and "(skip + branch)" in str(trace)
    np.testing.assert_allclose(entry.x_bar, entry.y_bar + linear.x_bar, rtol=1e-6)  # skip path + branch


def test_language_model_manual_and_explicit_gradients_equal_the_references_layer_by_layer():
    model = nn.TransformerLM(9, 6, width=8, depth=1, heads=2, dropout=0.1)
    _, params = model.init(jax.random.key(0), (2, 6))
    ids = jax.random.randint(jax.random.key(1), (2, 7), 0, 9)
    report = check.check_model(model, losses.softmax_cross_entropy, params, ids[:, :-1], ids[:, 1:], key=jax.random.key(2),
                               dtypes=(jnp.float64,))  # float32: the layer registry
    report.assert_ok()
    names = {layer.name.split("(")[0] for layer in report.layers}
    assert {"Embedding", "PositionalEmbedding", "residual", "MultiHeadAttention", "Dropout", "GELU"} <= names


def test_bad_input_gets_clear_errors_also_under_jit():
    lm = nn.TransformerLM(9, 6, width=8, depth=1, heads=2)
    _, params = lm.init(jax.random.key(0), (2, 6))
    with pytest.raises(ValueError, match=r"context of T=8 positions, longer than the position table \(max_len=6\)"):
        lm.apply(params, jnp.zeros((2, 8), jnp.int32))
    with pytest.raises(ValueError, match=r"context of T=8 positions, longer than the position table"):
        jax.jit(lm.apply)(params, jnp.zeros((2, 8), jnp.int32))
    with pytest.raises(ValueError, match=r"manualgrad.nn.Embedding\(9, 8\): manualgrad.ops.embedding: ids.shape=\(2, 6\) float32: "
                                         r"ids must be integers"):
        jax.jit(lm.apply)(params, jnp.zeros((2, 6), jnp.float32))
    with pytest.raises(ValueError, match=r"ids must be in \[0, 9\) .* got \[9, -1\]"):
        lm.apply(params, jnp.array([[0, 9, 1, -1, 2, 3]]))
    # under jit ids cannot be checked: their rows are NaN (documented), so the logits from there on and the
    # loss are NaN (never silently wrong; fit stops with NonFiniteError)
    logits = jax.jit(lm.apply)(params, jnp.array([[0, 9, 1, 1, 2, 3]]))
    assert np.all(np.isnan(logits[0, 1:]))
    with pytest.raises(ValueError, match=r"MultiHeadAttention\(3, causal=True\).*input_shape=\(2, 5, 8\) must be .* divisible by heads=3"):
        nn.MultiHeadAttention(3).init(jax.random.key(0), (2, 5, 8))
    with pytest.raises(ValueError, match=r"manualgrad.nn.residual\(4\): the branch maps input_shape=\(2, 5, 4\) to \(2, 5, 8\)"):
        nn.TransformerBlock(8, 2).init(jax.random.key(0), (2, 5, 4))  # width 8 on 4 features
    with pytest.raises(ValueError, match="kind must be one of"):
        nn.PositionalEmbedding(4, "rotary")
    with pytest.raises(ValueError, match=r"manualgrad.nn.Embedding\(0, 4\): vocab_size must be a positive integer"):
        nn.Embedding(0, 4)


def test_glue_ops_name_themselves_and_the_shapes():
    from manualgrad import ops

    with pytest.raises(ValueError, match=r"manualgrad.ops.add: x.shape=\(2, 3\) float32 and y.shape=\(4,\) float32 do not broadcast"):
        ops.add(jnp.ones((2, 3), jnp.float32), jnp.ones((4,), jnp.float32))
    with pytest.raises(ValueError, match=r"manualgrad.ops.add: x and y must share one dtype, got x float32, y float64"):
        ops.add(jnp.ones((2, 3), jnp.float32), jnp.ones((3,), jnp.float64))
    with pytest.raises(ValueError, match=r"manualgrad.ops.split_heads: x.shape=\(2, 5, 6\) float32: x must be \(..., T, D\) "
                                         r"with D divisible by heads=4"):
        jax.jit(lambda x: ops.split_heads(x, heads=4))(jnp.ones((2, 5, 6), jnp.float32))
    with pytest.raises(ValueError, match=r"manualgrad.ops.merge_heads: x.shape=\(5, 6\) float32: x must be \(..., H, T, d\)"):
        ops.merge_heads(jnp.ones((5, 6), jnp.float32))
