"""Pytree helpers shared by training and batching: inputs and targets may be pytrees of
arrays (one target per head of a ``fanout`` model) whose leaves share a leading example axis."""

from __future__ import annotations

from typing import Any

import jax
import numpy as np

__all__ = ["num_examples", "take"]


def num_examples(where: str, **trees: Any) -> int:
    """The common leading-axis length of every array in ``trees`` (inputs and targets may be
    pytrees, e.g. one target per head); a clear ``ValueError`` when they disagree."""
    sizes = {
        f"{name}{jax.tree_util.keystr(path)}": (np.shape(leaf)[0] if np.ndim(leaf) else None)
        for name, tree in trees.items()
        for path, leaf in jax.tree_util.tree_leaves_with_path(tree)
    }
    if not sizes:
        raise ValueError(f"{where}: no arrays given")
    if None in sizes.values() or len(set(sizes.values())) != 1:
        listed = ", ".join(f"{k} has {v if v is not None else 'no leading axis'}" for k, v in sizes.items())
        raise ValueError(f"{where}: every array needs the same number of examples on its leading axis: {listed}")
    return next(iter(sizes.values()))


def take(tree: Any, idx: Any) -> Any:
    """Rows ``idx`` of every array in ``tree``."""
    return jax.tree_util.tree_map(lambda a: a[idx], tree)
