"""The key tree: every random number a run draws comes from its one key by ``fold_in``.

```text
key                                  the run's key (fit(key=...))
├─ epoch_key(key, e)                 epoch e (1-based): shuffles that epoch's examples
│  └─ step_key(epoch_key, i)         step i (0-based) of the epoch: the model's key
│     ├─ device_key(k, d)            device d of a data-parallel step (its rows' masks)
│     └─ child_key(k, i)             child i of serial/fanout/residual, recursively
│                                    down to each dropout or augmentation layer
```

Each key depends only on the run's key and its position in the tree, never on a counter
or on how many draws came before: a resumed run redraws exactly the masks and the orders
of an uninterrupted one, and adding a layer to a model changes no other layer's masks.
"""

from __future__ import annotations

import jax

__all__ = ["epoch_key", "step_key", "device_key", "child_key"]


def epoch_key(key: jax.Array, epoch: int) -> jax.Array:
    """The shuffling key of epoch ``epoch`` (1-based): ``fold_in(key, epoch)``.

    Each epoch's order depends only on the run's key and the epoch number, so a resumed
    run shuffles exactly as an uninterrupted one.
    """
    return jax.random.fold_in(key, epoch)


def step_key(key: jax.Array, step: jax.Array | int) -> jax.Array:
    """The model's key at step ``step`` (0-based) of the epoch whose shuffling key is ``key``:
    ``fold_in(fold_in(key, 1), step)``, independent of the shuffling permutation's."""
    return jax.random.fold_in(jax.random.fold_in(key, 1), step)


def device_key(key: jax.Array | None, device: jax.Array | int) -> jax.Array | None:
    """The key of device ``device`` of a data-parallel step: ``fold_in(key, device)`` (None stays None)."""
    return None if key is None else jax.random.fold_in(key, device)


def child_key(key: jax.Array | None, i: int) -> jax.Array | None:
    """The key of a container's ``i``-th child: ``fold_in(key, i)`` (None stays None)."""
    return None if key is None else jax.random.fold_in(key, i)
