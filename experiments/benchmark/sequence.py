"""The benchmark's sequence rows: attention alone at long contexts, and the transformer train step.

* ``attention-T{T}`` (batch 1, 4 heads, head dim 64, causal): forward + backward of
  ``sum(attention(q, k, v) * g)`` for q, k and v. ``manual``: :func:`manualgrad.ops.attention`
  (blockwise forward keeping each row's log-sum-exp, blockwise backward recomputing the
  probabilities); ``reference``: ``jax.grad`` of plain softmax attention, which keeps the
  ``(T, T)`` probabilities for the backward pass.
* ``transformer-T{T}`` (the Shakespeare experiment's model: 4 blocks, 4 heads, width 128, 84
  characters, batch 32): the train step with AdamW and clipping, per gradient source, and the
  same step in PyTorch eager with ``F.scaled_dot_product_attention``.

Rows have benchmark.json's layout (:func:`experiments.benchmark.timing.as_rows`).
"""

from __future__ import annotations

from typing import Callable

import jax
import jax.numpy as jnp
import numpy as np

from experiments.benchmark.timing import (
    Runner, Settings, as_rows, grad_runners, repeat_call, step_runner, temp_bytes, time_interleaved, torch_runner,
)
from manualgrad import losses, nn, ops, reference_mode, train

ATTENTION_T = (512, 2048, 8192)
HEADS, HEAD_DIM = 4, 64
TRANSFORMER_T = (128, 256)
VOCAB, WIDTH, DEPTH, BATCH = 84, 128, 4, 32
LR, MAX_NORM, WEIGHT_DECAY = 3e-3, 1.0, 0.1


def attention_step(impl: str) -> Callable:
    """``(q, k, v, g) -> (q_bar, k_bar, v_bar)`` of ``sum(attention(q, k, v, causal=True) * g)``."""

    def f(q, k, v, g):
        with reference_mode(impl == "reference"):
            return jax.grad(lambda q, k, v: jnp.sum(ops.attention(q, k, v, causal=True) * g), argnums=(0, 1, 2))(q, k, v)

    return f


def attention_flops(t: int) -> int:
    """The products of forward + backward over the full ``T x T`` score matrix: ``q k^T`` and
    ``P v`` forward, ``dO v^T``, ``dS k``, ``dS^T q`` and ``P^T dO`` backward (the manual
    backward also recomputes ``q k^T``, not counted), per head."""
    return 6 * 2 * HEADS * t * t * HEAD_DIM


def attention_rows(t: int, settings: Settings) -> list[dict]:
    """Forward + backward of attention alone at context ``t``, manual and reference; from T=8192, where a
    call takes seconds, at most 3 rounds of one call each."""
    rng = np.random.default_rng(0)
    q, k, v, g = (jax.device_put(rng.standard_normal((1, HEADS, t, HEAD_DIM), dtype=np.float32)) for _ in range(4))
    runners, temps = {}, {}
    for impl in ("manual", "reference"):
        compiled = jax.jit(attention_step(impl)).lower(q, k, v, g).compile()
        runners[impl], temps[impl] = repeat_call(compiled, q, k, v, g), temp_bytes(compiled)
    if t >= 8192:
        seconds = time_interleaved(runners, min(settings.rounds, 3), None)
    else:
        seconds = settings.time(runners)
    return as_rows(f"attention-T{t}", 1, seconds, attention_flops(t), temps)


def transformer(t: int) -> nn.Layer:
    """The Shakespeare experiment's model at context ``t``."""
    return nn.TransformerLM(VOCAB, t, WIDTH, DEPTH, HEADS)


def transformer_flops(t: int) -> int:
    """Three times the forward's products (forward, and the two products of each backward):
    per token and block ``2 x 12 D^2`` (q, k, v, o and the 4x MLP) and ``2 x 2 T D`` (scores and
    values over the full context), and ``2 D V`` for the output layer."""
    per_token = DEPTH * (24 * WIDTH**2 + 4 * t * WIDTH) + 2 * WIDTH * VOCAB
    return 3 * BATCH * t * per_token


def transformer_batch(t: int) -> tuple[np.ndarray, np.ndarray]:
    """Random ids and targets, ``(BATCH, t)`` each."""
    rng = np.random.default_rng(0)
    return rng.integers(0, VOCAB, (BATCH, t)).astype(np.int32), rng.integers(0, VOCAB, (BATCH, t)).astype(np.int32)


def transformer_step_runner(t: int, grad: str) -> tuple[Runner, int | None]:
    """A runner over the compiled, donating transformer train step, and its XLA temp bytes."""
    model = transformer(t)
    _, params = model.init(jax.random.PRNGKey(0), (BATCH, t))
    opt = train.adamw_with_clipping(LR, MAX_NORM, WEIGHT_DECAY)
    batch = tuple(jax.device_put(a) for a in transformer_batch(t))
    opt_state = opt.init(params)
    compiled = train.make_train_step(model, losses.softmax_cross_entropy, opt, grad).lower(params, opt_state, batch).compile()
    return step_runner(compiled, params, opt_state, batch), temp_bytes(compiled)


def torch_transformer_runner(t: int) -> Runner | None:
    """The same step in PyTorch eager: zero_grad, forward, cross-entropy, backward, clip_grad_norm_,
    AdamW with weight decay on the matrices only; None without PyTorch."""
    try:
        import torch
    except ImportError:
        return None
    from experiments.torch_transformer import torch_lm

    _, params = transformer(t).init(jax.random.PRNGKey(0), (BATCH, t))
    model = torch_lm(jax.device_get(params), HEADS)
    decay = [p for p in model.parameters() if p.ndim >= 2]
    rest = [p for p in model.parameters() if p.ndim < 2]
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": WEIGHT_DECAY}, {"params": rest, "weight_decay": 0.0}],
                            lr=LR, betas=(0.9, 0.99))
    x, y = (torch.tensor(a, dtype=torch.long) for a in transformer_batch(t))
    loss = torch.nn.functional.cross_entropy
    return torch_runner(model, opt, lambda: loss(model(x).reshape(-1, VOCAB), y.reshape(-1)), MAX_NORM)


def transformer_rows(t: int, settings: Settings) -> list[dict]:
    """The transformer's train step at context ``t`` per gradient source, and in PyTorch eager."""
    runners, temps = grad_runners(lambda grad: transformer_step_runner(t, grad), lambda: torch_transformer_runner(t),
                                  settings.with_torch)
    return as_rows(f"transformer-T{t}", BATCH, settings.time(runners), transformer_flops(t), temps)
