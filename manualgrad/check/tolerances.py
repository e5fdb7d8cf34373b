"""How close is close enough: tolerances per dtype, and arguments cast to the dtype under test."""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp

from manualgrad.core import fail

__all__ = ["TOLERANCES", "FD_TOLERANCE", "cast", "dtype_of"]

#: (rtol, atol) per floating dtype; finite differences get their own, looser, entry.
TOLERANCES: dict[Any, tuple[float, float]] = {
    jnp.dtype(jnp.float64): (1e-10, 1e-13),
    jnp.dtype(jnp.float32): (1e-5, 1e-7),
    jnp.dtype(jnp.bfloat16): (2e-2, 1e-4),
    jnp.dtype(jnp.float16): (2e-3, 1e-5),
}
FD_TOLERANCE = (1e-6, 1e-9)


def dtype_of(args: Any) -> jnp.dtype:
    """The dtype a check runs in: that of the first floating leaf of ``args`` (float32 if none)."""
    floats = [jnp.result_type(a) for a in jax.tree_util.tree_leaves(args) if jnp.issubdtype(jnp.result_type(a), jnp.floating)]
    return floats[0] if floats else jnp.dtype(jnp.float32)


def cast(args: Any, dtype: Any) -> Any:
    """Floating leaves of ``args`` as JAX arrays of ``dtype``; integer leaves unchanged.

    Args:
      args: a pytree of arrays.
      dtype: the floating dtype to cast to; float64 needs ``jax_enable_x64``.

    Returns:
      ``args`` with every leaf a JAX array, the floating ones of ``dtype``.
    """
    dtype = jnp.dtype(dtype)
    if dtype == jnp.float64 and not jax.config.jax_enable_x64:
        fail("manualgrad.check", "float64 needs jax.config.update('jax_enable_x64', True)")

    def one(a):
        if jnp.issubdtype(jnp.result_type(a), jnp.floating):
            return jnp.asarray(a, dtype)
        return jnp.asarray(a)

    return jax.tree_util.tree_map(one, args)
