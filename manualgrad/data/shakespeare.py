"""Shakespeare's complete works for character-level language modelling, through TFDS, TensorFlow-free.

:class:`Shakespeare` reads one plain-text file: ``<data_dir>/shakespeare/shakespeare.txt`` when a
data folder is named, else Project Gutenberg's complete works (eBook #100) online. It stores
the text as Unicode code points in chunks of :data:`CHUNK` characters, the first 90% of the
characters as the ``train`` split and the last 10% as ``test`` (the validation text; nothing is
shuffled, so no line of the validation text is seen in training).

:func:`load_shakespeare` turns the splits into training examples for a causal model: the
vocabulary is every distinct character of the file (sorted), and each example is a window
of ``context + 1`` characters, ``x`` its first ``context`` ids and ``y`` its last ``context``
(the next character at every position). Training windows start at random positions (a
seeded draw, as many windows as the training text holds back to back); test windows tile the
validation text, so the test loss is the mean over (almost) every validation character.
"""

from __future__ import annotations

import os
import pathlib

import numpy as np
import tensorflow_datasets as tfds

from manualgrad.data.source import (
    Dataset,
    FileBuilder,
    cache_root,
    find_files,
    make_builder,
    prepare,
    resolve_data_dir,
)

__all__ = ["Shakespeare", "load_shakespeare", "load_text", "text_windows", "check_context", "windows", "encode", "decode", "FILE", "URL", "TRAIN_FRACTION", "CHUNK"]

FILE = "shakespeare.txt"
URL = "https://www.gutenberg.org/cache/epub/100/pg100.txt"  # The Complete Works of William Shakespeare
TRAIN_FRACTION = 0.9
CHUNK = 1 << 16  # characters per stored record
HOW = (
    f"Put the text in <data_dir>/shakespeare/{FILE} (plain text, UTF-8) and pass --data-dir <data_dir> "
    "(or set $MANUALGRAD_DATA_DIR), or leave both unset to download Project Gutenberg's complete works."
)


def _read_text(path: pathlib.Path) -> np.ndarray:
    """The file's characters as Unicode code points (int32)."""
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as e:
        raise ValueError(f"manualgrad.data.load_shakespeare: {path} is not UTF-8 text: {e}") from None
    if not text:
        raise ValueError(f"manualgrad.data.load_shakespeare: {path} is empty")
    return np.frombuffer(text.encode("utf-32-le"), np.int32)


class Shakespeare(FileBuilder):
    """Shakespeare as code points: records ``{"chars": int32 (n,)}`` of up to :data:`CHUNK`
    characters, in order; ``train`` the first 90% of the text, ``test`` the rest."""

    def _info(self) -> tfds.core.DatasetInfo:
        return tfds.core.DatasetInfo(
            builder=self,
            description="Shakespeare's complete works as Unicode code points, in order; 90/10 train/test.",
            features=tfds.features.FeaturesDict({"chars": tfds.features.Tensor(shape=(None,), dtype=np.int32)}),
            disable_shuffling=True,  # the chunks stay in the text's order
        )

    def _split_generators(self, dl_manager):
        if self.source_dir is None:
            path = pathlib.Path(dl_manager.download(URL))
        else:
            (path,) = find_files("manualgrad.data.load_shakespeare", self.source_dir, [FILE], HOW)
        chars = _read_text(path)
        cut = int(len(chars) * TRAIN_FRACTION)
        return {"train": self._generate_examples(chars[:cut]), "test": self._generate_examples(chars[cut:])}

    def _generate_examples(self, chars):
        for i, start in enumerate(range(0, len(chars), CHUNK)):
            yield i, {"chars": chars[start : start + CHUNK]}


def encode(text: str, vocab: str) -> np.ndarray:
    """``text`` as ids into ``vocab`` (a string of distinct characters); unknown characters are an error."""
    index = {c: i for i, c in enumerate(vocab)}
    unknown = sorted(set(text) - set(index))
    if unknown:
        raise ValueError(f"manualgrad.data.shakespeare.encode: characters not in the vocabulary: {unknown[:10]}")
    return np.array([index[c] for c in text], np.int32)


def decode(ids: np.ndarray, vocab: str) -> str:
    """Ids back to text."""
    return "".join(vocab[i] for i in np.asarray(ids).reshape(-1))


def windows(ids: np.ndarray, context: int, starts: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``(x, y)``, each ``(len(starts), context)``: ``x[i] = ids[s : s + context]`` and ``y[i] =
    ids[s + 1 : s + context + 1]`` for ``s = starts[i]`` (windows of ``context + 1`` characters)."""
    starts = np.asarray(starts)
    if starts.size and (starts.min() < 0 or starts.max() + context + 1 > len(ids)):
        raise ValueError(
            f"manualgrad.data.shakespeare.windows: windows of {context + 1} characters from starts in "
            f"[{starts.min()}, {starts.max()}] do not fit in {len(ids)} characters"
        )
    rows = starts[:, None] + np.arange(context + 1)
    chunk = ids[rows]
    return chunk[:, :-1], chunk[:, 1:]


def load_text(
    data_dir: str | os.PathLike | None = None, *, cache_dir: str | os.PathLike | None = None
) -> tuple[np.ndarray, np.ndarray, str]:
    """``(train, test, source)``: the training and validation text as Unicode code points (int32),
    prepared (and cached) once, and where the text came from (the file, or the URL)."""
    root = resolve_data_dir(data_dir)
    cache = cache_root(cache_dir)
    if root is not None:
        folder = root / "shakespeare"
        files = find_files("manualgrad.data.load_shakespeare", folder, [FILE], HOW)
        builder, where = make_builder(Shakespeare, cache, folder, files), str(folder / FILE)
    else:
        builder, where = make_builder(Shakespeare, cache), URL
    sources = prepare(builder)
    train, test = (np.concatenate([r["chars"] for r in sources[s].__getitems__(range(len(sources[s])))]) for s in ("train", "test"))
    return train, test, where


def text_windows(
    train_ids: np.ndarray, test_ids: np.ndarray, context: int, seed: int, unit: str = "characters"
) -> tuple[np.ndarray, ...]:
    """``(x_train, y_train, x_test, y_test)`` from the two splits' ids: ``len(train_ids) // context``
    training windows starting at random positions drawn with ``seed``, and the validation ids cut
    into consecutive windows (stride ``context``). ``unit`` names an id in the error message."""
    if len(test_ids) < context + 1:
        raise ValueError(
            f"manualgrad.data.load_shakespeare: the validation text has {len(test_ids)} {unit}, "
            f"fewer than one window of context + 1 = {context + 1}"
        )
    n = len(train_ids) // context
    starts = np.random.default_rng(seed).integers(0, len(train_ids) - context, size=n)
    return (*windows(train_ids, context, starts), *windows(test_ids, context, np.arange(0, len(test_ids) - context, context)))


def check_context(where: str, context: int) -> None:
    """Fail unless ``context`` is a positive integer."""
    if isinstance(context, bool) or not isinstance(context, (int, np.integer)) or context < 1:
        raise ValueError(f"{where}: context must be a positive integer, got {context!r}")


def load_shakespeare(
    data_dir: str | os.PathLike | None = None,
    *,
    context: int = 128,
    seed: int = 0,
    cache_dir: str | os.PathLike | None = None,
) -> Dataset:
    """Windows of ``context + 1`` characters as arrays of int32 ids: ``x`` and ``y`` ``(n, context)``,
    ``y`` one character ahead of ``x``.

    Train: ``len(train text) // context`` windows starting at random positions drawn with
    ``seed``. Test: the validation text cut into consecutive windows (stride ``context``).
    ``info`` holds ``vocab`` (the characters, id order), ``train_chars``, ``test_chars``,
    ``context`` and the source.
    """
    check_context("manualgrad.data.load_shakespeare", context)
    train, test, where = load_text(data_dir, cache_dir=cache_dir)
    points = np.unique(np.concatenate([train, test]))
    vocab = "".join(map(chr, points))
    train_ids, test_ids = (np.searchsorted(points, a).astype(np.int32) for a in (train, test))
    info = {"source": where, "vocab": vocab, "train_chars": len(train), "test_chars": len(test), "context": context, "seed": seed}
    return Dataset("shakespeare", *text_windows(train_ids, test_ids, context, seed), info)
