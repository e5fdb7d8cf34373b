"""``LinearCrossEntropyHead``: an output layer that leaves its product to the loss.

A model that ends in it trains with :func:`manualgrad.losses.head_cross_entropy`, which computes
``softmax_cross_entropy(x @ w + b, labels)`` and its gradients a block of rows at a time, never
holding the (..., V) logits (:mod:`manualgrad.linear_cross_entropy`).
"""

from __future__ import annotations

from typing import Any

import jax.numpy as jnp

from manualgrad.nn.dense import Linear
from manualgrad.nn.layer import FinalShape, Layer, stateless

__all__ = ["LinearCrossEntropyHead"]


def LinearCrossEntropyHead(out_dim: int, init: str = "he", dtype: Any = jnp.float32) -> Layer:
    """The output layer ``x @ w + b`` with the product left to the loss: ``y = (x, w, b)``.

    Params ``{"w": (d_in, out_dim), "b": (out_dim,)}``, drawn as :func:`~manualgrad.nn.Linear`
    ``(out_dim, init)`` draws them (the same key gives the same params, so the two layers'
    checkpoints are interchangeable). The output is the triple of its input and its params, the
    prediction :func:`manualgrad.losses.head_cross_entropy` takes; the loss hands back
    ``(x_bar, w_bar, b_bar)`` and ``bwd`` passes them on: ``x_bar`` as the input's cotangent,
    ``{"w": w_bar, "b": b_bar}`` as the params'. The layer itself computes nothing, so it must be
    the model's last.

    With it, ``train.fit``, ``backprop.value_and_grad`` (and its trace) and ``check.check_model``
    work unchanged, with ``loss=losses.head_cross_entropy`` (or ``functools.partial`` of it fixing
    ``chunk``); ``train.evaluate`` reports the loss (``metric=None``: ``"accuracy"`` needs logits).
    Where logits are wanted, for a few positions, form them from the output:
    ``h, w, b = model.apply(params, x); logits = ops.linear(h[:, -1], w, b)`` (sampling).
    """
    linear = Linear(out_dim, init=init, dtype=dtype)  # checks out_dim and init, and draws the params
    name = f"LinearCrossEntropyHead({out_dim!r})"

    def init_fn(key, input_shape):
        _, params = linear.init(key, input_shape)
        return FinalShape((tuple(input_shape), params["w"].shape, params["b"].shape), name), params

    def apply(params, x):
        return x, params["w"], params["b"]

    def fwd(params, x):
        return apply(params, x), None

    def bwd(res, y_bar):
        x_bar, w_bar, b_bar = y_bar
        return {"w": w_bar, "b": b_bar}, x_bar

    return stateless(name, init_fn, apply, fwd, bwd)
