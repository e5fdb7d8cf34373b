"""What the MNIST, Fashion-MNIST and California Housing experiments share: the task, the flags, the run.

A :class:`Task` fixes a dataset, its model (an MLP with ReLU hidden layers, or for images a
CNN: ``--model cnn``), its loss, its test metric and its default hyperparameters; :func:`main` parses the flags of DESIGN.md, trains with
:func:`manualgrad.train.fit` (one scanned, compiled epoch at a time, a checkpoint after
each), and writes ``metrics.json`` and ``curves.png`` into ``--out``.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import pathlib
import sys
from typing import Any, Callable, Sequence

import jax
import numpy as np
import optax

from manualgrad import checkpoint, data, losses, malloc, nn, parallel, train
from manualgrad.core import Op

CHECKPOINT = "checkpoint.npz"
# flags that change the trajectory: --resume refuses a checkpoint written with other values
RESUME_MUST_MATCH = (
    "model", "batch_size", "lr", "schedule", "decay_epochs", "momentum", "weight_decay", "max_norm", "seed", "grad", "limit"
)


@dataclasses.dataclass(frozen=True)
class Task:
    """A dataset with its model, loss, test metric and default flags."""

    name: str
    input_shape: tuple[int, ...]
    hidden: tuple[int, ...]
    outputs: int
    loss: Op
    metric: str  # "accuracy" (higher is better) or "mse" (lower is better)
    prepare: Callable[[data.Dataset], data.Dataset]
    defaults: dict[str, Any]
    arch: str = "mlp"  # "mlp", or "cnn" (see cnn())
    cnn_regularised: bool = False  # the CNN with batch norm and dropout

    @property
    def widths(self) -> list[int]:
        """Layer widths, input first: ``[784, 256, 128, 10]`` for MNIST."""
        return [int(np.prod(self.input_shape)), *self.hidden, self.outputs]

    @property
    def architecture(self) -> str:
        """``784-256-128-10`` for an MLP; ``cnn`` (or ``cnn-bn-dropout``) for the CNN."""
        if self.arch == "cnn":
            return "cnn-bn-dropout" if self.cnn_regularised else "cnn"
        return "-".join(str(d) for d in self.widths)

    def model(self) -> nn.Layer:
        """The MLP: flatten, then Linear+ReLU per hidden size, then a Linear output layer; or :func:`cnn`."""
        if self.arch == "cnn":
            return cnn(self.outputs, self.cnn_regularised)
        layers = [nn.Flatten()] if len(self.input_shape) > 1 else []
        for width in self.hidden:
            layers += [nn.Linear(width), nn.ReLU()]
        return nn.serial(*layers, nn.Linear(self.outputs))

    def init(self, seed: int) -> Any:
        """Initial params from ``PRNGKey(seed)`` (the shuffling key is another split of it)."""
        _, params = self.model().init(jax.random.split(jax.random.PRNGKey(seed))[0], (1, *self.input_shape))
        return params

    def load(self, data_dir: str | None, limit: int | None = None) -> data.Dataset:
        """The prepared dataset; ``limit`` keeps the first ``limit`` training examples (smoke runs)."""
        ds = self.prepare(data.load(self.name, data_dir))
        if limit is not None:
            ds = dataclasses.replace(ds, x_train=ds.x_train[:limit], y_train=ds.y_train[:limit])
        return ds


#: the manualgrad layer of each kind in :func:`cnn_spec`
CNN_LAYERS: dict[str, Callable[[Any], nn.Layer]] = {
    "conv": lambda c: nn.Conv2D(c, 3, padding="SAME"),
    "batchnorm": lambda _: nn.BatchNorm(),
    "relu": lambda _: nn.ReLU(),
    "maxpool": lambda k: nn.MaxPool2D(k),
    "flatten": lambda _: nn.Flatten(),
    "dropout": lambda rate: nn.Dropout(rate),
    "flip": lambda p: nn.RandomFlip(p),
    "linear": lambda n: nn.Linear(n),
}


def cnn_spec(outputs: int, regularised: bool = False, dropout: bool = True) -> list[tuple[str, Any]]:
    """The CNN as ``(kind, argument)`` pairs (see :func:`cnn`); ``dropout=False`` keeps the random
    layers but turns them off: Dropout at rate 0, RandomFlip with probability 0 (the PyTorch
    comparison builds its twin from this list)."""
    norm = [("batchnorm", None)] if regularised else []
    drop = [("dropout", 0.3 if dropout else 0.0)] if regularised else []
    flip = [("flip", 0.5 if dropout else 0.0)] if regularised else []

    def block(channels: int) -> list[tuple[str, Any]]:
        return [("conv", channels), *norm, ("relu", None), ("maxpool", 2)]

    return [*flip, *block(32), *block(64), ("flatten", None), ("linear", 128), ("relu", None), *drop, ("linear", outputs)]


def cnn(outputs: int, regularised: bool = False) -> nn.Layer:
    """The CNN for 28x28x1 images: two blocks of 3x3 convolution ("SAME"), ReLU and 2x2 max
    pooling (32 then 64 channels), then dense 3136-128-``outputs``. ``regularised`` adds a random
    horizontal flip of the training images (probability 0.5), batch norm after each convolution
    and dropout 0.3 after the hidden dense layer."""
    return nn.serial(*(CNN_LAYERS[kind](arg) for kind, arg in cnn_spec(outputs, regularised)))


def shuffle_key(seed: int) -> jax.Array:
    """The run's shuffling key (epoch ``e`` uses ``train.epoch_key(shuffle_key(seed), e)``)."""
    return jax.random.split(jax.random.PRNGKey(seed))[1]


def standardise_images(ds: data.Dataset, mean: float, std: float) -> data.Dataset:
    """Pixels to float32 in [0, 1], then standardised with the training set's ``mean`` and ``std``."""

    def f(x):
        return ((x.astype(np.float32) / 255.0 - mean) / std).astype(np.float32)

    return dataclasses.replace(ds, x_train=f(ds.x_train), x_test=f(ds.x_test))


def standardise_mnist(ds: data.Dataset) -> data.Dataset:
    """MNIST's pixels standardised with its training mean and std (0.1307, 0.3081)."""
    return standardise_images(ds, 0.1307, 0.3081)


MNIST = Task(
    name="mnist",
    input_shape=(28, 28, 1),
    hidden=(256, 128),
    outputs=10,
    loss=losses.softmax_cross_entropy,
    metric="accuracy",
    prepare=standardise_mnist,
    defaults={"epochs": 10, "batch_size": 128, "lr": 0.1, "momentum": 0.9, "weight_decay": 0.0, "max_norm": 5.0},
)

CALIFORNIA_HOUSING = Task(
    name="california_housing",
    input_shape=(8,),
    hidden=(64, 64),
    outputs=1,
    loss=losses.mse,
    metric="mse",
    prepare=lambda ds: ds,  # already standardised by manualgrad.data (train statistics only)
    defaults={"epochs": 60, "batch_size": 64, "lr": 0.02, "momentum": 0.9, "weight_decay": 0.0, "max_norm": 5.0},
)

FASHION_MNIST = dataclasses.replace(
    MNIST,
    name="fashion_mnist",
    hidden=(256, 128),
    prepare=lambda ds: standardise_images(ds, 0.2860, 0.3530),
    defaults={"epochs": 15, "batch_size": 128, "lr": 0.05, "momentum": 0.9, "weight_decay": 0.0, "max_norm": 5.0},
)

TASKS = {t.name: t for t in (MNIST, CALIFORNIA_HOUSING, FASHION_MNIST)}

#: ``--model cnn`` of the image tasks
CNN_TASKS = {
    "mnist": dataclasses.replace(
        MNIST,
        arch="cnn",
        defaults={"epochs": 12, "batch_size": 128, "lr": 0.05, "momentum": 0.9, "weight_decay": 0.0, "max_norm": 5.0},
    ),
    "fashion_mnist": dataclasses.replace(
        FASHION_MNIST,
        arch="cnn",
        cnn_regularised=True,
        defaults={"epochs": 30, "batch_size": 128, "lr": 0.1, "momentum": 0.9, "weight_decay": 5e-4, "max_norm": 5.0},
    ),
}


def cnn_summary(name: str) -> str:
    extra = " with random flips, batch norm and dropout" if CNN_TASKS[name].cnn_regularised else ""
    return f"conv3x3(32)-pool-conv3x3(64)-pool-128-10{extra}"


def task_for(name: str, model: str = "mlp") -> Task:
    """The task ``name`` with ``model`` ("mlp" or, for image tasks, "cnn")."""
    return CNN_TASKS[name] if model == "cnn" else TASKS[name]


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


def parser(
    task: Task | None, description: str, training: bool = True, out: str = "runs/{task}"
) -> argparse.ArgumentParser:
    """The flags of DESIGN.md with ``task``'s defaults; ``training`` adds --grad, --resume, --no-progress.

    With ``task=None`` (a tool that serves every task and takes it as a flag) the task-dependent
    defaults are ``None``, listed per task in ``--help``; :func:`fill_task_defaults` sets them
    once the task is known. ``out`` is the default ``--out``, ``{task}`` standing for its name.
    """

    def default(key: str, per_task: str | None = None) -> dict[str, Any]:
        """``task``'s default for the flag ``key``; without a task, ``None`` and a help suffix listing them."""
        if task is not None:
            return {"default": task.defaults[per_task or key]}
        listed = ", ".join(f"{t.name} {t.defaults[per_task or key]}" for t in TASKS.values())
        return {"default": None, "help": f" (default: {listed})"}

    def flag(name: str, help: str, *, key: str | None = None, per_task: str | None = None, **kwargs: Any) -> None:
        d = default(key or name.lstrip("-").replace("-", "_"), per_task)
        p.add_argument(name, default=d["default"], help=help + d.get("help", ""), **kwargs)

    p = argparse.ArgumentParser(description=description, formatter_class=HelpFormatter)
    if task is not None and task.name in CNN_TASKS:
        p.add_argument(
            "--model",
            choices=("mlp", "cnn"),
            default=task.arch,
            help=f"mlp: {TASKS[task.name].architecture}; cnn: {cnn_summary(task.name)} "
            "(each has its own defaults for the other flags, shown here for the chosen one)",
        )
    flag("--epochs", "total number of epochs (also when resuming)", type=int)
    flag("--batch-size", "examples per training step", type=int)
    flag("--lr", "SGD learning rate (the peak of the cosine schedule)", type=float)
    p.add_argument(
        "--schedule",
        choices=("cosine", "constant"),
        default="cosine",
        help="learning rate per step: cosine decay from --lr to 0 over --decay-epochs, or constant",
    )
    flag(
        "--decay-epochs",
        "length of the cosine decay in epochs (fixed apart from --epochs, so a run stopped early "
        "and resumed follows the same schedule; after it the rate stays 0)",
        per_task="epochs",
        type=int,
    )
    flag("--momentum", "SGD momentum (0 for plain SGD)", type=float)
    flag("--weight-decay", "L2 weight decay: weight_decay * params added to the clipped gradient (torch.optim.SGD's)",
         type=float)
    flag("--max-norm", "clip the gradient to this global L2 norm", type=float)
    p.add_argument("--seed", type=int, default=0, help="initial weights and shuffling")
    p.add_argument(
        "--data-dir",
        default=os.environ.get(data.DATA_DIR_ENV),
        help=f"folder holding {task.name if task else 'TASK'}/ (default: ${data.DATA_DIR_ENV}, else the online source)",
    )
    p.add_argument(
        "--out",
        default=out.format(task=task.name) if task else None,
        help="where metrics.json, curves.png and the checkpoint go" + ("" if task else f" (default: {out.format(task='TASK')})"),
    )
    p.add_argument("--limit", type=int, default=None, help="use only the first N training examples (smoke runs; default: all)")
    if training:
        p.add_argument("--grad", choices=train.GRADS, default="manual", help="where the gradient comes from")
        add_devices_flag(p)
        p.add_argument("--resume", action="store_true", help=f"continue from OUT/{CHECKPOINT}")
        p.add_argument("--no-progress", action="store_true", help="no progress bar")
    return p


def add_devices_flag(p: argparse.ArgumentParser) -> None:
    p.add_argument("--devices", type=int, default=None,
                   help="local devices each process trains on, data-parallel (default: all; with one device in one "
                        "process, the plain single-device step)")


def mesh_for(devices: int | None, batch_size: int) -> Any:
    """The data-parallel mesh of ``--devices`` over every process, or None for one device in one
    process; :class:`FlagError` when the flags do not fit the machine or the batch does not split."""
    try:
        mesh = parallel.data_mesh(devices)
        if mesh.size > 1:
            parallel.check_batch(mesh, batch_size, "--batch-size")
    except ValueError as e:
        raise FlagError(f"--devices {devices}: {e}" if devices is not None else str(e)) from None
    return None if mesh.size == 1 else mesh


def run_environment(reuse_memory: bool, mesh: Any) -> dict[str, Any]:
    """What a run's config records about where it ran: device kind, jax, the malloc setting,
    devices and processes."""
    return {
        "device": jax.devices()[0].device_kind,
        "jax": jax.__version__,
        "reuse_freed_memory": reuse_memory,
        "devices": 1 if mesh is None else mesh.size,
        "processes": jax.process_count(),
    }


def join_processes() -> int | None:
    """Join a launched or scheduled multi-process run (:func:`manualgrad.parallel.initialize`, a
    no-op in a lone process); the exit status 1, after saying why, when the coordinator is unreachable."""
    try:
        parallel.initialize()
    except ConnectionError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    return None


def fill_task_defaults(task: Task, args: argparse.Namespace, out: str = "runs/{task}") -> None:
    """Set the flags left ``None`` by ``parser(None, ...)`` to ``task``'s defaults (``--out`` from ``out``)."""
    for key, value in task.defaults.items():
        if getattr(args, key) is None:
            setattr(args, key, value)
    if args.decay_epochs is None:
        args.decay_epochs = task.defaults["epochs"]
    if args.out is None:
        args.out = out.format(task=task.name)


def check_args(p: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    """Refuse flag values that cannot train (argparse's error: usage and exit status 2)."""
    for name in ("epochs", "batch_size", "decay_epochs"):
        if getattr(args, name) < 1:
            p.error(f"--{name.replace('_', '-')} must be >= 1, got {getattr(args, name)}")
    for name in ("lr", "max_norm"):
        if not getattr(args, name) > 0:
            p.error(f"--{name.replace('_', '-')} must be > 0, got {getattr(args, name)}")
    if not 0 <= args.momentum < 1:
        p.error(f"--momentum must be in [0, 1), got {args.momentum}")
    if not args.weight_decay >= 0:
        p.error(f"--weight-decay must be >= 0, got {args.weight_decay}")
    if args.limit is not None and args.limit < 1:
        p.error(f"--limit must be >= 1, got {args.limit}")


def check_data(args: argparse.Namespace, train_examples: int) -> None:
    """Raise :class:`FlagError` unless the training set makes at least one batch of ``--batch-size``."""
    if train_examples < args.batch_size:
        where = f"--limit {args.limit} leaves" if args.limit is not None else "the training set has"
        raise FlagError(
            f"{where} {train_examples} training examples, fewer than --batch-size {args.batch_size}: "
            "not one batch to train on (lower --batch-size or raise --limit)"
        )


def plot_curves(path: pathlib.Path, task: Task, result: train.History, ds: data.Dataset) -> None:
    """Two panels. Left: the loss per epoch (train and test) over the training loss of every step.
    Right: the test accuracy per epoch, or, for regression, the final model's predicted against
    the true test values (with the line y = x)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator

    epochs = result.epochs
    e = [r["epoch"] for r in epochs]
    fig, (a, b) = plt.subplots(1, 2, figsize=(10, 4))
    # step k (0-based) of the s steps of epoch e sits at e - 1 + (k + 1) / s: the last one on e itself
    steps_x = [r["epoch"] - 1 + (k + 1) / len(per_step) for r, per_step in zip(epochs, result.step_losses) for k in range(len(per_step))]
    steps_y = [v for per_step in result.step_losses for v in per_step]
    a.plot(steps_x, steps_y, "-", color="C0", lw=0.6, alpha=0.4, label="train (each step)")
    a.plot(e, [r["train_loss"] for r in epochs], "o-", color="C0", label="train (epoch mean)")
    a.plot(e, [r["test_loss"] for r in epochs], "s--", color="C1", label="test")
    a.set(xlabel="epoch", ylabel=f"loss ({task.loss.name.rsplit('.', 1)[-1]})", title=f"{task.name}: loss")
    a.xaxis.set_major_locator(MaxNLocator(integer=True))
    if min(steps_y + [r["test_loss"] for r in epochs], default=0) > 0:
        a.set_yscale("log")  # one noisy batch can be 100x the epoch mean
    a.legend()
    if task.metric == "mse":
        pred = np.asarray(task.model().apply(result.params, ds.x_test)).reshape(-1)
        true = np.asarray(ds.y_test).reshape(-1)
        lo, hi = float(min(pred.min(), true.min())), float(max(pred.max(), true.max()))
        b.scatter(true, pred, s=4, alpha=0.3, color="C2", linewidths=0)
        b.plot([lo, hi], [lo, hi], "k-", lw=0.8, label="y = x")
        b.set(xlabel="true value", ylabel="predicted value", aspect="equal",
              title=f"{task.architecture}, epoch {e[-1]}: test set (mse {epochs[-1]['test_mse']:.4f})")
        b.legend()
    else:
        b.plot(e, [r[f"test_{task.metric}"] for r in epochs], "o-", color="C2")
        b.set(xlabel="epoch", ylabel=f"test {task.metric}", title=f"{task.name} {task.architecture}: test {task.metric}")
        b.xaxis.set_major_locator(MaxNLocator(integer=True))
    for ax in (a, b):
        ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def learning_rate(args: argparse.Namespace, train_examples: int) -> optax.ScalarOrSchedule:
    """The ``--lr``/``--schedule``/``--decay-epochs`` flags as an optax learning rate (per step)."""
    if args.schedule == "constant":
        return args.lr
    return optax.cosine_decay_schedule(args.lr, args.decay_epochs * (train_examples // args.batch_size))


def run(task: Task, args: argparse.Namespace) -> dict:
    """Train ``task`` with ``args``; write ``metrics.json``, ``curves.png`` and checkpoints; return the metrics."""
    from tqdm import tqdm

    # freed memory stays in the process, so each step's XLA temporaries land on warm pages
    # (manualgrad.malloc; a process-wide glibc setting, recorded in the config)
    reuse_memory = malloc.reuse_freed_memory()
    out = pathlib.Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    # process 0 prepares the dataset's cache, the others then read it
    ds = parallel.one_process_first(lambda: task.load(args.data_dir, args.limit), "load the data")
    check_data(args, len(ds.x_train))
    mesh = mesh_for(args.devices, args.batch_size)
    writer = jax.process_index() == 0  # in a multi-process run one process writes the files
    optimizer = train.sgd_with_clipping(learning_rate(args, len(ds.x_train)), args.max_norm, args.momentum, args.weight_decay)
    config = {
        "task": task.name,
        "model": task.architecture,
        **{k: v for k, v in vars(args).items() if k not in ("no_progress", "resume", "model")},
        "train_examples": len(ds.x_train),
        "test_examples": len(ds.x_test),
        "data_source": ds.info.get("source"),
        # XLA:CPU runs convolutions ~20x slower inside lax.scan (jax-ml/jax#12868): loop over the jitted step
        "epoch": "loop" if task.arch == "cnn" and jax.default_backend() == "cpu" else "scan",
        **run_environment(reuse_memory, mesh),
    }
    bar = tqdm(total=args.epochs, desc=f"{task.name} ({args.grad})", unit="epoch", disable=args.no_progress or not writer)

    def on_epoch(entry: dict, params: Any) -> None:
        bar.n = entry["epoch"]
        bar.set_postfix(loss=f"{entry['train_loss']:.4f}", **{f"test_{task.metric}": f"{entry[f'test_{task.metric}']:.4f}"})

    result = train.fit(
        task.model(),
        task.loss,
        optimizer,
        task.init(args.seed),
        ds,
        epochs=args.epochs,
        batch_size=args.batch_size,
        key=shuffle_key(args.seed),
        grad=args.grad,
        metric=task.metric,
        checkpoint_path=out / CHECKPOINT,
        resume=args.resume,
        config={k: config[k] for k in RESUME_MUST_MATCH},
        on_epoch=on_epoch,
        scan=config["epoch"] == "scan",
        mesh=mesh,
    )
    bar.close()
    last = result.epochs[-1]
    metrics = {
        "config": config,
        "compile_seconds": result.compile_seconds,
        "epochs": result.epochs,
        "test": {task.metric: last[f"test_{task.metric}"], "loss": last["test_loss"]},
        "step_loss": result.step_losses,
    }
    if writer:
        (out / "metrics.json").write_text(json.dumps(metrics, indent=2))
        plot_curves(out / "curves.png", task, result, ds)
    return metrics


def main(task: Task, description: str, argv: Sequence[str] | None = None) -> int:
    if join_processes():
        return 1
    if task.name in CNN_TASKS:  # --model picks the task variant, whose defaults the other flags take
        pre = argparse.ArgumentParser(add_help=False)
        pre.add_argument("--model", choices=("mlp", "cnn"), default="mlp")
        task = task_for(task.name, pre.parse_known_args(argv)[0].model)
    p = parser(task, description)
    args = p.parse_args(argv)
    check_args(p, args)
    try:
        metrics = run(task, args)
    except FlagError as e:
        p.error(str(e))
    except (data.MissingDataError, checkpoint.CheckpointError, train.NonFiniteError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    value = metrics["test"][task.metric]
    shown = f"{100 * value:.2f}%" if task.metric == "accuracy" else f"{value:.4f}"
    per_epoch = np.median([r["seconds"] for r in metrics["epochs"]]) if metrics["epochs"] else float("nan")
    if jax.process_index() == 0:
        print(f"{task.name} {task.architecture} grad={args.grad}: test {task.metric} {shown} after {len(metrics['epochs'])} "
              f"epochs ({per_epoch:.2f} s/epoch median); wrote {pathlib.Path(args.out) / 'metrics.json'}")
    return 0
