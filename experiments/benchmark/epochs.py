"""The epoch rows: a whole MNIST-shaped epoch as one scanned call (:func:`manualgrad.train.make_epoch`)
against a Python loop over the jitted step; benchmark.json keeps them in ``epochs``."""

from __future__ import annotations

from typing import Any

import jax

from experiments import common
from experiments.benchmark.configs import Config, optimizer, random_batch
from experiments.benchmark.timing import Runner, Settings, time_interleaved
from manualgrad import train

EPOCH_EXAMPLES = 60000


def epoch_rows(case: tuple[int, int], settings: Settings) -> list[dict]:
    """One MNIST-shaped epoch: scanned (manual and reference gradients) and a Python loop over the step.

    The loop gathers the epoch's shuffled batches on the device in one call, then calls the
    jitted, donating train step once per batch: the least a per-step loop can do.

    Args:
        case: ``(batch, examples)``: the batch size and the epoch's length.
        settings: the run's timing settings (``epoch_repeats`` timed epochs each; the GEMM peak).

    Returns:
        One row per variant: ``{"model", "batch", "epoch", "grad", "examples", "steps", "epoch_ms",
        "gflops", "fraction_of_peak"}``.
    """
    batch, examples = case
    task = common.MNIST
    config = Config(task, batch)
    model = task.model()
    x, y = (jax.device_put(a) for a in random_batch(task, examples))
    key = jax.random.PRNGKey(0)
    steps = examples // batch

    def fresh_state() -> tuple[Any, list]:
        opt = optimizer()
        params = task.init(model, 0)
        return opt, [params, opt.init(params)]

    def scanned(grad: str) -> Runner:
        opt, state = fresh_state()
        epoch = train.make_epoch(model, task.loss, opt, batch, grad).lower(*state, x, y, key).compile()

        def run(k: int) -> None:
            for e in range(k):
                p, s, metrics = epoch(*state, x, y, train.epoch_key(key, e))
                state[:] = [p, s]
            jax.block_until_ready(metrics)

        return run

    def python_loop(grad: str) -> Runner:
        opt, state = fresh_state()
        step = train.make_train_step(model, task.loss, opt, grad)
        gather = jax.jit(lambda x, y, idx: (x[idx], y[idx]))

        def run(k: int) -> None:
            for e in range(k):
                xs, ys = gather(x, y, train.epoch_permutation(train.epoch_key(key, e), examples, batch))
                p, s = state
                for i in range(steps):
                    p, s, metrics = step(p, s, (xs[i], ys[i]))
                state[:] = [p, s]
            jax.block_until_ready(metrics)

        return run

    runners = {("scan", "manual"): scanned("manual"), ("scan", "reference"): scanned("reference"),
               ("loop", "manual"): python_loop("manual")}
    for run in runners.values():
        run(1)  # compiles the loop's step and gather; warms the caches
    seconds = time_interleaved(runners, settings.epoch_repeats, block_seconds=None)
    flops = steps * config.matmul_flops()
    return [
        {"model": config.model, "batch": batch, "epoch": mode, "grad": grad, "examples": examples, "steps": steps,
         "epoch_ms": t * 1e3, "gflops": flops / t / 1e9, "fraction_of_peak": flops / t / 1e9 / settings.peak_gflops}
        for (mode, grad), t in seconds.items()
    ]
