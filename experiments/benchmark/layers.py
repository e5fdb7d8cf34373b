"""The CNN's per-layer rows: each convolution and pooling forward + backward, as training runs it
(manual), as XLA convolutions (``conv2d(..., impl="xla")``, what GPUs run) and as ``jax.vjp`` of
the plain lax forward (reference). Their model names are ``cnn/<layer>``; benchmark.json keeps
them in ``layers``."""

from __future__ import annotations

from typing import Any, Callable

import jax
import numpy as np

from experiments.benchmark.timing import Runner, Settings, as_rows, repeat_call, temp_bytes

#: the CNN's convolution and pooling layers, one row each in the per-layer table: (name, input
#: shape without the batch, output channels or None for a pool, whether its input gradient is needed)
CNN_LAYERS = (
    ("conv1 3x3 1->32 28x28", (28, 28, 1), 32, False),
    ("pool1 2x2 28x28x32", (28, 28, 32), None, True),
    ("conv2 3x3 32->64 14x14", (14, 14, 32), 64, True),
    ("pool2 2x2 14x14x64", (14, 14, 64), None, True),
)
LAYER_IMPLS = ("manual", "xla", "reference")


def layer_function(c_out: int | None, needs_x_bar: bool, impl: str) -> Callable:
    """``f(x, w, b, g)``: one layer's forward and backward (the cotangents the train step needs).

    ``manual``: the op as training runs it (``impl="auto"``: on CPU the gemm formulation for one
    input channel, XLA convolutions with the weight gradient in batch slices for 32); ``xla``: the
    op's hand-written rules as plain XLA convolutions (``impl="xla"``, what GPUs run; no such row
    for a pool); ``reference``: ``jax.vjp`` of the plain lax forward (``lax.conv_general_dilated``,
    ``lax.reduce_window``).
    """
    from manualgrad import ops, reference_mode

    if c_out is None:
        def forward(x, w, b):
            return ops.max_pool2d(x, 2)
    else:
        conv_impl = "xla" if impl == "xla" else "auto"

        def forward(x, w, b):
            return ops.conv2d(x, w, b, padding="SAME", impl=conv_impl)

    def f(x, w, b, g):
        wrt = (0, 1, 2) if needs_x_bar else (1, 2)
        with reference_mode(impl == "reference"):
            _, pullback = jax.vjp(lambda *a: forward(*(a if needs_x_bar else (x, *a))), *((x, w, b)[i] for i in wrt))
            return pullback(g)

    return f


def layer_inputs(batch: int, shape: tuple, c_out: int | None, dtype: Any = np.float32) -> tuple[np.ndarray, ...]:
    """``(x, w, b, g)`` for one of :data:`CNN_LAYERS` (``w`` and ``b`` unused by a pool): random
    input, 3x3 kernel, zero bias and a random output cotangent."""
    rng = np.random.default_rng(0)
    c_in = shape[-1]
    out = (batch, *shape[:2], c_out) if c_out else (batch, shape[0] // 2, shape[1] // 2, c_in)
    x, w, g = (rng.standard_normal(s).astype(dtype) for s in ((batch, *shape), (3, 3, c_in, c_out or 1), out))
    return x, w, np.zeros(c_out or 1, dtype), g


def layer_rows(batch: int, settings: Settings) -> list[dict]:
    """Forward + backward of each of the CNN's convolutions and poolings, per implementation."""
    rows = []
    for name, shape, c_out, needs_x_bar in CNN_LAYERS:
        x, w, b, g = (jax.device_put(a) for a in layer_inputs(batch, shape, c_out))
        runners: dict[str, Runner] = {}
        temps: dict[str, int | None] = {}
        for impl in LAYER_IMPLS:
            if c_out is None and impl == "xla":
                continue
            compiled = jax.jit(layer_function(c_out, needs_x_bar, impl)).lower(x, w, b, g).compile()
            runners[impl], temps[impl] = repeat_call(compiled, x, w, b, g), temp_bytes(compiled)
        # products: the forward, w_bar, and x_bar where it is needed
        flops = 2 * batch * shape[0] * shape[1] * 9 * shape[-1] * c_out * (3 if needs_x_bar else 2) if c_out else None
        rows += as_rows(f"cnn/{name}", batch, settings.time(runners), flops, temps)
    return rows
