"""The no-autodiff guard: JAX's autodiff switched off while a hand-written rule is traced.

This is the one module of :mod:`manualgrad.check` that touches JAX internals. The guard hooks
JAX's autodiff machinery where every autodiff starts (its JVP and linearize traces and its
transpose, in ``jax._src.interpreters.ad``), so aliases such as ``from jax import grad as
_grad`` are caught too. Where a JAX version lacks those hooks, the fallback replaces the public
names on the ``jax`` module instead (``jax.grad``, ``jax.vjp``, ...) and :data:`AT_SOURCE` is
False: an alias imported before the guard is then not caught.
"""

from __future__ import annotations

import contextlib
from typing import Any, Iterator

import jax

__all__ = ["AutodiffError", "no_autodiff", "AT_SOURCE"]

#: the public names the fallback replaces
PUBLIC_ENTRY_POINTS = ("grad", "value_and_grad", "vjp", "jvp", "linearize", "linear_transpose", "jacrev", "jacfwd", "hessian")


class AutodiffError(RuntimeError):
    """JAX's autodiff ran where only hand-written rules may run."""


def _entry_points() -> tuple[list[tuple[Any, str]], bool]:
    """Where every JAX autodiff starts, whatever name it is called by: the JVP and linearize
    traces (``jax.grad``, ``jax.vjp``, ``jax.jvp``, ``jax.linearize``, ``custom_vjp`` dispatch
    under differentiation) and the transpose (``jax.linear_transpose``); and whether they are
    JAX's internals (True) or the fallback's public names (False)."""
    try:
        from jax._src.interpreters import ad
    except ImportError:  # pragma: no cover - other JAX versions
        ad = None
    if ad is not None and hasattr(ad, "backward_pass") and hasattr(ad, "JVPTrace"):
        points = [(getattr(ad, cls), "__init__") for cls in ("JVPTrace", "LinearizeTrace") if hasattr(ad, cls)]
        return points + [(ad, "backward_pass")], True
    return [(jax, name) for name in PUBLIC_ENTRY_POINTS if hasattr(jax, name)], False  # pragma: no cover


#: True when the guard hooks JAX's autodiff at its source (aliases caught)
AT_SOURCE = _entry_points()[1]


@contextlib.contextmanager
def no_autodiff(where: str) -> Iterator[None]:
    """Inside, any JAX autodiff raises :class:`AutodiffError` naming ``where``.

    Trace the code under test inside (``jax.make_jaxpr`` or a first call of a fresh
    ``jax.jit``): a cached trace runs no Python.

    Args:
      where: what is being traced, named in the error (e.g. ``my_op.bwd``).
    """

    def refuse(*args: Any, **kwargs: Any) -> None:
        raise AutodiffError(
            f"{where}: JAX autodiff (a JVP, linearize or transpose: jax.grad, jax.vjp, jax.jvp, "
            "jax.linear_transpose or an alias of them) ran inside code that must be written by hand"
        )

    saved = [(owner, attr, getattr(owner, attr)) for owner, attr in _entry_points()[0]]
    try:
        for owner, attr, _ in saved:
            setattr(owner, attr, refuse)
        yield
    finally:
        for owner, attr, original in saved:
            setattr(owner, attr, original)
