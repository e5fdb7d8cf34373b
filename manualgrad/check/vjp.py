"""First derivatives: an op's hand-written VJP against its plain reference, three ways.

* ``method="reference"`` (the default): the manual cotangents against ``jax.vjp`` of
  ``op.reference`` for random output cotangents, every element compared; a failed row says
  where (``worst``) and how (``diagnosis``).
* ``method="fast"``: one number per argument and random pair ``(u, v)``, ``v^T J u``, as
  PyTorch's ``gradcheck(fast_mode=True)``: ``<x_bar(v), u>`` through the rule against
  ``<v, J u>`` through ``jax.jvp`` of the reference (forward mode: no residuals stored, so it
  suits large examples). A failure falls back to ``"reference"``, which explains it.
* ``method="fd"``: ``<x_bar, v>`` against central finite differences of the manual forward.

Forward mode (``jax.jvp``) cannot differentiate ``custom_vjp`` functions, so the fast mode runs
the reference inside :func:`manualgrad.core.reference_mode` (an op called by a reference runs
its own reference too).
"""

from __future__ import annotations

import functools
import math
from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np

from manualgrad.check.arguments import diff_argnums, dot, dot64, random_like, require_op
from manualgrad.check.report import Report, Row, compare, raised, row
from manualgrad.check.tolerances import FD_TOLERANCE, TOLERANCES, dtype_of
from manualgrad.core import Op, fail, reference_mode

__all__ = ["check_vjp", "pullback"]

METHODS = ("reference", "fast", "fd")


def _transformed(run: Callable, jit: bool, vmap: bool) -> Callable:
    run = jax.vmap(run) if vmap else run
    return jax.jit(run) if jit else run


def pullback(f: Callable, jit: bool = False, vmap: bool = False) -> Callable:
    """``run(args, ct) -> (f(*args), cotangents)`` through ``jax.vjp``, optionally under
    ``jax.vmap`` (every argument batched on axis 0) and ``jax.jit``."""

    def run(args, ct):
        y, vjp = jax.vjp(f, *args)
        return y, vjp(ct)

    return _transformed(run, jit, vmap)


def _raw_pullback(op: Op, params: dict, jit: bool, vmap: bool) -> Callable:
    """The rule's own cotangents, before :meth:`Op.bwd` checks their shapes and dtypes: what a
    rule that :meth:`Op.bwd` refused (a transposed cotangent) returned."""

    def run(args, ct):
        y, res = op.fwd(*args, **params)
        return y, op._bwd(res.values, ct, **dict(res.static))  # core keeps the raw rule private

    return _transformed(run, jit, vmap)


def _has_cotangent(tree: Any) -> bool:
    return any(jnp.result_type(c) != jax.dtypes.float0 for c in jax.tree_util.tree_leaves(tree))


def _shapes(tree: Any) -> list[tuple]:
    return [np.shape(a) for a in jax.tree_util.tree_leaves(tree)]


def check_vjp(
    op: Op,
    *args: Any,
    cotangents: int = 2,
    seed: int = 0,
    method: str = "reference",
    jit: bool = False,
    vmap: bool = False,
    **params: Any,
) -> Report:
    """Compare ``op``'s manual VJP with ``jax.vjp(op.reference)``, fast, or finite differences.

    Float32 runs use ``jax.default_matmul_precision("highest")`` so that GPUs do not round
    matmuls to TF32.

    Args:
      op: the op to check.
      *args: its array arguments; with ``vmap=True`` each carries a leading batch axis.
      cotangents: how many random output cotangents (``"fast"``: random pairs ``(u, v)``).
      seed: seeds the random cotangents and directions.
      method: ``"reference"``, ``"fast"`` or ``"fd"`` (see the module docstring).
      jit: run both sides under ``jax.jit``.
      vmap: run both sides under ``jax.vmap``.
      **params: the op's static params.

    Returns:
      A :class:`Report`: a ``forward`` row, then one row per argument and cotangent.
    """
    require_op(op, "check_vjp")
    if method not in METHODS:
        fail("manualgrad.check.check_vjp", f"method must be one of {METHODS}, got {method!r}")
    dtype = dtype_of(args)
    rng = np.random.default_rng(seed)
    manual = functools.partial(op, **params)
    flags = (["jit"] if jit else []) + (["vmap"] if vmap else [])
    with jax.default_matmul_precision("highest"):
        out = jax.eval_shape(jax.vmap(manual) if vmap else manual, *args)
        cts = [random_like(rng, out) for _ in range(cotangents)]
        manual_pullback = pullback(manual, jit, vmap)
        if method == "fd":
            return _check_fd(op, manual, args, cts[0], manual_pullback, rng, "+".join(["fd"] + flags), dtype)
        mode = "+".join(["vjp"] + flags)
        if method == "fast":
            report = _check_fast(op, params, args, cts, manual_pullback, rng, (jit, vmap), "+".join(["fast"] + flags), dtype)
            if report.passed:
                return report
            mode += " (fast failed)"
        return _check_full(op, params, args, cts, manual_pullback, (jit, vmap), mode, dtype)


def _check_full(op: Op, params: dict, args: tuple, cts: list, manual_pullback: Callable, transforms: tuple,
                mode: str, dtype: Any) -> Report:
    """Every element of every cotangent against ``jax.vjp`` of the reference."""
    reference_pullback = pullback(functools.partial(op.reference, **params), *transforms)
    tol = TOLERANCES[jnp.dtype(dtype)]
    rows = []
    for k, ct in enumerate(cts):
        y_ref, want = reference_pullback(args, ct)
        try:
            y, got = manual_pullback(args, ct)
        except Exception as e:  # a rule that raises (e.g. a cotangent of the wrong shape) fails
            rows += _raised_rows(op, params, args, ct, want, e, tol, transforms, k)
            break
        tols = _narrow_tolerances(reference_pullback, args, ct, (y_ref, want), tol, dtype)
        if k == 0:
            rows.append(row("forward", y, y_ref, tols[0]))
        doubled = functools.cache(lambda ct=ct: manual_pullback(args, jax.tree_util.tree_map(lambda c: 2 * c, ct))[1])
        for i, (name, g, w) in enumerate(zip(op.arg_names, got, want)):
            if _has_cotangent(g):
                rows.append(row(f"{name}_bar#{k}", g, w, tols[1 + i],
                                rescaled=lambda i=i, doubled=doubled: doubled()[i]))
    return Report(op.name, mode, str(jnp.dtype(dtype)), tuple(rows))


NARROW = (jnp.dtype(jnp.bfloat16), jnp.dtype(jnp.float16))
"""Dtypes whose rounding inside an op (a sum, an exponential) can exceed any fixed tolerance: the
reference itself, run in them, is off by that much."""


def _narrow_tolerances(reference_pullback: Callable, args: tuple, ct: Any, ref: tuple, tol: tuple,
                       dtype: Any) -> list[tuple[float, float]]:
    """``(rtol, atol)`` for the forward row, then one per argument. In a narrow dtype each is
    widened to 4x the reference's own normwise error there, measured against the same
    reference run in float32 on the same (narrow) inputs: the hand-written rule may round as
    much as ``jax.vjp`` of the reference does, not more. Other dtypes keep ``tol``."""
    n = 1 + len(ref[1])
    if jnp.dtype(dtype) not in NARROW:
        return [tol] * n
    wide = jax.tree_util.tree_map(lambda a: jnp.asarray(a, jnp.float32) if jnp.dtype(a.dtype) in NARROW else a,
                                  (args, ct))
    y32, cts32 = reference_pullback(*wide)
    out = []
    for narrow, exact in zip((ref[0], *ref[1]), (y32, *cts32)):
        errors = [compare(a, b) for a, b in zip(jax.tree_util.tree_leaves(narrow), jax.tree_util.tree_leaves(exact))
                  if jnp.issubdtype(jnp.result_type(b), jnp.floating)]  # (max_abs, scale) per leaf
        scale = max((s for _, s in errors), default=0.0)
        own = max((e for e, _ in errors), default=0.0) / scale if scale else 0.0
        out.append((max(tol[0], 4 * own), tol[1]))
    return out


def _raised_rows(op: Op, params: dict, args: tuple, ct: Any, want: tuple, e: Exception, tol: tuple,
                 transforms: tuple, k: int) -> list[Row]:
    """A rule that raised: one row per argument whose raw cotangent has another shape than the
    reference's (diagnosed, e.g. as a transpose), else one row naming the exception."""
    try:
        _, raw = _raw_pullback(op, params, *transforms)(args, ct)
    except Exception:
        raw = ()
    rows = [row(f"{name}_bar#{k}", g, w, tol) for name, g, w in zip(op.arg_names, raw, want)
            if _has_cotangent(g) and _shapes(g) != _shapes(w)]
    return rows or [raised("manual rule", e, tol)]


def _check_fast(op: Op, params: dict, args: tuple, vs: list, manual_pullback: Callable, rng: np.random.Generator,
                transforms: tuple, mode: str, dtype: Any) -> Report:
    """``v^T J u`` per argument: ``<x_bar(v), u>`` from the rule, ``<v, J u>`` from ``jax.jvp``
    of the reference. A row's error is ``|difference| / |v|``, its scale ``max |J u|``: the
    normwise tolerance of the full comparison, carried to one number."""
    tol = TOLERANCES[jnp.dtype(dtype)]
    reference = functools.partial(op.reference, **params)
    rows = []
    for k, v in enumerate(vs):
        try:
            y, got = manual_pullback(args, v)
        except Exception as e:
            return Report(op.name, mode, str(jnp.dtype(dtype)), (raised("manual rule", e, tol),))
        for i in diff_argnums(op):
            u = random_like(rng, args[i])
            with reference_mode():
                y_ref, ju = _directional(reference, i, *transforms)(args, u)
            if not rows:
                rows.append(row("forward", y, y_ref, tol))
            error = compare(np.float64(dot64(got[i], u)), np.float64(dot64(v, ju)))[0] / math.sqrt(dot64(v, v))
            scale = max(compare(a, a)[1] for a in jax.tree_util.tree_leaves(ju))
            rows.append(Row(f"{op.arg_names[i]}_bar.vJu#{k}", error, scale, *tol))
    return Report(op.name, mode, str(jnp.dtype(dtype)), tuple(rows))


def _directional(f: Callable, i: int, jit: bool, vmap: bool) -> Callable:
    """``run(args, u) -> (f(*args), J_i u)``: the derivative of ``f`` along ``u`` in argument ``i``."""

    def run(args, u):
        return jax.jvp(lambda a: f(*args[:i], a, *args[i + 1:]), (args[i],), (u,))

    return _transformed(run, jit, vmap)


def _check_fd(op: Op, manual: Callable, args: tuple, ct: Any, manual_pullback: Callable, rng: np.random.Generator,
              mode: str, dtype: Any) -> Report:
    """Directional check: ``<ct, (f(x + h v) - f(x - h v)) / 2h>`` against ``<x_bar, v>``."""
    if not op.smooth:
        fail("manualgrad.check.check_vjp", f"{op.name} is not smooth (its derivative jumps at 0), so finite "
             "differences are unreliable near its kinks; use method='reference'")
    if jnp.dtype(dtype) != jnp.float64:
        fail("manualgrad.check.check_vjp", f"finite differences need float64 arguments, got {jnp.dtype(dtype)}")
    try:
        _, cts = manual_pullback(args, ct)
    except Exception as e:
        return Report(op.name, mode, "float64", (raised("manual rule", e, FD_TOLERANCE),))

    @functools.partial(jax.jit, static_argnums=1)
    def directional(args, i, v, h):  # <ct, (f(x + h v) - f(x - h v)) / 2h>
        def at(step):
            moved = list(args)
            moved[i] = jax.tree_util.tree_map(lambda a, d: a + step * d, args[i], v)
            return manual(*moved)

        diff = jax.tree_util.tree_map(lambda p, m: (p - m) / (2 * h), at(h), at(-h))
        return dot(ct, diff)

    rows = []
    for i in diff_argnums(op):
        v = random_like(rng, args[i])
        h = 1e-5 * max(1.0, max(float(jnp.max(jnp.abs(a))) for a in jax.tree_util.tree_leaves(args[i])))
        rows.append(row(f"{op.arg_names[i]}_bar.v", dot(cts[i], v), directional(args, i, v, h), FD_TOLERANCE))
    return Report(op.name, mode, "float64", tuple(rows))
