"""Layers and networks, in the spirit of ``jax.example_libraries.stax``.

A :class:`Layer` is four pure functions:

* ``init(key, input_shape) -> (output_shape, params)``; shapes include the batch axis;
* ``apply(params, x) -> y``, built from manualgrad ops, so ``jax.grad`` of it runs the
  hand-written rules;
* ``fwd(params, x) -> (y, res)`` and ``bwd(res, y_bar) -> (params_bar, x_bar)``, the
  layer's own forward-with-residuals and backward, used by
  :func:`manualgrad.backprop.value_and_grad` with no ``jax.grad`` at all.

Params are pytrees: ``Linear`` has ``{"w": (d_in, d_out), "b": (d_out,)}``, activation
layers have ``()``, ``serial`` and ``fanout`` have a tuple with one entry per child.
"""

from __future__ import annotations

import contextlib
import math
from typing import Any, Callable, Iterator, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from manualgrad import ops, trace
from manualgrad.core import Op

__all__ = [
    "Layer",
    "Linear",
    "from_op",
    "Identity",
    "ReLU",
    "LeakyReLU",
    "ScaledReLU",
    "Sigmoid",
    "Tanh",
    "Softplus",
    "GELU",
    "Square",
    "Softmax",
    "LogSoftmax",
    "Flatten",
    "serial",
    "fanout",
]


class Layer(NamedTuple):
    """A layer or network: ``init``, ``apply``, ``fwd``, ``bwd`` (see the module docstring)."""

    init: Callable[[jax.Array, tuple], tuple[Any, Any]]
    apply: Callable[[Any, Any], Any]
    fwd: Callable[[Any, Any], tuple[Any, Any]]
    bwd: Callable[[Any, Any], tuple[Any, Any]]


@contextlib.contextmanager
def _blame(name: str) -> Iterator[None]:
    """Prefix an op's ValueError with the layer it was raised in."""
    try:
        yield
    except ValueError as e:
        raise ValueError(f"manualgrad.nn.{name}: {e}") from None


def _primitive(
    name: str,
    init: Callable,
    apply: Callable,
    fwd: Callable,
    bwd: Callable,
) -> Layer:
    """A leaf layer: errors name the layer, and the explicit pass can record a trace of it."""

    def apply_(params, x):
        with _blame(name):
            return apply(params, trace.tap(x))

    def fwd_(params, x):
        with _blame(name):
            y, res = fwd(params, x)
        return y, (res, trace.record_forward(name, x, y))

    def bwd_(res, y_bar):
        res, slot = res
        params_bar, x_bar = bwd(res, y_bar)
        trace.record_backward(slot, y_bar, params_bar, x_bar)
        return params_bar, x_bar

    def init_(key, input_shape):
        with _blame(name):
            return init(key, tuple(input_shape))

    return Layer(init_, apply_, fwd_, bwd_)


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
    if isinstance(out_dim, bool) or not isinstance(out_dim, (int, np.integer)) or out_dim < 1:
        raise ValueError(f"manualgrad.nn.{name}: out_dim must be a positive integer (the number of output features)")
    out_dim = int(out_dim)
    if init not in _INITS:
        raise ValueError(f"manualgrad.nn.{name}: init must be one of {_INITS}, got {init!r}")

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

    return _primitive(name, init_fn, apply, fwd, bwd)


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

    return _primitive(name, init, apply, fwd, bwd)


def Identity() -> Layer:
    return from_op(ops.identity, "Identity")


def ReLU() -> Layer:
    return from_op(ops.relu, "ReLU")


def LeakyReLU(negative_slope: float = 0.01) -> Layer:
    return from_op(ops.leaky_relu, f"LeakyReLU({negative_slope:g})", negative_slope=negative_slope)


def ScaledReLU(scale: float) -> Layer:
    return from_op(ops.scaled_relu, f"ScaledReLU({scale:g})", scale=scale)


def Sigmoid() -> Layer:
    return from_op(ops.sigmoid, "Sigmoid")


def Tanh() -> Layer:
    return from_op(ops.tanh, "Tanh")


def Softplus() -> Layer:
    return from_op(ops.softplus, "Softplus")


def GELU(approximate: bool = False) -> Layer:
    return from_op(ops.gelu, "GELU", approximate=approximate)


def Square() -> Layer:
    return from_op(ops.square, "Square")


def Softmax(axis: int = -1) -> Layer:
    return from_op(ops.softmax, "Softmax", axis=axis)


def LogSoftmax(axis: int = -1) -> Layer:
    return from_op(ops.log_softmax, "LogSoftmax", axis=axis)


def Flatten() -> Layer:
    """``(n, d1, d2, ...) -> (n, d1 * d2 * ...)``: every axis after the first is flattened."""
    return from_op(ops.flatten, "Flatten", output_shape=lambda s: (s[0], math.prod(s[1:])))


# -- combinators -----------------------------------------------------------------------
def serial(*layers: Layer) -> Layer:
    """Layers applied one after the other; params are a tuple, one entry per layer.

    Backward: the chain rule, applied in reverse order; each layer's ``x_bar`` is the
    ``y_bar`` of the layer before it.
    """

    def init(key, input_shape):
        params = []
        for layer, k in zip(layers, jax.random.split(key, len(layers))):
            input_shape, p = layer.init(k, input_shape)
            params.append(p)
        return input_shape, tuple(params)

    def apply(params, x):
        for i, (layer, p) in enumerate(zip(layers, params)):
            with trace.scope(str(i)):
                x = layer.apply(p, x)
        return x

    def fwd(params, x):
        res = []
        for i, (layer, p) in enumerate(zip(layers, params)):
            with trace.scope(str(i)):
                x, r = layer.fwd(p, x)
            res.append(r)
        return x, tuple(res)

    def bwd(res, y_bar):
        params_bar = [None] * len(layers)
        for i in reversed(range(len(layers))):
            params_bar[i], y_bar = layers[i].bwd(res[i], y_bar)
        return tuple(params_bar), y_bar

    return Layer(init, apply, fwd, bwd)


def fanout(*branches: Layer) -> Layer:
    """Every branch gets the same input; the output is a tuple, one entry per branch.

    Backward: the input was used by every branch, so its cotangent is the **sum** of the
    branches' ``x_bar`` (``dL/dx = sum_k dL_k/dx``). A shared trunk with two heads is
    ``serial(trunk..., fanout(head1, head2))`` and the trunk sees both heads' gradients.
    The explicit pass's trace has a ``fanout(k)`` entry whose ``dL/dx`` is that sum.
    """
    name = f"fanout({len(branches)})"

    def init(key, input_shape):
        shapes, params = [], []
        for branch, k in zip(branches, jax.random.split(key, len(branches))):
            s, p = branch.init(k, input_shape)
            shapes.append(s)
            params.append(p)
        return tuple(shapes), tuple(params)

    def apply(params, x):
        x = trace.tap(x)
        ys = []
        for i, (b, p) in enumerate(zip(branches, params)):
            with trace.scope(f"head{i}"):
                ys.append(b.apply(p, x))
        return tuple(ys)

    def fwd(params, x):
        ys, res = [], []
        slot = trace.record_forward(name, x, None)
        for i, (b, p) in enumerate(zip(branches, params)):
            with trace.scope(f"head{i}"):
                y, r = b.fwd(p, x)
            ys.append(y)
            res.append(r)
        trace.fill_output(slot, tuple(ys))
        return tuple(ys), (tuple(res), slot)

    def bwd(res, y_bars):
        res, slot = res
        params_bar, x_bar = [], None
        for b, r, g in zip(branches, res, y_bars):
            pb, xb = b.bwd(r, g)
            params_bar.append(pb)
            x_bar = xb if x_bar is None else jax.tree_util.tree_map(jnp.add, x_bar, xb)
        trace.record_backward(slot, tuple(y_bars), (), x_bar)
        return tuple(params_bar), x_bar

    return Layer(init, apply, fwd, bwd)
