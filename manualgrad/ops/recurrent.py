r"""Recurrent sequence ops ``rnn``, ``lstm`` and ``gru`` with hand-written backpropagation through time.

``jax.grad`` of a ``lax.scan`` over a step keeps every step's gate activations for the reverse
pass and runs the input projection as one small product per step. Here, as in cuDNN and
PyTorch's fused kernels:

* the input product ``x @ wx`` is one product per block of ``BLOCK`` steps (32), before that
  block's loop, and its gradients $\bar{x}$ and $\bar{W}_x$ one product each after the block's
  backward loop (and so is $\bar{W}_h$, from the saved states); the bias is added step by step,
  inside the cell;
* the residuals are the inputs and the states entering each step (``h``, and ``c`` for the
  LSTM): $O(N T H)$, not $O(N T \cdot 4H)$ of gates plus their activations. The backward
  recomputes each block's ``x @ wx`` (one product) and each step's gates from its saved state,
  and overwrites the block's product step by step with the gate cotangents $\bar{a}_x$, so one
  (N, BLOCK, G H) buffer serves both and no (N, T, G H) array is ever held;
* the backward is one reverse loop over the cell's own hand-written step backward
  ([manualgrad.ops.recurrent_step.Cell][manualgrad.ops.recurrent_step.Cell]), shared by the
  three ops.

Sequences are batch-first, ``x`` (N, T, D), ``hs`` (N, T, H), and so are the loops' buffers (no
transposes). ``lengths`` (N,) gives PyTorch's packed-sequence semantics; ``reverse=True`` runs
each row from its last valid step back to its first (the backward direction of a bidirectional
layer).
"""

from __future__ import annotations

import functools
from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from manualgrad.core import Example, defop
from manualgrad.errors import describe, fail
from manualgrad.ops.recurrent_step import (
    GRU,
    LSTM,
    RNN,
    Cell,
    State,
    cell_args,
    check_cell,
    gru_step,
    lstm_step,
    projection_grads,
    rnn_step,
)

_LENGTHS = """``lengths`` (N,) integers in [0, T], a constant argument (PyTorch's packed sequences): steps
    ``t >= lengths[n]`` leave row n's state unchanged and give ``hs[n, t] = 0``, so the last state
    is row n's state after its own last step, and a row of length 0 keeps its initial state.
    ``reverse=True`` (static) runs each row from step ``lengths[n] - 1`` down to 0 (the reverse
    direction of PyTorch's bidirectional layers); ``hs`` keeps the time order of ``x``. Under
    ``jit``, lengths outside [0, T] cannot be checked and act as clipped to it."""

_BACKWARD = r"""Backward through time, one loop over the steps in the order opposite to the forward's.
    The carry is the cotangent of the state after step $t$: at first the last state's cotangent;
    each step adds ``hs_bar[:, t]`` (the cotangent of ``hs[:, t]``) to its $h$ part, runs the
    cell's step backward (the step op's derivation, the gates recomputed from the saved state
    entering step $t$) and passes the state's cotangent on to step $t - 1$. A step beyond a row's
    length is the identity on the state, so there the carry passes through untouched and
    ``hs_bar`` (of a constant 0) is dropped. The steps run in blocks of ``BLOCK``: a block
    recomputes its ``x @ wx``, each of its steps' $\bar{a}_x$ replaces that step's product in the
    block's buffer, and after the block's loop its $\bar{x} = \bar{a}_x W_x^\top$ is one product
    and $\bar{W}_x \leftarrow \bar{W}_x + x^\top \bar{a}_x$,
    $\bar{W}_h \leftarrow \bar{W}_h + h_{\text{prev}}^\top \bar{a}_h$ and the bias sums one
    product (or sum) each over the block's (N, BLOCK) positions ($h_{\text{prev}}$ the states
    entering the block's steps); $\bar{h}_0$ is the final carry."""


def _valid(lengths: Any, steps: int) -> Any:
    """(T, N, 1) booleans, True where step t of row n is inside its length; None without lengths."""
    if lengths is None:
        return None
    return (jnp.arange(steps)[:, None] < lengths[None, :])[..., None]


@functools.partial(jax.jit, static_argnames=("step", "reverse"))
def reference_scan(step: Callable[..., Any], x: jax.Array, state0: State, weights: tuple, lengths: Any, reverse: bool) -> tuple:
    """The plain reference: ``step(x_t, *state, *weights)`` (a step op's reference) in a ``lax.scan``
    along T, steps past a row's length leaving its state unchanged and giving 0. Returns ``(hs,
    last state)``. Jitted (as are the manual loops) so that eager calls reuse one compiled
    program instead of tracing a fresh scan every time."""

    def body(state, xs):
        x_t, valid_t = xs
        new = step(x_t, *state, *weights)
        new = new if isinstance(new, tuple) else (new,)
        if valid_t is None:
            return new, new[0]
        new = tuple(jnp.where(valid_t, a, b) for a, b in zip(new, state))
        return new, jnp.where(valid_t, new[0], 0)

    last, hs = lax.scan(body, state0, (jnp.swapaxes(x, 0, 1), _valid(lengths, x.shape[1])), reverse=reverse)
    return jnp.swapaxes(hs, 0, 1), last


def _inside(lengths: Any, t: jax.Array) -> Any:
    """(N, 1) booleans: step ``t`` is inside each row's length (None without lengths)."""
    return None if lengths is None else (t < lengths)[:, None]


def _at(a: jax.Array, t: jax.Array) -> jax.Array:
    """Step ``t`` of a batch-first (N, T, ...) array."""
    return lax.dynamic_index_in_dim(a, t, axis=1, keepdims=False)


def _put(a: jax.Array, value: jax.Array, t: jax.Array) -> jax.Array:
    """``a`` with step ``t`` set to ``value``, in place inside a loop."""
    return lax.dynamic_update_index_in_dim(a, value, t, axis=1)


#: steps per block of the input projection: ``x @ wx`` (and in the backward ``ax_bar``) is held
#: for one block at a time, (N, BLOCK, G H), not for the whole sequence
BLOCK = 32


def _blocks(steps: int, reverse: bool, block: Callable[[Any, int, Any], Any], carry: Any) -> Any:
    """``block(start, size, carry) -> carry`` over blocks of ``BLOCK`` steps covering ``range(steps)``
    (a shorter last block holds the remainder), in time order, or from the last block back when
    ``reverse``. Full blocks run in a loop (``start`` traced, ``size`` static); the remainder once."""
    full, rest = divmod(steps, BLOCK)

    def full_block(j, carry):
        return block((full - 1 - j if reverse else j) * BLOCK, BLOCK, carry)

    if rest and reverse:
        carry = block(full * BLOCK, rest, carry)
    if full:
        carry = lax.fori_loop(0, full, full_block, carry)
    if rest and not reverse:
        carry = block(full * BLOCK, rest, carry)
    return carry


def _steps(start: Any, size: int, reverse: bool, step: Callable[[Any, Any, Any], Any], carry: Any) -> Any:
    """``step(local, t, carry) -> carry`` for the ``size`` steps of the block at ``start`` (``local``
    the index inside the block, ``t = start + local``), in time order or reversed."""

    def body(i, carry):
        local = size - 1 - i if reverse else i
        return step(local, start + local, carry)

    return lax.fori_loop(0, size, body, carry)


def _window(a: jax.Array, start: Any, size: int) -> jax.Array:
    """Steps ``start .. start + size - 1`` of a batch-first (N, T, ...) array."""
    return lax.dynamic_slice_in_dim(a, start, size, axis=1)


@functools.partial(jax.jit, static_argnames=("cell", "reverse"))
def sequence_forward(
    cell: Cell, x: jax.Array, state0: State, wx: jax.Array, wh: jax.Array, bx: jax.Array, bh: Any, lengths: Any,
    reverse: bool,
) -> tuple:
    """``(hs, last state, res)``: for each block of steps, its input projection as one product,
    then a loop over its steps. The residuals are the inputs and the states entering each step,
    (N, T, H) each."""
    n, steps = x.shape[:2]

    def block(start, size, carry):
        xw = _window(x, start, size) @ wx  # the bias is added step by step: no second (N, size, G H) buffer

        def step(local, t, carry):
            state, hs, before = carry
            before = tuple(_put(b, s, t) for b, s in zip(before, state))
            new = cell.forward(_at(xw, local) + bx, state, wh, bh)
            inside = _inside(lengths, t)
            if inside is not None:  # past a row's length: the state is kept and the output is 0
                new = tuple(jnp.where(inside, a, b) for a, b in zip(new, state))
                return new, _put(hs, jnp.where(inside, new[0], 0), t), before
            return new, _put(hs, new[0], t), before

        return _steps(start, size, reverse, step, carry)

    buffers = tuple(jnp.zeros((n, steps, s.shape[-1]), s.dtype) for s in state0)
    last, hs, before = _blocks(steps, reverse, block, (tuple(state0), buffers[0], buffers))
    return hs, last, (x, before, wx, wh, bx, bh, lengths)


@functools.partial(jax.jit, static_argnames=("cell", "reverse"))
def sequence_backward(cell: Cell, res: tuple, hs_bar: Any, last_bar: tuple, reverse: bool) -> tuple:
    """``(x_bar, state0_bar, wx_bar, wh_bar, bx_bar, bh_bar)`` by one loop over the steps in reverse,
    block by block. ``hs_bar`` and any part of ``last_bar`` may be None (zero: an output the
    caller did not use)."""
    x, before, wx, wh, bx, bh, lengths = res
    steps = x.shape[1]
    dtype = jnp.result_type(x, *(a for a in (hs_bar, *last_bar) if a is not None))
    carry0 = tuple(jnp.zeros(s.shape[::2], dtype) if a is None else a.astype(dtype) for a, s in zip(last_bar, before))
    hs_bar = None if hs_bar is None else hs_bar.astype(dtype)

    def block(start, size, carry):
        after_bar, x_bar, sums = carry
        x_block = _window(x, start, size)
        xw = (x_block @ wx).astype(dtype)  # recomputed, not kept: overwritten step by step by ax_bar

        def step(local, t, carry):
            after_bar, ax_bar_all, ah_bar_all = carry  # ax_bar_all: the block's x @ wx, overwritten step by step
            cts = after_bar if hs_bar is None else (after_bar[0] + _at(hs_bar, t), *after_bar[1:])
            inside = _inside(lengths, t)
            if inside is not None:
                cts = tuple(jnp.where(inside, a, 0) for a in cts)
            ax_bar, ah_bar, state_bar = cell.backward(_at(ax_bar_all, local) + bx, tuple(_at(b, t) for b in before), wh, bh, cts)
            if inside is not None:  # past a row's length the state passed through unchanged
                state_bar = tuple(a + jnp.where(inside, 0, b) for a, b in zip(state_bar, after_bar))
            if ah_bar_all is not None:
                ah_bar_all = _put(ah_bar_all, ah_bar, local)
            return state_bar, _put(ax_bar_all, ax_bar, local), ah_bar_all

        ah_bar_all = jnp.zeros_like(xw) if cell.distinct_ah_bar else None
        after_bar, ax_bar, ah_bar_all = _steps(start, size, not reverse, step, (after_bar, xw, ah_bar_all))
        x_bar_block, *weight_grads = projection_grads(x_block, _window(before[0], start, size), wx, ax_bar, ah_bar_all)
        x_bar = lax.dynamic_update_slice_in_dim(x_bar, x_bar_block.astype(x_bar.dtype), start, axis=1)
        return after_bar, x_bar, tuple(a + b for a, b in zip(sums, weight_grads))

    # the gradients' shapes and dtypes, for the accumulators: those of a one-step block
    one_step = lambda width, dt: jax.ShapeDtypeStruct((x.shape[0], 1, width), dt)
    ax_bar = one_step(wx.shape[1], dtype)
    proto = jax.eval_shape(projection_grads, one_step(x.shape[2], x.dtype), one_step(wh.shape[0], before[0].dtype), wx,
                           ax_bar, ax_bar)
    x_bar0 = jnp.zeros(x.shape, proto[0].dtype)
    sums0 = tuple(jnp.zeros(p.shape, p.dtype) for p in proto[1:])
    state0_bar, x_bar, (wx_bar, bx_bar, wh_bar, bh_bar) = _blocks(steps, not reverse, block, (carry0, x_bar0, sums0))
    return x_bar, state0_bar, wx_bar, wh_bar, bx_bar, bh_bar


def check_lengths(where: str, x: jax.Array, lengths: Any) -> None:
    """Fail unless ``lengths`` is None or (N,) integers, in [0, T] where they are concrete."""
    if lengths is None:
        return
    n, t = np.shape(x)[:2]
    if np.shape(lengths) != (n,) or not jnp.issubdtype(jnp.result_type(lengths), jnp.integer):
        fail(where, f"{describe('lengths', lengths)} must be (N,) = ({n},) integers, one length per row of x.shape={np.shape(x)}")
    if not isinstance(lengths, jax.core.Tracer):
        values = np.asarray(lengths)
        if values.size and (values.min() < 0 or values.max() > t):
            fail(where, f"lengths must be in [0, T] = [0, {t}] for x.shape={np.shape(x)}; got {values.tolist()}")


def _examples(gates: int, states: int, biases: int) -> Callable[[np.random.Generator], list[Example]]:
    """Ragged lengths with 0 and T in the reverse direction, D != H; T = 1 and N = 1 without lengths.
    (Two: every registry check compiles each example's loops again. The forward direction with
    lengths is held to PyTorch and to the reference in tests/test_recurrent.py.)"""

    def examples(rng: np.random.Generator) -> list[Example]:
        return [
            Example((*cell_args(rng, gates, states, biases, 3, 2, 3, t=4), np.array([4, 0, 2])), {"reverse": True}),
            Example(cell_args(rng, gates, states, biases, 1, 3, 2, t=1)),
        ]

    return examples


# -- rnn -----------------------------------------------------------------------------------------
def _check_rnn(
    x: jax.Array, h0: jax.Array, wx: jax.Array, wh: jax.Array, b: jax.Array, lengths: Any = None, reverse: bool = False
) -> None:
    check_cell("manualgrad.ops.rnn", 1, x, "(N, T, D)", {"h0": h0}, wx, wh, {"b": b})
    check_lengths("manualgrad.ops.rnn", x, lengths)


@defop(static=("reverse",), constant=("lengths",), check=_check_rnn, examples=_examples(1, 1, 1))
def rnn(
    x: jax.Array, h0: jax.Array, wx: jax.Array, wh: jax.Array, b: jax.Array, lengths: Any = None, reverse: bool = False
) -> tuple[jax.Array, jax.Array]:
    r"""The Elman RNN over a sequence: ``(hs, h_last)``, ``hs[:, t] = tanh(x[:, t] @ wx + h @ wh + b)``
    ([rnn_step][manualgrad.ops.rnn_step] along T); ``x`` (N, T, D), ``h0`` (N, H), ``wx`` (D, H),
    ``wh`` (H, H), ``b`` (H,), ``hs`` (N, T, H). PyTorch's ``nn.RNN(batch_first=True)`` with
    ``weight_ih_l0 = wx.T``, ``weight_hh_l0 = wh.T``, ``bias_ih_l0 = b``, ``bias_hh_l0 = 0``.

    {lengths}

    {backward} Here $\bar a_h = \bar a_x = \bar a$.
    """
    hs, (h,) = reference_scan(rnn_step.reference, x, (h0,), (wx, wh, b), lengths, reverse)
    return hs, h


def rnn_fwd(
    x: jax.Array, h0: jax.Array, wx: jax.Array, wh: jax.Array, b: jax.Array, lengths: Any = None, reverse: bool = False
) -> tuple:
    hs, (h,), res = sequence_forward(RNN, x, (h0,), wx, wh, b, None, lengths, reverse)
    return (hs, h), res


def rnn_bwd(res: tuple, g: tuple, reverse: bool = False) -> tuple:
    hs_bar, h_bar = g
    x_bar, (h0_bar,), wx_bar, wh_bar, b_bar, _ = sequence_backward(RNN, res, hs_bar, (h_bar,), reverse)
    return x_bar, h0_bar, wx_bar, wh_bar, b_bar, None


rnn.defvjp(rnn_fwd, rnn_bwd)


# -- lstm ----------------------------------------------------------------------------------------
def _check_lstm(
    x: jax.Array, h0: jax.Array, c0: jax.Array, wx: jax.Array, wh: jax.Array, b: jax.Array, lengths: Any = None,
    reverse: bool = False,
) -> None:
    check_cell("manualgrad.ops.lstm", 4, x, "(N, T, D)", {"h0": h0, "c0": c0}, wx, wh, {"b": b})
    check_lengths("manualgrad.ops.lstm", x, lengths)


@defop(static=("reverse",), constant=("lengths",), check=_check_lstm, examples=_examples(4, 2, 1))
def lstm(
    x: jax.Array, h0: jax.Array, c0: jax.Array, wx: jax.Array, wh: jax.Array, b: jax.Array, lengths: Any = None,
    reverse: bool = False,
) -> tuple[jax.Array, tuple[jax.Array, jax.Array]]:
    r"""The LSTM over a sequence: ``(hs, (h_last, c_last))``, [lstm_step][manualgrad.ops.lstm_step]
    along T (gates in PyTorch's order (i, f, g, o)); ``x`` (N, T, D), ``h0``, ``c0`` (N, H), ``wx``
    (D, 4H), ``wh`` (H, 4H), ``b`` (4H,), ``hs`` (N, T, H). PyTorch's ``nn.LSTM(batch_first=True)``
    with ``weight_ih_l0 = wx.T``, ``weight_hh_l0 = wh.T``, ``bias_ih_l0 = b``, ``bias_hh_l0 = 0``.

    {lengths}

    {backward} The carry is $(\bar h, \bar c)$; $\bar a_h = \bar a_x = \bar a$. Residuals:
    ``x`` and the ``h`` and ``c`` entering each step.
    """
    hs, (h, c) = reference_scan(lstm_step.reference, x, (h0, c0), (wx, wh, b), lengths, reverse)
    return hs, (h, c)


def lstm_fwd(
    x: jax.Array, h0: jax.Array, c0: jax.Array, wx: jax.Array, wh: jax.Array, b: jax.Array, lengths: Any = None,
    reverse: bool = False,
) -> tuple:
    hs, last, res = sequence_forward(LSTM, x, (h0, c0), wx, wh, b, None, lengths, reverse)
    return (hs, last), res


def lstm_bwd(res: tuple, g: tuple, reverse: bool = False) -> tuple:
    hs_bar, last_bar = g
    x_bar, (h0_bar, c0_bar), wx_bar, wh_bar, b_bar, _ = sequence_backward(LSTM, res, hs_bar, tuple(last_bar), reverse)
    return x_bar, h0_bar, c0_bar, wx_bar, wh_bar, b_bar, None


lstm.defvjp(lstm_fwd, lstm_bwd)


# -- gru -----------------------------------------------------------------------------------------
def _check_gru(
    x: jax.Array, h0: jax.Array, wx: jax.Array, wh: jax.Array, bx: jax.Array, bh: jax.Array, lengths: Any = None,
    reverse: bool = False,
) -> None:
    check_cell("manualgrad.ops.gru", 3, x, "(N, T, D)", {"h0": h0}, wx, wh, {"bx": bx, "bh": bh})
    check_lengths("manualgrad.ops.gru", x, lengths)


@defop(static=("reverse",), constant=("lengths",), check=_check_gru, examples=_examples(3, 1, 2))
def gru(
    x: jax.Array, h0: jax.Array, wx: jax.Array, wh: jax.Array, bx: jax.Array, bh: jax.Array, lengths: Any = None,
    reverse: bool = False,
) -> tuple[jax.Array, jax.Array]:
    r"""The GRU over a sequence: ``(hs, h_last)``, [gru_step][manualgrad.ops.gru_step] along T (gates in
    PyTorch's order (r, z, n)); ``x`` (N, T, D), ``h0`` (N, H), ``wx`` (D, 3H), ``wh`` (H, 3H),
    ``bx``, ``bh`` (3H,), ``hs`` (N, T, H). PyTorch's ``nn.GRU(batch_first=True)`` with
    ``weight_ih_l0 = wx.T``, ``weight_hh_l0 = wh.T``, ``bias_ih_l0 = bx``, ``bias_hh_l0 = bh``.

    {lengths}

    {backward} The scan emits $\bar a_x$ and $\bar a_h$ (they differ in the n block), and
    $\bar b_h$ is the sum of $\bar a_h$.
    """
    hs, (h,) = reference_scan(gru_step.reference, x, (h0,), (wx, wh, bx, bh), lengths, reverse)
    return hs, h


def gru_fwd(
    x: jax.Array, h0: jax.Array, wx: jax.Array, wh: jax.Array, bx: jax.Array, bh: jax.Array, lengths: Any = None,
    reverse: bool = False,
) -> tuple:
    hs, (h,), res = sequence_forward(GRU, x, (h0,), wx, wh, bx, bh, lengths, reverse)
    return (hs, h), res


def gru_bwd(res: tuple, g: tuple, reverse: bool = False) -> tuple:
    hs_bar, h_bar = g
    x_bar, (h0_bar,), wx_bar, wh_bar, bx_bar, bh_bar = sequence_backward(GRU, res, hs_bar, (h_bar,), reverse)
    return x_bar, h0_bar, wx_bar, wh_bar, bx_bar, bh_bar, None


gru.defvjp(gru_fwd, gru_bwd)

for _op in (rnn, lstm, gru):
    _op.__doc__ = _op.__doc__.format(lengths=_LENGTHS, backward=_BACKWARD)
