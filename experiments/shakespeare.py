"""Train a character-level language model on Shakespeare with hand-written gradients:
``python -m experiments.shakespeare [--model transformer|lstm] [--out DIR]``.

``--model transformer`` (the default): :func:`manualgrad.nn.TransformerLM` with 4 pre-norm blocks,
4 heads, width 128 and a context of 128 characters (learned positions). ``--model lstm``:
:func:`manualgrad.nn.LSTMLM`, Karpathy's char-rnn (an embedding, LSTM layers and an output
layer), trained on the same windows. Windows of ``context + 1`` characters are drawn at random
from the first 90% of the text; AdamW (b2 0.99, weight decay on matrices) with a linear warm-up
and a cosine decay to 0, gradient clipped to global norm 1. After each epoch the loss on the
validation text (the last 10%) is reported in nats and bits per character. ``DIR`` receives
``metrics.json``, ``curves.png``, the checkpoint (``--resume`` continues from it) and
``sample.txt``: characters drawn from the trained model with a fixed seed. ``--help`` lists the
flags and each model's defaults.
"""

from __future__ import annotations

import argparse
import dataclasses
import math
import sys
from typing import Any, Callable, Mapping

import jax
import numpy as np

from experiments import bpe, harness, outputs
from experiments.flags import Defaults, FlagError, require
from experiments.optimizers import AdamW
from manualgrad import data, losses, nn, train

DESCRIPTION = __doc__


@dataclasses.dataclass(frozen=True)
class Tokenizer:
    """How the text becomes ids and back: the windows to train on, and the sample's prompt and text."""

    load: Callable[[argparse.Namespace], data.Dataset]
    vocab_size: Callable[[data.Dataset], int]
    encode: Callable[[str, data.Dataset], np.ndarray]
    decode: Callable[[np.ndarray, data.Dataset], str]


#: one id per character; the vocabulary (a string) is in the dataset's ``info["vocab"]``
CHARACTERS = Tokenizer(
    load=lambda args: data.load("shakespeare", args.data_dir, context=args.context, seed=args.seed),
    vocab_size=lambda ds: len(ds.info["vocab"]),
    encode=lambda text, ds: data.shakespeare.encode(text, ds.info["vocab"]),
    decode=lambda ids, ds: data.shakespeare.decode(ids, ds.info["vocab"]),
)

#: byte-level BPE learnt from the training text (:mod:`experiments.bpe`); the ``tokenizers.Tokenizer``
#: is in the dataset's ``info["tokenizer"]``
BPE = Tokenizer(
    load=lambda args: bpe.load_bpe(args.data_dir, vocab_size=args.vocab_size, context=args.context, seed=args.seed),
    vocab_size=lambda ds: ds.info["vocab_size"],
    encode=lambda text, ds: np.asarray(ds.info["tokenizer"].encode(text).ids, np.int32),
    decode=lambda ids, ds: ds.info["tokenizer"].decode(np.asarray(ids).tolist()),
)

TOKENIZERS = {"char": CHARACTERS, "bpe": BPE}
BPE_VOCAB = 8192


@dataclasses.dataclass(frozen=True)
class LanguageModel:
    """One choice of model: its description, the flags' defaults with it, and how to build it (and
    its loss) from the flags and the vocabulary size."""

    name: str
    summary: str
    defaults: Mapping[str, Any]
    build: Callable[[argparse.Namespace, int], harness.Net]


TRANSFORMER = LanguageModel(
    name="transformer",
    summary="character-level transformer",
    defaults={"context": 128, "width": 128, "depth": 4, "heads": 4, "epochs": 2, "batch_size": 32, "lr": 3e-3,
              "warmup_steps": 100, "weight_decay": 0.1, "max_norm": 1.0},
    # with BPE's vocabulary the output layer and the loss are fused: the (batch, T, V) logits are never held
    build=lambda args, vocab: harness.Net(
        nn.TransformerLM(vocab, args.context, args.width, args.depth, args.heads, args.positions, args.dropout,
                         fused_head=args.tokenizer == "bpe"),
        losses.head_cross_entropy if args.tokenizer == "bpe" else losses.softmax_cross_entropy),
)


LSTM = LanguageModel(
    name="lstm",
    summary="character-level LSTM (char-rnn)",
    defaults={"context": 128, "width": 256, "depth": 1, "heads": None, "epochs": 2, "batch_size": 32, "lr": 3e-3,
              "warmup_steps": 100, "weight_decay": 0.1, "max_norm": 1.0},
    build=lambda args, vocab: harness.Net(nn.LSTMLM(vocab, args.width, args.depth, args.dropout),
                                          losses.softmax_cross_entropy),
)


def seed_keys(seed: int) -> tuple[jax.Array, jax.Array, jax.Array]:
    """``(init, shuffle, sample)``: the initial params', the shuffling and the sample's keys from ``--seed``."""
    init, shuffle, sample_key = jax.random.split(jax.random.PRNGKey(seed), 3)
    return init, shuffle, sample_key


class Shakespeare(harness.Experiment):
    """The language model on the complete works: AdamW, validation loss in bits per character, and a
    sample of the trained model in ``sample.txt``."""

    name = "shakespeare"
    description = DESCRIPTION
    models = {model.name: model for model in (TRANSFORMER, LSTM)}
    optimizer = AdamW()
    examples = "windows"
    headline = "test_bits_per_char"
    resume_keys = ("model", "tokenizer", "vocab_size", "context", "width", "depth", "heads", "positions", "dropout")
    extra_files = ("sample.txt",)

    def add_flags(self, groups: harness.Groups, defaults: Defaults) -> None:
        model = groups.model
        model.add_argument("--context", type=int, **defaults.flag("context", "tokens the model sees (T)"))
        model.add_argument("--width", type=int, **defaults.flag("width", "model width D (the LSTM's hidden units)"))
        model.add_argument("--depth", type=int, **defaults.flag("depth", "transformer blocks or LSTM layers"))
        model.add_argument("--heads", type=int, **defaults.flag("heads", "attention heads, transformer only (must divide --width)"))
        model.add_argument("--positions", choices=("learned", "sinusoidal"), default="learned",
                           help="position vectors (transformer only)")
        model.add_argument("--dropout", type=float, default=0.0,
                           help="dropout after attention and MLP in each block, or after each LSTM layer")
        model.add_argument("--tokenizer", choices=tuple(TOKENIZERS), default="char",
                           help="char: one token per character; bpe: byte-level BPE learnt from the training text "
                                "(the `tokenizers` library; the transformer then ends in the fused output layer + loss)")
        model.add_argument("--vocab-size", type=int, default=None,
                           help=f"BPE vocabulary size (--tokenizer bpe only; default {BPE_VOCAB})")
        out = groups.output
        out.add_argument("--sample-chars", type=int, default=500, help="tokens to sample into OUT/sample.txt (characters, or BPE tokens)")
        out.add_argument("--temperature", type=float, default=0.8, help="sampling temperature (logits / T)")
        out.add_argument("--prompt", default="\n", help="text the sample starts from")

    def check(self, p: argparse.ArgumentParser, args: argparse.Namespace) -> None:
        transformer = args.model == TRANSFORMER.name
        if not transformer and (args.heads is not None or args.positions != "learned"):
            p.error(f"--heads and --positions are the transformer's; --model {args.model} has neither")
        require(p, args, at_least_one=("context", "width", "depth", *(("heads",) if transformer else ())),
                positive=("temperature",), fraction=("dropout",), non_negative=("sample_chars",))
        if args.tokenizer == "char" and args.vocab_size is not None:
            p.error("--vocab-size is BPE's; --tokenizer char takes every character of the text")
        if args.tokenizer == "bpe" and args.vocab_size is None:
            args.vocab_size = BPE_VOCAB
        if args.tokenizer == "bpe" and args.vocab_size < bpe.MIN_VOCAB:
            p.error(f"--vocab-size {args.vocab_size} must be >= {bpe.MIN_VOCAB} (the 256 bytes and a merge)")
        if transformer and args.width % args.heads:
            p.error(f"--heads {args.heads} must divide --width {args.width}")

    def tokenizer(self, args: argparse.Namespace) -> Tokenizer:
        """The text's tokenizer, ``--tokenizer``'s choice."""
        return TOKENIZERS[args.tokenizer]

    def load(self, model: LanguageModel, args: argparse.Namespace) -> data.Dataset:
        return self.tokenizer(args).load(args)

    def build(self, model: LanguageModel, args: argparse.Namespace, ds: data.Dataset) -> harness.Net:
        try:  # before training, not after it: the sample is the last thing written
            self.tokenizer(args).encode(args.prompt, ds)
        except ValueError as e:
            raise FlagError(f"--prompt {args.prompt!r}: {e}") from None
        return model.build(args, self.tokenizer(args).vocab_size(ds))

    def keys(self, seed: int) -> tuple[jax.Array, jax.Array]:
        return seed_keys(seed)[:2]

    def fit_options(self, run: harness.Run) -> dict[str, Any]:
        return {"eval_batch_size": 256}

    def config(self, run: harness.Run) -> tuple[dict[str, Any], dict[str, Any]]:
        info = run.data.info
        return {"model": run.model.name}, {"vocab_size": self.tokenizer(run.args).vocab_size(run.data),
                    "parameters": int(sum(np.size(a) for a in jax.tree_util.tree_leaves(run.params))),
                    "train_chars": info["train_chars"], "test_chars": info["test_chars"],
                    "test_chars_per_token": chars_per_token(run)}

    def epoch_metrics(self, run: harness.Run, entry: Mapping[str, Any]) -> dict[str, Any]:
        nats = entry["test_loss"] / chars_per_token(run)
        return {"test_nats_per_char": nats, "test_bits_per_char": nats / math.log(2)}

    def files(self, run: harness.Run, history: train.History) -> dict[str, str]:
        args, tokenizer = run.args, self.tokenizer(run.args)
        prompt = tokenizer.encode(args.prompt, run.data)
        ids = sample(run.net.layer, history.params, prompt, args.sample_chars, args.context, seed_keys(args.seed)[2],
                     args.temperature)
        return {"sample.txt": args.prompt + tokenizer.decode(ids, run.data)}

    def panels(self, run: harness.Run, history: train.History) -> list[outputs.Panel]:
        per = "" if run.args.tokenizer == "char" else f" (BPE {run.args.vocab_size}: nats/token / {chars_per_token(run):.3f})"
        return [outputs.loss_panel(history, title=f"shakespeare: {run.model.summary}", ylabel="bits per character" + per,
                                   test_label="validation", scale=1 / (math.log(2) * chars_per_token(run)))]

    def result(self, model: LanguageModel, args: argparse.Namespace, test: Mapping[str, float]) -> str:
        per_token = "" if args.tokenizer == "char" else f"{test['loss']:.4f} nats/token, "
        return (f"{model.name} grad={args.grad}: validation loss {per_token}{test['nats_per_char']:.4f} nats/char "
                f"({test['bits_per_char']:.4f} bits/char)")


def chars_per_token(run: harness.Run) -> float:
    """Characters per token of the validation windows' targets (1 for characters): a loss in nats
    per token over this is nats per character, comparable across tokenizers."""
    return run.data.info.get("test_chars_per_token", 1.0)


def sample(model: nn.Layer, params: Any, prompt: np.ndarray, steps: int, context: int, key: jax.Array,
           temperature: float) -> np.ndarray:
    """Ids drawn one at a time after ``prompt``, each from ``softmax(logits / temperature)`` at the
    last position of the (at most ``context``) ids so far.

    The model is causal, so the window is fed left-aligned in a fixed ``(1, context)`` array
    (one compilation) and the logits at the last real position ignore the padding after it.

    Args:
        model: the language model (ids ``(B, T)`` to logits ``(B, T, V)``, or with a fused head to
            ``(h, w, b)``, the logits being ``h @ w + b``).
        params: its params.
        prompt: the ids the sample continues.
        steps: how many ids to draw.
        context: the longest window the model takes.
        key: draw ``i`` uses ``fold_in(key, i)``.
        temperature: the logits are divided by it.

    Returns:
        The ``steps`` drawn ids (without the prompt).
    """

    @jax.jit
    def next_id(window, last, key):
        out = model.apply(params, window[None])
        if isinstance(out, tuple):  # a fused head gives (h, w, b): the logits of one position only
            h, w, b = out
            logits = h[0, last] @ w + b
        else:
            logits = out[0, last]
        return jax.random.categorical(key, logits / temperature)

    ids = list(np.asarray(prompt, np.int32))
    for i in range(steps):
        recent = ids[-context:]
        window = np.zeros(context, np.int32)
        window[: len(recent)] = recent
        ids.append(int(next_id(window, len(recent) - 1, jax.random.fold_in(key, i))))
    return np.asarray(ids[len(prompt):], np.int32)


def main(argv: list[str] | None = None) -> int:
    """``python -m experiments.shakespeare``: see :func:`experiments.harness.main`."""
    return harness.main(Shakespeare(), argv)


if __name__ == "__main__":
    sys.exit(main())
