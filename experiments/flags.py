"""The flags the experiments share: where their defaults come from, how ``--help`` shows them, and
the checks on their values.

Floor 1 of the experiments (see :mod:`experiments.harness`): it imports nothing of theirs.
"""

from __future__ import annotations

import argparse
import os
import pathlib
from typing import Any, Mapping

from manualgrad import data, train

CHECKPOINT = "checkpoint.npz"


class HelpFormatter(argparse.ArgumentDefaultsHelpFormatter, argparse.RawDescriptionHelpFormatter):
    """``--help`` shows each default once: appended as ``(default: ...)`` unless the help text
    already says it, and not at all for switches (``store_true``) and flags without one; the
    description keeps its own line breaks."""

    def _get_help_string(self, action: argparse.Action) -> str | None:
        if "default" in (action.help or "") or action.default is None or action.default is False:
            return action.help
        return super()._get_help_string(action)


class FlagError(ValueError):
    """Flags that the loaded data show to be unusable (reported like argparse's errors: exit status 2)."""


class Defaults:
    """Where the tunable flags' defaults come from.

    ``Defaults(table)``: one table, ``{"epochs": 10, "batch_size": 128, ...}``.
    ``Defaults(listed=tables)``: a tool that serves several tasks and learns which from a flag
    (``compare_torch --task``): the flags default to None, ``--help`` lists every task's value,
    and :func:`fill_defaults` sets them once the task is known.
    """

    def __init__(self, table: Mapping[str, Any] | None = None, *, listed: Mapping[str, Mapping[str, Any]] | None = None):
        self.table = dict(table or {})
        self.listed = dict(listed or {})

    def flag(self, key: str, help: str) -> dict[str, Any]:
        """``add_argument``'s ``default`` and ``help`` for the flag ``key``.

        Args:
            key: the flag's name as an attribute (``batch_size``).
            help: its help text.

        Returns:
            ``{"default": ..., "help": ...}``; with listed tables the default is None and the help
            ends with each task's value.
        """
        if self.listed:
            values = ", ".join(f"{name} {table[key]}" for name, table in self.listed.items())
            return {"default": None, "help": f"{help} (default: {values})"}
        return {"default": self.table[key], "help": help}


def add_size_flags(p: Any, defaults: Defaults, examples: str = "examples") -> None:
    """``--epochs`` and ``--batch-size`` (``examples``: what one training example is called, e.g. "windows")."""
    p.add_argument("--epochs", type=int, **defaults.flag("epochs", "total number of epochs"))
    p.add_argument("--batch-size", type=int, **defaults.flag("batch_size", f"{examples} per training step"))


def add_seed_flags(p: Any, examples: str = "examples") -> None:
    """``--seed`` and ``--limit``: the run's random draws and how much of the training set it uses."""
    p.add_argument("--seed", type=int, default=0, help="initial weights, shuffling and every other random draw")
    p.add_argument("--limit", type=int, default=None,
                   help=f"use only the first N training {examples} (smoke runs; default: all)")


def add_io_flags(p: Any, name: str | None, outputs: str, out: str = "runs/{task}") -> None:
    """``--data-dir`` and ``--out``.

    Args:
        p: the parser or argument group the flags go in.
        name: the dataset, whose folder ``--data-dir`` holds; None for a tool that serves several.
        outputs: what ``--out`` receives, for its help (``"metrics.json, curves.png and the checkpoint"``).
        out: ``--out``'s default, ``{task}`` standing for the dataset's name.
    """
    p.add_argument("--data-dir", default=os.environ.get(data.DATA_DIR_ENV),
                   help=f"folder holding {name or 'TASK'}/ (default: ${data.DATA_DIR_ENV}, else the online source)")
    p.add_argument("--out", default=out.format(task=name) if name else None,
                   help=f"folder for {outputs}" + ("" if name else f" (default: {out.format(task='TASK')})"))


def add_gradient_flags(p: Any) -> None:
    """``--grad`` and ``--devices``: where the gradient comes from and on how many devices."""
    p.add_argument("--grad", choices=train.GRADS, default="manual", help="where the gradient comes from")
    p.add_argument("--devices", type=int, default=None,
                   help="local devices each process trains on, data-parallel (default: all; with one device in one "
                        "process, the plain single-device step)")


def add_resume_flags(p: Any) -> None:
    """``--resume`` and ``--no-progress``."""
    p.add_argument("--resume", action="store_true",
                   help=f"continue from OUT/{CHECKPOINT} up to --epochs in all (the same settings, no fewer epochs)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")


def fill_defaults(args: argparse.Namespace, table: Mapping[str, Any]) -> None:
    """Set every flag left None by listed :class:`Defaults` to its value in ``table`` (the chosen task's)."""
    for key, value in table.items():
        if getattr(args, key, None) is None:
            setattr(args, key, value)


def flag_name(key: str) -> str:
    """``--batch-size`` for ``batch_size``."""
    return "--" + key.replace("_", "-")


def require(p: argparse.ArgumentParser, args: argparse.Namespace, *, at_least_one: tuple[str, ...] = (),
            positive: tuple[str, ...] = (), non_negative: tuple[str, ...] = (), fraction: tuple[str, ...] = ()) -> None:
    """Refuse flag values that cannot train, with argparse's error (usage, exit status 2).

    Args:
        p: the parser that reports the error.
        args: the parsed flags.
        at_least_one: flags that must be >= 1 (a flag left None is not checked).
        positive: flags that must be > 0.
        non_negative: flags that must be >= 0.
        fraction: flags that must lie in [0, 1).
    """
    rules = [(at_least_one, lambda v: v >= 1, ">= 1"), (positive, lambda v: v > 0, "> 0"),
             (non_negative, lambda v: v >= 0, ">= 0"), (fraction, lambda v: 0 <= v < 1, "in [0, 1)")]
    for keys, ok, rule in rules:
        for key in keys:
            value = getattr(args, key)
            if value is not None and not ok(value):
                p.error(f"{flag_name(key)} must be {rule}, got {value}")


def check_size_flags(p: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    """Refuse ``--epochs``, ``--batch-size`` or ``--limit`` below 1 (argparse's error)."""
    require(p, args, at_least_one=("epochs", "batch_size", "limit"))


def check_batches(args: argparse.Namespace, train_examples: int, examples: str = "examples") -> None:
    """Raise :class:`FlagError` unless the training set makes at least one batch of ``--batch-size``."""
    if train_examples < args.batch_size:
        where = f"--limit {args.limit} leaves" if args.limit is not None else "the training set has"
        raise FlagError(
            f"{where} {train_examples} training {examples}, fewer than --batch-size {args.batch_size}: "
            "not one batch to train on (lower --batch-size or raise --limit)"
        )


def out_folder(out: str | os.PathLike) -> pathlib.Path:
    """``--out`` created (with its parents) before any work is done, or a :class:`FlagError`
    saying why it cannot be."""
    path = pathlib.Path(out)
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise FlagError(f"--out {path}: cannot create the folder ({e.strerror})") from None
    return path
