"""Fashion-MNIST (Zalando Research) through TFDS, TensorFlow-free: the MNIST mechanism of
:mod:`manualgrad.data.mnist` (:class:`~manualgrad.data.mnist.IdxBuilder`) over
``<data_dir>/fashion_mnist/``, or the TFDS catalog's ``fashion_mnist`` online.

The same four IDX file names and 28x28 uint8 images as MNIST, 60000/10000 examples (6000
and 1000 of each class); labels 0..9 name the :data:`CLASS_NAMES`.
"""

from __future__ import annotations

import os

from manualgrad.data.mnist import IdxBuilder, load_idx
from manualgrad.data.source import Dataset

__all__ = ["FashionMnistIdx", "load_fashion_mnist", "CLASS_NAMES", "URL"]

URL = "http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/"  # the TFDS catalog's Fashion-MNIST source
CLASS_NAMES = ("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot")


class FashionMnistIdx(IdxBuilder):
    """Fashion-MNIST from its four IDX files: those in ``source_dir``, or the catalog's download when it is ``None``."""

    NAME = "fashion_mnist"
    TITLE = "Fashion-MNIST"
    URL = URL
    DESCRIPTION = "Fashion-MNIST: Zalando's 28x28 grayscale article images in 10 classes, from the original IDX files."
    CLASS_NAMES = CLASS_NAMES


def load_fashion_mnist(data_dir: str | os.PathLike | None = None, *, cache_dir: str | os.PathLike | None = None) -> Dataset:
    """Fashion-MNIST as arrays: images uint8 (n, 28, 28, 1), labels int32 (n,); 60000 train, 10000 test;
    ``info["class_names"]`` names the labels.

    ``data_dir`` (else ``$MANUALGRAD_DATA_DIR``) holds ``fashion_mnist/`` with the four IDX
    files; with neither, Fashion-MNIST comes from the TFDS catalog online.
    """
    return load_idx(FashionMnistIdx, data_dir, cache_dir=cache_dir)
