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
* :func:`check_no_autodiff` traces an op's backward with JAX's autodiff switched off
  (:func:`no_autodiff`): a "hand-written" rule that calls ``jax.vjp``, ``jax.grad``,
  ``jax.linear_transpose`` or any alias of them fails.
* :func:`check_op` runs all of the above over an op's registered examples.
* :func:`check_model` compares a whole model's gradients from the three sources (manual,
  explicit, reference), parameter by parameter and layer by layer.

Errors are measured normwise, per argument: ``max_abs = max |manual - reference|`` and
``max_rel = max_abs / max |reference|``; a row passes when
``max_abs <= atol + rtol * max |reference|``. Non-finite values are compared exactly: NaN
against NaN in the same place, or the same infinity, agree; a NaN or infinity on one side
only is an infinite error, so one NaN never hides the other elements' errors. A cotangent
of the wrong dtype, shape or structure, and a manual rule that raises, fail their row.

Forward mode (``jax.jvp``, ``jax.jacfwd``) cannot differentiate ``custom_vjp`` functions;
wrap such code in :func:`manualgrad.core.reference_mode` to differentiate the references.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import functools
import importlib
from typing import Any, Callable, Iterator, Sequence

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
    "check_model",
    "check_no_autodiff",
    "no_autodiff",
    "AutodiffError",
    "ModelReport",
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
    error: str = ""  # a mismatch that is not a number: dtype, shape, an exception raised

    @property
    def max_rel(self) -> float:
        if self.scale:
            return self.max_abs / self.scale
        return 0.0 if self.max_abs == 0 else float("inf")

    @property
    def passed(self) -> bool:
        return not self.error and self.max_abs <= self.atol + self.rtol * self.scale

    def __str__(self) -> str:
        verdict = "ok" if self.passed else "FAILED"
        if self.error:
            return f"{self.what:<14} {verdict}: {self.error}"
        return (f"{self.what:<14} max_abs={self.max_abs:.3e} max_rel={self.max_rel:.3e} "
                f"(rtol={self.rtol:g}, atol={self.atol:g}) {verdict}")


@dataclasses.dataclass(frozen=True)
class Report:
    """The outcome of one check: one :class:`Row` per compared quantity."""

    op: str
    mode: str
    dtype: str
    rows: tuple[Row, ...]
    example: str = ""  # the example's shapes and static params, when checked by check_op

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
        where = f", example {self.example}" if self.example else ""
        head = f"{self.op} [{self.mode}, {self.dtype}{where}]: {'ok' if self.passed else 'FAILED'}"
        legend = []
        if any("#" in r.what for r in self.rows):
            legend = ["  (x_bar#k: the cotangent of argument x for the k-th random output cotangent)"]
        return "\n".join([head] + [f"  {r}" for r in self.rows] + legend)

    def assert_ok(self) -> "Report":
        if not self.passed:
            raise AssertionError(str(self))
        return self


def _compare(got: np.ndarray, want: np.ndarray) -> tuple[float, float]:
    """``(max_abs, scale)`` of one leaf, NaN- and infinity-aware (see the module docstring)."""
    g, w = np.asarray(got, np.float64), np.asarray(want, np.float64)
    same = (g == w) | (np.isnan(g) & np.isnan(w))
    finite = np.isfinite(g) & np.isfinite(w)
    if np.any(~same & ~finite):
        max_abs = float("inf")
    else:
        max_abs = float(np.max(np.abs(g - w)[finite], initial=0.0))
    scale = float(np.max(np.abs(w[np.isfinite(w)]), initial=0.0))
    return max_abs, scale


def _row(what: str, got: Any, want: Any, tol: tuple[float, float]) -> Row:
    """One row comparing two pytrees leaf by leaf: structure, shapes, dtypes, then values."""

    def leaves(tree):  # integer inputs have float0 cotangents: nothing to compare
        return [a for a in jax.tree_util.tree_leaves(tree) if jnp.result_type(a) != jax.dtypes.float0]

    def failed(error: str) -> Row:
        return Row(what, float("inf"), 0.0, *tol, error=error)

    got_leaves, want_leaves = leaves(got), leaves(want)
    if len(got_leaves) != len(want_leaves):
        return failed(f"structure {jax.tree_util.tree_structure(got)}, reference {jax.tree_util.tree_structure(want)}")
    max_abs, scale = 0.0, 0.0
    for g, w in zip(got_leaves, want_leaves):
        if np.shape(g) != np.shape(w):
            return failed(f"shape {np.shape(g)}, reference {np.shape(w)}")
        if jnp.result_type(g) != jnp.result_type(w):
            return failed(f"dtype {jnp.result_type(g)}, reference {jnp.result_type(w)}")
        leaf_abs, leaf_scale = _compare(g, w)
        max_abs, scale = max(max_abs, leaf_abs), max(scale, leaf_scale)
    return Row(what, max_abs, scale, *tol)


def _raised(what: str, e: Exception, tol: tuple[float, float]) -> Row:
    return Row(what, float("inf"), 0.0, *tol, error=f"the manual rule raised {type(e).__name__}: {e}")


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


def _require_op(op: Any, where: str) -> None:
    if not isinstance(op, Op):
        raise TypeError(
            f"manualgrad.check.{where}: takes a manualgrad op (made with defop), got {op!r}. To check a "
            "model, use check.check_model(model, loss, params, x, y); for any function of ops, "
            "check.check_jacobian(fn, *args)."
        )


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
    _require_op(op, "check_vjp")
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
            y_ref, want = reference_pullback(args, ct)
            try:
                y, got = manual_pullback(args, ct)
            except Exception as e:  # a rule that raises (e.g. a cotangent of the wrong shape) fails
                rows.append(_raised("manual rule", e, tol))
                break
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
    try:
        _, cts = pullback(args, ct)
    except Exception as e:
        return Report(op.name, mode, "float64", (_raised("manual rule", e, FD_TOLERANCE),))

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
    _require_op(op, "check_hvp")
    rng = np.random.default_rng(seed)
    argnums = _diff_argnums(op)
    dtype = _dtype_of(args)
    u = _random_like(rng, jax.eval_shape(functools.partial(op, **params), *args))
    v = tuple(_random_like(rng, args[i]) for i in argnums)

    def hvp(f: Callable) -> Any:
        def directional(*a):
            return _dot(jax.grad(lambda *b: _dot(u, f(*b)), argnums)(*a), v)

        return jax.jit(jax.grad(directional, argnums))(*args)

    tol = TOLERANCES[jnp.dtype(dtype)]
    with jax.default_matmul_precision("highest"):
        want = hvp(functools.partial(op.reference, **params))
        try:
            got = hvp(functools.partial(op, **params))
        except Exception as e:
            return Report(op.name, "hvp", str(jnp.dtype(dtype)), (_raised("manual rule", e, tol),))
    rows = tuple(_row(f"H{op.arg_names[i]}.v", g, w, tol) for i, g, w in zip(argnums, got, want))
    return Report(op.name, "hvp", str(jnp.dtype(dtype)), rows)


class AutodiffError(RuntimeError):
    """JAX's autodiff ran where only hand-written rules may run."""


def _autodiff_entry_points() -> list[tuple[Any, str]]:
    """Where every JAX autodiff starts, whatever name it is called by: the JVP and linearize
    traces (``jax.grad``, ``jax.vjp``, ``jax.jvp``, ``jax.linearize``, ``custom_vjp`` dispatch
    under differentiation) and the transpose (``jax.linear_transpose``)."""
    from jax._src.interpreters import ad

    points = [(getattr(ad, cls), "__init__") for cls in ("JVPTrace", "LinearizeTrace") if hasattr(ad, cls)]
    return points + [(ad, "backward_pass")]


@contextlib.contextmanager
def no_autodiff(where: str) -> Iterator[None]:
    """Inside, any JAX autodiff raises :class:`AutodiffError` naming ``where``.

    The hook sits in JAX's autodiff machinery itself (its JVP and linearize traces and its
    transpose), not on the names ``jax.grad``/``jax.vjp``, so aliases such as
    ``from jax import grad as _grad`` are caught too. Trace the code under test inside
    (``jax.make_jaxpr`` or a first call of a fresh ``jax.jit``): a cached trace runs no Python.
    """

    def refuse(*args: Any, **kwargs: Any) -> None:
        raise AutodiffError(
            f"{where}: JAX autodiff (a JVP, linearize or transpose: jax.grad, jax.vjp, jax.jvp, "
            "jax.linear_transpose or an alias of them) ran inside code that must be written by hand"
        )

    saved = [(owner, attr, getattr(owner, attr)) for owner, attr in _autodiff_entry_points()]
    try:
        for owner, attr, _ in saved:
            setattr(owner, attr, refuse)
        yield
    finally:
        for owner, attr, original in saved:
            setattr(owner, attr, original)


def check_no_autodiff(op: Op, *args: Any, **params: Any) -> Report:
    """Trace ``op``'s hand-written backward on ``args`` with JAX's autodiff switched off."""
    _require_op(op, "check_no_autodiff")
    dtype = _dtype_of(args)
    tol = TOLERANCES[jnp.dtype(dtype)]
    y, res = op.fwd(*args, **params)
    g = jax.tree_util.tree_map(jnp.ones_like, y)
    try:
        with no_autodiff(f"{op.name}.bwd"):
            jax.make_jaxpr(op.bwd)(res, g)
        row = Row("bwd", 0.0, 0.0, *tol)
    except AutodiffError as e:
        row = Row("bwd", float("inf"), 0.0, *tol, error=str(e))
    return Report(op.name, "no-autodiff", str(jnp.dtype(dtype)), (row,))


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
    tol = TOLERANCES[jnp.dtype(dtype)]
    with jax.default_matmul_precision("highest"):
        with reference_mode():
            want = jax.jacrev(fn, argnums)(*args)
        try:
            row = _row("jacobian", jacobian(fn, argnums)(*args), want, tol)
        except Exception as e:
            row = _raised("jacobian", e, tol)
    return Report(name or getattr(fn, "__name__", "fn"), "jacobian", str(jnp.dtype(dtype)), (row,))


@dataclasses.dataclass(frozen=True)
class LayerCheck:
    """One layer of a model in one dtype: rows such as ``dL/dx manual`` or ``dL/dw explicit``,
    each comparing that gradient source with the reference."""

    dtype: str
    index: int
    path: str
    name: str
    rows: tuple[Row, ...]

    @property
    def passed(self) -> bool:
        return all(r.passed for r in self.rows)


@dataclasses.dataclass(frozen=True)
class ModelReport:
    """What :func:`check_model` found: one :class:`LayerCheck` per layer and dtype, plus the loss."""

    layers: tuple[LayerCheck, ...]

    @property
    def passed(self) -> bool:
        return all(layer.passed for layer in self.layers)

    def __str__(self) -> str:
        lines = ["gradients of the manual and explicit passes against jax.grad of the references "
                 "(max relative error, normwise per array)"]
        for layer in self.layers:
            cells = "  ".join(f"{r.what} {r.max_rel:.1e}" if not r.error else f"{r.what} {r.error}" for r in layer.rows)
            lines.append(f"  {layer.dtype:<8} [{layer.index}] {layer.path or '-':<10} {layer.name:<12} "
                         f"{'ok' if layer.passed else 'FAILED'}  {cells}")
            lines += [f"      {r}" for r in layer.rows if not r.passed]
        lines.append("PASSED" if self.passed else "FAILED")
        return "\n".join(lines)

    def assert_ok(self) -> "ModelReport":
        if not self.passed:
            raise AssertionError(str(self))
        return self


def _floating(tree: Any) -> bool:
    return all(jnp.issubdtype(jnp.result_type(a), jnp.floating) for a in jax.tree_util.tree_leaves(tree))


def _subtree(params: Any, path: str) -> Any:
    """The params of the layer at a trace path: ``"2.head1.0"`` is ``params[2][1][0]``."""
    for part in filter(None, path.split(".")):
        params = params[int(part[4:] if part.startswith("head") else part)]
    return params


def check_model(
    model: Any,
    loss: Any,
    params: Any,
    x: Any,
    y: Any,
    *,
    state: Any = None,
    key: Any = None,
    dtypes: Sequence[Any] = (jnp.float32, jnp.float64),
) -> ModelReport:
    """Verify a whole model in one call: every parameter gradient and every layer's input
    cotangent from ``grad="manual"`` (``jax.grad`` through the hand-written VJPs) and
    ``grad="explicit"`` (the layers' own backward pass), each against ``jax.grad`` of the
    plain references, in each dtype (floating leaves of ``params``, ``x`` and ``y`` are cast).

    ``model`` is a :class:`manualgrad.nn.Layer`, ``loss`` an op taking ``(prediction, y)``.
    The model runs in training mode, as for a training step: pass its ``state`` (batch norm)
    and a ``key`` (dropout) when it has them.
    Layer input cotangents come from zero taps added to every layer's input (see
    :func:`manualgrad.trace.tapping`). Returns a :class:`ModelReport`; ``print`` it for one
    line per layer, or call ``.assert_ok()``.
    """
    from manualgrad import backprop, trace  # the model layer sits above the checks

    layers = []
    with jax.enable_x64(True), jax.default_matmul_precision("highest"):
        for dtype in dtypes:
            p, xs, ys, st = cast((params, x, y, state), dtype)
            tol = TOLERANCES[jnp.dtype(dtype)]
            explicit = jax.jit(backprop.value_and_grad(model, loss, trace=True))(p, xs, ys, state=st, key=key)
            value_e, grads_e, tape = explicit[0], explicit[1], explicit[-1]
            entries = tape.entries[:-1]  # the last entry is the loss
            # integer inputs (an Embedding's token ids) have no cotangent: no tap, no dL/dx row
            taps = {e.path: jax.tree_util.tree_map(jnp.zeros_like, e.x) for e in entries if _floating(e.x)}

            def objective(p, taps):
                with trace.tapping(taps):
                    out = model.apply(p, xs, state=st, key=key, train=True)
                    return loss(out if st is None else out[0], ys)

            value_and_grads = jax.jit(jax.value_and_grad(objective, argnums=(0, 1)))
            value_m, (grads_m, taps_m) = value_and_grads(p, taps)
            with reference_mode():  # the mode is part of the jit key: this traces the references
                value_r, (grads_r, taps_r) = value_and_grads(p, taps)
            name = str(jnp.dtype(dtype))
            layers.append(LayerCheck(name, len(entries), "", "loss", (
                _row("value manual", value_m, value_r, tol), _row("value explicit", value_e, value_r, tol))))
            for i, e in enumerate(entries):
                rows = [] if e.path not in taps else [
                    _row("dL/dx manual", taps_m[e.path], taps_r[e.path], tol),
                    _row("dL/dx explicit", e.x_bar, taps_r[e.path], tol)]
                if not e.name.startswith(("fanout", "residual")):  # combinators: their layers' rows hold the params
                    ref = _subtree(grads_r, e.path)
                    for (kp, r), m, x_ in zip(jax.tree_util.tree_leaves_with_path(ref),
                                              jax.tree_util.tree_leaves(_subtree(grads_m, e.path)),
                                              jax.tree_util.tree_leaves(_subtree(grads_e, e.path))):
                        label = "dL/d" + (jax.tree_util.keystr(kp, simple=True, separator=".") or "params")
                        rows += [_row(f"{label} manual", m, r, tol), _row(f"{label} explicit", x_, r, tol)]
                layers.append(LayerCheck(name, i, e.path, e.name, tuple(rows)))
    return ModelReport(tuple(sorted(layers, key=lambda l: (l.dtype, l.index))))


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

    def add(report: Report, ex: Example) -> None:
        reports.append(dataclasses.replace(report, example=ex.describe()))

    for dtype in dtypes:
        for n, ex in enumerate(batches[0]):
            args = cast(ex.args, dtype)
            if n == 0:  # eager dispatch compiles every primitive: once per op and dtype is enough
                add(check_vjp(op, *args, seed=seed + n, **ex.params), ex)
            add(check_no_autodiff(op, *args, **ex.params), ex)
            add(check_vjp(op, *args, seed=seed + n, jit=True, **ex.params), ex)
            stacked = stack_examples([b[n] for b in batches])
            add(check_vjp(op, *cast(stacked.args, dtype), seed=seed + n, jit=True, vmap=True, **ex.params), stacked)
            if jnp.dtype(dtype) == jnp.float64:
                if op.smooth:
                    add(check_vjp(op, *args, method="fd", seed=seed + n, **ex.params), ex)
                add(check_hvp(op, *args, seed=seed + n, **ex.params), ex)
    return reports


def _select(ops: Sequence[str], modules: Sequence[str]) -> list[str]:
    """Registry names chosen by ``--op`` (a full name or its last part) and ``--module``."""
    import manualgrad.losses  # noqa: F401  (registers the library's ops)
    import manualgrad.ops  # noqa: F401

    chosen = []
    for module in modules:
        before = set(REGISTRY)
        importlib.import_module(module)
        mine = sorted(n for n in REGISTRY if n in set(REGISTRY) - before or n.startswith(module + "."))
        if not mine:
            raise SystemExit(f"manualgrad.check: module {module!r} registers no ops (define them with defop(examples=...))")
        chosen += mine
    for name in ops:
        found = [n for n in REGISTRY if n == name or n.endswith("." + name)]
        if len(found) != 1:
            known = ", ".join(sorted(REGISTRY))
            raise SystemExit(f"manualgrad.check: --op {name!r} matches {found or 'no op'}; registered: {known}")
        chosen += found
    return sorted(set(chosen)) if chosen else sorted(REGISTRY)


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m manualgrad.check``: run every check on the chosen ops; print the largest errors."""
    parser = argparse.ArgumentParser(
        prog="python -m manualgrad.check",
        description="Check hand-written VJPs against jax.vjp of each op's plain reference: eager, jit, "
        "jit+vmap in float64 and float32, finite differences and Hessian-vector products in float64, "
        "and a trace of each backward with JAX's autodiff switched off. Without --op or --module, "
        "every registered op of manualgrad is checked (about two minutes on two CPU cores).",
    )
    parser.add_argument("--op", action="append", default=[], metavar="NAME",
                        help="an op to check: its full name (manualgrad.ops.relu) or last part (relu); repeatable")
    parser.add_argument("--module", action="append", default=[], metavar="MODULE",
                        help="import MODULE and check the ops it registers (e.g. my_project.layers); repeatable")
    parser.add_argument("--list", action="store_true", help="list the registered ops and exit")
    args = parser.parse_args(argv)
    names = _select(args.op, args.module)
    if args.list:
        print("\n".join(names))
        return 0
    worst: dict[tuple[str, str], tuple[float, float, str]] = {}
    failed = []
    for name in names:
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
