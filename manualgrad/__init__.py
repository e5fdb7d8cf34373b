"""manualgrad: neural-network layers and losses whose every derivative is written by hand.

Each op is a plain forward plus a hand-written VJP registered with ``jax.custom_vjp``
(:mod:`manualgrad.core`), proven against ``jax.grad`` of the plain reference
(:mod:`manualgrad.check`).

:mod:`manualgrad.train`, :mod:`manualgrad.data` and :mod:`manualgrad.checkpoint` are imported
on first use (``manualgrad.train`` works after ``import manualgrad``), so importing the
package stays light; TensorFlow Datasets is loaded only by the dataset loaders.
"""

import importlib
from typing import Any

from manualgrad import backprop, check, core, losses, nn, ops, trace
from manualgrad.core import Example, Op, defop, reference_mode, register

__version__ = "0.1.0"

__all__ = [
    "backprop",
    "check",
    "checkpoint",
    "core",
    "data",
    "losses",
    "nn",
    "ops",
    "trace",
    "train",
    "Example",
    "Op",
    "defop",
    "reference_mode",
    "register",
]

_LAZY = ("checkpoint", "data", "train")


def __getattr__(name: str) -> Any:
    """The submodules of ``_LAZY``, imported on first use (PEP 562)."""
    if name in _LAZY:
        return importlib.import_module(f"manualgrad.{name}")
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
