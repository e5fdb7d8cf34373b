"""Recurrent layers ``RNN``, ``LSTM`` and ``GRU`` (one or both directions), ``DropLengths``, and
the character-level language model ``LSTMLM``.

Each layer runs its sequence op (:func:`manualgrad.ops.rnn`, :func:`~manualgrad.ops.lstm`,
:func:`~manualgrad.ops.gru`) from a zero initial state, batch-first: ``(N, T, D) -> (N, T, H)``.

**Padded batches of variable-length sequences.** The layer's input is either ``x`` (N, T, D),
or the pair ``(x, lengths)`` with ``lengths`` (N,) integers in [0, T]; given the pair, each row
runs for its own length only (PyTorch's packed sequences: ``hs`` is 0 past each row's length,
the last state is taken at each row's own last step, the reverse direction starts there) and
the output is the pair ``(hs, lengths)``. Lengths are part of the input, not a keyword, because:

* they belong to the batch, not to the layer: ``train.fit``, ``make_epoch`` and ``evaluate``
  shuffle and slice an input pytree ``(x, lengths)`` row by row with its targets, and
  ``backprop``, ``check_model`` and ``serial`` pass any input pytree through unchanged, while a
  keyword would have to be threaded through every container and training function;
* it is PyTorch's contract (a ``PackedSequence`` in, a ``PackedSequence`` out), so stacked
  recurrent layers in a ``serial`` all see the lengths, as in a multi-layer ``nn.LSTM``;
* a model runs unchanged on plain ``x`` and on ``(x, lengths)``.

:func:`DropLengths` turns ``(hs, lengths)`` back into ``hs`` for per-position layers (a
``Linear`` on every step); ``output="last"`` gives each row's last state (N, H) instead of the
sequence, for a classifier on whole sequences. The lengths get no cotangent: ``bwd`` returns
``(x_bar, None)`` for a pair.
"""

from __future__ import annotations

import functools
import math
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from manualgrad import ops
from manualgrad.core import Op
from manualgrad.errors import fail, positive_int
from manualgrad.nn.dense import Linear
from manualgrad.nn.dropout import Dropout
from manualgrad.nn.layer import Layer, serial, stateless
from manualgrad.nn.sequence import Embedding

__all__ = ["RNN", "LSTM", "GRU", "DropLengths", "LSTMLM"]

_OUTPUTS = ("sequence", "last")


class _Kind(NamedTuple):
    op: Op
    gates: int
    states: int  # 1 (h) or 2 (h, c)
    biases: tuple[str, ...]


_KINDS = {
    "RNN": _Kind(ops.rnn, 1, 1, ("b",)),
    "LSTM": _Kind(ops.lstm, 4, 2, ("b",)),
    "GRU": _Kind(ops.gru, 3, 1, ("bx", "bh")),
}


def _unpack(x: Any) -> tuple[Any, Any]:
    """``(x, lengths)`` from a layer input: the pair, or a plain array (lengths None)."""
    if not isinstance(x, (tuple, list)):
        return x, None
    if len(x) != 2:
        raise ValueError(f"the input must be x, shape (N, T, D), or the pair (x, lengths); got a {type(x).__name__} "
                         f"of {len(x)}")
    return x[0], None if x[1] is None else jnp.asarray(x[1])


def _unpack_shape(shape: tuple) -> tuple[tuple, Any]:
    """``(x_shape, lengths_shape)`` from an input shape: ``(N, T, D)`` or ``((N, T, D), (N,))``."""
    if len(shape) == 2 and all(isinstance(s, (tuple, list)) for s in shape):
        return tuple(shape[0]), tuple(shape[1])
    return tuple(shape), None


def _pack(y: Any, lengths: Any) -> Any:
    return y if lengths is None else (y, lengths)


@functools.partial(jax.jit, static_argnames=("shapes", "dtype"))
def _uniform(key: jax.Array, shapes: tuple, bound: float, dtype: Any) -> dict:
    """``{name: uniform(-bound, bound) of shape}`` for each ``(name, shape)``, cut from one draw (one
    small compiled program per layer; eager draws compile one per shape)."""
    sizes = [math.prod(shape) for _, shape in shapes]
    flat = jax.random.uniform(key, (sum(sizes),), dtype, -bound, bound)
    pieces = jnp.split(flat, np.cumsum(sizes)[:-1])
    return {name: piece.reshape(shape) for (name, shape), piece in zip(shapes, pieces)}


def RNN(hidden: int, bidirectional: bool = False, output: str = "sequence", dtype: Any = jnp.float32) -> Layer:
    """The Elman RNN layer, :func:`manualgrad.ops.rnn` from ``h0 = 0``: ``(N, T, D) -> (N, T, H)``.

    Args:
      hidden: H, the state's width.
      bidirectional: also run the sequence backwards and concatenate the two directions' outputs
        on the feature axis, forward first (``(N, T, 2H)``, PyTorch's ``bidirectional=True``).
      output: ``"sequence"`` (every step's ``h``) or ``"last"``: each row's last state (N, H)
        (bidirectional: the forward direction's after the last step and the reverse direction's
        after step 0, concatenated, which is PyTorch's ``h_n``).
      dtype: of the params.

    Returns:
      The :class:`Layer`. Params ``{"wx": (D, H), "wh": (H, H), "b": (H,)}``, drawn as PyTorch
      draws them, uniform in ``(-1/sqrt(H), 1/sqrt(H))``; bidirectional ``{"forward": ...,
      "reverse": ...}``, one such dict per direction. The input may be ``(x, lengths)`` (see the
      module docstring).
    """
    return _recurrent("RNN", hidden, bidirectional, output, dtype)


def LSTM(hidden: int, bidirectional: bool = False, output: str = "sequence", dtype: Any = jnp.float32) -> Layer:
    """The LSTM layer, :func:`manualgrad.ops.lstm` from ``h0 = c0 = 0``: ``(N, T, D) -> (N, T, H)``.

    Arguments as for :func:`RNN` (``output="last"`` gives the last ``h``). Params ``{"wx": (D, 4H),
    "wh": (H, 4H), "b": (4H,)}``, gates in PyTorch's order (i, f, g, o), each uniform in
    ``(-1/sqrt(H), 1/sqrt(H))`` (PyTorch draws two biases whose sum is ``b``).
    """
    return _recurrent("LSTM", hidden, bidirectional, output, dtype)


def GRU(hidden: int, bidirectional: bool = False, output: str = "sequence", dtype: Any = jnp.float32) -> Layer:
    """The GRU layer, :func:`manualgrad.ops.gru` from ``h0 = 0``: ``(N, T, D) -> (N, T, H)``.

    Arguments as for :func:`RNN`. Params ``{"wx": (D, 3H), "wh": (H, 3H), "bx": (3H,), "bh":
    (3H,)}``, gates in PyTorch's order (r, z, n), each uniform in ``(-1/sqrt(H), 1/sqrt(H))``.
    """
    return _recurrent("GRU", hidden, bidirectional, output, dtype)


def _recurrent(kind_name: str, hidden: int, bidirectional: bool, output: str, dtype: Any) -> Layer:
    """The layer of one cell kind: one or two directions of its sequence op, joined by ``ops.concat``."""
    kind = _KINDS[kind_name]
    options = (", bidirectional=True" if bidirectional else "") + (f", output={output!r}" if output != "sequence" else "")
    name = f"{kind_name}({hidden!r}{options})"
    where = f"manualgrad.nn.{name}"
    hidden = positive_int(where, "hidden", hidden)
    if output not in _OUTPUTS:
        fail(where, f"output must be one of {_OUTPUTS}, got {output!r}")
    directions = ("forward", "reverse") if bidirectional else ("forward",)

    def init(key, input_shape):
        x_shape, lengths_shape = _unpack_shape(input_shape)
        if len(x_shape) != 3:
            raise ValueError(f"input_shape={tuple(input_shape)} must be (N, T, D), or ((N, T, D), (N,)) with lengths")
        n, t, d = x_shape
        if lengths_shape is not None and tuple(lengths_shape) != (n,):
            raise ValueError(f"input_shape={tuple(input_shape)}: the lengths must be (N,)=({n},), one per sequence")
        width = kind.gates * hidden
        shapes = (("wx", (d, width)), ("wh", (hidden, width)), *((b, (width,)) for b in kind.biases))
        keys = jax.random.split(key, len(directions))
        params = {direction: _uniform(k, shapes, 1.0 / math.sqrt(hidden), dtype) for direction, k in zip(directions, keys)}
        width_out = hidden * len(directions)
        if output == "last":
            return (n, width_out), params if bidirectional else params["forward"]
        return _pack((n, t, width_out), lengths_shape), params if bidirectional else params["forward"]

    def per_direction(params):
        weights = {"wx", "wh", *kind.biases}
        expected = set(directions) if bidirectional else weights
        if not isinstance(params, dict) or set(params) != expected:
            got = sorted(params) if isinstance(params, dict) else type(params).__name__
            raise ValueError(f"params must be the dict init returns, keys {sorted(expected)}"
                             f"{f' (each a dict of {sorted(weights)})' if bidirectional else ''}, for "
                             f"bidirectional={bidirectional}; got {got}")
        return [(params[d] if bidirectional else params, d == "reverse") for d in directions]

    def arguments(p, x, lengths):
        zeros = (jnp.zeros((x.shape[0], hidden), x.dtype),) * kind.states
        return (x, *zeros, p["wx"], p["wh"], *(p[b] for b in kind.biases), lengths)

    def readout(out):
        hs, last = out
        return hs if output == "sequence" else (last if kind.states == 1 else last[0])

    def cotangent(y_bar):
        """The op's output cotangent from the readout's (None: an output not read)."""
        if output == "sequence":
            return y_bar, (None,) * kind.states if kind.states > 1 else None
        return None, (y_bar, None) if kind.states > 1 else y_bar

    def apply(params, x):
        x, lengths = _unpack(x)
        ys = [readout(kind.op(*arguments(p, x, lengths), reverse=r)) for p, r in per_direction(params)]
        y = ops.concat(tuple(ys)) if bidirectional else ys[0]
        return _pack(y, lengths) if output == "sequence" else y

    def fwd(params, x):
        x, lengths = _unpack(x)
        ys, res = [], []
        for p, r in per_direction(params):
            out, op_res = kind.op.fwd(*arguments(p, x, lengths), reverse=r)
            ys.append(readout(out))
            res.append(op_res)
        y, concat_res = ops.concat.fwd(tuple(ys)) if bidirectional else (ys[0], None)
        y = _pack(y, lengths) if output == "sequence" else y
        return y, (tuple(res), concat_res, lengths is not None)

    def bwd(res, y_bar):
        res, concat_res, paired = res
        if paired and output == "sequence":
            y_bar = y_bar[0]
        y_bars = ops.concat.bwd(concat_res, y_bar)[0] if bidirectional else (y_bar,)
        params_bar, x_bar = {}, None
        for direction, op_res, bar in zip(directions, res, y_bars):
            cts = kind.op.bwd(op_res, cotangent(bar))
            params_bar[direction] = dict(zip(("wx", "wh", *kind.biases), cts[1 + kind.states : -1]))
            x_bar = cts[0] if x_bar is None else x_bar + cts[0]
        return params_bar if bidirectional else params_bar["forward"], ((x_bar, None) if paired else x_bar)

    return stateless(name, init, apply, fwd, bwd)


def DropLengths() -> Layer:
    """``(x, lengths) -> x``: the padded batch alone, after recurrent layers that took lengths, for
    layers that work on every position (a ``Linear`` over ``(N, T, H)``); ``x`` is 0 past each
    row's length. A plain array passes through, so one model serves padded and unpadded input.
    Backward: ``(x_bar, None)`` for a pair (lengths have no cotangent), ``x_bar`` otherwise.
    """

    def init(key, input_shape):
        return _unpack_shape(tuple(input_shape))[0], ()

    def apply(params, x):
        return _unpack(x)[0]

    def fwd(params, x):
        x, lengths = _unpack(x)
        return x, lengths is not None

    def bwd(paired, y_bar):
        return (), ((y_bar, None) if paired else y_bar)

    return stateless("DropLengths", init, apply, fwd, bwd)


def LSTMLM(vocab_size: int, width: int = 256, depth: int = 1, dropout: float = 0.0) -> Layer:
    """A recurrent language model on token ids ``(batch, T)`` (Karpathy's char-rnn): an
    :func:`~manualgrad.nn.Embedding` of width ``width``, ``depth`` :func:`LSTM` layers of ``width``
    units and a ``Linear`` output layer, giving logits ``(batch, T, vocab_size)`` whose position
    ``t`` predicts token ``t + 1`` from tokens ``<= t`` (every LSTM runs forwards from a zero state,
    so the model is causal and any ``T`` works).

    Train it like :func:`~manualgrad.nn.TransformerLM`, with
    :func:`manualgrad.losses.softmax_cross_entropy` against the ids shifted by one. ``dropout > 0``
    adds dropout after each LSTM layer (before the next one and before the output layer), as
    char-rnn does. The embedding is drawn with std 1 (a one-hot input times a random matrix), the
    output layer with Glorot's uniform init. Params: :func:`~manualgrad.nn.serial`'s tuple of the
    embedding, the LSTMs (and dropouts, whose params are ``()``) and the output layer.
    """
    where = f"manualgrad.nn.LSTMLM({vocab_size!r}, width={width!r}, depth={depth!r})"
    width = positive_int(where, "width", width)
    depth = positive_int(where, "depth", depth)
    drop = [Dropout(dropout)] if dropout != 0 else []  # Dropout refuses rates outside [0, 1)
    layers = [layer for _ in range(depth) for layer in (LSTM(width), *drop)]
    return serial(Embedding(vocab_size, width, std=1.0), *layers, Linear(vocab_size, init="glorot"))
