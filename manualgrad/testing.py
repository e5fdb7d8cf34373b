"""Assertions for your own test suite: a hand-written rule is correct, or the failure says how.

```python
from manualgrad.testing import assert_rule_correct

def test_cube():
    assert_rule_correct(cube, cube_fwd, cube_bwd, np.random.default_rng(0).normal(size=(4, 3)))
```

A failure raises ``AssertionError`` whose message starts with the diagnosis of the first failed
row (``scale 1.000333 — x_bar is 1.000333 times the reference everywhere: ...``), then lists
every failed check; pytest shows it as the test's failure.
"""

from __future__ import annotations

from typing import Any, Callable, Sequence

import jax.numpy as jnp
import numpy as np

from manualgrad import check
from manualgrad.core import Example, Op

__all__ = ["assert_rule_correct", "assert_op_correct", "failure_message"]


def failure_message(reports: Sequence[check.Report]) -> str:
    """The diagnosis of the first failed row, then one line per failed check, then the first
    failed report in full; ``""`` when every report passed."""
    failed = [r for r in reports if not r.passed]
    if not failed:
        return ""
    first = failed[0]
    lines = [f"{first.op}: {first.failed[0].what}: {first.failed[0].explain()}", "",
             f"{len(failed)} of {len(reports)} checks failed:"]
    lines += [f"  [{r.mode}, {r.dtype}] " + "; ".join(f"{row.what}: {row.diagnosis.split(' — ')[0]}" for row in r.failed)
              for r in failed]
    return "\n".join(lines + ["", str(first)])


def _assert(reports: Sequence[check.Report]) -> list[check.Report]:
    __tracebackhide__ = True  # pytest shows the caller's line
    message = failure_message(reports)
    if message:
        raise AssertionError(message)
    return list(reports)


def assert_rule_correct(reference: Callable, fwd: Callable, bwd: Callable, *args: Any, **options: Any) -> list[check.Report]:
    """Assert that a rule that is not registered passes every check (:func:`check.check_rule`).

    Args:
      reference: the plain ``jax.numpy`` forward.
      fwd: ``fwd(*arrays, **static) -> (y, res)``.
      bwd: ``bwd(res, g, **static)``, one cotangent per array argument.
      *args: the example arrays.
      **options: ``constant``, ``static``, ``smooth``, ``dtypes``, ``seed``, ``fast``, as for
        :func:`manualgrad.check.check_rule`.

    Returns:
      The reports, all passed.

    Raises:
      AssertionError: with the diagnosis of the first failed row as the message's first line.
    """
    __tracebackhide__ = True
    return _assert(check.check_rule(reference, fwd, bwd, *args, **options))


def assert_op_correct(
    op: Op,
    examples: Callable[[np.random.Generator], Sequence[Example]] | None = None,
    *,
    dtypes: Sequence[Any] = (jnp.float64, jnp.float32),
    fast: bool = False,
) -> list[check.Report]:
    """Assert that an op passes every check on its examples (:func:`check.check_op`).

    Args:
      op: the op (made with ``defop``).
      examples: ``examples(rng) -> [Example, ...]``; default: the registered ones.
      dtypes: the floating dtypes to check in.
      fast: compare ``v^T J u`` first (a failure still gets the full comparison).

    Returns:
      The reports, all passed.

    Raises:
      AssertionError: with the diagnosis of the first failed row as the message's first line.
    """
    __tracebackhide__ = True
    return _assert(check.check_op(op, examples, dtypes=dtypes, fast=fast))
