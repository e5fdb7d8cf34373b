"""The layer convention: init, init_state, and one uniform call with params, state, key and mode.

A :class:`Layer` is the stax NamedTuple ``(init, apply, fwd, bwd)`` plus ``init_state``:

* ``init(key, input_shape) -> (output_shape, params)``: shapes include the batch axis;
* ``init_state(input_shape) -> (output_shape, state)``: the layer's non-trained state, a
  pytree kept apart from params so the optimiser never sees it (batch norm's running
  statistics; ``()`` for every layer that has none);
* ``bwd(res, y_bar) -> (params_bar, x_bar)``: the hand-written backward.

**Inside the library** every layer is called in one form, with one argument order (params,
state, inputs, then keyword key and mode), and always returns its state:

* ``layer.call(params, state, x, *, key=None, train=False) -> (y, new_state)``;
* ``layer.forward(params, state, x, *, key=None, train=False) -> (y, new_state, res)``: the
  forward with residuals for ``bwd``, used by the explicit pass.

``state`` is ``()`` for a layer without state; ``None`` means the caller tracks none (a
stateful layer then computes without it: batch norm trains on batch statistics and returns
``None``). **At the public edge** the same functions take state as an optional keyword, the
form stateless code has always used:

* ``apply(params, x, *, state=None, key=None, train=False)``: ``y``, or ``(y, new_state)``
  when ``state`` is passed;
* ``fwd(params, x, *, state=None, key=None, train=False)``: ``(y, res)``, or ``(y, new_state,
  res)`` when ``state`` is passed.

``key`` is a ``jax.random`` key for layers that draw random numbers (dropout, augmentation);
containers hand child ``i`` the key :func:`manualgrad.keys.child_key` ``(key, i)``. ``train``
switches dropout on and batch norm to batch statistics. This is Haiku's ``apply(params, state,
rng, x)`` with equinox's separate state pytree.

``Layer(init, apply, fwd, bwd)`` built by hand from four stax-style functions (``apply(params,
x)``, ``fwd(params, x) -> (y, res)``) stays a layer: the constructor adapts it once to the
uniform form (no state, no key), so nothing inside the library tells the two apart.
"""

from __future__ import annotations

from typing import Any, Callable, NamedTuple

import jax
import jax.numpy as jnp

from manualgrad import ops, trace
from manualgrad.errors import blame, describe, fail
from manualgrad.keys import child_key

__all__ = ["Layer", "FinalShape", "primitive", "stateless", "serial", "fanout", "residual", "init_state", "draws_random"]

#: ``call(params, state, x, *, key, train) -> (y, state)``
Call = Callable[..., tuple[Any, Any]]
#: ``forward(params, state, x, *, key, train) -> (y, state, res)``
Forward = Callable[..., tuple[Any, Any, Any]]


class Apply:
    """A layer's public ``apply``: ``y``, or ``(y, new_state)`` when ``state`` is passed.
    ``.call`` is the uniform form the library uses."""

    __slots__ = ("call", "__weakref__")

    def __init__(self, call: Call):
        self.call = call

    def __call__(self, params: Any, x: Any, *, state: Any = None, key: Any = None, train: bool = False) -> Any:
        y, new_state = self.call(params, state, x, key=key, train=train)
        return y if state is None else (y, new_state)


class Fwd:
    """A layer's public ``fwd``: ``(y, res)``, or ``(y, new_state, res)`` when ``state`` is passed.
    ``.forward`` is the uniform form the library uses."""

    __slots__ = ("forward", "__weakref__")

    def __init__(self, forward: Forward):
        self.forward = forward

    def __call__(self, params: Any, x: Any, *, state: Any = None, key: Any = None, train: bool = False) -> tuple:
        y, new_state, res = self.forward(params, state, x, key=key, train=train)
        return (y, res) if state is None else (y, new_state, res)


class _Fields(NamedTuple):
    init: Callable[..., tuple[Any, Any]]
    apply: Callable[..., Any]
    fwd: Callable[..., tuple]
    bwd: Callable[[Any, Any], tuple[Any, Any]]
    init_state: Callable[[tuple], tuple[Any, Any]] | None = None


class Layer(_Fields):
    """A layer or network: ``init``, ``apply``, ``fwd``, ``bwd``, ``init_state`` (see the module
    docstring), and the uniform :meth:`call` and :meth:`forward` the library calls.

    ``Layer(init, apply, fwd, bwd)`` of four stax-style functions is adapted here, once: its
    state is ``()`` and it takes no key.
    """

    __slots__ = ()

    def __new__(cls, init, apply, fwd, bwd, init_state=None):
        if not isinstance(apply, Apply) or not isinstance(fwd, Fwd):
            apply, fwd, init_state = _adapt_stax(init, apply, fwd)
        return super().__new__(cls, init, apply, fwd, bwd, init_state)

    def call(self, params: Any, state: Any, x: Any, *, key: Any = None, train: bool = False) -> tuple[Any, Any]:
        """The layer applied: ``(y, new_state)``."""
        return self.apply.call(params, state, x, key=key, train=train)

    def forward(self, params: Any, state: Any, x: Any, *, key: Any = None, train: bool = False) -> tuple[Any, Any, Any]:
        """The layer's forward with residuals for ``bwd``: ``(y, new_state, res)``."""
        return self.fwd.forward(params, state, x, key=key, train=train)


def _adapt_stax(init: Callable, apply: Callable, fwd: Callable) -> tuple[Apply, Fwd, Callable]:
    """The uniform form of a hand-made ``Layer(init, apply, fwd, bwd)``: no state, no key."""

    def call(params, state, x, *, key=None, train=False):
        return apply(params, x), state

    def forward(params, state, x, *, key=None, train=False):
        y, res = fwd(params, x)
        return y, state, res

    def init_state_(input_shape):
        return _output_shape(init, tuple(input_shape)), ()

    return Apply(call), Fwd(forward), init_state_


def _output_shape(init: Callable, input_shape: tuple) -> tuple:
    """The output shape ``init`` reports, found by tracing it abstractly (no arrays are made)."""
    found = []

    def run(key):
        shape, params = init(key, input_shape)
        found.append(shape)
        return params

    jax.eval_shape(run, jax.random.key(0))
    return found[0]


class FinalShape(tuple):
    """The output "shape" of a layer whose output no other layer takes (a
    :func:`~manualgrad.nn.LinearCrossEntropyHead`'s ``(x, w, b)``, made for the loss): a layer
    given it as its input shape fails, naming the layer ``after`` which it was placed."""

    after: str

    def __new__(cls, shapes: tuple, after: str) -> FinalShape:
        shape = super().__new__(cls, shapes)
        shape.after = after
        return shape


jax.tree_util.register_pytree_node(  # a shape traced through jax.eval_shape stays a FinalShape
    FinalShape, lambda s: (tuple(s), s.after), lambda after, shapes: FinalShape(shapes, after)
)


def _refuse_final(input_shape: Any) -> None:
    if isinstance(input_shape, FinalShape):
        raise ValueError(
            f"its input is the output of {input_shape.after}, which must be the model's last layer "
            f"(its output {tuple(input_shape)} is the triple (x, w, b) for the loss, not an array)"
        )


def _layer(init: Callable, call: Call, forward: Forward, bwd: Callable, init_state_: Callable) -> Layer:
    return Layer(init, Apply(call), Fwd(forward), bwd, init_state_)


def draws_random(key: jax.Array | None, train: bool, what: str) -> bool:
    """Whether a random layer draws in this call (it does in training); training without a key
    is an error that says how to pass one (the layer's name is added by :func:`primitive`).
    ``what`` says what it draws."""
    if train and key is None:
        raise ValueError(
            f"training mode (train=True) {what} and needs a key: pass key=jax.random.key(seed) "
            "to apply/fwd (fit and make_epoch pass one per step), or train=False for evaluation"
        )
    return train


def primitive(
    name: str,
    init: Callable,
    call: Call,
    forward: Forward,
    bwd: Callable,
    state_init: Callable[[tuple], Any] | None = None,
) -> Layer:
    """A leaf layer from its uniform functions.

    Args:
      name: the layer's name in errors and traces, e.g. ``"Linear(3)"``.
      init: ``init(key, input_shape) -> (output_shape, params)``.
      call: ``call(params, state, x, *, key, train) -> (y, new_state)``.
      forward: ``forward(params, state, x, *, key, train) -> (y, new_state, res)``.
      bwd: ``bwd(res, y_bar) -> (params_bar, x_bar)``.
      state_init: for a layer with state, ``state_init(input_shape) -> state``.

    Returns:
      The :class:`Layer`. Its errors are prefixed ``manualgrad.nn.<name>``, and the explicit
      pass records it in its trace. ``state`` is None when the caller tracks none.
    """
    where = f"manualgrad.nn.{name}"

    def check_state(state):
        if state_init is None and not (state is None or (isinstance(state, tuple) and not state)):
            leaves = jax.tree_util.tree_leaves(state)
            raise ValueError(
                f"this layer has no state (init_state gives it ()), but it was given a state with "
                f"{len(leaves)} array(s): {describe('state', state) if leaves else repr(state)}; was it "
                "another model's state?"
            )

    def call_(params, state, x, *, key=None, train=False):
        with blame(where):
            check_state(state)
            return call(params, state, trace.tap(x), key=key, train=train)

    def forward_(params, state, x, *, key=None, train=False):
        with blame(where):
            check_state(state)
            y, state, res = forward(params, state, x, key=key, train=train)
        return y, state, (res, trace.record_forward(name, x, y))

    def bwd_(res, y_bar):
        res, slot = res
        params_bar, x_bar = bwd(res, y_bar)
        trace.record_backward(slot, y_bar, params_bar, x_bar)
        return params_bar, x_bar

    def init_(key, input_shape):
        with blame(where):
            _refuse_final(input_shape)
            return init(key, tuple(input_shape))

    def init_state_(input_shape):
        with blame(where):
            _refuse_final(input_shape)
            input_shape = tuple(input_shape)
            return _output_shape(init, input_shape), (state_init(input_shape) if state_init else ())

    return _layer(init_, call_, forward_, bwd_, init_state_)


def stateless(name: str, init: Callable, apply: Callable, fwd: Callable, bwd: Callable) -> Layer:
    """A leaf layer with no state and no randomness, from ``apply(params, x)``,
    ``fwd(params, x) -> (y, res)`` and ``bwd(res, y_bar)``; the state passes through."""

    def call(params, state, x, *, key, train):
        return apply(params, x), state

    def forward(params, state, x, *, key, train):
        y, res = fwd(params, x)
        return y, state, res

    return primitive(name, init, call, forward, bwd)


def init_state(layer: Layer, input_shape: tuple) -> tuple[Any, Any]:
    """``layer.init_state(input_shape)``: ``(output_shape, state)``."""
    return layer.init_state(tuple(input_shape))


def _per_child(what: str, value: Any, n: int, where: str) -> tuple:
    """A container's params, state or output cotangents (``what``) split into its ``n``
    children's; a state of None (the caller tracks none) is None for each."""
    if what == "state" and value is None:
        return (None,) * n
    if not isinstance(value, (tuple, list)) or len(value) != n:
        source = {"params": "init", "state": "init_state"}.get(what)
        fail(
            f"manualgrad.nn.{where}",
            f"{what} must be a tuple with one entry per child ({n}){f', as {source} returns it' if source else ''}; "
            f"got {type(value).__name__}{f' of length {len(value)}' if isinstance(value, (tuple, list)) else ''}",
        )
    return tuple(value)


def _children(params: Any, state: Any, n: int, where: str) -> zip:
    """``(params_i, state_i)`` per child of a container, both split by :func:`_per_child`."""
    return zip(_per_child("params", params, n, where), _per_child("state", state, n, where))


def _gather(states: list, given: Any) -> Any:
    return None if given is None else tuple(states)


def serial(*layers: Layer) -> Layer:
    """Layers applied one after the other; params and state are tuples, one entry per layer.

    Backward: the chain rule, applied in reverse order; each layer's ``x_bar`` is the
    ``y_bar`` of the layer before it. Layer ``i`` gets the key ``child_key(key, i)``.
    """

    def init(key, input_shape):
        params = []
        for layer, k in zip(layers, jax.random.split(key, len(layers))):
            input_shape, p = layer.init(k, input_shape)
            params.append(p)
        return input_shape, tuple(params)

    def init_states(input_shape):
        states = []
        for layer in layers:
            input_shape, s = layer.init_state(input_shape)
            states.append(s)
        return input_shape, tuple(states)

    def call(params, state, x, *, key=None, train=False):
        states = []
        for i, (layer, (p, s)) in enumerate(zip(layers, _children(params, state, len(layers), "serial"))):
            with trace.scope(str(i)):
                x, s = layer.call(p, s, x, key=child_key(key, i), train=train)
            states.append(s)
        return x, _gather(states, state)

    def forward(params, state, x, *, key=None, train=False):
        res, states = [], []
        for i, (layer, (p, s)) in enumerate(zip(layers, _children(params, state, len(layers), "serial"))):
            with trace.scope(str(i)):
                x, s, r = layer.forward(p, s, x, key=child_key(key, i), train=train)
            res.append(r)
            states.append(s)
        return x, _gather(states, state), tuple(res)

    def bwd(res, y_bar):
        params_bar = [None] * len(layers)
        for i in reversed(range(len(layers))):
            params_bar[i], y_bar = layers[i].bwd(res[i], y_bar)
        return tuple(params_bar), y_bar

    return _layer(init, call, forward, bwd, init_states)


def fanout(*branches: Layer) -> Layer:
    """Every branch gets the same input; the output is a tuple, one entry per branch.

    Backward: the input was used by every branch, so its cotangent is the **sum** of the
    branches' ``x_bar`` (``dL/dx = sum_k dL_k/dx``). A shared trunk with two heads is
    ``serial(trunk..., fanout(head1, head2))`` and the trunk sees both heads' gradients.
    The explicit pass's trace has a ``fanout(k)`` entry whose ``dL/dx`` is that sum.
    Params and state are tuples with one entry per branch; branch ``i`` gets ``child_key(key, i)``.
    """
    name = f"fanout({len(branches)})"

    def init(key, input_shape):
        shapes, params = [], []
        for branch, k in zip(branches, jax.random.split(key, len(branches))):
            s, p = branch.init(k, input_shape)
            shapes.append(s)
            params.append(p)
        return tuple(shapes), tuple(params)

    def init_states(input_shape):
        shapes, states = zip(*(b.init_state(input_shape) for b in branches))
        return tuple(shapes), tuple(states)

    def call(params, state, x, *, key=None, train=False):
        x = trace.tap(x)
        ys, states = [], []
        for i, (b, (p, s)) in enumerate(zip(branches, _children(params, state, len(branches), name))):
            with trace.scope(f"head{i}"):
                y, s = b.call(p, s, x, key=child_key(key, i), train=train)
            ys.append(y)
            states.append(s)
        return tuple(ys), _gather(states, state)

    def forward(params, state, x, *, key=None, train=False):
        ys, res, states = [], [], []
        slot = trace.record_forward(name, x, None)
        for i, (b, (p, s)) in enumerate(zip(branches, _children(params, state, len(branches), name))):
            with trace.scope(f"head{i}"):
                y, s, r = b.forward(p, s, x, key=child_key(key, i), train=train)
            ys.append(y)
            res.append(r)
            states.append(s)
        trace.fill_output(slot, tuple(ys))
        return tuple(ys), _gather(states, state), (tuple(res), slot)

    def bwd(res, y_bars):
        res, slot = res
        params_bar, x_bar = [], None
        for b, r, g in zip(branches, res, _per_child("y_bar", y_bars, len(branches), name)):
            pb, xb = b.bwd(r, g)
            params_bar.append(pb)
            x_bar = xb if x_bar is None else jax.tree_util.tree_map(jnp.add, x_bar, xb)
        trace.record_backward(slot, tuple(y_bars), (), x_bar)
        return tuple(params_bar), x_bar

    return _layer(init, call, forward, bwd, init_states)


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

    def call(params, state, x, *, key=None, train=False):
        x = trace.tap(x)
        h, state = body.call(params, state, x, key=key, train=train)
        return ops.add(x, h), state

    def forward(params, state, x, *, key=None, train=False):
        slot = trace.record_forward(name, x, None)
        h, state, res = body.forward(params, state, x, key=key, train=train)
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
            fail(
                f"manualgrad.nn.{name}",
                f"the branch maps input_shape={tuple(input_shape)} to {tuple(output_shape)}; x + f(x) needs f to keep the shape",
            )
        return output_shape, params

    return _layer(init, call, forward, bwd, body.init_state)
