"""The vision ops beyond the registry's checks: max-pool tie routing, bad inputs named with their
shapes (eagerly and under jit), batch norm on a batch of one, dropout's key discipline, and conv2d
against PyTorch with PyTorch's weight layout."""

import functools
import importlib.util

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from manualgrad import ops

HAS_TORCH = importlib.util.find_spec("torch") is not None


# -- max-pool ties ---------------------------------------------------------------
def test_a_tie_sends_the_whole_cotangent_to_the_first_maximum_in_row_major_order():
    x = jnp.array([[1.0, 3.0, 3.0], [3.0, 0.0, 3.0], [1.0, 1.0, 1.0]])[None, :, :, None]
    x_bar = jax.grad(lambda x: jnp.sum(ops.max_pool2d(x, 2, stride=1)))(x)
    # windows: top-left and top-right pick (0, 1); bottom-left (1, 0); bottom-right (1, 2)
    np.testing.assert_array_equal(x_bar[0, :, :, 0], [[0.0, 2.0, 0.0], [1.0, 0.0, 1.0], [0.0, 0.0, 0.0]])


@pytest.mark.parametrize(
    "params", [dict(window=3, stride=1, padding=1), dict(window=2), dict(window=(2, 3), stride=(1, 2), padding=1)],
    ids=["overlapping-padded", "disjoint", "pair-window"],
)
def test_max_pool_ties_route_like_jax_grad_of_reduce_window(params):
    x = jnp.asarray(np.random.default_rng(0).integers(0, 3, (2, 6, 6, 3)), jnp.float64)  # many ties
    out_shape = ops.max_pool2d(x, **params).shape
    weights = jnp.asarray(np.random.default_rng(1).integers(-9, 10, out_shape), x.dtype)  # integers: exact sums

    def grad(f):
        return jax.jit(jax.grad(lambda x: jnp.vdot(weights, f(x, **params))))(x)

    np.testing.assert_array_equal(grad(ops.max_pool2d), grad(ops.max_pool2d.reference))


# -- bad inputs ------------------------------------------------------------------
def z(*shape):
    return jnp.zeros(shape)


BAD = [
    (ops.conv2d, (z(2, 3, 8, 8), z(3, 3, 3, 4), z(4)), {},
     r"ops.conv2d: x.shape=\(2, 3, 8, 8\) has 8 input channels .* w.shape=\(3, 3, 3, 4\) .*C_in = 3 \* 1 = 3; "
     r"NHWC expected: an NCHW input would have its 3 channels on axis 1"),
    (ops.conv2d, (z(2, 8, 8, 5), z(3, 3, 3, 4), z(4)), {},
     r"ops.conv2d: x.shape=\(2, 8, 8, 5\) has 5 input channels .* expects C_in = 3 \* 1 = 3"),
    (ops.conv2d, (z(8, 8, 3), z(3, 3, 3, 4), z(4)), {}, r"ops.conv2d: x.shape=\(8, 8, 3\) float.*x must be NHWC"),
    (ops.conv2d, (z(1, 2, 2, 3), z(3, 3, 3, 4), z(4)), {},
     r"ops.conv2d: the kernel spans 3 along H .* padded input has only 2 \(H=2 \+ padding 0 \+ 0\)"),
    (ops.conv2d, (z(1, 4, 4, 3), z(3, 3, 3, 4), z(4)), {"dilation": 2},
     r"ops.conv2d: the kernel spans 5 along H \(size 3, dilation 2\) but the padded input has only 4"),
    (ops.conv2d, (z(1, 4, 4, 3), z(3, 3, 3, 4), z(4)), {"stride": 0}, r"ops.conv2d: stride=0 must be a positive int"),
    (ops.conv2d, (z(1, 4, 4, 3), z(3, 3, 3, 4), z(4)), {"dilation": (1, -1)}, r"ops.conv2d: dilation=\(1, -1\) must"),
    (ops.conv2d, (z(1, 4, 4, 3), z(3, 3, 3, 4), z(4)), {"stride": [1, 1]}, r"ops.conv2d: stride is a static parameter"),
    (ops.conv2d, (z(1, 4, 4, 3), z(3, 3, 3, 4), z(4)), {"padding": "same"}, r"ops.conv2d: padding='same' must be"),
    (ops.conv2d, (z(1, 4, 4, 3), z(3, 3, 3, 4), z(4)), {"padding": -1}, r"ops.conv2d: padding=-1 must be"),
    (ops.conv2d, (z(1, 4, 4, 5), z(3, 3, 2, 4), z(4)), {"groups": 2},
     r"ops.conv2d: groups=2 does not divide x's 5 input channels \(x.shape=\(1, 4, 4, 5\)"),
    (ops.conv2d, (z(1, 4, 4, 4), z(3, 3, 2, 3), z(3)), {"groups": 2},
     r"ops.conv2d: groups=2 does not divide w's 3 output channels \(w.shape=\(3, 3, 2, 3\)"),
    (ops.conv2d, (z(1, 4, 4, 3), z(3, 3, 3, 4), z(5)), {},
     r"ops.conv2d: b.shape=\(5,\) does not match w.shape=\(3, 3, 3, 4\): b needs shape \(C_out,\)=\(4,\)"),
    (ops.conv2d, (z(1, 4, 4, 3), z(3, 3, 3, 4), z(4)), {"impl": "cudnn"},
     r"ops.conv2d: impl='cudnn' must be one of \('auto', 'gemm', 'xla', 'winograd'\)"),
    (ops.conv2d, (z(1, 6, 6, 3), z(3, 3, 3, 4), z(4)), {"impl": "winograd", "stride": 2},
     r"ops.conv2d: impl='winograd' needs a 3x3 kernel, stride 1, dilation 1 and groups=1; got w.shape=\(3, 3, 3, 4\), "
     r"stride=\(2, 2\)"),
    (ops.conv2d, (z(1, 6, 6, 3), z(5, 5, 3, 4), z(4)), {"impl": "winograd"},
     r"ops.conv2d: impl='winograd' needs a 3x3 kernel.*w.shape=\(5, 5, 3, 4\)"),
    (ops.max_pool2d, (z(4, 4, 3),), {"window": 2}, r"ops.max_pool2d: x.shape=\(4, 4, 3\) float.*x must be NHWC"),
    (ops.max_pool2d, (z(1, 4, 4, 3),), {"window": 0}, r"ops.max_pool2d: window=0 must be a positive int"),
    (ops.avg_pool2d, (z(1, 4, 4, 3),), {"window": 2, "stride": (0, 1)}, r"ops.avg_pool2d: stride=\(0, 1\) must"),
    (ops.avg_pool2d, (z(1, 4, 4, 3),), {"window": 2, "padding": 2},
     r"ops.avg_pool2d: padding=2 must be at most half the window=2"),
    (ops.max_pool2d, (z(1, 2, 5, 3),), {"window": 3},
     r"ops.max_pool2d: window=3 spans 3 along H but the padded input has only 2 .*x.shape=\(1, 2, 5, 3\)"),
    (ops.batch_norm, (z(4, 3), z(4), z(3)), {},
     r"ops.batch_norm: gamma.shape=\(4,\) does not match x.shape=\(4, 3\): gamma needs one entry per channel"),
    (ops.batch_norm, (z(3), z(3), z(3)), {}, r"ops.batch_norm: x.shape=\(3,\) float.*x must have shape \(N, ..., C\)"),
    (ops.layer_norm, (z(2, 5), z(5), z(2)), {}, r"ops.layer_norm: beta.shape=\(2,\) does not match x.shape=\(2, 5\)"),
    (ops.dropout, (z(3), jax.random.PRNGKey(0)), {"rate": 1.0}, r"ops.dropout: rate=1.0 must be a number in \[0, 1\)"),
    (ops.dropout, (z(3), jax.random.PRNGKey(0)), {"rate": -0.5}, r"ops.dropout: rate=-0.5 must be"),
    (ops.dropout, (z(3), jax.random.split(jax.random.PRNGKey(0))), {"rate": 0.5},
     r"ops.dropout: key.shape=\(2, 2\) uint32: key must be one PRNG key"),
    (ops.dropout, (z(3), z(2)), {"rate": 0.5}, r"ops.dropout: key.shape=\(2,\) float.*key must be one PRNG key"),
]


@pytest.mark.parametrize("use_jit", [False, True], ids=["eager", "jit"])
@pytest.mark.parametrize("op, args, params, message", BAD, ids=[f"{b[0].__name__}-{i}" for i, b in enumerate(BAD)])
def test_bad_inputs_name_the_op_the_argument_and_the_shapes(op, args, params, message, use_jit):
    f = functools.partial(op, **params)
    with pytest.raises(ValueError, match=message):
        (jax.jit(f) if use_jit else f)(*args)


# -- batch norm on a batch of one --------------------------------------------------
def test_batch_norm_on_a_batch_of_one_is_finite():
    """m = 1: x equals its mean, so xhat = 0 and 1 / sqrt(0 + eps) is finite; y = beta and x_bar = 0."""
    x, gamma, beta = jnp.array([[0.3, -2.0, 7.0]]), jnp.array([1.5, -1.0, 2.0]), jnp.array([0.1, 0.2, 0.3])

    def loss(f):
        return lambda x, gamma, beta: jnp.vdot(jnp.array([[1.0, -2.0, 0.5]]), f(x, gamma, beta))

    y = ops.batch_norm(x, gamma, beta)
    np.testing.assert_array_equal(y, beta[None])
    grads = jax.jit(jax.grad(loss(ops.batch_norm), argnums=(0, 1, 2)))(x, gamma, beta)
    reference = jax.jit(jax.grad(loss(ops.batch_norm.reference), argnums=(0, 1, 2)))(x, gamma, beta)
    for got, want in zip(grads, reference):
        assert np.isfinite(got).all()
        np.testing.assert_allclose(got, want, atol=1e-12)
    np.testing.assert_array_equal(grads[0], 0.0)
    np.testing.assert_array_equal(grads[1], 0.0)  # gamma multiplies xhat = 0


# -- dropout -----------------------------------------------------------------------
def test_dropout_mask_is_a_function_of_the_key_and_the_backward_redraws_it():
    x = jnp.asarray(np.random.default_rng(0).normal(size=(6, 7))) + 10.0  # no zeros of its own
    run = jax.jit(lambda x, key: jax.vjp(lambda x: ops.dropout(x, key, 0.4), x))
    for key in (jax.random.PRNGKey(3), jax.random.key(3)):
        y, pullback = run(x, key)
        np.testing.assert_array_equal(y, ops.dropout(x, key, 0.4))  # same key, same mask
        keep = np.asarray(y) != 0
        np.testing.assert_array_equal(y, np.where(keep, x / 0.6, 0.0))
        np.testing.assert_array_equal(keep, jax.random.bernoulli(key, 0.6, x.shape))
        (x_bar,) = pullback(jnp.ones_like(x))
        np.testing.assert_array_equal(x_bar, np.where(keep, 1 / 0.6, 0.0))  # the forward's mask, redrawn
        _, res = ops.dropout.fwd(x, key, rate=0.4)
        assert res.values is key  # the residual is the key: no mask is stored
    typed, raw = ops.dropout(x, jax.random.key(3), 0.4), ops.dropout(x, jax.random.PRNGKey(3), 0.4)
    np.testing.assert_array_equal(typed, raw)
    assert not np.array_equal(raw, ops.dropout(x, jax.random.PRNGKey(4), 0.4))


def test_dropout_rate_zero_is_the_identity():
    x, key = jnp.arange(6.0).reshape(2, 3), jax.random.PRNGKey(0)
    np.testing.assert_array_equal(ops.dropout(x, key, 0.0), x)
    g = jnp.asarray(np.random.default_rng(0).normal(size=(2, 3)))
    np.testing.assert_array_equal(jax.vjp(lambda x: ops.dropout(x, key, 0.0), x)[1](g)[0], g)


@pytest.mark.parametrize("rate", [0.1, 0.5, 0.8])
def test_dropout_keeps_the_expectation(rate):
    """Inverted dropout: a fraction 1 - rate survives, scaled by 1 / (1 - rate), so E[y] = x."""
    x = jnp.full((200_000,), 2.0)
    y = jax.jit(ops.dropout, static_argnames="rate")(x, jax.random.PRNGKey(7), rate=rate)
    kept = float(jnp.mean(y != 0))
    sd = np.sqrt(rate * (1 - rate) / x.size)
    assert abs(kept - (1 - rate)) < 5 * sd
    assert abs(float(jnp.mean(y)) - 2.0) < 5 * 2.0 * sd / (1 - rate)
    np.testing.assert_allclose(np.unique(np.asarray(y)), [0.0, 2.0 / (1 - rate)], rtol=1e-12)


# -- conv2d's formulations ---------------------------------------------------------
def test_conv2d_auto_picks_the_gemm_formulation_on_cpu_for_few_channels_and_xla_convolutions_elsewhere():
    """``impl="auto"`` lowers to no convolution on CPU when there are at most 4 input channels per
    group (each formulation's values are checked by the op registry, which runs every example in
    each); with more channels and a kernel Winograd does not take, on GPUs and with ``"xla"`` it
    keeps XLA's convolutions."""

    def program(impl, platform, c_in=1, kernel=(3, 3)):
        x, w, b = jnp.ones((2, 6, 6, c_in)), jnp.ones((*kernel, c_in, 4)), jnp.zeros(4)

        def step(x, w, b):
            return jax.grad(lambda x, w: ops.conv2d(x, w, b, padding="SAME", impl=impl).sum(), argnums=(0, 1))(x, w)

        return jax.jit(step).trace(x, w, b).lower(lowering_platforms=(platform,)).as_text()

    assert "convolution" not in program("auto", "cpu") and "convolution" not in program("auto", "cpu", c_in=4)
    assert "convolution" not in program("gemm", "cuda") and "convolution" not in program("gemm", "cpu", c_in=8)
    assert "convolution" in program("auto", "cuda") and "convolution" in program("xla", "cpu")
    assert "convolution" in program("auto", "cpu", c_in=5, kernel=(2, 2))


def test_conv2d_auto_takes_winograd_on_cpu_for_a_3x3_stride_1_kernel():
    """With more than 4 input channels, a 3x3 kernel, stride 1, no dilation and one group, "auto" on
    CPU runs F(2x2, 3x3) (no convolution: 16 batched products of transformed tiles per batch
    slice); with a stride, another kernel or on GPUs, XLA's convolutions."""

    def program(platform, kernel=(3, 3), **params):
        x, w, b = jnp.ones((2, 6, 6, 8)), jnp.ones((*kernel, 8, 4)), jnp.zeros(4)
        step = jax.grad(lambda x, w: ops.conv2d(x, w, b, padding="SAME", **params).sum(), argnums=(0, 1))
        return jax.jit(step).trace(x, w).lower(lowering_platforms=(platform,)).as_text()

    assert "convolution" not in program("cpu") and "convolution" not in program("cpu", impl="winograd")
    assert "convolution" not in program("cuda", impl="winograd")
    assert "convolution" in program("cpu", stride=2) and "convolution" in program("cpu", dilation=2)
    assert "convolution" in program("cpu", kernel=(5, 5)) and "convolution" in program("cuda")


def test_conv2d_winograd_in_batch_slices_passes_every_check(monkeypatch):
    """Winograd runs the batch in slices of at most CHUNK_TILES tiles: shrunk to 8 here, so that
    a batch of 5 with 4 tiles per example (a 3x4 output, rounded up to whole 2x2 tiles) runs in
    3 slices of 2, the last with an added zero example, and every check of the op registry runs
    on that path."""
    from manualgrad import check
    from manualgrad.core import Example
    from manualgrad.ops import winograd

    monkeypatch.setattr(winograd, "CHUNK_TILES", 8)
    assert winograd._layout((5, 3, 4, 6), ((1, 1), (1, 1))) == ((3, 4), 2, 3)

    def examples(rng):
        return [Example((rng.normal(size=(5, 3, 4, 6)), rng.normal(size=(3, 3, 6, 3)), rng.normal(size=3)),
                        {"padding": "SAME", "impl": "winograd"})]

    reports = check.check_op(ops.conv2d, examples, dtypes=(jnp.float64,))
    assert reports and all(r.passed for r in reports), [r for r in reports if not r.passed]


def test_conv2d_weight_gradient_in_batch_slices_passes_every_check(monkeypatch):
    """On CPU with more than 4 input channels and a kernel Winograd does not take, "auto" sums
    w_bar's convolution over batch slices of WEIGHT_GRAD_CHUNK examples (64): shrunk to 2 here, so
    that a batch of 5 makes slices 2, 2, 1, and every check of the op registry runs on that path
    (shapes no other test traces)."""
    from manualgrad import check
    from manualgrad.core import Example
    from manualgrad.ops import conv

    monkeypatch.setattr(conv, "WEIGHT_GRAD_CHUNK", 2)

    def examples(rng):
        return [Example((rng.normal(size=(5, 5, 4, 6)), rng.normal(size=(3, 2, 6, 3)), rng.normal(size=3)),
                        {"padding": "SAME", "stride": (2, 1)}),
                Example((rng.normal(size=(5, 4, 5, 10)), rng.normal(size=(2, 2, 5, 4)), rng.normal(size=4)),
                        {"groups": 2, "dilation": 2})]

    reports = check.check_op(ops.conv2d, examples, dtypes=(jnp.float64,))
    assert reports and all(r.passed for r in reports), [r for r in reports if not r.passed]
    # the path taken: batch 5 in slices of 2 is three weight-gradient convolutions, plus the input
    # gradient's (the forward's output is not needed by grad of a sum, so it is dropped)
    x, w, b = jnp.ones((5, 7, 7, 6)), jnp.ones((2, 2, 6, 2)), jnp.zeros(2)  # 2x2: not Winograd
    step = jax.jit(jax.grad(lambda x, w: ops.conv2d(x, w, b, padding="SAME").sum(), argnums=(0, 1)))
    assert step.trace(x, w).lower(lowering_platforms=("cpu",)).as_text().count("stablehlo.convolution") == 4


@pytest.mark.parametrize("impl", ["auto", "gemm", "xla", "winograd"])
@pytest.mark.parametrize("c_in", [1, 8], ids=["few-channels", "many-channels"])
def test_conv2d_on_an_empty_batch_has_zero_weight_gradient(impl, c_in):
    x, w, b = jnp.zeros((0, 5, 5, c_in)), jnp.ones((3, 3, c_in, 2)), jnp.zeros(2)
    y, pullback = jax.vjp(lambda x, w, b: ops.conv2d(x, w, b, padding="SAME", impl=impl), x, w, b)
    x_bar, w_bar, b_bar = pullback(jnp.zeros_like(y))
    assert y.shape == (0, 5, 5, 2) and x_bar.shape == x.shape
    np.testing.assert_array_equal(w_bar, jnp.zeros_like(w))
    np.testing.assert_array_equal(b_bar, jnp.zeros_like(b))


# -- conv2d against PyTorch with PyTorch's weight layout ---------------------------------
@pytest.mark.skipif(not HAS_TORCH, reason="PyTorch (optional extra) is not installed")
@pytest.mark.parametrize(
    "params", [dict(stride=2, padding=1), dict(padding=2, dilation=2, groups=2), dict(stride=(2, 1), groups=4)],
    ids=["strided", "dilated-groups", "depthwise"],
)
def test_conv2d_equals_torch_with_its_weight_layout(params):
    """A PyTorch weight (C_out, C_in // groups, KH, KW) is w.transpose(3, 2, 0, 1) of manualgrad's HWIO w."""
    import torch
    import torch.nn.functional as F

    rng = np.random.default_rng(0)
    groups = params.get("groups", 1)
    x_nchw, weight, b = rng.normal(size=(2, 4, 7, 6)), rng.normal(size=(8, 4 // groups, 3, 3)), rng.normal(size=8)
    x, w = x_nchw.transpose(0, 2, 3, 1), weight.transpose(2, 3, 1, 0)  # NHWC, HWIO
    np.testing.assert_array_equal(w.transpose(3, 2, 0, 1), weight)

    ts = [torch.tensor(a, requires_grad=True) for a in (x_nchw, weight, b)]
    y_torch = F.conv2d(*ts, **params)
    g = rng.normal(size=tuple(y_torch.shape))
    y_torch.backward(torch.tensor(g))

    f = jax.jit(lambda x, w, b: jax.vjp(functools.partial(ops.conv2d, **params), x, w, b))
    y, pullback = f(x, w, b)
    x_bar, w_bar, b_bar = pullback(jnp.asarray(g.transpose(0, 2, 3, 1)))
    np.testing.assert_allclose(y, y_torch.detach().numpy().transpose(0, 2, 3, 1), rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(x_bar, ts[0].grad.numpy().transpose(0, 2, 3, 1), rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(np.asarray(w_bar).transpose(3, 2, 0, 1), ts[1].grad.numpy(), rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(b_bar, ts[2].grad.numpy(), rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("impl, kernel", [("winograd", (3, 3)), ("auto", (2, 2))], ids=["winograd", "xla-on-cpu"])
def test_conv2d_weight_gradient_over_batch_slices_adds_them_in_float32(monkeypatch, impl, kernel):
    """A bfloat16 w_bar summed over many batch slices (Winograd's, or the CPU xla path's weight-gradient
    convolutions: "auto" on CPU with a 2x2 kernel) is as accurate as the one-slice w_bar: the slices' partial sums are added in float32,
    not rounded to bfloat16 after each slice."""
    from manualgrad.ops import conv, winograd

    rng = np.random.default_rng(0)
    x, w, b = rng.normal(size=(64, 6, 6, 8)), rng.normal(size=(*kernel, 8, 4)), np.zeros(4)
    g = rng.normal(size=(64, 6, 6, 4))
    exact = jax.vjp(lambda w: ops.conv2d(jnp.asarray(x, jnp.float32), w, jnp.asarray(b, jnp.float32),
                                         padding="SAME", impl="xla"), jnp.asarray(w, jnp.float32))[1](
        jnp.asarray(g, jnp.float32))[0]

    def error(slices_of: int) -> float:
        monkeypatch.setattr(winograd, "CHUNK_TILES", 9 * slices_of)
        monkeypatch.setattr(conv, "WEIGHT_GRAD_CHUNK", slices_of)
        xb, wb, bb = (jnp.asarray(a, jnp.bfloat16) for a in (x, w, b))
        pullback = jax.vjp(lambda w: ops.conv2d(xb, w, bb, padding="SAME", impl=impl), wb)[1]
        w_bar = pullback(jnp.asarray(g, jnp.bfloat16))[0]
        assert w_bar.dtype == jnp.bfloat16
        return float(jnp.max(jnp.abs(w_bar.astype(jnp.float32) - exact)) / jnp.max(jnp.abs(exact)))

    one_slice, many = error(64), error(1)  # 1 slice of 64 examples, 64 slices of 1
    assert many <= 2 * one_slice + 2e-3, (many, one_slice)
