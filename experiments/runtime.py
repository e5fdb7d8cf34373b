"""Where a run executes: joining a multi-process run, the data-parallel mesh of ``--devices``, and
what the config records about the machine.

Floor 2 of the experiments (see :mod:`experiments.harness`): imports :mod:`experiments.flags` only.
"""

from __future__ import annotations

import sys
from typing import Any

import jax

from experiments.flags import FlagError
from manualgrad import parallel


def join_processes() -> bool:
    """Join a launched or scheduled multi-process run (:func:`manualgrad.parallel.initialize`, a
    no-op in a lone process).

    Returns:
        True when joined (or alone); False, after saying why on stderr, when the coordinator is unreachable.
    """
    try:
        parallel.initialize()
    except ConnectionError as e:
        print(f"error: {e}", file=sys.stderr)
        return False
    return True


def mesh_for(devices: int | None, batch_size: int) -> Any:
    """The data-parallel mesh of ``--devices`` over every process.

    Args:
        devices: ``--devices`` (None: every local device).
        batch_size: ``--batch-size``, which must split evenly over the mesh.

    Returns:
        The mesh, or None for one device in one process (the plain step).

    Raises:
        FlagError: the flags do not fit the machine, or the batch does not split.
    """
    try:
        mesh = parallel.data_mesh(devices)
        if mesh.size > 1:
            parallel.check_batch(mesh, batch_size, "--batch-size")
    except ValueError as e:
        raise FlagError(f"--devices {devices}: {e}" if devices is not None else str(e)) from None
    return None if mesh.size == 1 else mesh


def is_writer() -> bool:
    """Whether this process writes the run's files (process 0 of a multi-process run)."""
    return jax.process_index() == 0


def run_environment(reuse_memory: bool, mesh: Any) -> dict[str, Any]:
    """What a run's config records about where it ran: device kind, jax, the malloc setting,
    devices and processes."""
    return {
        "device": jax.devices()[0].device_kind,
        "jax": jax.__version__,
        "reuse_freed_memory": reuse_memory,
        "devices": 1 if mesh is None else mesh.size,
        "processes": jax.process_count(),
    }
