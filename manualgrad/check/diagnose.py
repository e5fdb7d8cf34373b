"""What kind of mistake a failed comparison shows, each hypothesis tested against the numbers.

A failed row compares a manual array with the reference (a cotangent, a forward output, a
Hessian-vector product, a Jacobian). :func:`diagnose` tests these hypotheses in order and names
the first one the numbers confirm; the diagnosis starts with its word:

==============  ==================================================================================
``nonfinite``   NaN or infinity on one side only
``cotangent``   the manual cotangent does not double when the output cotangent doubles: the rule
                ignores ``g`` or uses it nonlinearly (tested only where the rule can be rerun)
``zero``        manual is 0 at every element where it differs from the reference
``sign``        manual = -reference
``scale``       manual = c * reference for one constant c (needs two nonzero reference elements)
``transpose``   manual is the reference with two axes swapped, shapes included
``unexplained`` none of the above
==============  ==================================================================================

A hypothesis holds when it reproduces every manual value within the row's own tolerance
(``atol + rtol * max |reference|``), so a diagnosis is as certain as a pass. ``cotangent`` comes
before ``scale`` because a loss's rule that ignores its scalar ``g`` is ``reference / g``, which
a constant factor would also fit. Doubling is exact in floating point, so a rule that is linear
in ``g`` (every correct rule) doubles bit for bit.
"""

from __future__ import annotations

import dataclasses
import itertools
from typing import Callable, NamedTuple, Sequence

import numpy as np

__all__ = ["WORDS", "Worst", "Finding", "error_map", "diagnose", "diagnose_shapes"]

WORDS = ("nonfinite", "cotangent", "zero", "sign", "scale", "transpose", "unexplained")


class Worst(NamedTuple):
    """Where a row's largest error is. ``index`` indexes the compared array (when a row compares
    several arrays, its first entry is the array's path); ``manual`` and ``reference`` are the
    two values there."""

    index: tuple
    manual: float
    reference: float


@dataclasses.dataclass(frozen=True)
class Finding:
    """A failed comparison explained: its worst element, the diagnosis, and the array pair that
    holds the worst element (kept for pictures)."""

    worst: Worst | None
    diagnosis: str
    manual: np.ndarray
    reference: np.ndarray


def error_map(got: np.ndarray, want: np.ndarray) -> np.ndarray:
    """``|got - want|`` per element, in float64: 0 where both are the same NaN or infinity,
    ``inf`` where a NaN or infinity is on one side only."""
    g, w = np.asarray(got, np.float64), np.asarray(want, np.float64)
    same = (g == w) | (np.isnan(g) & np.isnan(w))
    one_sided = ~same & ~(np.isfinite(g) & np.isfinite(w))
    with np.errstate(invalid="ignore"):
        return np.where(same, 0.0, np.where(one_sided, np.inf, np.abs(g - w)))


def _largest(a: np.ndarray) -> float:
    return float(np.max(np.abs(a[np.isfinite(a)]), initial=0.0))


def diagnose(
    what: str,
    got: Sequence[np.ndarray],
    want: Sequence[np.ndarray],
    rtol: float,
    atol: float,
    paths: Sequence[str] = (),
    rescaled: Callable[[], Sequence[np.ndarray]] | None = None,
) -> Finding:
    """Explain why ``got`` (manual) differs from ``want`` (reference), arrays of equal shapes.

    Args:
      what: the row's name, e.g. ``x_bar#0`` (the part before ``#`` names the array in words).
      got: the manual arrays.
      want: the reference arrays, one per manual array, of the same shapes.
      rtol: the row's relative tolerance.
      atol: the row's absolute tolerance.
      paths: each array's path, when there are several (they prefix the worst index).
      rescaled: reruns the manual rule with the output cotangent doubled and returns its
        arrays; ``None`` where there is no cotangent (forward outputs, Jacobians).

    Returns:
      A :class:`Finding`: the worst element and a diagnosis whose first word is in :data:`WORDS`.
    """
    got = [np.asarray(a, np.float64) for a in got]
    want = [np.asarray(a, np.float64) for a in want]
    errors = [error_map(g, w) for g, w in zip(got, want)]
    k = max(range(len(errors)), key=lambda i: np.max(errors[i], initial=0.0))
    at = np.unravel_index(np.argmax(errors[k]), errors[k].shape) if errors[k].size else ()
    index = tuple(int(i) for i in at)
    worst = Worst(((paths[k],) if len(got) > 1 else ()) + index, float(got[k][at]), float(want[k][at]))
    name = what.split("#")[0]
    flat_got = np.concatenate([g.ravel() for g in got])
    flat_want = np.concatenate([w.ravel() for w in want])
    scale = _largest(flat_want)
    bound = atol + rtol * scale
    text = (
        _nonfinite(name, flat_got, flat_want)
        or (rescaled is not None and _cotangent(name, flat_got, np.concatenate([np.ravel(a) for a in rescaled()]), bound))
        or _zero(name, flat_got, flat_want, bound, atol)
        or _sign(name, flat_got, flat_want, bound)
        or _scale(name, flat_got, flat_want, rtol, atol, scale)
        or _transpose(name, got, want, bound)
        or (_one_number(name, flat_got, flat_want) if flat_want.size == 1 else
            f"unexplained — {name} differs from the reference by up to {float(np.max(errors[k])) / (scale or 1):.3g} of "
            "the reference's largest value, and no constant factor, sign flip, missing term (zeros), transpose or "
            "ignored cotangent explains it: recheck the derivation at the element below")
    )
    return Finding(worst, text, got[k], want[k])


def diagnose_shapes(what: str, got: np.ndarray, want: np.ndarray, rtol: float, atol: float) -> Finding:
    """Explain a manual array whose shape differs from the reference's: ``transpose`` when it is
    the reference with two axes swapped, else ``unexplained``."""
    got, want = np.asarray(got, np.float64), np.asarray(want, np.float64)
    name = what.split("#")[0]
    shapes = f"{name} has shape {got.shape} but the reference {want.shape}"
    axes = _swapped_axes(got, want, atol + rtol * _largest(want))
    if axes is None:
        text = f"unexplained — {shapes}: a cotangent has exactly its primal's shape (sum over broadcast axes)"
    else:
        text = f"transpose — {shapes}: it is the reference with axes {axes[0]} and {axes[1]} swapped; transpose it"
    return Finding(None, text, got, want)


def _nonfinite(name: str, got: np.ndarray, want: np.ndarray) -> str | None:
    one_sided = np.isinf(error_map(got, want))
    if not one_sided.any():
        return None
    manual_side = int(np.sum(one_sided & ~np.isfinite(got)))
    reference_side = int(np.sum(one_sided)) - manual_side
    where = []
    if manual_side:
        where.append(f"{name} is NaN or infinite at {manual_side} of {got.size} elements where the reference is not")
    if reference_side:
        where.append(f"the reference is NaN or infinite at {reference_side} elements where {name} is not")
    return f"nonfinite — {' and '.join(where)}: look for a division by zero, a log or square root of 0, or an overflow"


def _cotangent(name: str, got: np.ndarray, doubled: np.ndarray, bound: float) -> str | None:
    if np.max(error_map(doubled, 2 * got), initial=0.0) <= 2 * bound:
        return None
    finite = np.isfinite(got) & np.isfinite(doubled)
    norm = float(np.dot(got[finite], got[finite]))
    factor = f"by {float(np.dot(doubled[finite], got[finite])) / norm:.4g}" if norm else "from 0 to nonzero values"
    return (f"cotangent — {name} does not scale with the output cotangent g: doubling g changes {name} {factor}, not "
            "by 2. A backward is linear in g (the chain rule: x_bar = g times the derivative): multiply by g, once")


def _part(name: str) -> str:
    """What a row's mistake is in: the forward computation for a forward output, else the derivative."""
    return "the forward computation" if name.startswith("forward") else "the derivative"


def _zero(name: str, got: np.ndarray, want: np.ndarray, bound: float, atol: float) -> str | None:
    differs = error_map(got, want) > bound
    if not differs.any() or np.any(np.abs(got[differs]) > atol):
        return None
    missing, nonzero = int(np.sum(differs)), int(np.sum(np.abs(want) > bound))
    where = "wherever the reference is nonzero" if missing >= nonzero else f"at {missing} of the {nonzero} elements where the reference is not"
    return f"zero — {name} is 0 {where}: a term, a branch or a mask of {_part(name)} is missing"


def _sign(name: str, got: np.ndarray, want: np.ndarray, bound: float) -> str | None:
    if np.max(error_map(-got, want), initial=0.0) > bound:
        return None
    return f"sign — {name} is minus the reference everywhere: {_part(name)} has the wrong sign"


def _scale(name: str, got: np.ndarray, want: np.ndarray, rtol: float, atol: float, scale: float) -> str | None:
    finite = np.isfinite(got) & np.isfinite(want)
    if np.sum(np.abs(want[finite]) > atol + rtol * scale) < 2:  # one number fits any factor: no evidence
        return None
    c = float(np.dot(got[finite], want[finite]) / np.dot(want[finite], want[finite]))
    if abs(c - 1.0) <= rtol:  # a factor the tolerance itself allows is rounding, not a mistake
        return None
    if np.max(error_map(got, c * want), initial=0.0) > atol + rtol * max(1.0, abs(c)) * scale:
        return None
    return f"scale {c:.7g} — {name} is {c:.7g} times the reference everywhere: a constant factor in {_part(name)} is wrong"


def _one_number(name: str, got: np.ndarray, want: np.ndarray) -> str:
    """A row of one number (a directional check, v^T J u): its ratio, which one number cannot pin down."""
    ratio = f"manual / reference = {float(got[0]) / float(want[0]):.7g}" if want[0] else f"the reference is 0, manual {float(got[0]):.4g}"
    return (f"unexplained — {name} is a single number, {ratio}: a ratio such as 2, 0.5 or "
            "-1 suggests a constant factor or a sign, but one number cannot tell; a comparison of every element "
            "(method='reference', on an example of more than one element) can")


def _transpose(name: str, got: Sequence[np.ndarray], want: Sequence[np.ndarray], bound: float) -> str | None:
    found = []
    for g, w in zip(got, want):
        if np.max(error_map(g, w), initial=0.0) <= bound:
            continue
        axes = _swapped_axes(g, w, bound)
        if axes is None:
            return None
        found.append(axes)
    if not found:
        return None
    i, j = found[0]
    return (f"transpose — {name} is the reference with axes {i} and {j} swapped: transpose the result, or swap "
            "the operands of the matrix product (x.T @ g, not g.T @ x)")


def _swapped_axes(got: np.ndarray, want: np.ndarray, bound: float) -> tuple[int, int] | None:
    """The first axes ``(i, j)`` such that ``got`` is ``want`` with them swapped, within ``bound``."""
    for i, j in itertools.combinations(range(want.ndim), 2):
        if want.shape[i] == want.shape[j] == 1:
            continue
        swapped = np.swapaxes(want, i, j)
        if swapped.shape == got.shape and np.max(error_map(got, swapped), initial=0.0) <= bound:
            return i, j
    return None
