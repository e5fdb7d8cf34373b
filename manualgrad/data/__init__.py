"""Datasets through TensorFlow Datasets, without TensorFlow, and batching.

``load("mnist" | "fashion_mnist" | "california_housing" | "shakespeare", data_dir=None)``
returns a :class:`Dataset` of NumPy arrays (for ``shakespeare``, windows of character ids). The data folder is ``data_dir``, else
``$MANUALGRAD_DATA_DIR``, else the dataset's online source; see :mod:`manualgrad.data.source`
for the layout and the cache.

Only the loaders need ``tensorflow_datasets`` (the ``data`` extra): they are imported on
first use (``load``, ``load_mnist``, ``load_fashion_mnist``, ``load_california_housing``,
``load_shakespeare``, ``LOADERS``), so :class:`Dataset`, :class:`Batches` and :class:`MissingDataError` work
without it.
"""

from __future__ import annotations

import importlib
import os
from typing import Any, Callable

from manualgrad.data.batches import Batches
from manualgrad.data.dataset import DATA_DIR_ENV, Dataset, MissingDataError, resolve_data_dir

__all__ = [
    "load",
    "load_mnist",
    "load_fashion_mnist",
    "load_california_housing",
    "load_shakespeare",
    "Batches",
    "Dataset",
    "MissingDataError",
    "DATA_DIR_ENV",
    "resolve_data_dir",
    "LOADERS",
    "NAMES",
]

NAMES = ("mnist", "fashion_mnist", "california_housing", "shakespeare")


def _loaders() -> dict[str, Callable[..., Dataset]]:
    """The loader of each of :data:`NAMES` (importing them imports ``tensorflow_datasets``)."""
    from manualgrad.data.california_housing import load_california_housing
    from manualgrad.data.fashion_mnist import load_fashion_mnist
    from manualgrad.data.mnist import load_mnist
    from manualgrad.data.shakespeare import load_shakespeare

    return {"mnist": load_mnist, "fashion_mnist": load_fashion_mnist, "california_housing": load_california_housing,
            "shakespeare": load_shakespeare}


def __getattr__(name: str) -> Any:
    """``LOADERS``, ``load_<name>`` for each of :data:`NAMES` and the TFDS-backed submodules
    (``source``, ``mnist``, ``fashion_mnist``, ``california_housing``, ``shakespeare``), imported on first use (PEP 562)."""
    if name == "LOADERS" or name in {f"load_{n}" for n in NAMES}:
        loaders = _loaders()
        globals().update(LOADERS=loaders, **{f"load_{n}": loader for n, loader in loaders.items()})
        return globals()[name]
    if name in ("source", *NAMES):
        return importlib.import_module(f"{__name__}.{name}")
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))


def load(
    name: str, data_dir: str | os.PathLike | None = None, *, cache_dir: str | os.PathLike | None = None, **options: Any
) -> Dataset:
    """Load the dataset ``name`` (one of :data:`NAMES`) from ``data_dir``, ``$MANUALGRAD_DATA_DIR`` or
    online; ``options`` go to its loader (``shakespeare``: ``context``, ``seed``)."""
    if name not in NAMES:
        raise ValueError(f"manualgrad.data.load: name must be one of {NAMES}, got {name!r}")
    return _loaders()[name](data_dir, cache_dir=cache_dir, **options)
