"""The one mechanism that turns (reference, fwd, bwd) into an op.

Every op in manualgrad is built the same way::

    @defop(examples=relu_examples, smooth=False)
    def relu(x):
        '''The math of the forward and of its derivative.'''
        return jnp.where(x > 0, x, 0)          # the plain reference

    def relu_fwd(x):
        mask = x > 0
        return jnp.where(mask, x, 0), mask     # output and residuals `res`

    def relu_bwd(res, g):
        return (jnp.where(res, g, 0),)         # one cotangent per array argument

    relu.defvjp(relu_fwd, relu_bwd)

The decorated function stays available as ``relu.reference``: plain ``jax.numpy``
that ``jax.grad`` differentiates on its own. Calling ``relu(x)`` runs a
``jax.custom_vjp`` function whose backward rule is ``relu_bwd``; ``relu.fwd`` and
``relu.bwd`` are the raw rules, used by the explicit reverse pass in
:mod:`manualgrad.backprop`. Registering ``examples`` puts the op into
:data:`REGISTRY`, which one parametrized test walks: an op cannot exist without
its reference and its checks.

Arguments come in three kinds, declared per op:

* array arguments (the default) are differentiated; they must be floating point;
* ``constant`` arguments (targets, labels) are ordinary arrays whose cotangent is
  zero: the backward rule returns ``None`` for them and references wrap them in
  ``lax.stop_gradient``;
* ``static`` arguments (an axis, a slope) are hashable Python values fixed at trace
  time; they are passed by keyword to ``fwd`` and ``bwd``.

Forward mode (``jax.jvp``, ``jax.jacfwd``) is not available for ``custom_vjp``
functions; JAX raises ``TypeError: can't apply forward-mode autodiff (jvp) to a
custom_vjp function``. Inside :func:`reference_mode` every op runs its reference
instead, which forward mode can differentiate.
"""

from __future__ import annotations

import contextlib
import contextvars
import functools
import inspect
from dataclasses import dataclass, field
from typing import Any, Callable, Iterator, Sequence

import jax
import jax.numpy as jnp
import numpy as np

__all__ = [
    "Op",
    "Example",
    "defop",
    "register",
    "REGISTRY",
    "reference_mode",
    "fail",
    "describe",
]

_REFERENCE_MODE: contextvars.ContextVar[bool] = contextvars.ContextVar(
    "manualgrad_reference_mode", default=False
)


@contextlib.contextmanager
def reference_mode() -> Iterator[None]:
    """Run every op's plain reference instead of its hand-written VJP.

    Inside this context ``jax.grad`` differentiates the references, which is the
    baseline every manual rule is checked against, and forward mode works.
    The switch is read while tracing, so a jitted function must enter the context
    inside its own body.
    """
    token = _REFERENCE_MODE.set(True)
    try:
        yield
    finally:
        _REFERENCE_MODE.reset(token)


def fail(where: str, message: str) -> None:
    """Raise the ValueError manualgrad uses for bad input: ``<where>: <message>``,
    where ``where`` is the qualified name of the op or layer, e.g. ``manualgrad.ops.linear``."""
    raise ValueError(f"{where}: {message}")


def describe(name: str, value: Any) -> str:
    """``name.shape=(..) dtype`` for error messages; works on tracers and pytrees."""
    leaves = jax.tree_util.tree_leaves(value)
    if len(leaves) == 1 and leaves[0] is value:
        return f"{name}.shape={tuple(np.shape(value))} {jnp.result_type(value)}"
    shapes = jax.tree_util.tree_map(lambda a: tuple(np.shape(a)), value)
    return f"{name} shapes {shapes}"


@dataclass(frozen=True)
class Example:
    """One set of example arguments for an op: arrays (or pytrees of arrays) and static params."""

    args: tuple
    params: dict = field(default_factory=dict)


@dataclass(frozen=True)
class Registered:
    op: "Op"
    examples: Callable[[np.random.Generator], Sequence[Example]]


REGISTRY: dict[str, Registered] = {}


def register(op: "Op", examples: Callable[[np.random.Generator], Sequence[Example]]) -> "Op":
    """Put ``op`` into :data:`REGISTRY` with a generator of example arguments.

    ``examples(rng)`` returns a list of :class:`Example` whose array leaves are
    float64 NumPy arrays (integer arrays for labels); the checks cast them to the
    dtype under test. Shapes must not depend on ``rng``, so that examples drawn with
    different generators can be stacked for ``vmap``.
    """
    if op.name in REGISTRY and REGISTRY[op.name].op is not op:
        raise ValueError(f"manualgrad.core.register: an op named {op.name!r} is already registered")
    REGISTRY[op.name] = Registered(op, examples)
    return op


class Op:
    """An op: a reference forward plus a hand-written VJP, callable like the reference."""

    def __init__(
        self,
        reference: Callable,
        *,
        name: str,
        static: Sequence[str] = (),
        constant: Sequence[str] = (),
        smooth: bool = True,
        check: Callable[..., None] | None = None,
    ):
        self.reference = reference
        self.name = name
        self.static = tuple(static)
        self.constant = tuple(constant)
        self.smooth = smooth
        self._check = check
        self._fwd: Callable | None = None
        self._bwd: Callable | None = None
        self._signature = inspect.signature(reference)
        self.arg_names = tuple(p for p in self._signature.parameters if p not in self.static)
        functools.update_wrapper(self, reference)
        self._custom_vjp = functools.lru_cache(maxsize=None)(self._make_custom_vjp)

    def __repr__(self) -> str:
        return f"<manualgrad op {self.name}>"

    def defvjp(self, fwd: Callable, bwd: Callable) -> "Op":
        """Attach the forward-with-residuals ``fwd(*args, **static) -> (y, res)`` and the
        backward ``bwd(res, g, **static) -> tuple`` (one cotangent per array argument)."""
        self._fwd, self._bwd = fwd, bwd
        return self

    @property
    def complete(self) -> bool:
        return self._fwd is not None and self._bwd is not None

    # -- argument handling -------------------------------------------------
    def bind(self, args: tuple, kwargs: dict) -> tuple[tuple, dict]:
        """Split call arguments into array arguments and static params, and validate them."""
        try:
            bound = self._signature.bind(*args, **kwargs)
        except TypeError as e:
            raise TypeError(f"{self.name}: {e}") from None
        bound.apply_defaults()
        arrays = tuple(bound.arguments[n] for n in self.arg_names)
        static = {n: bound.arguments[n] for n in self.static}
        for n, v in static.items():
            try:
                hash(v)
            except TypeError:
                fail(self.name, f"{n} is a static parameter and must be a hashable Python value, got {type(v).__name__}")
        for n, v in zip(self.arg_names, arrays):
            if n in self.constant:
                continue
            for leaf in jax.tree_util.tree_leaves(v):
                if not jnp.issubdtype(jnp.result_type(leaf), jnp.floating):
                    fail(self.name, f"{describe(n, leaf)}: {n} is differentiated and must be floating point")
        if self._check is not None:
            self._check(*arrays, **static)
        return arrays, static

    def _require_complete(self) -> None:
        if not self.complete:
            raise NotImplementedError(f"{self.name}: no VJP defined; call {self.__name__}.defvjp(fwd, bwd)")

    # -- the three entry points ----------------------------------------------
    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        arrays, static = self.bind(args, kwargs)
        if _REFERENCE_MODE.get():
            return self.reference(*arrays, **static)
        self._require_complete()
        return self._custom_vjp(tuple(sorted(static.items())))(*arrays)

    def fwd(self, *args: Any, **kwargs: Any) -> tuple[Any, Any]:
        """The validated forward with residuals: ``(y, res)``. No custom_vjp dispatch."""
        self._require_complete()
        arrays, static = self.bind(args, kwargs)
        return self._fwd(*arrays, **static)

    def bwd(self, res: Any, g: Any, **static: Any) -> tuple:
        """The hand-written backward: one cotangent per array argument (``None`` for constants)."""
        self._require_complete()
        cts = tuple(self._bwd(res, g, **static))
        if len(cts) != len(self.arg_names):
            raise TypeError(
                f"{self.name}: bwd returned {len(cts)} cotangents for "
                f"{len(self.arg_names)} array arguments {self.arg_names}"
            )
        return tuple(None if n in self.constant else ct for n, ct in zip(self.arg_names, cts))

    def _make_custom_vjp(self, static_items: tuple) -> Callable:
        static = dict(static_items)

        @jax.custom_vjp
        def f(*arrays):
            return self._fwd(*arrays, **static)[0]

        f.defvjp(lambda *arrays: self._fwd(*arrays, **static), lambda res, g: self.bwd(res, g, **static))
        return f


def _qualified_name(fn: Callable) -> str:
    """``manualgrad.ops.relu`` for the library's ops (their public home), else the bare name."""
    parts = (fn.__module__ or "").split(".")
    if parts[0] == "manualgrad":
        return ".".join(parts[:2] + [fn.__name__])
    return fn.__name__


def defop(
    *,
    name: str | None = None,
    static: Sequence[str] = (),
    constant: Sequence[str] = (),
    smooth: bool = True,
    check: Callable[..., None] | None = None,
    examples: Callable[[np.random.Generator], Sequence[Example]] | None = None,
) -> Callable[[Callable], Op]:
    """Decorate a reference forward, making it an :class:`Op`; finish it with ``op.defvjp(fwd, bwd)``.

    ``smooth=False`` marks ops that are only piecewise differentiable (ReLU and its
    kin): finite-difference checks refuse them and their second derivative is zero
    almost everywhere. ``check(*arrays, **static)`` validates shapes at trace time and
    raises through :func:`fail`. With ``examples`` the op is registered.
    """

    def wrap(reference: Callable) -> Op:
        op = Op(
            reference,
            name=name or _qualified_name(reference),
            static=static,
            constant=constant,
            smooth=smooth,
            check=check,
        )
        if examples is not None:
            register(op, examples)
        return op

    return wrap
