"""Packaging: the light import (no TensorFlow Datasets until a dataset is loaded), lazy submodules,
the declared dependencies, and chex (a core dependency) proving the training step compiles once."""

import subprocess
import sys
import tomllib

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import manualgrad as mg
from manualgrad import losses, nn, train
from tests.conftest import ROOT


def python(code):
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    return out.stdout


def test_lazy_submodules_do_not_import_tensorflow_datasets():
    out = python(
        "import sys\n"
        "import manualgrad as mg\n"
        "mg.train; mg.checkpoint; mg.data.Batches; mg.data.Dataset; mg.data.MissingDataError; mg.data.resolve_data_dir\n"
        "import manualgrad.train, manualgrad.data\n"
        "print('tensorflow_datasets' in sys.modules)\n"
        "mg.data.load\n"
        "print('tensorflow_datasets' in sys.modules)\n"
        "mg.data.LOADERS\n"
        "print('tensorflow_datasets' in sys.modules)\n"
    )
    assert out.split() == ["False", "False", "True"]


def test_lazy_attributes():
    import manualgrad.checkpoint
    import manualgrad.data
    import manualgrad.data.mnist

    assert mg.train is train and mg.checkpoint is manualgrad.checkpoint and mg.data is manualgrad.data
    assert mg.data.LOADERS["mnist"] is mg.data.load_mnist is manualgrad.data.mnist.load_mnist
    assert {"train", "data", "checkpoint"} <= set(dir(mg)) and "load_mnist" in dir(mg.data)
    # the TFDS-backed submodules are attributes of manualgrad.data before anyone imports them
    assert python("from manualgrad import data; print(data.source.DATA_DIR_ENV, data.california_housing.FILE)").split() == [
        "MANUALGRAD_DATA_DIR", "cal_housing.data"]
    with pytest.raises(AttributeError, match="has no attribute 'nope'"):
        mg.nope
    with pytest.raises(AttributeError, match="has no attribute 'nope'"):
        mg.data.nope
    with pytest.raises(ValueError, match="name must be one of"):
        mg.data.load("cifar")


def test_core_dependencies_are_the_numerical_stack_only():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    names = {d.split(">")[0].split("=")[0].split("[")[0].strip() for d in project["dependencies"]}
    assert names == {"jax", "jaxlib", "optax", "chex", "numpy"}
    extras = project["optional-dependencies"]
    assert any(d.startswith("tensorflow-datasets") for d in extras["data"])
    assert "manualgrad[data]" in extras["experiments"]
    assert {d.split(">")[0] for d in extras["experiments"]} >= {"matplotlib", "tqdm"}
    assert {d.split(">")[0] for d in extras["test"]} >= {"pytest", "pytest-xdist", "hypothesis"}
    assert '-e ".[experiments,test,docs]"' in (ROOT / ".ci" / "run").read_text()


def problem(seed, n=64, d=6):
    rng = np.random.default_rng(seed)
    x = jnp.asarray(rng.normal(size=(n, d)), jnp.float32)
    y = jnp.asarray(rng.integers(0, 3, n), jnp.int32)
    return x, y


@pytest.fixture
def traced_once(monkeypatch):
    """The update that steps and epochs build (``train.steps.updater``), raising when traced a
    second time (chex.assert_max_traces)."""
    from manualgrad.train import epochs, steps

    chex.clear_trace_counter()
    updater = steps.updater

    def counted(*args, **kwargs):
        return chex.assert_max_traces(updater(*args, **kwargs), n=1)

    monkeypatch.setattr(steps, "updater", counted)
    monkeypatch.setattr(epochs, "updater", counted)
    yield
    chex.clear_trace_counter()


def setup(grad):
    model = nn.serial(nn.Linear(8), nn.ReLU(), nn.Linear(3))
    _, params = model.init(jax.random.PRNGKey(0), (-1, 6))
    params = jax.tree_util.tree_map(lambda a: jnp.asarray(a, jnp.float32), params)
    optimizer = train.sgd_with_clipping(0.1, 1.0, momentum=0.9)
    return model, params, optimizer, optimizer.init(params)


@pytest.mark.parametrize("grad", train.GRADS)
def test_train_step_compiles_once(traced_once, grad):
    model, params, optimizer, opt_state = setup(grad)
    step = train.make_train_step(model, losses.softmax_cross_entropy, optimizer, grad)
    for seed in range(3):  # fresh data of the same shapes: no retrace
        params, opt_state, metrics = step(params, opt_state, problem(seed, n=16))
    assert np.isfinite(float(metrics["loss"]))
    with pytest.raises(AssertionError, match="traced > 1 times"):  # the guard is live: a new shape retraces
        step(params, opt_state, problem(0, n=8))


@pytest.mark.parametrize("grad", train.GRADS)
def test_scanned_epoch_compiles_once(traced_once, grad):
    model, params, optimizer, opt_state = setup(grad)
    epoch = train.make_epoch(model, losses.softmax_cross_entropy, optimizer, 16, grad)
    for seed in range(3):  # a fresh training set and key each epoch, same shapes: no retrace
        x, y = problem(seed)
        params, opt_state, metrics = epoch(params, opt_state, x, y, jax.random.PRNGKey(seed))
    assert metrics["loss"].shape == (64 // 16,)
    with pytest.raises(AssertionError, match="traced > 1 times"):
        epoch(params, opt_state, *problem(0, n=48), jax.random.PRNGKey(0))
