"""The three gradient sources, which must agree, and the all-reduce of data-parallel training.

* ``"manual"``: ``jax.grad`` through the ops' hand-written VJPs (every op is a
  ``jax.custom_vjp`` function);
* ``"explicit"``: :func:`manualgrad.backprop.explicit`, the layers' own ``forward``/``bwd``
  rules with no ``jax.grad`` at all;
* ``"reference"``: ``jax.grad`` of the plain reference forwards
  (:func:`manualgrad.core.reference_mode`), the baseline the other two are measured against.
"""

from __future__ import annotations

import contextlib
from typing import Any, Callable

import jax
import jax.numpy as jnp

from manualgrad import backprop
from manualgrad.core import Op, reference_mode
from manualgrad.errors import fail
from manualgrad.keys import device_key
from manualgrad.nn import Layer

__all__ = ["GRADS", "loss_and_grad", "gradient"]

GRADS = ("manual", "explicit", "reference")

#: ``f(params, state, x, y, *, key=None) -> (loss_value, grads, new_state)``
Gradient = Callable[..., tuple[Any, Any, Any]]


def loss_and_grad(model: Layer, loss: Op, grad: str = "manual", axis_name: str | None = None) -> Callable[..., tuple]:
    """The loss and its gradient from the source ``grad``, the model in training mode.

    Args:
      model: the network.
      loss: an op ``loss(prediction, target)`` (see :func:`manualgrad.backprop.value_and_grad`).
      grad: ``"manual"``, ``"explicit"`` or ``"reference"`` (see the module docstring).
      axis_name: inside a ``shard_map`` over this mesh axis, all-reduce the results over the
        devices (see :func:`gradient`).

    Returns:
      ``f(params, x, y, *, state=None, key=None) -> (loss_value, grads)``, or ``(loss_value,
      grads, new_state)`` when ``state`` is passed; ``key`` feeds dropout.
    """
    run = gradient(model, loss, grad, axis_name)

    def edge(params: Any, x: Any, y: Any, *, state: Any = None, key: Any = None) -> tuple:
        value, grads, new_state = run(params, state, x, y, key=key)
        return (value, grads) if state is None else (value, grads, new_state)

    return edge


def gradient(model: Layer, loss: Op, grad: str = "manual", axis_name: str | None = None) -> Gradient:
    """:func:`loss_and_grad` in the uniform form ``f(params, state, x, y, *, key=None) ->
    (loss_value, grads, new_state)``.

    Data parallelism: inside a ``shard_map`` over the mesh axis ``axis_name`` each device
    holds an equal slice of the batch. Its loss and gradient are the means over its slice,
    so the whole batch's are their mean over the devices: the gradients are all-reduced by
    an explicit ``lax.psum(g, axis_name) / devices`` (the textbook picture of data-parallel
    backprop), and so are the loss and the new layer state (batch norm's running statistics,
    computed from each device's own slice, are averaged; its batch statistics are per
    device, as in PyTorch's DistributedDataParallel without SyncBatchNorm). Each device draws
    its dropout masks from :func:`manualgrad.keys.device_key`.
    """
    if grad not in GRADS:
        fail("manualgrad.train", f"grad must be one of {GRADS}, got {grad!r}")
    local = backprop.explicit(model, loss) if grad == "explicit" else _autodiff(model, loss, grad == "reference")
    if axis_name is None:
        return local

    def all_reduced(params, state, x, y, *, key=None):
        out = local(params, state, x, y, key=device_key(key, jax.lax.axis_index(axis_name)))
        devices = jax.lax.psum(1, axis_name)

        def mean(a):  # integer state (a counter) is the same on every device: kept as it is
            return jax.lax.psum(a, axis_name) / devices if jnp.issubdtype(a.dtype, jnp.inexact) else a

        return jax.tree_util.tree_map(mean, out)

    return all_reduced


def _autodiff(model: Layer, loss: Op, references: bool) -> Gradient:
    """``jax.value_and_grad`` of the loss: through the hand-written VJPs, or (``references``)
    through the plain reference forwards."""

    def objective(params, state, x, y, key):
        pred, new_state = model.call(params, state, x, key=key, train=True)
        return loss(pred, y), new_state

    value_and_grad = jax.value_and_grad(objective, has_aux=True)

    def run(params, state, x, y, *, key=None):
        # read while tracing: every op then runs its plain reference
        with reference_mode() if references else contextlib.nullcontext():
            (value, new_state), grads = value_and_grad(params, state, x, y, key)
        return value, grads, new_state

    return run
