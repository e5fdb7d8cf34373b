"""The experiments' optimisers as recipes: each adds its flags, checks them, names those that change
the trajectory, and builds the optax transformation from the parsed flags.

Floor 2 of the experiments (see :mod:`experiments.harness`): imports :mod:`experiments.flags` only.
"""

from __future__ import annotations

import abc
import argparse
from typing import Any

import optax

from experiments.flags import Defaults, require
from manualgrad import train


class Recipe(abc.ABC):
    """An optimiser as the flags describe it."""

    #: the flags (attribute names) that change the training trajectory: ``--resume`` refuses others
    resume_keys: tuple[str, ...]

    @abc.abstractmethod
    def add_flags(self, p: Any, defaults: Defaults) -> None:
        """Add the optimiser's flags to the parser or argument group ``p``, defaults from ``defaults``."""

    @abc.abstractmethod
    def check(self, p: argparse.ArgumentParser, args: argparse.Namespace) -> None:
        """Refuse values that cannot train (argparse's error); settle defaults that depend on other flags."""

    @abc.abstractmethod
    def build(self, args: argparse.Namespace, train_examples: int) -> optax.GradientTransformation:
        """The optimiser for a training set of ``train_examples`` (the schedule counts steps)."""


class SGD(Recipe):
    """SGD with momentum, weight decay and clipping (:func:`manualgrad.train.sgd_with_clipping`), the
    rate decayed to 0 on a cosine over ``--decay-epochs`` (default: the default ``--epochs``) or constant."""

    resume_keys = ("lr", "schedule", "decay_epochs", "momentum", "weight_decay", "max_norm")

    def add_flags(self, p: Any, defaults: Defaults) -> None:
        p.add_argument("--lr", type=float, **defaults.flag("lr", "SGD learning rate (the peak of the cosine schedule)"))
        p.add_argument("--schedule", choices=("cosine", "constant"), default="cosine",
                       help="learning rate per step: cosine decay from --lr to 0 over --decay-epochs, or constant")
        p.add_argument("--decay-epochs", type=int, **defaults.flag(
            "decay_epochs", "length of the cosine decay in epochs (fixed apart from --epochs, so a run stopped early "
            "and resumed follows the same schedule; after it the rate stays 0)"))
        p.add_argument("--momentum", type=float, **defaults.flag("momentum", "SGD momentum (0 for plain SGD)"))
        p.add_argument("--weight-decay", type=float, **defaults.flag(
            "weight_decay", "L2 weight decay: weight_decay * params added to the clipped gradient (torch.optim.SGD's)"))
        p.add_argument("--max-norm", type=float, **defaults.flag("max_norm", "clip the gradient to this global L2 norm"))

    def check(self, p: argparse.ArgumentParser, args: argparse.Namespace) -> None:
        require(p, args, at_least_one=("decay_epochs",), positive=("lr", "max_norm"), fraction=("momentum",),
                non_negative=("weight_decay",))

    def build(self, args: argparse.Namespace, train_examples: int) -> optax.GradientTransformation:
        return train.sgd_with_clipping(sgd_learning_rate(args, train_examples), args.max_norm, args.momentum,
                                       args.weight_decay)


def sgd_learning_rate(args: argparse.Namespace, train_examples: int) -> optax.ScalarOrSchedule:
    """The ``--lr``/``--schedule``/``--decay-epochs`` flags as an optax learning rate (per step).

    Args:
        args: the parsed flags (``lr``, ``schedule``, ``decay_epochs``, ``batch_size``).
        train_examples: the training set's size (an epoch is ``train_examples // batch_size`` steps).

    Returns:
        ``--lr`` itself for a constant rate, else the cosine schedule.
    """
    if args.schedule == "constant":
        return args.lr
    return optax.cosine_decay_schedule(args.lr, args.decay_epochs * (train_examples // args.batch_size))


class AdamW(Recipe):
    """AdamW with clipping (:func:`manualgrad.train.adamw_with_clipping`): a linear warm-up to
    ``--lr`` over ``--warmup-steps``, then a cosine to 0 at ``--decay-epochs`` (default: ``--epochs``)."""

    resume_keys = ("lr", "warmup_steps", "decay_epochs", "weight_decay", "max_norm")

    def add_flags(self, p: Any, defaults: Defaults) -> None:
        p.add_argument("--lr", type=float, **defaults.flag("lr", "peak AdamW learning rate"))
        p.add_argument("--warmup-steps", type=int, **defaults.flag("warmup_steps", "linear warm-up from 0 to --lr"))
        p.add_argument("--decay-epochs", type=int, default=None,
                       help="length of warm-up plus cosine decay, in epochs (default: --epochs)")
        p.add_argument("--weight-decay", type=float,
                       **defaults.flag("weight_decay", "AdamW's decoupled weight decay (matrices only)"))
        p.add_argument("--max-norm", type=float, **defaults.flag("max_norm", "clip the gradient to this global L2 norm"))

    def check(self, p: argparse.ArgumentParser, args: argparse.Namespace) -> None:
        if args.decay_epochs is None:
            args.decay_epochs = args.epochs
        require(p, args, at_least_one=("decay_epochs",), positive=("lr", "max_norm"),
                non_negative=("warmup_steps", "weight_decay"))

    def build(self, args: argparse.Namespace, train_examples: int) -> optax.GradientTransformation:
        total = args.decay_epochs * (train_examples // args.batch_size)
        schedule = optax.warmup_cosine_decay_schedule(0.0, args.lr, min(args.warmup_steps, total - 1), max(total, 1))
        return train.adamw_with_clipping(schedule, args.max_norm, args.weight_decay)
