"""Recording every layer's values during the explicit reverse pass.

While :func:`recording` is active, each primitive layer (``Linear``, an activation,
``Flatten``) adds one :class:`Entry` when its ``fwd`` runs and fills in the gradients
when its ``bwd`` runs. Recording happens while Python runs the layers, so it also
works under ``jit``: the entries are returned as outputs of the traced function.
``serial`` and ``fanout`` only add their child's index to the entry's ``path``.
"""

from __future__ import annotations

import contextlib
import contextvars
import dataclasses
from typing import Any, Iterator

import jax
import numpy as np

__all__ = ["Entry", "Trace", "recording", "scope", "record_forward", "record_backward"]


@dataclasses.dataclass
class Entry:
    """One layer's values in one forward/backward pass."""

    path: str
    name: str
    x: Any
    y: Any
    y_bar: Any = None
    x_bar: Any = None
    params_bar: Any = None


jax.tree_util.register_dataclass(
    Entry, data_fields=["x", "y", "y_bar", "x_bar", "params_bar"], meta_fields=["path", "name"]
)


def _format_array(a: Any, indent: int) -> str:
    text = np.array2string(np.asarray(a), precision=8, suppress_small=True, max_line_width=100)
    return text.replace("\n", "\n" + " " * indent)


@jax.tree_util.register_pytree_node_class
class Trace:
    """The entries of one pass in forward order; ``str(trace)`` prints a transcript."""

    def __init__(self, entries: tuple[Entry, ...]):
        self.entries = tuple(entries)

    def tree_flatten(self):
        return (self.entries,), None

    @classmethod
    def tree_unflatten(cls, aux, children):
        return cls(children[0])

    def __len__(self) -> int:
        return len(self.entries)

    def __getitem__(self, i: int) -> Entry:
        return self.entries[i]

    def __iter__(self) -> Iterator[Entry]:
        return iter(self.entries)

    def __str__(self) -> str:
        lines = []
        for i, e in enumerate(self.entries):
            lines.append(f"[{i}] {e.path or '-'}  {e.name}")
            rows = [("x", e.x), ("y", e.y), ("dL/dy", e.y_bar), ("dL/dx", e.x_bar)]
            if isinstance(e.params_bar, dict):
                rows += [(f"dL/d{k}", v) for k, v in e.params_bar.items()]
            for label, value in rows:
                if value is not None:
                    lines.append(f"    {label:<7}= " + _format_array(value, 14))
        return "\n".join(lines)

    __repr__ = __str__


class _Tape:
    def __init__(self) -> None:
        self.entries: list[Entry] = []
        self.path: list[str] = []


_TAPE: contextvars.ContextVar[_Tape | None] = contextvars.ContextVar("manualgrad_tape", default=None)


@contextlib.contextmanager
def recording(enabled: bool = True) -> Iterator[_Tape | None]:
    """Record the primitive layers run inside this context (nothing if ``enabled`` is False)."""
    tape = _Tape() if enabled else None
    token = _TAPE.set(tape)
    try:
        yield tape
    finally:
        _TAPE.reset(token)


@contextlib.contextmanager
def scope(label: str) -> Iterator[None]:
    """Add ``label`` to the path of every entry recorded inside (used by serial and fanout)."""
    tape = _TAPE.get()
    if tape is not None:
        tape.path.append(label)
    try:
        yield
    finally:
        if tape is not None:
            tape.path.pop()


def record_forward(name: str, x: Any, y: Any) -> int | None:
    """Open an entry for a layer's forward; returns its slot (None when not recording)."""
    tape = _TAPE.get()
    if tape is None:
        return None
    tape.entries.append(Entry(".".join(tape.path), name, x, y))
    return len(tape.entries) - 1


def record_backward(slot: int | None, y_bar: Any, params_bar: Any, x_bar: Any) -> None:
    """Fill in the gradients of the entry opened at ``slot``."""
    tape = _TAPE.get()
    if tape is None or slot is None:
        return
    e = tape.entries[slot]
    tape.entries[slot] = dataclasses.replace(e, y_bar=y_bar, x_bar=x_bar, params_bar=params_bar)
