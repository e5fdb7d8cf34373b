"""Data parallelism (manualgrad.parallel, train's mesh arguments, manualgrad.launch) on fake CPU devices.

The test process has one CPU device, so every check runs in a subprocess started with
``--xla_force_host_platform_device_count`` (or through the launcher)."""

import json
import os
import subprocess
import sys
import textwrap
import time

import pytest

from tests.conftest import ROOT
from tests.tiny_data import tiny_cal_housing


def python(code, devices=4, timeout=300, setup=True):
    """Run ``code`` (after :data:`SETUP`) in a fresh interpreter with ``devices`` CPU devices; its stdout."""
    env = {**os.environ, "PYTHONPATH": str(ROOT), "XLA_FLAGS": f"--xla_force_host_platform_device_count={devices}"}
    env.pop("MANUALGRAD_DATA_DIR", None)
    source = (SETUP if setup else "") + textwrap.dedent(code)
    out = subprocess.run([sys.executable, "-c", source], cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout)
    assert out.returncode == 0, out.stderr[-3000:]
    return out.stdout


SETUP = """
import jax, jax.numpy as jnp, numpy as np
from manualgrad import losses, nn, parallel, train
from manualgrad.data import Dataset

def run(dtype, devices, grad, lr=0.05, momentum=0.0, epochs=1, model=None, n=520, batch=64):
    rng = np.random.default_rng(0)
    x, y = rng.normal(size=(n, 10)).astype(dtype), rng.integers(0, 3, n)
    model = model or nn.serial(nn.Linear(16, dtype=dtype), nn.Tanh(), nn.Linear(3, dtype=dtype))
    _, params = model.init(jax.random.PRNGKey(0), (1, 10))
    mesh = None if devices is None else parallel.data_mesh(devices)
    h = train.fit(model, losses.softmax_cross_entropy, train.sgd_with_clipping(lr, 1e6, momentum), params,
                  Dataset("toy", x, y, x[:100], y[:100]), epochs=epochs, batch_size=batch, key=jax.random.PRNGKey(1),
                  grad=grad, mesh=mesh)
    return h

def gap(a, b):
    return max(float(np.max(np.abs(np.asarray(p) - np.asarray(q)) / (np.max(np.abs(np.asarray(q))) + 1e-300)))
               for p, q in zip(jax.tree.leaves(a.params), jax.tree.leaves(b.params)))
"""


def test_four_devices_train_to_the_parameters_of_one():
    """Same global batches (520 examples, batch 64: 8 steps, the last 8 examples of each permutation left
    out as on one device): float64 to 1e-10 for every gradient source; float32 to 1e-5 in a low-chaos
    setting (constant small rate, no momentum, clipping inactive)."""
    out = python("""
    jax.config.update("jax_enable_x64", True)
    for grad in train.GRADS:
        one, four = run(np.float64, None, grad), run(np.float64, 4, grad)
        assert len(four.step_losses[0]) == 8
        print("float64", grad, gap(four, one))
        assert gap(four, one) <= 1e-10
        one, four = run(np.float32, None, grad, lr=0.01), run(np.float32, 4, grad, lr=0.01)
        print("float32", grad, gap(four, one))
        assert gap(four, one) <= 1e-5
    """)
    assert out.count("float64") == 3


def test_batch_norm_statistics_are_per_device_and_running_statistics_averaged():
    out = python("""
    jax.config.update("jax_enable_x64", True)
    from jax.sharding import NamedSharding, PartitionSpec as P
    model = nn.serial(nn.Linear(4, dtype=np.float64), nn.BatchNorm(dtype=np.float64), nn.Linear(3, dtype=np.float64))
    _, params = model.init(jax.random.PRNGKey(0), (1, 6))
    _, state = model.init_state((1, 6))
    rng = np.random.default_rng(1)
    x, y = rng.normal(size=(8, 6)) * np.arange(1, 9)[:, None], rng.integers(0, 3, 8)  # shards with other statistics
    mesh = parallel.data_mesh(4)
    opt = train.sgd_with_clipping(0.1, 1e6)
    step = train.make_train_step(model, losses.softmax_cross_entropy, opt, mesh=mesh)
    p, s, st = parallel.replicate(mesh, (params, opt.init(params), state))
    _, _, metrics, new_state = step(p, s, parallel.global_batch(mesh, (x, y), 8), st)
    shards = [model.apply(params, x[2 * i:2 * i + 2], state=state, train=True) for i in range(4)]
    per_device = np.mean([losses.softmax_cross_entropy(out, y[2 * i:2 * i + 2]) for i, (out, _) in enumerate(shards)])
    whole = losses.softmax_cross_entropy(model.apply(params, x, state=state, train=True)[0], y)
    np.testing.assert_allclose(parallel.local(metrics)["loss"], per_device, rtol=1e-12)
    assert abs(float(whole) - per_device) > 1e-3  # global statistics would give another loss
    running = jax.tree.map(lambda *a: np.mean(a, axis=0), *[s for _, s in shards])
    for a, b in zip(jax.tree.leaves(parallel.local(new_state)), jax.tree.leaves(running)):
        np.testing.assert_allclose(a, b, rtol=1e-12)
    print("ok")
    """)
    assert out.strip().endswith("ok")


def test_resume_under_a_mesh_is_bit_identical_and_dropout_trains():
    out = python("""
    import tempfile, pathlib
    folder = pathlib.Path(tempfile.mkdtemp())
    model = nn.serial(nn.Linear(16), nn.ReLU(), nn.Dropout(0.3), nn.Linear(3))
    rng = np.random.default_rng(0)
    x, y = rng.normal(size=(256, 10)).astype(np.float32), rng.integers(0, 3, 256)
    _, params = model.init(jax.random.PRNGKey(0), (1, 10))
    mesh = parallel.data_mesh(4)

    def fit(epochs, path, resume=False):
        return train.fit(model, losses.softmax_cross_entropy, train.sgd_with_clipping(0.05, 5.0, 0.9), params,
                         Dataset("toy", x, y, x[:64], y[:64]), epochs=epochs, batch_size=32, key=jax.random.PRNGKey(1),
                         checkpoint_path=path, resume=resume, mesh=mesh)

    full = fit(2, folder / "full.npz")
    fit(1, folder / "split.npz")
    split = fit(2, folder / "split.npz", resume=True)
    for a, b in zip(jax.tree.leaves(full.params), jax.tree.leaves(split.params)):
        assert np.array_equal(a, b)
    assert [e["train_loss"] for e in full.epochs] == [e["train_loss"] for e in split.epochs]
    print("resumed", full.epochs[-1]["train_loss"] < full.epochs[0]["train_loss"])
    """)
    assert "resumed True" in out


def test_uneven_sizes_get_an_error_or_the_documented_rule():
    out = python("""
    try:
        run(np.float32, 4, "manual", batch=30)
    except ValueError as e:
        print(e)
    h = run(np.float32, 4, "manual", n=130, batch=32)  # 130 examples: 4 steps of 32, 2 left out per epoch
    print("steps", len(h.step_losses[0]))
    """)
    assert "global batch of 30 examples does not split evenly over 4 devices (30 % 4 = 2)" in out
    assert "steps 4" in out


def test_the_sharded_step_on_one_device_and_mesh_errors():
    out = python("""
    one, sharded = run(np.float32, None, "manual"), run(np.float32, 1, "manual")
    print("gap", gap(sharded, one))
    rng = np.random.default_rng(0)
    x, y = rng.normal(size=(40, 3)).astype(np.float32), rng.integers(0, 3, 40)
    model = nn.serial(nn.Linear(3))
    _, params = model.init(jax.random.PRNGKey(0), (1, 3))
    opt = train.sgd_with_clipping(0.1, 1.0)
    sums = [np.asarray(train.make_epoch(model, losses.softmax_cross_entropy, opt, 8, mesh=mesh)(
        jax.tree.map(jnp.array, params), opt.init(params), x, y, jax.random.PRNGKey(3))[2]["targets_sum"])
        for mesh in (None, parallel.data_mesh(2))]
    print("targets_sum equal", np.array_equal(*sums), sums[0].shape)
    try:
        parallel.data_mesh(3)
    except ValueError as e:
        print(e)
    """, devices=2)
    assert "devices must be an int in [1, 2] (the fewest cpu devices a process of this run has), got 3" in out
    assert float(out.split("gap ")[1].split()[0]) <= 1e-6
    assert "targets_sum equal True (5,)" in out


@pytest.fixture(scope="module")
def tiny_housing(tmp_path_factory):
    root = tmp_path_factory.mktemp("tiny-housing")
    tiny_cal_housing(root, n=500)
    return root


def launch(*args, timeout=240):
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    env.pop("MANUALGRAD_DATA_DIR", None)
    start = time.monotonic()
    out = subprocess.run([sys.executable, "-m", "manualgrad.launch", *map(str, args)], cwd=ROOT, env=env,
                         capture_output=True, text=True, timeout=timeout)
    return out, time.monotonic() - start


def test_two_processes_of_two_devices_train_as_one_process_of_four(tiny_housing, tmp_path):
    flags = ["--data-dir", tiny_housing, "--epochs", 2, "--batch-size", 32, "--no-progress"]
    out, seconds = launch("--processes", 2, "--devices-per-process", 2, "-m", "experiments.california_housing",
                          *flags, "--out", tmp_path / "2x2")
    assert out.returncode == 0, out.stderr[-3000:]
    single = subprocess.run([sys.executable, "-m", "experiments.california_housing", *map(str, flags), "--out", tmp_path / "1x4"],
                            cwd=ROOT, capture_output=True, text=True, timeout=240,
                            env={**os.environ, "PYTHONPATH": str(ROOT), "XLA_FLAGS": "--xla_force_host_platform_device_count=4"})
    assert single.returncode == 0, single.stderr[-3000:]
    two, one = (json.loads((tmp_path / d / "metrics.json").read_text()) for d in ("2x2", "1x4"))
    assert (two["config"]["devices"], two["config"]["processes"], one["config"]["devices"], one["config"]["processes"]) == (4, 2, 4, 1)
    assert [len(e) for e in two["step_loss"]] == [len(e) for e in one["step_loss"]] == [12, 12]
    for a, b in zip(two["step_loss"], one["step_loss"]):
        assert a == pytest.approx(b, rel=1e-5)  # float32: the all-reduce sums in another order
    assert two["test"]["mse"] == pytest.approx(one["test"]["mse"], rel=1e-5)
    assert seconds < 120, f"the launcher test took {seconds:.0f} s"


def test_a_killed_process_stops_the_run_with_a_message_naming_it():
    out, seconds = launch("--processes", 2, "--grace", 5, "-m", "tests.launch_target", "kill")
    assert out.returncode != 0
    assert "manualgrad.launch: process 1 (pid" in out.stderr and "was killed by SIGKILL; stopping the others" in out.stderr
    assert "manualgrad: process 0 stops: process 1 (pid" in out.stderr  # the survivor says which process was lost
    assert seconds < 60


def test_an_unreachable_coordinator_is_an_error_within_the_timeout():
    start = time.monotonic()
    out = python("""
    from manualgrad import launch, parallel
    import os
    os.environ.update({parallel.ENV_COORDINATOR: f"127.0.0.1:{launch.free_port()}", parallel.ENV_PROCESSES: "2",
                       parallel.ENV_PROCESS_ID: "1"})
    try:
        parallel.initialize(timeout_seconds=3)
    except ConnectionError as e:
        print(e)
    """, devices=1, setup=False)
    assert "process 1 of 2 cannot reach the coordinator at 127.0.0.1:" in out and "within 3 s" in out
    assert time.monotonic() - start < 60
