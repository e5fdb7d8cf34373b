"""The one path every training script takes: flags, data, model, fit, metrics.json, curves.png,
checkpoint and resume.

An :class:`Experiment` says what is particular to it: its ``--model`` choices (each with the
defaults of the training flags), its optimiser recipe, how to load its data and build the chosen
model, and a few hooks for its outputs. :func:`main` parses the flags and :func:`run` trains;
the model is built once per run and every hook reads it from the :class:`Run`.

The experiments' floors (each module imports only floors below it):

1. :mod:`experiments.flags` (defaults, help, checks) and :mod:`experiments.outputs` (curves, progress bar);
2. :mod:`experiments.optimizers` (recipes) and :mod:`experiments.runtime` (processes, mesh, machine);
3. this harness;
4. the experiments: :mod:`experiments.common` (MNIST, Fashion-MNIST, California Housing; their
   scripts ``mnist``, ``fashion_mnist``, ``california_housing``) and :mod:`experiments.shakespeare`;
5. the tools built on them: :mod:`experiments.compare_torch` and the :mod:`experiments.benchmark` package.
"""

from __future__ import annotations

import abc
import argparse
import dataclasses
import json
import math
import pathlib
import sys
import time
from typing import Any, Mapping, NamedTuple, Protocol, Sequence

import jax
import numpy as np

from experiments import flags, outputs, runtime
from experiments.optimizers import Recipe
from manualgrad import checkpoint, data, malloc, nn, parallel, train
from manualgrad.core import Op

#: flags that are no setting of the run: left out of the config (``--model`` is recorded by the experiment)
NOT_CONFIG = ("no_progress", "resume", "model")


class ModelChoice(Protocol):
    """One choice of ``--model``: its description in ``--help`` and the training flags' defaults with it."""

    summary: str
    defaults: Mapping[str, Any]


class Net(NamedTuple):
    """A built model and the loss it trains on."""

    layer: nn.Layer
    loss: Op


@dataclasses.dataclass(frozen=True)
class Run:
    """One run's settled inputs, each made once: what the experiment's hooks read.

    Attributes:
        args: the parsed, checked flags.
        model: the chosen entry of :attr:`Experiment.models`.
        data: the loaded dataset (``--limit`` applied).
        net: the model, built once, and its loss.
        params: the initial params.
    """

    args: argparse.Namespace
    model: ModelChoice
    data: data.Dataset
    net: Net
    params: Any


class Groups(NamedTuple):
    """The sections of ``--help`` an experiment adds its own flags to."""

    model: Any
    training: Any
    output: Any


class Experiment(abc.ABC):
    """What one training script supplies to the harness; the hooks' defaults suit most."""

    #: the dataset's name: ``--data-dir`` holds ``name/``, ``--out`` defaults to ``runs/name``
    name: str
    #: ``--help``'s text (the script's docstring)
    description: str
    #: ``--model``'s choices, the first the default; with one choice there is no ``--model`` flag
    models: Mapping[str, ModelChoice]
    #: the optimiser and its flags
    optimizer: Recipe
    #: what one training example is called in flags and messages ("windows" for text)
    examples: str = "examples"
    #: the epoch entry the progress bar shows besides the training loss
    headline: str = "test_loss"
    #: the experiment's own flags (attribute names, or its config's keys) that change the trajectory
    resume_keys: tuple[str, ...] = ()
    #: files the run writes besides metrics.json, curves.png and the checkpoint (see :meth:`files`)
    extra_files: tuple[str, ...] = ()

    def add_flags(self, groups: Groups, defaults: flags.Defaults) -> None:
        """Add the experiment's own flags (model sizes, sampling) to ``groups``."""

    def check(self, p: argparse.ArgumentParser, args: argparse.Namespace) -> None:
        """Refuse values of the experiment's own flags that cannot train (argparse's error)."""

    @abc.abstractmethod
    def load(self, model: ModelChoice, args: argparse.Namespace) -> data.Dataset:
        """The dataset, prepared for training ``model`` (the harness applies ``--limit``)."""

    @abc.abstractmethod
    def build(self, model: ModelChoice, args: argparse.Namespace, ds: data.Dataset) -> Net:
        """The chosen model and its loss for ``ds`` (the harness calls this once per run)."""

    def keys(self, seed: int) -> tuple[jax.Array, jax.Array]:
        """The initial params' key and the shuffling key from ``--seed`` (:func:`seed_keys`)."""
        return seed_keys(seed)

    def fit_options(self, run: Run) -> dict[str, Any]:
        """Further keyword arguments of :func:`manualgrad.train.fit` (``metric``, ``scan``, ...)."""
        return {}

    def config(self, run: Run) -> tuple[dict[str, Any], dict[str, Any]]:
        """Config entries before the flags (what was trained) and after them (facts of the data)."""
        return {}, {}

    def epoch_metrics(self, run: Run, entry: Mapping[str, Any]) -> dict[str, Any]:
        """Entries added to each epoch's (``test_bits_per_char``); keys ``test_*`` reach metrics.json's ``test``."""
        return {}

    def files(self, run: Run, history: train.History) -> dict[str, str]:
        """The :attr:`extra_files` and their text, from the trained model."""
        return {}

    @abc.abstractmethod
    def panels(self, run: Run, history: train.History) -> list[outputs.Panel]:
        """The panels of ``curves.png``."""

    @abc.abstractmethod
    def result(self, model: ModelChoice, args: argparse.Namespace, test: Mapping[str, float]) -> str:
        """The run's result for the last line it prints, from metrics.json's ``test``:
        ``784-256-128-10 grad=manual: test accuracy 98.28%``."""


def parser(experiment: Experiment, model: str) -> argparse.ArgumentParser:
    """The flags of ``experiment`` with the defaults of its ``--model`` choice ``model``."""
    choice = experiment.models[model]
    defaults = flags.Defaults(choice.defaults)
    p = argparse.ArgumentParser(description=experiment.description, formatter_class=flags.HelpFormatter)
    groups = Groups(p.add_argument_group("model"), p.add_argument_group("training"),
                    p.add_argument_group("data and output"))
    if len(experiment.models) > 1:
        listed = "; ".join(f"{name}: {m.summary}" for name, m in experiment.models.items())
        groups.model.add_argument("--model", choices=tuple(experiment.models), default=model, help=(
            f"{listed} (each has its own defaults for the other flags, shown here for the chosen one)"))
    flags.add_size_flags(groups.training, defaults, experiment.examples)
    experiment.optimizer.add_flags(groups.training, defaults)
    flags.add_seed_flags(groups.training, experiment.examples)
    flags.add_gradient_flags(groups.training)
    written = ", ".join(("metrics.json", "curves.png", "the checkpoint", *experiment.extra_files))
    flags.add_io_flags(groups.output, experiment.name, " and".join(written.rsplit(",", 1)))
    flags.add_resume_flags(groups.output)
    experiment.add_flags(groups, defaults)
    return p


def chosen_model(experiment: Experiment, argv: Sequence[str] | None) -> str:
    """The ``--model`` in ``argv`` (the first choice without one), read before the parser is built
    because it picks the other flags' defaults."""
    first = next(iter(experiment.models))
    if len(experiment.models) == 1:
        return first
    pre = argparse.ArgumentParser(add_help=False)
    pre.add_argument("--model", choices=tuple(experiment.models), default=first)
    return pre.parse_known_args(argv)[0].model


def main(experiment: Experiment, argv: Sequence[str] | None = None) -> int:
    """Run ``experiment`` from the command line.

    Args:
        experiment: what to train.
        argv: the flags (default: ``sys.argv[1:]``).

    Returns:
        The exit status: 0, or 1 for missing data, a refused checkpoint, a non-finite loss or an
        unreachable coordinator. Unusable flags exit with status 2 (argparse's ``SystemExit``).
    """
    if not runtime.join_processes():
        return 1
    model = chosen_model(experiment, argv)
    p = parser(experiment, model)
    args = p.parse_args(argv)
    flags.check_size_flags(p, args)
    experiment.optimizer.check(p, args)
    experiment.check(p, args)
    try:
        metrics = run(experiment, experiment.models[model], args)
    except flags.FlagError as e:
        p.error(str(e))
    except (data.MissingDataError, DataError, checkpoint.CheckpointError, train.NonFiniteError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    if runtime.is_writer():
        print(summary(experiment, experiment.models[model], args, metrics))
    return 0


class DataError(Exception):
    """A data file that is there but cannot be read (truncated, wrong columns): ``main`` prints
    its message, which names the file, without a traceback."""


def run(experiment: Experiment, model: ModelChoice, args: argparse.Namespace) -> dict[str, Any]:
    """Train ``model`` of ``experiment`` with ``args``; write metrics.json, curves.png, the
    checkpoint after every epoch and the experiment's extra files into ``--out``.

    Args:
        experiment: what to train.
        model: the chosen entry of ``experiment.models``.
        args: the parsed, checked flags.

    Returns:
        The metrics written to ``metrics.json``.

    Raises:
        FlagError: the data or the machine do not fit the flags.
    """
    # freed memory stays in the process, so each step's XLA temporaries land on warm pages
    # (manualgrad.malloc; a process-wide glibc setting, recorded in the config)
    reuse_memory = malloc.reuse_freed_memory()
    out = flags.out_folder(args.out)
    try:  # process 0 prepares the dataset's cache, the others then read it
        ds = parallel.one_process_first(lambda: limited(experiment.load(model, args), args.limit), "load the data")
    except flags.FlagError:
        raise
    except ValueError as e:  # a data file that is there but cannot be read
        raise DataError(str(e)) from None
    flags.check_batches(args, len(ds.x_train), experiment.examples)
    mesh = runtime.mesh_for(args.devices, args.batch_size)
    init_key, shuffle_key = experiment.keys(args.seed)
    net = experiment.build(model, args, ds)
    _, params = net.layer.init(init_key, (1, *np.shape(ds.x_train)[1:]))
    setup = Run(args, model, ds, net, params)
    config = run_config(experiment, setup, runtime.run_environment(reuse_memory, mesh))
    bar = outputs.progress_bar(args.epochs, f"{experiment.name} ({args.grad})", args.no_progress or not runtime.is_writer())

    def on_epoch(entry: dict, params: Any) -> None:
        shown = {**entry, **experiment.epoch_metrics(setup, entry)}
        bar.n = entry["epoch"]
        bar.set_postfix({"loss": f"{entry['train_loss']:.4f}", experiment.headline: f"{shown[experiment.headline]:.4f}"})

    start = time.perf_counter()
    history = train.fit(
        net.layer, net.loss, experiment.optimizer.build(args, len(ds.x_train)), params, ds,
        epochs=args.epochs, batch_size=args.batch_size, key=shuffle_key, grad=args.grad,
        checkpoint_path=out / flags.CHECKPOINT, resume=args.resume, config={k: config[k] for k in resume_keys(experiment)},
        on_epoch=on_epoch, mesh=mesh, **experiment.fit_options(setup),
    )
    bar.close()
    for entry in history.epochs:
        entry.update(experiment.epoch_metrics(setup, entry))
    last = history.epochs[-1]
    metrics = {
        "config": config,
        "compile_seconds": history.compile_seconds,
        "seconds": time.perf_counter() - start,
        "epochs": history.epochs,
        "test": {k.removeprefix("test_"): v for k, v in last.items() if k.startswith("test_")},
        "step_loss": history.step_losses,
    }
    if runtime.is_writer():  # in a multi-process run one process writes the files
        (out / "metrics.json").write_text(json.dumps(metrics, indent=2))
        outputs.save_figure(out / "curves.png", experiment.panels(setup, history))
    files = experiment.files(setup, history)
    if runtime.is_writer():
        for name, text in files.items():
            (out / name).write_text(text)
    return metrics


def run_config(experiment: Experiment, setup: Run, environment: dict[str, Any]) -> dict[str, Any]:
    """metrics.json's ``config``: the experiment's entries, the flags (but :data:`NOT_CONFIG`), the
    data's sizes and source, then where it ran (``environment``)."""
    head, tail = experiment.config(setup)
    ds = setup.data
    return {
        **head,
        **{k: v for k, v in vars(setup.args).items() if k not in NOT_CONFIG},
        f"train_{experiment.examples}": len(ds.x_train),
        f"test_{experiment.examples}": len(ds.x_test),
        "data_source": ds.info.get("source"),
        **tail,
        **environment,
    }


def resume_keys(experiment: Experiment) -> tuple[str, ...]:
    """The config entries that change the trajectory: ``--resume`` refuses a checkpoint written with others."""
    return (*experiment.resume_keys, "batch_size", *experiment.optimizer.resume_keys, "seed", "grad", "limit")


def seed_keys(seed: int) -> tuple[jax.Array, jax.Array]:
    """``(init, shuffle)``: the two halves of ``PRNGKey(seed)``, the initial params' key and the
    shuffling key (epoch ``e`` shuffles with ``train.epoch_key(shuffle, e)``)."""
    init, shuffle = jax.random.split(jax.random.PRNGKey(seed))
    return init, shuffle


def limited(ds: data.Dataset, limit: int | None) -> data.Dataset:
    """``ds`` with only its first ``limit`` training examples (all of them for None)."""
    if limit is None:
        return ds
    return dataclasses.replace(ds, x_train=ds.x_train[:limit], y_train=ds.y_train[:limit])


def summary(experiment: Experiment, model: ModelChoice, args: argparse.Namespace, metrics: Mapping[str, Any]) -> str:
    """The line a run prints at its end: the result, epochs, time and what it wrote."""
    epochs = metrics["epochs"]
    per_epoch = np.median([r["seconds"] for r in epochs]) if epochs else math.nan
    wrote = " and ".join((str(pathlib.Path(args.out) / "metrics.json"), *experiment.extra_files))
    return (f"{experiment.name} {experiment.result(model, args, metrics['test'])} after {len(epochs)} epochs "
            f"({per_epoch:.2f} s/epoch median, {metrics['seconds'] / 60:.1f} min in all); wrote {wrote}")
