"""Training: optimisers, the three gradient sources, jitted steps and epochs, evaluation, ``fit``.

One module per concept, each building on the ones before it:

* :mod:`~manualgrad.train.optimizers`: ``sgd_with_clipping``, ``adamw_with_clipping`` (optax);
* :mod:`~manualgrad.train.gradients`: ``loss_and_grad`` from ``"manual"`` (``jax.grad``
  through the hand-written VJPs), ``"explicit"`` (the layers' own backward rules, no
  ``jax.grad``) or ``"reference"`` (``jax.grad`` of the plain references), and the explicit
  all-reduce of data-parallel training;
* :mod:`~manualgrad.train.steps`: the update and the jitted train step (``make_update``,
  ``make_train_step``, ``targets_sum``), on one device or sharded over a mesh;
* :mod:`~manualgrad.train.epochs`: a whole epoch, scanned, looped or fed from the host
  (``make_epoch``, ``epoch_permutation``);
* :mod:`~manualgrad.train.evaluation`: ``evaluate``, ``METRICS``, ``check_finite``;
* :mod:`~manualgrad.train.fitting`: ``fit`` and its ``History``.

The keys every run draws from (``epoch_key``, ``step_key``) are :mod:`manualgrad.keys`.
"""

from manualgrad.keys import epoch_key, step_key
from manualgrad.train.epochs import epoch_permutation, make_epoch
from manualgrad.train.evaluation import METRICS, NonFiniteError, check_finite, evaluate
from manualgrad.train.fitting import History, fit
from manualgrad.train.gradients import GRADS, loss_and_grad
from manualgrad.train.optimizers import adamw_with_clipping, sgd_with_clipping
from manualgrad.train.steps import make_train_step, make_update, targets_sum

__all__ = [
    "GRADS",
    "NonFiniteError",
    "sgd_with_clipping",
    "adamw_with_clipping",
    "loss_and_grad",
    "make_update",
    "make_train_step",
    "targets_sum",
    "make_epoch",
    "epoch_key",
    "step_key",
    "epoch_permutation",
    "check_finite",
    "evaluate",
    "METRICS",
    "History",
    "fit",
]
