"""Training: the optimiser, the three gradient sources, the scanned epoch, fit, resume, NaN stops."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from manualgrad import checkpoint, data, losses, nn, train
from tests.helpers import as_float64, assert_trees_close


def mlp():
    return nn.serial(nn.Linear(16), nn.ReLU(), nn.Linear(8), nn.Tanh(), nn.Linear(3))


def problem(n=96, d=5, seed=0, dtype=jnp.float64):
    model = mlp()
    _, params = model.init(jax.random.PRNGKey(seed), (-1, d))
    rng = np.random.default_rng(seed)
    x = jnp.asarray(rng.normal(size=(n, d)), dtype)
    y = jnp.asarray(rng.integers(0, 3, n), jnp.int32)
    return model, jax.tree_util.tree_map(lambda a: jnp.asarray(a, dtype), params), x, y


def copy(tree):
    return jax.tree_util.tree_map(jnp.array, tree)


@pytest.mark.parametrize("wd", [0.0, 0.01])
def test_sgd_with_clipping_is_clip_then_sgd(wd):
    """Against the update written out in NumPy: g <- g * min(1, max_norm / ||g||) + wd p, m <- g + mu m,
    update = -lr m (PyTorch's clip_grad_norm_ then SGD with momentum and weight_decay, without its 1e-6)."""
    lr, max_norm, mu = 0.1, 1.0, 0.9
    opt = train.sgd_with_clipping(lr, max_norm, momentum=mu, weight_decay=wd)
    params = {"a": jnp.asarray([1.0, -2.0, 0.5]), "b": jnp.full((2, 2), 3.0)}
    grads = [{"a": np.array([3.0, -4.0, 12.0]), "b": np.full((2, 2), 0.5)},
             {"a": np.array([0.1, 0.2, -0.1]), "b": np.full((2, 2), 0.05)}]
    state, m = opt.init(params), {"a": np.zeros(3), "b": np.zeros((2, 2))}
    for g in grads + grads:
        norm = np.sqrt(sum(np.sum(v * v) for v in g.values()))
        clipped = {k: v * min(1.0, max_norm / norm) + wd * np.asarray(params[k]) for k, v in g.items()}
        m = {k: clipped[k] + mu * m[k] for k in m}
        u, state = opt.update(jax.tree_util.tree_map(jnp.asarray, g), state, params)
        for k in m:
            np.testing.assert_allclose(np.asarray(u[k]), -lr * m[k], rtol=1e-12)


@pytest.mark.parametrize("scale", [1e-3, 1.0, 1e3, 1e8])
def test_update_norm_is_at_most_lr_times_max_norm(scale):
    lr, max_norm = 0.05, 2.0
    opt = train.sgd_with_clipping(lr, max_norm)
    params = {"w": jnp.zeros((4, 3)), "b": jnp.zeros(3)}
    rng = np.random.default_rng(0)
    g = {"w": jnp.asarray(rng.normal(size=(4, 3)) * scale), "b": jnp.asarray(rng.normal(size=3) * scale)}
    u, _ = opt.update(g, opt.init(params), params)
    norm, raw = float(optax.tree.norm(u)), float(optax.tree.norm(g))
    assert norm <= lr * max_norm * (1 + 1e-6)
    np.testing.assert_allclose(norm, lr * min(raw, max_norm), rtol=1e-6)


def test_update_norm_in_a_real_step():
    model, params, x, y = problem(dtype=jnp.float32)
    params = jax.tree_util.tree_map(lambda a: a * 30, params)  # huge logits: huge gradients
    lr, max_norm = 0.1, 0.5
    step = train.make_train_step(model, losses.softmax_cross_entropy, train.sgd_with_clipping(lr, max_norm))
    new, _, metrics = step(copy(params), train.sgd_with_clipping(lr, max_norm).init(params), (x, y))
    delta = jax.tree_util.tree_map(lambda a, b: a - b, new, params)
    assert float(metrics["grad_norm"]) > max_norm
    assert float(optax.tree.norm(delta)) <= lr * max_norm * (1 + 1e-5)


@pytest.mark.parametrize("bad", [dict(learning_rate=0.0), dict(max_norm=-1.0), dict(momentum=1.0), dict(weight_decay=-0.1)])
def test_sgd_with_clipping_rejects_bad_settings(bad):
    kw = dict(learning_rate=0.1, max_norm=1.0, momentum=0.0) | bad
    with pytest.raises(ValueError, match="sgd_with_clipping: " + next(iter(bad))):
        train.sgd_with_clipping(**kw)


def test_unknown_grad_mode_is_an_error():
    with pytest.raises(ValueError, match="grad must be one of"):
        train.make_train_step(mlp(), losses.mse, train.sgd_with_clipping(0.1, 1.0), grad="autograd")


@pytest.mark.parametrize("momentum", [0.0, 0.9])
def test_three_gradient_sources_give_equal_params_after_k_steps(momentum):
    model, params, x, y = problem()
    opt = train.sgd_with_clipping(0.5, 1.0, momentum)
    out = {}
    for grad in train.GRADS:
        step = train.make_train_step(model, losses.softmax_cross_entropy, opt, grad=grad)
        p, s = copy(params), opt.init(params)
        for k in range(6):
            p, s, metrics = step(p, s, (x[16 * k : 16 * k + 16], y[16 * k : 16 * k + 16]))
        out[grad] = p
    assert_trees_close(out["manual"], out["reference"])
    assert_trees_close(out["explicit"], out["reference"])
    assert not jax.tree_util.tree_all(jax.tree_util.tree_map(lambda a, b: bool(jnp.all(a == b)), out["manual"], params))


def test_train_step_donates_params_and_state():
    model, params, x, y = problem(dtype=jnp.float32)
    opt = train.sgd_with_clipping(0.1, 1.0, 0.9)
    step = train.make_train_step(model, losses.softmax_cross_entropy, opt)
    params_info, state_info, batch_info = step.lower(params, opt.init(params), (x, y)).args_info[0]
    assert all(a.donated for a in jax.tree_util.tree_leaves((params_info, state_info)))
    assert not any(a.donated for a in jax.tree_util.tree_leaves(batch_info))


def test_scanned_epoch_equals_a_python_loop_of_steps():
    model, params, x, y = problem(n=100)
    opt = train.sgd_with_clipping(0.3, 1.0, 0.9)
    key = jax.random.PRNGKey(7)
    epoch = train.make_epoch(model, losses.softmax_cross_entropy, opt, batch_size=16)
    p_scan, _, m_scan = epoch(copy(params), opt.init(params), x, y, key)

    step = train.make_train_step(model, losses.softmax_cross_entropy, opt)
    p, s, seen = copy(params), opt.init(params), []
    for idx in np.asarray(train.epoch_permutation(key, len(x), 16)):
        p, s, m = step(p, s, (x[idx], y[idx]))
        seen.append(float(m["loss"]))
    assert m_scan["loss"].shape == (100 // 16,)
    np.testing.assert_allclose(np.asarray(m_scan["loss"]), seen, rtol=1e-12)
    assert_trees_close(p_scan, p, rtol=1e-12, atol=1e-14)


def test_targets_sum_fingerprints_each_step_of_scanned_and_looped_epochs():
    """``metrics["targets_sum"]``: the float32 sum of the step's targets (the labels of the
    permutation's batch), the same in a scanned epoch, a looped one and single steps."""
    model, params, x, y = problem(n=100)
    opt = train.sgd_with_clipping(0.3, 1.0, 0.9)
    key = jax.random.PRNGKey(7)
    expected = [float(y[idx].sum()) for idx in np.asarray(train.epoch_permutation(key, len(x), 16))]
    assert len(set(expected)) > 1
    for scan in (True, False):
        epoch = train.make_epoch(model, losses.softmax_cross_entropy, opt, batch_size=16, scan=scan)
        _, _, m = epoch(copy(params), opt.init(params), x, y, key)
        assert m["targets_sum"].dtype == jnp.float32
        np.testing.assert_array_equal(np.asarray(m["targets_sum"]), expected)
    step = train.make_train_step(model, losses.softmax_cross_entropy, opt)
    _, _, m = step(copy(params), opt.init(params), (x[:16], y[:16]))
    assert float(m["targets_sum"]) == float(y[:16].sum())
    heads = (np.arange(4), np.full((4, 2), 0.5, np.float32))
    assert float(train.targets_sum(heads)) == 6.0 + 4.0
    assert train.targets_sum(()).dtype == jnp.float32 and float(train.targets_sum(())) == 0.0  # no targets


def test_epoch_permutation_drops_only_the_partial_batch_and_reshuffles():
    a = np.asarray(train.epoch_permutation(train.epoch_key(jax.random.PRNGKey(0), 1), 103, 10))
    b = np.asarray(train.epoch_permutation(train.epoch_key(jax.random.PRNGKey(0), 2), 103, 10))
    assert a.shape == b.shape == (10, 10)
    assert len(set(a.ravel())) == 100 and set(a.ravel()) <= set(range(103))
    assert not np.array_equal(a, b)


def test_epoch_compiles_once():
    model, params, x, y = problem(dtype=jnp.float32)
    opt = train.sgd_with_clipping(0.1, 1.0)
    epoch = train.make_epoch(model, losses.softmax_cross_entropy, opt, batch_size=32)
    p, s = copy(params), opt.init(params)
    for e in range(1, 4):
        p, s, _ = epoch(p, s, x, y, train.epoch_key(jax.random.PRNGKey(0), e))
    assert epoch.run._cache_size() == 1  # the scanned epoch's jitted run


def test_epoch_rejects_a_dataset_smaller_than_a_batch():
    model, params, x, y = problem(n=10)
    opt = train.sgd_with_clipping(0.1, 1.0)
    epoch = train.make_epoch(model, losses.softmax_cross_entropy, opt, batch_size=32)
    with pytest.raises(ValueError, match="10 examples make no batch of batch_size=32"):
        epoch(params, opt.init(params), x, y, jax.random.PRNGKey(0))


def test_evaluate_matches_numpy_whatever_the_chunking():
    model, params, x, y = problem(n=50)
    logits = np.asarray(model.apply(params, x))
    want = np.mean(np.argmax(logits, -1) == np.asarray(y))
    for batch_size in (7, 50, 1000):
        got = train.evaluate(model, params, x, y, losses.softmax_cross_entropy, metric="accuracy", batch_size=batch_size)
        np.testing.assert_allclose(got["accuracy"], want, rtol=1e-12)
        np.testing.assert_allclose(got["loss"], float(losses.softmax_cross_entropy(logits, y)), rtol=1e-10)
    reg = nn.serial(nn.Linear(1))
    _, rp = reg.init(jax.random.PRNGKey(1), (-1, 5))
    rp, t = as_float64(rp), jnp.asarray(np.random.default_rng(2).normal(size=(50, 1)))
    got = train.evaluate(reg, rp, x, t, losses.mse, metric="mse", batch_size=8)
    np.testing.assert_allclose(got["mse"], np.mean((np.asarray(reg.apply(rp, x)) - np.asarray(t)) ** 2), rtol=1e-10)


def dataset(n=96, seed=0, dtype=jnp.float32):
    _, _, x, y = problem(n=n, seed=seed, dtype=dtype)
    _, _, xt, yt = problem(n=40, seed=seed + 1, dtype=dtype)
    return data.Dataset("toy", np.asarray(x), np.asarray(y), np.asarray(xt), np.asarray(yt))


def optimizer():
    return train.sgd_with_clipping(optax.cosine_decay_schedule(0.3, 18), 1.0, 0.9)


def fit(ds, params, epochs, **kw):
    return train.fit(
        mlp(), losses.softmax_cross_entropy, optimizer(),
        params, ds, epochs=epochs, batch_size=16, key=jax.random.PRNGKey(3), **kw,
    )


def without_timing(history):
    return [{k: v for k, v in e.items() if k != "seconds"} for e in history]


def test_fit_resumed_is_bit_identical_to_uninterrupted(tmp_path):
    model, params, _, _ = problem(dtype=jnp.float32)
    ds = dataset()
    full = fit(ds, params, 3)
    fit(ds, params, 1, checkpoint_path=tmp_path / "ck.npz")
    resumed = fit(ds, params, 3, checkpoint_path=tmp_path / "ck.npz", resume=True)
    for a, b in zip(jax.tree_util.tree_leaves(full.params), jax.tree_util.tree_leaves(resumed.params)):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    assert without_timing(full.epochs) == without_timing(resumed.epochs)
    assert [e["epoch"] for e in resumed.epochs] == [1, 2, 3]


def test_fit_config_round_trips_through_the_checkpoint_or_is_refused(tmp_path):
    _, params, _, _ = problem(dtype=jnp.float32)
    ds, path = dataset(), tmp_path / "ck.npz"
    fit(ds, params, 1, checkpoint_path=path, config={"hidden": (4,), "lr": 0.3})
    # a tuple comes back from the JSON header as a list: still the same settings
    assert len(fit(ds, params, 2, checkpoint_path=path, resume=True, config={"hidden": (4,), "lr": 0.3}).epochs) == 2
    with pytest.raises(ValueError, match=r"train.fit: config must hold JSON values only .*float32"):
        fit(ds, params, 1, checkpoint_path=tmp_path / "other.npz", config={"lr": np.float32(0.3)})
    assert not (tmp_path / "other.npz").exists()  # refused before training


def test_fit_leaves_the_callers_params_usable():
    _, params, _, _ = problem(dtype=jnp.float32)
    fit(dataset(), params, 1)
    assert all(np.isfinite(np.asarray(a)).all() for a in jax.tree_util.tree_leaves(params))


def test_non_finite_input_stops_training_naming_epoch_and_step_and_keeps_the_checkpoint(tmp_path):
    _, params, _, _ = problem(dtype=jnp.float32)
    ds = dataset()
    path = tmp_path / "ck.npz"
    good = fit(ds, params, 1, checkpoint_path=path)
    bad_x = ds.x_train.copy()
    bad_x[:] = np.nan  # every batch of epoch 2 sees NaN: the first step fails
    bad = data.Dataset("toy", bad_x, ds.y_train, ds.x_test, ds.y_test)
    with pytest.raises(train.NonFiniteError, match=r"epoch 2, step 1: loss=nan"):
        fit(bad, params, 3, checkpoint_path=path, resume=True)
    (restored, _, _), meta = checkpoint.load(path, (params, optimizer().init(params), good.state))
    assert len(meta["history"]) == 1
    for a, b in zip(jax.tree_util.tree_leaves(restored), jax.tree_util.tree_leaves(good.params)):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


def test_check_finite_names_the_first_bad_step():
    metrics = {"loss": np.array([1.0, 0.5, np.inf, np.nan]), "grad_norm": np.array([1.0, np.nan, 1.0, 1.0])}
    with pytest.raises(train.NonFiniteError, match="epoch 4, step 2: loss=0.5, gradient norm=nan"):
        train.check_finite(metrics, epoch=4)
    train.check_finite({"loss": np.ones(3), "grad_norm": np.ones(3)}, epoch=1)


def two_head_problem(n=96, seed=0):
    """The README's showcase: a shared trunk, a classification head and a regression head."""
    model = nn.serial(nn.Linear(16), nn.ReLU(), nn.fanout(nn.Linear(3), nn.serial(nn.Linear(8), nn.Tanh(), nn.Linear(2))))
    loss = losses.multitask(losses.softmax_cross_entropy, losses.mse)
    _, params = model.init(jax.random.PRNGKey(seed), (-1, 5))
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, 5)).astype(np.float32)
    labels = (x[:, 0] > 0).astype(np.int32) + (x[:, 1] > 0.5)
    reg = np.stack([x[:, 2] * x[:, 3], np.sin(x[:, 4])], 1).astype(np.float32)
    return model, loss, params, x, (labels.astype(np.int32), reg)


def test_two_head_model_trains_through_fit_with_per_head_metrics(tmp_path):
    model, loss, params, x, y = two_head_problem(n=160)
    ds = data.Dataset("two-heads", x[:128], tuple(t[:128] for t in y), x[128:], tuple(t[128:] for t in y))
    opt = train.sgd_with_clipping(0.1, 5.0, 0.9)
    kw = dict(epochs=3, batch_size=16, key=jax.random.PRNGKey(0), metric=("accuracy", "mse"))
    history = train.fit(model, loss, opt, params, ds, checkpoint_path=tmp_path / "ck.npz", **kw)
    last = history.epochs[-1]
    assert {"test_loss", "test_head0_loss", "test_head1_loss", "test_head0_accuracy", "test_head1_mse"} <= set(last)
    np.testing.assert_allclose(last["test_head0_loss"] + last["test_head1_loss"], last["test_loss"], rtol=1e-5)
    assert history.epochs[-1]["train_loss"] < history.epochs[0]["train_loss"]
    assert len(history.step_losses) == 3 and all(len(s) == 128 // 16 for s in history.step_losses)
    # per-head metrics equal a direct computation with the final params
    logits, reg = model.apply(history.params, jnp.asarray(x[128:]))
    np.testing.assert_allclose(last["test_head0_accuracy"], np.mean(np.argmax(logits, -1) == y[0][128:]), rtol=1e-6)
    np.testing.assert_allclose(last["test_head1_mse"], np.mean((np.asarray(reg) - y[1][128:]) ** 2), rtol=1e-5)
    resumed = train.fit(model, loss, opt, params, ds, checkpoint_path=tmp_path / "ck.npz", resume=True, **kw)
    assert resumed.step_losses == history.step_losses


@pytest.mark.parametrize("grad", train.GRADS)
def test_two_head_epoch_equals_steps_over_data_batches(grad):
    model, loss, params, x, y = two_head_problem()
    opt = train.sgd_with_clipping(0.1, 1.0)
    epoch = train.make_epoch(model, loss, opt, batch_size=32, grad=grad)
    p_scan, _, m = epoch(copy(params), opt.init(params), jnp.asarray(x), jax.tree_util.tree_map(jnp.asarray, y), jax.random.PRNGKey(2))
    assert m["loss"].shape == (3,)
    step = train.make_train_step(model, loss, opt, grad=grad)
    p, s = copy(params), opt.init(params)
    for idx in np.asarray(train.epoch_permutation(jax.random.PRNGKey(2), len(x), 32)):
        p, s, _ = step(p, s, (x[idx], (y[0][idx], y[1][idx])))
    assert_trees_close(p_scan, p, rtol=1e-5, atol=1e-6)
    batches = list(data.Batches(x, y, batch_size=40, seed=0))
    assert [b[0].shape[0] for b in batches] == [40, 40, 16]
    assert all(isinstance(b[1], tuple) and b[1][0].shape == (len(b[0]),) and b[1][1].shape == (len(b[0]), 2) for b in batches)


def test_mismatched_example_counts_name_every_array():
    x, y = np.zeros((64, 3)), (np.zeros(64), np.zeros(2))
    with pytest.raises(ValueError, match=r"Batches: every array needs the same number of examples.*y\[1\] has 2"):
        data.Batches(x, y, batch_size=8)


@pytest.mark.parametrize(
    "loss, metric, target",
    [
        (losses.binary_cross_entropy_with_logits, "binary_accuracy", "binary"),
        (losses.softmax_cross_entropy, "accuracy", "onehot"),
        (losses.softmax_cross_entropy, "accuracy", "probabilities"),
        (losses.mse, "mse", "regression"),
    ],
)
def test_evaluate_takes_its_metric_explicitly(loss, metric, target):
    model = nn.serial(nn.Linear(4))
    _, params = model.init(jax.random.PRNGKey(0), (-1, 3))
    rng = np.random.default_rng(0)
    x = jnp.asarray(rng.normal(size=(30, 3)), jnp.float32)
    logits = np.asarray(model.apply(params, x))
    y = {
        "binary": rng.integers(0, 2, (30, 4)).astype(np.float32),
        "onehot": np.eye(4, dtype=np.float32)[rng.integers(0, 4, 30)],
        "probabilities": rng.dirichlet(np.ones(4), 30).astype(np.float32),
        "regression": rng.normal(size=(30, 4)).astype(np.float32),
    }[target]
    got = train.evaluate(model, params, x, y, loss, metric=metric, batch_size=7)
    want = {
        "binary": np.mean((logits > 0) == (y > 0.5)),
        "onehot": np.mean(np.argmax(logits, -1) == np.argmax(y, -1)),
        "probabilities": np.mean(np.argmax(logits, -1) == np.argmax(y, -1)),
        "regression": np.mean((logits - y) ** 2),
    }[target]
    assert set(got) == {"loss", metric}
    np.testing.assert_allclose(got[metric], want, rtol=1e-6)
    np.testing.assert_allclose(got["loss"], float(loss(jnp.asarray(logits), jnp.asarray(y))), rtol=1e-5)
    assert set(train.evaluate(model, params, x, y, loss)) == {"loss"}  # no metric named: the loss alone
    with pytest.raises(ValueError, match="metric must be one of"):
        train.evaluate(model, params, x, y, loss, metric="auc")


def test_explicit_pass_takes_a_partial_of_an_op_and_explains_a_plain_function():
    import functools

    from manualgrad import backprop

    model = nn.serial(nn.Linear(3), nn.LogSoftmax())
    _, params = model.init(jax.random.PRNGKey(0), (-1, 2))
    x, t = jnp.ones((4, 2), jnp.float32), jnp.zeros((4, 3), jnp.float32)
    scaled = losses.scaled(losses.mse, 2.0)
    value, grads = backprop.value_and_grad(model, functools.partial(scaled))(params, x, t)
    manual = jax.grad(lambda p: scaled(model.apply(p, x), t))(params)
    assert_trees_close(grads, manual, rtol=1e-6, atol=1e-7)
    with pytest.raises(TypeError, match=r"loss must be a manualgrad op .* got <function .*make it an op with manualgrad.defop, or use grad='manual'"):
        train.make_train_step(model, lambda p, t: losses.mse(p, t), train.sgd_with_clipping(0.1, 1.0), grad="explicit")
    with pytest.raises(TypeError, match=r"fixes \['target'\], which are not static params"):
        backprop.value_and_grad(model, functools.partial(losses.mse, target=t))
