"""Shakespeare as byte-level BPE tokens, for ``python -m experiments.shakespeare --tokenizer bpe``.

A byte-level BPE (GPT-2's scheme: the text's UTF-8 bytes, merged pair by pair into a vocabulary
of ``vocab_size`` tokens) is trained with the ``tokenizers`` library (the experiments extra) on
the training split only, so no merge is learnt from the validation text. The tokenizer and both
splits' ids are cached under the data cache (``$MANUALGRAD_CACHE_DIR``, else
``~/.cache/manualgrad``), keyed by the training text, the vocabulary size and the library's
version: the first run trains and encodes (about a minute on 2 cores), later runs read the ids.

Windows are cut from the ids as for characters (:func:`manualgrad.data.shakespeare.text_windows`).
The loss is per token; ``info["test_chars_per_token"]`` (the characters that the validation
windows' target tokens decode to, over their number) turns it into nats per character:
``loss / chars_per_token``, the same total over the same text as the character model's.
"""

from __future__ import annotations

import hashlib
import json
import os
import pathlib

import numpy as np

from manualgrad.data import Dataset
from manualgrad.data.source import cache_root
from manualgrad.data.shakespeare import check_context, load_text, text_windows

__all__ = ["load_bpe", "train_tokenizer", "MIN_VOCAB"]

MIN_VOCAB = 257  #: the 256 bytes and at least one merge


def _text(points: np.ndarray) -> str:
    return points.astype(np.int32).tobytes().decode("utf-32-le")


def train_tokenizer(text: str, vocab_size: int):
    """A byte-level BPE ``tokenizers.Tokenizer`` with ``vocab_size`` tokens learnt from ``text``."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
                                  show_progress=False)
    tokenizer.train_from_iterator(text.splitlines(keepends=True), trainer)
    return tokenizer


def _prepared(train: str, test: str, vocab_size: int, folder: pathlib.Path):
    """``(tokenizer, train_ids, test_ids)``, from ``folder`` when it holds them, else trained and saved there."""
    from tokenizers import Tokenizer

    tokenizer_file, ids_file = folder / "tokenizer.json", folder / "ids.npz"
    if tokenizer_file.exists() and ids_file.exists():
        with np.load(ids_file) as ids:
            return Tokenizer.from_file(str(tokenizer_file)), ids["train"], ids["test"]
    tokenizer = train_tokenizer(train, vocab_size)
    train_ids, test_ids = (np.asarray(tokenizer.encode(t).ids, np.int32) for t in (train, test))
    folder.mkdir(parents=True, exist_ok=True)
    partial = folder / "ids.partial.npz"  # written whole, then renamed: an interrupted run leaves no half file
    np.savez(partial, train=train_ids, test=test_ids)
    tokenizer.save(str(tokenizer_file))
    os.replace(partial, ids_file)
    return tokenizer, train_ids, test_ids


def load_bpe(
    data_dir: str | os.PathLike | None = None,
    *,
    vocab_size: int = 8192,
    context: int = 128,
    seed: int = 0,
    cache_dir: str | os.PathLike | None = None,
) -> Dataset:
    """Windows of ``context + 1`` BPE tokens of Shakespeare, as :func:`manualgrad.data.load_shakespeare`
    gives characters.

    ``info``: ``tokenizer`` (the ``tokenizers.Tokenizer``: ``encode(text).ids``,
    ``decode(ids)``), ``vocab_size``, ``train_chars``, ``test_chars``, ``train_tokens``,
    ``test_tokens``, ``test_chars_per_token``, ``context``, ``seed`` and the source.
    """
    where = "experiments.bpe.load_bpe"
    check_context(where, context)
    if isinstance(vocab_size, bool) or not isinstance(vocab_size, (int, np.integer)) or vocab_size < MIN_VOCAB:
        raise ValueError(f"{where}: vocab_size must be an integer >= {MIN_VOCAB} (the 256 bytes and a merge), got {vocab_size!r}")
    train_points, test_points, source = load_text(data_dir, cache_dir=cache_dir)
    import tokenizers

    key = hashlib.sha1(train_points.tobytes() + test_points.tobytes())
    key.update(json.dumps([vocab_size, tokenizers.__version__]).encode())
    folder = cache_root(cache_dir) / "shakespeare_bpe" / key.hexdigest()[:16]
    tokenizer, train_ids, test_ids = _prepared(_text(train_points), _text(test_points), vocab_size, folder)
    x_train, y_train, x_test, y_test = text_windows(train_ids, test_ids, context, seed, unit="tokens")
    predicted_chars = len(tokenizer.decode(y_test.reshape(-1).tolist()))
    info = {"source": source, "tokenizer": tokenizer, "vocab_size": tokenizer.get_vocab_size(),
            "train_chars": len(train_points), "test_chars": len(test_points), "train_tokens": len(train_ids),
            "test_tokens": len(test_ids), "test_chars_per_token": predicted_chars / y_test.size, "context": context,
            "seed": seed}
    return Dataset("shakespeare_bpe", x_train, y_train, x_test, y_test, info)
