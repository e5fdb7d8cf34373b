"""Data augmentation as layers: ``RandomFlip`` and ``RandomShift`` of NHWC images.

Like :func:`~manualgrad.nn.Dropout`, they draw from the step's key in training mode
(``train=True``) and are the identity in evaluation, so an augmented model is an ordinary
``serial(RandomFlip(), RandomShift(2), Conv2D(...), ...)``: the scanned epoch derives
a key per step and ``evaluate`` sees the clean images. Each example gets its own draw.

Both are linear in ``x`` for a fixed draw, so their backward applies the transpose of the
drawn map to the cotangent; the draw is a pure function of the key, and the key is the
only residual (the backward draws again, as dropout's does).
"""

from __future__ import annotations

import numbers

import jax
import jax.numpy as jnp
from jax import lax

from manualgrad.errors import fail
from manualgrad.nn.layer import Layer, draws_random, primitive

__all__ = ["RandomFlip", "RandomShift"]


def _check_images(shape: tuple) -> None:
    if len(shape) != 4:
        raise ValueError(f"x has shape {tuple(shape)}: augmentation takes NHWC images (4 axes), batch first")


def _init(key: jax.Array, input_shape: tuple) -> tuple[tuple, tuple]:
    _check_images(input_shape)
    return tuple(input_shape), ()


def _augmenting(name: str, enabled: bool, draw, augment, transpose) -> Layer:
    """A key-driven, parameter-free layer: ``draw(key, x_shape)`` gives the per-example
    choice, ``augment(x, choice)`` the augmented images and ``transpose(g, choice)`` the
    cotangent of ``x``. Identity (and identity backward) when not training or not ``enabled``."""

    def forward(params, state, x, *, key, train):
        _check_images(jnp.shape(x))
        if not (enabled and draws_random(key, train, "draws a random augmentation")):
            return x, state, None
        return augment(x, draw(key, x.shape)), state, key

    def call(params, state, x, *, key, train):
        y, state, _ = forward(params, state, x, key=key, train=train)
        return y, state

    def bwd(res, y_bar):
        if res is None:
            return (), y_bar
        return (), transpose(y_bar, draw(res, y_bar.shape))

    return primitive(name, _init, call, forward, bwd)


def RandomFlip(p: float = 0.5) -> Layer:
    """Mirror each image left-right with probability ``p`` (training mode only; ``p = 0`` is
    the identity).

    ``y[n] = x[n, :, ::-1]`` where the example's coin ``flip[n] = bernoulli(key, p)`` came
    up, else ``x[n]``. Backward: a flip is its own transpose, so ``x_bar[n] = g[n, :, ::-1]``
    for the flipped examples and ``g[n]`` for the others.
    """
    name = f"RandomFlip({p!r})"
    if isinstance(p, bool) or not isinstance(p, numbers.Real) or not 0 <= p <= 1:
        fail(f"manualgrad.nn.{name}", f"p must be a probability in [0, 1], got {p!r}")

    def draw(key, shape):
        return jax.random.bernoulli(key, p, (shape[0], 1, 1, 1))

    def mirror(x, flip):
        return jnp.where(flip, x[:, :, ::-1, :], x)

    return _augmenting(name, p > 0, draw, mirror, mirror)


def RandomShift(pad: int) -> Layer:
    """Translate each image by a random offset in ``[-pad, pad]`` pixels on each axis, filling
    with zeros (training mode only; ``pad = 0`` is the identity): the "pad and random crop" of
    CIFAR training.

    With ``xp`` the image zero-padded by ``pad`` on each side and offsets ``(oy, ox)`` drawn
    uniformly from ``{0, ..., 2 pad}`` per example, ``y[n, i, j] = xp[n, i + oy, j + ox]``.
    Backward: each output pixel read one padded input pixel, so ``xp_bar[n, i + oy, j + ox] =
    g[n, i, j]`` (``g`` written into a zero canvas at the offset) and ``x_bar`` is the canvas
    without its border, ``xp_bar[n, pad:pad + H, pad:pad + W]``.
    """
    name = f"RandomShift({pad!r})"
    if isinstance(pad, bool) or not isinstance(pad, numbers.Integral) or pad < 0:
        fail(f"manualgrad.nn.{name}", f"pad must be an integer >= 0, got {pad!r}")
    pad = int(pad)

    def draw(key, shape):
        return jax.random.randint(key, (shape[0], 2), 0, 2 * pad + 1)

    def crop(x, offsets):
        n, h, w, c = x.shape
        xp = jnp.pad(x, ((0, 0), (pad, pad), (pad, pad), (0, 0)))
        return jax.vmap(lambda xi, o: lax.dynamic_slice(xi, (o[0], o[1], 0), (h, w, c)))(xp, offsets)

    def uncrop(g, offsets):
        n, h, w, c = g.shape
        canvas = jnp.zeros((h + 2 * pad, w + 2 * pad, c), g.dtype)
        xp_bar = jax.vmap(lambda gi, o: lax.dynamic_update_slice(canvas, gi, (o[0], o[1], 0)))(g, offsets)
        return xp_bar[:, pad : pad + h, pad : pad + w, :]

    return _augmenting(name, pad > 0, draw, crop, uncrop)
