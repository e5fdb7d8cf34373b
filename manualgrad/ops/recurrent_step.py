"""Recurrent cells, one step each: the Elman RNN, the LSTM and the GRU, with hand-written VJPs.

Each cell is written once as a [Cell][manualgrad.ops.recurrent_step.Cell]: its forward from the
step's input projection ``ax = x @ wx + bx`` and the previous state, and its backward, which
recomputes the gates from the same inputs. The step ops here (``rnn_step``, ``lstm_step``,
``gru_step``) and the sequence ops of [manualgrad.ops.recurrent][manualgrad.ops.recurrent] share
these cells, the projection and its gradients.

Weights are stored as PyTorch stores them, transposed: ``wx`` (D, G H) is ``weight_ih.T`` and
``wh`` (H, G H) is ``weight_hh.T``, with the G gate blocks in PyTorch's order (LSTM (i, f, g, o),
GRU (r, z, n)), so weights copy across with a transpose.
"""

from __future__ import annotations

import functools
from typing import Any, Callable, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from manualgrad.core import Example, defop
from manualgrad.errors import describe, fail, same_dtype

State = tuple  # (h,) or (h, c)


class Cell(NamedTuple):
    """One recurrent cell's math.

    ``forward(ax, state, wh, bh) -> state'``: ``ax`` the step's input projection (..., G H),
    ``state`` a tuple ``(h,)`` or ``(h, c)``, ``bh`` the hidden bias (the GRU's) or None.
    ``backward(ax, state, wh, bh, state_bar') -> (ax_bar, ah_bar, state_bar)``: from the cotangent
    of ``state'``, the cotangents of the input projection, of the hidden projection ``h @ wh +
    bh`` (None when it equals ``ax_bar``: the RNN's and LSTM's gates see only ``ax + ah``), and
    of ``state`` (its ``h`` part includes ``ah_bar @ wh.T``). The gates are recomputed, not kept.
    ``distinct_ah_bar``: whether ``backward`` returns an ``ah_bar`` of its own (the GRU's).
    """

    gates: int
    forward: Callable[..., State]
    backward: Callable[..., tuple[jax.Array, Any, State]]
    distinct_ah_bar: bool = False


def _rnn_forward(ax: jax.Array, state: State, wh: jax.Array, bh: None) -> State:
    (h,) = state
    return (jnp.tanh(ax + h @ wh),)


def _rnn_backward(ax: jax.Array, state: State, wh: jax.Array, bh: None, cts: State) -> tuple:
    (h_next,) = _rnn_forward(ax, state, wh, bh)
    a_bar = cts[0] * (1 - h_next * h_next)
    return a_bar, None, (a_bar @ wh.T,)


def _lstm_gates(ax: jax.Array, h: jax.Array, wh: jax.Array) -> tuple:
    i, f, g, o = jnp.split(ax + h @ wh, 4, axis=-1)
    return jax.nn.sigmoid(i), jax.nn.sigmoid(f), jnp.tanh(g), jax.nn.sigmoid(o)


def _lstm_forward(ax: jax.Array, state: State, wh: jax.Array, bh: None) -> State:
    h, c = state
    i, f, g, o = _lstm_gates(ax, h, wh)
    c_next = f * c + i * g
    return o * jnp.tanh(c_next), c_next


def _lstm_backward(ax: jax.Array, state: State, wh: jax.Array, bh: None, cts: State) -> tuple:
    h, c = state
    h_bar, c_bar = cts
    i, f, g, o = _lstm_gates(ax, h, wh)
    tanh_c = jnp.tanh(f * c + i * g)
    c_bar = c_bar + h_bar * o * (1 - tanh_c * tanh_c)  # c_next's total cotangent
    a_bar = jnp.concatenate(
        [c_bar * g * i * (1 - i), c_bar * c * f * (1 - f), c_bar * i * (1 - g * g), h_bar * tanh_c * o * (1 - o)],
        axis=-1,
    )
    return a_bar, None, (a_bar @ wh.T, c_bar * f)


def _gru_gates(ax: jax.Array, h: jax.Array, wh: jax.Array, bh: jax.Array) -> tuple:
    x_r, x_z, x_n = jnp.split(ax, 3, axis=-1)
    h_r, h_z, h_n = jnp.split(h @ wh + bh, 3, axis=-1)
    r, z = jax.nn.sigmoid(x_r + h_r), jax.nn.sigmoid(x_z + h_z)
    return r, z, jnp.tanh(x_n + r * h_n), h_n


def _gru_forward(ax: jax.Array, state: State, wh: jax.Array, bh: jax.Array) -> State:
    (h,) = state
    _, z, n, _ = _gru_gates(ax, h, wh, bh)
    return ((1 - z) * n + z * h,)


def _gru_backward(ax: jax.Array, state: State, wh: jax.Array, bh: jax.Array, cts: State) -> tuple:
    (h,) = state
    (h_bar,) = cts
    r, z, n, h_n = _gru_gates(ax, h, wh, bh)
    an_bar = h_bar * (1 - z) * (1 - n * n)
    az_bar = h_bar * (h - n) * z * (1 - z)
    ar_bar = an_bar * h_n * r * (1 - r)
    ah_bar = jnp.concatenate([ar_bar, az_bar, an_bar * r], axis=-1)
    return jnp.concatenate([ar_bar, az_bar, an_bar], axis=-1), ah_bar, (h_bar * z + ah_bar @ wh.T,)


RNN = Cell(1, _rnn_forward, _rnn_backward)
LSTM = Cell(4, _lstm_forward, _lstm_backward)
GRU = Cell(3, _gru_forward, _gru_backward, distinct_ah_bar=True)


# -- the input projection, shared by the step and the sequence ops ------------------------------
def project(x: jax.Array, wx: jax.Array, bx: jax.Array) -> jax.Array:
    """``x @ wx + bx`` for ``x`` (..., D): every step's input projection at once."""
    return x @ wx + bx


def projection_grads(x: jax.Array, h: jax.Array, wx: jax.Array, ax_bar: jax.Array, ah_bar: Any) -> tuple:
    """``(x_bar, wx_bar, bx_bar, wh_bar, bh_bar)`` from the projections' cotangents.

    ``x`` (..., D) and ``h`` (..., H) are the inputs of ``ax = x @ wx + bx`` and ``ah = h @ wh +
    bh`` and ``ax_bar``, ``ah_bar`` (..., G H) their cotangents (``ah_bar`` None: ``ax_bar``);
    each weight's gradient is one product contracting every leading axis (batch, and time).
    """
    ah_bar = ax_bar if ah_bar is None else ah_bar
    lead = tuple(range(ax_bar.ndim - 1))
    contract = ((lead, lead), ((), ()))
    return (
        ax_bar @ wx.T,
        lax.dot_general(x, ax_bar, contract),
        jnp.sum(ax_bar, axis=lead),
        lax.dot_general(h, ah_bar, contract),
        jnp.sum(ah_bar, axis=lead),
    )


def check_cell(
    where: str, gates: int, x: jax.Array, x_axes: str, states: dict, wx: jax.Array, wh: jax.Array, biases: dict
) -> None:
    """Fail unless ``wh`` is (H, G H), ``wx`` (D, G H) for ``x`` ``x_axes`` (``"(N, D)"`` or
    ``"(N, T, D)"``), every bias (G H,), every state (N, H), all of one floating dtype."""
    width = "H" if gates == 1 else f"{gates}H"
    if jnp.ndim(x) != x_axes.count(",") + 1:
        fail(where, f"{describe('x', x)}: x must be {x_axes}")
    if jnp.ndim(wh) != 2 or np.shape(wh)[1] != gates * np.shape(wh)[0]:
        fail(where, f"{describe('wh', wh)}: wh must be (H, {width})")
    n, d, hidden = np.shape(x)[0], np.shape(x)[-1], np.shape(wh)[0]
    if np.shape(wx) != (d, gates * hidden):
        fail(where, f"wx.shape={np.shape(wx)} must be (D, {width}) = {(d, gates * hidden)} for "
                    f"x.shape={np.shape(x)} and wh.shape={np.shape(wh)}")
    for name, b in biases.items():
        if np.shape(b) != (gates * hidden,):
            fail(where, f"{name}.shape={np.shape(b)} must be ({width},) = ({gates * hidden},) for wh.shape={np.shape(wh)}")
    for name, s in states.items():
        if np.shape(s) != (n, hidden):
            fail(where, f"{name}.shape={np.shape(s)} must be (N, H) = {(n, hidden)}: x.shape={np.shape(x)} has "
                        f"N={n} rows and wh.shape={np.shape(wh)} has H={hidden}")
    same_dtype(where, x=x, **states, wx=wx, wh=wh, **biases)


def cell_args(rng: np.random.Generator, gates: int, states: int, biases: int, n: int, d: int, h: int, t: int = 0) -> tuple:
    """Example arguments ``(x, *states, wx, wh, *biases)``; ``x`` (N, T, D) when ``t``, else (N, D)."""
    x = rng.normal(size=(n, t, d) if t else (n, d))
    state = tuple(rng.normal(size=(n, h)) for _ in range(states))
    weights = (0.6 * rng.normal(size=(d, gates * h)), 0.6 * rng.normal(size=(h, gates * h)))
    return (x, *state, *weights, *(0.5 * rng.normal(size=gates * h) for _ in range(biases)))


@functools.partial(jax.jit, static_argnames=("cell",))
def step_forward(cell: Cell, x: jax.Array, state: State, wx: jax.Array, wh: jax.Array, bx: jax.Array, bh: Any) -> tuple:
    """``(state', res)``: one step of ``cell``; the residuals are its inputs. Jitted, as the sequence
    loops are, so that eager calls run one compiled program rather than op by op."""
    return cell.forward(project(x, wx, bx), state, wh, bh), (x, state, wx, wh, bx, bh)


@functools.partial(jax.jit, static_argnames=("cell",))
def step_backward(cell: Cell, res: tuple, cts: State) -> tuple:
    """``(x_bar, state_bar, wx_bar, wh_bar, bx_bar, bh_bar)`` of one step from ``state'``'s cotangent."""
    x, state, wx, wh, bx, bh = res
    ax_bar, ah_bar, state_bar = cell.backward(project(x, wx, bx), state, wh, bh, cts)
    x_bar, wx_bar, bx_bar, wh_bar, bh_bar = projection_grads(x, state[0], wx, ax_bar, ah_bar)
    return x_bar, state_bar, wx_bar, wh_bar, bx_bar, bh_bar


# -- rnn_step ------------------------------------------------------------------------------------
def _check_rnn_step(x: jax.Array, h: jax.Array, wx: jax.Array, wh: jax.Array, b: jax.Array) -> None:
    check_cell("manualgrad.ops.rnn_step", 1, x, "(N, D)", {"h": h}, wx, wh, {"b": b})


def _rnn_step_examples(rng: np.random.Generator) -> list[Example]:
    return [Example(cell_args(rng, 1, 1, 1, 3, 2, 4)), Example(cell_args(rng, 1, 1, 1, 1, 3, 2))]


@defop(check=_check_rnn_step, examples=_rnn_step_examples)
def rnn_step(x: jax.Array, h: jax.Array, wx: jax.Array, wh: jax.Array, b: jax.Array) -> jax.Array:
    r"""One step of the Elman RNN: ``next_h = tanh(x @ wx + h @ wh + b)``; ``x`` (N, D), ``h`` (N, H),
    ``wx`` (D, H), ``wh`` (H, H), ``b`` (H,). CS231n's ``rnn_step_forward`` (its ``prev_h``, ``Wx``,
    ``Wh``); PyTorch's ``nn.RNNCell`` with ``weight_ih = wx.T``, ``weight_hh = wh.T`` and
    ``bias_ih + bias_hh = b``.

    Derivation. With $W_x$ = ``wx``, $W_h$ = ``wh``, $h_{\text{prev}}$ = ``h`` and
    $h_{\text{next}}$ the output,

    $$
    a = x W_x + h_{\text{prev}} W_h + b, \qquad h_{\text{next}} = \tanh(a).
    $$

    With $g = \bar{h}_{\text{next}}$:

    * $\bar{a} = g \odot (1 - h_{\text{next}}^2)$ (CS231n's ``dtanh``: $\tanh' = 1 - \tanh^2$);
    * $\bar{x} = \bar{a} W_x^\top$, $\bar{h}_{\text{prev}} = \bar{a} W_h^\top$ (``dprev_h``);
    * $\bar{W}_x = x^\top \bar{a}$, $\bar{W}_h = h_{\text{prev}}^\top \bar{a}$,
      $\bar{b} = \sum_{\text{rows}} \bar{a}$.

    Residuals: the inputs; ``next_h`` is recomputed in the backward (one product), which is what
    lets the sequence op keep only the states.
    """
    return jnp.tanh(x @ wx + h @ wh + b)


def rnn_step_fwd(x: jax.Array, h: jax.Array, wx: jax.Array, wh: jax.Array, b: jax.Array) -> tuple:
    (h_next,), res = step_forward(RNN, x, (h,), wx, wh, b, None)
    return h_next, res


def rnn_step_bwd(res: tuple, g: jax.Array) -> tuple:
    x_bar, (h_bar,), wx_bar, wh_bar, b_bar, _ = step_backward(RNN, res, (g,))
    return x_bar, h_bar, wx_bar, wh_bar, b_bar


rnn_step.defvjp(rnn_step_fwd, rnn_step_bwd)


# -- lstm_step -----------------------------------------------------------------------------------
def _check_lstm_step(x: jax.Array, h: jax.Array, c: jax.Array, wx: jax.Array, wh: jax.Array, b: jax.Array) -> None:
    check_cell("manualgrad.ops.lstm_step", 4, x, "(N, D)", {"h": h, "c": c}, wx, wh, {"b": b})


def _lstm_step_examples(rng: np.random.Generator) -> list[Example]:
    return [Example(cell_args(rng, 4, 2, 1, 3, 2, 3)), Example(cell_args(rng, 4, 2, 1, 1, 4, 2))]


@defop(check=_check_lstm_step, examples=_lstm_step_examples)
def lstm_step(
    x: jax.Array, h: jax.Array, c: jax.Array, wx: jax.Array, wh: jax.Array, b: jax.Array
) -> tuple[jax.Array, jax.Array]:
    r"""One LSTM step: ``(next_h, next_c)``; ``x`` (N, D), ``h``, ``c`` (N, H), ``wx`` (D, 4H),
    ``wh`` (H, 4H), ``b`` (4H,).

    With $W_x$ = ``wx``, $W_h$ = ``wh`` and the previous state $h_{\text{prev}}$ = ``h``,
    $c_{\text{prev}}$ = ``c``, $a = x W_x + h_{\text{prev}} W_h + b$ is split into four (N, H)
    blocks in **PyTorch's order (i, f, g, o)**; CS231n's ``lstm_step_forward`` orders them
    (i, f, o, g), so its ``Wx`` is ours with the last two column blocks swapped. Then

    $$
    i = \sigma(a_i), \quad f = \sigma(a_f), \quad o = \sigma(a_o), \quad g = \tanh(a_g),
    $$

    $$
    c_{\text{next}} = f \odot c_{\text{prev}} + i \odot g, \qquad
    h_{\text{next}} = o \odot \tanh(c_{\text{next}}).
    $$

    PyTorch's ``nn.LSTMCell``: ``weight_ih = wx.T``, ``weight_hh = wh.T``,
    ``bias_ih + bias_hh = b``.

    Derivation. With $\bar{h}_{\text{next}}$ and $\bar{c}_{\text{next}}$ the cotangents of the two
    outputs:

    * $h_{\text{next}}$ depends on $c_{\text{next}}$ too, so $c_{\text{next}}$'s total cotangent is
      $\bar{c} = \bar{c}_{\text{next}} + \bar{h}_{\text{next}} \odot o \odot (1 - \tanh^2(c_{\text{next}}))$;
    * $\bar{o} = \bar{h}_{\text{next}} \odot \tanh(c_{\text{next}})$,
      $\bar{f} = \bar{c} \odot c_{\text{prev}}$, $\bar{i} = \bar{c} \odot g$,
      $\bar{g} = \bar{c} \odot i$, and $\bar{c}_{\text{prev}} = \bar{c} \odot f$;
    * through the nonlinearities ($\sigma' = \sigma (1 - \sigma)$, $\tanh' = 1 - \tanh^2$):
      $\bar{a}_i = \bar{i} \odot i \odot (1 - i)$, $\bar{a}_f = \bar{f} \odot f \odot (1 - f)$,
      $\bar{a}_g = \bar{g} \odot (1 - g^2)$, $\bar{a}_o = \bar{o} \odot o \odot (1 - o)$, stacked
      in the order (i, f, g, o) as $\bar{a}$;
    * then as for the RNN step: $\bar{x} = \bar{a} W_x^\top$,
      $\bar{h}_{\text{prev}} = \bar{a} W_h^\top$, $\bar{W}_x = x^\top \bar{a}$,
      $\bar{W}_h = h_{\text{prev}}^\top \bar{a}$, $\bar{b} = \sum_{\text{rows}} \bar{a}$.

    Residuals: the inputs; the gates are recomputed in the backward.
    """
    i, f, g, o = jnp.split(x @ wx + h @ wh + b, 4, axis=-1)
    c_next = jax.nn.sigmoid(f) * c + jax.nn.sigmoid(i) * jnp.tanh(g)
    return jax.nn.sigmoid(o) * jnp.tanh(c_next), c_next


def lstm_step_fwd(x: jax.Array, h: jax.Array, c: jax.Array, wx: jax.Array, wh: jax.Array, b: jax.Array) -> tuple:
    return step_forward(LSTM, x, (h, c), wx, wh, b, None)


def lstm_step_bwd(res: tuple, g: tuple) -> tuple:
    x_bar, (h_bar, c_bar), wx_bar, wh_bar, b_bar, _ = step_backward(LSTM, res, g)
    return x_bar, h_bar, c_bar, wx_bar, wh_bar, b_bar


lstm_step.defvjp(lstm_step_fwd, lstm_step_bwd)


# -- gru_step ------------------------------------------------------------------------------------
def _check_gru_step(x: jax.Array, h: jax.Array, wx: jax.Array, wh: jax.Array, bx: jax.Array, bh: jax.Array) -> None:
    check_cell("manualgrad.ops.gru_step", 3, x, "(N, D)", {"h": h}, wx, wh, {"bx": bx, "bh": bh})


def _gru_step_examples(rng: np.random.Generator) -> list[Example]:
    return [Example(cell_args(rng, 3, 1, 2, 3, 2, 3)), Example(cell_args(rng, 3, 1, 2, 1, 4, 2))]


@defop(check=_check_gru_step, examples=_gru_step_examples)
def gru_step(x: jax.Array, h: jax.Array, wx: jax.Array, wh: jax.Array, bx: jax.Array, bh: jax.Array) -> jax.Array:
    r"""One GRU step, PyTorch's ``nn.GRUCell``: ``x`` (N, D), ``h`` (N, H), ``wx`` (D, 3H), ``wh``
    (H, 3H), ``bx``, ``bh`` (3H,) (``weight_ih = wx.T``, ``weight_hh = wh.T``, ``bias_ih = bx``,
    ``bias_hh = bh``).

    With $W_x$ = ``wx``, $W_h$ = ``wh``, $b_x$ = ``bx``, $b_h$ = ``bh`` and $h_{\text{prev}}$ =
    ``h``, $a_x = x W_x + b_x$ and $a_h = h_{\text{prev}} W_h + b_h$ are split in PyTorch's order
    (r, z, n):

    $$
    r = \sigma(a_{x,r} + a_{h,r}), \quad z = \sigma(a_{x,z} + a_{h,z}), \quad
    n = \tanh(a_{x,n} + r \odot a_{h,n}),
    $$

    $$
    h_{\text{next}} = (1 - z) \odot n + z \odot h_{\text{prev}}.
    $$

    The reset gate multiplies $a_{h,n} = h_{\text{prev}} W_{h,n} + b_{h,n}$ (PyTorch, cuDNN), not
    $h_{\text{prev}}$ before the product as in Cho et al. (2014); that is why the GRU keeps two
    biases ($b_{h,n}$ sits inside the reset) where the RNN and LSTM need one.

    Derivation. With $g = \bar{h}_{\text{next}}$:

    * $\bar{n} = g \odot (1 - z)$, $\bar{z} = g \odot (h_{\text{prev}} - n)$, and the direct path
      $g \odot z$ to $h_{\text{prev}}$;
    * $\bar{a}_n = \bar{n} \odot (1 - n^2)$ (the pre-activation of $n$),
      $\bar{a}_z = \bar{z} \odot z \odot (1 - z)$, $\bar{r} = \bar{a}_n \odot a_{h,n}$,
      $\bar{a}_r = \bar{r} \odot r \odot (1 - r)$;
    * $\bar{a}_x = [\bar{a}_r, \bar{a}_z, \bar{a}_n]$ and
      $\bar{a}_h = [\bar{a}_r, \bar{a}_z, \bar{a}_n \odot r]$: the two projections differ in the
      n block, where $r$ scales only $a_{h,n}$;
    * $\bar{x} = \bar{a}_x W_x^\top$, $\bar{W}_x = x^\top \bar{a}_x$,
      $\bar{b}_x = \sum_{\text{rows}} \bar{a}_x$; $\bar{W}_h = h_{\text{prev}}^\top \bar{a}_h$,
      $\bar{b}_h = \sum_{\text{rows}} \bar{a}_h$;
      $\bar{h}_{\text{prev}} = g \odot z + \bar{a}_h W_h^\top$.

    Residuals: the inputs; the gates are recomputed in the backward.
    """
    x_r, x_z, x_n = jnp.split(x @ wx + bx, 3, axis=-1)
    h_r, h_z, h_n = jnp.split(h @ wh + bh, 3, axis=-1)
    r = jax.nn.sigmoid(x_r + h_r)
    z = jax.nn.sigmoid(x_z + h_z)
    return (1 - z) * jnp.tanh(x_n + r * h_n) + z * h


def gru_step_fwd(x: jax.Array, h: jax.Array, wx: jax.Array, wh: jax.Array, bx: jax.Array, bh: jax.Array) -> tuple:
    (h_next,), res = step_forward(GRU, x, (h,), wx, wh, bx, bh)
    return h_next, res


def gru_step_bwd(res: tuple, g: jax.Array) -> tuple:
    x_bar, (h_bar,), wx_bar, wh_bar, bx_bar, bh_bar = step_backward(GRU, res, (g,))
    return x_bar, h_bar, wx_bar, wh_bar, bx_bar, bh_bar


gru_step.defvjp(gru_step_fwd, gru_step_bwd)
