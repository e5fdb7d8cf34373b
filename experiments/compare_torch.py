"""manualgrad side by side with PyTorch: same model, same initial weights, same batches, same optimiser.

``python -m experiments.compare_torch --task {mnist,fashion_mnist,california_housing} [--model {mlp,cnn}] --out DIR``

The JAX run is the experiment's own (``manualgrad.train.fit``: hand-written VJPs, scanned
epoch). The PyTorch run is an ``nn.Sequential`` of the same layers whose weights are
copied from the JAX initial params (``weight = w.T``), fed the very batches of the JAX run
(each epoch's permutation is recomputed from the same key), trained by
``clip_grad_norm_`` then ``torch.optim.SGD`` with the same learning rate per step,
momentum and clipping norm, in float32 (``--dtype float64``: both in float64).
``DIR/comparison.json`` holds both runs' test metrics and per-epoch seconds and the largest
absolute parameter difference after each epoch; a table is printed. PyTorch is an optional
extra (``pip install torch``).

``--model cnn`` (mnist, fashion_mnist) compares the task's CNN (:func:`experiments.common.cnn`).
Its twin is ``Conv2d(C_in, C_out, 3, padding=1)`` with ``weight = w.transpose(3, 2, 0, 1)``
(HWIO to OIHW), ``BatchNorm2d(eps=1e-5, momentum=0.1)`` where the model has batch norm,
``ReLU``, ``MaxPool2d(2)``, then the dense layers as for the MLP; it takes the images NCHW
and turns them back to NHWC before flattening, so the flattened features come in JAX's order
and the dense weights copy as ``w.T``. Dropout is off in both runs (the frameworks' masks
cannot match): the Dropout layers stay in place at rate 0, which is noted in
``comparison.json``. Batch norm trains on batch statistics in both, the test metrics use the
running statistics, and their largest difference after the run is ``state_max_abs_diff``.

How close the runs can stay: each step's gradients agree to rounding (float64: 4e-16), but
``clip_grad_norm_`` divides by ``norm + 1e-6`` where optax divides by ``norm``, and float32
sums round in a different order. Training amplifies such differences, so the comparison also
runs JAX against itself from weights nudged by one part in 1e7: when that pair drifts as far
apart as JAX and PyTorch do, the gap is the trajectory's sensitivity, not a gradient error.
The CNN's max pooling and ReLU make that sensitivity jumpy: a rounding-sized difference can
switch which input a window passes on, so one nudge may stay at 1e-7 where another (or
PyTorch against itself) jumps to 1e-3 within an epoch in float32; float64 leaves no room for it.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from typing import Any, Callable, Sequence

import jax
import numpy as np

from experiments import common, flags, harness
from experiments.optimizers import SGD, sgd_learning_rate
from manualgrad import data, nn, train


def torch_model(task: common.Task, params: Any):
    """The task's model in PyTorch (MLP, or CNN: :func:`torch_cnn`), weights copied from the JAX ``params``."""
    import torch

    if task.arch == "cnn":
        return torch_cnn(task, params)
    layers: list[torch.nn.Module] = [torch.nn.Flatten()] if len(task.input_shape) > 1 else []
    linears = [p for p in params if p]  # Linear params are {"w", "b"}; activations and Flatten have ()
    for i, p in enumerate(linears):
        layers.append(_linear(p))
        if i < len(linears) - 1:
            layers.append(torch.nn.ReLU())
    return torch.nn.Sequential(*layers)


def _torch_dtype(a: Any):
    import torch

    return torch.float64 if np.asarray(a).dtype == np.float64 else torch.float32


def _linear(p: dict):
    """``torch.nn.Linear`` with manualgrad's ``{"w": (d_in, d_out), "b"}``: ``weight = w.T``."""
    import torch

    w = np.asarray(p["w"])
    lin = torch.nn.Linear(*w.shape, dtype=_torch_dtype(w))
    with torch.no_grad():
        lin.weight.copy_(torch.tensor(w.T))
        lin.bias.copy_(torch.tensor(np.asarray(p["b"])))
    return lin


def cnn_layers(task: common.Task, dropout: bool = False) -> list[tuple]:
    """The layers of :func:`experiments.common.cnn` for ``task``, as ``(kind, argument)`` pairs.

    Both frameworks' CNNs are built from this list (:func:`jax_model`, :func:`torch_cnn`).
    ``dropout=False`` sets the Dropout layers' rates to 0 (they stay, so the params, state and
    per-layer keys keep the layout of the experiment's model); ``dropout=True`` gives the
    experiment's own rates (the tests check that model against ``task.model()``).
    """
    return common.cnn_spec(task.outputs, task.cnn_regularised, dropout)


def jax_model(task: common.Task, dropout: bool = False) -> nn.Layer:
    """The model both frameworks train: ``task.model()``, the CNN with dropout off (see :func:`cnn_layers`)."""
    if task.arch != "cnn":
        return task.model()
    return nn.serial(*(common.CNN_LAYERS[kind](arg) for kind, arg in cnn_layers(task, dropout)))


def dropout_note(task: common.Task) -> str | None:
    """What ``comparison.json`` says about dropout, for a model that has some."""
    layers = cnn_layers(task, dropout=True) if task.arch == "cnn" else []
    rates = [arg for kind, arg in layers if kind == "dropout"]
    if not rates:
        return None
    flips = [arg for kind, arg in layers if kind == "flip"]
    flip = f" and its random horizontal flip (probability {flips[0]:g}) is off" if flips else ""
    return (f"dropout off: the model's Dropout layers (rates {', '.join(f'{r:g}' for r in rates)}) run at rate 0{flip} in "
            "both frameworks, since their random draws cannot match; everything else is the experiment's model")


def torch_cnn(task: common.Task, params: Any):
    """The CNN of :func:`cnn_layers` in PyTorch, with the JAX ``params``; input NCHW.

    ``Conv2d.weight = w.transpose(3, 2, 0, 1)`` (HWIO to OIHW); ``BatchNorm2d.weight = gamma``,
    ``bias = beta``; before ``Flatten`` the activation goes back to NHWC, so the flattened
    features are in JAX's order and the dense weights copy as ``w.T``. Dropout has rate 0 and the
    random flip is off (an identity).
    """
    import torch

    class FlattenNHWC(torch.nn.Module):
        """NCHW in, the NHWC flattening of JAX's ``Flatten`` out."""

        def forward(self, x):
            return x.permute(0, 2, 3, 1).flatten(1)

    layers: list[torch.nn.Module] = []
    for (kind, arg), p in zip(cnn_layers(task), params, strict=True):
        if kind == "conv":
            w = np.asarray(p["w"])
            conv = torch.nn.Conv2d(w.shape[2], w.shape[3], w.shape[:2], padding=1, dtype=_torch_dtype(w))
            with torch.no_grad():
                conv.weight.copy_(torch.from_numpy(w.transpose(3, 2, 0, 1).copy()))
                conv.bias.copy_(torch.from_numpy(np.asarray(p["b"]).copy()))
            layers.append(conv)
        elif kind == "batchnorm":
            gamma = np.asarray(p["gamma"])
            bn = torch.nn.BatchNorm2d(len(gamma), eps=1e-5, momentum=0.1, dtype=_torch_dtype(gamma))
            with torch.no_grad():
                bn.weight.copy_(torch.from_numpy(gamma.copy()))
                bn.bias.copy_(torch.from_numpy(np.asarray(p["beta"]).copy()))
            layers.append(bn)
        elif kind == "relu":
            layers.append(torch.nn.ReLU())
        elif kind == "maxpool":
            layers.append(torch.nn.MaxPool2d(arg))
        elif kind == "flatten":
            layers.append(FlattenNHWC())
        elif kind == "dropout":
            layers.append(torch.nn.Dropout(arg))
        elif kind == "flip":
            if arg:
                raise ValueError(f"compare_torch: the twin has no random flip; build it with the flip off, got p={arg}")
            layers.append(torch.nn.Identity())
        else:
            layers.append(_linear(p))
    return torch.nn.Sequential(*layers)


def torch_inputs(task: common.Task, x: np.ndarray):
    """Inputs as the torch model takes them: NCHW images for the CNN (from NHWC), else as they are."""
    import torch

    t = torch.from_numpy(np.ascontiguousarray(x))
    return t.permute(0, 3, 1, 2).contiguous() if task.arch == "cnn" else t


def torch_loss(task: common.Task) -> Callable:
    """The task's loss in PyTorch: ``cross_entropy`` on class ids, or ``mse_loss``."""
    import torch.nn.functional as F

    return F.cross_entropy if task.metric == "accuracy" else F.mse_loss


def torch_labels(task: common.Task, y: np.ndarray):
    """Targets as the torch loss wants them: int64 class ids, or float regression targets (a copy)."""
    import torch

    return torch.tensor(y).long() if task.metric == "accuracy" else torch.tensor(y)


def torch_params(model, grad: bool = False) -> list[np.ndarray]:
    """The torch model's parameters (``grad=True``: their ``.grad``) in the order and layout of
    the JAX params' leaves: Linear ``b, w = weight.T``; Conv2d ``b, w = weight.transpose(2, 3,
    1, 0)`` (OIHW to HWIO); BatchNorm2d ``beta = bias, gamma = weight``."""
    import torch

    def get(t):
        return (t.grad if grad else t).detach().numpy()

    out = []
    for m in model:
        if isinstance(m, torch.nn.Linear):
            out += [get(m.bias).copy(), get(m.weight).T.copy()]
        elif isinstance(m, torch.nn.Conv2d):
            out += [get(m.bias).copy(), get(m.weight).transpose(2, 3, 1, 0).copy()]
        elif isinstance(m, torch.nn.BatchNorm2d):
            out += [get(m.bias).copy(), get(m.weight).copy()]
    return out


def torch_state(model) -> list[np.ndarray]:
    """The running statistics in the order of the JAX state's leaves (``mean, var`` per batch norm)."""
    import torch

    out = []
    for m in model:
        if isinstance(m, torch.nn.BatchNorm2d):
            out += [m.running_mean.numpy().copy(), m.running_var.numpy().copy()]
    return out


def run_torch(task: common.Task, args: argparse.Namespace, ds: data.Dataset, params: Any, schedule: Any) -> dict:
    """Train the PyTorch twin from ``params``; return its metrics and its params after each epoch."""
    import torch
    import torch.nn.functional as F

    torch.manual_seed(args.seed)
    model = torch_model(task, params)
    opt = torch.optim.SGD(model.parameters(), lr=args.lr, momentum=args.momentum, weight_decay=args.weight_decay)
    loss_fn = torch_loss(task)
    x, x_test = torch_inputs(task, ds.x_train), torch_inputs(task, ds.x_test)
    y, y_test = torch_labels(task, ds.y_train), torch_labels(task, ds.y_test)
    key, step = harness.seed_keys(args.seed)[1], 0
    run: dict[str, Any] = {"epoch_seconds": [], "train_loss": [], "params": []}
    for epoch in range(1, args.epochs + 1):
        batches = np.asarray(train.epoch_permutation(train.epoch_key(key, epoch), len(ds.x_train), args.batch_size))
        lrs = [float(schedule(s)) if callable(schedule) else schedule for s in range(step, step + len(batches))]
        losses = []
        start = time.perf_counter()
        model.train()  # batch norm on batch statistics (dropout has rate 0)
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
    run["state"] = torch_state(model)
    model.eval()  # batch norm on the running statistics
    with torch.no_grad():
        pred = torch.cat([model(x_test[i : i + 1000]) for i in range(0, len(x_test), 1000)])
        run["test"] = {"loss": float(loss_fn(pred, y_test))}
        if task.metric == "accuracy":
            run["test"]["accuracy"] = float((pred.argmax(-1) == y_test).double().mean())
        else:
            run["test"]["mse"] = float(F.mse_loss(pred, y_test))
    run["version"] = torch.__version__
    return run


def table(result: dict, metric: str) -> str:
    """The two runs of :func:`compare`'s ``result`` as a plain-text table, ``metric`` the task's test metric."""
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
        if result[key] is not None:
            lines.append(f"{label}:\n  " + " ".join(f"{d:.1e}" for d in result[key]))
    lines.append(f"largest |param_jax - param_torch| after the run: {result['param_max_abs_diff']:.3e}")
    if result.get("state_max_abs_diff") is not None:
        lines.append(f"largest |running statistics jax - torch| after the run: {result['state_max_abs_diff']:.3e}")
    lines += [f"note: {n}" for n in result.get("notes", [])]
    return "\n".join(lines)


def max_abs_diff(a: list[np.ndarray], b: list[np.ndarray]) -> float:
    """The largest absolute difference between corresponding arrays."""
    return max(float(np.max(np.abs(x - y))) for x, y in zip(a, b, strict=True))


def run_jax(model: nn.Layer, task: common.Task, args: argparse.Namespace, ds: data.Dataset, params: Any,
            schedule: Any) -> dict:
    """The experiment's own training (``manualgrad.train.fit``) of ``model`` (:func:`jax_model`);
    keeps its params after each epoch."""
    snapshots: list[list[np.ndarray]] = []
    # the state in the params' dtype (BatchNorm makes float32 running statistics)
    dtype = jax.tree_util.tree_leaves(params)[0].dtype
    state = jax.tree_util.tree_map(lambda a: np.asarray(a, dtype),
                                   nn.init_state(model, (args.batch_size, *task.input_shape))[1])
    history = train.fit(
        model,
        task.loss,
        train.sgd_with_clipping(schedule, args.max_norm, args.momentum, args.weight_decay),
        params,
        ds,
        epochs=args.epochs,
        batch_size=args.batch_size,
        key=harness.seed_keys(args.seed)[1],
        metric=task.metric,
        on_epoch=lambda entry, p: snapshots.append(jax.device_get(jax.tree_util.tree_leaves(p))),
        state=state,
    )
    return {"history": history, "params": snapshots, "state": jax.device_get(jax.tree_util.tree_leaves(history.state))}


def compare(task: common.Task, args: argparse.Namespace, ds: data.Dataset | None = None, *, sensitivity: bool = True) -> dict:
    """Run both frameworks on ``task`` with ``args`` and return the comparison.

    Args:
        task: what to train (its MLP or CNN).
        args: the parsed flags.
        ds: the prepared dataset to use instead of ``task.load(args.data_dir)`` (``--limit`` applied).
        sensitivity: False skips the third run, JAX from nudged weights (its entry is then None).

    Returns:
        The document written to ``comparison.json``.
    """
    if ds is None:
        ds = harness.limited(task.load(args.data_dir), args.limit)
    flags.check_batches(args, len(ds.x_train))
    model = jax_model(task)
    params = task.init(model, args.seed)
    if args.dtype == "float64":
        jax.config.update("jax_enable_x64", True)
        ds = data.Dataset(ds.name, *(a.astype(np.float64) if a.dtype == np.float32 else a
                                     for a in (ds.x_train, ds.y_train, ds.x_test, ds.y_test)), ds.info)
        params = jax.tree_util.tree_map(lambda a: np.asarray(a, np.float64), params)
    schedule = sgd_learning_rate(args, len(ds.x_train))
    torch_run = run_torch(task, args, ds, params, schedule)
    jax_run = run_jax(model, task, args, ds, params, schedule)
    # The same JAX run from weights perturbed by one part in 1e7 (about one float32 ulp):
    # how far the training trajectory itself carries a rounding-sized difference.
    if sensitivity:
        rng = np.random.default_rng(args.seed)
        nudged = jax.tree_util.tree_map(lambda a: a * (1 + 1e-7 * rng.choice([-1.0, 1.0], np.shape(a))).astype(a.dtype), params)
        nudged_run = run_jax(model, task, args, ds, nudged, schedule)
    diffs = [max_abs_diff(a, b) for a, b in zip(jax_run["params"], torch_run["params"], strict=True)]
    state_diff = max_abs_diff(jax_run["state"], torch_run.pop("state")) if jax_run["state"] else None
    notes = [n for n in (dropout_note(task),) if n]
    if state_diff is not None:
        notes.append("batch norm: batch statistics while training in both frameworks, the running statistics for "
                     "the test metrics; state_max_abs_diff is the running statistics' largest difference after the run")
    spread = [max_abs_diff(a, b) for a, b in zip(jax_run["params"], nudged_run["params"], strict=True)] if sensitivity else None
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
        "jax_perturbed_1e-7_max_abs_diff_per_epoch": spread,
        "state_max_abs_diff": state_diff,
        "notes": notes,
    }


OUT = "runs/compare_{task}"
OUT_CNN = "runs/compare_{task}_cnn"


def parser() -> argparse.ArgumentParser:
    """The flags: the training flags of every task (their defaults listed per task in ``--help``),
    ``--task``, ``--model`` and ``--dtype``."""
    p = argparse.ArgumentParser(description=__doc__, formatter_class=flags.HelpFormatter)
    p.add_argument("--task", choices=tuple(common.TASKS), required=True, help="which experiment to compare")
    p.add_argument(
        "--model",
        choices=("mlp", "cnn"),
        default="mlp",
        help="the task's MLP, or its CNN (mnist, fashion_mnist; dropout off; epochs, batch size and lr then "
        f"as in the CNN experiment, --out {OUT_CNN.format(task='TASK')})",
    )
    p.add_argument("--dtype", choices=("float32", "float64"), default="float32", help="precision of both runs")
    defaults = flags.Defaults(listed={name: task.defaults for name, task in common.TASKS.items()})
    flags.add_size_flags(p, defaults)
    SGD().add_flags(p, defaults)
    flags.add_seed_flags(p)
    flags.add_io_flags(p, None, "comparison.json", out=OUT)
    return p


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m experiments.compare_torch``: train both frameworks, write ``comparison.json``,
    print the table.

    Returns:
        The exit status: 0, or 1 without PyTorch or the data (unusable flags exit with status 2).
    """
    p = parser()
    args = p.parse_args(argv)
    if args.model == "cnn" and args.task not in common.CNN_TASKS:
        p.error(f"--model cnn: {args.task} has no CNN (choose from {', '.join(common.CNN_TASKS)})")
    task = common.task_for(args.task, args.model)
    flags.fill_defaults(args, task.defaults)
    if args.out is None:
        args.out = (OUT_CNN if args.model == "cnn" else OUT).format(task=task.name)
    flags.check_size_flags(p, args)
    SGD().check(p, args)
    try:
        import torch  # noqa: F401
    except ImportError:
        print("error: PyTorch is not installed; install its CPU build with `pip install torch==2.13.0`", file=sys.stderr)
        return 1
    try:
        out = flags.out_folder(args.out)
        result = compare(task, args)
    except flags.FlagError as e:
        p.error(str(e))
    except data.MissingDataError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    (out / "comparison.json").write_text(json.dumps(result, indent=2))
    print(f"{task.name} {task.architecture}{' (dropout off)' if dropout_note(task) else ''}, {args.epochs} epochs, batch {args.batch_size}, {args.dtype}")
    print(table(result, task.metric))
    print(f"wrote {out / 'comparison.json'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
