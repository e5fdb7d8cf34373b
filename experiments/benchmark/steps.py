"""The train-step rows of the MLPs and the CNN: the step (gradient, clipping to global norm, SGD
with momentum) per ``grad`` source, the same step in PyTorch eager, and, for the MLPs, the
"GEMMs only" row: the step's matrix products alone, jitted, with nothing between them."""

from __future__ import annotations

from typing import Any

import jax
import numpy as np
from jax import lax

from experiments.benchmark.configs import LR, MAX_NORM, MOMENTUM, Config, optimizer, random_batch
from experiments.benchmark.timing import (
    Runner, Settings, as_rows, grad_runners, repeat_call, step_runner, temp_bytes, torch_runner,
)
from manualgrad import train


def jax_step_runner(config: Config, grad: str) -> tuple[Runner, int | None]:
    """A runner over the compiled, donating train step, and the step's XLA temp bytes."""
    task = config.task
    model = task.model()
    params = task.init(model, 0)
    opt = optimizer()
    opt_state = opt.init(params)
    batch = tuple(jax.device_put(a) for a in random_batch(task, config.batch))
    compiled = train.make_train_step(model, task.loss, opt, grad).lower(params, opt_state, batch).compile()
    return step_runner(compiled, params, opt_state, batch), temp_bytes(compiled)


def gemms_only(config: Config) -> tuple[Any, tuple]:
    """The step's matrix products alone, chained as in the step: ``(compiled, operands)``.

    Forward ``h[k+1] = h[k] @ w[k]``, then backward from a random output cotangent:
    ``w_bar[k] = h[k].T @ g`` and ``g = g @ w[k].T`` (not for the first layer). No bias,
    activation, loss, clipping or update: what is left is the time of the GEMMs themselves.
    It is a reference point, not a lower bound: XLA:CPU runs independent products of the
    full step concurrently on its thread pool, and the full step has sometimes measured faster.
    """
    widths, b = config.task.widths, config.batch
    rng = np.random.default_rng(1)
    x = rng.standard_normal((b, widths[0]), dtype=np.float32)
    ws = [rng.standard_normal((i, o), dtype=np.float32) / np.sqrt(i) for i, o in zip(widths[:-1], widths[1:])]
    g = rng.standard_normal((b, widths[-1]), dtype=np.float32)
    operands = jax.device_put((x, ws, g))

    def products(x, ws, g):
        hs = [x]
        for w in ws:
            hs.append(hs[-1] @ w)
        w_bars = []
        for k in reversed(range(len(ws))):
            w_bars.append(lax.dot_general(hs[k], g, (((0,), (0,)), ((), ()))))
            if k:
                g = lax.dot_general(g, ws[k], (((1,), (1,)), ((), ())))
        return hs[-1], w_bars

    return jax.jit(products).lower(*operands).compile(), operands


def torch_step_runner(config: Config) -> Runner | None:
    """The same step in PyTorch eager (CPU): zero_grad, forward, loss, backward, clip_grad_norm_, SGD;
    None without PyTorch."""
    try:
        import torch
    except ImportError:
        return None
    from experiments.compare_torch import torch_inputs, torch_labels, torch_loss, torch_model

    task = config.task
    model = torch_model(task, task.init(task.model(), 0))
    opt = torch.optim.SGD(model.parameters(), lr=LR, momentum=MOMENTUM)
    loss_fn = torch_loss(task)
    x, y = random_batch(task, config.batch)
    x, y = torch_inputs(task, x), torch_labels(task, y)
    return torch_runner(model, opt, lambda: loss_fn(model(x), y), MAX_NORM)


def step_rows(config: Config, settings: Settings) -> list[dict]:
    """One row per implementation of ``config``'s train step."""
    runners, temps = grad_runners(lambda grad: jax_step_runner(config, grad), lambda: torch_step_runner(config),
                                  settings.with_torch)
    if not config.is_cnn:
        compiled, operands = gemms_only(config)
        runners["gemms_only"], temps["gemms_only"] = repeat_call(compiled, *operands), temp_bytes(compiled)
    return as_rows(config.model, config.batch, settings.time(runners), config.matmul_flops(), temps)
