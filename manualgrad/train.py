"""Training: optax SGD with gradient clipping, a jitted train step, a scanned epoch, evaluation.

One update rule serves everything here. :func:`make_update` builds the pure function
``(params, opt_state, x, y) -> (params, opt_state, metrics)``;
:func:`make_train_step` jits it (donating params and optimizer state) for use one batch
at a time, and :func:`make_epoch` runs it under ``lax.scan`` over a whole device-resident
dataset, so an epoch is a single compiled call.

The gradient comes from one of three sources (``grad=``), which must agree:

* ``"manual"``: ``jax.grad`` through the ops' hand-written VJPs (every op is a
  ``jax.custom_vjp`` function);
* ``"explicit"``: :func:`manualgrad.backprop.value_and_grad`, the layers' own ``fwd``/``bwd``
  rules with no ``jax.grad`` at all;
* ``"reference"``: ``jax.grad`` of the plain reference forwards
  (:func:`manualgrad.core.reference_mode`), the baseline the other two are measured against.
"""

from __future__ import annotations

import functools
import os
import time
from typing import Any, Callable, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax

from manualgrad import backprop, checkpoint, parallel
from manualgrad.trees import num_examples, take
from manualgrad.core import Op, reference_mode
from manualgrad.nn import Layer
from manualgrad.nn.layer import init_state

__all__ = [
    "GRADS",
    "NonFiniteError",
    "sgd_with_clipping",
    "adamw_with_clipping",
    "loss_and_grad",
    "make_update",
    "make_train_step",
    "make_epoch",
    "epoch_key",
    "step_key",
    "epoch_permutation",
    "check_finite",
    "evaluate",
    "METRICS",
    "History",
    "fit",
]

GRADS = ("manual", "explicit", "reference")

Batch = tuple[Any, Any]


class NonFiniteError(FloatingPointError):
    """A loss or gradient became NaN or infinite during training."""


def sgd_with_clipping(
    learning_rate: optax.ScalarOrSchedule, max_norm: float, momentum: float = 0.0, weight_decay: float = 0.0
) -> optax.GradientTransformation:
    """SGD on the gradient clipped to global norm ``max_norm``.

    ``optax.chain(optax.clip_by_global_norm(max_norm), optax.sgd(learning_rate, momentum))``:
    the raw gradient ``g`` is rescaled to ``g * max_norm / ||g||`` when its global L2 norm
    (over every leaf of the params pytree) exceeds ``max_norm``, then the step is
    ``params -= learning_rate * m`` with ``m = g + momentum * m_prev`` (``m = g`` when
    ``momentum`` is 0, which keeps no momentum buffer). With momentum 0 every update
    therefore has norm at most ``learning_rate * max_norm``. This is PyTorch's
    ``clip_grad_norm_`` followed by ``torch.optim.SGD(lr, momentum)``. ``learning_rate``
    may be an optax schedule (a function of the step count), e.g.
    ``optax.cosine_decay_schedule(0.1, total_steps)``.

    ``weight_decay`` (L2) adds ``weight_decay * params`` to the clipped gradient before the
    momentum step: ``optax.add_decayed_weights`` between the two, which is what
    ``torch.optim.SGD(..., weight_decay=...)`` does after ``clip_grad_norm_``.
    """
    if not callable(learning_rate) and not learning_rate > 0:
        raise ValueError(f"manualgrad.train.sgd_with_clipping: learning_rate must be > 0, got {learning_rate!r}")
    if not max_norm > 0:
        raise ValueError(f"manualgrad.train.sgd_with_clipping: max_norm must be > 0, got {max_norm!r}")
    if not 0 <= momentum < 1:
        raise ValueError(f"manualgrad.train.sgd_with_clipping: momentum must be in [0, 1), got {momentum!r}")
    if not weight_decay >= 0:
        raise ValueError(f"manualgrad.train.sgd_with_clipping: weight_decay must be >= 0, got {weight_decay!r}")
    decay = [optax.add_decayed_weights(weight_decay)] if weight_decay else []
    return optax.chain(
        optax.clip_by_global_norm(max_norm),
        *decay,
        optax.sgd(learning_rate, momentum if momentum else None),
    )


def adamw_with_clipping(
    learning_rate: optax.ScalarOrSchedule,
    max_norm: float,
    weight_decay: float = 0.0,
    b1: float = 0.9,
    b2: float = 0.99,
) -> optax.GradientTransformation:
    """AdamW on the gradient clipped to global norm ``max_norm`` (the transformer recipe).

    ``optax.chain(optax.clip_by_global_norm(max_norm), optax.adamw(learning_rate, b1, b2,
    weight_decay=weight_decay, mask=...))``: Adam's step on the clipped gradient, then
    decoupled weight decay ``params -= learning_rate * weight_decay * params`` applied only to
    leaves with two or more axes (weight matrices, kernels, embedding tables), not to biases
    and normalisation scales, as GPT-2 and nanoGPT do. ``torch.nn.utils.clip_grad_norm_`` then
    ``torch.optim.AdamW`` with those parameter groups is the PyTorch equivalent.
    """
    where = "manualgrad.train.adamw_with_clipping"
    if not callable(learning_rate) and not learning_rate > 0:
        raise ValueError(f"{where}: learning_rate must be > 0, got {learning_rate!r}")
    if not max_norm > 0:
        raise ValueError(f"{where}: max_norm must be > 0, got {max_norm!r}")
    if not weight_decay >= 0:
        raise ValueError(f"{where}: weight_decay must be >= 0, got {weight_decay!r}")
    if not (0 <= b1 < 1 and 0 <= b2 < 1):
        raise ValueError(f"{where}: b1 and b2 must be in [0, 1), got b1={b1!r}, b2={b2!r}")

    def matrices(params):
        return jax.tree_util.tree_map(lambda a: jnp.ndim(a) >= 2, params)

    return optax.chain(
        optax.clip_by_global_norm(max_norm),
        optax.adamw(learning_rate, b1, b2, weight_decay=weight_decay, mask=matrices),
    )


def loss_and_grad(model: Layer, loss: Op, grad: str = "manual", axis_name: str | None = None) -> Callable[..., tuple]:
    """``f(params, x, y, *, state=None, key=None)`` with the gradient from the source ``grad``.

    The model runs in training mode. Returns ``(loss_value, grads)``, or ``(loss_value,
    grads, new_state)`` when ``state`` is passed (pass state, get state back); ``key``
    feeds dropout.

    Data parallelism: inside a ``shard_map`` over the mesh axis ``axis_name`` each device
    holds an equal slice of the batch. Its loss and gradient are the means over its slice,
    so the whole batch's are their mean over the devices: the gradients are all-reduced by
    an explicit ``lax.psum(g, axis_name) / devices`` (the textbook picture of data-parallel
    backprop), and so are the loss and the new layer state (batch norm's running statistics,
    computed from each device's own slice, are averaged; its batch statistics are per
    device, as in PyTorch's DistributedDataParallel without SyncBatchNorm). Each device draws
    its dropout masks from ``fold_in(key, device index)``.
    """
    if grad not in GRADS:
        raise ValueError(f"manualgrad.train: grad must be one of {GRADS}, got {grad!r}")
    local = _local_loss_and_grad(model, loss, grad)
    if axis_name is None:
        return local

    def all_reduced(params, x, y, *, state=None, key=None):
        if key is not None:
            key = jax.random.fold_in(key, jax.lax.axis_index(axis_name))
        out = local(params, x, y, state=state, key=key)
        devices = jax.lax.psum(1, axis_name)

        def mean(a):  # integer state (a counter) is the same on every device: kept as it is
            return jax.lax.psum(a, axis_name) / devices if jnp.issubdtype(a.dtype, jnp.inexact) else a

        return jax.tree_util.tree_map(mean, out)

    return all_reduced


def _local_loss_and_grad(model: Layer, loss: Op, grad: str) -> Callable[..., tuple]:
    """:func:`loss_and_grad` on one device's batch."""
    if grad == "explicit":
        return backprop.value_and_grad(model, loss)

    def objective(params, x, y, state, key):
        if state is None:
            return loss(model.apply(params, x, key=key, train=True), y), None
        pred, state = model.apply(params, x, state=state, key=key, train=True)
        return loss(pred, y), state

    manual = jax.value_and_grad(objective, has_aux=True)

    def run(params, x, y, *, state=None, key=None):
        if grad == "manual":
            (value, new_state), grads = manual(params, x, y, state, key)
        else:
            with reference_mode():  # read while tracing: every op runs its plain reference
                (value, new_state), grads = manual(params, x, y, state, key)
        return (value, grads) if state is None else (value, grads, new_state)

    return run


def make_update(
    model: Layer, loss: Op, optimizer: optax.GradientTransformation, grad: str = "manual", axis_name: str | None = None
) -> Callable[..., tuple]:
    """The pure update ``(params, opt_state, x, y, *, state=None, key=None) -> (params, opt_state, metrics)``,
    with the new state appended, ``(params, opt_state, metrics, state)``, when ``state`` is passed.

    ``metrics`` holds the batch ``"loss"`` and the raw gradient's global norm
    ``"grad_norm"`` (before clipping), both scalars. The model runs in training mode
    (``key`` feeds its dropout layers). ``axis_name``: see :func:`loss_and_grad`.
    """
    value_and_grad = loss_and_grad(model, loss, grad, axis_name)

    def update(params, opt_state, x, y, *, state=None, key=None):
        out = value_and_grad(params, x, y, state=state, key=key)
        value, grads = out[:2]
        updates, opt_state = optimizer.update(grads, opt_state, params)
        params = optax.apply_updates(params, updates)
        metrics = {"loss": value, "grad_norm": optax.tree.norm(grads)}
        return (params, opt_state, metrics) if state is None else (params, opt_state, metrics, out[2])

    return update


def make_train_step(
    model: Layer, loss: Op, optimizer: optax.GradientTransformation, grad: str = "manual", *, mesh: Any = None
) -> Callable[[Any, Any, Batch], tuple[Any, Any, dict]]:
    """One jitted, pure train step ``(params, opt_state, (x, y)) -> (params, opt_state, metrics)``.

    For models with state or dropout: ``step(params, opt_state, batch, state=state, key=key)
    -> (params, opt_state, metrics, state)`` (pass state, get state back; a fresh ``key`` per
    step, e.g. ``jax.random.fold_in(key, step)``).
    ``params`` and ``opt_state`` are donated: their buffers are reused for the new values,
    so the arrays passed in must not be used after the call (keep the returned ones).
    ``grad`` is ``"manual"``, ``"explicit"`` or ``"reference"`` (see the module docstring).

    With a ``mesh`` (:func:`manualgrad.parallel.data_mesh`) the step is data-parallel: a
    ``shard_map`` in which each device runs the update on its rows of the batch (sharded over
    the mesh's ``"data"`` axis; a batch that does not split evenly is an error) and the
    gradients are all-reduced by ``lax.psum`` (see :func:`loss_and_grad`). Params, optimiser
    state, layer state and key are replicated (:func:`manualgrad.parallel.replicate`), and so
    are the results.
    """
    if mesh is None:
        update = make_update(model, loss, optimizer, grad)

        def step(params, opt_state, batch, state=None, key=None):
            x, y = batch
            return update(params, opt_state, x, y, state=state, key=key)

        return jax.jit(step, donate_argnums=(0, 1))

    update = make_update(model, loss, optimizer, grad, parallel.AXIS)
    rows, whole = jax.sharding.PartitionSpec(parallel.AXIS), jax.sharding.PartitionSpec()

    def per_device(params, opt_state, x, y, state, key):
        out = update(params, opt_state, x, y, state=state, key=key)
        return out if state is not None else (*out, None)

    # check_vma=False: JAX does not track which values vary over the devices, so its autodiff
    # inserts no all-reduce of its own: the gradients' psum is loss_and_grad's, written out
    mapped = jax.shard_map(per_device, mesh=mesh, in_specs=(whole, whole, rows, rows, whole, whole), out_specs=whole,
                           check_vma=False)

    def sharded_step(params, opt_state, batch, state=None, key=None):
        x, y = batch
        parallel.check_batch(mesh, num_examples("manualgrad.train.step", x=x, y=y), "manualgrad.train.step")
        out = mapped(params, opt_state, x, y, state, key)
        return out if state is not None else out[:3]

    return jax.jit(sharded_step, donate_argnums=(0, 1))


def epoch_key(key: jax.Array, epoch: int) -> jax.Array:
    """The shuffling key of epoch ``epoch`` (1-based): ``fold_in(key, epoch)``.

    Each epoch's order depends only on the run's key and the epoch number, so a resumed
    run shuffles exactly as an uninterrupted one.
    """
    return jax.random.fold_in(key, epoch)


def epoch_permutation(key: jax.Array, n: int, batch_size: int) -> jax.Array:
    """Example indices of one epoch, shape ``(n // batch_size, batch_size)``.

    A fresh permutation of ``range(n)`` from ``key``, cut into full batches. The
    ``n % batch_size`` examples at the end of the permutation are left out of this
    epoch, so every step has the same shape and the epoch compiles once; since the
    permutation changes every epoch, a different few are left out each time.
    """
    steps = n // batch_size
    return jax.random.permutation(key, n)[: steps * batch_size].reshape(steps, batch_size)


def make_epoch(
    model: Layer,
    loss: Op,
    optimizer: optax.GradientTransformation,
    batch_size: int,
    grad: str = "manual",
    *,
    scan: bool = True,
    mesh: Any = None,
) -> Callable[..., tuple]:
    """One whole epoch: ``(params, opt_state, x, y, key) -> (params, opt_state, metrics)``,
    or with the model's state ``(params, opt_state, x, y, key, state) -> (params, opt_state, metrics, state)``.

    ``x`` and ``y`` are the whole training set, resident on the device (arrays, or pytrees of
    arrays with a common leading axis, such as one target per head). The epoch draws a
    permutation from ``key`` (see :func:`epoch_permutation`: the last ``n % batch_size``
    examples of each epoch's permutation are dropped), then runs the update of
    :func:`make_update` over the ``n // batch_size`` batches, gathering each batch on the
    device. The model runs in training mode; step ``i`` (0-based) gets the dropout key
    ``fold_in(fold_in(key, 1), i)`` (:func:`step_key`), independent of the permutation's, and
    the state travels with the params. ``metrics["loss"]`` and ``metrics["grad_norm"]``
    have one entry per step. Params, optimizer state and state are donated.

    With ``scan=True`` (the default) the epoch is one jitted ``lax.scan``: a single compiled
    call, compiled once per dataset shape. ``scan=False`` runs the same jitted step from a
    Python loop instead (same batches, same keys), for programs that XLA runs slowly inside a
    loop: on XLA:CPU a convolution inside ``lax.scan`` runs ~20x slower than the same
    convolution outside (jax-ml/jax#12868; measured here: a CNN step 82 ms jitted, 1.7 s per
    step scanned). Both forms have ``.lower(...).compile()``, as a jitted function does.

    With a ``mesh`` the epoch calls the data-parallel step of :func:`make_train_step` from a
    Python loop over the same permutation and keys: ``x`` and ``y`` stay NumPy arrays on the
    host, and each process gathers only its own rows of each global batch
    (:func:`manualgrad.parallel.process_rows`), which its devices then train on. The
    permutation comes from ``key`` alone, so every process, and a single-device run, visit
    the examples in the same global order. Params, state and key are replicated
    (:func:`manualgrad.parallel.replicate`).
    """
    if batch_size < 1:
        raise ValueError(f"manualgrad.train.make_epoch: batch_size must be >= 1, got {batch_size}")
    update = make_update(model, loss, optimizer, grad)

    def batches_of(x, y, key):
        n = num_examples("manualgrad.train.epoch", x=x, y=y)
        if n < batch_size:
            raise ValueError(f"manualgrad.train.epoch: {n} examples make no batch of batch_size={batch_size}")
        return epoch_permutation(key, n, batch_size)

    def one_step(params, opt_state, state, x, y, idx, key):
        out = update(params, opt_state, take(x, idx), take(y, idx), state=state, key=key)
        return out[0], out[1], (None if state is None else out[3]), out[2]

    if mesh is not None:
        parallel.check_batch(mesh, batch_size, "manualgrad.train.make_epoch")
        return _ShardedEpoch(make_train_step(model, loss, optimizer, grad, mesh=mesh), batches_of, mesh, batch_size)
    if not scan:
        return _LoopEpoch(jax.jit(one_step, donate_argnums=(0, 1, 2)), batches_of)

    def epoch(params, opt_state, x, y, key, state=None):
        batches = batches_of(x, y, key)

        def body(carry, step):
            params, opt_state, state = carry
            params, opt_state, state, metrics = one_step(params, opt_state, state, x, y, batches[step], step_key(key, step))
            return (params, opt_state, state), metrics

        (params, opt_state, state_out), metrics = jax.lax.scan(
            body, (params, opt_state, state), jnp.arange(batches.shape[0])
        )
        return (params, opt_state, metrics) if state is None else (params, opt_state, metrics, state_out)

    return jax.jit(epoch, donate_argnums=(0, 1, 5))


class _LoopEpoch:
    """``make_epoch(..., scan=False)``: the jitted step called once per batch from Python."""

    def __init__(self, step: Any, batches_of: Callable, compiled: Any = None):
        self._step, self._batches_of, self._compiled = step, batches_of, compiled

    def lower(self, params, opt_state, x, y, key, state=None) -> "_LoopEpoch":
        idx = self._batches_of(x, y, key)[0]
        return _LoopEpoch(self._step, self._batches_of, self._step.lower(params, opt_state, state, x, y, idx, step_key(key, 0)))

    def compile(self) -> "_LoopEpoch":
        return _LoopEpoch(self._step, self._batches_of, self._compiled.compile())

    def __call__(self, params, opt_state, x, y, key, state=None):
        step = self._compiled or self._step
        batches, metrics = self._batches_of(x, y, key), []
        for i in range(batches.shape[0]):
            params, opt_state, state, m = step(params, opt_state, state, x, y, batches[i], step_key(key, i))
            metrics.append(m)
        metrics = jax.tree_util.tree_map(lambda *a: jnp.stack(a), *metrics)
        return (params, opt_state, metrics) if state is None else (params, opt_state, metrics, state)


class _ShardedEpoch:
    """``make_epoch(..., mesh=mesh)``: the data-parallel step called once per global batch, each
    process feeding its rows of it from the host."""

    def __init__(self, step: Any, batches_of: Callable, mesh: Any, batch_size: int, compiled: Any = None):
        self._step, self._batches_of, self._mesh, self._batch_size, self._compiled = step, batches_of, mesh, batch_size, compiled

    def _args(self, x, y, key, idx, i):
        rows = idx[parallel.process_rows(self._mesh, self._batch_size)]
        batch = parallel.global_batch(self._mesh, take((x, y), rows), self._batch_size)
        return batch, parallel.replicate(self._mesh, step_key(key, i))

    def lower(self, params, opt_state, x, y, key, state=None) -> "_ShardedEpoch":
        idx = np.asarray(self._batches_of(x, y, key))
        batch, k = self._args(x, y, key, idx[0], 0)
        lowered = self._step.lower(params, opt_state, batch, state, k)
        return _ShardedEpoch(self._step, self._batches_of, self._mesh, self._batch_size, lowered)

    def compile(self) -> "_ShardedEpoch":
        return _ShardedEpoch(self._step, self._batches_of, self._mesh, self._batch_size, self._compiled.compile())

    def __call__(self, params, opt_state, x, y, key, state=None):
        step = self._compiled or self._step
        idx, metrics = np.asarray(self._batches_of(x, y, key)), []
        for i in range(idx.shape[0]):
            batch, k = self._args(x, y, key, idx[i], i)
            params, opt_state, m, *new_state = step(params, opt_state, batch, state, k)
            state = new_state[0] if new_state else None
            # read each step's metrics now: fake CPU devices run a collective as a rendezvous of
            # threads, and several steps in flight on few cores can stall it (benchmark_parallel)
            metrics.append(parallel.local(m))
        metrics = jax.tree_util.tree_map(lambda *a: np.stack(a), *metrics)
        return (params, opt_state, metrics) if state is None else (params, opt_state, metrics, state)


def step_key(key: jax.Array, step: jax.Array | int) -> jax.Array:
    """The dropout key of step ``step`` (0-based) of the epoch whose shuffling key is ``key``."""
    return jax.random.fold_in(jax.random.fold_in(key, 1), step)


def check_finite(metrics: dict, epoch: int, first_step: int = 1) -> None:
    """Raise :class:`NonFiniteError` naming the epoch and the first step whose loss or gradient is not finite.

    ``metrics`` holds per-step arrays (``"loss"``, ``"grad_norm"``) as returned by
    :func:`make_epoch` (or a single step's scalars); ``first_step`` numbers the first entry.
    """
    loss = np.atleast_1d(np.asarray(metrics["loss"]))
    norm = np.atleast_1d(np.asarray(metrics["grad_norm"]))
    bad = np.flatnonzero(~(np.isfinite(loss) & np.isfinite(norm)))
    if bad.size:
        i = int(bad[0])
        raise NonFiniteError(
            f"manualgrad.train: non-finite training at epoch {epoch}, step {first_step + i}: "
            f"loss={loss[i]}, gradient norm={norm[i]}; the parameters of this epoch are discarded"
        )


def _accuracy(pred: jax.Array, y: jax.Array) -> tuple[jax.Array, int]:
    """Correct argmax predictions: ``y`` class ids of shape ``pred.shape[:-1]``, or one-hot rows /
    probabilities of ``pred``'s shape (the class with the largest probability is the right one)."""
    want = y if jnp.issubdtype(y.dtype, jnp.integer) else jnp.argmax(y, axis=-1)
    return jnp.sum(jnp.argmax(pred, axis=-1) == want), want.size


def _binary_accuracy(pred: jax.Array, y: jax.Array) -> tuple[jax.Array, int]:
    """Correct yes/no decisions of logits (``pred > 0``) against 0/1 (or probability) targets (``y > 0.5``)."""
    return jnp.sum((pred > 0) == (y > 0.5)), y.size


def _mse(pred: jax.Array, y: jax.Array) -> tuple[jax.Array, int]:
    """Squared errors over every element."""
    return jnp.sum(jnp.square(pred.astype(jnp.result_type(pred, y)) - y)), y.size


#: name -> per-chunk ``(sum, count)`` of a test metric; :func:`evaluate` reports ``sum / count``.
METRICS: dict[str, Callable[[jax.Array, jax.Array], tuple[jax.Array, int]]] = {
    "accuracy": _accuracy,
    "binary_accuracy": _binary_accuracy,
    "mse": _mse,
}


def _check_metric(metric: Any, y: Any) -> tuple:
    """``metric`` as one entry (a name or None) per target; tuple targets need one per head."""
    heads = isinstance(y, tuple)
    metrics = metric if isinstance(metric, tuple) else ((metric,) * len(y) if heads and metric is None else (metric,))
    if len(metrics) != (len(y) if heads else 1):
        raise ValueError(
            f"manualgrad.train.evaluate: metric={metric!r} gives {len(metrics)} metrics for "
            f"{len(y) if heads else 1} target(s); give one name (or None) per head"
        )
    for m in metrics:
        if m is not None and m not in METRICS:
            raise ValueError(f"manualgrad.train.evaluate: metric must be one of {tuple(METRICS)} or None, got {m!r}")
    return metrics


def evaluate(
    model: Layer,
    params: Any,
    x: Any,
    y: Any,
    loss: Op,
    *,
    metric: str | None | tuple[str | None, ...] = None,
    batch_size: int = 8192,
    state: Any = None,
) -> dict[str, float]:
    """Mean loss over ``(x, y)`` and the test metric you name.

    ``metric`` is one of :data:`METRICS`: ``"accuracy"`` (argmax against class ids, one-hot
    rows or probabilities), ``"binary_accuracy"`` (logits against 0/1 targets, for
    binary cross-entropy) or ``"mse"`` (regression), or ``None`` for the loss alone. For a
    two-head model (``y`` a tuple with one target per head) give a tuple with one metric per
    head; the result then holds ``head{i}_{metric}`` and, when ``loss`` is a
    :func:`manualgrad.losses.multitask`, each head's own ``head{i}_loss``.

    The model runs in evaluation mode (dropout off; batch norm with the running statistics
    in ``state``, which models with batch norm need). Runs in chunks of ``batch_size`` examples (one compilation for the full chunks and one
    for the remainder) and weights each chunk by its size, so the result is the mean over
    all examples whatever the chunking.
    """
    n = num_examples("manualgrad.train.evaluate", x=x, y=y)
    metrics = _check_metric(metric, y)
    totals: dict[str, float] = {}
    for start in range(0, n, batch_size):
        chunk = slice(start, start + batch_size)
        xb, yb = (jax.tree_util.tree_map(lambda a: jnp.asarray(a[chunk]), t) for t in (x, y))
        for k, v in _evaluate_chunk(model, loss, metrics, params, xb, yb, state).items():
            totals[k] = totals.get(k, 0.0) + float(v)
    return {k: totals[k] / (n if k.endswith("loss") else totals[f"{k}/count"]) for k in totals if not k.endswith("/count")}


@functools.partial(jax.jit, static_argnums=(0, 1, 2))
def _evaluate_chunk(model, loss, metrics, params, x, y, state):
    """Sums over the chunk: losses times its size, and each metric's sum and count."""
    pred = model.apply(params, x) if state is None else model.apply(params, x, state=state)[0]
    m = num_examples("manualgrad.train.evaluate", x=x)
    out = {"loss": loss(pred, y) * m}
    heads = isinstance(y, tuple)
    preds, ys = (pred, y) if heads else ((pred,), (y,))
    parts = getattr(loss, "parts", None)
    for i, (p, t, metric) in enumerate(zip(preds, ys, metrics)):
        prefix = f"head{i}_" if heads else ""
        if heads and parts is not None:
            out[f"{prefix}loss"] = parts[i](p, t) * m
        if metric is not None:
            total, count = METRICS[metric](p, t)
            out[f"{prefix}{metric}"], out[f"{prefix}{metric}/count"] = total, count
    return out


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
    """Train for ``epochs`` scanned epochs, evaluating on the test split after each.

    ``data`` has ``x_train, y_train, x_test, y_test`` (a :class:`manualgrad.data.Dataset`;
    each an array or a pytree of arrays, e.g. one target per head); they are moved to the
    device once. ``metric`` names the test metric (see :func:`evaluate`). Epoch ``e`` (1-based) shuffles with
    ``epoch_key(key, e)``. Each epoch's entry holds ``epoch``, ``train_loss`` (mean over its
    steps), ``grad_norm_max`` (largest raw gradient norm), ``seconds`` (training time, without
    compilation, which is done ahead and reported as ``compile_seconds``), and the test
    metrics of :func:`evaluate` prefixed ``test_``. The caller's ``params`` are copied, not
    consumed. The model trains in training mode (step keys from :func:`step_key`) and is
    evaluated in evaluation mode; its ``state`` starts from ``model.init_state`` unless given,
    and travels with params through the epochs, the checkpoints and the result. ``scan``
    chooses the epoch's form (see :func:`make_epoch`: ``False`` for CNNs on CPU), and
    ``eval_batch_size`` :func:`evaluate`'s chunk (smaller for models with large activations).

    ``mesh`` (:func:`manualgrad.parallel.data_mesh`) trains data-parallel over its devices, in
    one process or several (see :func:`make_epoch`): the data stay on the host and each process
    feeds its rows of every global batch; the test metrics are computed by every process on its
    own copy of the params; process 0 alone writes the checkpoint while the others wait, and
    every process resumes from it (so ``checkpoint_path`` must be on a filesystem they all
    see). ``on_epoch`` and the result get this process's copies of params and state.

    With ``checkpoint_path``, params, optimizer state and the history are saved atomically
    after every epoch; ``resume=True`` continues from that checkpoint, and the result is
    bit-identical (up to the timings) to an uninterrupted run. ``config`` (JSON-serialisable
    settings such as the learning rate) is stored with the checkpoint, and resuming with
    a different ``config`` raises :class:`manualgrad.checkpoint.CheckpointError` naming
    what changed. A NaN or infinite loss or gradient raises :class:`NonFiniteError` naming
    the epoch and step; that epoch is not saved, so the checkpoint keeps the last good epoch. ``on_epoch(entry, params)`` is
    called after each epoch with its new entry and the params it ended with (copy them,
    e.g. with ``jax.device_get``, to keep them: the next epoch reuses their buffers).
    """
    history: list[dict[str, float]] = []
    step_losses: list[list[float]] = []
    # on the device once; with a mesh each process gathers its rows of every batch on the host
    x, y, x_test, y_test = jax.tree_util.tree_map(np.asarray if mesh is not None else jnp.asarray,
                                                  (data.x_train, data.y_train, data.x_test, data.y_test))
    if state is None:
        state = init_state(model, (batch_size,) + tuple(jax.tree_util.tree_leaves(x)[0].shape[1:]))[1]
    # copies: the epochs donate their input buffers
    params, state = jax.tree_util.tree_map(jnp.array, (params, state))
    opt_state = optimizer.init(params)
    if mesh is not None:
        params, opt_state, state = parallel.replicate(mesh, parallel.local((params, opt_state, state)))
    if resume:
        if checkpoint_path is None:
            raise ValueError("manualgrad.train.fit: resume=True needs a checkpoint_path")
        # settings first: a changed model or momentum would otherwise fail as a structure mismatch
        stored = checkpoint.read_meta(checkpoint_path).get("config") or {}
        changed = [f"{k}: {stored.get(k)!r} there, {v!r} now" for k, v in (config or {}).items() if stored.get(k) != v]
        if changed:
            raise checkpoint.CheckpointError(
                f"manualgrad.train.fit: {checkpoint_path} was written with other settings ({'; '.join(changed)})"
            )
        if mesh is not None:
            params, opt_state, state = parallel.local((params, opt_state, state))
        (params, opt_state, state), meta = checkpoint.load(checkpoint_path, (params, opt_state, state))
        if mesh is not None:
            params, opt_state, state = parallel.replicate(mesh, (params, opt_state, state))
        history, step_losses = meta["history"], meta.get("step_losses", [])
    _check_metric(metric, y_test)
    start = time.perf_counter()
    run_epoch = make_epoch(model, loss, optimizer, batch_size, grad, scan=scan, mesh=mesh)
    run_epoch = run_epoch.lower(params, opt_state, x, y, key, state).compile()
    # this process's own copy of a replicated tree, on its default device
    here = (lambda t: jax.device_put(parallel.local(t))) if mesh is not None else (lambda t: t)
    compile_seconds = time.perf_counter() - start
    for epoch in range(len(history) + 1, epochs + 1):
        start = time.perf_counter()
        params, opt_state, metrics, state = run_epoch(params, opt_state, x, y, epoch_key(key, epoch), state)
        metrics = jax.device_get(metrics)
        seconds = time.perf_counter() - start
        check_finite(metrics, epoch)
        test = evaluate(model, here(params), x_test, y_test, loss, metric=metric, state=here(state), batch_size=eval_batch_size)
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
                checkpoint.save(checkpoint_path, here((params, opt_state, state)), meta)
            parallel.barrier(f"manualgrad checkpoint, epoch {epoch}")
        if on_epoch is not None:
            on_epoch(entry, here(params))
    return History(*here((params, opt_state)), history, compile_seconds, step_losses, here(state))
