"""Every layer the library defines, with an input shape: the layer registry the tests walk.

``LAYERS[name]`` is a :class:`LayerExample`: a constructor (called fresh for each check), an
input shape (batch axis first) and, for layers that take token ids, the vocabulary size. One parametrized test checks each entry's init/apply shape
agreement and its ``bwd`` against ``jax.vjp`` of its ``apply``, in training and evaluation
mode; add your own layers to it the same way.
"""

from __future__ import annotations

from typing import Callable, NamedTuple

from manualgrad.nn import augment, dense, dropout, head, norm, recurrent, sequence, vision
from manualgrad.nn.layer import Layer, fanout, residual, serial

__all__ = ["LayerExample", "LAYERS"]


class LayerExample(NamedTuple):
    """One entry of :data:`LAYERS`: ``make()`` builds the layer, ``input_shape`` is what it is
    checked on (batch axis first), ``ids > 0`` says the input is integer token ids."""

    make: Callable[[], Layer]
    input_shape: tuple
    ids: int = 0  #: > 0: the input is integer ids in [0, ids) (no cotangent); 0: a float input


LAYERS: dict[str, LayerExample] = {
    "Linear": LayerExample(lambda: dense.Linear(3), (2, 4)),
    "Linear-glorot": LayerExample(lambda: dense.Linear(2, init="glorot"), (2, 3, 4)),
    "Identity": LayerExample(dense.Identity, (2, 3)),
    "ReLU": LayerExample(dense.ReLU, (2, 3)),
    "LeakyReLU": LayerExample(lambda: dense.LeakyReLU(0.1), (2, 3)),
    "ScaledReLU": LayerExample(lambda: dense.ScaledReLU(3.0), (2, 3)),
    "Sigmoid": LayerExample(dense.Sigmoid, (2, 3)),
    "Tanh": LayerExample(dense.Tanh, (2, 3)),
    "Softplus": LayerExample(dense.Softplus, (2, 3)),
    "GELU": LayerExample(dense.GELU, (2, 3)),
    "Square": LayerExample(dense.Square, (2, 3)),
    "Softmax": LayerExample(dense.Softmax, (2, 4)),
    "LogSoftmax": LayerExample(dense.LogSoftmax, (2, 4)),
    "Flatten": LayerExample(dense.Flatten, (2, 3, 2, 2)),
    "Conv2D": LayerExample(lambda: vision.Conv2D(3, 3, padding="SAME"), (2, 5, 5, 2)),
    "Conv2D-strided-grouped": LayerExample(
        lambda: vision.Conv2D(4, (2, 3), stride=2, padding=((1, 0), (2, 1)), dilation=1, groups=2), (1, 6, 5, 2)
    ),
    "MaxPool2D": LayerExample(lambda: vision.MaxPool2D(2), (2, 4, 4, 3)),
    "MaxPool2D-overlapping": LayerExample(lambda: vision.MaxPool2D(3, stride=2, padding=1), (1, 5, 5, 2)),
    "AvgPool2D": LayerExample(lambda: vision.AvgPool2D(2, stride=1), (2, 3, 3, 2)),
    "BatchNorm": LayerExample(norm.BatchNorm, (4, 3, 3, 2)),
    "BatchNorm-dense": LayerExample(lambda: norm.BatchNorm(momentum=0.3), (5, 3)),
    "LayerNorm": LayerExample(norm.LayerNorm, (2, 3, 4)),
    "Dropout": LayerExample(lambda: dropout.Dropout(0.4), (3, 5)),
    "RandomFlip": LayerExample(augment.RandomFlip, (6, 3, 4, 2)),
    "RandomShift": LayerExample(lambda: augment.RandomShift(2), (5, 4, 6, 2)),
    "Embedding": LayerExample(lambda: sequence.Embedding(7, 3), (2, 5), ids=7),
    "PositionalEmbedding": LayerExample(lambda: sequence.PositionalEmbedding(6), (2, 5, 4)),
    "PositionalEmbedding-sinusoidal": LayerExample(lambda: sequence.PositionalEmbedding(4, "sinusoidal"), (2, 4, 3)),
    "MultiHeadAttention": LayerExample(lambda: sequence.MultiHeadAttention(2), (2, 5, 4)),
    "TransformerBlock": LayerExample(lambda: sequence.TransformerBlock(4, 2, mlp_ratio=2, dropout=0.2), (2, 3, 4)),
    "TransformerLM": LayerExample(lambda: sequence.TransformerLM(7, 6, width=4, depth=1, heads=2), (2, 5), ids=7),
    "TransformerLM-fused": LayerExample(
        lambda: sequence.TransformerLM(7, 6, width=4, depth=1, heads=2, fused_head=True), (2, 5), ids=7
    ),
    "LinearCrossEntropyHead": LayerExample(lambda: head.LinearCrossEntropyHead(5), (2, 3, 4)),
    "RNN-stacked": LayerExample(
        lambda: serial(recurrent.RNN(3), recurrent.GRU(2, bidirectional=True), recurrent.DropLengths(), dense.Linear(2)),
        (2, 3, 2),
    ),
    "GRU": LayerExample(lambda: recurrent.GRU(2), (2, 3, 3)),
    "LSTM-bidirectional-last": LayerExample(lambda: recurrent.LSTM(2, bidirectional=True, output="last"), (2, 3, 2)),
    "LSTMLM": LayerExample(lambda: recurrent.LSTMLM(7, width=3, depth=2, dropout=0.2), (2, 4), ids=7),
    "DropLengths": LayerExample(recurrent.DropLengths, (2, 3, 2)),  # plain input: passed through
    "residual": LayerExample(lambda: residual(dense.Linear(3), dense.Tanh()), (2, 3)),
    "serial-cnn": LayerExample(
        lambda: serial(
            vision.Conv2D(3, 3, padding=1), norm.BatchNorm(), dense.ReLU(), vision.MaxPool2D(2),
            dropout.Dropout(0.25), dense.Flatten(), dense.Linear(4),
        ),
        (2, 4, 4, 1),
    ),
    "fanout-heads": LayerExample(
        lambda: serial(dense.Linear(4), norm.LayerNorm(), fanout(serial(dropout.Dropout(0.5), dense.Linear(2)),
                                                                     serial(norm.BatchNorm(), dense.Linear(1)))),
        (3, 5),
    ),
}
"""The layer registry: a name per layer the library defines, each with its :class:`LayerExample`."""
