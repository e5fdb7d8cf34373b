"""Every op pinned to an independent implementation: its forward (the custom_vjp call, its
``fwd`` and its ``reference``) and its VJP against ``jax.nn``/``optax``/``jax.numpy`` twins,
and against ``torch.autograd`` where PyTorch has the op, in float64 (~1e-12).

The registry checks compare each op with its own reference; a mistake made in both (a wrong
constant in the reference and the backward together) only shows against a twin written by
someone else."""

import functools
import importlib.util
import math

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from manualgrad import ops
from manualgrad.check import cast
from manualgrad.core import REGISTRY, defop
from tests.test_recurrent import TWINS as RECURRENT_TWINS

HAS_TORCH = importlib.util.find_spec("torch") is not None


def _ce(logits, labels):
    if jnp.issubdtype(labels.dtype, jnp.integer):
        return jnp.mean(optax.softmax_cross_entropy_with_integer_labels(logits, labels))
    return jnp.mean(optax.softmax_cross_entropy(logits, labels))


def _linear(x, w, b):
    return jnp.einsum("...i,ij->...j", x, w, precision="highest") + b


JAX_TWINS = {
    "manualgrad.ops.linear": _linear,
    "manualgrad.ops.identity": lambda x: jnp.array(x),
    "manualgrad.ops.relu": jax.nn.relu,
    # jax.nn.leaky_relu's derivative at exactly 0 is 1; PyTorch's and manualgrad's is the slope
    "manualgrad.ops.leaky_relu": lambda x, negative_slope: negative_slope * x + (1 - negative_slope) * jax.nn.relu(x),
    "manualgrad.ops.scaled_relu": lambda x, scale: scale * jax.nn.relu(x),
    "manualgrad.ops.sigmoid": jax.nn.sigmoid,
    "manualgrad.ops.tanh": lambda x: 2 * jax.nn.sigmoid(2 * x) - 1,
    "manualgrad.ops.softplus": jax.nn.softplus,
    "manualgrad.ops.gelu": lambda x, approximate=False: jax.nn.gelu(x, approximate=approximate),
    "manualgrad.ops.square": jnp.square,
    "manualgrad.ops.softmax": lambda x, axis: jax.nn.softmax(x, axis=axis),
    "manualgrad.ops.log_softmax": lambda x, axis: jax.nn.log_softmax(x, axis=axis),
    "manualgrad.ops.flatten": lambda x: x.reshape(x.shape[0], math.prod(x.shape[1:])),
    "manualgrad.losses.mse": lambda p, t: jnp.mean(optax.squared_error(p, t)),
    "manualgrad.losses.sse": lambda p, t: jnp.sum(optax.squared_error(p, t)),
    "0.5*manualgrad.losses.mse": lambda p, t: 0.5 * jnp.mean(optax.squared_error(p, t)),
    "manualgrad.losses.softmax_cross_entropy": _ce,
    "manualgrad.losses.binary_cross_entropy_with_logits": lambda z, t: jnp.mean(optax.sigmoid_binary_cross_entropy(z, t)),
    "manualgrad.losses.linear_softmax_cross_entropy": lambda x, w, b, labels, chunk: _ce(_linear(x, w, b), labels),
    "manualgrad.losses.head_cross_entropy": lambda head, labels, chunk: _ce(_linear(*head), labels),
    "multitask(manualgrad.losses.sse, manualgrad.losses.softmax_cross_entropy)":
        lambda p, t: jnp.sum(optax.squared_error(p[0], t[0])) + _ce(p[1], t[1]),
    "manualgrad.ops.conv2d": lambda *a, impl="auto", **k: _conv_by_patches(*a, **k),  # every impl, one twin
    "manualgrad.ops.max_pool2d": lambda x, **k: _pool_by_slices(x, jnp.max, -jnp.inf, **k),
    "manualgrad.ops.avg_pool2d": lambda x, **k: _pool_by_slices(x, jnp.mean, 0.0, **k),
    "manualgrad.ops.batch_norm": lambda x, gamma, beta, eps=1e-5:
        jax.nn.standardize(x, axis=tuple(range(x.ndim - 1)), epsilon=eps) * gamma + beta,
    "manualgrad.ops.layer_norm": lambda x, gamma, beta, eps=1e-5:
        jax.nn.standardize(x, axis=-1, epsilon=eps) * gamma + beta,
    "manualgrad.ops.dropout": lambda x, key, rate: x * _dropout_scale(key, rate, x.shape),
    "manualgrad.ops.embedding": lambda ids, table: jax.nn.one_hot(ids, table.shape[0], dtype=table.dtype) @ table,
    "manualgrad.ops.add": jnp.add,
    "manualgrad.ops.split_heads": lambda x, heads: jnp.einsum("...thd->...htd", x.reshape(*x.shape[:-1], heads, -1)),
    "manualgrad.ops.merge_heads": lambda x: jnp.einsum("...htd->...thd", x).reshape(*x.shape[:-3], x.shape[-2], -1),
    "manualgrad.ops.attention": lambda q, k, v, mask=None, causal=False, scale=None, block=None:
        _attention_by_softmax(q, k, v, mask, causal, scale),
    "manualgrad.ops.batch_norm_inference": lambda x, gamma, beta, mean, var, eps=1e-5:
        jax.nn.standardize(x, mean=mean, variance=var, epsilon=eps) * gamma + beta,
    "manualgrad.ops.concat": lambda xs, axis=-1: _concat_by_padding(xs, axis),
    **RECURRENT_TWINS,  # plain lax.scans that gather each row's steps by index
}


def torch_twins():
    import torch
    import torch.nn.functional as F

    def ce(logits, labels):
        c = logits.shape[-1]
        if labels.dtype in (torch.int32, torch.int64):
            return F.cross_entropy(logits.reshape(-1, c), labels.reshape(-1).long())
        return F.cross_entropy(logits.reshape(-1, c), labels.reshape(-1, c))  # probabilities, any sum

    return {
        "manualgrad.ops.linear": lambda x, w, b: F.linear(x, w.T, b),
        "manualgrad.ops.relu": torch.relu,
        "manualgrad.ops.leaky_relu": lambda x, negative_slope: F.leaky_relu(x, negative_slope),
        "manualgrad.ops.scaled_relu": lambda x, scale: scale * torch.relu(x),
        "manualgrad.ops.sigmoid": torch.sigmoid,
        "manualgrad.ops.tanh": torch.tanh,
        "manualgrad.ops.softplus": lambda x: F.softplus(x, threshold=50),
        "manualgrad.ops.gelu": lambda x, approximate=False: F.gelu(x, approximate="tanh" if approximate else "none"),
        "manualgrad.ops.square": torch.square,
        "manualgrad.ops.softmax": lambda x, axis: torch.softmax(x, dim=axis),
        "manualgrad.ops.log_softmax": lambda x, axis: torch.log_softmax(x, dim=axis),
        "manualgrad.ops.flatten": lambda x: torch.flatten(x, 1) if x.dim() > 1 else x[:, None],
        "manualgrad.losses.mse": F.mse_loss,
        "manualgrad.losses.sse": lambda p, t: F.mse_loss(p, t, reduction="sum"),
        "0.5*manualgrad.losses.mse": lambda p, t: 0.5 * F.mse_loss(p, t),
        "manualgrad.losses.softmax_cross_entropy": ce,
        "manualgrad.losses.binary_cross_entropy_with_logits": F.binary_cross_entropy_with_logits,
        "manualgrad.losses.linear_softmax_cross_entropy": lambda x, w, b, labels, chunk: ce(F.linear(x, w.T, b), labels),
        "manualgrad.losses.head_cross_entropy": lambda head, labels, chunk: ce(F.linear(head[0], head[1].T, head[2]), labels),
        "multitask(manualgrad.losses.sse, manualgrad.losses.softmax_cross_entropy)":
            lambda p, t: F.mse_loss(p[0], t[0], reduction="sum") + ce(p[1], t[1]),
        "manualgrad.ops.conv2d": torch_conv2d,
        "manualgrad.ops.max_pool2d": lambda x, window, stride=None, padding=0:
            F.max_pool2d(x.permute(0, 3, 1, 2), window, stride, padding).permute(0, 2, 3, 1),
        "manualgrad.ops.avg_pool2d": lambda x, window, stride=None, padding=0:
            F.avg_pool2d(x.permute(0, 3, 1, 2), window, stride, padding, count_include_pad=True).permute(0, 2, 3, 1),
        "manualgrad.ops.batch_norm": lambda x, gamma, beta, eps=1e-5:
            F.batch_norm(x.movedim(-1, 1), None, None, gamma, beta, training=True, eps=eps).movedim(1, -1),
        "manualgrad.ops.layer_norm": lambda x, gamma, beta, eps=1e-5: F.layer_norm(x, x.shape[-1:], gamma, beta, eps),
        "manualgrad.ops.embedding": lambda ids, table: torch.nn.functional.embedding(ids, table),
        "manualgrad.ops.add": torch.add,
        "manualgrad.ops.split_heads": lambda x, heads: x.unflatten(-1, (heads, -1)).transpose(-3, -2),
        "manualgrad.ops.merge_heads": lambda x: x.transpose(-3, -2).flatten(-2),
        "manualgrad.ops.attention": torch_attention,
        "manualgrad.ops.dropout": lambda x, key, rate:
            x * torch.tensor(np.asarray(_dropout_scale(jnp.asarray(key.numpy()), rate, tuple(x.shape)))),
        "manualgrad.ops.batch_norm_inference": lambda x, gamma, beta, mean, var, eps=1e-5:
            F.batch_norm(x.movedim(-1, 1), mean, var, gamma, beta, training=False, eps=eps).movedim(1, -1),
        "manualgrad.ops.concat": lambda xs, axis=-1: torch.cat(xs, dim=axis),
    }


NAMES = sorted(n for n in REGISTRY if n in JAX_TWINS or n.startswith("manualgrad."))
RTOL = 1e-12


def normwise(got, want):
    got, want = np.asarray(got, np.float64), np.asarray(want, np.float64)
    return float(np.max(np.abs(got - want), initial=0.0)), float(np.max(np.abs(want), initial=0.0))


def assert_close(what, got, want, rtol=RTOL):
    for g, w in zip(jax.tree_util.tree_leaves(got), jax.tree_util.tree_leaves(want)):
        assert np.shape(g) == np.shape(w), what
        err, scale = normwise(g, w)
        assert err <= rtol * scale + 1e-300, f"{what}: max_abs {err:.3e} vs scale {scale:.3e}"


def twin_errors(op, twin, ex, rng):
    """Compare op (call, fwd, reference) and its VJP with ``twin`` on one example (one compiled
    program: eager dispatch would compile every small op of both sides separately)."""
    args = cast(ex.args, jnp.float64)
    call = lambda f: lambda *a: f(*a, **ex.params)
    out = jax.eval_shape(call(twin), *args)
    g = jax.tree_util.tree_map(lambda a: jnp.asarray(rng.normal(size=a.shape)), out)

    @jax.jit
    def both(args, g):
        want, twin_pullback = jax.vjp(call(twin), *args)
        got, pullback = jax.vjp(call(op), *args)
        forwards = {"custom_vjp call": got, "fwd": op.fwd(*args, **ex.params)[0], "reference": call(op.reference)(*args)}
        return want, forwards, pullback(g), twin_pullback(g)

    want, forwards, got_bars, want_bars = both(args, g)
    for which, y in forwards.items():
        assert_close(f"{op.name} forward ({which})", y, want)
    for name, got, expected in zip(op.arg_names, got_bars, want_bars):
        if name not in op.constant:
            assert_close(f"{op.name} {name}_bar", got, expected)


def test_every_library_op_has_a_twin():
    assert set(NAMES) == set(JAX_TWINS), set(NAMES) ^ set(JAX_TWINS)


@pytest.mark.parametrize("name", NAMES)
def test_op_equals_its_jax_twin(name):
    rng = np.random.default_rng(0)
    for ex in REGISTRY[name].examples(rng):
        twin_errors(REGISTRY[name].op, JAX_TWINS[name], ex, rng)


# identity: PyTorch has no such op; the recurrent ops: against nn.RNN/LSTM/GRU and their cells, packed
# sequences and both directions, in tests/test_recurrent.py
NOT_HERE = {"manualgrad.ops.identity", *RECURRENT_TWINS}


@pytest.mark.skipif(not HAS_TORCH, reason="PyTorch (optional extra) is not installed")
@pytest.mark.parametrize("name", [n for n in NAMES if n not in NOT_HERE])
def test_op_equals_torch_autograd(name):
    import torch

    twin = torch_twins()[name]
    op = REGISTRY[name].op
    rng = np.random.default_rng(0)
    for ex in REGISTRY[name].examples(rng):
        args = cast(ex.args, jnp.float64)
        diff = [n not in op.constant for n in op.arg_names]
        t_args = jax.tree_util.tree_map(lambda a: torch.tensor(np.asarray(a)), args)
        for d, a in zip(diff, t_args):
            for leaf in jax.tree_util.tree_leaves(a, is_leaf=lambda v: isinstance(v, torch.Tensor)):
                leaf.requires_grad_(d and leaf.is_floating_point())
        y = twin(*t_args, **ex.params)
        g = rng.normal(size=tuple(y.shape))
        y.backward(torch.tensor(g))
        # the op's value and VJP as one compiled program (eagerly, each small op compiles on its own)
        value, got_bars = jax.jit(lambda a, g: (lambda y, pullback: (y, pullback(g)))(
            *jax.vjp(lambda *a: op(*a, **ex.params), *a)))(args, jnp.asarray(g))
        assert_close(f"{name} forward vs torch", value, y.detach().numpy())
        for n, d, got, t in zip(op.arg_names, diff, got_bars, t_args):
            if d:
                leaves = jax.tree_util.tree_leaves(t, is_leaf=lambda v: isinstance(v, torch.Tensor))
                assert_close(f"{name} {n}_bar vs torch", got, [leaf.grad.numpy() for leaf in leaves] if isinstance(got, tuple) else leaves[0].grad.numpy())


def test_a_wrong_constant_in_reference_and_backward_together_is_caught():
    """The audit's planted bug: gelu's 0.044715 turned into 0.04715 everywhere in a copy.
    The op agrees with its own reference, so only the twin can tell."""
    from manualgrad.check import check_vjp

    @defop(name="test_twins.gelu_tanh")
    def bad_gelu(x):
        """tanh GELU with a wrong constant; ``x_bar = g * dy/dx``."""
        return 0.5 * x * (1.0 + jnp.tanh(math.sqrt(2 / math.pi) * (x + 0.04715 * x**3)))

    def bwd(x, g):
        t = jnp.tanh(math.sqrt(2 / math.pi) * (x + 0.04715 * x**3))
        return (g * (0.5 * (1 + t) + 0.5 * x * (1 - t * t) * math.sqrt(2 / math.pi) * (1 + 3 * 0.04715 * x * x)),)

    bad_gelu.defvjp(lambda x: (bad_gelu.reference(x), x), bwd)
    ex = REGISTRY["manualgrad.ops.gelu"].examples(np.random.default_rng(0))[-1]  # an approximate=True example
    assert ex.params == {"approximate": True}
    assert check_vjp(bad_gelu, *cast(ex.args, jnp.float64)).passed  # its own reference agrees...
    with pytest.raises(AssertionError, match="forward"):
        twin_errors(bad_gelu, lambda x: jax.nn.gelu(x, approximate=True), type(ex)(ex.args), np.random.default_rng(0))


def test_soft_labels_that_do_not_sum_to_one_catch_a_dropped_term():
    """The audit's planted bug: cross-entropy's soft-label backward without ``p * sum(y)``."""
    from manualgrad import losses
    from manualgrad.check import check_op

    ce = losses.softmax_cross_entropy

    @defop(name="test_twins.ce", constant=("labels",))
    def dropped(logits, labels):
        """Cross-entropy; ``logits_bar = g (p sum(y) - y) / m``."""
        return ce.reference(logits, labels)

    def fwd(logits, labels):
        p = jax.nn.softmax(logits)
        y = labels if jnp.issubdtype(labels.dtype, jnp.floating) else jax.nn.one_hot(labels, logits.shape[-1], dtype=logits.dtype)
        return ce.reference(logits, labels), (p - y) / (p.size // p.shape[-1])

    dropped.defvjp(fwd, lambda d, g: (g * d, None))
    def unnormalised(rng):  # the registry's examples whose soft labels do not sum to one
        return [ex for ex in REGISTRY[ce.name].examples(rng) if np.issubdtype(np.asarray(ex.args[1]).dtype, np.floating)
                and not np.allclose(np.sum(ex.args[1], -1), 1)]

    assert unnormalised(np.random.default_rng(0))  # the registry has such labels
    assert not all(r.passed for r in check_op(dropped, unnormalised, dtypes=(jnp.float64,)))


# -- the vision ops' twins: written without lax.conv or lax.reduce_window -------------------------
def _pair(v):
    return (v, v) if isinstance(v, int) else tuple(v)


def _conv_pads(padding, size, extent, stride):
    """((top, bottom), (left, right)); "SAME" as TensorFlow defines it: ceil(size / stride) outputs."""
    if padding == "VALID":
        return ((0, 0), (0, 0))
    if padding == "SAME":
        pads = []
        for n, e, s in zip(size, extent, stride):
            total = max((-(-n // s) - 1) * s + e - n, 0)
            pads.append((total // 2, total - total // 2))
        return tuple(pads)
    return ((padding, padding),) * 2 if isinstance(padding, int) else padding


@functools.partial(jax.jit, static_argnames=("stride", "padding", "dilation", "groups"))  # one compile, not a loop of them
def _conv_by_patches(x, w, b, stride=1, padding="VALID", dilation=1, groups=1):
    """Sum over the kernel's taps of a strided slice of the padded input times that tap's matrix."""
    (sh, sw), (dh, dw) = _pair(stride), _pair(dilation)
    kh, kw, c_group, c_out = w.shape
    pads = _conv_pads(padding, x.shape[1:3], ((kh - 1) * dh + 1, (kw - 1) * dw + 1), (sh, sw))
    xp = jnp.pad(x, ((0, 0), *pads, (0, 0)))
    ho = (xp.shape[1] - (kh - 1) * dh - 1) // sh + 1
    wo = (xp.shape[2] - (kw - 1) * dw - 1) // sw + 1
    y = 0.0
    for p in range(kh):
        for q in range(kw):
            patch = xp[:, p * dh : p * dh + (ho - 1) * sh + 1 : sh, q * dw : q * dw + (wo - 1) * sw + 1 : sw]
            patch = patch.reshape(*patch.shape[:3], groups, c_group)
            tap = w[p, q].reshape(c_group, groups, c_out // groups)
            y = y + jnp.einsum("nhwgc,cgk->nhwgk", patch, tap, precision="highest").reshape(*patch.shape[:3], c_out)
    return y + b


@functools.partial(jax.jit, static_argnames=("reduce", "fill", "window", "stride", "padding"))
def _pool_by_slices(x, reduce, fill, window, stride=None, padding=0):
    """``reduce`` over a stack of the window's strided slices of the padded input."""
    (kh, kw) = _pair(window)
    sh, sw = _pair(stride if stride is not None else window)
    xp = jnp.pad(x, ((0, 0), (padding, padding), (padding, padding), (0, 0)), constant_values=fill)
    ho, wo = (xp.shape[1] - kh) // sh + 1, (xp.shape[2] - kw) // sw + 1
    taps = [xp[:, p : p + (ho - 1) * sh + 1 : sh, q : q + (wo - 1) * sw + 1 : sw] for p in range(kh) for q in range(kw)]
    return reduce(jnp.stack(taps), axis=0)


def _attention_allowed(mask, causal, t_q, t_k, xp):
    """(allowed, rows that attend something, allowed with such rows opened to every key)."""
    allow = xp.ones((t_q, t_k), dtype=bool) if mask is None else mask
    if causal:
        allow = allow & (xp.arange(t_k)[None, :] <= xp.arange(t_q)[:, None])
    row = allow.any(-1, keepdims=True)
    return allow, row, allow | ~row


def _attention_by_softmax(q, k, v, mask, causal, scale):
    """jax.nn.softmax of the masked scores; a row that attends nothing is opened to every key (no
    NaN on any path) and its output zeroed: the op's documented convention."""
    _, row, opened = _attention_allowed(mask, causal, q.shape[-2], k.shape[-2], jnp)
    s = q @ jnp.swapaxes(k, -1, -2) * (1 / np.sqrt(q.shape[-1]) if scale is None else scale)
    return jnp.where(row, jax.nn.softmax(jnp.where(opened, s, -jnp.inf), axis=-1) @ v, 0.0)


def torch_attention(q, k, v, mask=None, causal=False, scale=None, block=None):
    """PyTorch's scaled_dot_product_attention with the same fully-masked-row convention."""
    import torch

    _, row, opened = _attention_allowed(mask, causal, q.shape[-2], k.shape[-2], torch)
    out = torch.nn.functional.scaled_dot_product_attention(q, k, v, attn_mask=opened, scale=scale)
    return torch.where(row, out, torch.zeros((), dtype=out.dtype))


def _concat_by_padding(xs, axis):
    """Each piece zero-padded out to its place along ``axis``, then all of them added."""
    axis = axis % xs[0].ndim
    sizes = [x.shape[axis] for x in xs]
    starts = np.cumsum([0] + sizes[:-1])
    return sum(jnp.pad(x, [(s, sum(sizes) - s - n) if i == axis else (0, 0) for i in range(x.ndim)])
               for x, s, n in zip(xs, starts, sizes))


def _dropout_scale(key, rate, shape):
    """``keep / (1 - rate)``, the mask drawn as uniform < 1 - rate (what bernoulli does) from the same key."""
    if rate == 0:
        return jnp.ones(shape)
    return (jax.random.uniform(key, shape) < 1 - rate) / (1 - rate)


def torch_conv2d(x, w, b, stride=1, padding="VALID", dilation=1, groups=1, impl="auto"):
    """PyTorch's conv2d on NCHW with its (C_out, C_in // groups, KH, KW) weight; padding made explicit (any impl)."""
    import torch.nn.functional as F

    kh, kw = w.shape[:2]
    (dh, dw) = _pair(dilation)
    (top, bottom), (left, right) = _conv_pads(padding, x.shape[1:3], ((kh - 1) * dh + 1, (kw - 1) * dw + 1), _pair(stride))
    xp = F.pad(x.permute(0, 3, 1, 2), (left, right, top, bottom))
    return F.conv2d(xp, w.permute(3, 2, 0, 1), b, stride, 0, dilation, groups).permute(0, 2, 3, 1)
