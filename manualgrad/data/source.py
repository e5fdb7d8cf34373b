"""Where the data come from: the data folder, the prepared-dataset cache, TFDS preparation.

A dataset is read from the folder the user names (``--data-dir``), else from
``$MANUALGRAD_DATA_DIR``, else from its online source. With a local folder nothing touches
the network. The raw files are turned into a TFDS dataset of array_record files (no
TensorFlow involved: features are plain ``tfds.features.Tensor`` and the files are read
back through ``as_data_source``), cached under ``$MANUALGRAD_CACHE_DIR`` (default
``~/.cache/manualgrad``) in a folder named after the source files' names, sizes and
modification times, so changed files are prepared afresh.
"""

from __future__ import annotations

import hashlib
import os
import pathlib
from typing import Any, Sequence

import numpy as np
import tensorflow_datasets as tfds

from manualgrad.data.dataset import DATA_DIR_ENV, Dataset, MissingDataError, resolve_data_dir

__all__ = ["Dataset", "MissingDataError", "DATA_DIR_ENV", "FileBuilder", "resolve_data_dir", "cache_root", "make_builder", "prepare", "read_splits"]

CACHE_DIR_ENV = "MANUALGRAD_CACHE_DIR"


def find_files(where: str, folder: pathlib.Path, names: Sequence[str], how: str) -> list[pathlib.Path]:
    """The files ``names`` in ``folder`` (each may also be gzip-compressed as ``name.gz``).

    Raises :class:`MissingDataError` listing every path looked for and how to provide them.
    """
    found, missing = [], []
    for name in names:
        candidates = [folder / name, folder / f"{name}.gz"] if not name.endswith(".gz") else [folder / name]
        hit = next((c for c in candidates if c.is_file()), None)
        if hit is None:
            missing.extend(str(c) for c in candidates)
        found.append(hit)
    if missing:
        raise MissingDataError(
            f"{where}: data files not found. Looked for:\n  " + "\n  ".join(missing) + f"\n{how}"
        )
    return found


def cache_root(cache_dir: str | os.PathLike | None = None) -> pathlib.Path:
    """Where prepared datasets live: ``cache_dir``, else ``$MANUALGRAD_CACHE_DIR``, else ``~/.cache/manualgrad``."""
    chosen = cache_dir or os.environ.get(CACHE_DIR_ENV) or pathlib.Path.home() / ".cache" / "manualgrad"
    return pathlib.Path(chosen).expanduser()


def fingerprint(files: Sequence[pathlib.Path]) -> str:
    """A short name for a set of source files: their paths, sizes and modification times."""
    h = hashlib.sha1()
    for f in files:
        st = f.stat()
        h.update(f"{f.resolve()}|{st.st_size}|{st.st_mtime_ns}\n".encode())
    return h.hexdigest()[:16]


class FileBuilder(tfds.core.GeneratorBasedBuilder, skip_registration=True):
    """A TFDS builder over raw files: those in ``source_dir``, or its online source when that is ``None``."""

    VERSION = tfds.core.Version("1.0.0")

    def __init__(self, *, source_dir: pathlib.Path | None = None, **kwargs):
        self.source_dir = source_dir
        super().__init__(**kwargs)


def make_builder(
    cls: type[FileBuilder], cache: pathlib.Path, folder: pathlib.Path | None = None, files: Sequence[pathlib.Path] = ()
) -> FileBuilder:
    """``cls`` over ``files`` found in ``folder``, prepared under a cache folder named after their
    :func:`fingerprint`; or, with no ``folder``, over its online source, prepared under ``cache/online``."""
    where = cache / (fingerprint(files) if folder is not None else "online")
    return cls(source_dir=folder, data_dir=where, file_format="array_record")


def prepare(builder: tfds.core.DatasetBuilder) -> dict[str, Any]:
    """Write the builder's array_record files (once) and return its splits as data sources."""
    builder.download_and_prepare()
    return builder.as_data_source()


def read_splits(sources: dict[str, Any], keys: tuple[str, str]) -> tuple[np.ndarray, ...]:
    """``(x_train, y_train, x_test, y_test)``: the train and test splits read whole, one stacked array per key."""
    out = []
    for split in ("train", "test"):
        records = sources[split].__getitems__(range(len(sources[split])))
        out += [np.stack([r[k] for r in records]) for k in keys]
    return tuple(out)
