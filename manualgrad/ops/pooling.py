"""Max and average pooling over NHWC images, with hand-written VJPs.

Both backward rules walk the ``KH * KW`` offsets of the window (a static Python loop): for
offset ``(p, q)`` the strided slice ``xp[:, p :: sh, q :: sw]`` of the padded input holds, for
every window, the element at that offset (``manualgrad.ops.windows.take``); its cotangent
contribution goes back to exactly those positions with ``lax.pad`` (``sh - 1`` zeros between
rows, ``sw - 1`` between columns: ``put``), and the padding is cropped at the end. The backward
rules are jitted: called eagerly, their loop would otherwise dispatch (and compile, per shape) a
few dozen tiny primitives; inside an outer ``jit`` they are traced into it like any other function.
"""

from __future__ import annotations

import functools
from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from manualgrad.core import Example, defop
from manualgrad.errors import describe, fail
from manualgrad.ops import windows
from manualgrad.ops.conv import _int_pair


class _Window:
    """The static layout of one pooling: window, strides, padding, output size."""

    def __init__(self, where: str, x_shape: tuple, window: Any, stride: Any, padding: int):
        self.window = _int_pair(where, "window", window)
        self.strides = self.window if stride is None else _int_pair(where, "stride", stride)
        self.padding = padding
        self.padded = tuple(n + 2 * padding for n in x_shape[1:3])
        self.out = tuple((n - k) // s + 1 for n, k, s in zip(self.padded, self.window, self.strides))

    def dims(self) -> dict:
        """``lax.reduce_window``'s window, strides and padding for NHWC."""
        p = self.padding
        return dict(
            window_dimensions=(1, *self.window, 1),
            window_strides=(1, *self.strides, 1),
            padding=((0, 0), (p, p), (p, p), (0, 0)),
        )

    def pad(self, x: jax.Array, value: Any) -> jax.Array:
        p = self.padding
        return lax.pad(x, jnp.asarray(value, x.dtype), ((0, 0, 0), (p, p, 0), (p, p, 0), (0, 0, 0)))

    def offsets(self) -> list[tuple[int, int]]:
        """The window's offsets in row-major order."""
        return [(a, c) for a in range(self.window[0]) for c in range(self.window[1])]

    def take(self, xp: jax.Array, offset: tuple[int, int]) -> jax.Array:
        """For every window, its element at ``offset``: a strided slice of the padded input."""
        return windows.take(xp, offset, self.strides, self.out)

    def put(self, v: jax.Array, offset: tuple[int, int]) -> jax.Array:
        """The transpose of ``take``: ``v`` at the strided positions of a zero padded input."""
        return windows.put(v, offset, self.strides, self.padded)

    def crop(self, xp_bar: jax.Array) -> jax.Array:
        p, (hp, wp) = self.padding, self.padded
        return xp_bar[:, p : hp - p, p : wp - p, :]


def _check_pool(where: str) -> Callable[..., None]:
    def check(x: jax.Array, window: Any, stride: Any = None, padding: int = 0) -> None:
        if jnp.ndim(x) != 4:
            fail(where, f"{describe('x', x)}: x must be NHWC, shape (N, H, W, C)")
        win = _int_pair(where, "window", window)
        if stride is not None:
            _int_pair(where, "stride", stride)
        if not isinstance(padding, (int, np.integer)) or isinstance(padding, bool) or padding < 0:
            fail(where, f"padding={padding!r} must be a non-negative int (the same on every side)")
        if any(2 * padding > k for k in win):
            fail(
                where,
                f"padding={padding} must be at most half the window={window!r} (PyTorch's rule), so that "
                "every window holds at least one element of x",
            )
        for axis, n, k in zip(("H", "W"), np.shape(x)[1:3], win):
            if k > n + 2 * padding:
                fail(
                    where,
                    f"window={window!r} spans {k} along {axis} but the padded input has only "
                    f"{n + 2 * padding} ({axis}={n} + 2 * padding {padding}); x.shape={np.shape(x)}",
                )

    return check


def _pool_examples(rng: np.random.Generator) -> list[Example]:
    def case(x_shape: tuple, **params: Any) -> Example:
        return Example((rng.normal(size=x_shape),), params)

    return [
        case((2, 4, 4, 3), window=2),  # stride defaults to the window
        case((1, 4, 6, 2), window=(2, 3), stride=(1, 2), padding=1),  # overlapping, padded, batch of one
        case((2, 6, 5, 2), window=2, stride=3),  # stride > window; the 6th row is never read
        case((2, 3, 3, 4), window=3),  # the window covers the whole image
    ]


# -- max_pool2d ----------------------------------------------------------------
_MAX = "manualgrad.ops.max_pool2d"


@defop(static=("window", "stride", "padding"), check=_check_pool(_MAX), examples=_pool_examples, smooth=False)
def max_pool2d(x: jax.Array, window: Any, stride: Any = None, padding: int = 0) -> jax.Array:
    r"""Max over each ``window`` (int or pair) of an NHWC ``x``, stepping by ``stride`` (default: the
    window), after padding every side with ``padding`` rows/columns of $-\infty$.

    Derivation. With $\tilde{x}$ the padded input (``xp``) and $(s_h, s_w)$ the strides
    (``sh``, ``sw``),

    $$
    y_{n,i,j,c} = \max_{p,q}\, \tilde{x}_{n,\, i s_h + p,\, j s_w + q,\, c} .
    $$

    The max is locally the element that attains it, so $\partial y / \partial \tilde{x}$ is 1 at
    that element of the window and 0 elsewhere, and $\bar{\tilde{x}}_{a,b}$ is the sum of $g$ over
    the windows whose maximum sits at $(a, b)$. With ties the whole $g$ goes to the first maximal
    element in row-major order (what ``jax.grad`` of ``lax.reduce_window`` max and PyTorch do):
    the backward walks the offsets in that order, with
    ``mask = (xp[., i sh + p, j sw + q, .] == y) & ~routed`` and ``routed |= mask``, and places
    ``g * mask`` back at the offset's positions; $\bar{x}$ is $\bar{\tilde{x}}$ with the padding
    cropped. $-\infty$ padding never wins, since ``padding <= window / 2`` leaves an element of
    ``x`` in every window. The derivative jumps where two elements trade places
    (``smooth=False``).

    Residuals: ``x`` and ``y``.
    """
    geo = _Window(_MAX, np.shape(x), window, stride, padding)
    return lax.reduce_window(x, -jnp.inf, lax.max, **geo.dims())


def max_pool2d_fwd(x: jax.Array, window: Any, stride: Any = None, padding: int = 0) -> tuple[jax.Array, tuple]:
    geo = _Window(_MAX, np.shape(x), window, stride, padding)
    y = lax.reduce_window(x, -jnp.inf, lax.max, **geo.dims())
    return y, (x, y)


@functools.partial(jax.jit, static_argnames=("window", "stride", "padding"))
def max_pool2d_bwd(res: tuple, g: jax.Array, window: Any, stride: Any = None, padding: int = 0) -> tuple[jax.Array]:
    x, y = res
    geo = _Window(_MAX, np.shape(x), window, stride, padding)
    xp = geo.pad(x, -jnp.inf)
    routed = jnp.zeros(np.shape(y), bool)
    xp_bar = jnp.zeros(np.shape(xp), g.dtype)
    for offset in geo.offsets():
        mask = (geo.take(xp, offset) == y) & ~routed
        routed = routed | mask
        xp_bar = xp_bar + geo.put(jnp.where(mask, g, 0), offset)
    return (geo.crop(xp_bar),)


max_pool2d.defvjp(max_pool2d_fwd, max_pool2d_bwd)


# -- avg_pool2d ----------------------------------------------------------------
_AVG = "manualgrad.ops.avg_pool2d"


@defop(static=("window", "stride", "padding"), check=_check_pool(_AVG), examples=_pool_examples)
def avg_pool2d(x: jax.Array, window: Any, stride: Any = None, padding: int = 0) -> jax.Array:
    r"""Mean over each ``window`` (int or pair) of an NHWC ``x``, stepping by ``stride`` (default: the
    window), after zero-padding every side with ``padding`` rows/columns. The zeros count: the divisor
    is always ``KH * KW`` (PyTorch's ``count_include_pad=True``).

    Derivation. With $\tilde{x}$ the padded input (``xp``), $(s_h, s_w)$ the strides and
    $K_H \times K_W$ the window,

    $$
    y_{n,i,j,c} = \frac{1}{K_H K_W} \sum_{p,q} \tilde{x}_{n,\, i s_h + p,\, j s_w + q,\, c}
    $$

    is linear, each element of $\tilde{x}$ entering every window that covers it with weight
    $1 / (K_H K_W)$, so $\bar{\tilde{x}}_{a,b}$ is the sum of $g / (K_H K_W)$ over the windows
    covering $(a, b)$: for each offset $(p, q)$, $g / (K_H K_W)$ placed at rows $i s_h + p$ and
    columns $j s_w + q$, summed over offsets (windows overlap when the stride is smaller than the
    window); $\bar{x}$ is $\bar{\tilde{x}}$ with the padding cropped. Rows that no window reaches
    get 0. Residual: ``x``, of which only the static shape is read; under ``jit`` no data of it
    is kept for the backward.
    """
    geo = _Window(_AVG, np.shape(x), window, stride, padding)
    total = lax.reduce_window(x, 0.0, lax.add, **geo.dims())
    return total / (geo.window[0] * geo.window[1])


def avg_pool2d_fwd(x: jax.Array, window: Any, stride: Any = None, padding: int = 0) -> tuple[jax.Array, jax.Array]:
    geo = _Window(_AVG, np.shape(x), window, stride, padding)
    total = lax.reduce_window(x, 0.0, lax.add, **geo.dims())
    return total / (geo.window[0] * geo.window[1]), x


@functools.partial(jax.jit, static_argnames=("window", "stride", "padding"))
def avg_pool2d_bwd(res: jax.Array, g: jax.Array, window: Any, stride: Any = None, padding: int = 0) -> tuple[jax.Array]:
    geo = _Window(_AVG, np.shape(res), window, stride, padding)
    share = g / (geo.window[0] * geo.window[1])
    return (geo.crop(sum(geo.put(share, offset) for offset in geo.offsets())),)


avg_pool2d.defvjp(avg_pool2d_fwd, avg_pool2d_bwd)
