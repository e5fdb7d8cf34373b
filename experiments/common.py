"""The MNIST, Fashion-MNIST and California Housing experiments: their tasks, and the experiment
the harness runs for each.

A :class:`Task` fixes a dataset, its model (an MLP with ReLU hidden layers, or for images a CNN:
``--model cnn``), its loss, its test metric and the training flags' defaults;
:class:`TaskExperiment` hands a dataset's tasks, one per ``--model`` choice, to
:func:`experiments.harness.main`, which trains with SGD (:class:`experiments.optimizers.SGD`).
"""

from __future__ import annotations

import argparse
import dataclasses
from typing import Any, Callable, Mapping

import jax
import numpy as np

from experiments import harness, outputs
from experiments.optimizers import SGD
from manualgrad import data, losses, nn, train
from manualgrad.core import Op


@dataclasses.dataclass(frozen=True)
class Task:
    """A dataset with its model, loss, test metric and the training flags' defaults."""

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

    @property
    def summary(self) -> str:
        """The model in ``--model``'s help: the MLP's widths, or the CNN's layers."""
        if self.arch != "cnn":
            return self.architecture
        extra = " with random flips, batch norm and dropout" if self.cnn_regularised else ""
        return f"conv3x3(32)-pool-conv3x3(64)-pool-128-{self.outputs}{extra}"

    def model(self) -> nn.Layer:
        """The MLP: flatten, then Linear+ReLU per hidden size, then a Linear output layer; or :func:`cnn`."""
        if self.arch == "cnn":
            return cnn(self.outputs, self.cnn_regularised)
        layers = [nn.Flatten()] if len(self.input_shape) > 1 else []
        for width in self.hidden:
            layers += [nn.Linear(width), nn.ReLU()]
        return nn.serial(*layers, nn.Linear(self.outputs))

    def init(self, model: nn.Layer, seed: int) -> Any:
        """The initial params of ``model`` (this task's, built by the caller) from ``seed``: the
        first half of :func:`experiments.harness.seed_keys`, as a run draws them."""
        _, params = model.init(harness.seed_keys(seed)[0], (1, *self.input_shape))
        return params

    def load(self, data_dir: str | None) -> data.Dataset:
        """The prepared dataset from ``data_dir`` (see :func:`manualgrad.data.load`)."""
        return self.prepare(data.load(self.name, data_dir))


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


def standardise_images(ds: data.Dataset, mean: float, std: float) -> data.Dataset:
    """Pixels to float32 in [0, 1], then standardised with the training set's ``mean`` and ``std``."""

    def f(x):
        return ((x.astype(np.float32) / 255.0 - mean) / std).astype(np.float32)

    return dataclasses.replace(ds, x_train=f(ds.x_train), x_test=f(ds.x_test))


def standardise_mnist(ds: data.Dataset) -> data.Dataset:
    """MNIST's pixels standardised with its training mean and std (0.1307, 0.3081)."""
    return standardise_images(ds, 0.1307, 0.3081)


def sgd_defaults(epochs: int, batch_size: int, lr: float, weight_decay: float = 0.0) -> dict[str, Any]:
    """A task's defaults: the cosine decays over the default ``--epochs`` (a length of its own, so
    that a run stopped early and resumed follows the same schedule); momentum 0.9 and clipping at
    global norm 5 for all of them."""
    return {"epochs": epochs, "decay_epochs": epochs, "batch_size": batch_size, "lr": lr, "momentum": 0.9,
            "weight_decay": weight_decay, "max_norm": 5.0}


MNIST = Task(
    name="mnist",
    input_shape=(28, 28, 1),
    hidden=(256, 128),
    outputs=10,
    loss=losses.softmax_cross_entropy,
    metric="accuracy",
    prepare=standardise_mnist,
    defaults=sgd_defaults(epochs=10, batch_size=128, lr=0.1),
)

CALIFORNIA_HOUSING = Task(
    name="california_housing",
    input_shape=(8,),
    hidden=(64, 64),
    outputs=1,
    loss=losses.mse,
    metric="mse",
    prepare=lambda ds: ds,  # already standardised by manualgrad.data (train statistics only)
    defaults=sgd_defaults(epochs=60, batch_size=64, lr=0.02),
)

FASHION_MNIST = dataclasses.replace(
    MNIST,
    name="fashion_mnist",
    prepare=lambda ds: standardise_images(ds, 0.2860, 0.3530),
    defaults=sgd_defaults(epochs=15, batch_size=128, lr=0.05),
)

#: each dataset's MLP (``--model mlp``, the default)
TASKS = {t.name: t for t in (MNIST, CALIFORNIA_HOUSING, FASHION_MNIST)}

#: ``--model cnn`` of the image tasks
CNN_TASKS = {
    "mnist": dataclasses.replace(MNIST, arch="cnn", defaults=sgd_defaults(epochs=12, batch_size=128, lr=0.05)),
    "fashion_mnist": dataclasses.replace(FASHION_MNIST, arch="cnn", cnn_regularised=True,
                                         defaults=sgd_defaults(epochs=30, batch_size=128, lr=0.1, weight_decay=5e-4)),
}


def task_for(name: str, model: str = "mlp") -> Task:
    """The task ``name`` with ``model`` ("mlp" or, for image tasks, "cnn")."""
    return CNN_TASKS[name] if model == "cnn" else TASKS[name]


def scans(task: Task) -> bool:
    """Whether ``task`` trains with a scanned epoch: not the CNN on CPU, where XLA runs
    convolutions ~20x slower inside ``lax.scan`` (jax-ml/jax#12868); a loop over the jitted step there."""
    return not (task.arch == "cnn" and jax.default_backend() == "cpu")


class TaskExperiment(harness.Experiment):
    """A dataset's tasks, one per ``--model`` choice, as the harness runs them: SGD, the task's test
    metric, and curves of the loss and of the test accuracy (or, for regression, the final model's
    predicted against true test values)."""

    optimizer = SGD()
    resume_keys = ("task", "model")  # --resume refuses another dataset's or another model's checkpoint

    def __init__(self, description: str, models: Mapping[str, Task]):
        """``models``: ``--model``'s choices (``{"mlp": MNIST, "cnn": CNN_TASKS["mnist"]}``), the first the default."""
        first = next(iter(models.values()))
        self.name, self.description, self.models = first.name, description, dict(models)
        self.headline = f"test_{first.metric}"

    def load(self, model: Task, args: argparse.Namespace) -> data.Dataset:
        return model.load(args.data_dir)

    def build(self, model: Task, args: argparse.Namespace, ds: data.Dataset) -> harness.Net:
        return harness.Net(model.model(), model.loss)

    def fit_options(self, run: harness.Run) -> dict[str, Any]:
        return {"metric": run.model.metric, "scan": scans(run.model)}

    def config(self, run: harness.Run) -> tuple[dict[str, Any], dict[str, Any]]:
        return {"task": self.name, "model": run.model.architecture}, {"epoch": "scan" if scans(run.model) else "loop"}

    def panels(self, run: harness.Run, history: train.History) -> list[outputs.Panel]:
        task, last = run.model, history.epochs[-1]
        loss = outputs.loss_panel(history, title=f"{self.name}: loss", ylabel=f"loss ({task.loss.name.rsplit('.', 1)[-1]})")
        if task.metric == "mse":
            predicted = run.net.layer.apply(history.params, run.data.x_test)
            title = f"{task.architecture}, epoch {last['epoch']}: test set (mse {last['test_mse']:.4f})"
            return [loss, outputs.prediction_panel(np.asarray(predicted), run.data.y_test, title)]
        return [loss, outputs.metric_panel(history, self.headline, f"{self.name} {task.architecture}: test {task.metric}")]

    def result(self, model: Task, args: argparse.Namespace, test: Mapping[str, float]) -> str:
        value = test[model.metric]
        shown = f"{100 * value:.2f}%" if model.metric == "accuracy" else f"{value:.4f}"
        return f"{model.architecture} grad={args.grad}: test {model.metric} {shown}"


def experiment(name: str, description: str) -> TaskExperiment:
    """The experiment of the dataset ``name``: its MLP, and its CNN where it has one."""
    cnn_task = {"cnn": CNN_TASKS[name]} if name in CNN_TASKS else {}
    return TaskExperiment(description, {"mlp": TASKS[name], **cnn_task})
