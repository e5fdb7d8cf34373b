"""Layers and networks, in the spirit of ``jax.example_libraries.stax``, with state and keys.

A :class:`Layer` is ``init``, ``init_state``, ``apply``, ``fwd`` and ``bwd`` (the convention is
in :mod:`manualgrad.nn.layer`): ``model.apply(params, x)`` for stateless models, and
``model.apply(params, x, state=state, key=key, train=True) -> (y, state)`` for models with
batch norm or dropout. Params are pytrees: ``Linear`` has ``{"w": (d_in, d_out), "b":
(d_out,)}``, ``Conv2D`` ``{"w": (KH, KW, C_in, C_out), "b": (C_out,)}``, activation layers
``()``, ``serial`` and ``fanout`` a tuple with one entry per child; state has the same layout.
"""

from manualgrad.nn.augment import RandomFlip, RandomShift
from manualgrad.nn.dense import (
    GELU,
    Flatten,
    Identity,
    LeakyReLU,
    Linear,
    LogSoftmax,
    ReLU,
    ScaledReLU,
    Sigmoid,
    Softmax,
    Softplus,
    Square,
    Tanh,
    from_op,
)
from manualgrad.nn.head import LinearCrossEntropyHead
from manualgrad.nn.layer import Layer, fanout, init_state, primitive, residual, serial, stateless
from manualgrad.nn.recurrent import GRU, LSTM, LSTMLM, RNN, DropLengths
from manualgrad.nn.registry import LAYERS, LayerExample
from manualgrad.nn.sequence import Embedding, MultiHeadAttention, PositionalEmbedding, TransformerBlock, TransformerLM
from manualgrad.nn.dropout import Dropout
from manualgrad.nn.norm import BatchNorm, LayerNorm
from manualgrad.nn.vision import AvgPool2D, Conv2D, MaxPool2D

__all__ = [
    "Layer",
    "primitive",
    "stateless",
    "init_state",
    "Linear",
    "from_op",
    "Identity",
    "ReLU",
    "LeakyReLU",
    "ScaledReLU",
    "Sigmoid",
    "Tanh",
    "Softplus",
    "GELU",
    "Square",
    "Softmax",
    "LogSoftmax",
    "Flatten",
    "Conv2D",
    "MaxPool2D",
    "AvgPool2D",
    "BatchNorm",
    "LayerNorm",
    "Dropout",
    "RandomFlip",
    "RandomShift",
    "Embedding",
    "PositionalEmbedding",
    "MultiHeadAttention",
    "TransformerBlock",
    "TransformerLM",
    "LinearCrossEntropyHead",
    "RNN",
    "LSTM",
    "GRU",
    "DropLengths",
    "LSTMLM",
    "serial",
    "fanout",
    "residual",
    "LAYERS",
    "LayerExample",
]
