"""Softmax attention with a FlashAttention-style hand-written backward: O(block x T_k) memory.

``jax.grad`` of plain attention keeps the (T_q, T_k) probability matrix for the backward pass.
Here the forward keeps only q, k, v, the output and each query row's log-sum-exp, and the
backward recomputes the probabilities one block of queries at a time (Dao et al., 2022).
"""

from __future__ import annotations

import functools
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from manualgrad.core import Example, defop
from manualgrad.errors import describe, fail, positive_int, real_number, same_dtype

_WHERE = "manualgrad.ops.attention"


def _check_attention(
    q: jax.Array, k: jax.Array, v: jax.Array, mask: Any = None, causal: bool = False, scale: Any = None,
    block: int = 128,
) -> None:
    if jnp.ndim(q) < 2 or jnp.ndim(k) != jnp.ndim(q) or jnp.ndim(v) != jnp.ndim(q):
        fail(_WHERE, f"{describe('q', q)}, {describe('k', k)}, {describe('v', v)}: q, k and v must be "
                     "(..., T, d) with the same leading axes")
    if np.shape(q)[:-2] != np.shape(k)[:-2] or np.shape(k)[:-2] != np.shape(v)[:-2]:
        fail(_WHERE, f"leading axes differ: q.shape={np.shape(q)}, k.shape={np.shape(k)}, v.shape={np.shape(v)}")
    if np.shape(q)[-1] != np.shape(k)[-1]:
        fail(_WHERE, f"q.shape={np.shape(q)} and k.shape={np.shape(k)} must have the same feature size d")
    if np.shape(k)[-2] != np.shape(v)[-2]:
        fail(_WHERE, f"k.shape={np.shape(k)} and v.shape={np.shape(v)} must have the same length T_k")
    if mask is not None:
        target = (*np.shape(q)[:-1], np.shape(k)[-2])
        try:
            ok = np.broadcast_shapes(np.shape(mask), target) == target
        except ValueError:
            ok = False
        if not ok:
            fail(_WHERE, f"mask.shape={np.shape(mask)} does not broadcast to (..., T_q, T_k)={target}")
        if jnp.result_type(mask) != jnp.bool_:
            fail(_WHERE, f"{describe('mask', mask)}: mask must be boolean (True = attend)")
    same_dtype(_WHERE, q=q, k=k, v=v)
    if scale is not None:
        real_number(_WHERE, "scale", scale, " (a static parameter) or None for 1/sqrt(d)")
    positive_int(_WHERE, "block", block)


def _attention_examples(rng: np.random.Generator) -> list[Example]:
    def qkv(lead: tuple, tq: int, tk: int, d: int, dv: int) -> tuple:
        return rng.normal(size=(*lead, tq, d)), rng.normal(size=(*lead, tk, d)), rng.normal(size=(*lead, tk, dv))

    # row 1 of the mask attends nothing: its output and gradients are zero
    mask = np.ones((5, 4), bool)
    mask[1] = False
    mask[3, :2] = False
    return [
        Example(qkv((2,), 5, 4, 3, 2), {"block": 2}),  # 3 blocks: the loop, the last block padded
        # 2 blocks, unrolled; heads as a second leading axis, causal on top of a mask with a fully masked row
        Example((*qkv((1, 2), 5, 4, 3, 2), mask), {"causal": True, "scale": 0.7, "block": 3}),
        # the same with T_q <= block: still two unrolled blocks (3 and 2 queries), the first skipping a key
        Example((*qkv((1, 2), 5, 4, 3, 2), mask), {"causal": True, "scale": 0.7}),
        # the loop over equal blocks (more than UNROLL), causal with T_q > T_k
        Example(qkv((2,), 4, 3, 3, 2), {"causal": True, "block": 1}),
    ]


def _blocks(x: jax.Array, block: int) -> jax.Array:
    """``(..., T, c)`` as ``(n_blocks, ..., block, c)``, zero-padded to a whole number of blocks."""
    t = x.shape[-2]
    n = -(-t // block)
    x = jnp.pad(x, [(0, 0)] * (x.ndim - 2) + [(0, n * block - t), (0, 0)])
    return jnp.moveaxis(x.reshape(*x.shape[:-2], n, block, x.shape[-1]), -3, 0)


def _unblocks(xb: jax.Array, t: int) -> jax.Array:
    x = jnp.moveaxis(xb, 0, -3)
    return x.reshape(*x.shape[:-3], -1, x.shape[-1])[..., :t, :]


def _allowed(mask_b: Any, start: Any, rows: int, t_k: int, causal: bool) -> Any:
    """Which of ``t_k`` keys each of the ``rows`` queries from position ``start`` on attends: the
    mask's rows and, if causal, keys <= position."""
    if not causal:
        return mask_b
    before = jnp.arange(t_k)[None, :] <= start + jnp.arange(rows)[:, None]
    return before if mask_b is None else mask_b & before


def _spans(t_q: int, t_k: int, block: int, causal: bool) -> list[tuple[int, int, int]]:
    """The blocks of queries: ``(start, stop, keys)`` each, ``keys`` the number of leading keys
    the block can attend (causal: none past its last query). A causal sequence of at most
    ``UNROLL x block`` queries is cut into ``UNROLL`` equal blocks however short it is, so that
    the first skips the keys of the second (at T = 128, block = 128: two blocks of 64, a quarter
    of the products saved)."""
    size = -(-t_q // UNROLL) if causal and t_q <= UNROLL * block else block
    return [(a, min(a + size, t_q), min(a + size, t_k) if causal else t_k) for a in range(0, t_q, size)]


def _scores(q_b: jax.Array, k: jax.Array, allow: Any, scale: float) -> jax.Array:
    s = jnp.einsum("...qd,...kd->...qk", q_b, k) * scale
    return s if allow is None else jnp.where(allow, s, -jnp.inf)


def _scale(q: jax.Array, scale: Any) -> float:
    return float(1.0 / np.sqrt(np.shape(q)[-1])) if scale is None else float(scale)


def _mask_blocks(mask: Any, q: jax.Array, k: jax.Array, block: int) -> Any:
    if mask is None:
        return None
    full = jnp.broadcast_to(mask, (*q.shape[:-1], k.shape[-2]))
    return _blocks(full, block)


@defop(static=("causal", "scale", "block"), constant=("mask",), check=_check_attention, examples=_attention_examples)
def attention(
    q: jax.Array, k: jax.Array, v: jax.Array, mask: Any = None, causal: bool = False, scale: Any = None,
    block: int = 128,
) -> jax.Array:
    r"""Softmax attention $\operatorname{softmax}(c\, q k^\top)\, v$ over the last two axes;
    ``q`` (..., T_q, d), ``k`` (..., T_k, d), ``v`` (..., T_k, d_v), heads as leading axes.

    Args:
        q: the queries.
        k: the keys.
        v: the values.
        mask: boolean, broadcastable to (..., T_q, T_k), True = attend (a constant argument).
        causal: let query $i$ attend keys $j \le i$ only.
        scale: $c$; defaults to $1/\sqrt{d}$.
        block: (static) queries per block in the forward and backward passes.

    **Fully masked rows** (a query that may attend no key) give an output row of zeros and zero
    gradients, in the reference and in the hand-written rules alike (not NaN, not an error: a
    padded position in a batch of sequences is such a row, and its loss is usually masked too).

    Derivation. Per query row, $s = c\, q k^\top$ (masked entries $-\infty$),
    $p = \operatorname{softmax}(s)$, $o = p v$. With $g = \bar{o}$ (FlashAttention's $dO$):

    $$
    \bar{v} = p^\top g, \qquad \bar{p} = g v^\top \quad (dP).
    $$

    Softmax's VJP is $\bar{s}_j = p_j \left(\bar{p}_j - \sum_l p_l \bar{p}_l\right)$, and
    $\sum_l p_l \bar{p}_l = \sum_l p_l\, (g \cdot v_l) = g \cdot o$, so

    $$
    \bar{s} = p \odot (\bar{p} - D), \qquad D = \textstyle\sum_e g_e\, o_e
    $$

    ($dS = P \odot (dP - \operatorname{rowsum}(dO \odot O))$): one number per row, from the saved
    output, no $T_k$-long sum needed. Finally

    $$
    \bar{q} = c\, \bar{s} k, \qquad \bar{k} = c\, \bar{s}^\top q .
    $$

    Memory. The forward saves $q, k, v, o$ and each row's log-sum-exp
    $L = m + \log \sum_j e^{s_j - m}$ ($m$ the row max). The backward works on blocks of
    ``block`` queries: it recomputes $s$ for the block, $p = e^{s - L}$ exactly, and $\bar{s}$; it
    adds the block's share to $\bar{k}$ and $\bar{v}$ and emits its $\bar{q}$ rows. It forms the
    block transposed (keys by queries: $s^\top = c\, k q^\top$, $p^\top$, $\bar{s}^\top$), so that
    $\bar{k} = c\, \bar{s}^\top q$ and $\bar{v} = p^\top g$ are products that read both operands in
    place and only $\bar{q}$'s contracts a leading axis (forward + backward at T = 256, batch 32 x 4
    heads: 41 ms on CPU, against 48 with the block queries by keys). Peak extra
    memory is O(block x T_k) per head instead of O(T_q x T_k). Up to
    [UNROLL][manualgrad.ops.attention.UNROLL] blocks run without a loop or padding, and a causal
    block skips the keys after its last query; a causal sequence that short is cut into UNROLL
    equal blocks even when it would fit one (at T = 128, block 128: two of 64, a quarter of the
    products saved). More blocks run as a loop (``lax.map`` forward, ``lax.scan`` backward). The
    forward runs over the same blocks (each block's softmax needs all of T_k, so no online
    rescaling is needed across query blocks). On CPU both passes run over groups of the leading
    (batch x head) rows, each group's largest block of scores at most
    [GROUP_BYTES][manualgrad.ops.attention.GROUP_BYTES], so that the block's scores stay in cache
    between its products and elementwise passes. A fully masked row has $L = 0$ stored and every
    $s = -\infty$, so its $p$ is 0 and so are its output and cotangents.
    """
    c = _scale(q, scale)
    t_q, t_k = q.shape[-2], k.shape[-2]
    allow = mask
    if causal:
        tri = jnp.arange(t_k)[None, :] <= jnp.arange(t_q)[:, None]
        allow = tri if allow is None else allow & tri
    s = jnp.einsum("...qd,...kd->...qk", q, k) * c
    if allow is not None:
        s = jnp.where(allow, s, -jnp.inf)
    m = jnp.max(s, axis=-1, keepdims=True)
    e = jnp.exp(s - jnp.where(jnp.isfinite(m), m, 0.0))
    total = jnp.sum(e, axis=-1, keepdims=True)
    return jnp.einsum("...qk,...kd->...qd", e / jnp.where(total > 0, total, 1.0), v)


def _block_fwd(q_b: jax.Array, k: jax.Array, v: jax.Array, allow: Any, c: float) -> tuple[jax.Array, ...]:
    """One block of queries: its output rows and their log-sum-exp (a fully masked row gets
    ``L = 0``, so that the backward's ``p = exp(s - L)`` is 0 there)."""
    s = _scores(q_b, k, allow, c)
    m = jnp.max(s, axis=-1, keepdims=True)
    m = jnp.where(jnp.isfinite(m), m, 0.0)
    e = jnp.exp(s - m)
    total = jnp.sum(e, axis=-1, keepdims=True)
    attends = total > 0  # False for a fully masked row
    safe = jnp.where(attends, total, 1.0)
    o = jnp.einsum("...qk,...kd->...qd", e, v) / safe
    return o, jnp.where(attends, m + jnp.log(safe), 0.0)


def _block_bwd(q_b: jax.Array, k: jax.Array, v: jax.Array, g_b: jax.Array, lse_b: jax.Array, d_b: jax.Array,
               allow: Any, c: float) -> tuple[jax.Array, jax.Array, jax.Array]:
    """One block's ``dq`` rows and its shares of ``dk`` and ``dv``, keys by queries: the block's
    scores are formed transposed, ``s^T = c k q_b^T``, and ``p^T = exp(s^T - L^T)`` is the
    forward's probabilities exactly (0 where masked), so that ``dk = c ds^T q_b`` and
    ``dv = p^T g_b`` read both operands in place; only ``dq = c (ds^T)^T k`` contracts a leading
    axis."""
    s_t = _scores(k, q_b, None if allow is None else jnp.swapaxes(allow, -1, -2), c)
    p_t = jnp.exp(s_t - jnp.swapaxes(lse_b, -1, -2))
    dp_t = jnp.einsum("...ke,...qe->...kq", v, g_b)
    ds_t = p_t * (dp_t - jnp.swapaxes(d_b, -1, -2))
    return (jnp.einsum("...kq,...kd->...qd", ds_t, k) * c, jnp.einsum("...kq,...qd->...kd", ds_t, q_b) * c,
            jnp.einsum("...kq,...qe->...ke", p_t, g_b))


UNROLL = 2
"""At most this many blocks of queries run unrolled: no loop, and a causal block skips the keys
after its last query (at T = 2 x block, a quarter of the products). XLA may then hold every
block's scores at once (measured at 4 blocks: twice a T x T matrix, the reference's peak), so
more blocks run as a loop over equal blocks (``lax.map`` forward, ``lax.scan`` backward), which
holds one block's."""


def _full_mask(mask: Any, q: jax.Array, k: jax.Array) -> Any:
    return None if mask is None else jnp.broadcast_to(mask, (*q.shape[:-1], k.shape[-2]))


GROUP_BYTES = 1 << 20
"""On CPU attention runs over groups of its leading (batch x head) rows, a ``lax.map`` in both
passes, each group's largest block of scores at most this many bytes: a block's scores, its
probabilities and their cotangent then stay in cache between the products and the elementwise
passes instead of streaming through memory. Measured (batch 32 x 4 heads of 32, causal,
forward + backward): at T = 256 82 ms in one group (16 MB of scores a block), 48 ms in 16 groups
(1 MB), PyTorch's SDPA 37 ms; at T = 512 346 against 297 ms; at T = 128 (4 MB) 13.0 ms either way.
GPUs run one group."""


def _groups(q: jax.Array, k: jax.Array, causal: bool, block: int) -> int:
    """The fewest groups (a divisor of the leading rows) whose largest block of scores fits
    :data:`GROUP_BYTES`; one where the leading rows' scores fit already, and one row a group
    where no divisor fits (a row's block alone over the budget, or a prime number of rows)."""
    lead = int(np.prod(np.shape(q)[:-2], dtype=np.int64))
    per_row = max((b - a) * n for a, b, n in _spans(q.shape[-2], k.shape[-2], block, causal)) * q.dtype.itemsize
    return next((n for n in range(1, lead + 1) if lead % n == 0 and lead // n * per_row <= GROUP_BYTES), max(lead, 1))


def _in_groups(rows: Any, arrays: tuple, mask: Any, n: int) -> tuple:
    """``rows(*arrays, mask)`` (results shaped (..., T, c)); on CPU over ``n`` groups of the
    flattened leading axes, the mask split with them unless it is the same for every row."""
    if n == 1:
        return rows(*arrays, mask)
    lead, t_q, t_k = arrays[0].shape[:-2], arrays[0].shape[-2], arrays[1].shape[-2]

    def grouped(*args):
        *xs, m = args
        split = [a.reshape(n, -1, *a.shape[-2:]) for a in xs]
        if m is not None and np.prod(np.shape(m)[:-2]) == 1:
            shared = m.reshape(np.shape(m)[-2:])
            outs = lax.map(lambda a: rows(*a, shared), tuple(split))
        else:
            m = None if m is None else jnp.broadcast_to(m, (*lead, t_q, t_k)).reshape(n, -1, t_q, t_k)
            outs = lax.map(lambda a: rows(*a), (*split, m))
        return tuple(o.reshape(*lead, *o.shape[-2:]) for o in outs)

    return lax.platform_dependent(*arrays, mask, cpu=grouped, default=rows)


def _fwd_rows(q: jax.Array, k: jax.Array, v: jax.Array, mask: Any, causal: bool, c: float,
              block: int) -> tuple[jax.Array, jax.Array]:
    """The output and each row's log-sum-exp, block by block of queries."""
    t_q, t_k = q.shape[-2], k.shape[-2]
    spans = _spans(t_q, t_k, block, causal)
    if len(spans) <= UNROLL:
        full = _full_mask(mask, q, k)
        outs = [_block_fwd(q[..., a:b, :], k[..., :n, :], v[..., :n, :],
                           _allowed(None if full is None else full[..., a:b, :n], a, b - a, n, causal), c)
                for a, b, n in spans]
        return tuple(jnp.concatenate(parts, axis=-2) for parts in zip(*outs))

    def one_block(i, q_b, mask_b):
        return _block_fwd(q_b, k, v, _allowed(mask_b, i * block, block, t_k, causal), c)

    q_b, mask_b = _blocks(q, block), _mask_blocks(mask, q, k, block)
    o_b, lse_b = lax.map(lambda a: one_block(*a), (jnp.arange(q_b.shape[0]), q_b, mask_b))
    return _unblocks(o_b, t_q), _unblocks(lse_b, t_q)


def _bwd_rows(q: jax.Array, k: jax.Array, v: jax.Array, o: jax.Array, lse: jax.Array, g: jax.Array, mask: Any,
              causal: bool, c: float, block: int) -> tuple[jax.Array, jax.Array, jax.Array]:
    """``q_bar``, ``k_bar`` and ``v_bar``, block by block of queries."""
    t_q, t_k = q.shape[-2], k.shape[-2]
    big_d = jnp.sum(g * o, axis=-1, keepdims=True)  # D = rowsum(dO * O)
    dk = jnp.zeros(k.shape, jnp.result_type(q, k, g))
    dv = jnp.zeros(v.shape, jnp.result_type(v, g))
    spans = _spans(t_q, t_k, block, causal)
    if len(spans) <= UNROLL:
        full, dq = _full_mask(mask, q, k), []
        for a, b, n in spans:
            k_n, v_n = k[..., :n, :], v[..., :n, :]
            allow = _allowed(None if full is None else full[..., a:b, :n], a, b - a, n, causal)
            dq_b, dk_b, dv_b = _block_bwd(q[..., a:b, :], k_n, v_n, g[..., a:b, :], lse[..., a:b, :],
                                          big_d[..., a:b, :], allow, c)
            dq.append(dq_b)
            dk, dv = dk.at[..., :n, :].add(dk_b), dv.at[..., :n, :].add(dv_b)
        return jnp.concatenate(dq, axis=-2), dk, dv

    def one_block(carry, a):
        dk, dv = carry
        i, q_b, g_b, lse_b, d_b, mask_b = a
        dq_b, dk_b, dv_b = _block_bwd(q_b, k, v, g_b, lse_b, d_b, _allowed(mask_b, i * block, block, t_k, causal), c)
        return (dk + dk_b, dv + dv_b), dq_b

    xs = (_blocks(q, block), _blocks(g, block), _blocks(lse, block), _blocks(big_d, block),
          _mask_blocks(mask, q, k, block))
    (dk, dv), dq_b = lax.scan(one_block, (dk, dv), (jnp.arange(xs[0].shape[0]), *xs))
    return _unblocks(dq_b, t_q), dk, dv


def attention_fwd(
    q: jax.Array, k: jax.Array, v: jax.Array, mask: Any = None, causal: bool = False, scale: Any = None,
    block: int = 128,
) -> tuple[jax.Array, tuple]:
    rows = functools.partial(_fwd_rows, causal=causal, c=_scale(q, scale), block=block)
    o, lse = _in_groups(rows, (q, k, v), mask, _groups(q, k, causal, block))
    return o, (q, k, v, mask, o, lse)


def attention_bwd(
    res: tuple, g: jax.Array, causal: bool = False, scale: Any = None, block: int = 128
) -> tuple[jax.Array, jax.Array, jax.Array, None]:
    q, k, v, mask, o, lse = res
    rows = functools.partial(_bwd_rows, causal=causal, c=_scale(q, scale), block=block)
    dq, dk, dv = _in_groups(rows, (q, k, v, o, lse, g), mask, _groups(q, k, causal, block))
    return dq, dk, dv, None


attention.defvjp(attention_fwd, attention_bwd)
