"""The benchmark's markdown report: the tables of rows, per-layer rows and epochs, each row's
ratio to the manual implementation, and the targets (:mod:`experiments.benchmark.targets`)."""

from __future__ import annotations

import datetime
from typing import Any, Iterable, Sequence

from experiments import common
from experiments.benchmark.machine import PEAK_SIZE
from experiments.benchmark.targets import evaluate


def ratios(result: dict) -> dict[tuple[str, int], dict[str, float]]:
    """Per ``(model, batch)`` of ``result["rows"]``: every implementation's step time over the manual one."""
    out: dict[tuple[str, int], dict[str, float]] = {}
    for row in result["rows"]:
        out.setdefault((row["model"], row["batch"]), {})[row["impl"]] = row["step_ms"]
    return {k: {impl: ms / v["manual"] for impl, ms in v.items()} for k, v in out.items()}


def markdown(result: dict, command: str) -> str:
    """The report of ``result`` (a benchmark.json document) measured by ``command``."""
    lines = [
        f"Measured {datetime.date.today().isoformat()} on {result['device']} "
        f"({', '.join(f'{k} {v}' for k, v in result['versions'].items())}).",
        f"Command: `{command}`",
        "",
        f"Large-GEMM rate ({PEAK_SIZE}³ float32): **{result['gemm_peak_gflops']:.1f} GFLOP/s**.",
        *step_table(result),
        *layer_table(result),
        *epoch_table(result),
        "",
        *table(("target", "measured", "met"), "lll",
               [(what, measured, "yes" if ok else "**no**") for what, measured, ok in evaluate(result)]),
    ]
    return "\n".join(lines) + "\n"


def table(header: Sequence[str], align: str, rows: Iterable[Sequence[Any]]) -> list[str]:
    """A markdown table: ``header``, one letter per column in ``align`` (``l`` left, ``r`` right), the rows' cells."""
    rule = "|" + "|".join("---:" if a == "r" else "---" for a in align) + "|"
    return [f"| {' | '.join(header)} |", rule, *(f"| {' | '.join(map(str, row))} |" for row in rows)]


def step_table(result: dict) -> list[str]:
    """The train-step (and attention) rows with their ratios to manual."""
    peak, r = result["gemm_peak_gflops"], ratios(result)
    rows = [(row["model"], row["batch"], row["impl"], f"{row['step_ms']:.3f}",
             "–" if row["gflops"] is None else f"{row['gflops']:.1f}",
             "–" if row["gflops"] is None else f"{100 * row['gflops'] / peak:.0f}%",
             f"{r[(row['model'], row['batch'])][row['impl']]:.2f}",
             "–" if row["temp_bytes"] is None else f"{row['temp_bytes']:,}") for row in result["rows"]]
    return [
        "",
        "Train step (gradient + clip to global norm + SGD momentum; the transformer rows: AdamW; the attention rows:",
        "forward + backward of attention alone). GFLOP/s counts the matrix products only; ratio is time over manual's.",
        "",
        *table(("model", "batch", "impl", "step ms", "GFLOP/s", "% of GEMM rate", "ratio", "XLA temp bytes"), "lrlrrrrr",
               rows),
    ]


def layer_table(result: dict) -> list[str]:
    """The CNN's per-layer rows with their ratios to the reference (nothing without such rows)."""
    if not result.get("layers"):
        return []
    ref = {(row["model"], row["batch"]): row["step_ms"] for row in result["layers"] if row["impl"] == "reference"}
    rows = [(row["model"][4:], row["batch"], row["impl"], f"{row['step_ms']:.3f}",
             "–" if row["gflops"] is None else f"{row['gflops']:.1f}",
             f"{row['step_ms'] / ref[(row['model'], row['batch'])]:.2f}", f"{row['temp_bytes']:,}")
            for row in result["layers"]]
    return [
        "",
        "The CNN's layers, forward + backward (the cotangents the train step needs: no input gradient for",
        "conv1). manual: the op as training runs it (`impl=\"auto\"`: on CPU the gemm formulation for conv1,",
        "Winograd F(2x2, 3x3) in batch slices for conv2); xla: the hand-written rules",
        "as plain XLA convolutions (`impl=\"xla\"`, what GPUs run); reference: `jax.vjp` of the plain lax forward.",
        "",
        *table(("layer", "batch", "impl", "ms", "GFLOP/s", "ratio to reference", "XLA temp bytes"), "lrlrrrr", rows),
    ]


def epoch_table(result: dict) -> list[str]:
    """The epoch rows (nothing without them)."""
    if not result["epochs"]:
        return []
    rows = [(row["batch"], row["examples"], row["epoch"], row["grad"], row["steps"], f"{row['epoch_ms']:.1f}",
             f"{row['gflops']:.1f}", f"{100 * row['fraction_of_peak']:.0f}%") for row in result["epochs"]]
    return [
        "",
        f"One epoch ({common.MNIST.architecture}, random MNIST-shaped data): the scanned epoch is one compiled call",
        "(`train.make_epoch`); the loop gathers the shuffled batches once, then calls the jitted step per batch.",
        "",
        *table(("batch", "examples", "epoch", "grad", "steps", "epoch ms", "GFLOP/s", "% of GEMM rate"), "rrllrrrr", rows),
    ]
