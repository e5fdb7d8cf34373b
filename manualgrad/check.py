"""Verification: every hand-written VJP against ``jax.vjp`` of the op's plain reference.

* :func:`check_vjp` compares the manual VJP with ``jax.vjp(op.reference)`` for random
  cotangents (or, with ``method="fd"``, with central finite differences) and returns a
  :class:`Report` with one row per output/argument: max absolute and relative error
  and pass/fail against :data:`TOLERANCES`; optionally under ``jit`` or ``vmap``.
* :func:`check_hvp` compares second derivatives (Hessian-vector products, reverse over
  reverse) through the manual rules with the reference's.
* :func:`jacobian` builds a full Jacobian from the manual VJPs in reverse mode (one VJP
  per output entry, vectorised with ``vmap``); :func:`check_jacobian` compares it with
  ``jax.jacrev`` of the reference.
* :func:`check_op` runs all of the above over an op's registered examples.

Errors are measured normwise, per argument: ``max_abs = max |manual - reference|`` and
``max_rel = max_abs / max |reference|``; a row passes when
``max_abs <= atol + rtol * max |reference|``.

Forward mode (``jax.jvp``, ``jax.jacfwd``) cannot differentiate ``custom_vjp`` functions;
wrap such code in :func:`manualgrad.core.reference_mode` to differentiate the references.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any, Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from manualgrad.core import REGISTRY, Example, Op, reference_mode

__all__ = [
    "TOLERANCES",
    "Row",
    "Report",
    "cast",
    "check_vjp",
    "check_hvp",
    "jacobian",
    "check_jacobian",
    "check_op",
    "stack_examples",
]

#: (rtol, atol) per floating dtype; finite differences get their own, looser, entry.
TOLERANCES: dict[Any, tuple[float, float]] = {
    jnp.dtype(jnp.float64): (1e-10, 1e-13),
    jnp.dtype(jnp.float32): (1e-5, 1e-7),
    jnp.dtype(jnp.bfloat16): (2e-2, 1e-4),
    jnp.dtype(jnp.float16): (2e-3, 1e-5),
}
FD_TOLERANCE = (1e-6, 1e-9)


@dataclasses.dataclass(frozen=True)
class Row:
    """One compared quantity: ``scale`` is ``max |reference|``."""

    what: str
    max_abs: float
    scale: float
    rtol: float
    atol: float

    @property
    def max_rel(self) -> float:
        if self.scale:
            return self.max_abs / self.scale
        return 0.0 if self.max_abs == 0 else float("inf")

    @property
    def passed(self) -> bool:
        return self.max_abs <= self.atol + self.rtol * self.scale


@dataclasses.dataclass(frozen=True)
class Report:
    """The outcome of one check: one :class:`Row` per compared quantity."""

    op: str
    mode: str
    dtype: str
    rows: tuple[Row, ...]

    @property
    def passed(self) -> bool:
        return all(r.passed for r in self.rows)

    @property
    def max_abs(self) -> float:
        return max((r.max_abs for r in self.rows), default=0.0)

    @property
    def max_rel(self) -> float:
        return max((r.max_rel for r in self.rows), default=0.0)

    def __str__(self) -> str:
        head = f"{self.op} [{self.mode}, {self.dtype}]: {'ok' if self.passed else 'FAILED'}"
        rows = [
            f"  {r.what:<14} max_abs={r.max_abs:.3e} max_rel={r.max_rel:.3e} "
            f"(rtol={r.rtol:g}, atol={r.atol:g}) {'ok' if r.passed else 'FAILED'}"
            for r in self.rows
        ]
        return "\n".join([head] + rows)

    def assert_ok(self) -> "Report":
        if not self.passed:
            raise AssertionError(str(self))
        return self


def _row(what: str, got: Any, want: Any, tol: tuple[float, float]) -> Row:
    def leaves(tree):  # integer inputs have float0 cotangents: nothing to compare
        return [a for a in jax.tree_util.tree_leaves(tree) if jnp.result_type(a) != jax.dtypes.float0]

    got_leaves, want_leaves = leaves(got), leaves(want)
    if len(got_leaves) != len(want_leaves):
        raise AssertionError(f"{what}: structure differs: {jax.tree_util.tree_structure(got)} vs {jax.tree_util.tree_structure(want)}")
    max_abs, scale = 0.0, 0.0
    for g, w in zip(got_leaves, want_leaves):
        g, w = np.asarray(g, np.float64), np.asarray(w, np.float64)
        if g.shape != w.shape:
            raise AssertionError(f"{what}: shape {g.shape} != reference shape {w.shape}")
        if g.size:
            diff = np.abs(g - w)
            # Matching non-finite values (e.g. NaN for an invalid class id) count as equal.
            same = (g == w) | (np.isnan(g) & np.isnan(w))
            max_abs = max(max_abs, float(np.max(np.where(same, 0.0, diff))))
            finite = np.abs(w[np.isfinite(w)])
            scale = max(scale, float(np.max(finite)) if finite.size else 0.0)
    return Row(what, float(max_abs) if np.isfinite(max_abs) else float("inf"), scale, *tol)


def _dtype_of(args: Any) -> jnp.dtype:
    floats = [jnp.result_type(a) for a in jax.tree_util.tree_leaves(args) if jnp.issubdtype(jnp.result_type(a), jnp.floating)]
    return floats[0] if floats else jnp.dtype(jnp.float32)


def cast(args: Any, dtype: Any) -> Any:
    """Floating leaves of ``args`` as JAX arrays of ``dtype``; integer leaves unchanged."""
    dtype = jnp.dtype(dtype)
    if dtype == jnp.float64 and not jax.config.jax_enable_x64:
        raise ValueError("manualgrad.check: float64 needs jax.config.update('jax_enable_x64', True)")

    def one(a):
        if jnp.issubdtype(jnp.result_type(a), jnp.floating):
            return jnp.asarray(a, dtype)
        return jnp.asarray(a)

    return jax.tree_util.tree_map(one, args)


def _random_like(rng: np.random.Generator, shapes: Any) -> Any:
    return jax.tree_util.tree_map(lambda s: jnp.asarray(rng.normal(size=s.shape), s.dtype), shapes)


def _dot(a: Any, b: Any) -> jax.Array:
    """Inner product of two pytrees with the same structure."""
    return sum(jnp.vdot(x, y) for x, y in zip(jax.tree_util.tree_leaves(a), jax.tree_util.tree_leaves(b)))


def _diff_argnums(op: Op) -> tuple[int, ...]:
    return tuple(i for i, n in enumerate(op.arg_names) if n not in op.constant)


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
    """Compare ``op``'s manual VJP with ``jax.vjp(op.reference)`` (or finite differences).

    ``args`` are the op's array arguments, ``params`` its static params. With
    ``vmap=True`` every array argument carries a leading batch axis and both sides run
    under ``jax.vmap``; with ``jit=True`` both run under ``jax.jit``. Float32 runs use
    ``jax.default_matmul_precision("highest")`` so that GPUs do not round matmuls to TF32.
    """
    if method not in ("reference", "fd"):
        raise ValueError(f"manualgrad.check.check_vjp: method must be 'reference' or 'fd', got {method!r}")
    dtype = _dtype_of(args)
    rng = np.random.default_rng(seed)
    manual = functools.partial(op, **params)
    mode = "+".join(["vjp" if method == "reference" else "fd"] + (["jit"] if jit else []) + (["vmap"] if vmap else []))

    def pullback(f: Callable) -> Callable:
        def run(args, ct):
            y, vjp = jax.vjp(f, *args)
            return y, vjp(ct)

        run = jax.vmap(run) if vmap else run
        return jax.jit(run) if jit else run

    with jax.default_matmul_precision("highest"):
        out = jax.eval_shape(jax.vmap(manual) if vmap else manual, *args)
        cts = [_random_like(rng, out) for _ in range(cotangents)]
        if method == "fd":
            return _check_fd(op, manual, args, cts[0], pullback(manual), rng, mode, dtype)
        manual_pullback = pullback(manual)
        reference_pullback = pullback(functools.partial(op.reference, **params))
        tol = TOLERANCES[jnp.dtype(dtype)]
        rows = []
        for k, ct in enumerate(cts):
            y, got = manual_pullback(args, ct)
            y_ref, want = reference_pullback(args, ct)
            if k == 0:
                rows.append(_row("forward", y, y_ref, tol))
            for name, g, w in zip(op.arg_names, got, want):
                if any(c.dtype != jax.dtypes.float0 for c in jax.tree_util.tree_leaves(g)):
                    rows.append(_row(f"{name}_bar#{k}", g, w, tol))
    return Report(op.name, mode, str(jnp.dtype(dtype)), tuple(rows))


def _check_fd(op: Op, manual: Callable, args: tuple, ct: Any, pullback: Callable, rng, mode: str, dtype) -> Report:
    """Directional check: ``<ct, (f(x + h v) - f(x - h v)) / 2h>`` against ``<x_bar, v>``."""
    if not op.smooth:
        raise ValueError(
            f"manualgrad.check.check_vjp: {op.name} is not smooth (its derivative jumps at 0), so "
            "finite differences are unreliable near its kinks; use method='reference'"
        )
    if jnp.dtype(dtype) != jnp.float64:
        raise ValueError("manualgrad.check.check_vjp: finite differences need float64 arguments")
    _, cts = pullback(args, ct)

    @functools.partial(jax.jit, static_argnums=1)
    def directional(args, i, v, h):  # <ct, (f(x + h v) - f(x - h v)) / 2h>
        def at(step):
            moved = list(args)
            moved[i] = jax.tree_util.tree_map(lambda a, d: a + step * d, args[i], v)
            return manual(*moved)

        diff = jax.tree_util.tree_map(lambda p, m: (p - m) / (2 * h), at(h), at(-h))
        return _dot(ct, diff)

    rows = []
    for i in _diff_argnums(op):
        v = _random_like(rng, args[i])
        h = 1e-5 * max(1.0, max(float(jnp.max(jnp.abs(a))) for a in jax.tree_util.tree_leaves(args[i])))
        rows.append(_row(f"{op.arg_names[i]}_bar.v", _dot(cts[i], v), directional(args, i, v, h), FD_TOLERANCE))
    return Report(op.name, mode, "float64", tuple(rows))


def check_hvp(op: Op, *args: Any, seed: int = 0, **params: Any) -> Report:
    """Second order: Hessian-vector products of ``<u, op(args)>`` through the manual rules
    (``grad`` of ``<grad, v>``, reverse over reverse) against the reference's."""
    rng = np.random.default_rng(seed)
    argnums = _diff_argnums(op)
    dtype = _dtype_of(args)
    u = _random_like(rng, jax.eval_shape(functools.partial(op, **params), *args))
    v = tuple(_random_like(rng, args[i]) for i in argnums)

    def hvp(f: Callable) -> Any:
        def directional(*a):
            return _dot(jax.grad(lambda *b: _dot(u, f(*b)), argnums)(*a), v)

        return jax.jit(jax.grad(directional, argnums))(*args)

    with jax.default_matmul_precision("highest"):
        got = hvp(functools.partial(op, **params))
        want = hvp(functools.partial(op.reference, **params))
    tol = TOLERANCES[jnp.dtype(dtype)]
    rows = tuple(_row(f"H{op.arg_names[i]}.v", g, w, tol) for i, g, w in zip(argnums, got, want))
    return Report(op.name, "hvp", str(jnp.dtype(dtype)), rows)


def jacobian(fn: Callable, argnums: int = 0) -> Callable:
    """The Jacobian of ``fn`` with respect to argument ``argnums``, from the manual VJPs.

    Reverse mode: one VJP per entry of the output, with the standard basis as cotangents
    (vectorised with ``vmap``); row ``k`` is the gradient of output entry ``k``. The result
    has shape ``out.shape + arg.shape``, the layout of ``jax.jacrev``.
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
    """Compare :func:`jacobian` (manual VJPs) with ``jax.jacrev`` of ``fn``'s references."""
    dtype = _dtype_of(args)
    with jax.default_matmul_precision("highest"):
        got = jacobian(fn, argnums)(*args)
        with reference_mode():
            want = jax.jacrev(fn, argnums)(*args)
    row = _row("jacobian", got, want, TOLERANCES[jnp.dtype(dtype)])
    return Report(name or getattr(fn, "__name__", "fn"), "jacobian", str(jnp.dtype(dtype)), (row,))


def stack_examples(examples: Sequence[Example]) -> Example:
    """Stack same-shaped examples along a new leading axis, for ``vmap`` checks."""
    args = jax.tree_util.tree_map(lambda *a: np.stack(a), *[e.args for e in examples])
    return Example(args, examples[0].params)


def check_op(
    op: Op,
    examples: Callable[[np.random.Generator], Sequence[Example]] | None = None,
    dtypes: Sequence[Any] = (jnp.float64, jnp.float32),
    seed: int = 0,
) -> list[Report]:
    """Run every check on every example of ``op`` (its registered ones by default).

    Per example and dtype: forward and VJP against the reference under ``jit`` and under
    ``jit`` + ``vmap`` (and once per dtype without ``jit``); in float64 also finite differences (smooth ops) and Hessian-vector
    products. Use this on your own ops: ``all(r.passed for r in check_op(my_op, my_examples))``.
    """
    if examples is None:
        if op.name not in REGISTRY:
            raise ValueError(f"manualgrad.check.check_op: {op.name} is not registered; pass examples=")
        examples = REGISTRY[op.name].examples
    with jax.enable_x64(True):
        return _check_examples(op, examples, dtypes, seed)


def _check_examples(op: Op, examples: Callable, dtypes: Sequence[Any], seed: int) -> list[Report]:
    reports = []
    batches = [examples(np.random.default_rng(seed + k)) for k in range(3)]
    for dtype in dtypes:
        for n, ex in enumerate(batches[0]):
            args = cast(ex.args, dtype)
            if n == 0:  # eager dispatch compiles every primitive: once per op and dtype is enough
                reports.append(check_vjp(op, *args, seed=seed + n, **ex.params))
            reports.append(check_vjp(op, *args, seed=seed + n, jit=True, **ex.params))
            stacked = stack_examples([b[n] for b in batches])
            reports.append(check_vjp(op, *cast(stacked.args, dtype), seed=seed + n, jit=True, vmap=True, **ex.params))
            if jnp.dtype(dtype) == jnp.float64:
                if op.smooth:
                    reports.append(check_vjp(op, *args, method="fd", seed=seed + n, **ex.params))
                reports.append(check_hvp(op, *args, seed=seed + n, **ex.params))
    return reports


def main() -> int:
    """``python -m manualgrad.check``: every registered op, every check; the largest errors."""
    import manualgrad.losses  # noqa: F401  (registers the losses)
    import manualgrad.ops  # noqa: F401

    worst: dict[tuple[str, str], tuple[float, float, str]] = {}
    failed = []
    for name in sorted(REGISTRY):
        reports = check_op(REGISTRY[name].op)
        failed += [r for r in reports if not r.passed]
        for r in reports:
            key = (r.dtype, r.mode)
            if r.max_rel >= worst.get(key, (0.0, 0.0, ""))[1]:
                worst[key] = (r.max_abs, r.max_rel, name)
        print(f"{name:<60} {len(reports):3d} checks  {'ok' if all(r.passed for r in reports) else 'FAILED'}")
    print(f"\non {jax.devices()[0].platform}: largest errors per dtype and mode")
    for (dtype, mode), (abs_err, rel_err, name) in sorted(worst.items()):
        print(f"  {dtype:<8} {mode:<14} max_abs={abs_err:.2e}  max_rel={rel_err:.2e}  ({name})")
    for r in failed:
        print(r)
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
