"""The layer registry walked as the op registry is: every layer in ``nn.LAYERS``, in training and
evaluation mode, with state and a key.

For each layer: ``init``'s and ``init_state``'s output shape is ``apply``'s; the layer's own
``fwd``/``bwd`` (the explicit pass) equal ``jax.vjp`` of its ``apply`` run on the plain
reference forwards, for params and input, under ``jit`` and eagerly under ``vmap``, in float64
and (with x64 off) in float32. Then dropout's and batch norm's semantics.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from manualgrad import losses, nn, reference_mode, train
from tests.helpers import assert_trees_close

NAMES = sorted(nn.LAYERS)
KEY = jax.random.key(7)


def setup(name, dtype):
    layer, shape, ids = nn.LAYERS[name]
    layer = layer()
    out_shape, params = layer.init(jax.random.key(0), shape)
    state_shape, state = layer.init_state(shape)
    cast = lambda t: jax.tree_util.tree_map(lambda a: jnp.asarray(a, dtype), t)
    if ids:  # token ids: no cotangent, compared as x_bar None
        return layer, out_shape, state_shape, cast(params), cast(state), jax.random.randint(jax.random.key(1), shape, 0, ids)
    x = jax.random.normal(jax.random.key(1), shape, jnp.float32)
    return layer, out_shape, state_shape, cast(params), cast(state), cast(x)


def explicit_and_reference(layer, params, state, x, train_mode, transform=lambda f: f, jit_explicit=True):
    """(y, new_state, grads) from the layer's fwd/bwd, and from jax.vjp of apply on the references,
    each under ``transform`` and jitted (the reference mode is part of jit's cache key), the
    explicit side eagerly when ``jit_explicit`` is False."""

    def cotangent(y):
        return jax.tree_util.tree_map(lambda a: jax.random.normal(jax.random.key(2), a.shape, a.dtype), y)

    def explicit(params, x):
        y, new_state, res = layer.fwd(params, x, state=state, key=KEY, train=train_mode)
        return y, new_state, layer.bwd(res, cotangent(y))

    def reference(params, x):
        with reference_mode():
            if jnp.issubdtype(x.dtype, jnp.integer):  # ids: params only
                (y, new_state), vjp = jax.vjp(lambda p: layer.apply(p, x, state=state, key=KEY, train=train_mode), params)
                return y, new_state, (*vjp((cotangent(y), jax.tree_util.tree_map(jnp.zeros_like, new_state))), None)
            (y, new_state), vjp = jax.vjp(lambda p, x: layer.apply(p, x, state=state, key=KEY, train=train_mode), params, x)
            return y, new_state, vjp((cotangent(y), jax.tree_util.tree_map(jnp.zeros_like, new_state)))

    explicit = transform(explicit)
    return (jax.jit(explicit) if jit_explicit else explicit)(params, x), jax.jit(transform(reference))(params, x)


COMPOSITES = {"serial-cnn", "fanout-heads", "TransformerLM"}  # made of registered layers, each checked alone
# evaluation differs from training only for these (the others ignore the switch): checked in both
MODE_DEPENDENT = {
    "BatchNorm", "BatchNorm-dense", "Dropout", "RandomFlip", "RandomShift", "TransformerBlock", "serial-cnn", "fanout-heads"
}
CASES = [(n, True) for n in NAMES] + [(n, False) for n in NAMES if n in MODE_DEPENDENT]


@pytest.mark.parametrize("name, train_mode", CASES, ids=[f"{n}-{'train' if t else 'eval'}" for n, t in CASES])
def test_layer_shapes_and_backward_equal_vjp_of_apply(name, train_mode):
    with jax.enable_x64(True):
        layer, out_shape, state_shape, params, state, x = setup(name, jnp.float64)
        assert state_shape == out_shape
        (y, new_state, grads), (y_ref, state_ref, ref_grads) = explicit_and_reference(layer, params, state, x, train_mode)
        got_shape = jax.tree_util.tree_map(lambda a: a.shape, y)
        assert got_shape == out_shape, f"{name}: init says {out_shape}, apply gives {got_shape}"
        assert_trees_close(y, y_ref)
        assert_trees_close(new_state, state_ref)
        assert_trees_close(grads, ref_grads)
        if train_mode and jax.tree_util.tree_leaves(state):  # training needs no state: the same output without it
            assert_trees_close(jax.jit(lambda p, x: layer.apply(p, x, key=KEY, train=True))(params, x), y)


@pytest.mark.parametrize("name", [n for n in NAMES if n not in COMPOSITES])
def test_layer_backward_eagerly_under_vmap(name):
    """The same comparison with the explicit pass run op by op (no jit) under ``vmap`` over a
    batch of two inputs (the second the first reversed), params shared; the reference side is
    ``jit(vmap(...))``."""
    with jax.enable_x64(True):
        layer, _, _, params, state, x = setup(name, jnp.float64)
        x2 = jnp.stack([x, jnp.flip(x, axis=tuple(range(x.ndim)))])
        got, want = explicit_and_reference(layer, params, state, x2, True,
                                           transform=lambda f: jax.vmap(f, in_axes=(None, 0)), jit_explicit=False)
        assert_trees_close(got, want)


# one registered op each (``nn.from_op``), whose float32 VJP tests/test_ops.py checks
ONE_OP = {"Identity", "ReLU", "LeakyReLU", "ScaledReLU", "Sigmoid", "Tanh", "Softplus", "GELU", "Square", "Softmax",
          "LogSoftmax", "Flatten"}


@pytest.mark.parametrize("name", [n for n in NAMES if n not in COMPOSITES | ONE_OP])
def test_layer_backward_in_float32_with_x64_off(name):
    with jax.enable_x64(False):
        layer, _, _, params, state, x = setup(name, jnp.float32)
        (_, _, grads), (_, _, ref_grads) = explicit_and_reference(layer, params, state, x, True)
        for a, b in zip(jax.tree_util.tree_leaves(grads), jax.tree_util.tree_leaves(ref_grads)):
            assert a.dtype == jnp.float32
            np.testing.assert_allclose(a, b, rtol=2e-5, atol=2e-5)


def test_every_layer_of_nn_is_in_the_registry():
    assert MODE_DEPENDENT <= set(NAMES)
    made = {nn.LAYERS[n].make().__class__ for n in NAMES}  # all Layer tuples
    assert made == {nn.Layer}
    constructors = {n for n in nn.__all__ if n[0].isupper() and n not in ("Layer", "LAYERS", "LayerExample")}
    covered = {n.split("-")[0] for n in NAMES}
    assert constructors <= covered, f"layers missing from nn.LAYERS: {sorted(constructors - covered)}"


# -- dropout ----------------------------------------------------------------------------------
def test_dropout_masks_come_from_the_key():
    layer = nn.Dropout(0.5)
    x = jnp.ones((4, 1000), jnp.float32)
    a = layer.apply((), x, key=jax.random.key(1), train=True)
    b = layer.apply((), x, key=jax.random.key(1), train=True)
    c = layer.apply((), x, key=jax.random.key(2), train=True)
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, c)
    keep = jax.random.bernoulli(jax.random.key(1), 0.5, x.shape)
    np.testing.assert_array_equal(a, jnp.where(keep, 2.0, 0.0))
    np.testing.assert_array_equal(layer.apply((), x), x)  # evaluation: the identity
    assert abs(float(jnp.mean(a)) - 1.0) < 0.05  # inverted dropout keeps the mean


def test_dropout_in_training_without_a_key_says_how_to_pass_one():
    with pytest.raises(ValueError, match=r"manualgrad.nn.Dropout\(0.5\).*needs a key: pass key="):
        nn.Dropout(0.5).apply((), jnp.ones((2, 3)), train=True)
    with pytest.raises(ValueError, match="rate must be in"):
        nn.Dropout(1.0)


def test_containers_give_each_child_its_own_key():
    model = nn.serial(nn.Dropout(0.5), nn.Dropout(0.5))
    y = model.apply(((), ()), jnp.ones((1, 2000), jnp.float32), key=jax.random.key(3), train=True)
    first = jax.random.bernoulli(jax.random.fold_in(jax.random.key(3), 0), 0.5, (1, 2000))
    second = jax.random.bernoulli(jax.random.fold_in(jax.random.key(3), 1), 0.5, (1, 2000))
    np.testing.assert_array_equal(y, jnp.where(first & second, 4.0, 0.0))


# -- augmentation -----------------------------------------------------------------------------
def test_random_flip_mirrors_the_examples_its_key_picks():
    x = jax.random.normal(jax.random.key(0), (64, 3, 5, 2), jnp.float32)
    y = nn.RandomFlip().apply((), x, key=jax.random.key(4), train=True)
    flip = np.asarray(jax.random.bernoulli(jax.random.key(4), 0.5, (64, 1, 1, 1)))[:, 0, 0, 0]
    assert 10 < flip.sum() < 54  # both outcomes occur
    np.testing.assert_array_equal(y[flip], np.asarray(x)[flip][:, :, ::-1])
    np.testing.assert_array_equal(y[~flip], np.asarray(x)[~flip])
    np.testing.assert_array_equal(nn.RandomFlip().apply((), x), x)  # evaluation: the identity
    np.testing.assert_array_equal(nn.RandomFlip(0.0).apply((), x, train=True), x)  # off: no key needed


def test_random_shift_translates_each_image_with_zero_fill():
    pad, x = 2, np.arange(1.0, 1 + 40 * 6 * 7).reshape(40, 6, 7, 1).astype(np.float32)
    y = np.asarray(nn.RandomShift(pad).apply((), jnp.asarray(x), key=jax.random.key(5), train=True))
    offsets = np.asarray(jax.random.randint(jax.random.key(5), (40, 2), 0, 2 * pad + 1))
    assert len({tuple(o) for o in offsets}) > 10  # many different shifts
    for n, (oy, ox) in enumerate(offsets):
        want = np.zeros((6 + 2 * pad, 7 + 2 * pad, 1), np.float32)
        want[pad : pad + 6, pad : pad + 7] = x[n]
        np.testing.assert_array_equal(y[n], want[oy : oy + 6, ox : ox + 7])  # written out in NumPy
    np.testing.assert_array_equal(nn.RandomShift(pad).apply((), jnp.asarray(x)), x)


def test_augmentation_needs_a_key_and_images():
    with pytest.raises(ValueError, match=r"manualgrad.nn.RandomFlip\(0.5\).*needs a key: pass key="):
        nn.RandomFlip().apply((), jnp.ones((2, 3, 3, 1)), train=True)
    with pytest.raises(ValueError, match=r"RandomShift\(1\): x has shape \(2, 9\): augmentation takes NHWC"):
        nn.RandomShift(1).apply((), jnp.ones((2, 9)), key=KEY, train=True)
    with pytest.raises(ValueError, match=r"RandomFlip\(0.5\): x has shape \(2, 9\)"):  # found at init, not at step 1
        nn.serial(nn.RandomFlip(), nn.Linear(3)).init(KEY, (2, 9))
    with pytest.raises(ValueError, match="pad must be an integer >= 0, got -1"):
        nn.RandomShift(-1)
    with pytest.raises(ValueError, match=r"p must be a probability in \[0, 1\], got 2"):
        nn.RandomFlip(2)
    assert nn.RandomShift(np.int64(2)).init(KEY, (1, 4, 4, 1))[0] == (1, 4, 4, 1)  # numpy scalars are numbers too


# -- batch norm -------------------------------------------------------------------------------
def test_batch_norm_running_statistics_follow_the_formula():
    momentum, k = 0.2, 3
    layer = nn.BatchNorm(momentum=momentum)
    _, params = layer.init(jax.random.key(0), (8, 3))
    _, state = layer.init_state((8, 3))
    xs = [jax.random.normal(jax.random.key(i), (8, 3), jnp.float32) * (i + 1) + i for i in range(k)]
    mean, var = np.zeros(3), np.ones(3)
    for x in xs:
        _, state = layer.apply(params, x, state=state, train=True)
        xn = np.asarray(x, np.float64)
        mean = (1 - momentum) * mean + momentum * xn.mean(0)
        var = (1 - momentum) * var + momentum * xn.var(0, ddof=1)  # unbiased, as torch
    np.testing.assert_allclose(state["mean"], mean, rtol=1e-5)
    np.testing.assert_allclose(state["var"], var, rtol=1e-5)
    # evaluation normalises with them and leaves them alone
    y, same = layer.apply(params, xs[0], state=state)
    np.testing.assert_allclose(y, (np.asarray(xs[0]) - mean) / np.sqrt(var + 1e-5), rtol=1e-4, atol=1e-5)
    assert_trees_close(same, state)


def test_batch_norm_evaluation_needs_state_and_a_batch_of_one_stays_finite():
    layer = nn.BatchNorm()
    _, params = layer.init(jax.random.key(0), (1, 4))
    with pytest.raises(ValueError, match=r"manualgrad.nn.BatchNorm.*needs the layer's state: pass state="):
        layer.apply(params, jnp.ones((1, 4)))
    y = layer.apply(params, jnp.arange(4.0, dtype=jnp.float32)[None], train=True)
    np.testing.assert_array_equal(y, np.zeros((1, 4)))  # beta


def test_state_travels_through_the_scanned_epoch_and_fit():
    model = nn.serial(nn.Linear(4), nn.BatchNorm(), nn.ReLU(), nn.Dropout(0.2), nn.Linear(2))
    _, params = model.init(jax.random.key(0), (1, 3))
    _, state = model.init_state((8, 3))
    rng = np.random.default_rng(0)
    x = rng.normal(size=(32, 3)).astype(np.float32)
    y = rng.integers(0, 2, 32).astype(np.int32)
    opt = train.sgd_with_clipping(0.1, 5.0)
    epoch = train.make_epoch(model, losses.softmax_cross_entropy, opt, 8)
    copy = lambda t: jax.tree_util.tree_map(jnp.copy, t)  # the epoch donates its inputs
    p, s, metrics, new_state = epoch(copy(params), opt.init(params), x, y, jax.random.key(1), copy(state))
    assert metrics["loss"].shape == (4,)
    assert not np.allclose(new_state[1]["mean"], 0.0)  # the running mean moved
    # the same four steps by hand with the documented keys
    p2, s2, st = params, opt.init(params), state
    batches = train.epoch_permutation(jax.random.key(1), 32, 8)
    update = train.make_update(model, losses.softmax_cross_entropy, opt)
    for i in range(4):
        p2, s2, _, st = update(p2, s2, x[batches[i]], y[batches[i]], state=st, key=train.step_key(jax.random.key(1), i))
    assert_trees_close(p, p2, rtol=1e-5, atol=1e-6)
    assert_trees_close(new_state, st, rtol=1e-5, atol=1e-6)


def test_check_model_verifies_a_cnn_with_batch_norm_and_dropout():
    from manualgrad import check

    layer, shape, _ = nn.LAYERS["serial-cnn"]
    model = layer()
    _, params = model.init(jax.random.key(0), shape)
    _, state = model.init_state(shape)
    x = jax.random.normal(jax.random.key(1), shape, jnp.float32)
    y = jnp.array([1, 3], jnp.int32)
    report = check.check_model(model, losses.softmax_cross_entropy, params, x, y, state=state, key=KEY,
                               dtypes=(jnp.float64,))
    report.assert_ok()
    assert len(report.layers) == 1 + 7  # the loss, then every layer


def test_the_three_gradient_sources_train_a_regularised_cnn_alike():
    """fit with batch norm and dropout: manual, explicit and reference give the same step losses."""
    from manualgrad import data

    model = nn.serial(nn.Conv2D(4, 3, padding="SAME"), nn.BatchNorm(), nn.ReLU(), nn.MaxPool2D(2),
                      nn.Flatten(), nn.Dropout(0.3), nn.Linear(3))
    rng = np.random.default_rng(0)
    x = rng.normal(size=(48, 6, 6, 1)).astype(np.float32)
    y = rng.integers(0, 3, 48).astype(np.int32)
    ds = data.Dataset("toy", x, y, x[:16], y[:16])
    _, params = model.init(jax.random.key(0), (1, 6, 6, 1))
    runs = {
        g: train.fit(model, losses.softmax_cross_entropy, train.sgd_with_clipping(0.05, 5.0, 0.9), params, ds,
                     epochs=2, batch_size=16, key=jax.random.key(1), grad=g, metric="accuracy")
        for g in train.GRADS
    }
    for g in ("explicit", "reference"):
        np.testing.assert_allclose(runs[g].step_losses, runs["manual"].step_losses, rtol=1e-4)
        assert_trees_close(runs[g].state, runs["manual"].state, rtol=1e-4, atol=1e-5)


def test_the_loop_epoch_equals_the_scanned_epoch():
    """make_epoch(scan=False) (the CNN-on-CPU form) runs the same steps with the same keys."""
    model = nn.serial(nn.Conv2D(3, 3), nn.BatchNorm(), nn.ReLU(), nn.Flatten(), nn.Dropout(0.3), nn.Linear(2))
    _, params = model.init(jax.random.key(0), (1, 5, 5, 1))
    _, state = model.init_state((1, 5, 5, 1))
    rng = np.random.default_rng(0)
    x = jnp.asarray(rng.normal(size=(40, 5, 5, 1)), jnp.float32)
    y = jnp.asarray(rng.integers(0, 2, 40), jnp.int32)
    opt = train.sgd_with_clipping(0.1, 5.0, 0.9)
    copy = lambda t: jax.tree_util.tree_map(jnp.copy, t)
    out = {}
    for scan in (True, False):
        epoch = train.make_epoch(model, losses.softmax_cross_entropy, opt, 16, scan=scan)
        epoch = epoch.lower(params, opt.init(params), x, y, KEY, state).compile()
        out[scan] = epoch(copy(params), opt.init(params), x, y, KEY, copy(state))
    assert out[False][2]["loss"].shape == (2,)
    assert_trees_close(out[False], out[True], rtol=1e-5, atol=1e-6)


def test_resume_with_state_is_bit_identical(tmp_path):
    """Batch-norm statistics and dropout keys survive a checkpoint: 1 epoch + resume to 2 == 2 epochs."""
    from manualgrad import data

    model = nn.serial(nn.Linear(4), nn.BatchNorm(), nn.ReLU(), nn.Dropout(0.3), nn.Linear(2))
    rng = np.random.default_rng(0)
    x = rng.normal(size=(32, 3)).astype(np.float32)
    y = rng.integers(0, 2, 32).astype(np.int32)
    ds = data.Dataset("toy", x, y, x[:8], y[:8])
    _, params = model.init(jax.random.key(0), (1, 3))

    def fit(epochs, path, resume=False):
        return train.fit(model, losses.softmax_cross_entropy, train.sgd_with_clipping(0.1, 5.0, 0.9), params, ds,
                         epochs=epochs, batch_size=8, key=jax.random.key(1), metric="accuracy",
                         checkpoint_path=path, resume=resume)

    straight = fit(2, tmp_path / "a.npz")
    fit(1, tmp_path / "b.npz")
    resumed = fit(2, tmp_path / "b.npz", resume=True)
    for a, b in zip(jax.tree_util.tree_leaves((straight.params, straight.state)),
                    jax.tree_util.tree_leaves((resumed.params, resumed.state))):
        np.testing.assert_array_equal(a, b)
    assert straight.step_losses == resumed.step_losses
