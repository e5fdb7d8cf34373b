"""The experiment scripts, run as a user runs them: flags, metrics.json, curves, resume, errors."""

import dataclasses
import importlib.util
import json
import os
import re
import shutil
import socket
import subprocess
import sys

import numpy as np
import pytest

from experiments import common, harness
from manualgrad import data
from tests.conftest import ROOT
from tests.tiny_data import tiny_cal_housing, tiny_mnist

needs_torch = pytest.mark.skipif(importlib.util.find_spec("torch") is None, reason="PyTorch (optional extra) is not installed")


def run(module, *args, check=True, **env_vars):
    env = {**os.environ, "PYTHONPATH": str(ROOT), **env_vars}
    env.pop("MANUALGRAD_DATA_DIR", None)
    out = subprocess.run([sys.executable, "-m", module, *map(str, args)], cwd=ROOT, env=env,
                         capture_output=True, text=True, timeout=600)
    if check:
        assert out.returncode == 0, out.stderr[-3000:]
    return out


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    root = tmp_path_factory.mktemp("tiny-data")
    tiny_mnist(root)
    tiny_cal_housing(root, n=500)
    return root


def checkpoint_arrays(path):
    with np.load(path) as z:
        return {k: z[k] for k in z.files if k != "header"}


def without_timing(epochs):
    return [{k: v for k, v in e.items() if k != "seconds"} for e in epochs]


def test_california_housing_writes_metrics_curves_and_checkpoint(tiny, tmp_path):
    out = run("experiments.california_housing", "--data-dir", tiny, "--epochs", 2, "--batch-size", 32, "--out", tmp_path, "--no-progress")
    assert "test mse" in out.stdout
    metrics = json.loads((tmp_path / "metrics.json").read_text())
    assert metrics["config"]["epochs"] == 2 and metrics["config"]["batch_size"] == 32 and metrics["config"]["grad"] == "manual"
    assert [e["epoch"] for e in metrics["epochs"]] == [1, 2]
    assert {"epoch", "train_loss", "seconds", "test_mse", "test_loss", "grad_norm_max"} <= set(metrics["epochs"][0])
    assert metrics["test"]["mse"] == metrics["epochs"][-1]["test_mse"]
    assert (tmp_path / "curves.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert (tmp_path / "checkpoint.npz").is_file()
    steps = metrics["config"]["train_examples"] // 32  # 400 // 32 = 12
    assert [len(s) for s in metrics["step_loss"]] == [steps, steps]
    assert np.mean(metrics["step_loss"][1]) == pytest.approx(metrics["epochs"][1]["train_loss"], rel=1e-5)


def test_mnist_smoke_run_on_tiny_idx_files(tiny, tmp_path):
    run("experiments.mnist", "--data-dir", tiny, "--epochs", 1, "--batch-size", 50, "--out", tmp_path, "--grad", "explicit")
    metrics = json.loads((tmp_path / "metrics.json").read_text())
    assert metrics["config"]["grad"] == "explicit" and metrics["config"]["model"] == "784-256-128-10"
    assert len(metrics["epochs"]) == 1
    # The tiny digits (a bright square placed by the label) are learnt in one epoch: measured test
    # accuracy 1.00 and test loss 0.012 (train loss 0.78). A wrong gradient stays near chance (0.1).
    assert metrics["test"]["accuracy"] >= 0.9 and metrics["test"]["loss"] < 0.2
    assert [len(s) for s in metrics["step_loss"]] == [300 // 50]
    assert (tmp_path / "curves.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


@pytest.mark.parametrize("module", ["mnist", "california_housing", "compare_torch", "worked_examples", "benchmark", "shakespeare"])
def test_every_experiment_answers_help(module):
    # wide enough that each flag's help is one line, so a doubled default shows on one line
    out = run(f"experiments.{module}", "--help", COLUMNS="1000")
    assert out.stdout.startswith("usage:")
    doubled = [line for line in out.stdout.splitlines() if line.count("default") > 1]
    assert not doubled, doubled
    if module == "mnist":
        assert "examples per training step (default: 128)" in out.stdout
        assert "(default: $MANUALGRAD_DATA_DIR, else the online source)" in out.stdout
    if module == "compare_torch":
        assert "(default: mnist 10, california_housing 60, fashion_mnist 15)" in out.stdout
        assert re.search(r"--model \{mlp,cnn\} .*\(default: mlp\)", out.stdout)


def test_limit_must_leave_at_least_one_batch(tiny, tmp_path, capsys):
    for limit in ("0", "-5"):
        with pytest.raises(SystemExit) as e:
            harness.main(common.experiment("california_housing", ""), ["--limit", limit, "--out", str(tmp_path)])
        assert e.value.code == 2 and f"--limit must be >= 1, got {limit}" in capsys.readouterr().err
    argv = ["--data-dir", str(tiny), "--limit", "50", "--batch-size", "64", "--out", str(tmp_path), "--no-progress"]
    with pytest.raises(SystemExit) as e:
        harness.main(common.experiment("california_housing", ""), argv)
    err = capsys.readouterr().err
    assert e.value.code == 2 and "--limit 50 leaves 50 training examples, fewer than --batch-size 64" in err


def test_resumed_run_is_bit_identical_to_an_uninterrupted_one(tiny, tmp_path):
    flags = ["--data-dir", tiny, "--batch-size", 32, "--no-progress"]
    run("experiments.california_housing", *flags, "--epochs", 2, "--out", tmp_path / "full")
    run("experiments.california_housing", *flags, "--epochs", 1, "--out", tmp_path / "split")
    run("experiments.california_housing", *flags, "--epochs", 2, "--out", tmp_path / "split", "--resume")
    full, split = (json.loads((tmp_path / d / "metrics.json").read_text()) for d in ("full", "split"))
    assert without_timing(full["epochs"]) == without_timing(split["epochs"])
    assert full["test"] == split["test"]
    a, b = checkpoint_arrays(tmp_path / "full" / "checkpoint.npz"), checkpoint_arrays(tmp_path / "split" / "checkpoint.npz")
    assert a.keys() == b.keys()
    for k in a:
        np.testing.assert_array_equal(a[k], b[k])


def test_corrupt_checkpoint_gets_a_clear_error(tiny, tmp_path, capsys):
    experiment = common.experiment(common.CALIFORNIA_HOUSING.name, "")
    argv = ["--data-dir", str(tiny), "--out", str(tmp_path), "--no-progress", "--limit", "300"]
    assert harness.main(experiment, [*argv, "--epochs", "1"]) == 0
    ck = tmp_path / "checkpoint.npz"
    ck.write_bytes(ck.read_bytes()[:100])
    capsys.readouterr()
    assert harness.main(experiment, [*argv, "--epochs", "2", "--resume"]) == 1
    err = capsys.readouterr().err
    assert "checkpoint.npz: truncated or corrupt" in err and "Traceback" not in err


def test_resume_refuses_another_dataset_and_fewer_epochs_and_out_must_be_a_folder(tiny, tmp_path, capsys):
    # Fashion-MNIST's MLP has MNIST's architecture: only the task tells their checkpoints apart
    shutil.copytree(tiny / "mnist", tmp_path / "data" / "mnist")
    shutil.copytree(tiny / "mnist", tmp_path / "data" / "fashion_mnist")
    mnist, fashion = (common.experiment(name, "") for name in ("mnist", "fashion_mnist"))
    argv = ["--data-dir", str(tmp_path / "data"), "--out", str(tmp_path / "run"), "--no-progress", "--batch-size", "50"]
    assert harness.main(mnist, [*argv, "--epochs", "2"]) == 0
    capsys.readouterr()
    assert harness.main(fashion, [*argv, "--epochs", "3", "--resume", "--lr", "0.1", "--decay-epochs", "10"]) == 1
    assert "written with other settings (task: 'mnist' there, 'fashion_mnist' now)" in capsys.readouterr().err
    assert harness.main(mnist, [*argv, "--epochs", "1", "--resume"]) == 1
    assert "holds 2 epochs, more than epochs=1" in capsys.readouterr().err
    (tmp_path / "file").write_text("")
    with pytest.raises(SystemExit) as e:
        harness.main(mnist, [*argv, "--out", str(tmp_path / "file")])
    assert e.value.code == 2 and "--out " in capsys.readouterr().err


# Every flag that changes the training trajectory; written out here, not read from the code under test.
TRAJECTORY_FLAGS = {
    "model": None,  # the architecture: resumed with another Task (hidden=(32,))
    "batch_size": "16",
    "lr": "0.05",
    "schedule": "constant",
    "decay_epochs": "5",
    "momentum": "0",
    "weight_decay": "0.001",
    "max_norm": "1.0",
    "seed": "1",
    "grad": "explicit",
    "limit": "200",
}


def test_resume_refuses_every_changed_trajectory_flag(tiny, tmp_path, capsys):
    task = common.CALIFORNIA_HOUSING
    experiment = common.experiment(task.name, "")
    assert set(TRAJECTORY_FLAGS) <= set(harness.resume_keys(experiment))
    argv = ["--data-dir", str(tiny), "--out", str(tmp_path), "--no-progress", "--batch-size", "32", "--limit", "300"]
    assert harness.main(experiment, [*argv, "--epochs", "1"]) == 0
    capsys.readouterr()
    for name, value in TRAJECTORY_FLAGS.items():
        if name == "model":
            changed = (common.TaskExperiment("", {"mlp": dataclasses.replace(task, hidden=(32,))}), [])
        else:
            changed = (experiment, [f"--{name.replace('_', '-')}", value])
        assert harness.main(changed[0], [*argv, "--epochs", "2", "--resume", *changed[1]]) == 1, name
        err = capsys.readouterr().err
        # the one changed setting, and only it, is named
        assert re.search(rf"was written with other settings \({name}: [^;]*\)$", err.strip()), (name, err)
    assert harness.main(experiment, [*argv, "--epochs", "2", "--resume"]) == 0  # unchanged flags resume


def test_missing_data_and_bad_flags_get_clear_errors(tmp_path):
    out = run("experiments.mnist", "--data-dir", tmp_path, "--out", tmp_path / "o", check=False)
    assert out.returncode == 1 and "Looked for" in out.stderr and "Traceback" not in out.stderr
    out = run("experiments.mnist", "--lr", "-1", check=False)
    assert out.returncode == 2 and "--lr must be > 0" in out.stderr


MNIST_TRAIN_LABEL_COUNTS = [5923, 6742, 5958, 6131, 5842, 5421, 5918, 6265, 5851, 5949]


def test_mnist_on_the_real_files(shared_data, tmp_path, monkeypatch):
    run("experiments.mnist", "--data-dir", shared_data, "--epochs", 1, "--limit", 6000, "--out", tmp_path, "--no-progress")
    metrics = json.loads((tmp_path / "metrics.json").read_text())
    assert metrics["config"]["train_examples"] == 6000 and metrics["config"]["test_examples"] == 10000
    assert metrics["test"]["accuracy"] > 0.85
    # the files as prepared by that run (the same cache folder): loaded again without the network
    monkeypatch.setattr(socket.socket, "connect", lambda *a, **k: pytest.fail("the network was used"))
    ds = data.load("mnist", shared_data)
    assert ds.x_train.shape == (60000, 28, 28, 1) and ds.x_test.shape == (10000, 28, 28, 1)
    assert np.bincount(ds.y_train, minlength=10).tolist() == MNIST_TRAIN_LABEL_COUNTS
    assert ds.x_train.max() == 255 and ds.x_train.min() == 0


@needs_torch
def test_compare_torch_writes_the_comparison(tiny, tmp_path):
    out = run("experiments.compare_torch", "--task", "mnist", "--data-dir", tiny, "--epochs", 1, "--batch-size", 50, "--out", tmp_path)
    result = json.loads((tmp_path / "comparison.json").read_text())
    assert {"jax", "torch", "param_max_abs_diff"} <= set(result)
    for side in ("jax", "torch"):
        assert set(result[side]["test"]) == {"accuracy", "loss"} and len(result[side]["epoch_seconds"]) == 1
    assert "PyTorch" in out.stdout and "largest |param_jax - param_torch|" in out.stdout
    # Measured for this exact command: 2.1e-7 (the same in every run; float32 rounding, amplified
    # by training). A planted bug, linear's weight gradient times 1.001, gives 9.9e-5.
    assert result["param_max_abs_diff"] < 5 * 2.1e-7


@needs_torch
def test_compare_torch_in_float64_agrees_to_rounding(tiny, tmp_path):
    # Clipping off (--max-norm 1e6): clip_grad_norm_ divides by norm + 1e-6, optax by norm. Then only
    # summation order differs; measured 3.3e-16 after 3 epochs (the planted 1.001 bug above: 6.3e-3).
    run("experiments.compare_torch", "--task", "california_housing", "--data-dir", tiny, "--epochs", 3,
        "--dtype", "float64", "--max-norm", 1e6, "--out", tmp_path)
    result = json.loads((tmp_path / "comparison.json").read_text())
    assert result["config"]["dtype"] == "float64" and len(result["param_max_abs_diff_per_epoch"]) == 3
    assert max(result["param_max_abs_diff_per_epoch"]) <= 1e-10
    assert result["jax"]["test"]["mse"] == pytest.approx(result["torch"]["test"]["mse"], rel=1e-10)


@needs_torch
def test_compare_torch_agrees_within_1e_4_on_california_housing(shared_data, tmp_path):
    # One epoch with the rate decayed over that epoch. Longer runs drift apart by as much as two
    # JAX runs whose start differs by 1e-7 do (reported in comparison.json): that is the
    # trajectory's sensitivity, not a gradient error.
    run("experiments.compare_torch", "--task", "california_housing", "--data-dir", shared_data,
        "--epochs", 1, "--decay-epochs", 1, "--out", tmp_path)
    result = json.loads((tmp_path / "comparison.json").read_text())
    assert result["param_max_abs_diff"] <= 1e-4
    assert abs(result["jax"]["test"]["mse"] - result["torch"]["test"]["mse"]) <= 1e-4


def test_compare_torch_cnn_twin_is_the_experiments_cnn():
    # compare_torch builds both CNNs from its own list of layers: with the dropout rates put back,
    # the JAX one must be task.model() itself (same params from the same key, same output in
    # training mode with the same dropout key), so dropout is the only thing the comparison changes.
    import jax

    from experiments import compare_torch
    from manualgrad import nn

    x = np.random.default_rng(0).normal(size=(4, 28, 28, 1)).astype(np.float32)
    for name in common.CNN_TASKS:
        task = common.task_for(name, "cnn")
        ours, theirs = compare_torch.jax_model(task, dropout=True), task.model()
        _, params = ours.init(jax.random.split(jax.random.PRNGKey(0))[0], (1, *task.input_shape))
        assert jax.tree_util.tree_all(jax.tree_util.tree_map(np.array_equal, params, task.init(theirs, 0)))
        state = nn.init_state(theirs, x.shape)[1]
        key = jax.random.PRNGKey(3)
        outputs = [jax.jit(lambda p, x, s, k, m=m: m.apply(p, x, state=s, key=k, train=True)[0])(params, x, state, key)
                   for m in (ours, theirs)]
        np.testing.assert_array_equal(*outputs)
    assert compare_torch.dropout_note(common.CNN_TASKS["mnist"]) is None
    assert "rates 0.3)" in compare_torch.dropout_note(common.CNN_TASKS["fashion_mnist"])


def test_compare_torch_cnn_needs_an_image_task(capsys):
    from experiments import compare_torch

    with pytest.raises(SystemExit) as e:
        compare_torch.main(["--task", "california_housing", "--model", "cnn"])
    assert e.value.code == 2 and "--model cnn: california_housing has no CNN" in capsys.readouterr().err


def real_images(folder, task, n_train, n_test):
    """The first ``n_train`` and ``n_test`` images of the four IDX files in ``folder``, prepared as
    ``task.load`` prepares them (read directly: no TFDS preparation of all 70000, which takes 20 s)."""
    from manualgrad.data import Dataset
    from manualgrad.data.mnist import read_idx

    def split(prefix, n):
        x = read_idx(folder / f"{prefix}-images-idx3-ubyte.gz")[:n, :, :, None]
        return x, read_idx(folder / f"{prefix}-labels-idx1-ubyte.gz")[:n].astype(np.int32)

    return task.prepare(Dataset(task.name, *split("train", n_train), *split("t10k", n_test)))


@needs_torch
@pytest.mark.parametrize("name", ["mnist", "fashion_mnist"])
def test_compare_torch_cnn_in_float64_agrees_to_rounding(shared_data, name):
    # One epoch (4 steps of 16 real images) in float64 without clipping (--max-norm 1e6), dropout
    # off, batch norm on batch statistics; the test metrics on 200 test images, the nudged-weights
    # run skipped, to keep it quick. Measured: largest parameter difference 4.5e-15 (mnist) and
    # 1.0e-14 (fashion_mnist, with batch norm), running statistics 4.2e-14, test losses equal to
    # 1e-14 relative. Dropout rates left in (the masks differ) would put them 1e-1 apart.
    import argparse

    from experiments import compare_torch

    if not (shared_data / name).is_dir():
        pytest.skip(f"{shared_data / name} is absent")
    task = common.task_for(name, "cnn")
    args = argparse.Namespace(epochs=1, batch_size=16, lr=0.05, schedule="cosine", decay_epochs=1, momentum=0.9,
                              weight_decay=0.0,
                              max_norm=1e6, seed=0, data_dir=str(shared_data), out=None, limit=64, dtype="float64",
                              model="cnn")
    result = compare_torch.compare(task, args, real_images(shared_data / name, task, 64, 200), sensitivity=False)
    assert result["model"] == task.architecture and len(result["param_max_abs_diff_per_epoch"]) == 1
    assert result["param_max_abs_diff"] <= 1e-9  # absolute, over every entry of every parameter
    assert result["jax"]["test"]["loss"] == pytest.approx(result["torch"]["test"]["loss"], rel=1e-9)
    assert result["jax"]["test"]["accuracy"] == result["torch"]["test"]["accuracy"]
    assert result["jax"]["train_loss"] == pytest.approx(result["torch"]["train_loss"], rel=1e-9)
    if task.cnn_regularised:
        assert result["state_max_abs_diff"] <= 1e-9  # absolute: the running means and variances
        assert any("dropout off" in n for n in result["notes"])
    else:
        assert result["state_max_abs_diff"] is None and result["notes"] == []


# -- shakespeare: a few steps of a tiny transformer on a tiny text -----------------------------
@pytest.fixture(scope="module")
def tiny_text(tmp_path_factory):
    root = tmp_path_factory.mktemp("tiny-text")
    (root / "shakespeare").mkdir()
    lines = ["To be, or not to be, that is the question:\n", "Whether 'tis nobler in the mind to suffer\n"]
    (root / "shakespeare" / "shakespeare.txt").write_text("".join(lines[i % 2] for i in range(60)))
    return root


TINY_LM = ["--context", "16", "--width", "16", "--depth", "1", "--heads", "2", "--batch-size", "16", "--warmup-steps", "2",
           "--sample-chars", "40", "--no-progress"]


def shakespeare_main(tiny_text, out, *flags):
    from experiments import shakespeare

    assert shakespeare.main(["--data-dir", str(tiny_text), "--out", str(out), *TINY_LM, *map(str, flags)]) == 0
    return json.loads((out / "metrics.json").read_text())


@pytest.fixture(scope="module")
def tiny_lm_runs(tiny_text, tmp_path_factory):
    """Two epochs with each gradient source: {grad: (out folder, metrics)}."""
    root = tmp_path_factory.mktemp("tiny-lm")
    return {g: (root / g, shakespeare_main(tiny_text, root / g, "--epochs", 2, "--grad", g))
            for g in ("manual", "explicit", "reference")}


def test_shakespeare_writes_metrics_curves_sample_and_trains_alike_with_every_gradient(tiny_text, tiny_lm_runs, tmp_path):
    runs = {g: m for g, (_, m) in tiny_lm_runs.items()}
    tmp_path = tiny_lm_runs["manual"][0].parent
    m = runs["manual"]
    assert m["test"]["bits_per_char"] == pytest.approx(m["test"]["loss"] / np.log(2))
    assert m["epochs"][-1]["test_loss"] < m["epochs"][0]["test_loss"] < np.log(m["config"]["vocab_size"])  # it learns
    assert (tmp_path / "manual" / "curves.png").stat().st_size > 10_000
    sample = (tmp_path / "manual" / "sample.txt").read_text()
    assert len(sample) == 41 and sample[0] == "\n" and set(sample) <= set((tiny_text / "shakespeare" / "shakespeare.txt").read_text())
    for g in ("explicit", "reference"):  # the same curve from each source of gradients
        np.testing.assert_allclose(np.concatenate(runs[g]["step_loss"]), np.concatenate(m["step_loss"]), rtol=2e-4)


def test_shakespeare_resume_is_bit_identical_and_bad_flags_are_refused(tiny_text, tiny_lm_runs, tmp_path, capsys):
    from experiments import shakespeare

    full_dir, full = tiny_lm_runs["manual"]
    shakespeare_main(tiny_text, tmp_path / "split", "--epochs", 1, "--decay-epochs", 2)
    split = shakespeare_main(tiny_text, tmp_path / "split", "--epochs", 2, "--resume")
    assert without_timing(full["epochs"]) == without_timing(split["epochs"])
    assert (full_dir / "sample.txt").read_text() == (tmp_path / "split" / "sample.txt").read_text()
    for flags, message in [(["--heads", "3"], "--heads 3 must divide --width 16"),
                           (["--limit", "4"], "--limit 4 leaves 4 training windows, fewer than --batch-size 16"),
                           (["--prompt", "\u00e9"], "--prompt '\u00e9': manualgrad.data.shakespeare.encode: characters not in")]:
        with pytest.raises(SystemExit) as e:
            shakespeare.main(["--data-dir", str(tiny_text), "--out", str(tmp_path / "bad"), *TINY_LM, *flags])
        assert e.value.code == 2 and message in capsys.readouterr().err
    assert shakespeare.main(["--data-dir", str(tmp_path / "nowhere"), "--out", str(tmp_path / "bad"), *TINY_LM]) == 1
    assert "shakespeare.txt" in capsys.readouterr().err


TINY_LSTM = ["--model", "lstm", "--context", "16", "--width", "12", "--batch-size", "16", "--warmup-steps", "2",
             "--sample-chars", "40", "--no-progress", "--epochs", "2"]


def test_shakespeare_lstm_learns_alike_with_manual_and_reference_gradients_and_keeps_its_model(tiny_text, tmp_path, capsys):
    from experiments import shakespeare

    def lstm_main(out, *flags):
        assert shakespeare.main(["--data-dir", str(tiny_text), "--out", str(out), *TINY_LSTM, *flags]) == 0
        return json.loads((out / "metrics.json").read_text())

    manual, reference = (lstm_main(tmp_path / g, "--grad", g) for g in ("manual", "reference"))
    assert manual["config"]["model"] == "lstm" and manual["config"]["heads"] is None
    assert manual["epochs"][-1]["test_loss"] < manual["epochs"][0]["test_loss"] < np.log(manual["config"]["vocab_size"])
    np.testing.assert_allclose(np.concatenate(reference["step_loss"]), np.concatenate(manual["step_loss"]), rtol=2e-4)
    assert len((tmp_path / "manual" / "sample.txt").read_text()) == 41
    capsys.readouterr()
    for flags, message in [(["--heads", "2"], "--heads and --positions are the transformer's; --model lstm has neither"),
                           (["--depth", "0"], "--depth")]:
        with pytest.raises(SystemExit) as e:
            shakespeare.main(["--data-dir", str(tiny_text), "--out", str(tmp_path / "bad"), *TINY_LSTM, *flags])
        assert e.value.code == 2 and message in capsys.readouterr().err
    # the checkpoint is an LSTM's: resuming it as the transformer is refused, naming the model
    assert shakespeare.main(["--data-dir", str(tiny_text), "--out", str(tmp_path / "manual"), *TINY_LM, "--resume"]) != 0
    assert "model: 'lstm' there, 'transformer' now" in capsys.readouterr().err


needs_tokenizers = pytest.mark.skipif(importlib.util.find_spec("tokenizers") is None,
                                      reason="tokenizers (the experiments extra) is not installed")


@needs_tokenizers
def test_shakespeare_bpe_trains_the_fused_head_and_reports_nats_per_character(tiny_text, tmp_path, capsys):
    """A BPE learnt from the tiny training text, the transformer with the fused output layer +
    loss, the validation loss per token turned into nats per character, a sample decoded to text;
    flags that do not fit the tokenizer are refused."""
    from experiments import bpe, shakespeare

    out = tmp_path / "bpe"
    flags = ["--data-dir", str(tiny_text), *TINY_LM, "--tokenizer", "bpe", "--vocab-size", "300", "--context", "8",
             "--batch-size", "4", "--epochs", "2"]
    assert shakespeare.main([*flags, "--out", str(out)]) == 0
    m = json.loads((out / "metrics.json").read_text())
    text = (tiny_text / "shakespeare" / "shakespeare.txt").read_text()
    ds = bpe.load_bpe(tiny_text, vocab_size=300, context=8)
    tokenizer = ds.info["tokenizer"]
    assert tokenizer.decode(np.concatenate([ds.x_test[0], ds.y_test[0, -1:]]).tolist()) in text  # ids decode to the text
    assert m["config"]["vocab_size"] == ds.info["vocab_size"] <= 300 and m["config"]["tokenizer"] == "bpe"
    per_token = ds.info["test_chars_per_token"]
    assert per_token == len(tokenizer.decode(ds.y_test.reshape(-1).tolist())) / ds.y_test.size > 1
    assert m["test"]["nats_per_char"] == pytest.approx(m["test"]["loss"] / per_token)
    assert m["epochs"][-1]["test_loss"] < m["epochs"][0]["test_loss"]
    sample = (out / "sample.txt").read_text()
    assert sample.startswith("\n") and len(sample) > 40  # 40 tokens decoded (any of the 256 bytes may be drawn)
    capsys.readouterr()
    for bad, message in [(["--vocab-size", "100"], "--vocab-size 100 must be >= 257"),
                         (["--tokenizer", "char"], "--vocab-size is BPE's")]:
        with pytest.raises(SystemExit) as e:
            shakespeare.main([*flags, "--out", str(tmp_path / "bad"), *bad])
        assert e.value.code == 2 and message in capsys.readouterr().err
