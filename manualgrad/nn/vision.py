"""Vision layers: ``Conv2D``, ``MaxPool2D``, ``AvgPool2D`` (no state, no randomness).

Images are NHWC and kernels HWIO (see :func:`manualgrad.ops.conv2d`). Normalisation is in
:mod:`manualgrad.nn.norm`, dropout in :mod:`manualgrad.nn.dropout`.
"""

from __future__ import annotations

import math
from typing import Any

import jax
import jax.numpy as jnp

from manualgrad import ops
from manualgrad.nn.dense import from_op
from manualgrad.errors import fail, positive_int
from manualgrad.nn.layer import Layer, stateless

__all__ = ["Conv2D", "MaxPool2D", "AvgPool2D"]


def _output_shape(op, input_shape: tuple, *args: Any, **static: Any) -> tuple:
    """The shape ``op`` gives for an input of ``input_shape`` (traced abstractly; validates)."""
    x = jax.ShapeDtypeStruct(tuple(input_shape), jnp.float32)
    return tuple(jax.eval_shape(lambda x, *a: op(x, *a, **static), x, *args).shape)


def _pair(value: Any, where: str, name: str) -> tuple[int, int]:
    """``value`` as a pair: an int for both axes, or two ints."""
    pair = tuple(value) if isinstance(value, (tuple, list)) else (value, value)
    if len(pair) != 2:
        fail(where, f"{name}={value!r} must be an int or a pair of ints (height, width)")
    return pair


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
    where = f"manualgrad.nn.{name}"
    out_channels = positive_int(where, "out_channels", out_channels)
    kh, kw = (positive_int(where, "kernel_size", k) for k in _pair(kernel_size, where, "kernel_size"))
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
