"""What the benchmark records about the machine: its description, its large-GEMM rate and the
versions in the process."""

from __future__ import annotations

import os
import platform
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from experiments.benchmark.timing import repeat_call, time_interleaved

PEAK_SIZE = 2048


def device_description() -> str:
    """``cpu: <model name>, <n> cores``, or ``<platform>: <device kind>`` for an accelerator."""
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


def peak_gflops(rounds: int, block_seconds: float) -> float:
    """GFLOP/s of one large float32 matrix product (``PEAK_SIZE``³), the machine's GEMM rate."""
    rng = np.random.default_rng(2)
    a, b = (jax.device_put(rng.standard_normal((PEAK_SIZE, PEAK_SIZE), dtype=np.float32)) for _ in range(2))
    matmul = jax.jit(jnp.matmul).lower(a, b).compile()
    seconds = time_interleaved({"gemm": repeat_call(matmul, a, b)}, rounds, block_seconds)["gemm"]
    return 2 * PEAK_SIZE**3 / seconds / 1e9


def versions(reuse_memory: bool) -> dict[str, Any]:
    """jax, python, the malloc setting, torch and its threads (when installed) and ``XLA_FLAGS`` (when set)."""
    found: dict[str, Any] = {"jax": jax.__version__, "python": platform.python_version(), "reuse_freed_memory": reuse_memory}
    try:
        import torch

        found["torch"] = torch.__version__
        found["torch_threads"] = torch.get_num_threads()
    except ImportError:
        pass
    if os.environ.get("XLA_FLAGS"):
        found["XLA_FLAGS"] = os.environ["XLA_FLAGS"]
    return found
