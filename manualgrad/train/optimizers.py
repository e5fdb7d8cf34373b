"""Optimisers: the gradient clipped to a global norm, then SGD (with momentum and L2) or AdamW.

Each is an ``optax.GradientTransformation`` built by ``optax.chain``; ``learning_rate`` may be
a number or an optax schedule (a function of the step count).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import optax

from manualgrad.errors import fail

__all__ = ["sgd_with_clipping", "adamw_with_clipping"]


def _check_common(where: str, learning_rate: optax.ScalarOrSchedule, max_norm: float, weight_decay: float) -> None:
    """The settings both optimisers share: a positive rate (or a schedule), norm and a non-negative decay."""
    if not callable(learning_rate) and not learning_rate > 0:
        fail(where, f"learning_rate must be > 0, got {learning_rate!r}")
    if not max_norm > 0:
        fail(where, f"max_norm must be > 0, got {max_norm!r}")
    if not weight_decay >= 0:
        fail(where, f"weight_decay must be >= 0, got {weight_decay!r}")


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
    ``clip_grad_norm_`` followed by ``torch.optim.SGD(lr, momentum)``.

    ``weight_decay`` (L2) adds ``weight_decay * params`` to the clipped gradient before the
    momentum step: ``optax.add_decayed_weights`` between the two, which is what
    ``torch.optim.SGD(..., weight_decay=...)`` does after ``clip_grad_norm_``.

    Args:
      learning_rate: a positive number, or an optax schedule such as
        ``optax.cosine_decay_schedule(0.1, total_steps)``.
      max_norm: the largest global L2 norm a gradient keeps (> 0).
      momentum: in [0, 1); 0 keeps no momentum buffer.
      weight_decay: the L2 coefficient (>= 0).

    Returns:
      The optax transformation.
    """
    where = "manualgrad.train.sgd_with_clipping"
    _check_common(where, learning_rate, max_norm, weight_decay)
    if not 0 <= momentum < 1:
        fail(where, f"momentum must be in [0, 1), got {momentum!r}")
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

    Args:
      learning_rate: a positive number or an optax schedule.
      max_norm: the largest global L2 norm a gradient keeps (> 0).
      weight_decay: the decoupled decay of the matrices (>= 0).
      b1: Adam's first-moment decay, in [0, 1).
      b2: Adam's second-moment decay, in [0, 1).

    Returns:
      The optax transformation.
    """
    where = "manualgrad.train.adamw_with_clipping"
    _check_common(where, learning_rate, max_norm, weight_decay)
    if not (0 <= b1 < 1 and 0 <= b2 < 1):
        fail(where, f"b1 and b2 must be in [0, 1), got b1={b1!r}, b2={b2!r}")

    def matrices(params):
        return jax.tree_util.tree_map(lambda a: jnp.ndim(a) >= 2, params)

    return optax.chain(
        optax.clip_by_global_norm(max_norm),
        optax.adamw(learning_rate, b1, b2, weight_decay=weight_decay, mask=matrices),
    )
