"""Data: TFDS builders (TensorFlow-free) over tiny files the tests write, the real files when present
(MNIST, Fashion-MNIST, California Housing), the online path with TFDS faked."""

import gzip
import hashlib
import os
import pathlib
import socket
import subprocess
import sys

import numpy as np
import pytest

from manualgrad import data
from manualgrad.data import california_housing, fashion_mnist, mnist, shakespeare, source
from tests.conftest import ROOT
from tests.tiny_data import tiny_cal_housing, tiny_mnist, write_idx


@pytest.fixture
def no_network(monkeypatch):
    def refuse(*args, **kwargs):
        raise AssertionError("the network was used although the data are local")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)


@pytest.mark.parametrize("compress", [True, False])
def test_mnist_builder_over_idx_files(tmp_path, no_network, compress):
    written = tiny_mnist(tmp_path / "data", compress=compress)
    ds = data.load("mnist", tmp_path / "data", cache_dir=tmp_path / "cache")
    assert ds.x_train.shape == (300, 28, 28, 1) and ds.x_train.dtype == np.uint8
    assert ds.y_train.shape == (300,) and ds.y_train.dtype == np.int32
    assert ds.x_test.shape == (100, 28, 28, 1)
    for split, x, y in (("train", ds.x_train, ds.y_train), ("test", ds.x_test, ds.y_test)):
        images, labels = written[split]
        # TFDS stores examples in its own (deterministic) order: compare as multisets of (image, label)
        got = sorted((img.tobytes(), int(lab)) for img, lab in zip(x[..., 0], y))
        want = sorted((img.tobytes(), int(lab)) for img, lab in zip(images, labels))
        assert got == want
    assert ds.info["source"] == str((tmp_path / "data" / "mnist").resolve())


def test_mnist_loads_from_the_cache_the_second_time(tmp_path, no_network):
    tiny_mnist(tmp_path / "data")
    a = data.load_mnist(tmp_path / "data", cache_dir=tmp_path / "cache")
    prepared = sorted(p.relative_to(tmp_path) for p in (tmp_path / "cache").rglob("*.array_record*"))
    b = data.load_mnist(tmp_path / "data", cache_dir=tmp_path / "cache")
    assert sorted(p.relative_to(tmp_path) for p in (tmp_path / "cache").rglob("*.array_record*")) == prepared
    np.testing.assert_array_equal(a.x_train, b.x_train)


def test_read_idx_rejects_bad_files(tmp_path):
    write_idx(tmp_path / "ok", np.zeros((2, 3), np.uint8), compress=False)
    np.testing.assert_array_equal(mnist.read_idx(tmp_path / "ok"), np.zeros((2, 3)))
    (tmp_path / "short").write_bytes((tmp_path / "ok").read_bytes()[:-1])
    with pytest.raises(ValueError, match=r"holds 5 data bytes, its header says shape \(2, 3\)"):
        mnist.read_idx(tmp_path / "short")
    (tmp_path / "text").write_bytes(b"hello world")
    with pytest.raises(ValueError, match="is not an IDX file"):
        mnist.read_idx(tmp_path / "text")


def test_missing_data_error_says_where_and_how(tmp_path, no_network):
    (tmp_path / "mnist").mkdir()
    with pytest.raises(data.MissingDataError) as e:
        data.load("mnist", tmp_path, cache_dir=tmp_path / "cache")
    msg = str(e.value)
    assert "manualgrad.data.load_mnist" in msg
    assert str(tmp_path / "mnist" / "train-images-idx3-ubyte.gz") in msg and "--data-dir" in msg
    with pytest.raises(data.MissingDataError, match="cal_housing.data"):
        data.load("california_housing", tmp_path, cache_dir=tmp_path / "cache")


def test_data_dir_flag_then_environment_then_online(tmp_path, monkeypatch):
    monkeypatch.delenv(source.DATA_DIR_ENV, raising=False)
    assert data.resolve_data_dir(None) is None
    monkeypatch.setenv(source.DATA_DIR_ENV, str(tmp_path / "env"))
    assert data.resolve_data_dir(None) == (tmp_path / "env").resolve()
    assert data.resolve_data_dir(tmp_path / "flag") == (tmp_path / "flag").resolve()


class FakeSource(list):
    def __getitems__(self, keys):
        return [self[k] for k in keys]


def fake_mnist_sources():
    return {s: FakeSource([{"image": np.zeros((28, 28, 1), np.uint8), "label": 3}] * n) for s, n in (("train", 4), ("test", 2))}


def test_without_a_data_dir_mnist_comes_from_the_tfds_catalog(tmp_path, monkeypatch):
    monkeypatch.delenv(source.DATA_DIR_ENV, raising=False)
    calls = []

    def data_source(name, **kwargs):
        calls.append(name)
        return fake_mnist_sources()

    monkeypatch.setattr(mnist.tfds, "data_source", data_source)
    ds = data.load("mnist", cache_dir=tmp_path)
    assert calls == ["mnist"] and ds.info["source"] == "tfds catalog: mnist"
    assert ds.x_train.shape == (4, 28, 28, 1) and list(ds.y_test) == [3, 3]


def load_without_tensorflow(monkeypatch, name, cache_dir):
    """``data.load(name)`` where preparing the catalog's dataset needs TensorFlow: the folder
    builder it fell back to (preparing it is faked) and the dataset."""
    monkeypatch.delenv(source.DATA_DIR_ENV, raising=False)

    def data_source(name, **kwargs):
        raise ModuleNotFoundError("No module named 'tensorflow'")

    builders = []

    def prepare(builder):
        builders.append(builder)
        return fake_mnist_sources()

    monkeypatch.setattr(mnist.tfds, "data_source", data_source)
    monkeypatch.setattr(mnist, "prepare", prepare)
    ds = data.load(name, cache_dir=cache_dir)
    (builder,) = builders
    return builder, ds


def test_catalog_needing_tensorflow_falls_back_to_downloading_the_idx_files(tmp_path, monkeypatch):
    builder, ds = load_without_tensorflow(monkeypatch, "mnist", tmp_path)
    assert isinstance(builder, mnist.MnistIdx) and builder.source_dir is None
    assert ds.info["source"] == mnist.URL


def test_california_housing_features_split_and_standardisation(tmp_path, no_network):
    raw = tiny_cal_housing(tmp_path / "data", n=500)
    ds = data.load("california_housing", tmp_path / "data", cache_dir=tmp_path / "cache")
    assert ds.x_train.shape == (400, 8) and ds.x_test.shape == (100, 8) and ds.y_train.shape == (400, 1)
    assert ds.x_train.dtype == ds.y_train.dtype == np.float32
    x, y = california_housing.read_cal_housing(tmp_path / "data" / "california_housing" / "cal_housing.data")
    lon, lat, age, rooms, bedrooms, population, households, income, value = raw.T
    np.testing.assert_allclose(x, np.stack([income, age, rooms / households, bedrooms / households, population,
                                            population / households, lat, lon], 1))
    np.testing.assert_allclose(y, value / 1e5)
    train_rows, test_rows = california_housing.split_indices(500)
    assert len(set(train_rows) | set(test_rows)) == 500 and not set(train_rows) & set(test_rows)
    mean, std = x[train_rows].mean(0), x[train_rows].std(0)
    np.testing.assert_allclose(ds.info["mean"], mean, rtol=1e-6)
    # test rows are standardised with the training statistics, never their own
    want_test = np.sort(((x[test_rows] - mean) / std).astype(np.float32), axis=0)
    np.testing.assert_allclose(np.sort(ds.x_test, axis=0), want_test, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(ds.x_train.mean(0), 0, atol=1e-5)
    np.testing.assert_allclose(np.sort(ds.y_test[:, 0]), np.sort(y[test_rows]).astype(np.float32), rtol=1e-6)


def test_california_housing_rejects_a_malformed_file(tmp_path):
    folder = tmp_path / "california_housing"
    folder.mkdir()
    (folder / "cal_housing.data").write_text("1,2,3\n4,5,6\n")
    with pytest.raises(ValueError, match="has 3 columns, expected 9"):
        data.load_california_housing(tmp_path, cache_dir=tmp_path / "cache")


def test_batches_reshuffle_each_epoch_and_keep_the_partial_batch():
    x, y = np.arange(10)[:, None], np.arange(10)
    batches = data.Batches(x, y, 4, seed=1)
    assert len(batches) == 3
    epochs = [list(batches), list(batches)]
    for epoch in epochs:
        assert [len(b[1]) for b in epoch] == [4, 4, 2]
        seen = np.concatenate([b[1] for b in epoch])
        assert sorted(seen) == list(range(10))
        for bx, by in epoch:
            np.testing.assert_array_equal(bx[:, 0], by)
    assert not np.array_equal(np.concatenate([b[1] for b in epochs[0]]), np.concatenate([b[1] for b in epochs[1]]))
    assert [len(b[1]) for b in data.Batches(x, y, 4, drop_last=True)] == [4, 4]
    assert [list(b[1]) for b in data.Batches(x, y, 5, shuffle=False)] == [[0, 1, 2, 3, 4], [5, 6, 7, 8, 9]]
    with pytest.raises(ValueError, match="x has 10, y has 9"):
        data.Batches(x, y[:9], 4)


def test_tensorflow_is_never_imported(tmp_path):
    tiny_mnist(tmp_path / "data", n_train=20, n_test=10)
    tiny_fashion_mnist(tmp_path / "data", n_train=20, n_test=10)
    tiny_cal_housing(tmp_path / "data", n=50)
    code = (
        "import sys; from manualgrad import data; "
        f"data.load('mnist', {str(tmp_path / 'data')!r}, cache_dir={str(tmp_path / 'cache')!r}); "
        f"data.load('fashion_mnist', {str(tmp_path / 'data')!r}, cache_dir={str(tmp_path / 'cache')!r}); "
        f"data.load('california_housing', {str(tmp_path / 'data')!r}, cache_dir={str(tmp_path / 'cache')!r}); "
        "import experiments.common, manualgrad.train; "
        "bad = [m for m in sys.modules if m == 'tensorflow' or m.startswith('tensorflow.')]; "
        "assert not bad, bad; print('ok')"
    )
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=300,
                         env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert out.returncode == 0 and out.stdout.strip().endswith("ok"), out.stderr[-2000:]


# -- the real files (../shared/data or $MANUALGRAD_DATA_DIR) ---------------------------
def test_real_california_housing(shared_data, no_network):
    ds = data.load("california_housing", shared_data)
    assert ds.x_train.shape == (16512, 8) and ds.x_test.shape == (4128, 8)
    np.testing.assert_allclose(ds.x_train.mean(0), 0, atol=1e-4)
    np.testing.assert_allclose(ds.x_train.std(0), 1, atol=1e-4)
    assert 0.14 < ds.y_train.min() and ds.y_train.max() <= 5.00001  # values are capped at $500,001
    assert ds.info["features"] == california_housing.FEATURES


# -- Fashion-MNIST: the MNIST mechanism (mnist.IdxBuilder) over fashion_mnist/ ----------
FASHION_CLASSES = ("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot")
# MD5 of the uncompressed IDX files, from ../shared/data/README.md (the original distribution's)
FASHION_MD5 = {
    "train-images-idx3-ubyte": "f4a8712d7a061bf5bd6d2ca38dc4d50a",
    "train-labels-idx1-ubyte": "9018921c3c673c538a1fc5bad174d6f9",
    "t10k-images-idx3-ubyte": "8181f5470baa50b63fa0f6fddb340f0a",
    "t10k-labels-idx1-ubyte": "15d484375f8d13e6eb1aabb0c3f46965",
}


def tiny_fashion_mnist(root, **kwargs):
    """tests.tiny_data's MNIST-layout files, moved to <root>/fashion_mnist/."""
    written = tiny_mnist(root / "tmp", **kwargs)
    (root / "tmp" / "mnist").rename(root / "fashion_mnist")
    return written


def as_rows(x, y):
    """(image, label) pairs as one sorted array of byte rows: compares datasets whatever their order."""
    rows = np.concatenate([x.reshape(len(x), -1), y.astype(np.uint8)[:, None]], 1)
    return np.sort(np.ascontiguousarray(rows).view(np.dtype((np.void, rows.shape[1]))).ravel())


def test_fashion_mnist_builder_over_idx_files(tmp_path, no_network):
    written = tiny_fashion_mnist(tmp_path / "data", n_train=200, n_test=50)
    ds = data.load("fashion_mnist", tmp_path / "data", cache_dir=tmp_path / "cache")
    assert ds.name == "fashion_mnist" and ds.info["source"] == str((tmp_path / "data" / "fashion_mnist").resolve())
    assert ds.x_train.shape == (200, 28, 28, 1) and ds.x_test.shape == (50, 28, 28, 1) and ds.x_train.dtype == np.uint8
    assert ds.y_train.dtype == ds.y_test.dtype == np.int32
    assert ds.info["class_names"] == FASHION_CLASSES and ds.info["num_classes"] == 10
    for split, x, y in (("train", ds.x_train, ds.y_train), ("test", ds.x_test, ds.y_test)):
        np.testing.assert_array_equal(as_rows(x[..., 0], y), as_rows(*written[split]))
    # the same structure as load_mnist's, over the same files
    (tmp_path / "data" / "fashion_mnist").rename(tmp_path / "data" / "mnist")
    digits = data.load_mnist(tmp_path / "data", cache_dir=tmp_path / "cache")
    assert set(digits.info) == set(ds.info) and digits.info["class_names"] == tuple("0123456789")
    for a, b in zip((ds.x_train, ds.y_train, ds.x_test, ds.y_test), (digits.x_train, digits.y_train, digits.x_test, digits.y_test)):
        assert a.shape == b.shape and a.dtype == b.dtype
    np.testing.assert_array_equal(as_rows(digits.x_train[..., 0], digits.y_train), as_rows(ds.x_train[..., 0], ds.y_train))


def test_fashion_mnist_missing_files_and_bad_labels(tmp_path, no_network):
    (tmp_path / "fashion_mnist").mkdir()
    with pytest.raises(data.MissingDataError) as e:
        data.load_fashion_mnist(tmp_path, cache_dir=tmp_path / "cache")
    msg = str(e.value)
    assert "manualgrad.data.load_fashion_mnist" in msg and "Fashion-MNIST" in msg and "--data-dir" in msg
    for name in FASHION_MD5:
        assert str(tmp_path / "fashion_mnist" / name) in msg and str(tmp_path / "fashion_mnist" / f"{name}.gz") in msg
    (tmp_path / "fashion_mnist").rmdir()
    tiny_fashion_mnist(tmp_path, n_train=20, n_test=10)
    write_idx(tmp_path / "fashion_mnist" / "t10k-labels-idx1-ubyte", np.full(10, 10, np.uint8))
    with pytest.raises(ValueError, match="load_fashion_mnist: .*t10k-labels-idx1-ubyte.gz has label 10 > 9"):
        data.load_fashion_mnist(tmp_path, cache_dir=tmp_path / "cache")


def test_without_a_data_dir_fashion_mnist_comes_from_the_tfds_catalog(tmp_path, monkeypatch):
    monkeypatch.delenv(source.DATA_DIR_ENV, raising=False)
    calls = []

    def data_source(name, **kwargs):
        calls.append(name)
        return fake_mnist_sources()

    monkeypatch.setattr(mnist.tfds, "data_source", data_source)
    ds = data.load("fashion_mnist", cache_dir=tmp_path)
    assert calls == ["fashion_mnist"] and ds.info["source"] == "tfds catalog: fashion_mnist"
    assert ds.x_train.shape == (4, 28, 28, 1) and list(ds.y_test) == [3, 3] and ds.info["class_names"] == FASHION_CLASSES


def test_fashion_catalog_needing_tensorflow_falls_back_to_downloading_the_idx_files(tmp_path, monkeypatch):
    builder, ds = load_without_tensorflow(monkeypatch, "fashion_mnist", tmp_path / "cache")
    assert isinstance(builder, fashion_mnist.FashionMnistIdx) and builder.source_dir is None
    assert ds.info["source"] == fashion_mnist.URL == "http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/"
    # the builder asks TFDS's download manager for the four files at the catalog's URL
    written = tiny_fashion_mnist(tmp_path / "downloads", n_train=20, n_test=10)

    class FakeDownloads:
        def download(self, urls):
            self.urls = urls
            return {name: tmp_path / "downloads" / "fashion_mnist" / name for name in urls}

    dl = FakeDownloads()
    splits = builder._split_generators(dl)
    assert sorted(dl.urls.values()) == sorted(fashion_mnist.URL + name + ".gz" for name in FASHION_MD5)
    examples = [ex for _, ex in splits["test"]]
    np.testing.assert_array_equal(as_rows(np.stack([e["image"][..., 0] for e in examples]), np.array([e["label"] for e in examples])),
                                  as_rows(*written["test"]))


@pytest.fixture(scope="session")
def shared_fashion_mnist():
    """The folder holding the real fashion_mnist/ (the one holding mnist/, see tests.conftest)."""
    chosen = os.environ.get("MANUALGRAD_DATA_DIR")
    path = (pathlib.Path(chosen) if chosen else ROOT.parent / "shared" / "data").resolve()
    if not (path / "fashion_mnist").is_dir():
        pytest.skip(f"the real Fashion-MNIST files are absent ({path / 'fashion_mnist'} is not a folder; "
                    "set MANUALGRAD_DATA_DIR to a folder holding fashion_mnist/)")
    return path


def test_real_fashion_mnist(shared_fashion_mnist, no_network):
    folder = shared_fashion_mnist / "fashion_mnist"
    raw = {}
    for name, md5 in FASHION_MD5.items():
        (path,) = source.find_files("test", folder, [name], "")
        raw[name] = mnist.read_idx(path)
        with (gzip.open if path.suffix == ".gz" else open)(path, "rb") as f:
            assert hashlib.md5(f.read()).hexdigest() == md5, f"{path} is not the README's Fashion-MNIST"
    assert raw["train-labels-idx1-ubyte"][0] == 9  # the first training image is an ankle boot
    ds = data.load("fashion_mnist", shared_fashion_mnist)
    assert ds.x_train.shape == (60000, 28, 28, 1) and ds.x_test.shape == (10000, 28, 28, 1) and ds.x_train.dtype == np.uint8
    assert ds.y_train.min() == 0 and ds.y_train.max() == 9 and ds.y_test.min() == 0 and ds.y_test.max() == 9
    assert np.bincount(ds.y_train, minlength=10).tolist() == [6000] * 10
    assert np.bincount(ds.y_test, minlength=10).tolist() == [1000] * 10
    assert ds.info["class_names"] == FASHION_CLASSES and ds.info["source"] == str(folder)
    # exactly the files' examples (TFDS keeps its own order)
    np.testing.assert_array_equal(as_rows(ds.x_train[..., 0], ds.y_train),
                                  as_rows(raw["train-images-idx3-ubyte"], raw["train-labels-idx1-ubyte"]))
    np.testing.assert_array_equal(as_rows(ds.x_test[..., 0], ds.y_test),
                                  as_rows(raw["t10k-images-idx3-ubyte"], raw["t10k-labels-idx1-ubyte"]))


# -- Shakespeare: one text file, a character vocabulary, windows of context + 1 ------------
SHAKESPEARE_MD5 = "cc2dec6a1f819a3bec1ead2e911a2244"  # ../shared/data/README.md


def write_text(root, text):
    folder = root / "shakespeare"
    folder.mkdir(parents=True)
    (folder / "shakespeare.txt").write_text(text, encoding="utf-8")
    return root


def test_shakespeare_windows_vocabulary_and_split_in_order(tmp_path, no_network):
    text = "".join(f"Line {i}: to be, or not to be!\n" for i in range(40))  # 1210 characters
    root = write_text(tmp_path / "data", text)
    ds = data.load("shakespeare", root, context=8, seed=3, cache_dir=tmp_path / "cache")
    vocab = ds.info["vocab"]
    assert vocab == "".join(sorted(set(text))) and ds.info["source"] == str(root / "shakespeare" / "shakespeare.txt")
    cut = int(len(text) * 0.9)
    assert (ds.info["train_chars"], ds.info["test_chars"]) == (cut, len(text) - cut)
    decode = lambda ids: shakespeare.decode(ids, vocab)
    # training windows: as many as the text holds back to back, at seeded random starts, y one ahead of x
    assert ds.x_train.shape == ds.y_train.shape == (cut // 8, 8) and ds.x_train.dtype == np.int32
    starts = [text.index(decode(x) + decode(y)[-1]) for x, y in zip(ds.x_train, ds.y_train)]
    assert len(set(starts)) > 1
    for x, y in zip(ds.x_train, ds.y_train):
        assert decode(x)[1:] == decode(y)[:-1] and (decode(x) + decode(y)[-1]) in text[:cut]
    # test windows tile the validation text in order
    val = text[cut:]
    assert "".join(decode(x) for x in ds.x_test) == val[: 8 * len(ds.x_test)]
    assert len(ds.x_test) == (len(val) - 1) // 8
    np.testing.assert_array_equal(ds.x_test[:, 1:], ds.y_test[:, :-1])
    again = data.load("shakespeare", root, context=8, seed=3, cache_dir=tmp_path / "cache")
    np.testing.assert_array_equal(again.x_train, ds.x_train)  # the seed fixes the windows
    other = data.load("shakespeare", root, context=8, seed=4, cache_dir=tmp_path / "cache")
    assert not np.array_equal(other.x_train, ds.x_train)


def test_shakespeare_errors_say_what_is_wrong(tmp_path, no_network):
    with pytest.raises(data.MissingDataError, match=r"shakespeare[/\\]shakespeare.txt"):
        data.load("shakespeare", tmp_path, cache_dir=tmp_path / "cache")
    root = write_text(tmp_path / "short", "abcdefghij" * 3)
    with pytest.raises(ValueError, match="the validation text has 3 characters, fewer than one window of context"):
        data.load("shakespeare", root, context=8, cache_dir=tmp_path / "cache")
    with pytest.raises(ValueError, match="context must be a positive integer"):
        data.load("shakespeare", root, context=0, cache_dir=tmp_path / "cache")
    with pytest.raises(ValueError, match=r"characters not in the vocabulary: \['z'\]"):
        shakespeare.encode("abz", "ab")
    with pytest.raises(ValueError, match="do not fit in 10 characters"):
        shakespeare.windows(np.arange(10), 4, np.array([0, 6]))


def test_without_a_data_dir_shakespeare_is_downloaded_from_gutenberg(tmp_path, monkeypatch):
    monkeypatch.delenv(source.DATA_DIR_ENV, raising=False)
    builder = source.make_builder(shakespeare.Shakespeare, tmp_path)
    assert builder.source_dir is None
    (tmp_path / "pg100.txt").write_text("Sonnet 18\nShall I compare thee to a summer's day?\n" * 3)

    class FakeDownloads:
        def download(self, url):
            self.url = url
            return tmp_path / "pg100.txt"

    dl = FakeDownloads()
    splits = builder._split_generators(dl)
    assert dl.url == shakespeare.URL == "https://www.gutenberg.org/cache/epub/100/pg100.txt"
    chars = np.concatenate([ex["chars"] for _, ex in splits["train"]] + [ex["chars"] for _, ex in splits["test"]])
    assert "".join(map(chr, chars)) == (tmp_path / "pg100.txt").read_text()


def test_real_shakespeare(shared_data, no_network):
    path = shared_data / "shakespeare" / "shakespeare.txt"
    if not path.is_file():
        pytest.skip(f"the real Shakespeare text is absent ({path})")
    assert hashlib.md5(path.read_bytes()).hexdigest() == SHAKESPEARE_MD5, f"{path} is not the README's text"
    ds = data.load("shakespeare", shared_data)
    assert len(ds.info["vocab"]) == 84 and ds.info["train_chars"] + ds.info["test_chars"] == 5_057_282
    assert ds.info["train_chars"] == int(5_057_282 * 0.9) and ds.x_train.shape == (ds.info["train_chars"] // 128, 128)
    text = path.read_text()
    assert shakespeare.decode(ds.x_test[0], ds.info["vocab"]) == text[ds.info["train_chars"] :][:128]
