"""A whole model verified in one call: every gradient from the three sources, layer by layer."""

from __future__ import annotations

import dataclasses
from typing import Any, Sequence

import jax
import jax.numpy as jnp

from manualgrad.check.report import Row, row
from manualgrad.check.tolerances import TOLERANCES, cast
from manualgrad.core import reference_mode

__all__ = ["LayerCheck", "ModelReport", "check_model"]


@dataclasses.dataclass(frozen=True)
class LayerCheck:
    """One layer of a model in one dtype: rows such as ``dL/dx manual`` or ``dL/dw explicit``,
    each comparing that gradient source with the reference."""

    dtype: str
    index: int
    path: str
    name: str
    rows: tuple[Row, ...]

    @property
    def passed(self) -> bool:
        return all(r.passed for r in self.rows)


@dataclasses.dataclass(frozen=True)
class ModelReport:
    """What :func:`check_model` found: one :class:`LayerCheck` per layer and dtype, plus the loss."""

    layers: tuple[LayerCheck, ...]

    @property
    def passed(self) -> bool:
        return all(layer.passed for layer in self.layers)

    def sources(self) -> dict[str, int]:
        """Per dtype, the index of the failing layer nearest the output: the backward pass reaches it
        first, so the error enters there (every layer after it passes); the failures before it may
        only carry its error. Dtypes where no layer's gradients fail are left out."""
        found: dict[str, int] = {}
        for layer in self.layers:
            if layer.name != "loss" and not layer.passed:
                found[layer.dtype] = max(found.get(layer.dtype, -1), layer.index)
        return found

    def __str__(self) -> str:
        lines = ["gradients of the manual and explicit passes against jax.grad of the references "
                 "(max relative error, normwise per array)"]
        sources = self.sources()
        for layer in self.layers:
            cells = "  ".join(f"{r.what} {r.max_rel:.1e}" if not r.error else f"{r.what} {r.error}" for r in layer.rows)
            source = sources.get(layer.dtype)
            status = "ok" if layer.passed else "FAILED"
            if not layer.passed and layer.name != "loss" and source is not None:
                status += (" <- the error enters here: every layer after it passes" if layer.index == source else
                           f" (downstream of [{source}] in the backward pass: may only carry its error; recheck "
                           f"after fixing [{source}])")
            lines.append(f"  {layer.dtype:<8} [{layer.index}] {layer.path or '-':<10} {layer.name:<12} {status}  {cells}")
            if layer.passed or (source is not None and layer.index < source):
                continue
            for r in layer.rows:
                if not r.passed:
                    lines += [f"      {r.what}: " + r.explain().replace("\n", "\n        "), f"      {r}"]
        lines.append("PASSED" if self.passed else "FAILED")
        return "\n".join(lines)

    def assert_ok(self) -> "ModelReport":
        if not self.passed:
            raise AssertionError(str(self))
        return self


def _floating(tree: Any) -> bool:
    return all(jnp.issubdtype(jnp.result_type(a), jnp.floating) for a in jax.tree_util.tree_leaves(tree))


def _subtree(params: Any, path: str) -> Any:
    """The params of the layer at a trace path: ``"2.head1.0"`` is ``params[2][1][0]``."""
    for part in filter(None, path.split(".")):
        params = params[int(part[4:] if part.startswith("head") else part)]
    return params


def check_model(
    model: Any,
    loss: Any,
    params: Any,
    x: Any,
    y: Any,
    *,
    state: Any = None,
    key: Any = None,
    dtypes: Sequence[Any] = (jnp.float32, jnp.float64),
) -> ModelReport:
    """Verify a whole model in one call: every parameter gradient and every layer's input
    cotangent from ``grad="manual"`` (``jax.grad`` through the hand-written VJPs) and
    ``grad="explicit"`` (the layers' own backward pass), each against ``jax.grad`` of the
    plain references, in each dtype (floating leaves of ``params``, ``x`` and ``y`` are cast).

    The model runs in training mode, as for a training step. Layer input cotangents come from
    zero taps added to every layer's input (see :func:`manualgrad.trace.tapping`).

    Args:
      model: a :class:`manualgrad.nn.Layer`.
      loss: an op taking ``(prediction, y)``.
      params: the model's params.
      x: a batch of inputs.
      y: its targets.
      state: the model's state (batch norm), if it has one.
      key: a ``jax.random`` key, for layers that draw random numbers (dropout).
      dtypes: the floating dtypes to check in.

    Returns:
      A :class:`ModelReport`; ``print`` it for one line per layer, or call ``.assert_ok()``.
    """
    from manualgrad import backprop, trace  # the model layer sits above the checks

    layers = []
    with jax.enable_x64(True), jax.default_matmul_precision("highest"):
        for dtype in dtypes:
            p, xs, ys, st = cast((params, x, y, state), dtype)
            tol = TOLERANCES[jnp.dtype(dtype)]
            explicit = jax.jit(backprop.value_and_grad(model, loss, trace=True))(p, xs, ys, state=st, key=key)
            value_e, grads_e, tape = explicit[0], explicit[1], explicit[-1]
            entries = tape.entries[:-1]  # the last entry is the loss
            # integer inputs (an Embedding's token ids) have no cotangent: no tap, no dL/dx row
            taps = {e.path: jax.tree_util.tree_map(jnp.zeros_like, e.x) for e in entries if _floating(e.x)}

            def objective(p, taps):
                with trace.tapping(taps):
                    prediction, _ = model.call(p, st, xs, key=key, train=True)
                    return loss(prediction, ys)

            value_and_grads = jax.jit(jax.value_and_grad(objective, argnums=(0, 1)))
            value_m, (grads_m, taps_m) = value_and_grads(p, taps)
            with reference_mode():  # the mode is part of the jit key: this traces the references
                value_r, (grads_r, taps_r) = value_and_grads(p, taps)
            name = str(jnp.dtype(dtype))
            layers.append(LayerCheck(name, len(entries), "", "loss", (
                row("value manual", value_m, value_r, tol), row("value explicit", value_e, value_r, tol))))
            for i, e in enumerate(entries):
                rows = [] if e.path not in taps else [
                    row("dL/dx manual", taps_m[e.path], taps_r[e.path], tol),
                    row("dL/dx explicit", e.x_bar, taps_r[e.path], tol)]
                if not e.name.startswith(("fanout", "residual")):  # combinators: their layers' rows hold the params
                    ref = _subtree(grads_r, e.path)
                    for (kp, r), m, x_ in zip(jax.tree_util.tree_leaves_with_path(ref),
                                              jax.tree_util.tree_leaves(_subtree(grads_m, e.path)),
                                              jax.tree_util.tree_leaves(_subtree(grads_e, e.path))):
                        label = "dL/d" + (jax.tree_util.keystr(kp, simple=True, separator=".") or "params")
                        rows += [row(f"{label} manual", m, r, tol), row(f"{label} explicit", x_, r, tol)]
                layers.append(LayerCheck(name, i, e.path, e.name, tuple(rows)))
    return ModelReport(tuple(sorted(layers, key=lambda l: (l.dtype, l.index))))
