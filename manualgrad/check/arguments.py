"""What the checks feed an op: which arguments are differentiated, random directions, inner products."""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from manualgrad.core import Op

__all__ = ["require_op", "diff_argnums", "random_like", "dot", "dot64"]


def require_op(op: Any, where: str) -> None:
    """Refuse anything but an op, saying what to use instead."""
    if not isinstance(op, Op):
        raise TypeError(
            f"manualgrad.check.{where}: takes a manualgrad op (made with defop), got {op!r}. To check a "
            "model, use check.check_model(model, loss, params, x, y); for a rule that is not an op, "
            "check.check_rule(reference, fwd, bwd, *args); for any function of ops, check.check_jacobian(fn, *args)."
        )


def diff_argnums(op: Op) -> tuple[int, ...]:
    """The positions of ``op``'s differentiated (non-constant) array arguments."""
    return tuple(i for i, n in enumerate(op.arg_names) if n not in op.constant)


def random_like(rng: np.random.Generator, shapes: Any) -> Any:
    """Standard normal arrays with the shapes and dtypes of ``shapes`` (a pytree)."""
    return jax.tree_util.tree_map(lambda s: jnp.asarray(rng.normal(size=s.shape), s.dtype), shapes)


def dot(a: Any, b: Any) -> jax.Array:
    """Inner product of two pytrees with the same structure (traceable)."""
    return sum(jnp.vdot(x, y) for x, y in zip(jax.tree_util.tree_leaves(a), jax.tree_util.tree_leaves(b)))


def dot64(a: Any, b: Any) -> float:
    """Inner product of two pytrees with the same structure, summed on the host in float64."""
    return float(sum(np.vdot(np.asarray(x, np.float64), np.asarray(y, np.float64))
                     for x, y in zip(jax.tree_util.tree_leaves(a), jax.tree_util.tree_leaves(b))))
