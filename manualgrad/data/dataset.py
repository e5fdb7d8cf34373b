"""The in-memory dataset and where its files are looked for; no TensorFlow Datasets needed.

:mod:`manualgrad.data.source` (which imports ``tensorflow_datasets``) builds on these, so
``manualgrad.data.Dataset``, ``manualgrad.data.Batches`` and the data-folder lookup can be
used, and ``import manualgrad`` works, without loading TFDS.
"""

from __future__ import annotations

import os
import pathlib
from dataclasses import dataclass, field
from typing import Any

import jax
import numpy as np

__all__ = ["Dataset", "MissingDataError", "DATA_DIR_ENV", "resolve_data_dir"]

DATA_DIR_ENV = "MANUALGRAD_DATA_DIR"


class MissingDataError(FileNotFoundError):
    """The dataset's files are not where they were looked for."""


@dataclass(frozen=True)
class Dataset:
    """A dataset in memory: NumPy arrays of the train and test splits, and how they were made."""

    name: str
    x_train: np.ndarray
    y_train: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray
    info: dict[str, Any] = field(default_factory=dict)

    def __repr__(self) -> str:
        def shape(tree: Any) -> Any:
            return jax.tree_util.tree_map(np.shape, tree, is_leaf=lambda a: hasattr(a, "shape"))

        return (
            f"Dataset({self.name!r}, train: x{shape(self.x_train)} y{shape(self.y_train)}, "
            f"test: x{shape(self.x_test)} y{shape(self.y_test)}, source={self.info.get('source')!r})"
        )


def resolve_data_dir(data_dir: str | os.PathLike | None) -> pathlib.Path | None:
    """``data_dir`` if given, else ``$MANUALGRAD_DATA_DIR`` if set, else ``None`` (the online source)."""
    chosen = data_dir if data_dir not in (None, "") else os.environ.get(DATA_DIR_ENV) or None
    return pathlib.Path(chosen).expanduser().resolve() if chosen is not None else None
