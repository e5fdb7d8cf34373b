"""The MLP and CNN configurations the benchmark trains, their random inputs, the FLOPs of one step,
and the optimiser every one of their steps uses."""

from __future__ import annotations

import dataclasses

import numpy as np
import optax

from experiments import common
from manualgrad import train

LR, MOMENTUM, MAX_NORM = 0.01, 0.9, 5.0


@dataclasses.dataclass(frozen=True)
class Config:
    """A task's model at one batch size."""

    task: common.Task
    batch: int

    @property
    def model(self) -> str:
        """The rows' model name: the MLP's widths (``784-256-128-10``) or ``cnn``."""
        return self.task.architecture

    @property
    def is_cnn(self) -> bool:
        return self.task.arch == "cnn"

    def matmul_flops(self) -> int:
        """FLOPs of one step's matrix products and convolutions: per layer the forward
        product, the weight gradient and the input gradient, except the input gradient of the
        first layer, which nothing needs. A convolution counts ``2 N Ho Wo KH KW C_in C_out``
        per product (the CNN's 3x3 "SAME" convolutions on 28x28 and 14x14 images)."""
        if self.is_cnn:
            n = self.batch
            per_product = [2 * n * 28 * 28 * 9 * 1 * 32, 2 * n * 14 * 14 * 9 * 32 * 64,
                           2 * n * 7 * 7 * 64 * 128, 2 * n * 128 * self.task.outputs]
        else:
            widths = self.task.widths
            per_product = [2 * self.batch * d_in * d_out for d_in, d_out in zip(widths[:-1], widths[1:])]
        return 3 * sum(per_product) - per_product[0]


MNIST_WIDE = dataclasses.replace(common.MNIST, hidden=(1024, 1024))
CNN = common.task_for("mnist", "cnn")
SMALL = Config(common.CALIFORNIA_HOUSING, common.CALIFORNIA_HOUSING.defaults["batch_size"])  # --quick
MLP_CONFIGS = (Config(common.MNIST, 128), Config(common.MNIST, 1024), Config(MNIST_WIDE, 256), SMALL)
CNN_CONFIGS = (Config(CNN, 128), Config(CNN, 512))


def random_batch(task: common.Task, n: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """``n`` random examples shaped like ``task``'s data (features N(0, 1), labels uniform)."""
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((n, *task.input_shape), dtype=np.float32)
    if task.metric == "accuracy":
        return x, rng.integers(0, task.outputs, n).astype(np.int32)
    return x, rng.standard_normal((n, task.outputs), dtype=np.float32)


def optimizer() -> optax.GradientTransformation:
    """SGD with momentum and clipping at the benchmark's constant rate."""
    return train.sgd_with_clipping(LR, MAX_NORM, MOMENTUM)


def describe_optimizer() -> str:
    """:func:`optimizer` as benchmark.json's settings record it."""
    return f"sgd_with_clipping(lr={LR}, max_norm={MAX_NORM}, momentum={MOMENTUM})"
