"""The one mechanism that turns (reference, fwd, bwd) into an op.

Every op in manualgrad is built the same way:

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

from manualgrad.errors import describe, fail

__all__ = [
    "Op",
    "Residuals",
    "Example",
    "defop",
    "register",
    "REGISTRY",
    "reference_mode",
    "fail",
    "describe",
]

def _reference_mode_state() -> Any:
    """The reference-mode switch as a JAX config state that is part of every jit cache key.

    A function jitted outside :func:`reference_mode` and called inside it must not replay
    its cached manual trace (a wrong backward would then "agree" with its reference), so
    the switch is registered like ``jax_default_matmul_precision``: JAX retraces when it
    changes. This uses JAX's config registry (``jax._src.config.bool_state``); where a JAX
    version lacks it, a context variable is used and :data:`REFERENCE_MODE_IN_JIT_KEY` is
    False (then enter the context inside the jitted function).
    """
    try:
        from jax._src import config as jax_config

        return jax_config.bool_state(
            "manualgrad_reference_mode",
            False,
            help="Run every manualgrad op's plain reference instead of its hand-written VJP.",
            include_in_jit_key=True,
            include_in_trace_context=True,
        ), True
    except (ImportError, AttributeError, TypeError):  # pragma: no cover - other JAX versions
        var: contextvars.ContextVar[bool] = contextvars.ContextVar("manualgrad_reference_mode", default=False)

        class _State:
            @property
            def value(self) -> bool:
                return var.get()

            @contextlib.contextmanager
            def __call__(self, on: bool) -> Iterator[None]:
                token = var.set(on)
                try:
                    yield
                finally:
                    var.reset(token)

        return _State(), False


_REFERENCE_MODE, REFERENCE_MODE_IN_JIT_KEY = _reference_mode_state()


@contextlib.contextmanager
def reference_mode(enabled: bool = True) -> Iterator[None]:
    """Run every op's plain reference instead of its hand-written VJP.

    Inside this context ``jax.grad`` differentiates the references, which is the
    baseline every manual rule is checked against, and forward mode works. The switch
    is part of JAX's jit cache key, so a function jitted outside the context and called
    inside it is traced again with the references (never replayed from its manual trace).
    """
    with _REFERENCE_MODE(enabled):
        yield


@dataclass(frozen=True)
class Example:
    """One set of example arguments for an op: arrays (or pytrees of arrays) and static params."""

    args: tuple
    params: dict = field(default_factory=dict)

    def describe(self) -> str:
        """The example's shapes and static params, e.g. ``x(4, 3) w(3, 5) b(5,)``, for reports."""
        shapes = " ".join(
            str(jax.tree_util.tree_map(lambda a: tuple(np.shape(a)), a)).replace(" ", "") for a in self.args
        )
        params = " ".join(f"{k}={v!r}" for k, v in self.params.items())
        return f"{shapes} {params}".strip()


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

    Ops are keyed by their module-qualified name (``my_project.layers.swish``), so two
    modules' ops of the same name do not collide, and defining an op again (re-running a
    notebook cell) replaces the earlier definition.
    """
    REGISTRY[op.name] = Registered(op, examples)
    return op


@jax.tree_util.register_pytree_node_class
class Residuals:
    """What :meth:`Op.fwd` returns as ``res``: the rule's own residuals plus, as static data,
    the static params and each primal's structure, shapes and dtypes, so that :meth:`Op.bwd`
    can hand back cotangents that match their primals (and refuse ones that do not)."""

    def __init__(self, values: Any, static: tuple, primals: tuple, compute_dtype: Any):
        self.values = values  # the hand-written fwd's residuals
        self.static = static  # sorted (name, value) pairs
        self.primals = primals  # per array argument: (treedef, ((shape, dtype), ...))
        self.compute_dtype = compute_dtype  # result_type of every floating input

    def tree_flatten(self):
        return (self.values,), (self.static, self.primals, self.compute_dtype)

    @classmethod
    def tree_unflatten(cls, aux, children):
        return cls(children[0], *aux)

    def __repr__(self) -> str:
        return f"Residuals({self.values!r})"


def _float_dtype(tree: Any, *extra: Any) -> Any:
    """The promotion of every floating dtype among ``tree``'s leaves and ``extra`` dtypes (None if none)."""
    dtypes = [jnp.result_type(a) for a in jax.tree_util.tree_leaves(tree)] + [d for d in extra if d is not None]
    floats = [d for d in dtypes if jnp.issubdtype(d, jnp.floating)]
    return jnp.result_type(*floats) if floats else None


def _avals(tree: Any) -> tuple:
    leaves, treedef = jax.tree_util.tree_flatten(tree)
    return treedef, tuple((tuple(np.shape(a)), jnp.result_type(a)) for a in leaves)


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
        self._custom_vjp.cache_clear()
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
        if _REFERENCE_MODE.value:
            return self.reference(*arrays, **static)
        self._require_complete()
        return self._custom_vjp(tuple(sorted(static.items())))(*arrays)

    def fwd(self, *args: Any, **kwargs: Any) -> tuple[Any, Residuals]:
        """The validated forward with residuals: ``(y, res)``. No custom_vjp dispatch.

        ``res`` is a :class:`Residuals` holding the rule's residuals (``res.values``) and
        what :meth:`bwd` needs to know about the primals."""
        self._require_complete()
        arrays, static = self.bind(args, kwargs)
        return self._forward(arrays, tuple(sorted(static.items())))

    def _forward(self, arrays: tuple, static_items: tuple) -> tuple[Any, Residuals]:
        y, values = self._fwd(*arrays, **dict(static_items))
        return y, Residuals(values, static_items, tuple(_avals(a) for a in arrays), _float_dtype(arrays))

    def bwd(self, res: Residuals, g: Any) -> tuple:
        """The hand-written backward: one cotangent per array argument (``None`` for constants).

        Every cotangent comes back with its primal's structure, shapes and dtype. A rule may
        compute in the dtype the forward computed in (the promotion of all its inputs, e.g.
        float64 for a float32 prediction against a float64 target, or the dtype of ``g``), as
        ``jax.grad`` of the reference does; such a cotangent is cast to its primal's dtype. Any other shape,
        dtype or structure is a ``TypeError`` naming the op and the argument.
        """
        self._require_complete()
        if not isinstance(res, Residuals):
            raise TypeError(f"{self.name}: bwd takes the res that {self.name}.fwd returned, got {type(res).__name__}")
        cts = tuple(self._bwd(res.values, g, **dict(res.static)))
        if len(cts) != len(self.arg_names):
            raise TypeError(
                f"{self.name}: bwd returned {len(cts)} cotangents for "
                f"{len(self.arg_names)} array arguments {self.arg_names}"
            )
        compute_dtype = _float_dtype(g, res.compute_dtype)
        return tuple(
            None if n in self.constant else self._conform(n, ct, primal, compute_dtype)
            for n, ct, primal in zip(self.arg_names, cts, res.primals)
        )

    def _conform(self, name: str, ct: Any, primal: tuple, compute_dtype: Any) -> Any:
        """``ct`` checked against its primal's structure and shapes, in the primal's dtype."""
        treedef, avals = primal
        leaves, ct_treedef = jax.tree_util.tree_flatten(ct)
        if ct_treedef != treedef:
            raise TypeError(f"{self.name}: bwd returned {name}_bar with structure {ct_treedef}, but {name} has {treedef}")
        out = []
        for leaf, (shape, dtype) in zip(leaves, avals):
            got_shape, got_dtype = tuple(np.shape(leaf)), jnp.result_type(leaf)
            if got_shape != shape:
                raise TypeError(
                    f"{self.name}: bwd returned {name}_bar.shape={got_shape} for {name}.shape={shape}; "
                    "a cotangent has exactly its primal's shape (sum over broadcast axes)"
                )
            if got_dtype != dtype:
                if got_dtype != compute_dtype or not jnp.issubdtype(got_dtype, jnp.floating):
                    raise TypeError(
                        f"{self.name}: bwd returned {name}_bar of dtype {got_dtype} for {name} of dtype {dtype}; "
                        f"a cotangent has its primal's dtype (or the forward's computing dtype {compute_dtype}, "
                        "which is cast back)"
                    )
                leaf = leaf.astype(dtype)
            out.append(leaf)
        return jax.tree_util.tree_unflatten(treedef, out)

    def _make_custom_vjp(self, static_items: tuple) -> Callable:
        @jax.custom_vjp
        def f(*arrays):
            return self._fwd(*arrays, **dict(static_items))[0]

        f.defvjp(lambda *arrays: self._forward(arrays, static_items), self.bwd)
        return f


def _qualified_name(fn: Callable) -> str:
    """``manualgrad.ops.relu`` for the library's ops (their public home), else the
    module-qualified name, e.g. ``my_project.layers.swish`` or ``__main__.swish``."""
    parts = (fn.__module__ or "").split(".")
    if parts[0] == "manualgrad":
        return ".".join(parts[:2] + [fn.__name__])
    return f"{fn.__module__}.{fn.__qualname__}"


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
