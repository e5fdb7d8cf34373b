"""A Python batch iterator, for users who want to write their own training loop.

Like seed 002's DataLoader (and PyTorch's): each pass over it is one epoch, reshuffled.
The scanned epoch of :mod:`manualgrad.train` is faster; this is the plain-Python way.
"""

from __future__ import annotations

from typing import Any, Iterator

import numpy as np

from manualgrad.errors import positive_int
from manualgrad.trees import num_examples, take

__all__ = ["Batches"]


class Batches:
    """Mini-batches ``(x[idx], y[idx])`` of NumPy arrays; every ``iter()`` is a new epoch.

    ``x`` and ``y`` are arrays or pytrees of arrays with a common leading axis (e.g. ``y`` a
    tuple with one target per head of a ``fanout`` model); batches keep their structure.

    With ``shuffle=True`` each epoch uses a fresh permutation from a NumPy generator
    seeded by ``seed`` (the k-th epoch's order is the same in every run). The last batch
    is smaller when ``len(x) % batch_size`` is not 0, unless ``drop_last=True``.
    """

    def __init__(
        self,
        x: Any,
        y: Any,
        batch_size: int,
        *,
        shuffle: bool = True,
        seed: int = 0,
        drop_last: bool = False,
    ) -> None:
        self.n = num_examples("manualgrad.data.Batches", x=x, y=y)
        self.x, self.y = x, y
        self.batch_size = positive_int("manualgrad.data.Batches", "batch_size", batch_size)
        self.shuffle, self.drop_last = shuffle, drop_last
        self._rng = np.random.default_rng(seed)

    def __len__(self) -> int:
        n, b = self.n, self.batch_size
        return n // b if self.drop_last else -(-n // b)

    def __iter__(self) -> Iterator[tuple[Any, Any]]:
        order = self._rng.permutation(self.n) if self.shuffle else np.arange(self.n)
        for i in range(len(self)):
            idx = order[i * self.batch_size : (i + 1) * self.batch_size]
            yield take((self.x, self.y), idx)
