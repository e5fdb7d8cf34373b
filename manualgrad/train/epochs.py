"""Whole epochs: a shuffled pass over the training set, as one scanned call, a Python loop of
jitted steps, or a data-parallel loop fed from the host.

Every form runs the same update (:func:`manualgrad.train.steps.updater`) over the same batches
(:func:`epoch_permutation`) with the same keys (:func:`manualgrad.keys.step_key`), so they agree
to rounding; each has ``.lower(...).compile()``, as a jitted function does.
"""

from __future__ import annotations

from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np
import optax

from manualgrad import parallel
from manualgrad.core import Op
from manualgrad.errors import fail, positive_int
from manualgrad.keys import step_key
from manualgrad.nn import Layer
from manualgrad.train.steps import sharded_step, updater
from manualgrad.trees import num_examples, take

__all__ = ["epoch_permutation", "make_epoch", "Epoch"]

#: ``run(params, opt_state, state, x, y, key) -> (params, opt_state, state, metrics)``
Run = Callable[..., tuple[Any, Any, Any, dict]]


def epoch_permutation(key: jax.Array, n: int, batch_size: int) -> jax.Array:
    """Example indices of one epoch, shape ``(n // batch_size, batch_size)``.

    A fresh permutation of ``range(n)`` from ``key``, cut into full batches. The
    ``n % batch_size`` examples at the end of the permutation are left out of this
    epoch, so every step has the same shape and the epoch compiles once; since the
    permutation changes every epoch, a different few are left out each time.
    """
    where = "manualgrad.train.epoch_permutation"
    n, batch_size = positive_int(where, "n", n), positive_int(where, "batch_size", batch_size)
    if n < batch_size:
        fail(where, f"n={n} examples make no batch of batch_size={batch_size}")
    steps = n // batch_size
    return jax.random.permutation(key, n)[: steps * batch_size].reshape(steps, batch_size)


class Epoch:
    """What :func:`make_epoch` returns: ``epoch(params, opt_state, x, y, key) -> (params,
    opt_state, metrics)``, or with the model's state ``epoch(params, opt_state, x, y, key,
    state) -> (params, opt_state, metrics, state)``; and ``epoch.lower(...)`` with the same
    arguments, whose ``.compile()`` gives the compiled epoch. ``.run`` is the uniform form
    ``(params, opt_state, state, x, y, key) -> (params, opt_state, state, metrics)``."""

    def __init__(self, run: Run, lower: Callable[..., Any]):
        self.run, self._lower = run, lower

    def __call__(self, params: Any, opt_state: Any, x: Any, y: Any, key: jax.Array, state: Any = None) -> tuple:
        params, opt_state, new_state, metrics = self.run(params, opt_state, state, x, y, key)
        return (params, opt_state, metrics) if state is None else (params, opt_state, metrics, new_state)

    def lower(self, params: Any, opt_state: Any, x: Any, y: Any, key: jax.Array, state: Any = None) -> Any:
        """The epoch lowered for these arguments; ``.compile()`` gives an :class:`Epoch` (for the
        scanned epoch, JAX's ``Lowered``: its ``.compile()`` also has ``memory_analysis()``)."""
        return self._lower(params, opt_state, state, x, y, key)


class _Compiling:
    """``lower`` of a loop epoch: its step lowered; ``compile()`` gives the epoch with that step compiled."""

    def __init__(self, lowered: Any, epoch: Callable[[Any], Epoch]):
        self._lowered, self._epoch = lowered, epoch

    def compile(self) -> Epoch:
        return self._epoch(self._lowered.compile())


def make_epoch(
    model: Layer,
    loss: Op,
    optimizer: optax.GradientTransformation,
    batch_size: int,
    grad: str = "manual",
    *,
    scan: bool = True,
    mesh: Any = None,
) -> Epoch:
    """One whole epoch of training.

    ``x`` and ``y`` are the whole training set (arrays, or pytrees of arrays with a common
    leading axis, such as one target per head). The epoch draws a permutation from ``key``
    (:func:`epoch_permutation`: the last ``n % batch_size`` examples of each epoch's
    permutation are dropped), then runs the update over the ``n // batch_size`` batches. The
    model runs in training mode; step ``i`` (0-based) gets the key ``step_key(key, i)``,
    independent of the permutation's, and the state travels with the params.
    ``metrics["loss"]``, ``metrics["grad_norm"]`` and ``metrics["targets_sum"]`` have one
    entry per step. Params,
    optimizer state and state are donated.

    Args:
      model: as for :func:`manualgrad.train.make_train_step`.
      loss: as for :func:`manualgrad.train.make_train_step`.
      optimizer: as for :func:`manualgrad.train.make_train_step`.
      grad: as for :func:`manualgrad.train.make_train_step`.
      batch_size: examples per step (>= 1).
      scan: ``True`` (the default): the epoch is one jitted ``lax.scan`` over device-resident
        data, a single compiled call. ``False`` runs the same jitted step from a Python loop
        (same batches, same keys), for programs that XLA runs slowly inside a loop: on XLA:CPU
        a convolution inside ``lax.scan`` runs ~20x slower than the same convolution outside
        (jax-ml/jax#12868; measured here: a CNN step 82 ms jitted, 1.7 s per step scanned).
      mesh: data-parallel (:func:`manualgrad.train.steps.sharded_step`) from a Python loop
        over the same permutation and keys: ``x`` and ``y`` stay NumPy arrays on the host,
        and each process gathers only its own rows of each global batch
        (:func:`manualgrad.parallel.process_rows`). The permutation comes from ``key`` alone,
        so every process, and a single-device run, visit the examples in the same global
        order. Params, state and key are replicated (:func:`manualgrad.parallel.replicate`).

    Returns:
      An :class:`Epoch`: ``epoch(params, opt_state, x, y, key[, state])``.
    """
    batch_size = positive_int("manualgrad.train.make_epoch", "batch_size", batch_size)

    def batches_of(x, y, key):
        n = num_examples("manualgrad.train.epoch", x=x, y=y)
        if n < batch_size:
            fail("manualgrad.train.epoch", f"{n} examples make no batch of batch_size={batch_size}")
        return epoch_permutation(key, n, batch_size)

    if mesh is not None:
        parallel.check_batch(mesh, batch_size, "manualgrad.train.make_epoch")
        sharded = sharded_step(model, loss, optimizer, grad, mesh)
        step = jax.jit(lambda p, o, s, batch, key: sharded(p, o, s, batch, key=key), donate_argnums=(0, 1, 2))

        def feed(x, y, key, idx, i):  # this process's rows of global batch i, and the step's key
            rows = idx[parallel.process_rows(mesh, batch_size)]
            return parallel.global_batch(mesh, take((x, y), rows), batch_size), parallel.replicate(mesh, step_key(key, i))

        return _loop_epoch(step, lambda x, y, key: np.asarray(batches_of(x, y, key)), feed, parallel.local, np.stack)

    update = updater(model, loss, optimizer, grad)

    def one_step(params, opt_state, state, x, y, idx, key):
        return update(params, opt_state, state, (take(x, idx), take(y, idx)), key=key)

    if not scan:
        def feed(x, y, key, idx, i):
            return (x, y, idx), step_key(key, i)

        step = jax.jit(lambda p, o, s, batch, key: one_step(p, o, s, *batch, key), donate_argnums=(0, 1, 2))
        return _loop_epoch(step, batches_of, feed, lambda m: m, jnp.stack)

    def epoch(params, opt_state, state, x, y, key):
        batches = batches_of(x, y, key)

        def body(carry, i):
            params, opt_state, state, metrics = one_step(*carry, x, y, batches[i], step_key(key, i))
            return (params, opt_state, state), metrics

        (params, opt_state, state), metrics = jax.lax.scan(body, (params, opt_state, state), jnp.arange(batches.shape[0]))
        return params, opt_state, state, metrics

    scanned = jax.jit(epoch, donate_argnums=(0, 1, 2))
    return Epoch(scanned, lambda *args: _Scanned(scanned.lower(*args)))


class _Scanned:
    """The scanned epoch lowered: ``compile()`` gives an :class:`Epoch` whose compiled call
    keeps JAX's ``memory_analysis()`` and ``cost_analysis()``."""

    def __init__(self, lowered: Any):
        self._lowered = lowered

    def compile(self) -> Epoch:
        compiled = self._lowered.compile()
        epoch = Epoch(compiled, lambda *args: self)
        epoch.memory_analysis, epoch.cost_analysis = compiled.memory_analysis, compiled.cost_analysis
        return epoch

    def as_text(self) -> str:
        return self._lowered.as_text()


def _loop_epoch(step: Any, batches_of: Callable, feed: Callable, read: Callable, stack: Callable) -> Epoch:
    """An epoch that calls the jitted ``step(params, opt_state, state, batch, key)`` once per batch
    from Python: ``feed(x, y, key, idx, i) -> (batch, key)`` makes step ``i``'s arguments from the
    epoch's indices ``idx``, ``read`` brings each step's metrics back, ``stack`` joins them."""

    def run_with(call):
        def run(params, opt_state, state, x, y, key):
            idx, metrics = batches_of(x, y, key), []
            for i in range(idx.shape[0]):
                params, opt_state, state, m = call(params, opt_state, state, *feed(x, y, key, idx[i], i))
                # read each step's metrics now: fake CPU devices run a collective as a rendezvous of
                # threads, and several steps in flight on few cores can stall it (benchmark_parallel)
                metrics.append(read(m))
            return params, opt_state, state, jax.tree_util.tree_map(lambda *a: stack(a), *metrics)

        return run

    def lower(params, opt_state, state, x, y, key):
        lowered = step.lower(params, opt_state, state, *feed(x, y, key, batches_of(x, y, key)[0], 0))
        return _Compiling(lowered, lambda compiled: Epoch(run_with(compiled), lower))

    return Epoch(run_with(step), lower)
