"""Data parallelism over the devices of one or several processes, on JAX's own runtime.

A run is a ``Mesh`` with one axis, ``"data"``, over ``devices`` local devices of every process.
Each global batch is split along it (device ``i`` of the mesh holds rows ``i * b : (i + 1) * b``
of the batch, ``b = batch / devices``); params, optimiser state and layer state are replicated.
The train step is a ``shard_map``: every device runs the same hand-written forward and backward
on its rows, then the gradients are averaged over the devices by an explicit ``lax.psum``
(:func:`manualgrad.train.loss_and_grad` with ``axis_name``), so each device applies the same
update and the replicas stay equal.

Processes: :func:`initialize` joins the processes of a multi-process run to JAX's distributed
runtime (``jax.distributed.initialize``): started by :mod:`manualgrad.launch` it reads the
coordinator from the environment; under SLURM or Open MPI JAX finds its peers itself. Each
process feeds only its own rows of each global batch (:func:`global_batch`).
"""

from __future__ import annotations

import os
import pathlib
import socket
import sys
import threading
import time
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

__all__ = [
    "AXIS", "initialize", "data_mesh", "batch_sharding", "replicated", "check_batch", "process_rows",
    "global_batch", "replicate", "local", "Placement", "one_process_first", "barrier", "ENV_COORDINATOR", "ENV_PROCESSES", "ENV_PROCESS_ID", "ENV_LAUNCH_DIR",
]

AXIS = "data"
ENV_COORDINATOR, ENV_PROCESSES, ENV_PROCESS_ID = "MANUALGRAD_COORDINATOR", "MANUALGRAD_NUM_PROCESSES", "MANUALGRAD_PROCESS_ID"
ENV_LAUNCH_DIR = "MANUALGRAD_LAUNCH_DIR"
_CLUSTER_ENV = ("SLURM_NTASKS", "OMPI_COMM_WORLD_SIZE")


def initialize(timeout_seconds: int = 60, heartbeat_seconds: int = 10) -> bool:
    """Join this process to a multi-process run; return whether it is one.

    Started by ``python -m manualgrad.launch`` (the coordinator's address, the number of
    processes and this one's id are in ``$MANUALGRAD_COORDINATOR``, ``$MANUALGRAD_NUM_PROCESSES``
    and ``$MANUALGRAD_PROCESS_ID``), or under SLURM / Open MPI with more than one task
    (``jax.distributed.initialize()`` reads the scheduler's variables). A coordinator that cannot
    be reached within ``timeout_seconds``, or a peer lost later (JAX's heartbeat, ``heartbeat_seconds``), ends the
    process with an error instead of a hang; under the launcher, a lost peer also makes the
    launcher tell the others, which then exit saying which process was lost. Call it before anything else
    touches JAX's devices.
    """
    env = os.environ
    if ENV_COORDINATOR in env:
        if int(env[ENV_PROCESS_ID]) != 0:  # process 0 serves the coordinator; the others must reach it
            _wait_for(env[ENV_COORDINATOR], timeout_seconds, f"process {env[ENV_PROCESS_ID]} of {env[ENV_PROCESSES]}")
        jax.distributed.initialize(
            env[ENV_COORDINATOR], int(env[ENV_PROCESSES]), int(env[ENV_PROCESS_ID]),
            initialization_timeout=timeout_seconds, heartbeat_timeout_seconds=heartbeat_seconds,
        )
        if ENV_LAUNCH_DIR in env:
            threading.Thread(target=_watch_launcher, args=(pathlib.Path(env[ENV_LAUNCH_DIR]) / "lost",), daemon=True).start()
        return True
    if any(int(env.get(k, "1")) > 1 for k in _CLUSTER_ENV):
        jax.distributed.initialize(initialization_timeout=timeout_seconds, heartbeat_timeout_seconds=heartbeat_seconds)
        return True
    return False


def _wait_for(address: str, timeout_seconds: float, who: str) -> None:
    """Return once ``host:port`` accepts a TCP connection; a ``ConnectionError`` after ``timeout_seconds``."""
    host, port = address.rsplit(":", 1)
    deadline = time.monotonic() + timeout_seconds
    while True:
        try:
            socket.create_connection((host, int(port)), timeout=1).close()
            return
        except OSError as e:
            if time.monotonic() > deadline:
                raise ConnectionError(
                    f"manualgrad.parallel.initialize: {who} cannot reach the coordinator at {address} within "
                    f"{timeout_seconds} s ({e}); is process 0 running, and is the address right?"
                ) from None
            time.sleep(0.2)


def _watch_launcher(lost: pathlib.Path) -> None:
    """A daemon thread: once :mod:`manualgrad.launch` reports a lost process (the file ``lost``),
    say which one and exit with status 1, even while the main thread waits inside a collective
    that will never complete."""
    while not lost.is_file():
        time.sleep(0.2)
    time.sleep(0.1)  # the launcher writes the file in one call; let it finish
    print(f"manualgrad: process {os.environ.get(ENV_PROCESS_ID)} stops: {lost.read_text()}", file=sys.stderr, flush=True)
    os._exit(1)


def data_mesh(devices: int | None = None) -> Mesh:
    """A one-axis mesh (``"data"``) over the first ``devices`` local devices of every process
    (default: all of them), processes in order."""
    per_process: dict[int, list] = {}
    for d in jax.devices():
        per_process.setdefault(d.process_index, []).append(d)
    local = min(len(d) for d in per_process.values())  # every process must give the same number
    n = local if devices is None else devices
    if isinstance(n, bool) or not isinstance(n, (int, np.integer)) or not 1 <= n <= local:
        raise ValueError(
            f"manualgrad.parallel.data_mesh: devices must be an int in [1, {local}] (the fewest {jax.default_backend()} "
            f"devices a process of this run has), got {devices!r}"
        )
    chosen = [d for p in sorted(per_process) for d in sorted(per_process[p], key=lambda d: d.id)[:n]]
    return Mesh(np.array(chosen), (AXIS,))


def batch_sharding(mesh: Mesh) -> NamedSharding:
    """Rows split over the mesh's data axis."""
    return NamedSharding(mesh, P(AXIS))


def replicated(mesh: Mesh) -> NamedSharding:
    """The same whole value on every device."""
    return NamedSharding(mesh, P())


def check_batch(mesh: Mesh, batch_size: int, where: str) -> None:
    """A global batch must split evenly: every device gets ``batch_size / devices`` rows."""
    if batch_size % mesh.size:
        raise ValueError(
            f"{where}: the global batch of {batch_size} examples does not split evenly over {mesh.size} devices "
            f"({batch_size} % {mesh.size} = {batch_size % mesh.size}); use a batch size divisible by the device count, "
            f"e.g. {batch_size - batch_size % mesh.size or mesh.size}"
        )


def process_rows(mesh: Mesh, batch_size: int) -> slice:
    """The rows of a global batch that this process's devices hold: a contiguous block, as in a
    mesh from :func:`data_mesh` (another mesh must have the one axis ``"data"`` and each process's
    devices side by side)."""
    if mesh.axis_names != (AXIS,):
        raise ValueError(f"manualgrad.parallel: the mesh must have the one axis {AXIS!r}, got {mesh.axis_names}")
    per_device = batch_size // mesh.size
    mine = [i for i, d in enumerate(mesh.devices.flat) if d.process_index == jax.process_index()]
    if mine != list(range(mine[0], mine[-1] + 1)):
        raise ValueError(f"manualgrad.parallel: process {jax.process_index()}'s devices are not side by side in the "
                         f"mesh (positions {mine}); build it with data_mesh")
    return slice(mine[0] * per_device, (mine[-1] + 1) * per_device)


def global_batch(mesh: Mesh, local_rows: Any, batch_size: int) -> Any:
    """One global batch (a pytree of arrays) from this process's rows of it (:func:`process_rows`)."""
    sharding = batch_sharding(mesh)
    return jax.tree_util.tree_map(
        lambda a: jax.make_array_from_process_local_data(sharding, np.asarray(a), (batch_size, *np.shape(a)[1:])),
        local_rows,
    )


def replicate(mesh: Mesh, tree: Any) -> Any:
    """``tree`` (the same value in every process) replicated on every device of the mesh; typed
    ``jax.random.key`` arrays stay typed."""
    sharding = replicated(mesh)

    def one(a):
        if isinstance(a, jax.Array) and jax.dtypes.issubdtype(a.dtype, jax.dtypes.prng_key):
            return jax.random.wrap_key_data(one(jax.random.key_data(a)), impl=jax.random.key_impl(a))
        return jax.make_array_from_process_local_data(sharding, np.asarray(a), np.shape(a))

    return jax.tree_util.tree_map(one, tree)


def local(tree: Any) -> Any:
    """A replicated tree as this process's NumPy arrays (its first device's copy)."""
    return jax.tree_util.tree_map(lambda a: np.asarray(a.addressable_data(0)) if isinstance(a, jax.Array) else a, tree)


class Placement:
    """Where a run's params, optimiser state and layer state live, chosen once per run.

    ``put(tree)`` places a host tree (a fresh copy, so the caller's arrays are never donated):
    on the default device, or replicated on every device of ``mesh``. ``get(tree)`` is this
    process's own copy of a placed tree, on its default device (the tree itself without a
    mesh). ``data(tree)`` is where a dataset stays: on the device without a mesh, on the host
    with one (each process then feeds its rows of every global batch).
    """

    def __init__(self, mesh: Mesh | None = None):
        self.mesh = mesh

    def put(self, tree: Any) -> Any:
        if self.mesh is None:
            return jax.tree_util.tree_map(jnp.array, tree)
        return replicate(self.mesh, local(tree))

    def get(self, tree: Any) -> Any:
        return tree if self.mesh is None else jax.device_put(local(tree))

    def data(self, tree: Any) -> Any:
        return jax.tree_util.tree_map(jnp.asarray if self.mesh is None else np.asarray, tree)


def barrier(name: str) -> None:
    """Wait until every process of the run gets here (a no-op in a single-process run)."""
    if jax.process_count() > 1:
        from jax.experimental import multihost_utils

        multihost_utils.sync_global_devices(name)


def one_process_first(fn: Any, name: str) -> Any:
    """``fn()`` in process 0, then, once it is done, in the others: for work that writes a shared
    cache (preparing a dataset), which the other processes then only read."""
    if jax.process_index() == 0:
        out = fn()
    barrier(f"{name}: process 0 first")
    if jax.process_index() != 0:
        out = fn()
    return out
