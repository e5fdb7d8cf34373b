"""Sequence layers: ``Embedding``, ``PositionalEmbedding``, ``MultiHeadAttention``, the pre-norm
``TransformerBlock`` and the causal language model ``TransformerLM``.

Sequences are ``(batch, T, D)`` (any leading axes); attention heads are a leading axis inside
``MultiHeadAttention`` (``(batch, H, T, D / H)``, :func:`manualgrad.ops.split_heads`). Each layer's
``fwd``/``bwd`` chains its ops' own ``fwd``/``bwd``, so the explicit pass and its trace run
through them as through every other layer.
"""

from __future__ import annotations

import math
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from manualgrad import ops
from manualgrad.nn.dense import GELU, Linear
from manualgrad.nn.head import LinearCrossEntropyHead
from manualgrad.errors import fail, positive_int
from manualgrad.nn.layer import Layer, residual, serial, stateless
from manualgrad.nn.dropout import Dropout
from manualgrad.nn.norm import LayerNorm

__all__ = ["Embedding", "PositionalEmbedding", "MultiHeadAttention", "TransformerBlock", "TransformerLM"]


def Embedding(vocab_size: int, dim: int, std: float = 0.02, dtype: Any = jnp.float32) -> Layer:
    """Token embedding: integer ids ``(...)`` to vectors ``(..., dim)`` by :func:`manualgrad.ops.embedding`.

    Params ``{"table": (vocab_size, dim)}``, initialised ``N(0, std^2)`` (GPT-2's 0.02; PyTorch's
    ``nn.Embedding`` uses 1). The ids get no cotangent: ``bwd`` returns ``x_bar = None``, so an
    ``Embedding`` is the first layer of a model. Ids outside ``[0, vocab_size)`` are an error
    when they are concrete; under ``jit`` they give NaN rows (see the op).
    """
    name = f"Embedding({vocab_size!r}, {dim!r})"
    vocab_size, dim = positive_int(f"manualgrad.nn.{name}", "vocab_size", vocab_size), positive_int(f"manualgrad.nn.{name}", "dim", dim)

    def init(key, input_shape):
        return tuple(input_shape) + (dim,), {"table": jax.random.normal(key, (vocab_size, dim), dtype) * std}

    def apply(params, ids):
        return ops.embedding(ids, params["table"])

    def fwd(params, ids):
        return ops.embedding.fwd(ids, params["table"])

    def bwd(res, y_bar):
        _, table_bar = ops.embedding.bwd(res, y_bar)
        return {"table": table_bar}, None

    return stateless(name, init, apply, fwd, bwd)


def sinusoids(length: int, dim: int) -> np.ndarray:
    """The fixed position table of Vaswani et al. (2017), ``(length, dim)`` float64:
    ``P[t, 2i] = sin(t / 10000^(2i / dim))`` and ``P[t, 2i + 1] = cos(...)`` (an odd ``dim``
    drops the last cosine)."""
    t = np.arange(length)[:, None]
    freq = 10000.0 ** (-np.arange(0, dim, 2) / dim)
    table = np.zeros((length, dim))
    table[:, 0::2] = np.sin(t * freq)
    table[:, 1::2] = np.cos(t * freq)[:, : dim // 2]
    return table


_POSITIONS = ("learned", "sinusoidal")


def PositionalEmbedding(max_len: int, kind: str = "learned", std: float = 0.02, dtype: Any = jnp.float32) -> Layer:
    """Adds a position vector to each position of ``x`` ``(..., T, D)``: ``y[..., t, :] = x[..., t, :] + P[t]``.

    ``kind="learned"``: params ``{"table": (max_len, D)}``, ``N(0, std^2)``, and ``P[t]`` is row
    ``t`` of the table (:func:`manualgrad.ops.embedding` of ``arange(T)``); ``"sinusoidal"``:
    no params, the fixed :func:`sinusoids`. Backward: ``x_bar = y_bar`` and, learned,
    ``table_bar[t] = sum over the leading axes of y_bar[..., t, :]`` (rows ``t >= T`` get 0).
    A sequence longer than ``max_len`` is an error: the table has no row for its positions.
    """
    name = f"PositionalEmbedding({max_len!r}, {kind!r})"
    max_len = positive_int(f"manualgrad.nn.{name}", "max_len", max_len)
    if kind not in _POSITIONS:
        fail(f"manualgrad.nn.{name}", f"kind must be one of {_POSITIONS}, got {kind!r}")

    def fits(shape, what):
        if len(shape) < 2:
            raise ValueError(f"{what}={tuple(shape)} must be (..., T, D)")
        t = shape[-2]
        if t > max_len:
            raise ValueError(
                f"{what}={tuple(shape)} has a context of T={t} positions, longer than the position table "
                f"(max_len={max_len}): build the layer with max_len >= {t}, or feed at most {max_len} positions"
            )
        return t

    def positions(x):
        return jnp.arange(fits(np.shape(x), "x.shape"))

    def init(key, input_shape):
        fits(input_shape, "input_shape")
        if kind == "sinusoidal":
            return tuple(input_shape), ()
        return tuple(input_shape), {"table": jax.random.normal(key, (max_len, input_shape[-1]), dtype) * std}

    def sinusoidal(x):
        return jnp.asarray(sinusoids(max_len, np.shape(x)[-1])[: np.shape(x)[-2]], jnp.result_type(x))

    def apply(params, x):
        t = positions(x)
        return ops.add(x, sinusoidal(x) if kind == "sinusoidal" else ops.embedding(t, params["table"]))

    def fwd(params, x):
        t = positions(x)
        p, table_res = (sinusoidal(x), None) if kind == "sinusoidal" else ops.embedding.fwd(t, params["table"])
        y, add_res = ops.add.fwd(x, p)
        return y, (add_res, table_res)

    def bwd(res, y_bar):
        add_res, table_res = res
        x_bar, p_bar = ops.add.bwd(add_res, y_bar)
        if table_res is None:
            return (), x_bar
        return {"table": ops.embedding.bwd(table_res, p_bar)[1]}, x_bar

    return stateless(name, init, apply, fwd, bwd)


_PROJECTIONS = ("q", "k", "v", "o")


def MultiHeadAttention(heads: int, causal: bool = True, block: int = 128, dtype: Any = jnp.float32) -> Layer:
    """Multi-head self-attention of ``x`` ``(..., T, D)``, ``D`` divisible by ``heads``.

    ``q, k, v = split_heads(x @ w_q + b_q, heads), ...``; ``o = attention(q, k, v, causal)`` (the
    memory-lean :func:`manualgrad.ops.attention`, ``block`` queries at a time); ``y =
    merge_heads(o) @ w_o + b_o``. Params ``{"q", "k", "v", "o"}``, each ``{"w": (D, D), "b":
    (D,)}``: Glorot-uniform weights for each (D, D) matrix, zero biases (PyTorch's
    ``nn.MultiheadAttention`` draws its stacked (3D, D) input projection at once instead).

    Backward, in reverse: the output projection's rule gives the merged heads' cotangent,
    ``split_heads`` of it is ``o_bar``, attention's rule gives ``q_bar, k_bar, v_bar``, and each
    is merged back and sent through its projection; ``x`` fed all three, so ``x_bar`` is the
    sum of the three projections' input cotangents.
    """
    name = f"MultiHeadAttention({heads!r}, causal={causal!r})"
    heads = positive_int(f"manualgrad.nn.{name}", "heads", heads)

    def init(key, input_shape):
        if len(input_shape) < 2 or input_shape[-1] % heads:
            raise ValueError(f"input_shape={tuple(input_shape)} must be (..., T, D) with D divisible by heads={heads}")
        d, a = input_shape[-1], math.sqrt(3.0 / input_shape[-1])  # Glorot uniform for a square matrix
        keys = jax.random.split(key, len(_PROJECTIONS))
        params = {p: {"w": jax.random.uniform(k, (d, d), dtype, -a, a), "b": jnp.zeros((d,), dtype)}
                  for p, k in zip(_PROJECTIONS, keys)}
        return tuple(input_shape), params

    def apply(params, x):
        q, k, v = (ops.split_heads(ops.linear(x, params[p]["w"], params[p]["b"]), heads=heads) for p in "qkv")
        o = ops.merge_heads(ops.attention(q, k, v, causal=causal, block=block))
        return ops.linear(o, params["o"]["w"], params["o"]["b"])

    def fwd(params, x):
        res = {}
        qkv = []
        for p in "qkv":
            h, res[p] = ops.linear.fwd(x, params[p]["w"], params[p]["b"])
            h, res[p + "_heads"] = ops.split_heads.fwd(h, heads=heads)
            qkv.append(h)
        o, res["attention"] = ops.attention.fwd(*qkv, causal=causal, block=block)
        o, res["merge"] = ops.merge_heads.fwd(o)
        y, res["o"] = ops.linear.fwd(o, params["o"]["w"], params["o"]["b"])
        return y, res

    def bwd(res, y_bar):
        o_bar, w_bar, b_bar = ops.linear.bwd(res["o"], y_bar)
        params_bar = {"o": {"w": w_bar, "b": b_bar}}
        (o_bar,) = ops.merge_heads.bwd(res["merge"], o_bar)
        x_bar = None
        for p, h_bar in zip("qkv", ops.attention.bwd(res["attention"], o_bar)):
            (h_bar,) = ops.split_heads.bwd(res[p + "_heads"], h_bar)
            xb, w_bar, b_bar = ops.linear.bwd(res[p], h_bar)
            params_bar[p] = {"w": w_bar, "b": b_bar}
            x_bar = xb if x_bar is None else x_bar + xb
        return params_bar, x_bar

    return stateless(name, init, apply, fwd, bwd)


def TransformerBlock(
    width: int, heads: int, mlp_ratio: int = 4, causal: bool = True, dropout: float = 0.0, block: int = 128
) -> Layer:
    """The pre-norm transformer block (GPT-2's) on ``(..., T, width)``:

        x = x + Attention(LayerNorm(x))                   # residual(LayerNorm, MultiHeadAttention)
        x = x + Linear(width)(GELU(Linear(mlp_ratio * width)(LayerNorm(x))))

    built from :func:`~manualgrad.nn.residual` and the layers above, so its ``bwd`` is theirs
    (each residual adds its skip path's cotangent). ``dropout > 0`` adds dropout after the
    attention and after the MLP, inside each residual branch. Params: a tuple of the two
    residual branches' params, as :func:`~manualgrad.nn.serial` lays them out.
    """
    drop = [Dropout(dropout)] if dropout != 0 else []  # Dropout refuses rates outside [0, 1)
    attention = residual(LayerNorm(), MultiHeadAttention(heads, causal=causal, block=block), *drop)
    mlp = residual(LayerNorm(), Linear(mlp_ratio * width, init="glorot"), GELU(), Linear(width, init="glorot"), *drop)
    return serial(attention, mlp)


def TransformerLM(
    vocab_size: int,
    context: int,
    width: int = 128,
    depth: int = 4,
    heads: int = 4,
    positions: str = "learned",
    dropout: float = 0.0,
    block: int = 128,
    fused_head: bool = False,
) -> Layer:
    """A causal language model on token ids ``(batch, T)``, ``T <= context``: embedding, positions,
    ``depth`` :func:`TransformerBlock` blocks, a final LayerNorm and the output layer, giving logits
    ``(batch, T, vocab_size)`` whose position ``t`` predicts token ``t + 1`` from tokens ``<= t``.

    Train it with :func:`manualgrad.losses.softmax_cross_entropy` against the ids shifted by one
    (its mean runs over every (batch, T) position, fused with the softmax). Params: a tuple,
    :func:`~manualgrad.nn.serial`'s layout of those ``depth + 4`` layers.

    ``fused_head=True`` ends it in :func:`~manualgrad.nn.LinearCrossEntropyHead` instead of
    ``Linear``: the output is ``(h, w, b)`` (the final LayerNorm's output and the output layer's
    params, which are the same as without it) and the loss is
    :func:`manualgrad.losses.head_cross_entropy`, which never holds the (batch, T, vocab_size)
    logits: for large vocabularies.
    """
    blocks = [TransformerBlock(width, heads, dropout=dropout, block=block) for _ in range(depth)]
    return serial(
        Embedding(vocab_size, width),
        PositionalEmbedding(context, positions),
        *blocks,
        LayerNorm(),
        (LinearCrossEntropyHead if fused_head else Linear)(vocab_size, init="glorot"),
    )
