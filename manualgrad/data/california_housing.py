"""California Housing through TFDS, TensorFlow-free (it is not in the TFDS catalog).

:class:`CaliforniaHousing` reads StatLib's ``cal_housing.data`` (20640 block groups of the
1990 census): from ``<data_dir>/california_housing/`` when a data folder is named, else
from the archive scikit-learn downloads. It derives the usual 8 features (scikit-learn's
``fetch_california_housing``) and the target in units of $100,000, and splits the rows
80/20 into train and test with a fixed seed, so every run and every machine sees the
same split. :func:`load_california_housing` standardises the features with the mean and
standard deviation of the training split only (the test split never leaks into them).
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
    read_splits,
    resolve_data_dir,
)

__all__ = ["CaliforniaHousing", "read_cal_housing", "load_california_housing", "FEATURES", "SPLIT_SEED"]

FEATURES = ("MedInc", "HouseAge", "AveRooms", "AveBedrms", "Population", "AveOccup", "Latitude", "Longitude")
COLUMNS = (
    "longitude", "latitude", "housingMedianAge", "totalRooms", "totalBedrooms",
    "population", "households", "medianIncome", "medianHouseValue",
)  # fmt: skip
FILE = "cal_housing.data"
URL = "https://ndownloader.figshare.com/files/5976036"  # cal_housing.tgz, as scikit-learn fetches it
SPLIT_SEED = 0
TEST_FRACTION = 0.2

HOW = (
    f"Put StatLib's {FILE} (9 comma-separated columns: {', '.join(COLUMNS)}) in "
    "<data_dir>/california_housing/ and pass --data-dir <data_dir> (or set $MANUALGRAD_DATA_DIR), "
    "or leave both unset to download it."
)


def read_cal_housing(path: str | os.PathLike) -> tuple[np.ndarray, np.ndarray]:
    """Features (n, 8) in the order of :data:`FEATURES` and target (n,) in $100k, as float64.

    AveRooms, AveBedrms and AveOccup are totals divided by the block's households.
    """
    path = pathlib.Path(path)
    try:
        raw = np.loadtxt(path, delimiter=",", dtype=np.float64, ndmin=2)
    except ValueError as e:
        raise ValueError(f"manualgrad.data.read_cal_housing: cannot parse {path}: {e}") from None
    if raw.shape[1] != len(COLUMNS):
        raise ValueError(
            f"manualgrad.data.read_cal_housing: {path} has {raw.shape[1]} columns, expected {len(COLUMNS)} ({', '.join(COLUMNS)})"
        )
    lon, lat, age, rooms, bedrooms, population, households, income, value = raw.T
    if np.any(households <= 0):
        raise ValueError(f"manualgrad.data.read_cal_housing: {path} has rows with households <= 0")
    x = np.stack([income, age, rooms / households, bedrooms / households, population, population / households, lat, lon], 1)
    return x, value / 100_000.0


def split_indices(n: int, seed: int = SPLIT_SEED, test_fraction: float = TEST_FRACTION) -> tuple[np.ndarray, np.ndarray]:
    """Sorted train and test row indices: a seeded permutation, its first ``test_fraction`` is test."""
    perm = np.random.default_rng(seed).permutation(n)
    n_test = int(round(n * test_fraction))
    return np.sort(perm[n_test:]), np.sort(perm[:n_test])


class CaliforniaHousing(FileBuilder):
    """California Housing: ``features`` float32 (8,), ``target`` float32 (in $100k); 80/20 seeded split."""

    def _info(self) -> tfds.core.DatasetInfo:
        return tfds.core.DatasetInfo(
            builder=self,
            description=f"California Housing (StatLib); features {', '.join(FEATURES)}; target in $100,000.",
            features=tfds.features.FeaturesDict(
                {
                    "features": tfds.features.Tensor(shape=(len(FEATURES),), dtype=np.float32),
                    "target": tfds.features.Tensor(shape=(), dtype=np.float32),
                }
            ),
            supervised_keys=("features", "target"),
        )

    def _split_generators(self, dl_manager):
        if self.source_dir is None:
            path = dl_manager.download_and_extract(URL) / "CaliforniaHousing" / FILE
        else:
            (path,) = find_files("manualgrad.data.load_california_housing", self.source_dir, [FILE], HOW)
        x, y = read_cal_housing(path)
        train, test = split_indices(len(x))
        return {"train": self._generate_examples(x, y, train), "test": self._generate_examples(x, y, test)}

    def _generate_examples(self, x, y, rows):
        for i in rows:
            yield int(i), {"features": x[i].astype(np.float32), "target": np.float32(y[i])}


def load_california_housing(
    data_dir: str | os.PathLike | None = None, *, cache_dir: str | os.PathLike | None = None
) -> Dataset:
    """California Housing as arrays: standardised features float32 (n, 8), target float32 (n, 1) in $100k.

    16512 train and 4128 test rows. ``info`` holds the training split's ``mean`` and
    ``std`` used for the standardisation, the feature names and the source.
    """
    root = resolve_data_dir(data_dir)
    cache = cache_root(cache_dir)
    if root is not None:
        folder = root / "california_housing"
        files = find_files("manualgrad.data.load_california_housing", folder, [FILE], HOW)
        builder, where = make_builder(CaliforniaHousing, cache, folder, files), str(folder)
    else:
        builder, where = make_builder(CaliforniaHousing, cache), URL
    x_train, y_train, x_test, y_test = read_splits(prepare(builder), ("features", "target"))
    mean, std = x_train.mean(0, dtype=np.float64), x_train.std(0, dtype=np.float64)
    std = np.where(std > 0, std, 1.0)

    def standardise(x):
        return ((x - mean) / std).astype(np.float32)

    return Dataset(
        "california_housing",
        standardise(x_train),
        y_train[:, None].astype(np.float32),
        standardise(x_test),
        y_test[:, None].astype(np.float32),
        {"source": where, "features": FEATURES, "mean": mean.tolist(), "std": std.tolist()},
    )
