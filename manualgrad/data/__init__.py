"""Datasets through TensorFlow Datasets, without TensorFlow, and batching.

``load("mnist" | "california_housing", data_dir=None)`` returns a :class:`Dataset` of
NumPy arrays. The data folder is ``data_dir``, else ``$MANUALGRAD_DATA_DIR``, else the
dataset's online source; see :mod:`manualgrad.data.source` for the layout and the cache.
"""

from __future__ import annotations

import os

from manualgrad.data.batches import Batches
from manualgrad.data.california_housing import load_california_housing
from manualgrad.data.mnist import load_mnist
from manualgrad.data.source import Dataset, MissingDataError, resolve_data_dir

__all__ = [
    "load",
    "load_mnist",
    "load_california_housing",
    "Batches",
    "Dataset",
    "MissingDataError",
    "resolve_data_dir",
    "LOADERS",
]

LOADERS = {"mnist": load_mnist, "california_housing": load_california_housing}


def load(name: str, data_dir: str | os.PathLike | None = None, *, cache_dir: str | os.PathLike | None = None) -> Dataset:
    """Load the dataset ``name`` (one of :data:`LOADERS`) from ``data_dir``, ``$MANUALGRAD_DATA_DIR`` or online."""
    if name not in LOADERS:
        raise ValueError(f"manualgrad.data.load: name must be one of {tuple(LOADERS)}, got {name!r}")
    return LOADERS[name](data_dir, cache_dir=cache_dir)
