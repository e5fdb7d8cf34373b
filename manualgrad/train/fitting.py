"""``fit``: epochs of training with evaluation, checkpoints and resume, on one device or a mesh."""

from __future__ import annotations

import json
import os
import time
from typing import Any, Callable, NamedTuple

import jax
import numpy as np
import optax

from manualgrad import checkpoint, parallel
from manualgrad.core import Op
from manualgrad.errors import fail, one_key
from manualgrad.keys import epoch_key
from manualgrad.nn import Layer
from manualgrad.train.epochs import make_epoch
from manualgrad.train.evaluation import check_finite, evaluate, metric_names

__all__ = ["History", "fit"]


class History(NamedTuple):
    """What :func:`fit` returns: final params and optimizer state, one dict per epoch, the
    training loss of every step (one list per epoch), and the model's final state
    (batch norm's running statistics; empty tuples for a model without state)."""

    params: Any
    opt_state: Any
    epochs: list[dict[str, float]]
    compile_seconds: float
    step_losses: list[list[float]]
    state: Any = ()


def fit(
    model: Layer,
    loss: Op,
    optimizer: optax.GradientTransformation,
    params: Any,
    data: Any,
    *,
    epochs: int,
    batch_size: int,
    key: jax.Array,
    grad: str = "manual",
    metric: str | None | tuple[str | None, ...] = None,
    checkpoint_path: str | os.PathLike | None = None,
    resume: bool = False,
    config: dict[str, Any] | None = None,
    on_epoch: Callable[[dict[str, float], Any], None] | None = None,
    state: Any = None,
    scan: bool = True,
    eval_batch_size: int = 8192,
    mesh: Any = None,
) -> History:
    """Train for ``epochs`` epochs, evaluating on the test split after each.

    Args:
      model: the network.
      loss: an op ``loss(prediction, target)``.
      optimizer: an optax transformation (:mod:`manualgrad.train.optimizers`).
      params: the starting params; copied, not consumed.
      data: has ``x_train, y_train, x_test, y_test`` (a :class:`manualgrad.data.Dataset`; each
        an array or a pytree of arrays, e.g. one target per head).
      epochs: the epoch to stop after (a resumed run continues up to it).
      batch_size: examples per step (the global batch with a mesh).
      key: the run's key: epoch ``e`` (1-based) shuffles with ``epoch_key(key, e)`` and its
        steps draw from ``step_key`` (:mod:`manualgrad.keys`).
      grad: the gradient source, ``"manual"``, ``"explicit"`` or ``"reference"``.
      metric: the test metric (see :func:`manualgrad.train.evaluate`).
      checkpoint_path: save params, optimizer state, layer state and the history atomically
        after every epoch. A NaN or infinite loss or gradient raises
        :class:`manualgrad.train.NonFiniteError` naming the epoch and step; that epoch is not
        saved, so the checkpoint keeps the last good epoch.
      resume: continue from ``checkpoint_path``; the result is bit-identical (up to the
        timings) to an uninterrupted run.
      config: JSON-serialisable settings stored with the checkpoint; resuming with a different
        ``config`` raises :class:`manualgrad.checkpoint.CheckpointError` naming what changed.
      on_epoch: ``on_epoch(entry, params)`` after each epoch, with its new entry and the params
        it ended with (copy them, e.g. with ``jax.device_get``, to keep them: the next epoch
        reuses their buffers).
      state: the model's starting state; ``model.init_state`` when None.
      scan: the epoch's form (:func:`manualgrad.train.make_epoch`: ``False`` for CNNs on CPU).
      eval_batch_size: :func:`manualgrad.train.evaluate`'s chunk (smaller for models with large
        activations).
      mesh: train data-parallel over its devices (:func:`manualgrad.parallel.data_mesh`), in one
        process or several: the data stay on the host and each process feeds its rows of
        every global batch; every process evaluates its own copy of the params; process 0
        alone writes the checkpoint while the others wait, and every process resumes from it
        (so ``checkpoint_path`` must be on a filesystem they all see).

    Returns:
      A :class:`History`. Each epoch's entry holds ``epoch``, ``train_loss`` (mean over its
      steps), ``grad_norm_max`` (largest raw gradient norm), ``seconds`` (training time,
      without compilation, which is done ahead and reported as ``compile_seconds``), and the
      test metrics prefixed ``test_``. ``on_epoch`` and the result get this process's copies
      of params and state.
    """
    one_key("manualgrad.train.fit", "key", key)
    config = _as_json("config", config)
    place = parallel.Placement(mesh)
    x, y, x_test, y_test = place.data((data.x_train, data.y_train, data.x_test, data.y_test))
    metric_names(metric, y_test)
    # the starting point, fresh or resumed, settled on the host and then placed once
    if state is None:
        state = model.init_state((batch_size,) + tuple(jax.tree_util.tree_leaves(x)[0].shape[1:]))[1]
    start, history, step_losses = (params, optimizer.init(params), state), [], []
    if resume:
        start, history, step_losses = _resumed(checkpoint_path, config, start)
        if len(history) > epochs:
            raise checkpoint.CheckpointError(
                f"manualgrad.train.fit: {checkpoint_path} holds {len(history)} epochs, more than epochs={epochs}; "
                "resume with at least as many epochs, or start afresh without resume")
    params, opt_state, state = place.put(start)

    began = time.perf_counter()
    run_epoch = make_epoch(model, loss, optimizer, batch_size, grad, scan=scan, mesh=mesh)
    run_epoch = run_epoch.lower(params, opt_state, x, y, key, state).compile().run
    compile_seconds = time.perf_counter() - began
    for epoch in range(len(history) + 1, epochs + 1):
        began = time.perf_counter()
        params, opt_state, state, metrics = run_epoch(params, opt_state, state, x, y, epoch_key(key, epoch))
        metrics = jax.device_get(metrics)
        seconds = time.perf_counter() - began
        check_finite(metrics, epoch)
        test = evaluate(model, place.get(params), x_test, y_test, loss, metric=metric, state=place.get(state),
                        batch_size=eval_batch_size)
        entry = {
            "epoch": epoch,
            "train_loss": float(np.mean(metrics["loss"])),
            "grad_norm_max": float(np.max(metrics["grad_norm"])),
            "seconds": seconds,
            **{f"test_{k}": v for k, v in test.items()},
        }
        history.append(entry)
        step_losses.append(np.asarray(metrics["loss"], np.float64).tolist())
        if checkpoint_path is not None:
            meta = {"history": history, "step_losses": step_losses, "config": config}
            if jax.process_index() == 0:  # one writer; the others wait until the file is complete
                checkpoint.save(checkpoint_path, place.get((params, opt_state, state)), meta)
            parallel.barrier(f"manualgrad checkpoint, epoch {epoch}")
        if on_epoch is not None:
            on_epoch(entry, place.get(params))
    return History(*place.get((params, opt_state)), history, compile_seconds, step_losses, place.get(state))


def _as_json(name: str, value: Any) -> Any:
    """``value`` as its JSON round trip (tuples become lists, as a checkpoint stores them), so that
    a resumed run compares like with like; an error now for what JSON cannot hold."""
    try:
        return json.loads(json.dumps(value))
    except (TypeError, ValueError) as e:
        fail("manualgrad.train.fit", f"{name} must hold JSON values only (str, int, float, bool, None, lists, "
                                     f"dicts; convert NumPy scalars with float() or int()): {e}")


def _resumed(path: str | os.PathLike | None, config: dict[str, Any] | None, like: tuple) -> tuple[tuple, list, list]:
    """``(params, opt_state, state)``, the history and the step losses stored at ``path``, after
    checking that it was written with ``config``."""
    if path is None:
        fail("manualgrad.train.fit", "resume=True needs a checkpoint_path")
    # settings first: a changed model or momentum would otherwise fail as a structure mismatch
    stored = checkpoint.read_meta(path).get("config") or {}
    changed = [f"{k}: {stored.get(k)!r} there, {v!r} now" for k, v in (config or {}).items() if stored.get(k) != v]
    if changed:
        raise checkpoint.CheckpointError(f"manualgrad.train.fit: {path} was written with other settings ({'; '.join(changed)})")
    tree, meta = checkpoint.load(path, like)
    return tree, meta["history"], meta.get("step_losses", [])
