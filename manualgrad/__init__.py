"""manualgrad: neural-network layers and losses whose every derivative is written by hand.

Each op is a plain forward plus a hand-derived VJP registered with ``jax.custom_vjp``
(:mod:`manualgrad.core`), proven against ``jax.grad`` of the plain reference
(:mod:`manualgrad.check`).
"""

from manualgrad import backprop, check, core, losses, nn, ops, trace
from manualgrad.core import Example, Op, defop, reference_mode, register

__version__ = "0.1.0"

__all__ = [
    "backprop",
    "check",
    "core",
    "losses",
    "nn",
    "ops",
    "trace",
    "Example",
    "Op",
    "defop",
    "reference_mode",
    "register",
]
