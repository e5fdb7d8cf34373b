"""The explicit reverse pass: a network's own ``fwd``/``bwd`` rules, no ``jax.grad``.

This is backpropagation written out the way the seeds do it by hand: run every
layer's forward keeping its residuals, evaluate the loss and its gradient with
respect to the prediction, then run every layer's backward in reverse order. No
``jax.grad`` and no ``custom_vjp`` dispatch is involved, so it checks the
hand-written rules independently of JAX's autodiff, and ``trace=True`` returns
the whole transcript.
"""

from __future__ import annotations

import functools
from typing import Any, Callable

import jax.numpy as jnp

from manualgrad import trace as _trace
from manualgrad.core import Op
from manualgrad.nn import Layer

__all__ = ["value_and_grad", "explicit", "as_loss_op"]


def as_loss_op(loss: Any, where: str) -> tuple[Op, dict[str, Any]]:
    """``(op, static)`` for a loss given as an op or as ``functools.partial(op, **static)``.

    The explicit pass runs the loss's own hand-written ``fwd`` and ``bwd``, so a plain
    function (which has none) is refused with a ``TypeError`` that says what to pass.
    """
    if isinstance(loss, Op):
        return loss, {}
    if isinstance(loss, functools.partial) and isinstance(loss.func, Op) and not loss.args:
        op, static = loss.func, dict(loss.keywords)
        unknown = sorted(set(static) - set(op.static))
        if not unknown:
            return op, static
        raise TypeError(
            f"{where}: functools.partial({op.name}, ...) fixes {unknown}, which are not static params of "
            f"the op (its static params: {list(op.static)}); targets are passed at call time"
        )
    raise TypeError(
        f"{where}: loss must be a manualgrad op such as manualgrad.losses.mse (or functools.partial of one "
        f"fixing static params by keyword), got {loss!r}. The explicit pass runs the loss's own fwd/bwd "
        "rules, which a plain function does not have: make it an op with manualgrad.defop, or use "
        "grad='manual' (jax.grad through the ops it calls)."
    )


def value_and_grad(model: Layer, loss: Op, *, trace: bool = False) -> Callable[..., tuple]:
    """Explicit backprop of ``loss(model(x), target)``, the model in training mode.

    Args:
      model: the network; its own ``forward``/``bwd`` rules are run.
      loss: an op taking ``(prediction, target)``, or ``functools.partial`` of one that fixes
        static params by keyword (its own ``fwd``/``bwd`` rules are run); for a ``fanout``
        model the prediction and the target are tuples (see :func:`manualgrad.losses.multitask`).
      trace: also return a :class:`manualgrad.trace.Trace`: for every layer in forward order
        its input, output, upstream gradient ``dL/dy``, input gradient ``dL/dx`` and parameter
        gradients, followed by the loss's entry. ``print(trace)`` gives a step-by-step transcript.

    Returns:
      ``f(params, x, target, *, state=None, key=None) -> (loss_value, grads)``, jittable;
      ``grads`` has the structure of ``params``. When ``state`` is passed the new state comes
      back after the grads, ``(loss_value, grads, state)``; ``key`` feeds dropout; with
      ``trace=True`` the trace is appended. :func:`explicit` is the same pass in the library's
      uniform form.
    """
    run = explicit(model, loss, trace=trace)

    def edge(params: Any, x: Any, target: Any, *, state: Any = None, key: Any = None) -> tuple:
        value, grads, new_state, *tape = run(params, state, x, target, key=key)
        return (value, grads) + ((new_state,) if state is not None else ()) + tuple(tape)

    return edge


def explicit(model: Layer, loss: Op, *, trace: bool = False) -> Callable[..., tuple]:
    """:func:`value_and_grad` in the uniform form: ``f(params, state, x, target, *, key=None)
    -> (loss_value, grads, new_state)``, plus the trace when ``trace=True``."""
    op, static = as_loss_op(loss, "manualgrad.backprop.value_and_grad")

    def run(params: Any, state: Any, x: Any, target: Any, *, key: Any = None) -> tuple:
        with _trace.recording(enabled=trace) as tape:
            y, new_state, res = model.forward(params, state, x, key=key, train=True)
            value, loss_res = op.fwd(y, target, **static)
            y_bar = op.bwd(loss_res, jnp.ones_like(value))[0]
            slot = _trace.record_forward(op.name, y, value)
            _trace.record_backward(slot, jnp.ones_like(value), (), y_bar)
            grads, _ = model.bwd(res, y_bar)
        return (value, grads, new_state) + ((_trace.Trace(tape.entries),) if trace else ())

    return run
