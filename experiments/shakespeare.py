"""Train a character-level causal transformer on Shakespeare with hand-written gradients:
``python -m experiments.shakespeare [--out DIR]``.

Defaults: :func:`manualgrad.nn.TransformerLM` with 4 pre-norm blocks, 4 heads, width 128 and a
context of 128 characters (learned positions); windows of 129 characters drawn at random from
the first 90% of the text, batch 32; AdamW (b2 0.99, weight decay 0.1 on matrices) with a
linear warm-up to learning rate 3e-3 and a cosine decay to 0, gradient clipped to global norm 1.
After each epoch the loss on the validation text (the last 10%) is reported in nats and bits
per character. ``DIR`` receives ``metrics.json``, ``curves.png``, the checkpoint (``--resume``
continues from it) and ``sample.txt``: characters drawn from the trained model with a fixed seed.
``--help`` lists the flags.
"""

from __future__ import annotations

import argparse
import json
import math
import pathlib
import sys
import time
from typing import Any, Sequence

import jax
import numpy as np
import optax

from experiments.common import (
    CHECKPOINT, FlagError, HelpFormatter, add_devices_flag, join_processes, mesh_for, run_environment,
)
from manualgrad import checkpoint, data, losses, malloc, nn, parallel, train

# flags that change the trajectory: --resume refuses a checkpoint written with other values
RESUME_MUST_MATCH = (
    "context", "width", "depth", "heads", "positions", "dropout", "batch_size", "lr", "warmup_steps", "decay_epochs",
    "weight_decay", "max_norm", "seed", "grad", "limit",
)


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=HelpFormatter)
    model = p.add_argument_group("model")
    model.add_argument("--context", type=int, default=128, help="characters the model sees (T)")
    model.add_argument("--width", type=int, default=128, help="model width D")
    model.add_argument("--depth", type=int, default=4, help="transformer blocks")
    model.add_argument("--heads", type=int, default=4, help="attention heads (must divide --width)")
    model.add_argument("--positions", choices=("learned", "sinusoidal"), default="learned", help="position vectors")
    model.add_argument("--dropout", type=float, default=0.0, help="dropout after attention and MLP in each block")
    opt = p.add_argument_group("training")
    opt.add_argument("--epochs", type=int, default=2, help="passes over the training windows (also when resuming)")
    opt.add_argument("--batch-size", type=int, default=32, help="windows per step")
    opt.add_argument("--lr", type=float, default=3e-3, help="peak AdamW learning rate")
    opt.add_argument("--warmup-steps", type=int, default=100, help="linear warm-up from 0 to --lr")
    opt.add_argument("--decay-epochs", type=int, default=None,
                     help="length of warm-up plus cosine decay, in epochs (default: --epochs)")
    opt.add_argument("--weight-decay", type=float, default=0.1, help="AdamW's decoupled weight decay (matrices only)")
    opt.add_argument("--max-norm", type=float, default=1.0, help="clip the gradient to this global L2 norm")
    opt.add_argument("--seed", type=int, default=0, help="initial weights, training windows and shuffling")
    opt.add_argument("--grad", choices=train.GRADS, default="manual", help="where the gradient comes from")
    opt.add_argument("--limit", type=int, default=None, help="use only the first N training windows (smoke runs)")
    add_devices_flag(opt)
    io = p.add_argument_group("data and output")
    io.add_argument("--data-dir", default=None,
                    help=f"folder holding shakespeare/shakespeare.txt (default: ${data.DATA_DIR_ENV}, else online)")
    io.add_argument("--out", default="runs/shakespeare", help="where metrics.json, curves.png, the checkpoint and sample.txt go")
    io.add_argument("--resume", action="store_true", help=f"continue from OUT/{CHECKPOINT}")
    io.add_argument("--no-progress", action="store_true", help="no progress bar")
    io.add_argument("--sample-chars", type=int, default=500, help="characters to sample into OUT/sample.txt")
    io.add_argument("--temperature", type=float, default=0.8, help="sampling temperature (logits / T)")
    io.add_argument("--prompt", default="\n", help="text the sample starts from")
    return p


def check_args(p: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    """Refuse flag values that cannot train (argparse's error: usage and exit status 2)."""
    if args.decay_epochs is None:
        args.decay_epochs = args.epochs
    for name in ("context", "width", "depth", "heads", "epochs", "batch_size", "decay_epochs"):
        if getattr(args, name) < 1:
            p.error(f"--{name.replace('_', '-')} must be >= 1, got {getattr(args, name)}")
    if args.width % args.heads:
        p.error(f"--heads {args.heads} must divide --width {args.width}")
    for name in ("lr", "max_norm", "temperature"):
        if not getattr(args, name) > 0:
            p.error(f"--{name.replace('_', '-')} must be > 0, got {getattr(args, name)}")
    if not 0 <= args.dropout < 1:
        p.error(f"--dropout must be in [0, 1), got {args.dropout}")
    if args.warmup_steps < 0 or args.weight_decay < 0 or args.sample_chars < 0:
        p.error("--warmup-steps, --weight-decay and --sample-chars must be >= 0")
    if args.limit is not None and args.limit < args.batch_size:
        p.error(f"--limit {args.limit} must be at least --batch-size {args.batch_size}")


def model_of(args: argparse.Namespace, vocab_size: int) -> nn.Layer:
    return nn.TransformerLM(vocab_size, args.context, args.width, args.depth, args.heads, args.positions, args.dropout)


def learning_rate(args: argparse.Namespace, train_windows: int) -> optax.Schedule:
    """Linear warm-up to ``--lr`` over ``--warmup-steps``, then a cosine to 0 at ``--decay-epochs``."""
    total = args.decay_epochs * (train_windows // args.batch_size)
    return optax.warmup_cosine_decay_schedule(0.0, args.lr, min(args.warmup_steps, total - 1), max(total, 1))


def sample(model: nn.Layer, params: Any, prompt: np.ndarray, steps: int, context: int, key: jax.Array,
           temperature: float) -> np.ndarray:
    """``steps`` ids drawn one at a time after ``prompt``: each from ``softmax(logits / temperature)``
    at the last position of the (at most ``context``) characters so far.

    The model is causal, so the window is fed left-aligned in a fixed ``(1, context)`` array
    (one compilation) and the logits at the last real position ignore the padding after it.
    """

    @jax.jit
    def next_id(window, last, key):
        logits = model.apply(params, window[None])[0, last]
        return jax.random.categorical(key, logits / temperature)

    ids = list(np.asarray(prompt, np.int32))
    for i in range(steps):
        recent = ids[-context:]
        window = np.zeros(context, np.int32)
        window[: len(recent)] = recent
        ids.append(int(next_id(window, len(recent) - 1, jax.random.fold_in(key, i))))
    return np.asarray(ids[len(prompt):], np.int32)


def plot_curves(path: pathlib.Path, history: train.History) -> None:
    """The training loss of every step and each epoch's validation loss, in bits per character."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4))
    steps = [v for per_epoch in history.step_losses for v in per_epoch]
    per_epoch = len(history.step_losses[0]) if history.step_losses else 1
    x = np.arange(1, len(steps) + 1) / per_epoch
    ax.plot(x, np.asarray(steps) / math.log(2), "-", color="C0", lw=0.6, alpha=0.5, label="train (each step)")
    e = [r["epoch"] for r in history.epochs]
    ax.plot(e, [r["train_loss"] / math.log(2) for r in history.epochs], "o", color="C0", label="train (epoch mean)")
    ax.plot(e, [r["test_loss"] / math.log(2) for r in history.epochs], "s--", color="C1", label="validation")
    ax.set(xlabel="epoch", ylabel="bits per character", title="shakespeare: character-level transformer")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def run(args: argparse.Namespace) -> dict:
    from tqdm import tqdm

    reuse_memory = malloc.reuse_freed_memory()
    out = pathlib.Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    ds = parallel.one_process_first(lambda: data.load("shakespeare", args.data_dir, context=args.context, seed=args.seed),
                                    "load the data")
    if args.limit is not None:
        ds = data.Dataset(ds.name, ds.x_train[: args.limit], ds.y_train[: args.limit], ds.x_test, ds.y_test, ds.info)
    if len(ds.x_train) < args.batch_size:
        raise FlagError(f"the training text makes {len(ds.x_train)} windows, fewer than --batch-size {args.batch_size}")
    mesh = mesh_for(args.devices, args.batch_size)
    writer = jax.process_index() == 0  # in a multi-process run one process writes the files
    vocab = ds.info["vocab"]
    model = model_of(args, len(vocab))
    init_key, shuffle_key, sample_key = jax.random.split(jax.random.PRNGKey(args.seed), 3)
    _, params = model.init(init_key, (args.batch_size, args.context))
    optimizer = train.adamw_with_clipping(learning_rate(args, len(ds.x_train)), args.max_norm, args.weight_decay)
    config = {
        **{k: v for k, v in vars(args).items() if k not in ("no_progress", "resume")},
        "vocab_size": len(vocab),
        "parameters": int(sum(np.size(a) for a in jax.tree_util.tree_leaves(params))),
        "train_windows": len(ds.x_train),
        "test_windows": len(ds.x_test),
        "train_chars": ds.info["train_chars"],
        "test_chars": ds.info["test_chars"],
        "data_source": ds.info["source"],
        **run_environment(reuse_memory, mesh),
    }
    bar = tqdm(total=args.epochs, desc=f"shakespeare ({args.grad})", unit="epoch", disable=args.no_progress or not writer)

    def on_epoch(entry: dict, params: Any) -> None:
        bar.n = entry["epoch"]
        bar.set_postfix(loss=f"{entry['train_loss']:.4f}", val_bpc=f"{entry['test_loss'] / math.log(2):.4f}")

    start = time.perf_counter()
    history = train.fit(
        model, losses.softmax_cross_entropy, optimizer, params, ds,
        epochs=args.epochs, batch_size=args.batch_size, key=shuffle_key, grad=args.grad,
        checkpoint_path=out / CHECKPOINT, resume=args.resume, config={k: config[k] for k in RESUME_MUST_MATCH},
        on_epoch=on_epoch, eval_batch_size=256, mesh=mesh,
    )
    bar.close()
    for entry in history.epochs:
        entry["test_bits_per_char"] = entry["test_loss"] / math.log(2)
    prompt = data.shakespeare.encode(args.prompt, vocab)
    text = data.shakespeare.decode(sample(model, history.params, prompt, args.sample_chars, args.context, sample_key,
                                          args.temperature), vocab)
    if writer:
        (out / "sample.txt").write_text(args.prompt + text)
    last = history.epochs[-1]
    metrics = {
        "config": config,
        "compile_seconds": history.compile_seconds,
        "seconds": time.perf_counter() - start,
        "epochs": history.epochs,
        "test": {"loss": last["test_loss"], "bits_per_char": last["test_bits_per_char"]},
        "step_loss": history.step_losses,
    }
    if writer:
        (out / "metrics.json").write_text(json.dumps(metrics, indent=2))
        plot_curves(out / "curves.png", history)
    return metrics


def main(argv: Sequence[str] | None = None) -> int:
    if join_processes():
        return 1
    p = parser()
    args = p.parse_args(argv)
    check_args(p, args)
    try:
        metrics = run(args)
    except FlagError as e:
        p.error(str(e))
    except (data.MissingDataError, checkpoint.CheckpointError, train.NonFiniteError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    if jax.process_index() != 0:
        return 0
    test = metrics["test"]
    per_epoch = np.median([r["seconds"] for r in metrics["epochs"]])
    print(f"shakespeare grad={args.grad}: validation loss {test['loss']:.4f} nats/char ({test['bits_per_char']:.4f} bits/char) "
          f"after {len(metrics['epochs'])} epochs ({per_epoch:.1f} s/epoch median, {metrics['seconds'] / 60:.1f} min in all); "
          f"wrote {pathlib.Path(args.out) / 'metrics.json'} and sample.txt")
    return 0


if __name__ == "__main__":
    sys.exit(main())
