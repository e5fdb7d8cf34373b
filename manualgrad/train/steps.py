"""The update rule and the jitted train step, on one device or data-parallel over a mesh.

One update serves every form of training: :func:`updater` is the pure function
``(params, opt_state, state, batch, *, key) -> (params, opt_state, state, metrics)``;
:func:`make_train_step` jits it for one batch at a time, and :mod:`manualgrad.train.epochs`
runs it over a whole dataset.
"""

from __future__ import annotations

from typing import Any, Callable

import jax
import jax.numpy as jnp
import optax

from manualgrad import parallel
from manualgrad.core import Op
from manualgrad.errors import describe, fail
from manualgrad.nn import Layer
from manualgrad.train.gradients import gradient
from manualgrad.trees import num_examples

__all__ = ["make_update", "make_train_step", "sharded_step", "targets_sum", "updater"]

#: ``(params, opt_state, state, batch, *, key=None) -> (params, opt_state, state, metrics)``
Update = Callable[..., tuple[Any, Any, Any, dict]]


def updater(
    model: Layer, loss: Op, optimizer: optax.GradientTransformation, grad: str = "manual", axis_name: str | None = None
) -> Update:
    """The pure update in the library's uniform form: ``(params, opt_state, state, (x, y), *,
    key=None) -> (params, opt_state, state, metrics)``.

    ``metrics`` holds the batch ``"loss"``, the raw gradient's global norm ``"grad_norm"``
    (before clipping) and ``"targets_sum"`` (:func:`targets_sum`), all scalars. The model runs
    in training mode (``key`` feeds its dropout layers). ``axis_name``: see
    :func:`manualgrad.train.gradients.gradient`.
    """
    value_and_grad = gradient(model, loss, grad, axis_name)

    def update(params, opt_state, state, batch, *, key=None):
        x, y = _pair(batch)
        seen = targets_sum(y, axis_name)
        value, grads, state = value_and_grad(params, state, x, y, key=key)
        updates, opt_state = optimizer.update(grads, opt_state, params)
        params = optax.apply_updates(params, updates)
        return params, opt_state, state, {"loss": value, "grad_norm": optax.tree.norm(grads), "targets_sum": seen}

    return update


def targets_sum(y: Any, axis_name: str | None = None) -> jax.Array:
    """The sum of every target of the batch in float32 (over all devices of ``axis_name``): a
    fingerprint of which examples a step trained on. Runs that visit the same batches (scanned
    or looped epochs, one device or several, a resumed run) give equal sums for integer or
    boolean targets (class ids, tokens; exact while the sum stays below 2**24); for float targets
    a different order of summation (several devices' partial sums) may change the last bits.

    It is also what keeps a train step off the calling thread on XLA:CPU. The runtime runs a
    program's first ready operation, and everything that operation alone makes ready, on the
    thread that called the program, and that thread comes on top of its pool of one worker per
    core. A step whose only operation without inputs is the first layer's product then runs
    its forward and backward there, three threads sharing two cores' GEMMs (MLP 784-256-128-10
    at batch 1024: first-layer product 2.6 ms against 2.0 on a worker, step 7.0 ms against
    5.8). This sum depends on nothing but the targets, and in the steps measured here XLA
    lists it first: the calling thread runs it and waits, and the workers run the step
    (BENCHMARKS.md, "The caller's thread"). That order is XLA's choice, not a guarantee; where
    it puts the product first the step runs as it did without the sum.
    """
    leaves = jax.tree_util.tree_leaves(y)
    total = sum((jnp.sum(leaf, dtype=jnp.float32) for leaf in leaves), jnp.zeros((), jnp.float32))
    return total if axis_name is None else jax.lax.psum(total, axis_name)


def _pair(batch: Any) -> tuple[Any, Any]:
    """``(x, y)`` from ``batch``, or an error saying what a step takes instead."""
    if not isinstance(batch, (tuple, list)) or len(batch) != 2:
        got = f"a {type(batch).__name__} of {len(batch)}" if isinstance(batch, (tuple, list)) else describe("batch", batch)
        fail("manualgrad.train.step", f"batch must be the pair (x, y), got {got}; the step is "
                                      "step(params, opt_state, (x, y), state=..., key=...)")
    return batch[0], batch[1]


def make_update(
    model: Layer, loss: Op, optimizer: optax.GradientTransformation, grad: str = "manual", axis_name: str | None = None
) -> Callable[..., tuple]:
    """The pure (not jitted) update of one batch.

    Args:
      model: as for :func:`updater`.
      loss: as for :func:`updater`.
      optimizer: as for :func:`updater`.
      grad: as for :func:`updater`.
      axis_name: as for :func:`updater`.

    Returns:
      ``update(params, opt_state, x, y, *, state=None, key=None) -> (params, opt_state,
      metrics)``, with the new state appended, ``(params, opt_state, metrics, state)``, when
      ``state`` is passed.
    """
    update = updater(model, loss, optimizer, grad, axis_name)

    def edge(params, opt_state, x, y, *, state=None, key=None):
        params, opt_state, new_state, metrics = update(params, opt_state, state, (x, y), key=key)
        return (params, opt_state, metrics) if state is None else (params, opt_state, metrics, new_state)

    return edge


def sharded_step(model: Layer, loss: Op, optimizer: optax.GradientTransformation, grad: str, mesh: Any) -> Update:
    """:func:`updater` data-parallel over ``mesh`` (not jitted): a ``shard_map`` in which each
    device runs the update on its rows of the batch (sharded over the mesh's ``"data"`` axis;
    a batch that does not split evenly is an error) and the gradients are all-reduced by
    ``lax.psum``. Params, optimiser state, layer state and key are replicated, and so are the
    results."""
    update = updater(model, loss, optimizer, grad, parallel.AXIS)
    rows, whole = jax.sharding.PartitionSpec(parallel.AXIS), jax.sharding.PartitionSpec()

    def per_device(params, opt_state, state, batch, key):
        return update(params, opt_state, state, batch, key=key)

    # check_vma=False: JAX does not track which values vary over the devices, so its autodiff
    # inserts no all-reduce of its own: the gradients' psum is gradient()'s, written out
    mapped = jax.shard_map(per_device, mesh=mesh, in_specs=(whole, whole, whole, rows, whole), out_specs=whole,
                           check_vma=False)

    def step(params, opt_state, state, batch, *, key=None):
        parallel.check_batch(mesh, num_examples("manualgrad.train.step", x=batch[0], y=batch[1]), "manualgrad.train.step")
        return mapped(params, opt_state, state, batch, key)

    return step


def make_train_step(
    model: Layer, loss: Op, optimizer: optax.GradientTransformation, grad: str = "manual", *, mesh: Any = None
) -> Callable[..., tuple]:
    """One jitted, pure train step.

    Args:
      model: the network.
      loss: an op ``loss(prediction, target)``.
      optimizer: an optax transformation, e.g. :func:`manualgrad.train.sgd_with_clipping`.
      grad: ``"manual"``, ``"explicit"`` or ``"reference"`` (:mod:`manualgrad.train.gradients`).
      mesh: a mesh from :func:`manualgrad.parallel.data_mesh` makes the step data-parallel
        (:func:`sharded_step`); pass replicated params, optimiser state, layer state and key
        (:func:`manualgrad.parallel.replicate`).

    Returns:
      ``step(params, opt_state, (x, y)) -> (params, opt_state, metrics)``; for models with
      state or dropout ``step(params, opt_state, batch, state=state, key=key) -> (params,
      opt_state, metrics, state)`` (a fresh ``key`` per step, e.g.
      :func:`manualgrad.keys.step_key`). ``params`` and ``opt_state`` are donated: their
      buffers are reused for the new values, so the arrays passed in must not be used after
      the call (keep the returned ones).
    """
    update = updater(model, loss, optimizer, grad) if mesh is None else sharded_step(model, loss, optimizer, grad, mesh)

    def train_step(params, opt_state, batch, state=None, key=None):
        params, opt_state, new_state, metrics = update(params, opt_state, state, batch, key=key)
        return (params, opt_state, metrics) if state is None else (params, opt_state, metrics, new_state)

    return jax.jit(train_step, donate_argnums=(0, 1))
