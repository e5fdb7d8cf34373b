"""The one way manualgrad reports bad input: ``ValueError("<where>: <what is wrong>")``.

``where`` is the qualified name of the function, op or layer that refused the input
(``manualgrad.ops.linear``, ``manualgrad.nn.Linear(3)``, ``manualgrad.train.fit``) and the
message names the argument and its shapes or values, e.g.

```text
manualgrad.ops.linear: x.shape=(4, 5) has 5 input features but w.shape=(3, 2) expects d_in=3
```

Every check in the library raises through :func:`fail`; a layer adds its own name in front of
an error raised by the ops inside it with :func:`blame`, so the message reads from the outside
in: ``manualgrad.nn.Linear(4): manualgrad.ops.linear: x.shape=...``.
"""

from __future__ import annotations

import contextlib
from typing import Any, Iterator, NoReturn

import jax
import jax.numpy as jnp
import numpy as np

__all__ = ["fail", "blame", "describe", "same_dtype", "positive_int", "real_number", "one_key"]


def fail(where: str, message: str) -> NoReturn:
    """Raise the ValueError manualgrad uses for bad input: ``<where>: <message>``.

    Args:
      where: the qualified name of what refused the input, e.g. ``manualgrad.ops.linear``.
      message: what is wrong, naming the argument and its shapes or values.
    """
    raise ValueError(f"{where}: {message}")


@contextlib.contextmanager
def blame(where: str) -> Iterator[None]:
    """Put ``where`` in front of any bad-input error raised inside the block (a layer naming
    itself in front of its ops' errors), unless the message already starts with it."""
    try:
        yield
    except ValueError as e:
        if str(e).startswith(f"{where}: "):
            raise
        raise ValueError(f"{where}: {e}") from None


def describe(name: str, value: Any) -> str:
    """``name.shape=(..) dtype`` for error messages; works on tracers and pytrees."""
    leaves = jax.tree_util.tree_leaves(value)
    if len(leaves) == 1 and leaves[0] is value:
        return f"{name}.shape={tuple(np.shape(value))} {jnp.result_type(value)}"
    shapes = jax.tree_util.tree_map(lambda a: tuple(np.shape(a)), value)
    return f"{name} shapes {shapes}"


def same_dtype(where: str, **arrays: Any) -> None:
    """Fail unless every one of ``arrays`` (name=value) has the same dtype, naming each one's."""
    dtypes = {name: jnp.result_type(a) for name, a in arrays.items()}
    if len(set(dtypes.values())) > 1:
        names = list(dtypes)
        listed = ", ".join(f"{n} {d}" for n, d in dtypes.items())
        fail(where, f"{', '.join(names[:-1])} and {names[-1]} must share one dtype, got {listed}")


def positive_int(where: str, name: str, value: Any) -> int:
    """``value`` as an int, or a ValueError naming ``where`` and the argument ``name``."""
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
        fail(where, f"{name} must be a positive integer, got {value!r}")
    return int(value)


def real_number(where: str, name: str, value: Any, hint: str = "") -> float:
    """``value`` as a float, or a ValueError naming ``where`` and the argument ``name`` (``hint``
    follows "must be a real number" in the message)."""
    if isinstance(value, bool) or not isinstance(value, (int, float, np.integer, np.floating)):
        fail(where, f"{name}={value!r} must be a real number{hint}")
    return float(value)


def one_key(where: str, name: str, key: Any) -> None:
    """Fail unless ``key`` is one PRNG key: a typed key of shape ``()`` or a raw ``uint32`` vector."""
    dtype = jnp.result_type(key) if hasattr(key, "dtype") else None
    if dtype is not None and jax.dtypes.issubdtype(dtype, jax.dtypes.prng_key):
        single = np.shape(key) == ()
    else:
        single = dtype == jnp.uint32 and np.ndim(key) == 1
    if not single:
        got = describe(name, key) if dtype is not None else f"{name}={key!r}"
        fail(where, f"{got}: {name} must be one PRNG key; pass jax.random.key(seed) or jax.random.PRNGKey(seed), "
                    "or split a key per call with jax.random.split")
