"""Strided window access shared by convolution and pooling: for one offset inside the window,
every window's element at that offset (``take``), and its transpose (``put``).

A window op over a padded NHWC input ``xp`` with ``Ho x Wo`` windows stepping by ``(sh, sw)``
reads, at offset ``(a, c)``, the strided slice ``xp[:, a : a + (Ho - 1) sh + 1 : sh, c : ... :
sw, :]``: one ``(N, Ho, Wo, C)`` array holding that element of every window. Both ops' forward
and backward rules are sums over the window's offsets of ``take`` or ``put``.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from jax import lax


def take(xp: jax.Array, start: tuple[int, int], strides: tuple[int, int], out: tuple[int, int]) -> jax.Array:
    """For every window, its element at ``start`` (rows, columns of the padded input): ``(N, Ho, Wo, C)``."""
    (a, c), (sh, sw), (ho, wo) = start, strides, out
    return xp[:, a : a + (ho - 1) * sh + 1 : sh, c : c + (wo - 1) * sw + 1 : sw, :]


def put(v: jax.Array, start: tuple[int, int], strides: tuple[int, int], padded: tuple[int, int]) -> jax.Array:
    """The transpose of ``take``: ``v`` (N, Ho, Wo, C) written at the strided positions of a zero
    array of the padded input's spatial size ``padded``, by ``lax.pad`` with interior padding."""
    (a, c), (sh, sw), (hp, wp) = start, strides, padded
    ho, wo = v.shape[1:3]
    rows = (a, hp - a - (ho - 1) * sh - 1, sh - 1)
    cols = (c, wp - c - (wo - 1) * sw - 1, sw - 1)
    return lax.pad(v, jnp.zeros((), v.dtype), ((0, 0, 0), rows, cols, (0, 0, 0)))
