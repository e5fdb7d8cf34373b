"""How the benchmarks time things: runners (``run(k)`` does ``k`` calls and waits), calibrated
blocks timed in turns, the settings every family of rows is timed with, and XLA's temp bytes of a
compiled program. Used by every module of :mod:`experiments.benchmark` and by
:mod:`experiments.benchmark_parallel`."""

from __future__ import annotations

import dataclasses
import time
from typing import Any, Callable

import jax
import numpy as np

from manualgrad import train

__all__ = ["Runner", "Settings", "as_rows", "calibrate", "grad_runners", "op_runners", "repeat_call", "step_runner",
           "temp_bytes", "time_interleaved", "torch_runner"]

Runner = Callable[[int], None]  # runner(k) runs k steps and waits for the result


def calibrate(run: Runner, target_seconds: float) -> int:
    """Steps per timed block so that a block lasts about ``target_seconds`` (after warming up)."""
    run(2)
    k = 1
    while True:
        start = time.perf_counter()
        run(k)
        elapsed = time.perf_counter() - start
        if elapsed >= target_seconds / 4 or k >= 1 << 14:
            return max(1, int(k * target_seconds / max(elapsed, 1e-9)))
        k *= 4


def time_interleaved(runners: dict[Any, Runner], rounds: int, block_seconds: float | None) -> dict[Any, float]:
    """Median seconds per call of each runner, timed in turns (rotated order) over ``rounds`` rounds.

    A block runs about ``block_seconds`` worth of calls (calibrated first), or one call when
    ``block_seconds`` is None.
    """
    steps = {name: 1 if block_seconds is None else calibrate(run, block_seconds) for name, run in runners.items()}
    samples: dict[Any, list[float]] = {name: [] for name in runners}
    names = list(runners)
    for r in range(rounds):
        for name in names[r % len(names):] + names[: r % len(names)]:
            start = time.perf_counter()
            runners[name](steps[name])
            samples[name].append((time.perf_counter() - start) / steps[name])
    return {name: float(np.median(s)) for name, s in samples.items()}


@dataclasses.dataclass(frozen=True)
class Settings:
    """How one benchmark run times its rows.

    Attributes:
        rounds: timed rounds per implementation (a row reports the median).
        block_seconds: the length of one timed block of calls.
        epoch_repeats: timed epochs per epoch variant.
        with_torch: whether to add the PyTorch rows (when torch is installed).
        peak_gflops: the machine's large-GEMM rate, which epoch rows are a fraction of.
    """

    rounds: int
    block_seconds: float
    epoch_repeats: int
    with_torch: bool
    peak_gflops: float

    def time(self, runners: dict[Any, Runner]) -> dict[Any, float]:
        """:func:`time_interleaved` with these rounds and blocks."""
        return time_interleaved(runners, self.rounds, self.block_seconds)


def repeat_call(compiled: Any, *operands: Any) -> Runner:
    """A runner calling ``compiled(*operands)`` ``k`` times, then waiting for the last result."""

    def run(k: int) -> None:
        out = None
        for _ in range(k):
            out = compiled(*operands)
        jax.block_until_ready(out)

    return run


def step_runner(compiled: Any, params: Any, opt_state: Any, batch: Any, wait_each: bool = False) -> Runner:
    """A runner over a compiled, donating train step ``(params, opt_state, batch) -> (params,
    opt_state, metrics)``: each call continues from the last one's params and optimiser state.
    ``wait_each`` waits for every step before starting the next (else only for the last)."""
    state = [params, opt_state]

    def run(k: int) -> None:
        p, s = state
        for _ in range(k):
            p, s, _ = compiled(p, s, batch)
            if wait_each:
                jax.block_until_ready(p)
        jax.block_until_ready(p)
        state[:] = [p, s]

    return run


def temp_bytes(compiled: Any) -> int | None:
    """XLA's temporary memory of a compiled program (None where the backend does not report it)."""
    analysis = compiled.memory_analysis()
    return None if analysis is None else int(analysis.temp_size_in_bytes)


def torch_runner(model: Any, opt: Any, loss: Callable[[], Any], max_norm: float) -> Runner:
    """A runner over PyTorch eager train steps: zero_grad, ``loss()`` (the forward), backward,
    ``clip_grad_norm_(max_norm)``, ``opt.step()``."""
    import torch

    def run(k: int) -> None:
        for _ in range(k):
            opt.zero_grad(set_to_none=True)
            loss().backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), max_norm)
            opt.step()

    return run


def grad_runners(jax_step: Callable[[str], tuple[Runner, int | None]], torch_step: Callable[[], Runner | None],
                 with_torch: bool) -> tuple[dict[str, Runner], dict[str, int | None]]:
    """The runners of one train step, and their XLA temp bytes, by implementation.

    Args:
        jax_step: ``jax_step(grad)``: the runner and temp bytes of the step with that gradient source.
        torch_step: the same step in PyTorch eager (None when torch is not installed).
        with_torch: whether to add the PyTorch runner.

    Returns:
        ``(runners, temps)``: one entry per ``manualgrad.train.GRADS``, then ``torch`` (temp bytes None).
    """
    runners: dict[str, Runner] = {}
    temps: dict[str, int | None] = {}
    for grad in train.GRADS:
        runners[grad], temps[grad] = jax_step(grad)
    torch_run = torch_step() if with_torch else None
    if torch_run is not None:
        runners["torch"], temps["torch"] = torch_run, None
    return runners, temps


def op_runners(step: Callable[[str], Callable], host: tuple, torch_step: Callable[..., Runner | None],
               with_torch: bool) -> tuple[dict[str, Runner], dict[str, int | None]]:
    """The runners of one op's forward + backward, and their XLA temp bytes, by implementation.

    Args:
        step: ``step(impl)`` for ``"manual"`` and ``"reference"``: the function to jit, called on ``host``.
        host: the inputs (NumPy), put on the device once.
        torch_step: ``torch_step(*host)``: the PyTorch runner (None when torch is not installed).
        with_torch: whether to add the PyTorch runner.

    Returns:
        ``(runners, temps)``: ``manual``, ``reference``, then ``torch`` (temp bytes None).
    """
    args = tuple(jax.device_put(a) for a in host)
    runners: dict[str, Runner] = {}
    temps: dict[str, int | None] = {}
    for impl in ("manual", "reference"):
        compiled = jax.jit(step(impl)).lower(*args).compile()
        runners[impl], temps[impl] = repeat_call(compiled, *args), temp_bytes(compiled)
    torch_run = torch_step(*host) if with_torch else None
    if torch_run is not None:
        runners["torch"], temps["torch"] = torch_run, None
    return runners, temps


def as_rows(model: str, batch: int, seconds: dict[str, float], flops: int | None,
            temps: dict[str, int | None]) -> list[dict]:
    """benchmark.json's rows of one measurement, one per implementation.

    Args:
        model: the rows' model name (``784-256-128-10``, ``cnn/conv1 ...``, ``attention-T512``).
        batch: the batch size.
        seconds: each implementation's median seconds per call.
        flops: the matrix-product FLOPs of one call (None: not counted, ``gflops`` is None).
        temps: each implementation's XLA temp bytes (None where not reported).

    Returns:
        ``{"model", "batch", "impl", "step_ms", "gflops", "temp_bytes"}`` per implementation.
    """
    return [{"model": model, "batch": batch, "impl": impl, "step_ms": s * 1e3,
             "gflops": None if flops is None else flops / s / 1e9, "temp_bytes": temps[impl]}
            for impl, s in seconds.items()]
