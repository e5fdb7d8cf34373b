"""Inverted dropout driven by an explicit PRNG key, with a hand-written VJP that regenerates its mask."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from manualgrad.core import Example, defop
from manualgrad.errors import fail, one_key

_WHERE = "manualgrad.ops.dropout"


def _check_dropout(x: jax.Array, key: jax.Array, rate: float) -> None:
    if isinstance(rate, bool) or not isinstance(rate, (int, float)) or not 0 <= rate < 1:
        fail(_WHERE, f"rate={rate!r} must be a number in [0, 1): the probability of zeroing each element")
    one_key(_WHERE, "key", key)


def _keep(key: jax.Array, rate: float, shape: tuple) -> jax.Array:
    """The mask of kept elements, a pure function of ``key``: drawn again by the backward."""
    return jax.random.bernoulli(key, 1.0 - rate, shape)


def _dropout_examples(rng: np.random.Generator) -> list[Example]:
    def case(shape: tuple, rate: float) -> Example:
        key = np.asarray(jax.random.PRNGKey(int(rng.integers(2**31))))
        return Example((rng.normal(size=shape), key), {"rate": rate})

    return [case((2, 3, 4), 0.5), case((3, 2), 0.0)]


@defop(static=("rate",), constant=("key",), check=_check_dropout, examples=_dropout_examples)
def dropout(x: jax.Array, key: jax.Array, rate: float) -> jax.Array:
    r"""Inverted dropout: ``keep = jax.random.bernoulli(key, 1 - rate, x.shape)`` and
    ``y = where(keep, x / (1 - rate), 0)``, so $\mathbb{E}[y] = x$; ``rate == 0`` is the identity.
    ``key`` is a typed key (``jax.random.key``) or a raw ``uint32`` one (``jax.random.PRNGKey``); it
    is a constant argument (no cotangent). ``rate`` is static, in [0, 1).

    Derivation. Write the mask ``keep`` as $m \in \{0, 1\}$ (elementwise) and ``rate`` as $q$:
    $y = m \odot x / (1 - q)$. For a fixed mask $y$ is linear in $x$ with the diagonal Jacobian
    $m / (1 - q)$, so

    $$
    \bar{x} = \frac{m \odot g}{1 - q},
    $$

    in code ``where(keep, g / (1 - rate), 0)``; the cotangent of ``key`` is None.

    Residual: the key, not the mask. The mask is a pure function of ``(key, rate, x.shape)``, so the
    backward draws it again: a handful of bytes are kept between the passes instead of one byte per
    element of ``x`` (a whole activation's worth per dropout layer), for the price of generating the
    random bits twice.
    """
    if rate == 0:
        return x
    return jnp.where(_keep(key, rate, jnp.shape(x)), x / (1.0 - rate), 0.0)


def dropout_fwd(x: jax.Array, key: jax.Array, rate: float) -> tuple[jax.Array, jax.Array]:
    if rate == 0:
        return x, key
    return jnp.where(_keep(key, rate, x.shape), x / (1.0 - rate), 0.0), key


def dropout_bwd(res: jax.Array, g: jax.Array, rate: float) -> tuple[jax.Array, None]:
    if rate == 0:
        return g, None
    return jnp.where(_keep(res, rate, g.shape), g / (1.0 - rate), 0.0), None


dropout.defvjp(dropout_fwd, dropout_bwd)
