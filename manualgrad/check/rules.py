"""Every check on a rule: a registered op over its examples (:func:`check_op`), a rule that is
not registered (:func:`check_rule`), and the trace of a backward with autodiff switched off."""

from __future__ import annotations

import dataclasses
import functools
import inspect
from typing import Any, Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from manualgrad.check.arguments import require_op
from manualgrad.check.guard import AutodiffError, no_autodiff
from manualgrad.check.jacobians import check_hvp
from manualgrad.check.report import Report, Row, error_row, raised
from manualgrad.check.tolerances import TOLERANCES, cast, dtype_of
from manualgrad.check.vjp import check_vjp
from manualgrad.core import REGISTRY, Example, Op, fail

__all__ = ["check_no_autodiff", "stack_examples", "check_op", "check_rule"]


def check_no_autodiff(op: Op, *args: Any, **params: Any) -> Report:
    """Trace ``op``'s hand-written backward on ``args`` with JAX's autodiff switched off.

    Returns:
      A :class:`Report` with one ``bwd`` row, failed when the backward calls JAX autodiff or
      raises (a cotangent of the wrong shape: :func:`check_vjp`'s rows say which and why).
    """
    require_op(op, "check_no_autodiff")
    dtype = dtype_of(args)
    tol = TOLERANCES[jnp.dtype(dtype)]
    y, res = op.fwd(*args, **params)
    g = jax.tree_util.tree_map(jnp.ones_like, y)
    try:
        with no_autodiff(f"{op.name}.bwd"):
            jax.make_jaxpr(op.bwd)(res, g)
        result = Row("bwd", 0.0, 0.0, *tol)
    except AutodiffError as e:
        result = error_row("bwd", str(e), tol)
    except Exception as e:  # the rule itself is wrong; the report says so rather than stopping the checks
        result = raised("bwd", e, tol)
    return Report(op.name, "no-autodiff", str(jnp.dtype(dtype)), (result,))


def stack_examples(examples: Sequence[Example]) -> Example:
    """Stack same-shaped examples along a new leading axis, for ``vmap`` checks."""
    args = jax.tree_util.tree_map(lambda *a: np.stack(a), *[e.args for e in examples])
    return Example(args, examples[0].params)


def check_op(
    op: Op,
    examples: Callable[[np.random.Generator], Sequence[Example]] | None = None,
    dtypes: Sequence[Any] = (jnp.float64, jnp.float32),
    seed: int = 0,
    fast: bool = False,
) -> list[Report]:
    """Run every check on every example of ``op`` (its registered ones by default).

    Per example and dtype: forward and VJP against the reference under ``jit`` and under
    ``jit`` + ``vmap`` (and once per dtype without ``jit``), a trace of the backward with
    autodiff switched off; in float64 also finite differences (smooth ops) and Hessian-vector
    products. Use this on your own ops: ``all(r.passed for r in check_op(my_op, my_examples))``.

    Args:
      op: the op to check.
      examples: ``examples(rng) -> [Example, ...]``; default: the registered ones.
      dtypes: the floating dtypes to check in.
      seed: seeds the examples and the random cotangents.
      fast: compare ``v^T J u`` instead of every element (``check_vjp(method="fast")``), for
        large examples; a failure still gets the full comparison and its diagnosis.

    Returns:
      One :class:`Report` per check.
    """
    if examples is None:
        if op.name not in REGISTRY:
            fail("manualgrad.check.check_op", f"{op.name} is not registered; pass examples=")
        examples = REGISTRY[op.name].examples
    with jax.enable_x64(True):
        return _check_examples(op, examples, dtypes, seed, "fast" if fast else "reference")


def _check_examples(op: Op, examples: Callable, dtypes: Sequence[Any], seed: int, method: str) -> list[Report]:
    reports = []
    batches = [examples(np.random.default_rng(seed + k)) for k in range(3)]

    def add(report: Report, ex: Example) -> None:
        reports.append(dataclasses.replace(report, example=ex.describe()))

    for dtype in dtypes:
        for n, ex in enumerate(batches[0]):
            args = cast(ex.args, dtype)
            if n == 0:  # eager dispatch compiles every primitive: once per op and dtype is enough
                add(check_vjp(op, *args, seed=seed + n, method=method, **ex.params), ex)
            add(check_no_autodiff(op, *args, **ex.params), ex)
            add(check_vjp(op, *args, seed=seed + n, method=method, jit=True, **ex.params), ex)
            stacked = stack_examples([b[n] for b in batches])
            add(check_vjp(op, *cast(stacked.args, dtype), seed=seed + n, method=method, jit=True, vmap=True,
                          **ex.params), stacked)
            if jnp.dtype(dtype) == jnp.float64:
                if op.smooth:
                    add(check_vjp(op, *args, method="fd", seed=seed + n, **ex.params), ex)
                add(check_hvp(op, *args, seed=seed + n, **ex.params), ex)
    return reports


def check_rule(
    reference: Callable,
    fwd: Callable,
    bwd: Callable,
    *args: Any,
    constant: Sequence[str] = (),
    static: dict[str, Any] | None = None,
    smooth: bool = True,
    dtypes: Sequence[Any] = (jnp.float64, jnp.float32),
    seed: int = 0,
    fast: bool = False,
) -> list[Report]:
    """Every check :func:`check_op` runs, for a rule that is not registered (a notebook's, a
    homework's): no ``defop``, no examples generator, the same reports.

    Args:
      reference: the plain ``jax.numpy`` forward, ``reference(*arrays, **static)``.
      fwd: ``fwd(*arrays, **static) -> (y, res)``.
      bwd: ``bwd(res, g, **static) -> tuple``, one cotangent per array argument (``None`` for
        constants).
      *args: the example arrays, one per array argument of ``reference``.
      constant: names of arguments that are not differentiated (targets, labels); the
        reference's gradient is stopped there for you.
      static: hyperparameters by name (an axis, a slope), passed by keyword.
      smooth: False for piecewise-linear rules: no finite differences.
      dtypes: the floating dtypes to check in.
      seed: seeds the random cotangents.
      fast: see :func:`check_op`.

    Returns:
      One :class:`Report` per check; a failed row says where (``worst``) and how (``diagnosis``).
    """
    where = "manualgrad.check.check_rule"
    static = dict(static or {})
    names = list(inspect.signature(reference).parameters)
    unknown = [n for n in (*static, *constant) if n not in names]
    if unknown:
        fail(where, f"constant/static names {unknown} are not parameters of {reference.__name__}{tuple(names)}")
    if set(static) & set(constant):
        fail(where, f"{sorted(set(static) & set(constant))} cannot be both constant and static")
    array_names = [n for n in names if n not in static]
    if len(args) != len(array_names):
        shapes = ", ".join(str(np.shape(a)) for a in args)
        fail(where, f"{reference.__name__} takes {len(array_names)} array arguments {tuple(array_names)} (pass "
             f"hyperparameters as static={{name: value}}), got {len(args)} with shapes {shapes or 'none'}")

    @functools.wraps(reference)
    def plain(*arrays: Any, **hyper: Any) -> Any:  # constants are not differentiated, in the reference too
        return reference(*(jax.lax.stop_gradient(a) if n in constant else a for n, a in zip(array_names, arrays)), **hyper)

    op = Op(plain, name=f"{reference.__module__}.{reference.__qualname__}", static=tuple(static),
            constant=tuple(constant), smooth=smooth).defvjp(fwd, bwd)
    example = Example(tuple(args), static)
    return check_op(op, lambda rng: [example], dtypes=dtypes, seed=seed, fast=fast)
