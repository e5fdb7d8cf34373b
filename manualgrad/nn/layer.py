"""The layer convention: four pure functions plus state, keys and a train/eval switch.

A :class:`Layer` holds

* ``init(key, input_shape) -> (output_shape, params)``: shapes include the batch axis;
* ``init_state(input_shape) -> (output_shape, state)``: the layer's non-trained state, a
  pytree kept apart from params so the optimiser never sees it (batch norm's running
  statistics; ``()`` for every layer that has none);
* ``apply(params, x, *, state=None, key=None, train=False)``: ``y``, or ``(y, new_state)``
  when ``state`` is passed. Built from manualgrad ops, so ``jax.grad`` of it runs the
  hand-written rules;
* ``fwd(params, x, *, state=None, key=None, train=False)``: ``(y, res)``, or
  ``(y, new_state, res)`` when ``state`` is passed; and ``bwd(res, y_bar) -> (params_bar,
  x_bar)``: the layer's own forward-with-residuals and backward, used by the explicit pass.

The rule is the same everywhere in manualgrad: **pass state, get state back**. Stateless
code keeps calling ``model.apply(params, x)``. ``key`` is a ``jax.random`` key for the
layers that draw random numbers (dropout); containers hand child ``i`` the key
``fold_in(key, i)``. ``train`` switches dropout on and batch norm to batch statistics.
This is Haiku's ``apply(params, state, rng, x)`` with equinox's separate state pytree,
written as keyword arguments so that stateless models need no change.
"""

from __future__ import annotations

import contextlib
from typing import Any, Callable, Iterator, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from manualgrad import ops, trace

__all__ = ["Layer", "primitive", "stateless", "serial", "fanout", "residual", "child_key", "init_state", "training_key"]


class Layer(NamedTuple):
    """A layer or network (see the module docstring for the five functions).

    ``Layer(init, apply, fwd, bwd)`` with four hand-made functions of the stateless form
    (``apply(params, x)``, ``fwd(params, x)``) is still a layer: its ``init_state`` is None,
    and containers, training and checks treat it as a layer without state or randomness.
    """

    init: Callable[..., tuple[Any, Any]]
    apply: Callable[..., Any]
    fwd: Callable[..., tuple]
    bwd: Callable[[Any, Any], tuple[Any, Any]]
    init_state: Callable[[tuple], tuple[Any, Any]] | None = None


@contextlib.contextmanager
def _blame(name: str) -> Iterator[None]:
    """Prefix an op's ValueError with the layer it was raised in."""
    try:
        yield
    except ValueError as e:
        raise ValueError(f"manualgrad.nn.{name}: {e}") from None


def child_key(key: jax.Array | None, i: int) -> jax.Array | None:
    """The key of a container's ``i``-th child: ``fold_in(key, i)`` (None stays None)."""
    return None if key is None else jax.random.fold_in(key, i)


def training_key(key: jax.Array | None, train: bool, what: str) -> bool:
    """Whether a random layer is active (``train``); training without a key is an error that says
    how to pass one (the layer's name is added by :func:`primitive`). ``what`` says what it draws."""
    if train and key is None:
        raise ValueError(
            f"training mode (train=True) {what} and needs a key: pass key=jax.random.key(seed) "
            "to apply/fwd (fit and make_epoch pass one per step), or train=False for evaluation"
        )
    return train


def positive_int(name: str, where: str, value: Any) -> int:
    """``value`` as an int, or a ValueError naming the layer ``where`` and the argument ``name``."""
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
        raise ValueError(f"manualgrad.nn.{where}: {name} must be a positive integer, got {value!r}")
    return int(value)


def _output_shape(init: Callable, input_shape: tuple) -> tuple:
    """The output shape ``init`` reports, found by tracing it abstractly (no arrays are made)."""
    found = []

    def run(key):
        shape, params = init(key, input_shape)
        found.append(shape)
        return params

    jax.eval_shape(run, jax.random.key(0))
    return found[0]


def _outer(call: Callable, fwd: Callable, bwd: Callable, init: Callable, init_states: Callable) -> Layer:
    """A Layer from the uniform inner forms ``call(params, state, x, key, train) -> (y, state)``
    and ``fwd(params, state, x, key, train) -> (y, state, res)``."""

    def apply_(params, x, *, state=None, key=None, train=False):
        y, new_state = call(params, state, x, key, train)
        return y if state is None else (y, new_state)

    def fwd_(params, x, *, state=None, key=None, train=False):
        y, new_state, res = fwd(params, state, x, key, train)
        return (y, res) if state is None else (y, new_state, res)

    return Layer(init, apply_, fwd_, bwd, init_states)


def primitive(
    name: str,
    init: Callable,
    call: Callable,
    fwd: Callable,
    bwd: Callable,
    state_init: Callable[[tuple], Any] | None = None,
) -> Layer:
    """A leaf layer from ``call(params, state, x, key, train) -> (y, state)``, ``fwd(params,
    state, x, key, train) -> (y, state, res)``, ``bwd(res, y_bar)`` and, for a layer with
    state, ``state_init(input_shape) -> state``. Errors name the layer, and the explicit
    pass records the layer in its trace. ``state`` is None when the caller passed none."""

    def call_(params, state, x, key, train):
        with _blame(name):
            return call(params, state, trace.tap(x), key, train)

    def fwd_(params, state, x, key, train):
        with _blame(name):
            y, state, res = fwd(params, state, x, key, train)
        return y, state, (res, trace.record_forward(name, x, y))

    def bwd_(res, y_bar):
        res, slot = res
        params_bar, x_bar = bwd(res, y_bar)
        trace.record_backward(slot, y_bar, params_bar, x_bar)
        return params_bar, x_bar

    def init_(key, input_shape):
        with _blame(name):
            return init(key, tuple(input_shape))

    def init_state_(input_shape):
        input_shape = tuple(input_shape)
        with _blame(name):
            return _output_shape(init, input_shape), (state_init(input_shape) if state_init else ())

    return _outer(call_, fwd_, bwd_, init_, init_state_)


def stateless(name: str, init: Callable, apply: Callable, fwd: Callable, bwd: Callable) -> Layer:
    """A leaf layer with no state and no randomness, from ``apply(params, x)``,
    ``fwd(params, x) -> (y, res)`` and ``bwd(res, y_bar)``; the state passes through."""

    def call(params, state, x, key, train):
        return apply(params, x), state

    def fwd_(params, state, x, key, train):
        y, res = fwd(params, x)
        return y, state, res

    return primitive(name, init, call, fwd_, bwd)


def init_state(layer: Layer, input_shape: tuple) -> tuple[Any, Any]:
    """``layer.init_state(input_shape)``, also for a hand-made four-function layer (state ``()``)."""
    if layer.init_state is None:
        return _output_shape(layer.init, tuple(input_shape)), ()
    return layer.init_state(input_shape)


def _inner(layer: Layer) -> tuple[Callable, Callable]:
    """``layer``'s uniform inner forms ``call``/``fwd`` (the state always comes back)."""
    if layer.init_state is None:  # a hand-made stateless layer: apply(params, x), fwd(params, x)

        def call_plain(params, state, x, key, train):
            return layer.apply(params, x), state

        def fwd_plain(params, state, x, key, train):
            y, res = layer.fwd(params, x)
            return y, state, res

        return call_plain, fwd_plain

    def call(params, state, x, key, train):
        if state is None:
            return layer.apply(params, x, key=key, train=train), None
        return layer.apply(params, x, state=state, key=key, train=train)

    def fwd(params, state, x, key, train):
        if state is None:
            y, res = layer.fwd(params, x, key=key, train=train)
            return y, None, res
        return layer.fwd(params, x, state=state, key=key, train=train)

    return call, fwd


def _child_states(state: Any, n: int, where: str) -> tuple:
    if state is None:
        return (None,) * n
    if not isinstance(state, tuple) or len(state) != n:
        raise ValueError(
            f"manualgrad.nn.{where}: state must be a tuple with one entry per child ({n}), as "
            f"init_state returns it; got {type(state).__name__} of length {len(state) if isinstance(state, tuple) else '-'}"
        )
    return state


def _gather(states: list, given: Any) -> Any:
    return None if given is None else tuple(states)


def serial(*layers: Layer) -> Layer:
    """Layers applied one after the other; params and state are tuples, one entry per layer.

    Backward: the chain rule, applied in reverse order; each layer's ``x_bar`` is the
    ``y_bar`` of the layer before it. Layer ``i`` gets the key ``fold_in(key, i)``.
    """
    inner = [_inner(layer) for layer in layers]

    def init(key, input_shape):
        params = []
        for layer, k in zip(layers, jax.random.split(key, len(layers))):
            input_shape, p = layer.init(k, input_shape)
            params.append(p)
        return input_shape, tuple(params)

    def init_states(input_shape):
        states = []
        for layer in layers:
            input_shape, s = init_state(layer, input_shape)
            states.append(s)
        return input_shape, tuple(states)

    def call(params, state, x, key, train):
        states = []
        for i, ((c, _), p, s) in enumerate(zip(inner, params, _child_states(state, len(layers), "serial"))):
            with trace.scope(str(i)):
                x, s = c(p, s, x, child_key(key, i), train)
            states.append(s)
        return x, _gather(states, state)

    def fwd(params, state, x, key, train):
        res, states = [], []
        for i, ((_, f), p, s) in enumerate(zip(inner, params, _child_states(state, len(layers), "serial"))):
            with trace.scope(str(i)):
                x, s, r = f(p, s, x, child_key(key, i), train)
            res.append(r)
            states.append(s)
        return x, _gather(states, state), tuple(res)

    def bwd(res, y_bar):
        params_bar = [None] * len(layers)
        for i in reversed(range(len(layers))):
            params_bar[i], y_bar = layers[i].bwd(res[i], y_bar)
        return tuple(params_bar), y_bar

    return _outer(call, fwd, bwd, init, init_states)


def fanout(*branches: Layer) -> Layer:
    """Every branch gets the same input; the output is a tuple, one entry per branch.

    Backward: the input was used by every branch, so its cotangent is the **sum** of the
    branches' ``x_bar`` (``dL/dx = sum_k dL_k/dx``). A shared trunk with two heads is
    ``serial(trunk..., fanout(head1, head2))`` and the trunk sees both heads' gradients.
    The explicit pass's trace has a ``fanout(k)`` entry whose ``dL/dx`` is that sum.
    Params and state are tuples with one entry per branch; branch ``i`` gets ``fold_in(key, i)``.
    """
    name = f"fanout({len(branches)})"
    inner = [_inner(b) for b in branches]

    def init(key, input_shape):
        shapes, params = [], []
        for branch, k in zip(branches, jax.random.split(key, len(branches))):
            s, p = branch.init(k, input_shape)
            shapes.append(s)
            params.append(p)
        return tuple(shapes), tuple(params)

    def init_states(input_shape):
        shapes, states = zip(*(init_state(b, input_shape) for b in branches))
        return tuple(shapes), tuple(states)

    def call(params, state, x, key, train):
        x = trace.tap(x)
        ys, states = [], []
        for i, ((c, _), p, s) in enumerate(zip(inner, params, _child_states(state, len(branches), name))):
            with trace.scope(f"head{i}"):
                y, s = c(p, s, x, child_key(key, i), train)
            ys.append(y)
            states.append(s)
        return tuple(ys), _gather(states, state)

    def fwd(params, state, x, key, train):
        ys, res, states = [], [], []
        slot = trace.record_forward(name, x, None)
        for i, ((_, f), p, s) in enumerate(zip(inner, params, _child_states(state, len(branches), name))):
            with trace.scope(f"head{i}"):
                y, s, r = f(p, s, x, child_key(key, i), train)
            ys.append(y)
            res.append(r)
            states.append(s)
        trace.fill_output(slot, tuple(ys))
        return tuple(ys), _gather(states, state), (tuple(res), slot)

    def bwd(res, y_bars):
        res, slot = res
        params_bar, x_bar = [], None
        for b, r, g in zip(branches, res, y_bars):
            pb, xb = b.bwd(r, g)
            params_bar.append(pb)
            x_bar = xb if x_bar is None else jax.tree_util.tree_map(jnp.add, x_bar, xb)
        trace.record_backward(slot, tuple(y_bars), (), x_bar)
        return tuple(params_bar), x_bar

    return _outer(call, fwd, bwd, init, init_states)


def residual(*layers: Layer) -> Layer:
    """A skip connection around ``f = serial(*layers)``: ``y = x + f(x)`` (``f`` keeps the shape).

    Backward: ``x`` reaches ``y`` along two paths, the skip (the identity) and ``f``, so its
    cotangent is their sum, ``x_bar = y_bar + f.bwd(y_bar)[1]``: the skip path hands ``y_bar``
    back unchanged, which is why deep residual networks keep their gradients. Params and
    state are ``f``'s (a tuple, one entry per layer, as :func:`serial`'s). The explicit pass's
    trace has a ``residual(k)`` entry whose ``dL/dx`` is that sum.
    """
    name = f"residual({len(layers)})"
    body = serial(*layers)
    call_body, fwd_body = _inner(body)

    def call(params, state, x, key, train):
        x = trace.tap(x)
        h, state = call_body(params, state, x, key, train)
        return ops.add(x, h), state

    def fwd(params, state, x, key, train):
        slot = trace.record_forward(name, x, None)
        h, state, res = fwd_body(params, state, x, key, train)
        y, add_res = ops.add.fwd(x, h)
        trace.fill_output(slot, y)
        return y, state, (res, add_res, slot)

    def bwd(res, y_bar):
        res, add_res, slot = res
        skip_bar, h_bar = ops.add.bwd(add_res, y_bar)
        params_bar, x_bar = body.bwd(res, h_bar)
        x_bar = skip_bar + x_bar
        trace.record_backward(slot, y_bar, (), x_bar)
        return params_bar, x_bar

    def init(key, input_shape):
        output_shape, params = body.init(key, input_shape)
        if tuple(output_shape) != tuple(input_shape):
            raise ValueError(
                f"manualgrad.nn.{name}: the branch maps input_shape={tuple(input_shape)} to {tuple(output_shape)}; "
                "x + f(x) needs f to keep the shape"
            )
        return output_shape, params

    return _outer(call, fwd, bwd, init, body.init_state)
