r"""Elementwise activations, each a reference, a forward with residuals and a backward.

For an elementwise $y = f(x)$ the Jacobian is diagonal, so the VJP is the elementwise
product

$$
\bar{x} = g \odot f'(x);
$$

each op below only has to say what $f'$ is and which residual it needs to evaluate it.
"""

from __future__ import annotations

import math
from typing import Callable

import jax
import jax.numpy as jnp
import numpy as np
from jax.scipy.special import erf

from manualgrad.core import Example, defop
from manualgrad.errors import fail

_SHAPES = [(), (5,), (3, 4), (2, 3, 4)]


def _elementwise_examples(
    kinks: bool = False, **params: float
) -> Callable[[np.random.Generator], list[Example]]:
    """Examples on several shapes. ``kinks=True`` (piecewise ops) keeps values away from
    0, where the derivative jumps, and adds one array that holds exact zeros."""

    def examples(rng: np.random.Generator) -> list[Example]:
        out = []
        for shape in _SHAPES:
            x = rng.normal(size=shape) * 2
            if kinks:
                x = np.where(np.abs(x) < 0.05, 0.5, x)
            out.append(Example((x,), dict(params)))
        if kinks:
            out.append(Example((np.array([-1.5, 0.0, 0.0, 2.0]),), dict(params)))
        return out

    return examples


# -- identity ------------------------------------------------------------------
@defop(examples=_elementwise_examples())
def identity(x: jax.Array) -> jax.Array:
    r"""$y = x$. $dy/dx = 1$, so $\bar{x} = g$. No residuals."""
    return x


def identity_fwd(x: jax.Array) -> tuple[jax.Array, tuple]:
    return x, ()


def identity_bwd(res: tuple, g: jax.Array) -> tuple[jax.Array]:
    return (g,)


identity.defvjp(identity_fwd, identity_bwd)


# -- relu ----------------------------------------------------------------------
@defop(examples=_elementwise_examples(kinks=True), smooth=False)
def relu(x: jax.Array) -> jax.Array:
    r"""$y = \max(x, 0)$.

    $dy/dx = 1$ where $x > 0$ and $0$ elsewhere, including at $x = 0$ (the PyTorch and
    ``jax.nn.relu`` convention), so

    $$
    \bar{x} = g \odot \mathbb{1}[x > 0].
    $$

    A NaN input gives a NaN output (as in PyTorch and ``jax.nn.relu``), so NaNs are never
    silently zeroed: the mask is ``not (x <= 0)``, true for positive and NaN inputs.
    Residual: that boolean mask (one byte per element, no float copy).
    """
    return jnp.where(x <= 0, 0.0, x)


def relu_fwd(x: jax.Array) -> tuple[jax.Array, jax.Array]:
    mask = ~(x <= 0)
    return jnp.where(mask, x, 0.0), mask


def relu_bwd(res: jax.Array, g: jax.Array) -> tuple[jax.Array]:
    return (jnp.where(res, g, 0.0),)


relu.defvjp(relu_fwd, relu_bwd)


# -- leaky_relu ----------------------------------------------------------------
@defop(static=("negative_slope",), examples=_elementwise_examples(kinks=True, negative_slope=0.1), smooth=False)
def leaky_relu(x: jax.Array, negative_slope: float = 0.01) -> jax.Array:
    r"""$y = x$ where $x > 0$, else $a x$ with $a$ = ``negative_slope``.

    $dy/dx = 1$ where $x > 0$ and $a$ elsewhere (also at 0, as in PyTorch), so

    $$
    \bar{x} = g \odot \left(\mathbb{1}[x > 0] + a\, \mathbb{1}[x \le 0]\right).
    $$

    Residual: the mask.
    """
    return jnp.where(x > 0, x, negative_slope * x)


def leaky_relu_fwd(x: jax.Array, negative_slope: float = 0.01) -> tuple[jax.Array, jax.Array]:
    mask = x > 0
    return jnp.where(mask, x, negative_slope * x), mask


def leaky_relu_bwd(res: jax.Array, g: jax.Array, negative_slope: float = 0.01) -> tuple[jax.Array]:
    return (jnp.where(res, g, negative_slope * g),)


leaky_relu.defvjp(leaky_relu_fwd, leaky_relu_bwd)


# -- scaled_relu ---------------------------------------------------------------
@defop(static=("scale",), examples=_elementwise_examples(kinks=True, scale=3.0), smooth=False)
def scaled_relu(x: jax.Array, scale: float) -> jax.Array:
    r"""$y = s \max(x, 0)$ with $s$ = ``scale``; seed 003's "3ReLU" is ``scale=3``.

    $dy/dx = s$ where $x > 0$ and $0$ elsewhere: the Jacobian is the diagonal matrix with $s$
    where the input is positive, so

    $$
    \bar{x} = s\, g \odot \mathbb{1}[x > 0].
    $$

    Residual: the mask ``not (x <= 0)`` (NaN propagates, as in
    [relu][manualgrad.ops.relu]).
    """
    return scale * jnp.where(x <= 0, 0.0, x)


def scaled_relu_fwd(x: jax.Array, scale: float) -> tuple[jax.Array, jax.Array]:
    mask = ~(x <= 0)
    return jnp.where(mask, scale * x, 0.0), mask


def scaled_relu_bwd(res: jax.Array, g: jax.Array, scale: float) -> tuple[jax.Array]:
    return (jnp.where(res, scale * g, 0.0),)


scaled_relu.defvjp(scaled_relu_fwd, scaled_relu_bwd)


# -- sigmoid -------------------------------------------------------------------
@defop(examples=_elementwise_examples())
def sigmoid(x: jax.Array) -> jax.Array:
    r"""$y = \sigma(x) = 1 / (1 + e^{-x})$, written here as $(1 + \tanh(x/2)) / 2$, which is
    the same function without overflow for large $|x|$.

    $$
    \frac{dy}{dx} = \frac{e^{-x}}{(1 + e^{-x})^2} = y (1 - y),
    \qquad \bar{x} = g \odot y \odot (1 - y).
    $$

    Residual: the output $y$ alone.
    """
    return 0.5 * (jnp.tanh(0.5 * x) + 1.0)


def sigmoid_fwd(x: jax.Array) -> tuple[jax.Array, jax.Array]:
    y = jax.nn.sigmoid(x)
    return y, y


def sigmoid_bwd(res: jax.Array, g: jax.Array) -> tuple[jax.Array]:
    y = res
    return (g * y * (1.0 - y),)


sigmoid.defvjp(sigmoid_fwd, sigmoid_bwd)


# -- tanh ----------------------------------------------------------------------
@defop(examples=_elementwise_examples())
def tanh(x: jax.Array) -> jax.Array:
    r"""$y = \tanh(x)$. $dy/dx = 1 - \tanh^2(x) = 1 - y^2$, so $\bar{x} = g \odot (1 - y^2)$.
    Residual: the output $y$."""
    return jnp.tanh(x)


def tanh_fwd(x: jax.Array) -> tuple[jax.Array, jax.Array]:
    y = jnp.tanh(x)
    return y, y


def tanh_bwd(res: jax.Array, g: jax.Array) -> tuple[jax.Array]:
    y = res
    return (g * (1.0 - y * y),)


tanh.defvjp(tanh_fwd, tanh_bwd)


# -- softplus ------------------------------------------------------------------
@defop(examples=_elementwise_examples())
def softplus(x: jax.Array) -> jax.Array:
    r"""$y = \log(1 + e^x)$, computed as ``logaddexp(x, 0)`` so large $x$ does not overflow.

    $dy/dx = e^x / (1 + e^x) = \sigma(x)$, so $\bar{x} = g \odot \sigma(x)$.
    Residual: $x$.
    """
    return jnp.logaddexp(x, 0.0)


def softplus_fwd(x: jax.Array) -> tuple[jax.Array, jax.Array]:
    return jnp.logaddexp(x, 0.0), x


def softplus_bwd(res: jax.Array, g: jax.Array) -> tuple[jax.Array]:
    return (g * jax.nn.sigmoid(res),)


softplus.defvjp(softplus_fwd, softplus_bwd)


# -- gelu ----------------------------------------------------------------------
_SQRT_2_OVER_PI = math.sqrt(2.0 / math.pi)
_INV_SQRT_2PI = 1.0 / math.sqrt(2.0 * math.pi)


def _gelu_examples(rng: np.random.Generator) -> list[Example]:
    return _elementwise_examples()(rng) + _elementwise_examples(approximate=True)(rng)


def _check_gelu(x: jax.Array, approximate: bool = False) -> None:
    if not isinstance(approximate, (bool, np.bool_)):
        fail("manualgrad.ops.gelu", f"approximate={approximate!r} must be True (the tanh form, PyTorch's "
                                    "approximate='tanh') or False (the exact form, PyTorch's 'none')")


@defop(static=("approximate",), check=_check_gelu, examples=_gelu_examples)
def gelu(x: jax.Array, approximate: bool = False) -> jax.Array:
    r"""Gaussian error linear unit; the exact form by default (PyTorch's default).

    Exact: $y = x\, \Phi(x)$ with $\Phi(x) = \tfrac{1}{2}\left(1 + \operatorname{erf}(x / \sqrt{2})\right)$,
    the standard normal CDF, whose derivative is the density
    $\varphi(x) = e^{-x^2/2} / \sqrt{2\pi}$. Product rule:

    $$
    \frac{dy}{dx} = \Phi(x) + x\, \varphi(x).
    $$

    ``approximate=True`` (PyTorch's ``approximate="tanh"``): $y = \tfrac{1}{2} x (1 + \tanh u)$
    with $u = \sqrt{2/\pi}\,(x + 0.044715\, x^3)$, so

    $$
    \frac{dy}{dx} = \frac{1 + \tanh u}{2} + \frac{x}{2} \left(1 - \tanh^2 u\right) \sqrt{2/\pi}\,\left(1 + 3 \cdot 0.044715\, x^2\right).
    $$

    $\bar{x} = g \odot dy/dx$. Residual: $x$. The forward writes $\Phi$ as
    $\tfrac{1}{2} + \tfrac{1}{2}\operatorname{erf}(x / \sqrt{2})$, as PyTorch does
    ($\tfrac{1}{2}\operatorname{erfc}(-x / \sqrt{2})$ is more accurate where $\Phi$ is tiny,
    but XLA:CPU evaluates ``erfc`` 2.6x slower than ``erf``, and $y$ and $\bar{x}$ are both tiny
    there), and $(1 + \tanh u)/2$ as $\sigma(2u)$; both are pinned to ``jax.nn.gelu`` and
    PyTorch's GELU by the tests.
    """
    if approximate:
        u = _SQRT_2_OVER_PI * (x + 0.044715 * x**3)
        return 0.5 * x * (1.0 + jnp.tanh(u))
    return 0.5 * x * (1.0 + erf(x / math.sqrt(2.0)))


def _gelu_gate(x: jax.Array, approximate: bool) -> jax.Array:
    """``Phi(x)``, or its tanh approximation ``(1 + tanh u) / 2 = sigmoid(2u)``."""
    if approximate:
        return jax.nn.sigmoid(2.0 * _SQRT_2_OVER_PI * (x + 0.044715 * x**3))
    return 0.5 + 0.5 * erf(x * (1.0 / math.sqrt(2.0)))


def gelu_fwd(x: jax.Array, approximate: bool = False) -> tuple[jax.Array, jax.Array]:
    return x * _gelu_gate(x, approximate), x


def gelu_bwd(res: jax.Array, g: jax.Array, approximate: bool = False) -> tuple[jax.Array]:
    x = res
    gate = _gelu_gate(x, approximate)
    if approximate:  # d/dx sigmoid(2u) = 2 sigmoid (1 - sigmoid) du/dx = (1 - tanh(u)**2) / 2 du/dx
        du = _SQRT_2_OVER_PI * (1.0 + 3 * 0.044715 * x * x)
        return (g * (gate + x * 2.0 * gate * (1.0 - gate) * du),)
    pdf = _INV_SQRT_2PI * jnp.exp(-0.5 * x * x)
    return (g * (gate + x * pdf),)


gelu.defvjp(gelu_fwd, gelu_bwd)


# -- square --------------------------------------------------------------------
@defop(examples=_elementwise_examples())
def square(x: jax.Array) -> jax.Array:
    r"""$y = x^2$ (seed 004's $f(Y) = Y^2$). $dy/dx = 2x$, so $\bar{x} = 2 x \odot g$.
    Residual: $x$."""
    return x * x


def square_fwd(x: jax.Array) -> tuple[jax.Array, jax.Array]:
    return x * x, x


def square_bwd(res: jax.Array, g: jax.Array) -> tuple[jax.Array]:
    return (2.0 * res * g,)


square.defvjp(square_fwd, square_bwd)
