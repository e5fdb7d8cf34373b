"""How the benchmarks time things: runners (``run(k)`` does ``k`` calls and waits), calibrated
blocks timed in turns, and XLA's temp bytes of a compiled program. Used by
:mod:`experiments.benchmark`, :mod:`experiments.benchmark_sequence` and
:mod:`experiments.benchmark_parallel`."""

from __future__ import annotations

import time
from typing import Any, Callable

import jax
import numpy as np

__all__ = ["Runner", "calibrate", "time_interleaved", "repeat_call", "step_runner", "temp_bytes"]

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
