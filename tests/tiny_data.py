"""Tiny MNIST-layout IDX files and a tiny cal_housing.data, written by the tests themselves."""

import gzip
import pathlib
import struct

import numpy as np


def write_idx(path: pathlib.Path, array: np.ndarray, compress: bool = True) -> None:
    header = struct.pack(">BBBB", 0, 0, 0x08, array.ndim) + struct.pack(f">{array.ndim}I", *array.shape)
    payload = header + np.ascontiguousarray(array, np.uint8).tobytes()
    if compress:
        path = path.with_name(path.name + ".gz")
        path.write_bytes(gzip.compress(payload))
    else:
        path.write_bytes(payload)


def tiny_mnist(root: pathlib.Path, n_train: int = 300, n_test: int = 100, seed: int = 0, compress: bool = True) -> dict:
    """Digits drawn as a bright square whose position encodes the label (learnable, fast)."""
    rng = np.random.default_rng(seed)
    folder = root / "mnist"
    folder.mkdir(parents=True, exist_ok=True)
    out = {}
    for split, n, prefix in (("train", n_train, "train"), ("test", n_test, "t10k")):
        labels = rng.integers(0, 10, n).astype(np.uint8)
        images = rng.integers(0, 40, (n, 28, 28)).astype(np.uint8)
        for i, label in enumerate(labels):
            r, c = 2 + 2 * int(label), 4 + int(label)
            images[i, r : r + 5, c : c + 5] = 255
        write_idx(folder / f"{prefix}-images-idx3-ubyte", images, compress)
        write_idx(folder / f"{prefix}-labels-idx1-ubyte", labels, compress)
        out[split] = (images, labels)
    return out


def tiny_cal_housing(root: pathlib.Path, n: int = 500, seed: int = 0) -> np.ndarray:
    """Rows of the 9 StatLib columns; the value depends smoothly on income and location."""
    rng = np.random.default_rng(seed)
    lon, lat = rng.uniform(-124, -114, n), rng.uniform(32, 42, n)
    age = rng.integers(1, 52, n).astype(float)
    households = rng.integers(50, 1000, n).astype(float)
    rooms = households * rng.uniform(3, 8, n)
    bedrooms = households * rng.uniform(0.8, 1.3, n)
    population = households * rng.uniform(1.5, 4, n)
    income = rng.uniform(0.5, 15, n)
    value = 30_000 * income + 5_000 * (lat - 32) + rng.normal(0, 20_000, n) + 50_000
    raw = np.stack([lon, lat, age, rooms, bedrooms, population, households, income, value], 1)
    folder = root / "california_housing"
    folder.mkdir(parents=True, exist_ok=True)
    np.savetxt(folder / "cal_housing.data", raw, delimiter=",", fmt="%.6f")
    return np.loadtxt(folder / "cal_housing.data", delimiter=",")
