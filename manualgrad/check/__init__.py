"""Verification: every hand-written VJP against ``jax.vjp`` of the op's plain reference.

* :func:`check_vjp` compares the manual VJP with ``jax.vjp(op.reference)`` for random
  cotangents (``method="fast"``: ``v^T J u`` for random ``u, v``; ``method="fd"``: central
  finite differences) and returns a :class:`Report` with one :class:`Row` per
  output/argument: max absolute and relative error and pass/fail against :data:`TOLERANCES`;
  optionally under ``jit`` or ``vmap``.
* A failed row says where and how: ``worst`` (index, manual and reference value of its largest
  error) and ``diagnosis``, whose first word is ``scale``, ``sign``, ``zero``, ``transpose``,
  ``cotangent``, ``nonfinite`` or ``unexplained`` (:mod:`~manualgrad.check.diagnose`);
  ``row.plot(path)`` and ``report.plot(directory)`` draw it.
* :func:`check_hvp` compares second derivatives (Hessian-vector products, reverse over
  reverse); :func:`jacobian` builds a full Jacobian from the manual VJPs and
  :func:`check_jacobian` compares it with ``jax.jacrev`` of the reference.
* :func:`check_no_autodiff` traces an op's backward with JAX's autodiff switched off
  (:func:`no_autodiff`): a "hand-written" rule that calls ``jax.vjp``, ``jax.grad``,
  ``jax.linear_transpose`` or any alias of them fails.
* :func:`check_op` runs all of the above over an op's registered examples;
  :func:`check_rule` over a rule that is not registered (reference, fwd, bwd, example arrays).
* :func:`check_model` compares a whole model's gradients from the three sources (manual,
  explicit, reference), parameter by parameter and layer by layer.
* ``python -m manualgrad.check`` (:func:`main`) runs the checks on registered ops.

Forward mode (``jax.jvp``, ``jax.jacfwd``) cannot differentiate ``custom_vjp`` functions;
wrap such code in :func:`manualgrad.core.reference_mode` to differentiate the references.

The modules, bottom up: ``tolerances``, ``diagnose``, ``plot`` (matplotlib on use only),
``report``, ``guard`` (the only one touching JAX internals), ``arguments``, ``vjp``,
``jacobians``, ``rules``, ``model``, ``cli``.
"""

from manualgrad.check.cli import main
from manualgrad.check.diagnose import WORDS, Worst
from manualgrad.check.guard import AutodiffError, no_autodiff
from manualgrad.check.jacobians import check_hvp, check_jacobian, jacobian
from manualgrad.check.model import LayerCheck, ModelReport, check_model
from manualgrad.check.report import Report, Row
from manualgrad.check.rules import check_no_autodiff, check_op, check_rule, stack_examples
from manualgrad.check.tolerances import FD_TOLERANCE, TOLERANCES, cast
from manualgrad.check.vjp import check_vjp

__all__ = [
    "TOLERANCES",
    "FD_TOLERANCE",
    "WORDS",
    "Row",
    "Report",
    "Worst",
    "cast",
    "check_vjp",
    "check_hvp",
    "jacobian",
    "check_jacobian",
    "check_op",
    "check_rule",
    "check_model",
    "check_no_autodiff",
    "no_autodiff",
    "AutodiffError",
    "LayerCheck",
    "ModelReport",
    "stack_examples",
    "main",
]
