"""Dense layers: ``Linear``, the activation layers and ``Flatten`` (no state, no randomness)."""

from __future__ import annotations

import math
from typing import Any, Callable

import jax
import jax.numpy as jnp

from manualgrad import ops
from manualgrad.errors import fail, positive_int
from manualgrad.core import Op
from manualgrad.nn.layer import Layer, stateless


# -- Linear ----------------------------------------------------------------------
_INITS = ("he", "glorot")


def Linear(out_dim: int, init: str = "he", dtype: Any = jnp.float32) -> Layer:
    """Fully connected layer ``y = x @ w + b`` with params ``{"w": (d_in, out_dim), "b": (out_dim,)}``.

    Initialisation (the bias always starts at zero):

    * ``"he"`` (default; Kaiming normal): ``w ~ N(0, 2 / d_in)``. For ReLU networks it keeps
      the variance of the activations constant from layer to layer, because a ReLU zeroes
      half of its input on average.
    * ``"glorot"`` (Xavier uniform): ``w ~ U(-a, a)``, ``a = sqrt(6 / (d_in + out_dim))``,
      which balances the variance of activations and of gradients for tanh/sigmoid layers.
    """
    name = f"Linear({out_dim!r})"
    out_dim = positive_int(f"manualgrad.nn.{name}", "out_dim", out_dim)
    if init not in _INITS:
        fail(f"manualgrad.nn.{name}", f"init must be one of {_INITS}, got {init!r}")

    def init_fn(key, input_shape):
        if len(input_shape) < 1:
            raise ValueError(f"input_shape={input_shape} needs a feature axis")
        d_in = input_shape[-1]
        if init == "he":
            w = jax.random.normal(key, (d_in, out_dim), dtype) * math.sqrt(2.0 / d_in)
        else:
            a = math.sqrt(6.0 / (d_in + out_dim))
            w = jax.random.uniform(key, (d_in, out_dim), dtype, -a, a)
        return input_shape[:-1] + (out_dim,), {"w": w, "b": jnp.zeros((out_dim,), dtype)}

    def apply(params, x):
        return ops.linear(x, params["w"], params["b"])

    def fwd(params, x):
        return ops.linear.fwd(x, params["w"], params["b"])

    def bwd(res, y_bar):
        x_bar, w_bar, b_bar = ops.linear.bwd(res, y_bar)
        return {"w": w_bar, "b": b_bar}, x_bar

    return stateless(name, init_fn, apply, fwd, bwd)


# -- layers made from parameter-free ops ---------------------------------------------
def from_op(op: Op, name: str | None = None, output_shape: Callable[[tuple], tuple] | None = None, **static: Any) -> Layer:
    """A parameter-free layer from a one-argument op (an activation, or your own op).

    ``static`` are the op's static params (e.g. ``negative_slope``); ``output_shape`` maps
    the input shape to the output shape (default: unchanged, as for elementwise ops).
    """
    name = name or op.name.rsplit(".", 1)[-1]

    def init(key, input_shape):
        return (output_shape(input_shape) if output_shape else input_shape), ()

    def apply(params, x):
        return op(x, **static)

    def fwd(params, x):
        return op.fwd(x, **static)

    def bwd(res, y_bar):
        (x_bar,) = op.bwd(res, y_bar)
        return (), x_bar

    return stateless(name, init, apply, fwd, bwd)


def Identity() -> Layer:
    """The layer of :func:`manualgrad.ops.identity`: ``y = x``; no params."""
    return from_op(ops.identity, "Identity")


def ReLU() -> Layer:
    """The layer of :func:`manualgrad.ops.relu`, ``max(x, 0)`` elementwise; no params."""
    return from_op(ops.relu, "ReLU")


def LeakyReLU(negative_slope: float = 0.01) -> Layer:
    """The layer of :func:`manualgrad.ops.leaky_relu`: ``x`` where positive, else
    ``negative_slope * x``; no params."""
    return from_op(ops.leaky_relu, f"LeakyReLU({negative_slope:g})", negative_slope=negative_slope)


def ScaledReLU(scale: float) -> Layer:
    """The layer of :func:`manualgrad.ops.scaled_relu`, ``scale * max(x, 0)``; no params."""
    return from_op(ops.scaled_relu, f"ScaledReLU({scale:g})", scale=scale)


def Sigmoid() -> Layer:
    """The layer of :func:`manualgrad.ops.sigmoid`, ``1 / (1 + exp(-x))`` elementwise; no params."""
    return from_op(ops.sigmoid, "Sigmoid")


def Tanh() -> Layer:
    """The layer of :func:`manualgrad.ops.tanh`; no params."""
    return from_op(ops.tanh, "Tanh")


def Softplus() -> Layer:
    """The layer of :func:`manualgrad.ops.softplus`, ``log(1 + exp(x))`` elementwise; no params."""
    return from_op(ops.softplus, "Softplus")


def GELU(approximate: bool = False) -> Layer:
    """The layer of :func:`manualgrad.ops.gelu`: exact (erf) by default, the tanh approximation
    with ``approximate=True``; no params."""
    return from_op(ops.gelu, "GELU", approximate=approximate)


def Square() -> Layer:
    """The layer of :func:`manualgrad.ops.square`, ``x ** 2`` elementwise; no params."""
    return from_op(ops.square, "Square")


def Softmax(axis: int = -1) -> Layer:
    """The layer of :func:`manualgrad.ops.softmax` along ``axis``; no params."""
    return from_op(ops.softmax, "Softmax", axis=axis)


def LogSoftmax(axis: int = -1) -> Layer:
    """The layer of :func:`manualgrad.ops.log_softmax` along ``axis``; no params."""
    return from_op(ops.log_softmax, "LogSoftmax", axis=axis)


def Flatten() -> Layer:
    """``(n, d1, d2, ...) -> (n, d1 * d2 * ...)``: every axis after the first is flattened."""
    return from_op(ops.flatten, "Flatten", output_shape=lambda s: (s[0], math.prod(s[1:])))
