"""How fast are hand-written gradients? ``python -m experiments.benchmark --out DIR``.

Everything is measured in one process, one run, so the ratios hold even where absolute
times drift on a shared machine:

* the train step (gradient, clipping to global norm, SGD with momentum) per ``grad`` source
  (``manual``, ``explicit``, ``reference``), the same step in PyTorch eager, and the "GEMMs only" row:
  the step's matrix products alone, jitted, with nothing between them;
* the machine's large-GEMM rate (a 2048 x 2048 x 2048 float32 product) and every row's achieved
  rate, counting only the step's matrix-product FLOPs;
* a whole MNIST-sized epoch (60000 examples) as one scanned call (:func:`manualgrad.train.make_epoch`)
  against a Python loop over the jitted step;
* the compiled step's temporary memory from XLA's memory analysis;
* attention alone at contexts 512, 2048 and 8192 (hand-written blockwise backward against
  ``jax.grad`` of plain softmax attention) and the Shakespeare transformer's train step at
  contexts 128 and 256 (:mod:`experiments.benchmark_sequence`).

Timing: every implementation is warmed up, then the implementations take turns (in a rotated
order) running blocks of steps for ``--rounds`` rounds; a row's time is the median over rounds.
Inputs are random (standard normal features, uniform labels): the step's cost does not depend
on the values. Writes ``DIR/benchmark.json`` and ``DIR/BENCHMARKS.md`` (the tables, with the date,
machine and command).
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import json
import os
import pathlib
import platform
import sys
from typing import Any, Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from experiments import benchmark_sequence as sequence
from experiments import common
from experiments.timing import Runner, repeat_call, step_runner, temp_bytes, time_interleaved
from manualgrad import malloc, train

IMPLS = ("manual", "explicit", "reference", "torch", "gemms_only")
PEAK_SIZE = 2048
EPOCH_EXAMPLES = 60000
LR, MOMENTUM, MAX_NORM = 0.01, 0.9, 5.0


@dataclasses.dataclass(frozen=True)
class Config:
    task: common.Task
    batch: int

    @property
    def model(self) -> str:
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
CONFIGS = (
    Config(common.MNIST, 128),
    Config(common.MNIST, 1024),
    Config(MNIST_WIDE, 256),
    SMALL,
    Config(CNN, 128),
    Config(CNN, 512),
)
EPOCH_BATCHES = (128, 1024)


# -- inputs ------------------------------------------------------------------------------
def random_batch(task: common.Task, n: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """``n`` random examples shaped like ``task``'s data (features N(0, 1), labels uniform)."""
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((n, *task.input_shape), dtype=np.float32)
    if task.metric == "accuracy":
        return x, rng.integers(0, task.outputs, n).astype(np.int32)
    return x, rng.standard_normal((n, task.outputs), dtype=np.float32)


def optimizer():
    return train.sgd_with_clipping(LR, MAX_NORM, MOMENTUM)


# -- the implementations -------------------------------------------------------------------
def jax_step_runner(config: Config, grad: str) -> tuple[Runner, int]:
    """A runner over the compiled, donating train step, and the step's XLA temp bytes."""
    task = config.task
    params = task.init(0)
    opt = optimizer()
    opt_state = opt.init(params)
    batch = tuple(jax.device_put(a) for a in random_batch(task, config.batch))
    compiled = train.make_train_step(task.model(), task.loss, opt, grad).lower(params, opt_state, batch).compile()
    return step_runner(compiled, params, opt_state, batch), temp_bytes(compiled)


def gemms_only(config: Config) -> tuple[Any, tuple]:
    """The step's matrix products alone, chained as in the step: ``(compiled, operands)``.

    Forward ``h[k+1] = h[k] @ w[k]``, then backward from a random output cotangent:
    ``w_bar[k] = h[k].T @ g`` and ``g = g @ w[k].T`` (not for the first layer). No bias,
    activation, loss, clipping or update: what is left is the time of the GEMMs themselves.
    It is a reference point, not a lower bound: XLA:CPU runs independent products of the
    full step concurrently on its thread pool, and the full step has sometimes measured faster.
    """
    widths, b = config.task.widths, config.batch
    rng = np.random.default_rng(1)
    x = rng.standard_normal((b, widths[0]), dtype=np.float32)
    ws = [rng.standard_normal((i, o), dtype=np.float32) / np.sqrt(i) for i, o in zip(widths[:-1], widths[1:])]
    g = rng.standard_normal((b, widths[-1]), dtype=np.float32)
    operands = jax.device_put((x, ws, g))

    def products(x, ws, g):
        hs = [x]
        for w in ws:
            hs.append(hs[-1] @ w)
        w_bars = []
        for k in reversed(range(len(ws))):
            w_bars.append(lax.dot_general(hs[k], g, (((0,), (0,)), ((), ()))))
            if k:
                g = lax.dot_general(g, ws[k], (((1,), (1,)), ((), ())))
        return hs[-1], w_bars

    return jax.jit(products).lower(*operands).compile(), operands


def gemms_only_runner(config: Config) -> tuple[Runner, int]:
    """A runner over :func:`gemms_only`, and its XLA temp bytes."""
    compiled, operands = gemms_only(config)
    return repeat_call(compiled, *operands), temp_bytes(compiled)


def torch_step_runner(config: Config) -> Runner | None:
    """The same step in PyTorch eager (CPU): zero_grad, forward, loss, backward, clip_grad_norm_, SGD."""
    try:
        import torch
    except ImportError:
        return None
    from experiments.compare_torch import torch_inputs, torch_labels, torch_loss, torch_model

    task = config.task
    model = torch_model(task, task.init(0))
    opt = torch.optim.SGD(model.parameters(), lr=LR, momentum=MOMENTUM)
    loss_fn = torch_loss(task)
    x, y = random_batch(task, config.batch)
    x, y = torch_inputs(task, x), torch_labels(task, y)

    def run(k: int) -> None:
        for _ in range(k):
            opt.zero_grad(set_to_none=True)
            loss_fn(model(x), y).backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), MAX_NORM)
            opt.step()

    return run


def peak_gflops(rounds: int, block_seconds: float) -> float:
    """GFLOP/s of one large float32 matrix product (``PEAK_SIZE``³), the machine's GEMM rate."""
    rng = np.random.default_rng(2)
    a, b = (jax.device_put(rng.standard_normal((PEAK_SIZE, PEAK_SIZE), dtype=np.float32)) for _ in range(2))
    matmul = jax.jit(jnp.matmul).lower(a, b).compile()
    seconds = time_interleaved({"gemm": repeat_call(matmul, a, b)}, rounds, block_seconds)["gemm"]
    return 2 * PEAK_SIZE**3 / seconds / 1e9


# -- the measurements ----------------------------------------------------------------------
def step_rows(config: Config, rounds: int, block_seconds: float, with_torch: bool) -> list[dict]:
    """One row per implementation for ``config``."""
    runners, temps = {}, {}
    for grad in train.GRADS:
        runners[grad], temps[grad] = jax_step_runner(config, grad)
    if not config.is_cnn:
        runners["gemms_only"], temps["gemms_only"] = gemms_only_runner(config)
    torch_run = torch_step_runner(config) if with_torch else None
    if torch_run is not None:
        runners["torch"], temps["torch"] = torch_run, None
    seconds = time_interleaved(runners, rounds, block_seconds)
    flops = config.matmul_flops()
    return [
        {
            "model": config.model,
            "batch": config.batch,
            "impl": impl,
            "step_ms": seconds[impl] * 1e3,
            "gflops": flops / seconds[impl] / 1e9,
            "temp_bytes": temps[impl],
        }
        for impl in IMPLS
        if impl in seconds
    ]


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


def layer_rows(batch: int, rounds: int, block_seconds: float) -> list[dict]:
    """Forward + backward of each of the CNN's convolutions and poolings, per implementation."""
    rows = []
    for name, shape, c_out, needs_x_bar in CNN_LAYERS:
        x, w, b, g = (jax.device_put(a) for a in layer_inputs(batch, shape, c_out))
        c_in = shape[-1]
        runners, temps = {}, {}
        for impl in LAYER_IMPLS:
            if c_out is None and impl == "xla":
                continue
            compiled = jax.jit(layer_function(c_out, needs_x_bar, impl)).lower(x, w, b, g).compile()
            runners[impl], temps[impl] = repeat_call(compiled, x, w, b, g), temp_bytes(compiled)
        seconds = time_interleaved(runners, rounds, block_seconds)
        # products: the forward, w_bar, and x_bar where it is needed
        flops = 2 * batch * shape[0] * shape[1] * 9 * c_in * c_out * (3 if needs_x_bar else 2) if c_out else None
        rows += [{"model": f"cnn/{name}", "batch": batch, "impl": impl, "step_ms": seconds[impl] * 1e3,
                  "gflops": None if flops is None else flops / seconds[impl] / 1e9, "temp_bytes": temps[impl]}
                 for impl in runners]
    return rows


def epoch_rows(batch: int, repeats: int, examples: int = EPOCH_EXAMPLES) -> list[dict]:
    """One MNIST-shaped epoch: scanned (manual and reference gradients) and a Python loop over the step.

    The loop gathers the epoch's shuffled batches on the device in one call, then calls the
    jitted, donating train step once per batch: the least a per-step loop can do.
    """
    task = common.MNIST
    config = Config(task, batch)
    x, y = (jax.device_put(a) for a in random_batch(task, examples))
    key = jax.random.PRNGKey(0)
    steps = examples // batch

    def fresh_state() -> tuple[Any, list]:
        opt = optimizer()
        params = task.init(0)
        return opt, [params, opt.init(params)]

    def scanned(grad: str) -> Runner:
        opt, state = fresh_state()
        epoch = train.make_epoch(task.model(), task.loss, opt, batch, grad).lower(*state, x, y, key).compile()

        def run(k: int) -> None:
            for e in range(k):
                p, s, metrics = epoch(*state, x, y, train.epoch_key(key, e))
                state[:] = [p, s]
            jax.block_until_ready(metrics)

        return run

    def python_loop(grad: str) -> Runner:
        opt, state = fresh_state()
        step = train.make_train_step(task.model(), task.loss, opt, grad)
        gather = jax.jit(lambda x, y, idx: (x[idx], y[idx]))

        def run(k: int) -> None:
            for e in range(k):
                xs, ys = gather(x, y, train.epoch_permutation(train.epoch_key(key, e), examples, batch))
                p, s = state
                for i in range(steps):
                    p, s, metrics = step(p, s, (xs[i], ys[i]))
                state[:] = [p, s]
            jax.block_until_ready(metrics)

        return run

    runners = {("scan", "manual"): scanned("manual"), ("scan", "reference"): scanned("reference"),
               ("loop", "manual"): python_loop("manual")}
    for run in runners.values():
        run(1)  # compiles the loop's step and gather; warms the caches
    seconds = time_interleaved(runners, repeats, block_seconds=None)
    flops = steps * config.matmul_flops()
    return [
        {"model": config.model, "batch": batch, "epoch": mode, "grad": grad, "examples": examples, "steps": steps,
         "epoch_ms": t * 1e3, "gflops": flops / t / 1e9}
        for (mode, grad), t in seconds.items()
    ]


def device_description() -> str:
    d = jax.devices()[0]
    if d.platform == "cpu":
        name = platform.processor() or platform.machine()
        try:
            with open("/proc/cpuinfo") as f:
                name = next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
        except (OSError, StopIteration):
            pass
        return f"cpu: {name}, {os.cpu_count()} cores"
    return f"{d.platform}: {d.device_kind}"


def benchmark(configs: Sequence[Config] = CONFIGS, *, rounds: int = 9, block_seconds: float = 0.2,
              epoch_batches: Sequence[int] = EPOCH_BATCHES, epoch_repeats: int = 5,
              epoch_examples: int = EPOCH_EXAMPLES, with_torch: bool = True,
              progress: Callable[[str], None] = lambda s: None, reuse_memory: bool = False,
              attention_t: Sequence[int] = sequence.ATTENTION_T, transformer_t: Sequence[int] = sequence.TRANSFORMER_T) -> dict:
    """Run every measurement; return the ``benchmark.json`` document."""
    progress(f"large GEMM ({PEAK_SIZE}^3 float32)")
    peak = peak_gflops(rounds, block_seconds)
    rows = []
    for config in configs:
        progress(f"train step {config.model} batch {config.batch}")
        rows += step_rows(config, rounds, block_seconds, with_torch)
    layers = []
    for batch in sorted({c.batch for c in configs if c.is_cnn}):
        progress(f"CNN layers batch {batch}")
        layers += layer_rows(batch, rounds, block_seconds)
    for t in attention_t:
        progress(f"attention T={t}")
        # a step at T=8192 takes seconds: fewer rounds, one call per block
        long = t >= 8192
        rows += sequence.attention_rows(t, lambda r: time_interleaved(r, min(rounds, 3) if long else rounds,
                                                                      None if long else block_seconds))
    for t in transformer_t:
        progress(f"transformer train step T={t}")
        rows += sequence.transformer_rows(t, lambda r: time_interleaved(r, rounds, block_seconds), with_torch)
    epochs = []
    for batch in epoch_batches:
        progress(f"epoch {common.MNIST.architecture} batch {batch}")
        epochs += epoch_rows(batch, epoch_repeats, epoch_examples)
    for row in epochs:
        row["fraction_of_peak"] = row["gflops"] / peak
    versions = {"jax": jax.__version__, "python": platform.python_version(), "reuse_freed_memory": reuse_memory}
    try:
        import torch

        versions["torch"] = torch.__version__
        versions["torch_threads"] = torch.get_num_threads()
    except ImportError:
        pass
    if os.environ.get("XLA_FLAGS"):
        versions["XLA_FLAGS"] = os.environ["XLA_FLAGS"]
    return {
        "device": device_description(),
        "gemm_peak_gflops": peak,
        "rows": rows,
        "layers": layers,
        "epochs": epochs,
        "versions": versions,
        "settings": {"rounds": rounds, "block_seconds": block_seconds, "epoch_repeats": epoch_repeats,
                     "optimizer": f"sgd_with_clipping(lr={LR}, max_norm={MAX_NORM}, momentum={MOMENTUM})"},
    }


# -- report --------------------------------------------------------------------------------
def ratios(result: dict) -> dict[tuple[str, int], dict[str, float]]:
    """Per ``(model, batch)``: every implementation's step time over the manual one."""
    out: dict[tuple[str, int], dict[str, float]] = {}
    for row in result["rows"]:
        out.setdefault((row["model"], row["batch"]), {})[row["impl"]] = row["step_ms"]
    return {k: {impl: ms / v["manual"] for impl, ms in v.items()} for k, v in out.items()}


def label(key: tuple[str, int]) -> str:
    return f"{key[0]}@{key[1]}"


def targets(result: dict) -> list[tuple[str, str, bool]]:
    """The issue's targets: (what, measured, met)."""
    r = ratios(result)
    mlp = {k: v for k, v in r.items() if not k[0].startswith(("cnn", "attention", "transformer"))}
    cnn = {k: v for k, v in r.items() if k[0].startswith("cnn")}
    manual_over_ref = {k: 1 / v["reference"] for k, v in mlp.items()}
    checks = []
    if mlp:
        median = float(np.median(list(manual_over_ref.values())))
        checks += [
            ("MLP manual / reference step time, median over configs <= 1.00", f"{median:.3f}", median <= 1.0),
            ("MLP manual / reference, every config <= 1.05",
             ", ".join(f"{label(k)} {v:.3f}" for k, v in manual_over_ref.items()), max(manual_over_ref.values()) <= 1.05),
        ]
    for (model, batch), v in cnn.items():
        need = 0.60 if batch == 128 else 1.05
        checks.append((f"CNN manual / reference at {label((model, batch))} <= {need:.2f}", f"{1 / v['reference']:.3f}",
                       1 / v["reference"] <= need))
    temps = {(row["model"], row["batch"], row["impl"]): row["temp_bytes"] for row in result["rows"]}
    for (model, batch), v in r.items():
        if model.startswith("attention"):
            t = int(model.split("-T")[1])
            need = 1.3 if t <= 512 else 1.0
            checks.append((f"attention manual / reference time at T={t} <= {need}", f"{1 / v['reference']:.3f}",
                           1 / v["reference"] <= need))
            if t >= 2048:
                m, ref = temps[(model, batch, "manual")], temps[(model, batch, "reference")]
                checks.append((f"attention manual temp bytes <= 1/8 of reference at T={t}",
                               f"{m:,} vs {ref:,} ({ref / m:.0f}x less)", m * 8 <= ref))
        if model.startswith("transformer"):
            checks.append((f"transformer manual / reference at {label((model, batch))} <= 1.05",
                           f"{1 / v['reference']:.3f}", 1 / v["reference"] <= 1.05))
    with_explicit = {k: v for k, v in r.items() if "explicit" in v}
    checks.append(("explicit / manual, every config <= 1.10",
                   ", ".join(f"{label(k)} {v['explicit']:.3f}" for k, v in with_explicit.items()),
                   max(v["explicit"] for v in with_explicit.values()) <= 1.10))
    for (model, batch), v in r.items():
        if "torch" in v and model.startswith("transformer"):
            checks.append((f"torch / manual at {label((model, batch))} (reported, no target)", f"{v['torch']:.2f}", True))
        elif "torch" in v:
            need = 0.8 if model.startswith("cnn") else 1.5 if batch >= 256 else 1.1
            checks.append((f"torch / manual at {label((model, batch))} >= {need}", f"{v['torch']:.2f}", v["torch"] >= need))
    for row in result["epochs"]:
        if row["epoch"] == "scan" and row["grad"] == "manual":
            need = 0.60 if row["batch"] <= 128 else 0.75
            checks.append((f"scanned epoch, batch {row['batch']}: fraction of GEMM peak >= {need:.2f}",
                           f"{row['fraction_of_peak']:.3f}", row["fraction_of_peak"] >= need))
    for row in result["rows"]:
        if row["impl"] == "manual" and row["temp_bytes"] is not None and not row["model"].startswith("attention"):
            ref = temps[(row["model"], row["batch"], "reference")]
            checks.append((f"temp bytes manual <= reference at {row['model']}@{row['batch']}",
                           f"{row['temp_bytes']} vs {ref}", row["temp_bytes"] <= ref))
    return checks


def markdown(result: dict, command: str) -> str:
    peak = result["gemm_peak_gflops"]
    r = ratios(result)
    lines = [
        f"Measured {datetime.date.today().isoformat()} on {result['device']} "
        f"({', '.join(f'{k} {v}' for k, v in result['versions'].items())}).",
        f"Command: `{command}`",
        "",
        f"Large-GEMM rate ({PEAK_SIZE}³ float32): **{peak:.1f} GFLOP/s**.",
        "",
        "Train step (gradient + clip to global norm + SGD momentum; the transformer rows: AdamW; the attention rows:",
        "forward + backward of attention alone). GFLOP/s counts the matrix products only; ratio is time over manual's.",
        "",
        "| model | batch | impl | step ms | GFLOP/s | % of GEMM rate | ratio | XLA temp bytes |",
        "|---|---:|---|---:|---:|---:|---:|---:|",
    ]
    for row in result["rows"]:
        ratio = r[(row["model"], row["batch"])][row["impl"]]
        temp = "–" if row["temp_bytes"] is None else f"{row['temp_bytes']:,}"
        lines.append(
            f"| {row['model']} | {row['batch']} | {row['impl']} | {row['step_ms']:.3f} | {row['gflops']:.1f} "
            f"| {100 * row['gflops'] / peak:.0f}% | {ratio:.2f} | {temp} |"
        )
    if result.get("layers"):
        lines += [
            "",
            "The CNN's layers, forward + backward (the cotangents the train step needs: no input gradient for",
            "conv1). manual: the op as training runs it (`impl=\"auto\"`: on CPU the gemm formulation for conv1,",
            "XLA convolutions with the weight gradient in 64-example slices for conv2); xla: the hand-written rules",
            "as plain XLA convolutions (`impl=\"xla\"`, what GPUs run); reference: `jax.vjp` of the plain lax forward.",
            "",
            "| layer | batch | impl | ms | GFLOP/s | ratio to reference | XLA temp bytes |",
            "|---|---:|---|---:|---:|---:|---:|",
        ]
        ref = {(row["model"], row["batch"]): row["step_ms"] for row in result["layers"] if row["impl"] == "reference"}
        for row in result["layers"]:
            gflops = "–" if row["gflops"] is None else f"{row['gflops']:.1f}"
            lines.append(
                f"| {row['model'][4:]} | {row['batch']} | {row['impl']} | {row['step_ms']:.3f} | {gflops} "
                f"| {row['step_ms'] / ref[(row['model'], row['batch'])]:.2f} | {row['temp_bytes']:,} |"
            )
    lines += [] if not result["epochs"] else [
        "",
        f"One epoch ({common.MNIST.architecture}, random MNIST-shaped data): the scanned epoch is one compiled call",
        "(`train.make_epoch`); the loop gathers the shuffled batches once, then calls the jitted step per batch.",
        "",
        "| batch | examples | epoch | grad | steps | epoch ms | GFLOP/s | % of GEMM rate |",
        "|---:|---:|---|---|---:|---:|---:|---:|",
    ]
    for row in result["epochs"]:
        lines.append(
            f"| {row['batch']} | {row['examples']} | {row['epoch']} | {row['grad']} | {row['steps']} | {row['epoch_ms']:.1f} "
            f"| {row['gflops']:.1f} | {100 * row['fraction_of_peak']:.0f}% |"
        )
    lines += ["", "| target | measured | met |", "|---|---|---|"]
    lines += [f"| {what} | {measured} | {'yes' if ok else '**no**'} |" for what, measured, ok in targets(result)]
    return "\n".join(lines) + "\n"


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=common.HelpFormatter)
    p.add_argument("--out", default="runs/benchmark", help="folder for benchmark.json and BENCHMARKS.md")
    p.add_argument("--rounds", type=int, default=9, help="timed rounds per implementation (the median is reported)")
    p.add_argument("--block-seconds", type=float, default=0.2, help="length of one timed block of steps")
    p.add_argument("--epoch-repeats", type=int, default=5, help="timed epochs per epoch variant")
    p.add_argument("--no-torch", action="store_true", help="leave out the PyTorch rows")
    p.add_argument("--quick", action="store_true",
                   help="smoke run (seconds): the California Housing config, a 4096-example epoch, one short round")
    p.add_argument("--only", choices=("mlp", "cnn", "sequence"), default=None,
                   help="only the MLP, the CNN or the sequence (attention, transformer) rows (default: all)")
    p.add_argument("--malloc-defaults", action="store_true",
                   help="measure with glibc's malloc as it starts, without manualgrad.malloc.reuse_freed_memory() "
                        "(every framework in the process, PyTorch too, runs with the same setting)")
    args = p.parse_args(argv)
    if args.rounds < 1 or args.epoch_repeats < 1 or not args.block_seconds > 0:
        p.error("--rounds and --epoch-repeats must be >= 1 and --block-seconds > 0")
    reuse_memory = False if args.malloc_defaults else malloc.reuse_freed_memory()
    configs, epoch_batches, epoch_examples = CONFIGS, EPOCH_BATCHES, EPOCH_EXAMPLES
    attention_t, transformer_t = sequence.ATTENTION_T, sequence.TRANSFORMER_T
    if args.only:
        configs = () if args.only == "sequence" else tuple(c for c in configs if c.is_cnn == (args.only == "cnn"))
        epoch_batches = epoch_batches if args.only == "mlp" else ()
        attention_t, transformer_t = (attention_t, transformer_t) if args.only == "sequence" else ((), ())
    if args.quick:
        configs, epoch_batches, epoch_examples = (SMALL,), (1024,), 4096
        attention_t, transformer_t = (256,), ()
        args.rounds, args.block_seconds, args.epoch_repeats = 1, 0.01, 1
    result = benchmark(
        configs, rounds=args.rounds, block_seconds=args.block_seconds, epoch_batches=epoch_batches,
        epoch_repeats=args.epoch_repeats, epoch_examples=epoch_examples, with_torch=not args.no_torch,
        progress=lambda s: print(f"measuring {s}", file=sys.stderr, flush=True), reuse_memory=reuse_memory,
        attention_t=attention_t, transformer_t=transformer_t,
    )
    out = pathlib.Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "benchmark.json").write_text(json.dumps(result, indent=2))
    command = "python -m experiments.benchmark " + " ".join(argv if argv is not None else sys.argv[1:])
    report = markdown(result, command.strip())
    (out / "BENCHMARKS.md").write_text(report)
    print(report)
    return 0


if __name__ == "__main__":
    sys.exit(main())
