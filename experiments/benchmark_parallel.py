"""What does data parallelism cost? ``python -m experiments.benchmark_parallel --out DIR``.

On one CPU, fake devices (``--xla_force_host_platform_device_count``, set here to ``--devices``
before JAX starts) share the same cores, so they cannot speed anything up; what this measures is
the machinery's overhead, in one process, timed in turns as :mod:`experiments.benchmark` does:

* the plain jitted train step against the data-parallel one (``make_train_step(..., mesh=...)``:
  a ``shard_map`` with the gradients' explicit ``psum``) on a one-device mesh;
* the data-parallel step on the whole ``--devices`` mesh, and, for comparison, the plain jitted
  step fed the same sharded batch (jit's automatic sharding: XLA inserts the all-reduce);
* the all-reduce alone: ``psum`` of a params-shaped tree over that mesh.

Every row waits for each step before starting the next (as a training loop that reads each
step's loss does): XLA:CPU's fake devices run a collective as a rendezvous of threads, and
several steps in flight at once on 2 cores can leave one device's thread behind another
step's (measured: a 40 s rendezvous timeout, then an abort).

Writes ``DIR/parallel.json`` and prints a Markdown table.
"""

from __future__ import annotations

import argparse
import json
import os
import pathlib
import sys
from typing import Sequence


def main(argv: Sequence[str] | None = None) -> int:
    """Set ``--devices`` fake CPU devices, measure, write ``parallel.json`` and print the table.

    Returns:
        The exit status (0; 2 for unusable flags or when JAX started before the devices could be set).
    """
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", default="runs/benchmark-parallel", help="folder for parallel.json")
    p.add_argument("--devices", type=int, default=4, help="fake CPU devices of the big mesh")
    p.add_argument("--rounds", type=int, default=15, help="timed rounds (the median is reported)")
    p.add_argument("--block-seconds", type=float, default=0.2, help="length of one timed block of steps")
    args = p.parse_args(argv)
    os.environ["XLA_FLAGS"] = f"{os.environ.get('XLA_FLAGS', '')} --xla_force_host_platform_device_count={args.devices}"
    import jax

    if jax.local_device_count() < args.devices:
        p.error(f"JAX started before --devices could be set ({jax.local_device_count()} devices); run it as its own process")
    result = measure(args.devices, args.rounds, args.block_seconds)
    out = pathlib.Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "parallel.json").write_text(json.dumps(result, indent=2))
    print(markdown(result))
    return 0


def measure(devices: int, rounds: int, block_seconds: float) -> dict:
    """The plain and data-parallel MNIST MLP steps, and the all-reduce alone.

    Args:
        devices: the size of the big mesh (that many local devices must exist).
        rounds: timed rounds (rows report the median).
        block_seconds: the length of one timed block of steps.

    Returns:
        The parallel.json document: ``device``, ``devices``, ``jax``, ``rows`` (``model``, ``batch``,
        ``grad``, ``step``, ``step_ms``, ``temp_bytes``) and ``all_reduce`` (``devices``, ``bytes``, ``ms``).
    """
    import jax

    from experiments import common
    from experiments.benchmark.configs import random_batch
    from experiments.benchmark.machine import device_description
    from experiments.benchmark.timing import step_runner, temp_bytes, time_interleaved
    from manualgrad import malloc, parallel, train

    malloc.reuse_freed_memory()
    task = common.MNIST
    model = task.model()
    rows = []
    for batch in (128, 1024):
        runners, temps = {}, {}
        for grad in ("manual", "explicit"):
            # None: the plain step; n: the shard_map step on n devices; -n: the plain jitted step fed
            # a batch sharded over n devices (XLA's SPMD partitioner inserts the all-reduce itself)
            for mesh_size in (None, 1, devices, -devices):
                mesh = None if mesh_size is None else parallel.data_mesh(abs(mesh_size))
                opt = train.sgd_with_clipping(0.01, 5.0, 0.9)
                params = task.init(model, 0)
                state = [params, opt.init(params)]
                x, y = random_batch(task, batch)
                if mesh is None:
                    batch_arrays = jax.device_put((x, y))
                else:
                    state = list(parallel.replicate(mesh, parallel.local(state)))
                    batch_arrays = parallel.global_batch(mesh, (x, y), batch)
                step = train.make_train_step(model, task.loss, opt, grad, mesh=mesh if (mesh_size or 0) > 0 else None)
                compiled = step.lower(*state, batch_arrays).compile()
                name = (grad, "plain" if mesh is None else f"shard_map x{mesh_size}" if mesh_size > 0 else f"jit sharding x{-mesh_size}")
                # one step in flight at a time (see the module docstring)
                runners[name] = step_runner(compiled, *state, batch_arrays, wait_each=True)
                temps[name] = temp_bytes(compiled)
        seconds = time_interleaved(runners, rounds, block_seconds)
        rows += [{"model": task.architecture, "batch": batch, "grad": g, "step": s, "step_ms": t * 1e3,
                  "temp_bytes": temps[(g, s)]} for (g, s), t in seconds.items()]
    # the all-reduce alone: psum of a params-shaped tree (what every step sends) over the mesh
    mesh = parallel.data_mesh(devices)
    params = parallel.replicate(mesh, parallel.local(task.init(model, 0)))
    spec = jax.sharding.PartitionSpec()
    psum = jax.jit(jax.shard_map(lambda t: jax.lax.psum(t, parallel.AXIS), mesh=mesh, in_specs=spec, out_specs=spec,
                                 check_vma=False))
    compiled = psum.lower(params).compile()

    def reduce(k):
        for _ in range(k):
            jax.block_until_ready(compiled(params))

    reduce_ms = time_interleaved({"psum": reduce}, rounds, block_seconds)["psum"] * 1e3
    param_bytes = sum(a.nbytes for a in jax.tree_util.tree_leaves(parallel.local(params)))
    return {"device": device_description(), "devices": devices, "jax": jax.__version__, "rows": rows,
            "all_reduce": {"devices": devices, "bytes": param_bytes, "ms": reduce_ms}}


def markdown(result: dict) -> str:
    """The table of :func:`measure`'s rows with their ratios to the plain step, and the all-reduce's time."""
    lines = [f"{result['device']}, {result['devices']} fake CPU devices (jax {result['jax']}).", "",
             "| model | batch | grad | step | step ms | ratio to plain | XLA temp bytes |", "|---|---:|---|---|---:|---:|---:|"]
    plain = {(r["batch"], r["grad"]): r["step_ms"] for r in result["rows"] if r["step"] == "plain"}
    for r in result["rows"]:
        lines.append(f"| {r['model']} | {r['batch']} | {r['grad']} | {r['step']} | {r['step_ms']:.3f} "
                     f"| {r['step_ms'] / plain[(r['batch'], r['grad'])]:.2f} | {r['temp_bytes']:,} |")
    a = result["all_reduce"]
    lines += ["", f"All-reduce alone (psum of the params, {a['bytes']:,} bytes, over {a['devices']} devices): {a['ms']:.3f} ms."]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    sys.exit(main())
