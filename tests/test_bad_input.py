"""Bad arguments to the public API, each refused with the function's name, the argument and
what it got, before any computation (never a deep JAX trace, never a silent wrong answer)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from manualgrad import data, losses, nn, ops, train

KEY = jax.random.PRNGKey(0)


def _fit(key):
    model = nn.Linear(2)
    _, params = model.init(KEY, (4, 3))
    x = np.zeros((8, 3), np.float32)
    ds = data.Dataset("toy", x, np.zeros((8, 2), np.float32), x, np.zeros((8, 2), np.float32))
    return train.fit(model, losses.mse, train.sgd_with_clipping(0.1, 1.0), params, ds, epochs=1, batch_size=4, key=key)


def _step(*batch):
    model = nn.Linear(2)
    _, params = model.init(KEY, (4, 3))
    opt = train.sgd_with_clipping(0.1, 1.0)
    return train.make_train_step(model, losses.mse, opt)(params, opt.init(params), *batch)


X, Y = jnp.zeros((4, 3)), jnp.zeros((4, 2))
q32, q64 = np.zeros((1, 4, 2), np.float32), np.zeros((1, 4, 2), np.float64)
CASES = {
    # PyTorch spells the forms "none" and "tanh": a string would otherwise count as True
    "gelu-approximate-string": (lambda: ops.gelu(X, approximate="none"),
                                r"ops.gelu: approximate='none' must be True \(the tanh form"),
    "GELU-layer-approximate-string": (lambda: nn.GELU(approximate="tanh").apply((), X), r"nn.GELU.*approximate='tanh'"),
    # step(params, opt_state, x, y) instead of step(params, opt_state, (x, y)): y would be taken for the state
    "step-batch-not-a-pair": (lambda: _step(X, Y), r"train.step: batch must be the pair \(x, y\), got batch.shape=\(4, 3\)"),
    "step-batch-of-three": (lambda: _step((X, Y, Y)), r"train.step: batch must be the pair \(x, y\), got a tuple of 3"),
    "epoch_permutation-batch-0": (lambda: train.epoch_permutation(KEY, 10, 0),
                                  r"train.epoch_permutation: batch_size must be a positive integer, got 0"),
    "epoch_permutation-batch-too-big": (lambda: train.epoch_permutation(KEY, 10, 20),
                                        r"train.epoch_permutation: n=10 examples make no batch of batch_size=20"),
    "make_epoch-batch-float": (lambda: train.make_epoch(nn.Linear(2), losses.mse, train.sgd_with_clipping(0.1, 1.0), 2.5),
                               r"train.make_epoch: batch_size must be a positive integer, got 2.5"),
    "Batches-batch-bool": (lambda: data.Batches(np.zeros((4, 1)), np.zeros(4), True),
                           r"data.Batches: batch_size must be a positive integer, got True"),
    "bce-names-its-arguments": (lambda: losses.binary_cross_entropy_with_logits(jnp.ones((4, 1)), jnp.ones(4)),
                                r"logits.shape=\(4, 1\) .* and targets.shape=\(4,\) .* differ"),
    "attention-scale-string": (lambda: ops.attention(q32, q32, q32, scale="a"),
                               r"ops.attention: scale='a' must be a real number"),
    "attention-mixed-dtypes": (lambda: ops.attention(q32, q64, q32),
                               r"ops.attention: q, k and v must share one dtype, got q float32, k float64, v float32"),
    "lm-loss-mixed-dtypes": (lambda: losses.linear_softmax_cross_entropy(
                                 np.zeros((2, 3), np.float32), np.zeros((3, 4), np.float64), np.zeros(4, np.float32),
                                 np.zeros(2, np.int32)),
                             r"linear_softmax_cross_entropy: x, w and b must share one dtype, got x float32, w float64"),
    "scaled-factor-string": (lambda: losses.scaled(losses.mse, "a"), r"losses.scaled: factor='a' must be a real number"),
    "multitask-count": (lambda: losses.multitask(losses.mse, losses.mse)((X,), (X, X)),
                        r"preds must be a tuple with one entry per loss \(2\), got a tuple of 1"),
    "fit-key-int": (lambda: _fit(3), r"train.fit: key=3: key must be one PRNG key"),
    # containers zipped params with their children: a short tuple ran a cut-down network
    "serial-params-short": (lambda: _serial_params(slice(0, 2)),
                            r"nn.serial: params must be a tuple with one entry per child \(3\), as init returns "
                            r"it; got tuple of length 2"),
    "serial-params-long": (lambda: _serial_params(slice(None), extra=((),)), r"got tuple of length 4"),
    "fanout-y_bar-short": (lambda: _fanout_bwd_short(), r"nn.fanout\(2\): y_bar must be a tuple with one entry per child"),
    "Conv2D-kernel-of-three": (lambda: nn.Conv2D(3, (3, 3, 3)),
                               r"nn.Conv2D\(3, \(3, 3, 3\)\): kernel_size=\(3, 3, 3\) must be an int or a pair"),
    "PositionalEmbedding-init-too-long": (lambda: nn.PositionalEmbedding(8).init(KEY, (2, 20, 6)),
                                          r"input_shape=\(2, 20, 6\) has a context of T=20 positions, longer than "
                                          r"the position table \(max_len=8\)"),
    "LSTM-input-of-three": (lambda: _lstm(lambda x: [x, jnp.array([5, 2]), 1]),
                            r"nn.LSTM\(3\): the input must be x, .* or the pair \(x, lengths\); got a list of 3"),
    "BatchNorm-state-of-a-stateless-layer": (lambda: _batch_norm(()), r"nn.BatchNorm\(momentum=0.1\): state must be "
                                             r"the running statistics \{'mean', 'var'\} that init_state returns"),
    "BatchNorm-eps-negative": (lambda: nn.BatchNorm(eps=-1.0), r"nn.BatchNorm\(momentum=0.1\): eps must be positive"),
    "GRU-bidirectional-params": (lambda: _gru(True, False), r"nn.GRU\(3\): params must be the dict init returns, keys "
                                                          r"\['bh', 'bx', 'wh', 'wx'\], for bidirectional=False; got "
                                                          r"\['forward', 'reverse'\]"),
    "GRU-one-direction-params": (lambda: _gru(False, True), r"keys \['forward', 'reverse'\] \(each a dict of"),
    "LSTM-init-lengths-shape": (lambda: nn.LSTM(3).init(KEY, ((2, 5, 6), (3,))),
                                r"nn.LSTM\(3\): input_shape=.*the lengths must be \(N,\)=\(2,\)"),
    # a layer without state passed another model's state through, as if it had used it
    "stateless-layer-given-a-state": (lambda: _stateless_given({"mean": jnp.zeros(3), "var": jnp.ones(3)}),
                                      r"nn.Linear\(2\): this layer has no state \(init_state gives it \(\)\), but "
                                      r"it was given a state with 2 array\(s\): state shapes \{'mean': \(3,\), "
                                      r"'var': \(3,\)\}; was it another model's state\?"),
    # a layer after the fused output layer failed deep in JAX at init ("Shapes must be 1D sequences")
    "layer-after-LinearCrossEntropyHead": (
        lambda: nn.serial(nn.LinearCrossEntropyHead(10), nn.Linear(3)).init(KEY, (4, 6)),
        r"nn.Linear\(3\): its input is the output of LinearCrossEntropyHead\(10\), which must be the model's last "
        r"layer \(its output \(\(4, 6\), \(6, 10\), \(10,\)\) is the triple \(x, w, b\) for the loss"),
    "stateless-layer-in-serial-given-batchnorm-state": (
        lambda: _serial_states_swapped(), r"nn.Linear\(3\): this layer has no state .* state shapes \{'mean'"),
}


def _stateless_given(state):
    layer = nn.Linear(2)
    _, params = layer.init(KEY, (4, 3))
    return layer.fwd(params, jnp.ones((4, 3), jnp.float32), state=state)


def _serial_states_swapped():
    model = nn.serial(nn.Linear(3), nn.BatchNorm())
    _, params = model.init(KEY, (4, 6))
    _, state = nn.init_state(model, (4, 6))
    return model.apply(params, jnp.ones((4, 6), jnp.float32), state=state[::-1], train=True)


def _batch_norm(state):
    layer = nn.BatchNorm()
    _, params = layer.init(KEY, (4, 3))
    return layer.apply(params, jnp.ones((4, 3), jnp.float32), state=state)


def _gru(params_bidirectional, layer_bidirectional):
    _, params = nn.GRU(3, bidirectional=params_bidirectional).init(KEY, (2, 5, 6))
    return nn.GRU(3, bidirectional=layer_bidirectional).apply(params, jnp.ones((2, 5, 6), jnp.float32))


def _serial_params(part, extra=()):
    model = nn.serial(nn.Linear(3), nn.Tanh(), nn.Linear(2))
    _, params = model.init(KEY, (2, 6))
    return model.apply(params[part] + extra, jnp.ones((2, 6), jnp.float32))


def _fanout_bwd_short():
    model = nn.fanout(nn.Linear(3), nn.Linear(2))
    _, params = model.init(KEY, (2, 6))
    _, res = model.fwd(params, jnp.ones((2, 6), jnp.float32))
    return model.bwd(res, (jnp.ones((2, 3), jnp.float32),))


def _lstm(wrap):
    layer = nn.LSTM(3)
    _, params = layer.init(KEY, (2, 5, 6))
    return layer.apply(params, wrap(jnp.ones((2, 5, 6), jnp.float32)))


@pytest.mark.parametrize("name", list(CASES))
def test_bad_argument_is_named(name):
    call, message = CASES[name]
    with jax.enable_x64(True), pytest.raises(ValueError, match=message):
        call()


def test_the_good_forms_of_those_arguments_still_work():
    np.testing.assert_allclose(ops.gelu(X[:1, :1] + 1.0, approximate=np.bool_(True)), [[0.841192]], rtol=1e-5)
    assert len(data.Batches(np.zeros((8, 1)), np.zeros(8), np.int64(4))) == 2
    assert train.epoch_permutation(KEY, 10, np.int64(3)).shape == (3, 3)
    assert float(losses.scaled(losses.mse, np.float32(0.5))(jnp.ones(2), jnp.zeros(2))) == 0.5
    assert len(_fit(jax.random.key(1)).epochs) == 1 and len(_fit(KEY).epochs) == 1
    assert _serial_params(slice(None)).shape == (2, 2)
    assert _lstm(lambda x: (x, [5, 2]))[0].shape == (2, 5, 3)  # lengths as a Python list
