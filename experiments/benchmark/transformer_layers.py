"""The transformer's per-layer rows: each op of the Shakespeare model's step, forward + backward at
the model's shapes (batch 32, T 128, width 128, 4 heads of 32, MLP 512, 84 tokens), so the
step's time can be read layer by layer (``transformer-T128/<layer>``).

Each row times the op's value and the cotangents the train step needs (every float input; the
ids have none) for ``manual`` (the hand-written VJP), ``reference`` (``jax.vjp`` of the plain
forward) and ``torch`` (the same functional forward in PyTorch eager, ``backward`` of it, on 2
threads). A layer is one :class:`Layer`: its inputs, its JAX forward and its PyTorch forward.
"""

from __future__ import annotations

from typing import Callable, NamedTuple

import jax
import numpy as np

from experiments.benchmark.sequence import BATCH, HEADS, VOCAB, WIDTH
from experiments.benchmark.timing import Runner, Settings, as_rows, op_runners
from manualgrad import losses, ops, reference_mode

T = 128
TORCH_THREADS = 2
HEAD = WIDTH // HEADS
MLP = 4 * WIDTH


class Layer(NamedTuple):
    """One row: ``inputs(rng, batch, t)`` (NumPy float32; integer arrays are ids, without a cotangent),
    ``forward(*args)`` with manualgrad ops, ``torch_forward(*tensors)`` with ``torch.nn.functional``,
    and the products' FLOPs of forward + backward at the rows' shapes, batch 32 and T 128 (None: not counted)."""

    name: str
    inputs: Callable[[np.random.Generator, int, int], tuple]
    forward: Callable
    torch_forward: Callable
    flops: int | None


def _normal(rng: np.random.Generator, *shape: int, scale: float = 1.0) -> np.ndarray:
    return (scale * rng.standard_normal(shape)).astype(np.float32)


def _linear(d_in: int, d_out: int) -> Layer:
    return Layer(
        f"linear {d_in}->{d_out}",
        lambda rng, n, t: (_normal(rng, n, t, d_in), _normal(rng, d_in, d_out, scale=d_in**-0.5), _normal(rng, d_out)),
        ops.linear,
        lambda x, w, b: x @ w + b,
        6 * BATCH * T * d_in * d_out,
    )


def _functional():
    import torch.nn.functional as F

    return F


LAYERS: tuple[Layer, ...] = (
    Layer("embedding 84x128", lambda rng, n, t: (rng.integers(0, VOCAB, (n, t)).astype(np.int32), _normal(rng, VOCAB, WIDTH)),
          ops.embedding, lambda ids, table: _functional().embedding(ids.long(), table), None),
    Layer("layer_norm 128", lambda rng, n, t: (_normal(rng, n, t, WIDTH), _normal(rng, WIDTH), _normal(rng, WIDTH)),
          ops.layer_norm, lambda x, g, b: _functional().layer_norm(x, (WIDTH,), g, b), None),
    _linear(WIDTH, WIDTH),  # each of q, k, v and the output projection
    Layer(f"attention {HEADS}x{HEAD} causal", lambda rng, n, t: tuple(_normal(rng, n, HEADS, t, HEAD) for _ in range(3)),
          lambda q, k, v: ops.attention(q, k, v, causal=True),
          lambda q, k, v: _functional().scaled_dot_product_attention(q, k, v, is_causal=True),
          6 * BATCH * HEADS * T * T * HEAD),  # QK^T and PV forward, four products backward, half of each masked
    _linear(WIDTH, MLP),
    Layer(f"gelu {MLP}", lambda rng, n, t: (_normal(rng, n, t, MLP),), ops.gelu, lambda x: _functional().gelu(x), None),
    _linear(MLP, WIDTH),
    Layer(f"output layer + loss {WIDTH}->{VOCAB}",
          lambda rng, n, t: (_normal(rng, n, t, WIDTH), _normal(rng, WIDTH, VOCAB, scale=WIDTH**-0.5), _normal(rng, VOCAB),
                             rng.integers(0, VOCAB, (n, t)).astype(np.int32)),
          lambda x, w, b, y: losses.softmax_cross_entropy(ops.linear(x, w, b), y),
          lambda x, w, b, y: _functional().cross_entropy((x @ w + b).reshape(-1, VOCAB), y.long().reshape(-1)),
          6 * BATCH * T * WIDTH * VOCAB),
)


def layer_inputs(layer: Layer, batch: int, t: int) -> tuple:
    """The layer's inputs at ``(batch, t)`` and, last, a random cotangent of its output."""
    args = layer.inputs(np.random.default_rng(0), batch, t)
    y = jax.eval_shape(layer.forward, *args)
    return (*args, np.random.default_rng(1).standard_normal(y.shape).astype(np.float32))


def _differentiated(args: tuple) -> tuple[int, ...]:
    """The float inputs' positions (the cotangent, last, excluded)."""
    return tuple(i for i, a in enumerate(args[:-1]) if np.issubdtype(np.asarray(a).dtype, np.floating))


def layer_step(layer: Layer, diff: tuple[int, ...]) -> Callable[[str], Callable]:
    """``step(impl)``: ``(*args, g) -> (y, cotangents of args[diff])`` by the manual or the reference VJP."""

    def step(impl: str) -> Callable:
        def f(*args_and_g):
            *args, g = args_and_g
            with reference_mode(impl == "reference"):
                def forward(*d):
                    full = list(args)
                    for i, a in zip(diff, d):
                        full[i] = a
                    return layer.forward(*full)

                y, pullback = jax.vjp(forward, *(args[i] for i in diff))
                return y, pullback(g)

        return f

    return step


def torch_layer_runner(layer: Layer, diff: tuple[int, ...]) -> Callable[..., Runner | None]:
    """``runner(*host)`` over PyTorch eager forward + ``backward(g)`` (None without torch)."""

    def make(*host) -> Runner | None:
        try:
            import torch
        except ImportError:
            return None
        torch.set_num_threads(TORCH_THREADS)
        *args, g = host
        tensors = [torch.tensor(a, requires_grad=i in diff) for i, a in enumerate(args)]
        g = torch.tensor(g)

        def run(k: int) -> None:
            for _ in range(k):
                for i in diff:
                    tensors[i].grad = None
                layer.torch_forward(*tensors).backward(g)

        return run

    return make


def transformer_layer_rows(t: int, settings: Settings) -> list[dict]:
    """One row per :data:`LAYERS` entry and implementation (``t`` is the model's context, 128)."""
    rows = []
    for layer in LAYERS:
        args = layer_inputs(layer, BATCH, t)
        diff = _differentiated(args)
        runners, temps = op_runners(layer_step(layer, diff), args, torch_layer_runner(layer, diff), settings.with_torch)
        rows += as_rows(f"transformer-T{t}/{layer.name}", BATCH, settings.time(runners), layer.flops, temps)
    return rows
