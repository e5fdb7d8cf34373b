"""The output layer and softmax cross-entropy as one op that never holds the (..., V) logits.

For a language model with a real vocabulary the logits ``x @ w + b`` are the largest array of a
training step (8192 positions x 32768 tokens is 1 GiB in float32), and ``jax.grad`` of
``softmax_cross_entropy(ops.linear(x, w, b), labels)`` keeps them and their gradient.
[linear_softmax_cross_entropy][manualgrad.losses.linear_softmax_cross_entropy] computes the same
loss and its gradients a block of rows at a time (Liger-Kernel's fused linear cross-entropy; Cut
Cross-Entropy, Wijmans et al. 2024, recomputes instead: see the op's docstring for why this one
does not).

[head_cross_entropy][manualgrad.losses.head_cross_entropy] is the same op for a model whose last
layer is [manualgrad.nn.LinearCrossEntropyHead][manualgrad.nn.LinearCrossEntropyHead]: that layer
outputs the triple ``(x, w, b)`` (its input and its own params) and leaves the product to the
loss, so the loss keeps the ``loss(prediction, target)`` form that ``train.fit``,
``backprop.value_and_grad`` and ``check.check_model`` call. Both are re-exported by
[manualgrad.losses][manualgrad.losses].
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from manualgrad.core import Example, defop
from manualgrad.errors import blame, describe, fail, positive_int, same_dtype

__all__ = ["linear_softmax_cross_entropy", "head_cross_entropy", "CHUNK"]

_WHERE = "manualgrad.losses.linear_softmax_cross_entropy"
_HEAD = "manualgrad.losses.head_cross_entropy"

#: rows per block: a block's (CHUNK, V) logits are the op's largest temporary (32 MiB at V = 32768
#: in float32); on a 2-core CPU 256 was as fast as 1024 (see experiments/benchmark_lmhead.py)
CHUNK = 256


def _check(x: jax.Array, w: jax.Array, b: jax.Array, labels: jax.Array, chunk: int = CHUNK) -> None:
    positive_int(_WHERE, "chunk", chunk)
    if jnp.ndim(x) < 1:
        fail(_WHERE, f"{describe('x', x)}: x needs a feature axis, shape (..., D)")
    d = np.shape(x)[-1]
    if jnp.ndim(w) != 2 or np.shape(w)[0] != d:
        fail(_WHERE, f"{describe('w', w)} must be (D, V) with D={d}, the last axis of {describe('x', x)}")
    v = np.shape(w)[1]
    if np.shape(b) != (v,):
        fail(_WHERE, f"{describe('b', b)} must be (V,)=({v},), one bias per column of {describe('w', w)}")
    same_dtype(_WHERE, x=x, w=w, b=b)
    if not jnp.issubdtype(jnp.result_type(labels), jnp.integer):
        fail(_WHERE, f"{describe('labels', labels)}: labels must be integer class ids (for probabilities use "
                     "softmax_cross_entropy(ops.linear(x, w, b), labels))")
    if np.shape(labels) != np.shape(x)[:-1]:
        fail(_WHERE, f"{describe('labels', labels)} must have shape x.shape[:-1]={np.shape(x)[:-1]}, one class "
                     f"id per row of {describe('x', x)}")
    if not isinstance(labels, jax.core.Tracer):
        bad = np.asarray(labels)
        bad = bad[(bad < 0) | (bad >= v)]
        if bad.size:
            fail(_WHERE, f"class ids must lie in [0, {v}), got {bad[:5].tolist()}")


def _examples(rng: np.random.Generator) -> list[Example]:
    def case(lead: tuple, d: int, v: int, chunk: int) -> Example:
        args = rng.normal(size=(*lead, d)), rng.normal(size=(d, v)), rng.normal(size=(v,)), rng.integers(0, v, lead)
        return Example(args, {"chunk": chunk})

    # 5 rows in blocks of 2 (the last one padded); leading axes (2, 3): 6 rows in blocks of 4
    return [case((5,), 3, 6, 2), case((2, 3), 4, 7, 4)]


@defop(name=_WHERE, static=("chunk",), constant=("labels",), check=_check, examples=_examples)
def linear_softmax_cross_entropy(
    x: jax.Array, w: jax.Array, b: jax.Array, labels: jax.Array, chunk: int = CHUNK
) -> jax.Array:
    r"""``softmax_cross_entropy(x @ w + b, labels)`` without the logits: ``x`` (..., D), ``w`` (D, V),
    ``b`` (V,), ``labels`` integer class ids of shape ``x.shape[:-1]`` (a constant argument); the mean
    runs over every leading position. ``chunk`` (static): rows per block.

    Out-of-range ids behave as in
    [manualgrad.losses.softmax_cross_entropy][manualgrad.losses.softmax_cross_entropy]: concrete
    labels outside ``[0, V)`` are a ``ValueError``; under ``jit`` their rows' loss and gradient are
    NaN (and so are the loss, $\bar{w}$ and $\bar{b}$, which sum over every row).

    Derivation. Per row, $z = x w + b$ and $l = \operatorname{logsumexp}(z) - z_y$, evaluated as

    $$
    l = \log \sum_j \exp(z_j - m) - (z_y - m), \qquad m = \max(z),
    $$

    so logits of $10^4$ give a finite loss; the mean is $L = \frac{1}{n} \sum_{\text{rows}} l$. As
    in ``softmax_cross_entropy``,

    $$
    \frac{\partial L}{\partial z} = d = \frac{p - \operatorname{onehot}(y)}{n}, \qquad
    p = \operatorname{softmax}(z) = \frac{\exp(z - m)}{\sum_j \exp(z_j - m)} .
    $$

    Then the linear layer's rule, with upstream $g$:

    * $\bar{x} = g\, d\, w^\top$, row by row: a block of rows needs only its own $d$;
    * $\bar{w} = g\, x^\top d = g \sum_B x_B^\top d_B$ (a sum over the blocks $B$) and
      $\bar{b} = g \sum_{\text{rows}} d$: sums over blocks, accumulated as the blocks go
      (``lax.scan`` carries).

    Memory and time. $d$ for a block of ``chunk`` rows needs that block's logits and the full
    vocabulary (its softmax), so the blocks are of rows and no (n, V) array exists. Where the
    gradient is formed is a choice between two published schemes: Cut Cross-Entropy keeps ``x, w,
    b, labels`` and each row's log-sum-exp and recomputes every block's logits in the backward
    (four (n, D, V) products: $z$ twice, $\bar{x}$, $\bar{w}$); Liger-Kernel forms $d$ and the
    three gradients for $g = 1$ in the forward pass and the backward scales them by $g$ (three
    products, as many as the unfused composition). Both hold O(chunk x V) at a time. On a 2-core
    CPU at n = 8192, D = 256, V = 8192 the recomputing backward took 1.35-1.6x the time of
    ``jax.grad`` of the composition and the forward-gradient scheme 0.9x, so this op keeps the
    gradients: residuals $\bar{x}, \bar{w}, \bar{b}$ for $g = 1$ (the sizes of ``x, w, b``), and
    ``bwd`` is $(g\, \bar{x},\ g\, \bar{w},\ g\, \bar{b})$. Under ``jit`` a call that is not
    differentiated drops the gradient work (XLA removes the unused scan outputs), so evaluation
    costs one product.
    """
    z = x @ w + b
    s = z - lax.stop_gradient(jnp.max(z, axis=-1, keepdims=True))
    log_p = s - jnp.log(jnp.sum(jnp.exp(s), axis=-1, keepdims=True))
    labels = lax.stop_gradient(labels)
    valid = (labels >= 0) & (labels < w.shape[1])
    picked = jnp.take_along_axis(log_p, jnp.where(valid, labels, 0)[..., None], axis=-1)[..., 0]
    return jnp.mean(jnp.where(valid, -picked, jnp.nan))


def _block(x_b: jax.Array, w: jax.Array, b: jax.Array, y_b: jax.Array) -> tuple[jax.Array, jax.Array]:
    """One block's per-row losses ``(c,)`` and ``p - onehot(y)`` ``(c, V)``; NaN rows for ids outside [0, V)."""
    z = x_b @ w + b
    s = z - jnp.max(z, axis=-1, keepdims=True)
    e = jnp.exp(s)
    total = jnp.sum(e, axis=-1, keepdims=True)
    onehot = y_b[:, None] == jnp.arange(w.shape[1])
    valid = (y_b >= 0) & (y_b < w.shape[1])
    loss = jnp.log(total[:, 0]) - jnp.sum(jnp.where(onehot, s, 0.0), axis=-1)
    p = e / total
    return jnp.where(valid, loss, jnp.nan), jnp.where(valid[:, None], jnp.where(onehot, p - 1.0, p), jnp.nan)


def linear_softmax_cross_entropy_fwd(
    x: jax.Array, w: jax.Array, b: jax.Array, labels: jax.Array, chunk: int = CHUNK
) -> tuple[jax.Array, tuple]:
    rows = x.reshape(-1, x.shape[-1])
    n = rows.shape[0]
    c = min(chunk, n)
    k = -(-n // c)  # blocks; the last one is padded with zero rows of label 0, which are left out
    x_blocks = jnp.pad(rows, ((0, k * c - n), (0, 0))).reshape(k, c, -1)
    y_blocks = jnp.pad(labels.reshape(-1), (0, k * c - n)).reshape(k, c)
    real = (jnp.arange(k * c) < n).reshape(k, c)
    dtype = jnp.result_type(x, w, b)

    def one_block(carry, blk):
        w_bar, b_bar, total = carry
        x_b, x_b_t, y_b, real_b = blk
        loss, d = _block(x_b, w, b, y_b)
        d = jnp.where(real_b[:, None], d, 0.0) / n
        carry = (w_bar + x_b_t @ d, b_bar + jnp.sum(d, axis=0), total + jnp.sum(jnp.where(real_b, loss, 0.0)))
        return carry, d @ w.T

    init = (jnp.zeros(w.shape, dtype), jnp.zeros(b.shape, dtype), jnp.zeros((), dtype))
    # each block also as (D, c), stored so: XLA's CPU dot is 3x slower on x_b.T (a transposed view)
    xs = (x_blocks, jnp.swapaxes(x_blocks, 1, 2), y_blocks, real)
    (w_bar, b_bar, total), x_bar = lax.scan(one_block, init, xs)
    x_bar = x_bar.reshape(k * c, -1)[:n].reshape(x.shape)
    return total / n, (x_bar, w_bar, b_bar)


def linear_softmax_cross_entropy_bwd(res: tuple, g: jax.Array, chunk: int = CHUNK) -> tuple:
    x_bar, w_bar, b_bar = res
    return g * x_bar, g * w_bar, g * b_bar, None


linear_softmax_cross_entropy.defvjp(linear_softmax_cross_entropy_fwd, linear_softmax_cross_entropy_bwd)


# -- the same loss on a LinearCrossEntropyHead's output --------------------------------------------
def _check_head(head: tuple, labels: jax.Array, chunk: int = CHUNK) -> None:
    if not isinstance(head, tuple) or len(head) != 3:
        fail(_HEAD, f"head must be the triple (x, w, b) that nn.LinearCrossEntropyHead outputs, got "
                    f"{type(head).__name__}{f' of length {len(head)}' if isinstance(head, tuple) else ''}")
    with blame(_HEAD):
        _check(*head, labels, chunk)


def _head_examples(rng: np.random.Generator) -> list[Example]:
    x, w, b, labels = rng.normal(size=(5, 3)), rng.normal(size=(3, 4)), rng.normal(size=(4,)), rng.integers(0, 4, 5)
    return [Example(((x, w, b), labels), {"chunk": 2})]


@defop(name=_HEAD, static=("chunk",), constant=("labels",), check=_check_head, examples=_head_examples)
def head_cross_entropy(head: tuple, labels: jax.Array, chunk: int = CHUNK) -> jax.Array:
    r"""[linear_softmax_cross_entropy][manualgrad.losses.linear_softmax_cross_entropy]
    ``(x, w, b, labels, chunk)`` of ``head = (x, w, b)``, the output of
    [manualgrad.nn.LinearCrossEntropyHead][manualgrad.nn.LinearCrossEntropyHead]: a loss of the
    ``(prediction, target)`` form for ``fit``, the explicit pass and ``check_model``.

    Backward: that op's, $\overline{\mathrm{head}} = (\bar{x}, \bar{w}, \bar{b})$; the head layer
    hands $\bar{x}$ on as its input's cotangent and $\bar{w}, \bar{b}$ as its params'.
    """
    return linear_softmax_cross_entropy.reference(*head, labels)


def head_cross_entropy_fwd(head: tuple, labels: jax.Array, chunk: int = CHUNK) -> tuple[jax.Array, tuple]:
    return linear_softmax_cross_entropy_fwd(*head, labels, chunk=chunk)


def head_cross_entropy_bwd(res: tuple, g: jax.Array, chunk: int = CHUNK) -> tuple:
    *head_bar, _ = linear_softmax_cross_entropy_bwd(res, g)
    return tuple(head_bar), None


head_cross_entropy.defvjp(head_cross_entropy_fwd, head_cross_entropy_bwd)
