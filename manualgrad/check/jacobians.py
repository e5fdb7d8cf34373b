"""Beyond one VJP: whole Jacobians built from the manual VJPs, and second derivatives."""

from __future__ import annotations

import functools
from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np

from manualgrad.check.arguments import diff_argnums, dot, random_like, require_op
from manualgrad.check.report import Report, raised, row
from manualgrad.check.tolerances import TOLERANCES, dtype_of
from manualgrad.core import Op, reference_mode

__all__ = ["check_hvp", "jacobian", "check_jacobian"]


def check_hvp(op: Op, *args: Any, seed: int = 0, **params: Any) -> Report:
    """Second order: Hessian-vector products of ``<u, op(args)>`` through the manual rules
    (``grad`` of ``<grad, v>``, reverse over reverse) against the reference's.

    Args:
      op: the op to check.
      *args: its array arguments.
      seed: seeds the random directions ``u`` and ``v``.
      **params: the op's static params.

    Returns:
      A :class:`Report` with one ``H<arg>.v`` row per differentiated argument.
    """
    require_op(op, "check_hvp")
    rng = np.random.default_rng(seed)
    argnums = diff_argnums(op)
    dtype = dtype_of(args)
    u = random_like(rng, jax.eval_shape(functools.partial(op, **params), *args))
    v = tuple(random_like(rng, args[i]) for i in argnums)

    def hvp(f: Callable) -> Any:
        def directional(*a):
            return dot(jax.grad(lambda *b: dot(u, f(*b)), argnums)(*a), v)

        return jax.jit(jax.grad(directional, argnums))(*args)

    tol = TOLERANCES[jnp.dtype(dtype)]
    with jax.default_matmul_precision("highest"):
        want = hvp(functools.partial(op.reference, **params))
        try:
            got = hvp(functools.partial(op, **params))
        except Exception as e:
            return Report(op.name, "hvp", str(jnp.dtype(dtype)), (raised("manual rule", e, tol),))
    rows = tuple(row(f"H{op.arg_names[i]}.v", g, w, tol) for i, g, w in zip(argnums, got, want))
    return Report(op.name, "hvp", str(jnp.dtype(dtype)), rows)


def jacobian(fn: Callable, argnums: int = 0) -> Callable:
    """The Jacobian of ``fn`` with respect to argument ``argnums``, from the manual VJPs.

    Reverse mode: one VJP per entry of the output, with the standard basis as cotangents
    (vectorised with ``vmap``); row ``k`` is the gradient of output entry ``k``.

    Args:
      fn: a function of ops returning one array.
      argnums: the argument to differentiate.

    Returns:
      ``jac(*args)``, of shape ``out.shape + arg.shape`` (the layout of ``jax.jacrev``).
    """

    def jac(*args: Any) -> jax.Array:
        x = args[argnums]

        def of_x(x):
            return fn(*args[:argnums], x, *args[argnums + 1 :])

        y, pullback = jax.vjp(of_x, x)
        basis = jnp.eye(y.size, dtype=y.dtype).reshape((y.size,) + y.shape)
        (rows,) = jax.vmap(pullback)(basis)
        return rows.reshape(y.shape + jnp.shape(x))

    return jac


def check_jacobian(fn: Callable, *args: Any, argnums: int = 0, name: str | None = None) -> Report:
    """Compare :func:`jacobian` (manual VJPs) with ``jax.jacrev`` of ``fn``'s references.

    Args:
      fn: a function of ops returning one array.
      *args: its arguments.
      argnums: the argument to differentiate.
      name: the report's name (default: ``fn.__name__``).

    Returns:
      A :class:`Report` with one ``jacobian`` row.
    """
    dtype = dtype_of(args)
    tol = TOLERANCES[jnp.dtype(dtype)]
    with jax.default_matmul_precision("highest"):
        with reference_mode():
            want = jax.jacrev(fn, argnums)(*args)
        try:
            result = row("jacobian", jacobian(fn, argnums)(*args), want, tol)
        except Exception as e:
            result = raised("jacobian", e, tol)
    return Report(name or getattr(fn, "__name__", "fn"), "jacobian", str(jnp.dtype(dtype)), (result,))
