"""manualgrad side by side with PyTorch: same MLP, same initial weights, same batches, same optimiser.

``python -m experiments.compare_torch --task {mnist,california_housing} --out DIR``

The JAX run is the experiment's own (``manualgrad.train.fit``: hand-written VJPs, scanned
epoch). The PyTorch run is an ``nn.Sequential`` of the same layers whose weights are
copied from the JAX initial params (``weight = w.T``), fed the very batches of the JAX run
(each epoch's permutation is recomputed from the same key), trained by
``clip_grad_norm_`` then ``torch.optim.SGD`` with the same learning rate per step,
momentum and clipping norm, in float32 (``--dtype float64``: both in float64).
``DIR/comparison.json`` holds both runs' test metrics and per-epoch seconds and the largest
absolute parameter difference after each epoch; a table is printed. PyTorch is an optional
extra (``pip install torch``).

How close the runs can stay: each step's gradients agree to rounding (float64: 4e-16), but
``clip_grad_norm_`` divides by ``norm + 1e-6`` where optax divides by ``norm``, and float32
sums round in a different order. Training amplifies such differences, so the comparison also
runs JAX against itself from weights nudged by one part in 1e7: when that pair drifts as far
apart as JAX and PyTorch do, the gap is the trajectory's sensitivity, not a gradient error.
"""

from __future__ import annotations

import argparse
import json
import pathlib
import sys
import time
from typing import Any, Callable, Sequence

import jax
import numpy as np

from experiments import common
from manualgrad import data, train


def torch_model(task: common.Task, params: Any):
    """The task's MLP in PyTorch, with its weights copied from the JAX ``params``."""
    import torch

    layers: list[torch.nn.Module] = [torch.nn.Flatten()] if len(task.input_shape) > 1 else []
    linears = [p for p in params if p]  # Linear params are {"w", "b"}; activations and Flatten have ()
    for i, p in enumerate(linears):
        w = np.asarray(p["w"])
        lin = torch.nn.Linear(*w.shape, dtype=torch.float64 if w.dtype == np.float64 else torch.float32)
        with torch.no_grad():
            lin.weight.copy_(torch.tensor(w.T))
            lin.bias.copy_(torch.tensor(np.asarray(p["b"])))
        layers.append(lin)
        if i < len(linears) - 1:
            layers.append(torch.nn.ReLU())
    return torch.nn.Sequential(*layers)


def torch_loss(task: common.Task) -> Callable:
    """The task's loss in PyTorch: ``cross_entropy`` on class ids, or ``mse_loss``."""
    import torch.nn.functional as F

    return F.cross_entropy if task.metric == "accuracy" else F.mse_loss


def torch_labels(task: common.Task, y: np.ndarray):
    """Targets as the torch loss wants them: int64 class ids, or float regression targets (a copy)."""
    import torch

    return torch.tensor(y).long() if task.metric == "accuracy" else torch.tensor(y)


def torch_params(model) -> list[np.ndarray]:
    """The torch model's parameters in the order and layout of the JAX params' leaves (b before w)."""
    import torch

    out = []
    for m in model:
        if isinstance(m, torch.nn.Linear):
            out += [m.bias.detach().numpy().copy(), m.weight.detach().numpy().T.copy()]
    return out


def run_torch(task: common.Task, args: argparse.Namespace, ds: data.Dataset, params: Any, schedule: Any) -> dict:
    """Train the PyTorch twin from ``params``; return its metrics and its params after each epoch."""
    import torch
    import torch.nn.functional as F

    torch.manual_seed(args.seed)
    model = torch_model(task, params)
    opt = torch.optim.SGD(model.parameters(), lr=args.lr, momentum=args.momentum)
    loss_fn = torch_loss(task)
    x, x_test = torch.tensor(ds.x_train), torch.tensor(ds.x_test)
    y, y_test = torch_labels(task, ds.y_train), torch_labels(task, ds.y_test)
    key, step = common.shuffle_key(args.seed), 0
    run: dict[str, Any] = {"epoch_seconds": [], "train_loss": [], "params": []}
    for epoch in range(1, args.epochs + 1):
        batches = np.asarray(train.epoch_permutation(train.epoch_key(key, epoch), len(ds.x_train), args.batch_size))
        lrs = [float(schedule(s)) if callable(schedule) else schedule for s in range(step, step + len(batches))]
        losses = []
        start = time.perf_counter()
        for idx, lr in zip(torch.tensor(batches), lrs):
            for group in opt.param_groups:
                group["lr"] = lr
            opt.zero_grad(set_to_none=True)
            loss = loss_fn(model(x[idx]), y[idx])
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), args.max_norm)
            opt.step()
            losses.append(loss.detach())
        run["epoch_seconds"].append(time.perf_counter() - start)
        step += len(batches)
        run["train_loss"].append(float(torch.stack(losses).mean()))
        run["params"].append(torch_params(model))
    with torch.no_grad():
        pred = model(x_test)
        run["test"] = {"loss": float(loss_fn(pred, y_test))}
        if task.metric == "accuracy":
            run["test"]["accuracy"] = float((pred.argmax(-1) == y_test).double().mean())
        else:
            run["test"]["mse"] = float(F.mse_loss(pred, y_test))
    run["version"] = torch.__version__
    return run


def table(result: dict, metric: str) -> str:
    """The two runs as a plain-text table."""
    j, t = result["jax"], result["torch"]
    rows = [
        ("", "manualgrad (JAX)", "PyTorch"),
        (f"test {metric}", f"{j['test'][metric]:.6f}", f"{t['test'][metric]:.6f}"),
        ("test loss", f"{j['test']['loss']:.6f}", f"{t['test']['loss']:.6f}"),
        ("last epoch train loss", f"{j['train_loss'][-1]:.6f}", f"{t['train_loss'][-1]:.6f}"),
        ("s/epoch (median)", f"{np.median(j['epoch_seconds']):.4f}", f"{np.median(t['epoch_seconds']):.4f}"),
    ]
    widths = [max(len(r[i]) for r in rows) for i in range(3)]
    lines = ["  ".join(c.ljust(w) for c, w in zip(r, widths)) for r in rows]
    for label, key in (
        ("largest |param_jax - param_torch| per epoch", "param_max_abs_diff_per_epoch"),
        ("same, JAX vs JAX started from weights nudged by 1e-7", "jax_perturbed_1e-7_max_abs_diff_per_epoch"),
    ):
        lines.append(f"{label}:\n  " + " ".join(f"{d:.1e}" for d in result[key]))
    lines.append(f"largest |param_jax - param_torch| after the run: {result['param_max_abs_diff']:.3e}")
    return "\n".join(lines)


def max_abs_diff(a: list[np.ndarray], b: list[np.ndarray]) -> float:
    """The largest absolute difference between corresponding arrays."""
    return max(float(np.max(np.abs(x - y))) for x, y in zip(a, b, strict=True))


def run_jax(task: common.Task, args: argparse.Namespace, ds: data.Dataset, params: Any, schedule: Any) -> dict:
    """The experiment's own training (``manualgrad.train.fit``); keeps its params after each epoch."""
    snapshots: list[list[np.ndarray]] = []
    history = train.fit(
        task.model(),
        task.loss,
        train.sgd_with_clipping(schedule, args.max_norm, args.momentum),
        params,
        ds,
        epochs=args.epochs,
        batch_size=args.batch_size,
        key=common.shuffle_key(args.seed),
        metric=task.metric,
        on_epoch=lambda entry, p: snapshots.append(jax.device_get(jax.tree_util.tree_leaves(p))),
    )
    return {"history": history, "params": snapshots}


def compare(task: common.Task, args: argparse.Namespace) -> dict:
    """Run both frameworks on ``task`` with ``args`` and return the comparison."""
    ds = task.load(args.data_dir, args.limit)
    common.check_data(args, len(ds.x_train))
    params = task.init(args.seed)
    if args.dtype == "float64":
        jax.config.update("jax_enable_x64", True)
        ds = data.Dataset(ds.name, *(a.astype(np.float64) if a.dtype == np.float32 else a
                                     for a in (ds.x_train, ds.y_train, ds.x_test, ds.y_test)), ds.info)
        params = jax.tree_util.tree_map(lambda a: np.asarray(a, np.float64), params)
    schedule = common.learning_rate(args, len(ds.x_train))
    torch_run = run_torch(task, args, ds, params, schedule)
    jax_run = run_jax(task, args, ds, params, schedule)
    # The same JAX run from weights perturbed by one part in 1e7 (about one float32 ulp):
    # how far the training trajectory itself carries a rounding-sized difference.
    rng = np.random.default_rng(args.seed)
    nudged = jax.tree_util.tree_map(lambda a: a * (1 + 1e-7 * rng.choice([-1.0, 1.0], np.shape(a))).astype(a.dtype), params)
    nudged_run = run_jax(task, args, ds, nudged, schedule)
    diffs = [max_abs_diff(a, b) for a, b in zip(jax_run["params"], torch_run["params"], strict=True)]
    sensitivity = [max_abs_diff(a, b) for a, b in zip(jax_run["params"], nudged_run["params"], strict=True)]
    result = jax_run["history"]
    del torch_run["params"]
    last = result.epochs[-1]
    above = [e for e, d in enumerate(diffs, 1) if d > 1e-4]
    return {
        "task": task.name,
        "model": task.architecture,
        "config": dict(vars(args)),
        "device": jax.devices()[0].device_kind,
        "jax": {
            "test": {task.metric: last[f"test_{task.metric}"], "loss": last["test_loss"]},
            "epoch_seconds": [e["seconds"] for e in result.epochs],
            "train_loss": [e["train_loss"] for e in result.epochs],
            "compile_seconds": result.compile_seconds,
            "version": jax.__version__,
        },
        "torch": torch_run,
        "param_max_abs_diff": diffs[-1],
        "param_max_abs_diff_per_epoch": diffs,
        "first_epoch_above_1e-4": above[0] if above else None,
        "jax_perturbed_1e-7_max_abs_diff_per_epoch": sensitivity,
    }


OUT = "runs/compare_{task}"


def main(argv: Sequence[str] | None = None) -> int:
    p = common.parser(None, __doc__, training=False, out=OUT)
    p.add_argument("--task", choices=tuple(common.TASKS), required=True, help="which experiment to compare")
    p.add_argument("--dtype", choices=("float32", "float64"), default="float32", help="precision of both runs")
    args = p.parse_args(argv)
    task = common.TASKS[args.task]
    common.fill_task_defaults(task, args, out=OUT)
    common.check_args(p, args)
    try:
        import torch  # noqa: F401
    except ImportError:
        print("error: PyTorch is not installed; install its CPU build with `pip install torch==2.13.0`", file=sys.stderr)
        return 1
    try:
        result = compare(task, args)
    except common.FlagError as e:
        p.error(str(e))
    except data.MissingDataError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    out = pathlib.Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "comparison.json").write_text(json.dumps(result, indent=2))
    print(f"{task.name} {task.architecture}, {args.epochs} epochs, batch {args.batch_size}, {args.dtype}")
    print(table(result, task.metric))
    print(f"wrote {out / 'comparison.json'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
