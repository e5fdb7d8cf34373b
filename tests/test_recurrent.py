"""Recurrent ops and layers against twins written apart from the library: a plain ``lax.scan`` that
runs every step (padding too) and gathers each row's states by index, and PyTorch's
``nn.RNN``/``nn.LSTM``/``nn.GRU`` in float64 with packed sequences; bad input, ``lengths``
semantics, the layers in ``serial`` with the explicit pass, ``check_model`` and ``fit``, and the
backward's temporary memory against ``jax.grad`` of the reference scan.

The registry tests (tests/test_ops.py) hold every op to ``jax.vjp`` of its reference, and
tests/test_twins.py holds every registered example (ragged lengths with 0 and T, the reverse
direction, T = 1, N = 1) to the scan twins :data:`TWINS` below: forward and every cotangent to 1e-12.
"""

import functools
import importlib.util

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax import lax

from manualgrad import backprop, check, data, losses, nn, ops, train
from tests.helpers import assert_trees_close

HAS_TORCH = importlib.util.find_spec("torch") is not None
needs_torch = pytest.mark.skipif(not HAS_TORCH, reason="PyTorch (optional extra) is not installed")
RTOL = 1e-10


# -- the scan twin -------------------------------------------------------------------------------
def _sigmoid(a):
    return 0.5 * (1 + jnp.tanh(a / 2))


def rnn_cell(x, state, wx, wh, b):
    (h,) = state
    return (jnp.tanh(jnp.einsum("nd,dk->nk", x, wx) + jnp.einsum("nh,hk->nk", h, wh) + b),)


def lstm_cell(x, state, wx, wh, b):
    h, c = state
    a = (x @ wx + h @ wh + b).reshape(x.shape[0], 4, -1)  # PyTorch's blocks (i, f, g, o)
    c = _sigmoid(a[:, 1]) * c + _sigmoid(a[:, 0]) * jnp.tanh(a[:, 2])
    return _sigmoid(a[:, 3]) * jnp.tanh(c), c


def gru_cell(x, state, wx, wh, bx, bh):
    (h,) = state
    ax = (x @ wx + bx).reshape(x.shape[0], 3, -1)  # (r, z, n)
    ah = (h @ wh + bh).reshape(x.shape[0], 3, -1)
    r, z = _sigmoid(ax[:, 0] + ah[:, 0]), _sigmoid(ax[:, 1] + ah[:, 1])
    n = jnp.tanh(ax[:, 2] + r * ah[:, 2])
    return (n + z * (h - n),)


@functools.partial(jax.jit, static_argnames=("cell", "reverse"))  # eager calls: one compiled program
def scan_twin(cell, x, state0, weights, lengths=None, reverse=False):
    """Each row's steps gathered into processing order (reversed within its length for
    ``reverse``), every step run, padding included, then ``hs`` gathered back and the last
    state read at index ``length - 1`` (the initial state for length 0)."""
    n, t = x.shape[:2]
    lengths = jnp.full(n, t) if lengths is None else jnp.asarray(lengths)
    steps = jnp.broadcast_to(jnp.arange(t), (n, t))
    inside = steps < lengths[:, None]
    order = jnp.where(inside, lengths[:, None] - 1 - steps, steps) if reverse else steps  # an involution

    def body(state, x_t):
        state = cell(x_t, state, *weights)
        return state, state

    xs = jnp.take_along_axis(x, order[..., None], axis=1)
    _, states = lax.scan(body, tuple(state0), jnp.swapaxes(xs, 0, 1))
    states = [jnp.swapaxes(s, 0, 1) for s in states]
    hs = jnp.where(inside[..., None], jnp.take_along_axis(states[0], order[..., None], axis=1), 0.0)
    at = jnp.maximum(lengths - 1, 0)
    last = tuple(jnp.where((lengths > 0)[:, None], s[jnp.arange(n), at], s0) for s, s0 in zip(states, state0))
    return hs, last


TWINS = {
    "manualgrad.ops.rnn_step": jax.jit(lambda x, h, wx, wh, b: rnn_cell(x, (h,), wx, wh, b)[0]),
    "manualgrad.ops.lstm_step": jax.jit(lambda x, h, c, wx, wh, b: lstm_cell(x, (h, c), wx, wh, b)),
    "manualgrad.ops.gru_step": jax.jit(lambda x, h, wx, wh, bx, bh: gru_cell(x, (h,), wx, wh, bx, bh)[0]),
    "manualgrad.ops.rnn": lambda x, h0, wx, wh, b, lengths=None, reverse=False:
        (lambda hs, last: (hs, last[0]))(*scan_twin(rnn_cell, x, (h0,), (wx, wh, b), lengths, reverse)),
    "manualgrad.ops.lstm": lambda x, h0, c0, wx, wh, b, lengths=None, reverse=False:
        scan_twin(lstm_cell, x, (h0, c0), (wx, wh, b), lengths, reverse),
    "manualgrad.ops.gru": lambda x, h0, wx, wh, bx, bh, lengths=None, reverse=False:
        (lambda hs, last: (hs, last[0]))(*scan_twin(gru_cell, x, (h0,), (wx, wh, bx, bh), lengths, reverse)),
}

# kind -> (op, number of states, bias names)
KINDS = {"rnn": (ops.rnn, 1, ("b",)), "lstm": (ops.lstm, 2, ("b",)), "gru": (ops.gru, 1, ("bx", "bh"))}
GATES = {"rnn": 1, "lstm": 4, "gru": 3}


def weights(rng, kind, d, h):
    g = GATES[kind] * h
    p = {"wx": rng.normal(size=(d, g)) * 0.5, "wh": rng.normal(size=(h, g)) * 0.5}
    return {**p, **{b: rng.normal(size=g) * 0.5 for b in KINDS[kind][2]}}


def run_op(kind, x, states, p, lengths, reverse):
    """``(hs, last states as a tuple)`` of the op."""
    op, _, biases = KINDS[kind]
    return as_tuple(kind, op(x, *states, p["wx"], p["wh"], *(p[b] for b in biases), lengths, reverse=reverse))


def max_rel(got, want):
    """The largest |difference| over every leaf, relative to the largest |want| entry."""
    errs = [float(np.max(np.abs(np.asarray(a) - np.asarray(b)), initial=0.0)) / max(float(np.max(np.abs(b))), 1e-300)
            for a, b in zip(jax.tree_util.tree_leaves(got), jax.tree_util.tree_leaves(want))]
    return max(errs)


def as_tuple(kind, out):
    """``(hs, last states as a tuple)`` from an op's output."""
    hs, last = out
    return hs, (last if kind == "lstm" else (last,))


# -- both directions with ragged lengths: the scan twin and PyTorch, every gradient --------------
LENGTHS = np.array([5, 0, 2, 3])  # T, 0 and two in between


def case(kind):
    """``x``, the initial states (directions, N, H) as PyTorch's ``h0``, two directions' weights,
    and the cotangents of ``hs`` (N, T, 2H) and of the last states."""
    rng = np.random.default_rng(7)
    n, t, d, h = 4, 5, 3, 4
    n_states = KINDS[kind][1]
    args = (rng.normal(size=(n, t, d)), [rng.normal(size=(2, n, h)) for _ in range(n_states)],
            [weights(rng, kind, d, h) for _ in range(2)])
    return args, (rng.normal(size=(n, t, 2 * h)), [rng.normal(size=(2, n, h)) for _ in range(n_states)])


def both_directions(run):
    """``f(x, states, params) -> (hs, last)``: ``run(x, states, p, reverse) -> (hs, last tuple)``
    forward and reverse, ``hs`` concatenated on the feature axis, the last states stacked."""

    def f(x, states, params):
        outs = [run(x, [s[i] for s in states], params[i], i == 1) for i in range(2)]
        last = [jnp.stack([o[1][j] for o in outs]) for j in range(len(states))]
        return jnp.concatenate([o[0] for o in outs], axis=-1), last

    return f


def values_and_grads(f, args, cts):
    def objective(*a):
        hs, last = f(*a)
        return jnp.sum(hs * cts[0]) + sum(jnp.sum(s * g) for s, g in zip(last, cts[1]))

    return jax.jit(lambda *a: (f(*a), jax.grad(objective, argnums=(0, 1, 2))(*a)))(*args)


@functools.lru_cache(maxsize=None)
def manual_result(kind):
    args, cts = case(kind)
    return values_and_grads(both_directions(lambda x, s, p, r: run_op(kind, x, s, p, LENGTHS, r)), args, cts)


@pytest.mark.parametrize("kind", list(KINDS))
def test_a_row_of_length_0_keeps_its_state_and_gets_no_gradient(kind):
    """The row PyTorch cannot take: no output, its initial state as the last state, ``x_bar`` 0 and
    ``h0_bar`` the last state's own cotangent, in both directions."""
    (_, states, _), cts = case(kind)
    (hs, last), (x_bar, states_bar, _) = manual_result(kind)
    np.testing.assert_array_equal(hs[1], 0.0)
    np.testing.assert_array_equal(x_bar[1], 0.0)
    for s, s_last, s_bar, g in zip(states, last, states_bar, cts[1]):
        np.testing.assert_array_equal(s_last[:, 1], s[:, 1])
        np.testing.assert_array_equal(s_bar[:, 1], g[:, 1])


@pytest.mark.parametrize("kind", list(KINDS))
def test_sequences_longer_than_a_block_equal_the_scan_twin_in_both_directions(kind):
    """T = 2 blocks + 5 steps (``ops.recurrent.BLOCK``): the loop over blocks, the remainder
    block first in the reverse direction, ragged lengths that end inside each block; the outputs
    and every gradient against the scan twin."""
    from manualgrad.ops.recurrent import BLOCK

    rng = np.random.default_rng(11)
    n, t, d, h = 4, 2 * BLOCK + 5, 2, 3
    lengths = np.array([t, 0, BLOCK - 3, 2 * BLOCK + 1])
    args = (rng.normal(size=(n, t, d)), [rng.normal(size=(2, n, h)) for _ in range(KINDS[kind][1])],
            [weights(rng, kind, d, h) for _ in range(2)])
    cts = (rng.normal(size=(n, t, 2 * h)), [rng.normal(size=(2, n, h)) for _ in range(KINDS[kind][1])])
    twin = TWINS[f"manualgrad.ops.{kind}"]
    got = values_and_grads(both_directions(lambda x, s, p, r: run_op(kind, x, s, p, lengths, r)), args, cts)
    want = values_and_grads(both_directions(lambda x, s, p, r: as_tuple(kind, twin(
        x, *s, p["wx"], p["wh"], *(p[b] for b in KINDS[kind][2]), lengths, r))), args, cts)
    assert max_rel(got, want) <= 1e-12


def test_step_ops_are_one_step_of_the_sequence_ops():
    rng = np.random.default_rng(1)
    x = rng.normal(size=(2, 1, 3))
    for kind, step in (("rnn", ops.rnn_step), ("lstm", ops.lstm_step), ("gru", ops.gru_step)):
        p = weights(rng, kind, 3, 2)
        states = tuple(rng.normal(size=(2, 2)) for _ in range(KINDS[kind][1]))
        hs, last = run_op(kind, x, states, p, None, False)
        stepped = step(x[:, 0], *states, *p.values())
        assert_trees_close(last, stepped if kind == "lstm" else (stepped,), rtol=1e-14, atol=0)
        np.testing.assert_allclose(hs[:, 0], last[0], rtol=1e-14)


# -- lengths --------------------------------------------------------------------------------------
def test_lengths_freeze_the_state_and_zero_the_outputs():
    """Row by row (the reverse direction, where a row starts at its own last step): length 0 keeps
    the initial state and outputs nothing; length 2 is the row cut to 2 steps, zeros after."""
    rng = np.random.default_rng(2)
    x, h0, c0 = rng.normal(size=(3, 4, 2)), rng.normal(size=(3, 3)), rng.normal(size=(3, 3))
    p = weights(rng, "lstm", 2, 3)
    hs, (h, c) = ops.lstm(x, h0, c0, p["wx"], p["wh"], p["b"], np.array([0, 2, 4]), reverse=True)
    np.testing.assert_array_equal(hs[0], 0.0)
    np.testing.assert_array_equal(h[0], h0[0])
    np.testing.assert_array_equal(c[0], c0[0])
    np.testing.assert_array_equal(hs[1, 2:], 0.0)
    cut_hs, (cut_h, cut_c) = ops.lstm(x[:, :2], h0, c0, p["wx"], p["wh"], p["b"], reverse=True)
    np.testing.assert_allclose(hs[1, :2], cut_hs[1], rtol=1e-13)
    np.testing.assert_allclose(h[1], cut_h[1], rtol=1e-13)
    np.testing.assert_allclose(c[1], cut_c[1], rtol=1e-13)


# -- bad input -------------------------------------------------------------------------------------
def _lstm_args(**change):
    rng = np.random.default_rng(3)
    args = dict(x=rng.normal(size=(2, 3, 2)), h0=np.zeros((2, 4)), c0=np.zeros((2, 4)), wx=np.zeros((2, 16)),
                wh=np.zeros((4, 16)), b=np.zeros(16), lengths=np.array([3, 1]))
    return {**args, **change}


BAD = [
    (ops.lstm, _lstm_args(wh=np.zeros((4, 12))), r"manualgrad.ops.lstm: wh.shape=\(4, 12\) float64: wh must be \(H, 4H\)"),
    (ops.lstm, _lstm_args(wx=np.zeros((2, 12))), r"wx.shape=\(2, 12\) must be \(D, 4H\) = \(2, 16\)"),
    (ops.lstm, _lstm_args(x=np.zeros((2, 3))), r"x.shape=\(2, 3\) float64: x must be \(N, T, D\)"),
    (ops.lstm, _lstm_args(h0=np.zeros((3, 4))), r"h0.shape=\(3, 4\) must be \(N, H\) = \(2, 4\)"),
    (ops.lstm, _lstm_args(c0=np.zeros((2, 5))), r"c0.shape=\(2, 5\) must be \(N, H\) = \(2, 4\)"),
    (ops.lstm, _lstm_args(b=np.zeros(4)), r"b.shape=\(4,\) must be \(4H,\) = \(16,\)"),
    (ops.lstm, _lstm_args(lengths=np.array([3, 1, 2])), r"lengths.shape=\(3,\) int64 must be \(N,\) = \(2,\) integers"),
    (ops.lstm, _lstm_args(lengths=np.array([3.0, 1.0])), r"lengths.shape=\(2,\) float64 must be \(N,\) = \(2,\) integers"),
    (ops.lstm, _lstm_args(x=np.zeros((2, 3, 2), np.int32)), r"x.shape=\(2, 3, 2\) int32: x is differentiated and must be floating"),
    (ops.lstm, _lstm_args(h0=np.zeros((2, 4), np.float32)), r"x, h0, c0, wx, wh and b must share one dtype"),
    (ops.rnn, dict(x=np.zeros((2, 3, 2)), h0=np.zeros((2, 4)), wx=np.zeros((2, 4)), wh=np.zeros((4, 5)), b=np.zeros(4)),
     r"manualgrad.ops.rnn: wh.shape=\(4, 5\) float64: wh must be \(H, H\)"),
    (ops.gru, dict(x=np.zeros((2, 3, 2)), h0=np.zeros((2, 4)), wx=np.zeros((2, 8)), wh=np.zeros((4, 12)), bx=np.zeros(12),
                   bh=np.zeros(12)), r"manualgrad.ops.gru: wx.shape=\(2, 8\) must be \(D, 3H\) = \(2, 12\)"),
    (ops.rnn_step, dict(x=np.zeros((2, 3, 2)), h=np.zeros((2, 4)), wx=np.zeros((2, 4)), wh=np.zeros((4, 4)), b=np.zeros(4)),
     r"manualgrad.ops.rnn_step: x.shape=\(2, 3, 2\) float64: x must be \(N, D\)"),
    (ops.gru_step, dict(x=np.zeros((2, 3)), h=np.zeros((1, 4)), wx=np.zeros((3, 12)), wh=np.zeros((4, 12)), bx=np.zeros(12),
                        bh=np.zeros(12)), r"manualgrad.ops.gru_step: h.shape=\(1, 4\) must be \(N, H\) = \(2, 4\)"),
]


@pytest.mark.parametrize("op, args, match", BAD, ids=[f"{op.__name__}-{i}" for i, (op, _, _) in enumerate(BAD)])
def test_bad_input_names_the_op_and_the_shapes_eagerly_and_under_jit(op, args, match):
    with pytest.raises(ValueError, match=match):
        op(**args)
    arrays = {k: v for k, v in args.items() if k != "lengths"}
    with pytest.raises(ValueError, match=match):
        jax.jit(lambda a, lengths: op(**a, lengths=lengths) if "lengths" in args else op(**a))(arrays, args.get("lengths"))


def test_concrete_lengths_outside_0_to_t_are_an_error():
    for bad in ([4, 1], [-1, 2]):
        with pytest.raises(ValueError, match=r"manualgrad.ops.lstm: lengths must be in \[0, T\] = \[0, 3\] .* got \[" + str(bad[0])):
            ops.lstm(**_lstm_args(lengths=np.array(bad)))
    args = _lstm_args()  # under jit they cannot be checked: they act as clipped to [0, T]
    lengths = args.pop("lengths")
    clipped = jax.jit(lambda lengths: ops.lstm(**args, lengths=lengths))(jnp.array([9, 1]))
    assert_trees_close(clipped, ops.lstm(**args, lengths=lengths))


def test_layers_refuse_bad_settings_and_inputs():
    with pytest.raises(ValueError, match=r"manualgrad.nn.LSTM\(0\): hidden must be a positive integer"):
        nn.LSTM(0)
    with pytest.raises(ValueError, match=r"output must be one of \('sequence', 'last'\), got 'all'"):
        nn.GRU(3, output="all")
    with pytest.raises(ValueError, match=r"manualgrad.nn.RNN\(3\): input_shape=\(2, 4\) must be \(N, T, D\)"):
        nn.RNN(3).init(jax.random.key(0), (2, 4))
    layer = nn.GRU(3)
    _, params = layer.init(jax.random.key(0), (2, 4, 2))
    with pytest.raises(ValueError, match=r"manualgrad.nn.GRU\(3\): manualgrad.ops.gru: wx.shape=\(2, 9\) must be \(D, 3H\) = \(5, 9\)"):
        layer.apply(params, jnp.ones((2, 4, 5)))


# -- layers ---------------------------------------------------------------------------------------
def test_layer_shapes_init_and_bidirectional_output():
    for make, gates in ((nn.RNN, 1), (nn.LSTM, 4), (nn.GRU, 3)):
        shape, params = make(8).init(jax.random.key(0), (2, 5, 3))
        assert shape == (2, 5, 8)
        assert set(params) == ({"wx", "wh", "bx", "bh"} if gates == 3 else {"wx", "wh", "b"})
        assert params["wx"].shape == (3, gates * 8) and params["wh"].shape == (8, gates * 8)
        leaves = np.concatenate([np.ravel(a) for a in jax.tree_util.tree_leaves(params)])
        assert np.abs(leaves).max() <= 1 / np.sqrt(8) and np.abs(leaves).max() > 0.9 / np.sqrt(8)  # PyTorch's bound
    layer = nn.LSTM(3, bidirectional=True)
    shape, params = layer.init(jax.random.key(0), ((2, 4, 2), (2,)))
    assert shape == ((2, 4, 6), (2,)) and set(params) == {"forward", "reverse"}
    x, lengths = jax.random.normal(jax.random.key(1), (2, 4, 2), jnp.float32), jnp.array([4, 2])
    y, same = layer.apply(params, (x, lengths))
    assert same is lengths
    z = (jnp.zeros((2, 3), jnp.float32),) * 2
    forward = run_op("lstm", x, z, params["forward"], lengths, False)
    reverse = run_op("lstm", x, z, params["reverse"], lengths, True)
    np.testing.assert_allclose(y, np.concatenate([forward[0], reverse[0]], axis=-1))
    last = nn.LSTM(3, bidirectional=True, output="last").apply(params, (x, lengths))
    np.testing.assert_allclose(last, np.concatenate([forward[1][0], reverse[1][0]], axis=-1))
    assert nn.DropLengths().apply((), (y, lengths)) is y


def _ragged_batch(rng, n=4, t=5, d=3, zero=True):
    lengths = np.array([t, 0, 2, 3][:n]) if zero else np.array([t, 1, 2, 3][:n])
    return jnp.asarray(rng.normal(size=(n, t, d))), jnp.asarray(lengths)


def test_stacked_layers_with_lengths_in_check_model():
    """Every layer's parameter gradients by jax.grad through the ops and by the explicit pass,
    against jax.grad of the references (float64; the lengths travel through serial)."""
    rng = np.random.default_rng(4)
    x, lengths = _ragged_batch(rng)
    model = nn.serial(nn.GRU(3, bidirectional=True), nn.LSTM(2, output="last"), nn.Linear(3))
    shape, params = model.init(jax.random.key(0), ((4, 5, 3), (4,)))
    assert shape == (4, 3)
    report = check.check_model(model, losses.softmax_cross_entropy, params, (x, lengths), jnp.array([0, 2, 1, 1]),
                               dtypes=(jnp.float64,))
    report.assert_ok()
    assert [layer.name for layer in report.layers] == ["GRU(3, bidirectional=True)", "LSTM(2, output='last')", "Linear(3)", "loss"]


@needs_torch
def test_stacked_bidirectional_lstm_equals_torch_multilayer_lstm_with_packed_sequences():
    import torch

    rng = np.random.default_rng(5)
    x, lengths = _ragged_batch(rng, zero=False)
    model = nn.serial(nn.LSTM(3, bidirectional=True), nn.LSTM(3, bidirectional=True), nn.DropLengths())
    _, params = model.init(jax.random.key(0), ((4, 5, 3), (4,)))
    params = jax.tree_util.tree_map(lambda a: jnp.asarray(a, jnp.float64), params)
    target = jnp.asarray(rng.normal(size=(4, 5, 6)))
    loss, grads = jax.jit(backprop.value_and_grad(model, losses.sse))(params, (x, lengths), target)

    net = torch.nn.LSTM(3, 3, num_layers=2, batch_first=True, bidirectional=True, dtype=torch.float64)
    for layer in range(2):
        for direction, suffix in (("forward", ""), ("reverse", "_reverse")):
            load(net, f"_l{layer}{suffix}", "lstm", params[layer][direction])
    out = torch_run(net, torch.tensor(np.asarray(x)), lengths)[0]
    t_loss = ((out - torch.tensor(np.asarray(target))) ** 2).sum()
    t_loss.backward()
    np.testing.assert_allclose(float(loss), t_loss.item(), rtol=RTOL)
    for layer in range(2):
        for direction, suffix in (("forward", ""), ("reverse", "_reverse")):
            assert max_rel(grads[layer][direction], torch_grads(net, f"_l{layer}{suffix}", "lstm")) <= RTOL


@needs_torch
def test_lstm_language_model_loss_and_every_gradient_equal_torch():
    """One float64 batch of the char-LSTM (``nn.LSTMLM``, two layers, as ``--model lstm`` builds it)
    against ``nn.Embedding`` -> 2-layer ``nn.LSTM`` -> ``nn.Linear`` with the same weights and
    ``F.cross_entropy``: the loss and the gradient of every param to 1e-10."""
    import torch

    vocab, width = 11, 6
    model = nn.LSTMLM(vocab, width, depth=2)
    _, params = model.init(jax.random.key(3), (3, 7))
    params = jax.tree_util.tree_map(lambda a: jnp.asarray(a, jnp.float64), params)
    ids = np.random.default_rng(7).integers(0, vocab, (3, 8))
    loss, grads = jax.jit(backprop.value_and_grad(model, losses.softmax_cross_entropy))(params, ids[:, :-1], ids[:, 1:])

    embed = torch.nn.Embedding(vocab, width, dtype=torch.float64)
    lstm = torch.nn.LSTM(width, width, num_layers=2, batch_first=True, dtype=torch.float64)
    head = torch.nn.Linear(width, vocab, dtype=torch.float64)
    with torch.no_grad():
        embed.weight.copy_(torch.tensor(np.asarray(params[0]["table"])))
        head.weight.copy_(torch.tensor(np.asarray(params[3]["w"]).T))
        head.bias.copy_(torch.tensor(np.asarray(params[3]["b"])))
    for layer in range(2):
        load(lstm, f"_l{layer}", "lstm", params[1 + layer])
    logits = head(lstm(embed(torch.tensor(ids[:, :-1])))[0])
    t_loss = torch.nn.functional.cross_entropy(logits.reshape(-1, vocab), torch.tensor(ids[:, 1:]).reshape(-1))
    t_loss.backward()

    np.testing.assert_allclose(float(loss), t_loss.item(), rtol=RTOL)
    assert max_rel(grads[0]["table"], embed.weight.grad.numpy()) <= RTOL
    for layer in range(2):
        assert max_rel(grads[1 + layer], torch_grads(lstm, f"_l{layer}", "lstm")) <= RTOL
    assert max_rel(grads[3], {"w": head.weight.grad.numpy().T, "b": head.bias.grad.numpy()}) <= RTOL


def test_fit_trains_on_padded_batches():
    """``(x, lengths)`` as the dataset's input: fit shuffles, batches and evaluates the pair."""
    rng = np.random.default_rng(6)
    x = rng.normal(size=(24, 5, 2)).astype(np.float32)
    lengths = rng.integers(0, 6, 24).astype(np.int32)
    y = (lengths > 2).astype(np.int32)
    ds = data.Dataset("toy", (x, lengths), y, (x[:8], lengths[:8]), y[:8])
    model = nn.serial(nn.GRU(4), nn.LSTM(3, output="last"), nn.Linear(2))
    _, params = model.init(jax.random.key(0), ((1, 5, 2), (1,)))
    history = train.fit(model, losses.softmax_cross_entropy, train.sgd_with_clipping(0.1, 5.0), params, ds, epochs=1,
                        batch_size=8, key=jax.random.key(1), grad="explicit", metric="accuracy")
    assert len(history.step_losses[0]) == 3 and np.isfinite(history.step_losses[0]).all()
    assert 0 <= history.epochs[0]["test_accuracy"] <= 1


# -- PyTorch --------------------------------------------------------------------------------------
def load(module, suffix, kind, p):
    """Our ``{"wx", "wh", "b"}`` (GRU ``"bx", "bh"``) into ``weight_ih<suffix>`` and the rest (``"_l0"``,
    ``"_l0_reverse"``; ``""`` for a cell), ``bias_hh`` 0 where we have one bias."""
    import torch

    with torch.no_grad():
        getattr(module, f"weight_ih{suffix}").copy_(torch.tensor(np.asarray(p["wx"]).T))
        getattr(module, f"weight_hh{suffix}").copy_(torch.tensor(np.asarray(p["wh"]).T))
        bx, bh = (p["bx"], p["bh"]) if kind == "gru" else (p["b"], np.zeros_like(p["b"]))
        getattr(module, f"bias_ih{suffix}").copy_(torch.tensor(np.asarray(bx)))
        getattr(module, f"bias_hh{suffix}").copy_(torch.tensor(np.asarray(bh)))


def torch_grads(module, suffix, kind):
    """The gradients in our layout; with one bias, ``b_bar = bias_ih.grad`` (= ``bias_hh.grad``)."""
    grad = lambda name: getattr(module, f"{name}{suffix}").grad.numpy()
    p = {"wx": grad("weight_ih").T, "wh": grad("weight_hh").T}
    return {**p, "bx": grad("bias_ih"), "bh": grad("bias_hh")} if kind == "gru" else {**p, "b": grad("bias_ih")}


def torch_run(module, xt, lengths, hx=None):
    """``module`` on the padded batch ``xt`` (a tensor); packed by ``lengths`` (all > 0) when given.
    Returns ``(output, last)``, the output padded back with zeros to ``xt``'s length."""
    import torch
    from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

    if lengths is None:
        return module(xt, hx)
    packed = pack_padded_sequence(xt, torch.tensor(np.asarray(lengths)), batch_first=True, enforce_sorted=False)
    out, last = module(packed, hx)
    return pad_packed_sequence(out, batch_first=True, total_length=xt.shape[1])[0], last


@needs_torch
@pytest.mark.parametrize("kind", list(KINDS))
def test_both_directions_equal_torch_with_packed_sequences(kind):
    """The same against one bidirectional ``nn.RNN/LSTM/GRU`` on the packed rows of length > 0
    (PyTorch refuses length 0): outputs, ``h_n`` (and ``c_n``), every gradient."""
    import torch

    (x, states, params), cts = case(kind)
    (hs, last), (x_bar, states_bar, params_bar) = manual_result(kind)
    rows = np.flatnonzero(LENGTHS > 0)
    module = {"rnn": torch.nn.RNN, "lstm": torch.nn.LSTM, "gru": torch.nn.GRU}[kind](
        x.shape[-1], hs.shape[-1] // 2, batch_first=True, bidirectional=True, dtype=torch.float64)
    for p, suffix in zip(params, ("_l0", "_l0_reverse")):
        load(module, suffix, kind, p)
    xt = torch.tensor(x[rows], requires_grad=True)
    hx = [torch.tensor(s[:, rows], requires_grad=True) for s in states]
    t_out, t_last = torch_run(module, xt, LENGTHS[rows], hx[0] if len(hx) == 1 else tuple(hx))
    t_last = [t_last] if len(hx) == 1 else list(t_last)
    objective = (t_out * torch.tensor(cts[0][rows])).sum()
    (objective + sum((s * torch.tensor(g[:, rows])).sum() for s, g in zip(t_last, cts[1]))).backward()
    errors = {
        "hs": max_rel(hs[rows], t_out.detach().numpy()),
        "last": max_rel([s[:, rows] for s in last], [s.detach().numpy() for s in t_last]),
        "x_bar": max_rel(x_bar[rows], xt.grad.numpy()),
        "states_bar": max_rel([s[:, rows] for s in states_bar], [s.grad.numpy() for s in hx]),
        "params_bar": max_rel(params_bar, [torch_grads(module, s, kind) for s in ("_l0", "_l0_reverse")]),
    }
    assert max(errors.values()) <= RTOL, errors


@needs_torch
def test_step_ops_equal_torch_cells():
    import torch

    rng = np.random.default_rng(8)
    cells = {"rnn": (ops.rnn_step, torch.nn.RNNCell), "lstm": (ops.lstm_step, torch.nn.LSTMCell),
             "gru": (ops.gru_step, torch.nn.GRUCell)}
    for kind, (step, cell_class) in cells.items():
        p = weights(rng, kind, 3, 2)
        x, states = rng.normal(size=(4, 3)), [rng.normal(size=(4, 2)) for _ in range(KINDS[kind][1])]
        cts = [rng.normal(size=(4, 2)) for _ in states]
        cell = cell_class(3, 2, dtype=torch.float64)
        load(cell, "", kind, p)
        xt, hx = torch.tensor(x, requires_grad=True), [torch.tensor(s, requires_grad=True) for s in states]
        out = cell(xt, hx[0] if len(hx) == 1 else tuple(hx))
        out = [out] if len(hx) == 1 else list(out)
        sum((o * torch.tensor(g)).sum() for o, g in zip(out, cts)).backward()
        got, pullback = jax.vjp(lambda x, s, p: step(x, *s, *(p[k] for k in ("wx", "wh", *KINDS[kind][2]))), x, states, p)
        x_bar, states_bar, p_bar = pullback(cts[0] if len(cts) == 1 else tuple(cts))
        errors = [max_rel(got, [o.detach().numpy() for o in out] if len(out) > 1 else out[0].detach().numpy()),
                  max_rel(x_bar, xt.grad.numpy()), max_rel(states_bar, [h.grad.numpy() for h in hx]),
                  max_rel(p_bar, torch_grads(cell, "", kind))]
        assert max(errors) <= RTOL, (kind, errors)


# -- memory ---------------------------------------------------------------------------------------
def test_backward_temp_memory_is_well_below_autodiff_of_the_scan():
    """jax.grad of the reference keeps every step's gates and activations; the manual backward
    keeps the states, recomputes the gates and holds ``x @ wx`` and ``ax_bar`` for one block of
    steps at a time. N=8, T=256 (8 blocks), D=H=32, float32: measured 4.0 against 14.2 N T H
    floats (0.28)."""
    n, t, d, h = 8, 256, 32, 32
    args = [jax.ShapeDtypeStruct(s, jnp.float32) for s in [(n, t, d), (n, h), (n, h), (d, 4 * h), (h, 4 * h), (4 * h,)]]

    def temp_bytes(f):
        grad = jax.grad(lambda *a: jnp.sum(f(*a)[0] ** 2), argnums=(0, 3, 4, 5))
        return jax.jit(grad).lower(*args).compile().memory_analysis().temp_size_in_bytes

    manual, reference = temp_bytes(ops.lstm), temp_bytes(ops.lstm.reference)
    assert manual < reference / 3, (manual, reference)
