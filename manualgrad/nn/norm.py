"""Normalisation layers: ``BatchNorm`` (with state: running mean and variance) and ``LayerNorm``.

``BatchNorm`` follows the convention of :mod:`manualgrad.nn.layer` for state (``call(params,
state, x, *, key, train) -> (y, state)``); ``LayerNorm`` has none, and serves vision and
sequence models alike.
"""

from __future__ import annotations

import math
from typing import Any

import jax
import jax.numpy as jnp

from manualgrad import ops
from manualgrad.errors import fail
from manualgrad.nn.layer import Layer, primitive, stateless

__all__ = ["BatchNorm", "LayerNorm"]


def _affine_params(input_shape: tuple, dtype: Any) -> tuple[tuple, dict]:
    if len(input_shape) < 2:
        raise ValueError(f"input_shape={input_shape} needs a batch and a feature axis")
    c = input_shape[-1]
    return input_shape, {"gamma": jnp.ones((c,), dtype), "beta": jnp.zeros((c,), dtype)}


def LayerNorm(eps: float = 1e-5, dtype: Any = jnp.float32) -> Layer:
    """Normalisation over the last axis with a learned scale ``gamma`` and shift ``beta`` (C,)."""

    def apply(params, x):
        return ops.layer_norm(x, params["gamma"], params["beta"], eps=eps)

    def fwd(params, x):
        return ops.layer_norm.fwd(x, params["gamma"], params["beta"], eps=eps)

    def bwd(res, y_bar):
        x_bar, gamma_bar, beta_bar = ops.layer_norm.bwd(res, y_bar)
        return {"gamma": gamma_bar, "beta": beta_bar}, x_bar

    return stateless(f"LayerNorm(eps={eps:g})", lambda key, s: _affine_params(s, dtype), apply, fwd, bwd)


def _statistics(state: Any) -> None:
    """Fail unless ``state`` is batch norm's running statistics, the dict ``init_state`` returns."""
    if not isinstance(state, dict) or set(state) != {"mean", "var"}:
        got = sorted(state) if isinstance(state, dict) else f"{type(state).__name__} {state!r}"[:80]
        raise ValueError(f"state must be the running statistics {{'mean', 'var'}} that init_state returns "
                         f"(() is a stateless layer's state); got {got}")


def BatchNorm(momentum: float = 0.1, eps: float = 1e-5, dtype: Any = jnp.float32) -> Layer:
    """Batch normalisation over every axis but the last (channels), PyTorch's convention.

    Params ``{"gamma", "beta"}`` (C,); state ``{"mean", "var"}`` (C,), starting at 0 and 1.
    Training (``train=True``) normalises with the batch's mean and biased variance
    (:func:`manualgrad.ops.batch_norm`) and, when ``state`` is passed, returns the running
    statistics ``mean <- (1 - momentum) mean + momentum batch_mean`` and ``var <- (1 -
    momentum) var + momentum * batch_var * m / (m - 1)`` (the unbiased variance of the ``m``
    values per channel, as ``torch.nn.BatchNorm2d``; ``m = 1`` uses the biased one).
    Evaluation (``train=False``) normalises with the running statistics, so it needs ``state``.
    A batch of one in training mode gives ``y = beta`` (the centred input is 0; ``eps`` keeps
    it finite).
    """
    name = f"BatchNorm(momentum={momentum:g})"
    if not 0 <= momentum <= 1:
        fail(f"manualgrad.nn.{name}", f"momentum must be in [0, 1], got {momentum!r}")
    if not eps > 0:
        fail(f"manualgrad.nn.{name}", f"eps must be positive (it keeps 1 / sqrt(var + eps) finite), got {eps!r}")

    def running(state, x):
        _statistics(state)
        axes = tuple(range(x.ndim - 1))
        m = math.prod(x.shape[:-1])
        xs = jax.lax.stop_gradient(x).astype(state["mean"].dtype)
        mean, var = jnp.mean(xs, axis=axes), jnp.var(xs, axis=axes)
        return {
            "mean": (1 - momentum) * state["mean"] + momentum * mean,
            "var": (1 - momentum) * state["var"] + momentum * var * (m / max(m - 1, 1)),
        }

    def eval_args(params, state, x):
        if state is None:
            raise ValueError(
                "evaluation (train=False) normalises with the running statistics, so it needs the "
                "layer's state: pass state=... (from model.init_state, or returned by training), "
                "or train=True for batch statistics"
            )
        _statistics(state)
        return x, params["gamma"], params["beta"], state["mean"], state["var"]

    def call(params, state, x, *, key, train):
        if train:
            y = ops.batch_norm(x, params["gamma"], params["beta"], eps=eps)
            return y, None if state is None else running(state, x)
        return ops.batch_norm_inference(*eval_args(params, state, x), eps=eps), state

    def forward(params, state, x, *, key, train):
        if train:
            y, res = ops.batch_norm.fwd(x, params["gamma"], params["beta"], eps=eps)
            return y, None if state is None else running(state, x), (res, None)
        y, res = ops.batch_norm_inference.fwd(*eval_args(params, state, x), eps=eps)
        return y, state, (None, res)

    def bwd(res, y_bar):
        train_res, eval_res = res
        if train_res is not None:
            x_bar, gamma_bar, beta_bar = ops.batch_norm.bwd(train_res, y_bar)
        else:
            x_bar, gamma_bar, beta_bar, _, _ = ops.batch_norm_inference.bwd(eval_res, y_bar)
        return {"gamma": gamma_bar, "beta": beta_bar}, x_bar

    def state_init(input_shape):
        c = input_shape[-1]
        return {"mean": jnp.zeros((c,), dtype), "var": jnp.ones((c,), dtype)}

    return primitive(name, lambda key, s: _affine_params(s, dtype), call, forward, bwd, state_init)
