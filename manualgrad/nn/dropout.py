"""``Dropout``: inverted dropout in training mode, the identity in evaluation; it needs a key."""

from __future__ import annotations

from manualgrad import ops
from manualgrad.errors import fail
from manualgrad.nn.layer import Layer, draws_random, primitive

__all__ = ["Dropout"]


def Dropout(rate: float) -> Layer:
    """Inverted dropout (:func:`manualgrad.ops.dropout`) in training mode, the identity in evaluation.

    Training needs a key: ``apply(params, x, key=k, train=True)``; :func:`manualgrad.train.fit`
    and :func:`~manualgrad.train.make_epoch` derive one per step, and containers give each
    child its own (``fold_in(key, i)``).
    """
    name = f"Dropout({rate!r})"
    if not 0 <= rate < 1:
        fail(f"manualgrad.nn.{name}", f"rate must be in [0, 1), got {rate!r}")

    def active(key, train):
        return rate > 0 and draws_random(key, train, "draws a dropout mask")

    def call(params, state, x, *, key, train):
        return (ops.dropout(x, key, rate=rate) if active(key, train) else x), state

    def forward(params, state, x, *, key, train):
        if active(key, train):
            y, res = ops.dropout.fwd(x, key, rate=rate)
            return y, state, res
        return x, state, None

    def bwd(res, y_bar):
        return (), (y_bar if res is None else ops.dropout.bwd(res, y_bar)[0])

    return primitive(name, lambda key, s: (tuple(s), ()), call, forward, bwd)
