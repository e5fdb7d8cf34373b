"""Recording every layer's values during the explicit reverse pass.

While :func:`recording` is active, each primitive layer (``Linear``, an activation,
``Flatten``) adds one :class:`Entry` when its ``fwd`` runs and fills in the gradients
when its ``bwd`` runs; a ``fanout`` adds one too, whose ``dL/dx`` is the sum of its
branches' input gradients. Recording happens while Python runs the layers, so it also
works under ``jit``: the entries are returned as outputs of the traced function.
``serial`` and ``fanout`` add their child's label to the entry's ``path``.

:func:`tapping` serves the checks: every primitive layer's ``apply`` adds a (zero) tap to
its input, so ``jax.grad`` with respect to the taps is each layer's input cotangent.
"""

from __future__ import annotations

import contextlib
import contextvars
import dataclasses
from typing import Any, Iterator

import jax
import jax.numpy as jnp
import numpy as np

__all__ = ["Entry", "Trace", "recording", "tapping", "scope", "tap", "record_forward", "fill_output", "record_backward"]


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


def _shape(tree: Any) -> str:
    shapes = [tuple(np.shape(a)) for a in jax.tree_util.tree_leaves(tree)]
    if len(shapes) == 1 and not isinstance(tree, (tuple, list)):
        return str(shapes[0]).replace(" ", "")
    return "(" + ", ".join(str(s).replace(" ", "") for s in shapes) + ")"


def _norm(tree: Any) -> str:
    leaves = [np.asarray(a, np.float64) for a in jax.tree_util.tree_leaves(tree)]
    return f"{np.sqrt(sum(float(np.sum(a * a)) for a in leaves)):.4g}"


def _format_array(a: Any, indent: int) -> str:
    text = np.array2string(np.asarray(a), precision=8, suppress_small=True, max_line_width=100)
    return text.replace("\n", "\n" + " " * indent)


def _named_params(params_bar: Any) -> list[tuple[str, Any]]:
    """``[("w", w_bar), ("b", b_bar)]`` for a layer's parameter gradients, in any pytree layout."""
    return [(jax.tree_util.keystr(path, simple=True, separator=".") or "params", leaf)
            for path, leaf in jax.tree_util.tree_leaves_with_path(params_bar)]


@jax.tree_util.register_pytree_node_class
class Trace:
    """The entries of one pass in forward order.

    ``print(trace)`` gives one line per layer: its path, name, input and output shapes, and
    the L2 norms of ``y``, ``dL/dy``, ``dL/dx`` and each parameter gradient; a ``fanout``
    line marks where the branches' input gradients are summed, a ``residual`` line where the
    skip path's is added to its branch's. ``trace.format(arrays=True)``
    prints every array in full.
    """

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

    def format(self, arrays: bool = False) -> str:
        """The transcript: one line per layer, or with ``arrays=True`` every array in full."""
        width = max((len(e.path or "-") for e in self.entries), default=1)
        lines = []
        for i, e in enumerate(self.entries):
            summed = {"fanout": f" (sum of {len(e.y)} branches)" if isinstance(e.y, tuple) else "",
                      "residual": " (skip + branch)"}.get(e.name.split("(")[0], "")
            head = f"[{i}] {e.path or '-':<{width}}  {e.name}"
            if not arrays:
                parts = [f"x{_shape(e.x)} -> y{_shape(e.y)}", f"|y|={_norm(e.y)}"]
                if e.y_bar is not None:
                    parts.append(f"|dL/dy|={_norm(e.y_bar)}")
                if e.x_bar is not None:
                    parts.append(f"|dL/dx|={_norm(e.x_bar)}" + summed)
                parts += [f"|dL/d{k}|={_norm(v)}" for k, v in _named_params(e.params_bar)]
                lines.append(head + "  " + "  ".join(parts))
                continue
            lines.append(head + ("  (dL/dx is the sum of the branches' dL/dx)" if e.name.startswith("fanout") else
                                 "  (dL/dx is the skip path's dL/dy plus the branch's dL/dx)" if summed else ""))
            rows = [("x", e.x), ("y", e.y), ("dL/dy", e.y_bar), ("dL/dx", e.x_bar)]
            rows += [(f"dL/d{k}", v) for k, v in _named_params(e.params_bar)]
            for label, value in rows:
                for j, leaf in enumerate(jax.tree_util.tree_leaves(value)):
                    many = len(jax.tree_util.tree_leaves(value)) > 1
                    lines.append(f"    {label + (f'[{j}]' if many else ''):<9}= " + _format_array(leaf, 16))
        return "\n".join(lines)

    def __str__(self) -> str:
        return self.format()

    __repr__ = __str__


class _Tape:
    def __init__(self, taps: dict[str, Any] | None = None) -> None:
        self.entries: list[Entry] = []
        self.path: list[str] = []
        self.taps = taps


_TAPE: contextvars.ContextVar[_Tape | None] = contextvars.ContextVar("manualgrad_tape", default=None)


@contextlib.contextmanager
def _active(tape: _Tape | None) -> Iterator[_Tape | None]:
    token = _TAPE.set(tape)
    try:
        yield tape
    finally:
        _TAPE.reset(token)


def recording(enabled: bool = True) -> contextlib.AbstractContextManager[_Tape | None]:
    """Record the layers run inside this context (nothing if ``enabled`` is False)."""
    return _active(_Tape() if enabled else None)


def tapping(taps: dict[str, Any]) -> contextlib.AbstractContextManager[_Tape | None]:
    """Inside, each primitive layer's and fanout's ``apply`` adds ``taps[path]`` to its input."""
    return _active(_Tape(taps))


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


def tap(x: Any) -> Any:
    """``x`` plus this layer's tap while :func:`tapping`; ``x`` itself otherwise."""
    tape = _TAPE.get()
    if tape is None or tape.taps is None:
        return x
    path = ".".join(tape.path)
    if path not in tape.taps:  # integer ids (an Embedding's input) get no tap: they have no cotangent
        return x
    return jax.tree_util.tree_map(jnp.add, x, tape.taps[path])


def record_forward(name: str, x: Any, y: Any) -> int | None:
    """Open an entry for a layer's forward; returns its slot (None when not recording)."""
    tape = _TAPE.get()
    if tape is None or tape.taps is not None:
        return None
    tape.entries.append(Entry(".".join(tape.path), name, x, y))
    return len(tape.entries) - 1


def fill_output(slot: int | None, y: Any) -> None:
    """Set the output of the entry opened at ``slot`` (for a fanout, once its branches have run)."""
    tape = _TAPE.get()
    if tape is not None and slot is not None:
        tape.entries[slot] = dataclasses.replace(tape.entries[slot], y=y)


def record_backward(slot: int | None, y_bar: Any, params_bar: Any, x_bar: Any) -> None:
    """Fill in the gradients of the entry opened at ``slot``."""
    tape = _TAPE.get()
    if tape is None or slot is None:
        return
    e = tape.entries[slot]
    tape.entries[slot] = dataclasses.replace(e, y_bar=y_bar, x_bar=x_bar, params_bar=params_bar)
