"""The benchmark's recurrent rows: backpropagation through time in one LSTM layer, ``lstm-T{T}``.

Batch 32, input width 128, hidden 256, float32, from a zero state: one call is the forward and
backward of ``sum(hs * g)`` for ``x`` and the weights ``wx``, ``wh``, ``b``.

* ``manual``: :func:`manualgrad.ops.lstm`, the input projection one product per chunk of steps,
  the backward one reverse loop over the hand-written step backward, the gates recomputed from
  the saved states;
* ``reference``: ``jax.grad`` of ``lax.scan`` over the plain step (the op's reference), which
  keeps every step's gates and activations for the reverse pass;
* ``torch``: ``nn.LSTM(batch_first=True)`` forward and backward, eager, on 2 threads.

``gflops`` counts the products: per step ``x_t wx`` and ``h wh`` forward, and in the backward
``x_bar``, ``wx_bar``, ``h_bar`` and ``wh_bar`` (the manual backward also recomputes ``x wx``,
not counted).
"""

from __future__ import annotations

from typing import Callable

import jax
import jax.numpy as jnp
import numpy as np

from experiments.benchmark.timing import Runner, Settings, as_rows, op_runners
from manualgrad import ops, reference_mode

LSTM_T = (256, 1024)
BATCH, INPUT, HIDDEN = 32, 128, 256
TORCH_THREADS = 2


def lstm_step(impl: str) -> Callable:
    """``(x, wx, wh, b, g) -> (x_bar, wx_bar, wh_bar, b_bar)`` of ``sum(lstm(x)[0] * g)`` from a zero state."""

    def f(x, wx, wh, b, g):
        zeros = jnp.zeros((x.shape[0], wh.shape[0]), x.dtype)
        with reference_mode(impl == "reference"):
            loss = lambda x, wx, wh, b: jnp.sum(ops.lstm(x, zeros, zeros, wx, wh, b)[0] * g)
            return jax.grad(loss, argnums=(0, 1, 2, 3))(x, wx, wh, b)

    return f


def lstm_inputs(t: int) -> tuple[np.ndarray, ...]:
    """``(x, wx, wh, b, g)`` float32: unit-normal ``x`` and ``g``, weights uniform in ``+-1/sqrt(H)`` (PyTorch's init)."""
    rng = np.random.default_rng(0)
    bound = 1 / np.sqrt(HIDDEN)
    weights = (rng.uniform(-bound, bound, shape).astype(np.float32)
               for shape in ((INPUT, 4 * HIDDEN), (HIDDEN, 4 * HIDDEN), (4 * HIDDEN,)))
    x, g = (rng.standard_normal(shape, dtype=np.float32) for shape in ((BATCH, t, INPUT), (BATCH, t, HIDDEN)))
    return (x, *weights, g)


def lstm_flops(t: int) -> int:
    """``2 x 3 x (D + H) x 4H`` per row and step: forward and the two backward products of each projection."""
    return 6 * BATCH * t * (INPUT + HIDDEN) * 4 * HIDDEN


def torch_lstm_runner(x: np.ndarray, wx: np.ndarray, wh: np.ndarray, b: np.ndarray, g: np.ndarray) -> Runner | None:
    """``nn.LSTM`` with the same weights (``bias_hh`` 0), forward + backward of ``sum(hs * g)`` on
    :data:`TORCH_THREADS` threads; None without PyTorch."""
    try:
        import torch
    except ImportError:
        return None
    torch.set_num_threads(TORCH_THREADS)
    module = torch.nn.LSTM(INPUT, HIDDEN, batch_first=True)
    with torch.no_grad():
        module.weight_ih_l0.copy_(torch.tensor(wx.T))
        module.weight_hh_l0.copy_(torch.tensor(wh.T))
        module.bias_ih_l0.copy_(torch.tensor(b))
        module.bias_hh_l0.zero_()
    xt = torch.tensor(x, requires_grad=True)
    gt = torch.tensor(g)

    def run(k: int) -> None:
        for _ in range(k):
            xt.grad = None
            module.zero_grad(set_to_none=True)
            (module(xt)[0] * gt).sum().backward()

    return run


def lstm_rows(t: int, settings: Settings) -> list[dict]:
    """The ``lstm-T{t}`` rows: manual, reference and (where installed) torch."""
    runners, temps = op_runners(lstm_step, lstm_inputs(t), torch_lstm_runner, settings.with_torch)
    return as_rows(f"lstm-T{t}", BATCH, settings.time(runners), lstm_flops(t), temps)
