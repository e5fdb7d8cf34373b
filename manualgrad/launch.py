"""Start N local processes joined by JAX's distributed runtime, the ``torchrun`` analogue:

    python -m manualgrad.launch --processes N [--devices-per-process K] -m MODULE [ARGS...]

Each process runs ``python -m MODULE ARGS...`` with the coordinator's address (a free port on
localhost, served by process 0), the number of processes and its own id in
``$MANUALGRAD_COORDINATOR``, ``$MANUALGRAD_NUM_PROCESSES`` and ``$MANUALGRAD_PROCESS_ID``, which
:func:`manualgrad.parallel.initialize` passes to ``jax.distributed.initialize``. On CPU each
process gets ``K`` devices (``--xla_force_host_platform_device_count``), and the processes talk
through JAX's CPU collectives (gloo). The launcher waits for all of them: when one exits with
an error or is killed, it names that process and tells the others, which exit saying which
process was lost (those that do not within ``--grace`` seconds get SIGTERM, then SIGKILL), and
it exits with a non-zero status, so a lost process never leaves the rest hanging. On a cluster, run the same module under SLURM (``srun``) or Open MPI (``mpirun``)
instead: ``jax.distributed.initialize()`` finds its peers from the scheduler's variables.
"""

from __future__ import annotations

import argparse
import os
import signal
import pathlib
import socket
import subprocess
import sys
import tempfile
import time
from typing import Sequence

from manualgrad.parallel import ENV_COORDINATOR, ENV_LAUNCH_DIR, ENV_PROCESS_ID, ENV_PROCESSES

__all__ = ["main", "free_port", "process_env"]


def free_port() -> int:
    """A TCP port on localhost that nothing listens on now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def process_env(base: dict[str, str], coordinator: str, processes: int, process_id: int, devices: int,
                launch_dir: str) -> dict[str, str]:
    """Process ``process_id``'s environment: the coordinator, the count, its id, its CPU devices and
    the folder where the launcher leaves the reason it stops the run."""
    flags = " ".join(f for f in base.get("XLA_FLAGS", "").split() if not f.startswith("--xla_force_host_platform_device_count"))
    return {
        **base,
        ENV_COORDINATOR: coordinator,
        ENV_PROCESSES: str(processes),
        ENV_PROCESS_ID: str(process_id),
        ENV_LAUNCH_DIR: launch_dir,
        "XLA_FLAGS": f"{flags} --xla_force_host_platform_device_count={devices}".strip(),
    }


def _describe(status: int) -> str:
    return f"was killed by {signal.Signals(-status).name}" if status < 0 else f"exited with status {status}"


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m manualgrad.launch", description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--processes", type=int, required=True, help="local processes to start")
    p.add_argument("--devices-per-process", type=int, default=1, help="CPU devices each process gets (default: 1)")
    p.add_argument("--port", type=int, default=None, help="coordinator port on localhost (default: a free one)")
    p.add_argument("--grace", type=float, default=10.0,
                   help="seconds the other processes get to stop after one fails, before SIGTERM and then SIGKILL (default: 10)")
    p.add_argument("-m", dest="module", required=True, help="the module each process runs, as python -m does; "
                   "everything after it is the module's arguments")
    argv = list(sys.argv[1:] if argv is None else argv)
    cut = argv.index("-m") + 2 if "-m" in argv else len(argv)  # the module's own flags are not the launcher's
    args = p.parse_args(argv[:cut])
    args.args = argv[cut:]
    if args.processes < 1 or args.devices_per_process < 1:
        p.error("--processes and --devices-per-process must be >= 1")
    coordinator = f"127.0.0.1:{args.port or free_port()}"
    with tempfile.TemporaryDirectory(prefix="manualgrad-launch-") as launch_dir:
        return _run(args, coordinator, launch_dir)


def _run(args: argparse.Namespace, coordinator: str, launch_dir: str) -> int:
    procs = [
        subprocess.Popen([sys.executable, "-m", args.module, *args.args],
                         env=process_env(dict(os.environ), coordinator, args.processes, i, args.devices_per_process, launch_dir))
        for i in range(args.processes)
    ]
    print(f"manualgrad.launch: {args.processes} processes x {args.devices_per_process} devices, coordinator "
          f"{coordinator}, pids {[q.pid for q in procs]}", file=sys.stderr, flush=True)
    try:
        while True:
            statuses = [q.poll() for q in procs]
            failed = [(i, s) for i, s in enumerate(statuses) if s not in (None, 0)]
            if failed:
                i, status = failed[0]
                lost = ", ".join(f"process {j} (pid {procs[j].pid}) {_describe(st)}" for j, st in failed)
                print(f"manualgrad.launch: {lost}; stopping the others", file=sys.stderr, flush=True)
                (pathlib.Path(launch_dir) / "lost").write_text(lost)  # the others' watcher threads exit on it
                _stop(procs, args.grace)
                return status if status > 0 else 128 - status
            if all(s == 0 for s in statuses):
                return 0
            time.sleep(0.1)
    except KeyboardInterrupt:
        _stop(procs, args.grace)
        return 130


def _stop(procs: list[subprocess.Popen], grace: float) -> None:
    """Give the processes ``grace`` seconds to exit on their own (their watcher thread reads the
    ``lost`` file), then SIGTERM those still running, and SIGKILL them after another ``grace``."""
    deadline = time.monotonic() + grace
    while time.monotonic() < deadline and any(q.poll() is None for q in procs):
        time.sleep(0.1)
    for q in procs:
        if q.poll() is None:
            q.terminate()
    deadline = time.monotonic() + grace
    for q in procs:
        try:
            q.wait(timeout=max(0.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            q.kill()
            q.wait()


if __name__ == "__main__":
    sys.exit(main())
