"""The fused output layer + cross-entropy against the composition it replaces: rows ``lmhead-V{V}``.

One call computes the mean loss of ``softmax_cross_entropy(x @ w + b, labels)`` over 8192 rows,
``D = 256``, and its gradients for ``x``, ``w`` and ``b``, at ``V = 8192`` and ``V = 32768``:

* ``manual``: :func:`manualgrad.losses.linear_softmax_cross_entropy`, blocks of its default ``chunk`` rows,
  never holding the (8192, V) logits;
* ``reference``: ``jax.grad`` of the plain composition (the op's reference), which keeps the
  logits and their gradient (1 GiB each at V = 32768);
* ``torch``: ``F.cross_entropy(F.linear(x, w^T, b), labels)`` forward and backward, eager, on 2
  threads.

``gflops`` counts the three (rows x D x V) products (logits, ``x_bar``, ``w_bar``). A call takes
seconds, so each implementation is timed at most 3 rounds of one call each, in turns, and the
row gives the median (``python -m experiments.benchmark --only lmhead``).
"""

from __future__ import annotations

from typing import Callable

import jax
import numpy as np

from experiments.benchmark.timing import Runner, Settings, as_rows, op_runners, time_interleaved
from manualgrad import losses, reference_mode

ROWS, DIM, VOCABS = 8192, 256, (8192, 32768)
TORCH_THREADS = 2


def lmhead_step(impl: str) -> Callable:
    """``(x, w, b, labels) -> (loss, (x_bar, w_bar, b_bar))``: ``impl`` ``"manual"`` or ``"reference"``."""

    def f(x, w, b, labels):
        with reference_mode(impl == "reference"):
            loss = lambda x, w, b: losses.linear_softmax_cross_entropy(x, w, b, labels)
            return jax.value_and_grad(loss, argnums=(0, 1, 2))(x, w, b)

    return f


def lmhead_inputs(vocab: int) -> tuple[np.ndarray, ...]:
    """``(x, w, b, labels)`` float32: unit-normal hidden states, ``w ~ N(0, 1 / D)``, zero bias, uniform labels."""
    rng = np.random.default_rng(0)
    x = rng.standard_normal((ROWS, DIM), dtype=np.float32)
    w = rng.standard_normal((DIM, vocab), dtype=np.float32) / np.float32(np.sqrt(DIM))
    return x, w, np.zeros(vocab, np.float32), rng.integers(0, vocab, ROWS).astype(np.int32)


def torch_lmhead_runner(x: np.ndarray, w: np.ndarray, b: np.ndarray, labels: np.ndarray) -> Runner | None:
    """PyTorch eager forward + backward of the same loss on :data:`TORCH_THREADS` threads (None without torch)."""
    try:
        import torch
        import torch.nn.functional as F
    except ImportError:
        return None
    torch.set_num_threads(TORCH_THREADS)
    xt, wt, bt = (torch.tensor(a, requires_grad=True) for a in (x, np.ascontiguousarray(w.T), b))
    yt = torch.tensor(labels, dtype=torch.long)

    def run(k: int) -> None:
        for _ in range(k):
            for t in (xt, wt, bt):
                t.grad = None
            F.cross_entropy(F.linear(xt, wt, bt), yt).backward()

    return run


def lmhead_rows(vocab: int, settings: Settings) -> list[dict]:
    """The ``lmhead-V{vocab}`` rows: ``{"model", "batch", "impl", "step_ms", "gflops", "temp_bytes"}``
    for ``manual``, ``reference`` and (where installed) ``torch`` (temp bytes None)."""
    runners, temps = op_runners(lmhead_step, lmhead_inputs(vocab), torch_lmhead_runner, settings.with_torch)
    for run in runners.values():  # warm up: first calls allocate
        run(1)
    seconds = time_interleaved(runners, min(settings.rounds, 3), None)
    return as_rows(f"lmhead-V{vocab}", ROWS, seconds, 6 * ROWS * DIM * vocab, temps)
