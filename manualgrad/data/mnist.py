"""MNIST-layout datasets (four IDX files) through TFDS, TensorFlow-free: MNIST here, Fashion-MNIST
in :mod:`manualgrad.data.fashion_mnist`, both through :class:`IdxBuilder` and :func:`load_idx`.

Offline (a data folder is named), an :class:`IdxBuilder` subclass reads the four IDX files
of ``<data_dir>/<name>/`` (gzip-compressed or not). Online, the TFDS catalog's ``<name>`` is
used when it can be read without TensorFlow (already prepared as array_record); preparing
it needs TensorFlow (its images are PNG-encoded), so otherwise the builder downloads the
same four files from the catalog's own URL through TFDS's download manager. Either way the
features are ``image``: uint8 (28, 28, 1) and ``label``: int64 in 0..9, with the canonical
60000/10000 split.
"""

from __future__ import annotations

import gzip
import os
import pathlib
import urllib.parse
from typing import ClassVar

import numpy as np
import tensorflow_datasets as tfds

from manualgrad.data.source import (
    Dataset,
    FileBuilder,
    cache_root,
    find_files,
    make_builder,
    prepare,
    read_splits,
    resolve_data_dir,
)

__all__ = ["IdxBuilder", "MnistIdx", "read_idx", "load_idx", "load_mnist", "FILES", "URL"]

FILES = {
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}
URL = "https://storage.googleapis.com/cvdf-datasets/mnist/"  # the TFDS catalog's MNIST source


def read_idx(path: str | os.PathLike) -> np.ndarray:
    """Read an IDX file (optionally gzip-compressed) of uint8 data into an array of its shape.

    Header: two zero bytes, the type code 0x08 (uint8), the number of dimensions, then one
    big-endian uint32 size per dimension; the data follow.
    """
    path = pathlib.Path(path)
    opener = gzip.open if path.suffix == ".gz" else open
    try:
        with opener(path, "rb") as f:
            raw = f.read()
    except (OSError, EOFError) as e:
        raise ValueError(f"manualgrad.data.read_idx: cannot read {path}: {e}") from None
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0 or raw[2] != 0x08:
        raise ValueError(f"manualgrad.data.read_idx: {path} is not an IDX file of uint8 (header {raw[:4]!r})")
    ndim = raw[3]
    shape = tuple(int(s) for s in np.frombuffer(raw, ">u4", count=ndim, offset=4))
    offset = 4 + 4 * ndim
    if len(raw) - offset != int(np.prod(shape)):
        raise ValueError(
            f"manualgrad.data.read_idx: {path} holds {len(raw) - offset} data bytes, its header says shape {shape}"
        )
    return np.frombuffer(raw, np.uint8, offset=offset).reshape(shape)


class IdxBuilder(FileBuilder, skip_registration=True):
    """A 28x28, 10-class dataset in the four MNIST IDX files (:data:`FILES`): those in
    ``source_dir``, or the ones at ``URL`` (the TFDS catalog's source) when it is ``None``.

    A subclass names the dataset: ``NAME`` is its folder under the data folder, its TFDS
    catalog name and its loader's (``manualgrad.data.load_<NAME>``).
    """

    NAME: ClassVar[str]
    TITLE: ClassVar[str]  # for messages: "MNIST"
    URL: ClassVar[str]
    DESCRIPTION: ClassVar[str]
    CLASS_NAMES: ClassVar[tuple[str, ...]]

    @classmethod
    def where(cls) -> str:
        return f"manualgrad.data.load_{cls.NAME}"

    @classmethod
    def how(cls) -> str:
        """How to provide the files (the end of :class:`MissingDataError`'s message)."""
        names = ", ".join(n + ".gz" for pair in FILES.values() for n in pair)
        return (
            f"Put the four {cls.TITLE} IDX files ({names}; compressed or not) in <data_dir>/{cls.NAME}/ "
            f"and pass --data-dir <data_dir> (or set $MANUALGRAD_DATA_DIR), or leave both unset to download "
            f"{cls.TITLE} through TFDS."
        )

    def _info(self) -> tfds.core.DatasetInfo:
        return tfds.core.DatasetInfo(
            builder=self,
            description=self.DESCRIPTION,
            features=tfds.features.FeaturesDict(
                {
                    "image": tfds.features.Tensor(shape=(28, 28, 1), dtype=np.uint8),
                    "label": tfds.features.ClassLabel(names=list(self.CLASS_NAMES)),
                }
            ),
            supervised_keys=("image", "label"),
        )

    def _split_generators(self, dl_manager):
        if self.source_dir is None:
            names = [n + ".gz" for pair in FILES.values() for n in pair]
            urls = {n: urllib.parse.urljoin(self.URL, n) for n in names}
            paths = dl_manager.download(urls)
            files = {split: [paths[n + ".gz"] for n in pair] for split, pair in FILES.items()}
        else:
            files = {split: find_files(self.where(), self.source_dir, pair, self.how()) for split, pair in FILES.items()}
        return {split: self._generate_examples(*paths) for split, paths in files.items()}

    def _generate_examples(self, images_path, labels_path):
        images, labels = read_idx(images_path), read_idx(labels_path)
        if images.ndim != 3 or images.shape[1:] != (28, 28) or labels.shape != images.shape[:1]:
            raise ValueError(
                f"{self.where()}: {images_path} has shape {images.shape} and "
                f"{labels_path} has shape {labels.shape}; expected (n, 28, 28) and (n,)"
            )
        if labels.size and labels.max() >= len(self.CLASS_NAMES):
            raise ValueError(f"{self.where()}: {labels_path} has label {labels.max()} > {len(self.CLASS_NAMES) - 1}")
        for i, (image, label) in enumerate(zip(images, labels)):
            yield i, {"image": image[..., None], "label": int(label)}


class MnistIdx(IdxBuilder):
    """MNIST from its four IDX files: those in ``source_dir``, or the catalog's download when it is ``None``."""

    NAME = "mnist"
    TITLE = "MNIST"
    URL = URL
    DESCRIPTION = "MNIST handwritten digits from the original IDX files."
    CLASS_NAMES = tuple(str(d) for d in range(10))


def _catalog(name: str, tfds_dir: pathlib.Path) -> dict | None:
    """The catalog's ``name`` as data sources, if it can be had without TensorFlow; else ``None``."""
    try:
        return tfds.data_source(name, data_dir=tfds_dir, builder_kwargs={"file_format": "array_record"})
    except ImportError:  # preparing the catalog's MNIST-like datasets PNG-encodes their images with TensorFlow
        return None


def load_idx(
    builder: type[IdxBuilder], data_dir: str | os.PathLike | None = None, *, cache_dir: str | os.PathLike | None = None
) -> Dataset:
    """The dataset of ``builder`` as arrays: images uint8 (n, 28, 28, 1), labels int32 (n,).

    ``data_dir`` (else ``$MANUALGRAD_DATA_DIR``) holds ``<builder.NAME>/`` with the four IDX
    files; with neither, the dataset comes from the TFDS catalog online (see the module docstring).
    """
    root = resolve_data_dir(data_dir)
    cache = cache_root(cache_dir)
    if root is not None:
        folder = root / builder.NAME
        files = find_files(builder.where(), folder, [n for p in FILES.values() for n in p], builder.how())
        sources, where = prepare(make_builder(builder, cache, folder, files)), str(folder)
    else:
        sources = _catalog(builder.NAME, cache / "tfds")
        where = f"tfds catalog: {builder.NAME}"
        if sources is None:
            sources, where = prepare(make_builder(builder, cache)), builder.URL
    x_train, y_train, x_test, y_test = read_splits(sources, ("image", "label"))
    return Dataset(
        builder.NAME,
        x_train,
        y_train.astype(np.int32),
        x_test,
        y_test.astype(np.int32),
        {"source": where, "num_classes": len(builder.CLASS_NAMES), "class_names": builder.CLASS_NAMES},
    )


def load_mnist(data_dir: str | os.PathLike | None = None, *, cache_dir: str | os.PathLike | None = None) -> Dataset:
    """MNIST as arrays: images uint8 (n, 28, 28, 1), labels int32 (n,); 60000 train, 10000 test.

    ``data_dir`` (else ``$MANUALGRAD_DATA_DIR``) holds ``mnist/`` with the four IDX files;
    with neither, MNIST comes from the TFDS catalog online (see the module docstring).
    """
    return load_idx(MnistIdx, data_dir, cache_dir=cache_dir)
