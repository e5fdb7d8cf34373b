"""Vision layers: ``Conv2D``, ``MaxPool2D``, ``AvgPool2D``, ``BatchNorm``, ``LayerNorm``, ``Dropout``.

Images are NHWC and kernels HWIO (see :func:`manualgrad.ops.conv2d`). ``BatchNorm`` has
state (running mean and variance) and ``Dropout`` needs a key in training mode; both follow
the convention of :mod:`manualgrad.nn.layer` (pass state, get state back; ``train=True``).
"""

from __future__ import annotations

import math
from typing import Any

import jax
import jax.numpy as jnp

from manualgrad import ops
from manualgrad.nn.dense import from_op
from manualgrad.nn.layer import Layer, positive_int, primitive, stateless, training_key

__all__ = ["Conv2D", "MaxPool2D", "AvgPool2D", "BatchNorm", "LayerNorm", "Dropout"]


def _output_shape(op, input_shape: tuple, *args: Any, **static: Any) -> tuple:
    """The shape ``op`` gives for an input of ``input_shape`` (traced abstractly; validates)."""
    x = jax.ShapeDtypeStruct(tuple(input_shape), jnp.float32)
    return tuple(jax.eval_shape(lambda x, *a: op(x, *a, **static), x, *args).shape)


def _pair(value: Any) -> tuple[int, int]:
    return tuple(value) if isinstance(value, (tuple, list)) else (value, value)


def Conv2D(
    out_channels: int,
    kernel_size: int | tuple[int, int],
    stride: int | tuple[int, int] = 1,
    padding: Any = "VALID",
    dilation: int | tuple[int, int] = 1,
    groups: int = 1,
    dtype: Any = jnp.float32,
) -> Layer:
    """2-D convolution (cross-correlation) of NHWC images with params ``{"w": (KH, KW, C_in //
    groups, out_channels), "b": (out_channels,)}``; see :func:`manualgrad.ops.conv2d` for
    ``stride``, ``padding``, ``dilation`` and ``groups``.

    Initialisation: He normal over the fan-in, ``w ~ N(0, 2 / (KH * KW * C_in / groups))``
    (as :func:`Linear`'s default), bias zero.
    """
    name = f"Conv2D({out_channels!r}, {kernel_size!r})"
    out_channels = positive_int("out_channels", name, out_channels)
    kh, kw = (positive_int("kernel_size", name, k) for k in _pair(kernel_size))
    static = dict(stride=stride, padding=padding, dilation=dilation, groups=groups)

    def init(key, input_shape):
        if len(input_shape) != 4:
            raise ValueError(f"input_shape={input_shape} must be (N, H, W, C) (NHWC)")
        c_in = input_shape[-1]
        if groups < 1 or c_in % groups:
            raise ValueError(f"groups={groups} must divide the input channels C_in={c_in}")
        fan_in = kh * kw * c_in // groups
        w = jax.random.normal(key, (kh, kw, c_in // groups, out_channels), dtype) * math.sqrt(2.0 / fan_in)
        b = jnp.zeros((out_channels,), dtype)
        return _output_shape(ops.conv2d, input_shape, w, b, **static), {"w": w, "b": b}

    def apply(params, x):
        return ops.conv2d(x, params["w"], params["b"], **static)

    def fwd(params, x):
        return ops.conv2d.fwd(x, params["w"], params["b"], **static)

    def bwd(res, y_bar):
        x_bar, w_bar, b_bar = ops.conv2d.bwd(res, y_bar)
        return {"w": w_bar, "b": b_bar}, x_bar

    return stateless(name, init, apply, fwd, bwd)


def _pool(op, label: str, window: Any, stride: Any, padding: int) -> Layer:
    static = dict(window=window, stride=stride, padding=padding)
    return from_op(op, f"{label}({window!r})", output_shape=lambda s: _output_shape(op, s, **static), **static)


def MaxPool2D(window: int | tuple[int, int], stride: Any = None, padding: int = 0) -> Layer:
    """Max pooling over ``window`` (NHWC); ties send the gradient to the window's first maximum."""
    return _pool(ops.max_pool2d, "MaxPool2D", window, stride, padding)


def AvgPool2D(window: int | tuple[int, int], stride: Any = None, padding: int = 0) -> Layer:
    """Average pooling over ``window`` (NHWC); padded zeros count in the average."""
    return _pool(ops.avg_pool2d, "AvgPool2D", window, stride, padding)


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
        raise ValueError(f"manualgrad.nn.{name}: momentum must be in [0, 1], got {momentum!r}")

    def running(state, x):
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
        return x, params["gamma"], params["beta"], state["mean"], state["var"]

    def call(params, state, x, key, train):
        if train:
            y = ops.batch_norm(x, params["gamma"], params["beta"], eps=eps)
            return y, None if state is None else running(state, x)
        return ops.batch_norm_inference(*eval_args(params, state, x), eps=eps), state

    def fwd(params, state, x, key, train):
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

    return primitive(name, lambda key, s: _affine_params(s, dtype), call, fwd, bwd, state_init)


def Dropout(rate: float) -> Layer:
    """Inverted dropout (:func:`manualgrad.ops.dropout`) in training mode, the identity in evaluation.

    Training needs a key: ``apply(params, x, key=k, train=True)``; :func:`manualgrad.train.fit`
    and :func:`~manualgrad.train.make_epoch` derive one per step, and containers give each
    child its own (``fold_in(key, i)``).
    """
    name = f"Dropout({rate!r})"
    if not 0 <= rate < 1:
        raise ValueError(f"manualgrad.nn.{name}: rate must be in [0, 1), got {rate!r}")

    def active(key, train):
        return rate > 0 and training_key(key, train, "draws a dropout mask")

    def call(params, state, x, key, train):
        return (ops.dropout(x, key, rate=rate) if active(key, train) else x), state

    def fwd(params, state, x, key, train):
        if active(key, train):
            y, res = ops.dropout.fwd(x, key, rate=rate)
            return y, state, res
        return x, state, None

    def bwd(res, y_bar):
        return (), (y_bar if res is None else ops.dropout.bwd(res, y_bar)[0])

    return primitive(name, lambda key, s: (tuple(s), ()), call, fwd, bwd)
