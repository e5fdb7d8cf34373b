"""manualgrad's ops: each a plain reference forward plus a hand-written VJP.

Every name here is a [manualgrad.core.Op][manualgrad.core.Op]: call it like the function it
computes; ``op.reference`` is the plain ``jax.numpy`` version; ``op.fwd`` and
``op.bwd`` are the hand-written forward-with-residuals and backward.
"""

from manualgrad.ops.activations import (
    gelu,
    identity,
    leaky_relu,
    relu,
    scaled_relu,
    sigmoid,
    softplus,
    square,
    tanh,
)
from manualgrad.ops.add import add
from manualgrad.ops.attention import attention
from manualgrad.ops.concat import concat
from manualgrad.ops.conv import conv2d
from manualgrad.ops.dropout import dropout
from manualgrad.ops.embedding import embedding
from manualgrad.ops.linear import linear
from manualgrad.ops.norm import batch_norm, layer_norm
from manualgrad.ops.norm_inference import batch_norm_inference
from manualgrad.ops.pooling import avg_pool2d, max_pool2d
from manualgrad.ops.recurrent import gru, lstm, rnn
from manualgrad.ops.recurrent_step import gru_step, lstm_step, rnn_step
from manualgrad.ops.reshape import flatten, merge_heads, split_heads
from manualgrad.ops.softmax import log_softmax, softmax

__all__ = [
    "linear",
    "identity",
    "relu",
    "leaky_relu",
    "scaled_relu",
    "sigmoid",
    "tanh",
    "softplus",
    "gelu",
    "square",
    "softmax",
    "log_softmax",
    "flatten",
    "split_heads",
    "merge_heads",
    "add",
    "conv2d",
    "max_pool2d",
    "avg_pool2d",
    "batch_norm",
    "batch_norm_inference",
    "layer_norm",
    "dropout",
    "embedding",
    "attention",
    "concat",
    "rnn_step",
    "lstm_step",
    "gru_step",
    "rnn",
    "lstm",
    "gru",
]
