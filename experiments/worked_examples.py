"""Replay every worked example of the seed documents through manualgrad.

    python -m experiments.worked_examples            # all of them
    python -m experiments.worked_examples 002 004    # some of them

Each example rebuilds the seed's network with manualgrad layers, runs the explicit
reverse pass (``manualgrad.backprop``, the layers' own hand-written rules) and compares
every number the seed prints with ours, step by step. Where a seed is wrong, the
correct value is printed next to the seed's and proven with ``jax.grad`` of the plain
references. The exit status is non-zero if any value differs.

Conventions: manualgrad stores a batch as rows, ``x`` (batch, features), and a weight
as ``w`` (d_in, d_out), so a seed's column-major ``W`` (d_out, d_in) appears here as
``w = W.T``; the seeds' row-vector printouts of a batch appear here as its transpose.
"""

from __future__ import annotations

import argparse
import sys
from typing import Any, Callable

import jax

jax.config.update("jax_enable_x64", True)

import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
import optax  # noqa: E402

from manualgrad import backprop, check, losses, nn, ops, reference_mode  # noqa: E402


def _fmt(a: np.ndarray) -> str:
    text = np.array2string(a, formatter={"float_kind": lambda v: f"{v:.9g}"}, max_line_width=100)
    return text.replace("\n", "\n" + " " * 23)


class Checker:
    """Prints each value next to the seed's and records any mismatch."""

    def __init__(self, verbose: bool = True):
        self.verbose = verbose
        self.failures: list[str] = []
        self.count = 0

    def say(self, text: str = "") -> None:
        if self.verbose:
            print(text)

    def expect(self, label: str, got: Any, want: Any, atol: float = 1e-12) -> None:
        got, want = np.asarray(got, np.float64), np.asarray(want, np.float64)
        self.count += 1
        ok = got.shape == want.shape and bool(np.allclose(got, want, rtol=0, atol=atol))
        text = _fmt(got)
        self.say(f"  {label:<20} {text}   {'ok' if ok else 'MISMATCH'}")
        if not ok:
            self.failures.append(label)
            self.say(f"  {'expected':<20} " + _fmt(want))

    def differs(self, label: str, got: Any, wrong: Any) -> None:
        """Record that our value is *not* the seed's erroneous one."""
        got, wrong = np.asarray(got, np.float64), np.asarray(wrong, np.float64)
        self.count += 1
        ok = got.shape != wrong.shape or not np.allclose(got, wrong, atol=1e-9)
        self.say(f"  {label:<20} differs from the seed's recipe: {'ok' if ok else 'MISMATCH'}")
        if not ok:
            self.failures.append(label)


def _grad_agrees_with_reference(c: Checker, label: str, model, loss, params, x, target, grads) -> None:
    """The explicit pass must equal jax.grad of the plain references."""
    with reference_mode():
        want = jax.grad(lambda p: loss(model.apply(p, x), target))(params)
    for (path, g), w in zip(jax.tree_util.tree_leaves_with_path(grads), jax.tree_util.tree_leaves(want)):
        if not np.allclose(g, w, rtol=1e-12, atol=1e-12):
            c.failures.append(f"{label}{jax.tree_util.keystr(path)}")
    c.count += 1
    c.say(f"  {label:<20} all parameter gradients equal jax.grad of the references")


def _linear(w_torch, b) -> dict:
    """Params of a manualgrad Linear from a PyTorch-layout weight (d_out, d_in)."""
    return {"w": jnp.asarray(w_torch, jnp.float64).T, "b": jnp.asarray(b, jnp.float64)}


# --------------------------------------------------------------------------------------
def seed000(c: Checker) -> None:
    """Seed 000: a shared trunk (2 Linear+ReLU) with two heads (2 Linear+ReLU each)."""
    c.say("== seed 000: shared trunk, two heads, ReLU, loss 1/2 sum (act - label)^2 per head ==")
    inputs = jnp.array([[1.54099607, -0.29342890], [0.66135216, 0.26692411]])
    l1 = _linear(np.reshape([-0.00529398, +0.37932289, -0.58198076, -0.52038747], (2, 2)), [-0.27234524, +0.18961589])
    l2 = _linear(np.reshape([-0.01401003, +0.56065750, -0.06275152, +0.18710934], (2, 2)), [-0.21369691, -0.13899271])
    l3 = _linear(np.reshape([-0.67553341, -0.46830416, -0.29148576, +0.02619376], (2, 2)), [+0.27954420, +0.42428017])
    l4 = _linear(np.reshape([-0.47937673, -0.30791873, +0.25683329, +0.58717293], (2, 2)), [-0.14552270, +0.52913630])
    l5 = _linear(np.reshape([-0.11397384, +0.07482187, +0.64026839, -0.65596199], (2, 2)), [-0.44515052, -0.17901486])
    l6 = _linear(np.reshape([-0.27563018, +0.61094081, -0.45833221, -0.32550448], (2, 2)), [-0.49401340, -0.66224861])

    def head():
        return nn.serial(nn.Linear(2), nn.ReLU(), nn.Linear(2), nn.ReLU())

    model = nn.serial(nn.Linear(2), nn.ReLU(), nn.Linear(2), nn.ReLU(), nn.fanout(head(), head()))
    params = (l1, (), l2, (), ((l3, (), l4, ()), (l5, (), l6, ())))

    # The seed never prints its labels; they follow from its `grad_act = act - label` lines.
    act8 = np.array([[0.0, 0.85005838], [0.0, 0.85005838]])
    label1 = act8 - np.array([[2.17878938, 0.28162712], [-0.06167726, 0.22874105]])
    label2 = 0.0 - np.array([[1.08452237, 1.39859545], [0.45190597, 0.16613023]])
    c.say(f"  labels from `grad = act - label`: task1 {label1.tolist()}, task2 {label2.tolist()}")
    half_sse = losses.scaled(losses.sse, 0.5)
    loss = losses.multitask(half_sse, half_sse)
    value, grads, tr = jax.jit(backprop.value_and_grad(model, loss, trace=True))(params, inputs, (label1, label2))
    layers = [e for e in tr if not e.name.startswith("fanout")]  # the fanout's own entry sums the heads
    act = {i + 1: layers[i].y for i in range(12)}  # layers 0..11 are act1..act12 in forward order
    g_act = {i + 1: layers[i].y_bar for i in range(12)}
    tol = 5e-7  # the seed prints float32 values to 8 decimals

    c.say("-- forward")
    printed = {
        1: [-0.39180756, -0.55451745, -0.17459601, -0.33418226],
        2: [0, 0, 0, 0],
        3: [-0.21369691, -0.13899271, -0.21369691, -0.13899271],
        4: [0, 0, 0, 0],
        5: [0.27954420, 0.42428017, 0.27954420, 0.42428017],
        6: [0.27954420, 0.42428017, 0.27954420, 0.42428017],
        7: [-0.41017354, 0.85005838, -0.41017354, 0.85005838],
        8: [0.0, 0.85005838, 0.0, 0.85005838],
        9: [-0.44515052, -0.17901486, -0.44515052, -0.17901486],
        10: [0, 0, 0, 0],
        11: [-0.49401340, -0.66224861, -0.49401340, -0.66224861],
        12: [0, 0, 0, 0],
    }
    for k, v in printed.items():
        c.expect(f"act{k}", act[k].ravel(), v, tol)

    c.say("-- backward, head 2 (l6, l5) and head 1 (l4, l3): the seed is right here")
    c.say("   (grad_act12 and grad_act8 hold by construction: the labels were derived from them;")
    c.say("    the independent check below recomputes every gradient with a plain jax.numpy model)")
    c.expect("grad_act12", g_act[12].ravel(), [1.08452237, 1.39859545, 0.45190597, 0.16613023], tol)
    c.expect("grad_act11", g_act[11].ravel(), [0, 0, 0, 0], tol)
    c.expect("grad_l6w", grads[4][1][2]["w"].T.ravel(), [0, 0, 0, 0], tol)
    c.expect("grad_act9", g_act[9].ravel(), [0, 0, 0, 0], tol)
    c.expect("grad_l5w", grads[4][1][0]["w"].T.ravel(), [0, 0, 0, 0], tol)
    c.expect("grad_act8", g_act[8].ravel(), [2.17878938, 0.28162712, -0.06167726, 0.22874105], tol)
    c.expect("grad_act7", g_act[7].ravel(), [0, 0.28162712, 0, 0.22874105], tol)
    c.expect("grad_l4w", grads[4][0][2]["w"].T.ravel(), [0, 0, 0.14267047, 0.21653908], tol)
    c.expect("grad_l4b", grads[4][0][2]["b"], [0, 0.51036817], tol)
    c.expect("grad_act6", g_act[6].ravel(), [0.07233122, 0.16536382, 0.05874832, 0.13431056], tol)
    c.expect("grad_l3w", grads[4][0][0]["w"].T.ravel(), [0, 0, 0, 0], tol)
    c.expect("grad_l3b", grads[4][0][0]["b"], [0.13107954, 0.29967439], tol)

    c.say("-- trunk: the trunk output act4 feeds both heads, so dL/dact4 is the SUM of")
    c.say("   grad_act4_task1 (= grad_act5 @ l3w) and grad_act4_task2 (= grad_act9 @ l5w);")
    c.say("   the seed keeps them apart and then multiplies by l3w where l2w belongs.")
    task1 = layers[4].x_bar  # head 1's first Linear: dL1/dact4
    task2 = layers[8].x_bar  # head 2's first Linear: dL2/dact4
    c.expect("grad_act4_task1", task1.ravel(), [-0.09706335, -0.02954151, -0.07883607, -0.02399398], tol)
    c.expect("grad_act4_task2", task2.ravel(), [0, 0, 0, 0], tol)
    c.expect("grad_act4 (sum)", g_act[4].ravel(), (task1 + task2).ravel(), 1e-15)
    c.expect("grad_act2", g_act[2].ravel(), (g_act[3] @ l2["w"].T).ravel(), 1e-15)
    c.expect("grad_l1w", grads[0]["w"].T.ravel(), [0, 0, 0, 0], tol)
    _grad_agrees_with_reference(c, "jax.grad check", model, loss, params, inputs, (label1, label2), grads)
    c.say("   Every trunk ReLU is off here (act1, act3 < 0), so these trunk numbers are zero either way.")

    c.say("-- the same network with +1 on every bias, so that the trunk and both heads are alive:")
    alive = jax.tree_util.tree_map_with_path(
        lambda path, p: p + 1.0 if jax.tree_util.keystr(path).endswith("['b']") else p, params
    )
    _, alive_grads, atr = backprop.value_and_grad(model, loss, trace=True)(alive, inputs, (label1, label2))
    only1 = losses.multitask(half_sse, losses.scaled(losses.sse, 0.0))
    only2 = losses.multitask(losses.scaled(losses.sse, 0.0), half_sse)
    g1 = backprop.value_and_grad(model, only1)(alive, inputs, (label1, label2))[1]
    g2 = backprop.value_and_grad(model, only2)(alive, inputs, (label1, label2))[1]
    c.expect("grad_l2w = t1 + t2", alive_grads[2]["w"], g1[2]["w"] + g2[2]["w"], 1e-14)
    c.differs("grad_l2w vs task1", alive_grads[2]["w"], g1[2]["w"])
    seed_grad_act2 = atr[2].y_bar @ l3["w"].T  # the seed's `grad_act3 @ l3w`
    c.differs("grad_act2 vs @l3w", atr[2].x_bar, seed_grad_act2)
    _grad_agrees_with_reference(c, "jax.grad check", model, loss, alive, inputs, (label1, label2), alive_grads)
    independent = jax.grad(_seed000_plain_loss)(alive, inputs, label1, label2)
    c.expect("trunk l1w, plain jnp", alive_grads[0]["w"], independent[0]["w"], 1e-14)
    c.expect("trunk l2w, plain jnp", alive_grads[2]["w"], independent[2]["w"], 1e-14)
    c.expect("trunk l2b, plain jnp", alive_grads[2]["b"], independent[2]["b"], 1e-14)


def _seed000_plain_loss(params: Any, x: jax.Array, label1: Any, label2: Any) -> jax.Array:
    """Seed 000's network and loss in plain jax.numpy (no manualgrad op): an independent
    witness that the trunk's gradient is the sum over both heads."""
    l1, _, l2, _, ((l3, _, l4, _), (l5, _, l6, _)) = params

    def dense(p, a):
        return jnp.maximum(a @ p["w"] + p["b"], 0.0)

    trunk = dense(l2, dense(l1, x))
    head1, head2 = dense(l4, dense(l3, trunk)), dense(l6, dense(l5, trunk))
    return 0.5 * jnp.sum((head1 - label1) ** 2) + 0.5 * jnp.sum((head2 - label2) ** 2)


# --------------------------------------------------------------------------------------
def seed001(c: Checker) -> None:
    """Seed 001: one SGD step (lr 0.1) of a 2-4-2 ReLU net with softmax + NLL."""
    c.say("== seed 001: one SGD step, softmax + negative log-likelihood, lr 0.1 ==")
    W1 = np.array([[1.0, 0, -1, 0], [0, 1, 0, -1]])
    w10 = np.array([-1.0, -1, -1, -1])
    W2 = np.array([[1.0, -1], [1, -1], [1, -1], [1, -1]])
    w20 = np.array([0.0, 2])
    x = jnp.array([[3.0, 14.0]])
    label = jnp.array([1])  # the loss is -log(a2[1])
    # The seed computes W1.T @ x, so its W1 is already (d_in, d_out): w = W1.
    params = ({"w": jnp.asarray(W1), "b": jnp.asarray(w10)}, (), {"w": jnp.asarray(W2), "b": jnp.asarray(w20)})
    model = nn.serial(nn.Linear(4), nn.ReLU(), nn.Linear(2))
    value, grads, tr = backprop.value_and_grad(model, losses.softmax_cross_entropy, trace=True)(params, x, label)
    c.expect("a1", tr[1].y.ravel(), [2, 13, 0, 0])
    a2 = ops.softmax(tr[2].y)
    c.expect("a2 = softmax(z2)", a2.ravel(), [1.0, 6.91440011e-13], 1e-20 + 1e-8)
    c.expect("a2[1]", a2[0, 1], 6.91440011e-13, 1e-20)
    c.expect("loss", value, 28.0 + np.log1p(np.exp(-28.0)))
    c.expect("z2.grad", tr[2].y_bar.ravel(), [1.0, -1.0], 1e-12)
    c.expect("a1.grad", tr[1].y_bar.ravel(), [2.0, 2.0, 2.0, 2.0], 1e-11)
    sgd = optax.sgd(0.1)
    updates, _ = sgd.update(grads, sgd.init(params), params)
    new = optax.apply_updates(params, updates)
    c.expect("W1n", new[0]["w"], [[0.4, -0.6, -1.0, 0.0], [-2.8, -1.8, 0.0, -1.0]], 1e-11)
    c.expect("W2n", new[2]["w"], [[0.8, -0.8], [-0.3, 0.3], [1.0, -1.0], [1.0, -1.0]], 1e-11)
    c.expect("w10n", new[0]["b"], [-1.2, -1.2, -1.0, -1.0], 1e-11)
    c.expect("w20n", new[2]["b"], [-0.1, 2.1], 1e-11)
    _grad_agrees_with_reference(c, "jax.grad check", model, losses.softmax_cross_entropy, params, x, label, grads)


# --------------------------------------------------------------------------------------
def seed002(c: Checker) -> None:
    """Seed 002, appendix A: a 2-3-2-1 network with identity activations, eta = 4."""
    c.say("== seed 002 appendix A: identity activations, MSE, eta = 4 ==")
    c.say("   As extracted, X's second row (1, 2) and W[1]'s last row (1, 0, 0) contradict the printed")
    c.say("   Z[1]; the values consistent with every printed intermediate (Z[1], dJ/dW[1], dJ/dA[0])")
    c.say("   are X row 2 = (1, 3) and W[1] row 4 = (1, 1, 0), used here.")
    X = jnp.array([[1.0, 2.0], [1.0, 3.0], [2.0, 2.0], [2.0, 3.0]])
    Y = jnp.array([[1.0], [1.0], [2.0], [2.0]])
    # The seed's augmented matrices: row 0 carries the bias feature, column 0 the bias.
    W1 = np.array([[1.0, 0, 0], [0, 0, 1], [0, 1, 1], [1, 1, 0]])
    W2 = np.array([[1.0, 0, 0, 0], [1, 1, 0, 1], [-1, 1, 2, -2]])
    W3 = np.array([[1.0, 0, 0], [0, 1, -1]])

    def unaugment(W):
        return _linear(W[1:, 1:], W[1:, 0])

    params = (unaugment(W1), (), unaugment(W2), (), unaugment(W3), ())
    model = nn.serial(nn.Linear(3), nn.Identity(), nn.Linear(2), nn.Identity(), nn.Linear(1), nn.Identity())

    c.say("-- forward (each printed Z[l] without its bias row, transposed to rows = samples)")
    _, _, tr = backprop.value_and_grad(model, losses.mse, trace=True)(params, X, Y)
    c.expect("Z[1]", tr[0].y, np.array([[2, 3, 2, 3], [3, 4, 4, 5], [2, 2, 3, 3]]).T)
    c.expect("Z[2]", tr[2].y, np.array([[5, 6, 6, 7], [3, 6, 3, 6]]).T)
    c.expect("Z[3] = Y_hat", tr[4].y, np.array([[2, 0, 3, 1]]).T)
    c.expect("J (eq. 4.1)", losses.mse(tr[5].y, Y), 1.0)

    c.say("-- backward. The printed gradients start from (1/4)(Y_hat - Y), which is the gradient")
    c.say("   of (1/2) MSE, not the (2/m)(Y_hat - Y) = (1/2)(Y_hat - Y) of the seed's own eq. (4.2).")
    half_mse = losses.scaled(losses.mse, 0.5)
    _, grads, tr = backprop.value_and_grad(model, half_mse, trace=True)(params, X, Y)
    q = 0.25
    c.expect("dJ/dA[3]", tr[5].y_bar, q * np.array([[1, -1, 1, -1]]).T)
    c.expect("dJ/dW[3] (w)", grads[4]["w"], q * np.array([[-2], [-6]]))
    c.expect("dJ/dW[3] (b)", grads[4]["b"], [0.0])
    c.expect("dJ/dA[2]", tr[4].x_bar, q * np.array([[1, -1, 1, -1], [-1, 1, -1, 1]]).T)
    c.expect("dJ/dW[2] (w)", grads[2]["w"], q * np.array([[-2, 2], [-2, 2], [0, 0]]))
    c.expect("dJ/dW[2] (b)", grads[2]["b"], [0.0, 0.0])
    c.expect("dJ/dA[1]", tr[2].x_bar, q * np.array([[0, 0, 0, 0], [-2, 2, -2, 2], [3, -3, 3, -3]]).T)
    c.expect("dJ/dW[1] (w)", grads[0]["w"], q * np.array([[0, 0, 0], [0, 4, -6]]))
    c.expect("dJ/dW[1] (b)", grads[0]["b"], [0.0, 0.0, 0.0])
    c.expect("dJ/dA[0]", tr[0].x_bar, q * np.array([[3, -3, 3, -3], [1, -1, 1, -1], [-2, 2, -2, 2]])[1:].T)
    _grad_agrees_with_reference(c, "jax.grad check", model, half_mse, params, X, Y, grads)
    _, true_grads = backprop.value_and_grad(model, losses.mse)(params, X, Y)
    c.expect("MSE grads = 2x", true_grads[0]["w"], 2 * grads[0]["w"])

    c.say("-- SGD step with eta = 4 (on the printed, 1/2 MSE, gradients)")
    new = jax.tree_util.tree_map(lambda p, g: p - 4.0 * g, params, grads)
    c.expect("W[3] new (w)", new[4]["w"], [[3.0], [5.0]])
    c.expect("W[2] new (w)", new[2]["w"], np.array([[3, 2, 1], [-1, 0, -2]]).T)
    c.expect("W[2] new (b)", new[2]["b"], [1.0, -1.0])
    c.say("   W[1]'s last row is printed as (1, 0, 6) from the mis-extracted W[1]; with the")
    c.say("   consistent W[1] it is (1, 1, 6).")
    c.expect("W[1] new (w)", new[0]["w"], np.array([[0, 1], [1, -3], [1, 6]]).T)
    c.expect("W[1] new (b)", new[0]["b"], [0.0, 0.0, 1.0])

    c.say("-- eq. (4.8): the softmax cross-entropy gradient is (S - Y)/m, not S - Y/m")
    rng = np.random.default_rng(2)
    logits = jnp.asarray(rng.normal(size=(3, 4)))
    labels = jnp.array([0, 3, 1])
    S, onehot, m = ops.softmax(logits), jax.nn.one_hot(labels, 4), 3
    with reference_mode():
        exact = jax.grad(losses.softmax_cross_entropy)(logits, labels)
    c.expect("(S - Y)/m", (S - onehot) / m, exact)
    c.differs("S - Y/m", exact, S - onehot / m)
    c.expect("manual rule", jax.grad(losses.softmax_cross_entropy)(logits, labels), exact)


# --------------------------------------------------------------------------------------
def seed003(c: Checker) -> None:
    """Seed 003: Jacobians of W1 x, W2 x, their sum and composition; 3ReLU; tanh/sigmoid."""
    c.say("== seed 003: Jacobians from the manual VJPs (reverse mode, one VJP per output) ==")
    W1 = jnp.array([[2.0, -1.0, 0.5], [0.5, 3.0, -2.0], [1.0, 0.0, 4.0]])
    W2 = jnp.array([[1.0, 4.0, 0.0], [-2.0, 0.5, 1.0], [0.0, 1.0, -1.0]])
    x = jnp.array([0.3, -0.7, 1.1])
    zero = jnp.zeros(3)

    def f(x):  # the seed's f(x) = W1 x; manualgrad's linear is x @ w + b, so w = W1.T
        return ops.linear(x, W1.T, zero)

    def g(x):
        return ops.linear(x, W2.T, zero)

    cases = [
        ("J f = W1", f, W1),
        ("J g = W2", g, W2),
        ("J (f + g) = W1+W2", lambda x: f(x) + g(x), W1 + W2),
        ("J g(f) = W2 W1", lambda x: g(f(x)), W2 @ W1),
        ("W1=W2: J(f+f) = 2W", lambda x: f(x) + f(x), 2 * W1),
        ("W1=W2: J f(f) = W^2", lambda x: f(f(x)), W1 @ W1),
    ]
    for label, fn, want in cases:
        c.expect(label, check.jacobian(fn)(x), want)
        if not check.check_jacobian(fn, x).passed:
            c.failures.append(label + " vs jax.jacrev")

    s = jnp.array([0.5, -1.0, 2.0])
    c.expect("J 3ReLU = diag", check.jacobian(lambda s: ops.scaled_relu(s, 3.0))(s), np.diag([3.0, 0.0, 3.0]))
    c.expect("J tanh", check.jacobian(ops.tanh)(s), np.diag(1 - np.tanh(s) ** 2))
    y = 1 / (1 + np.exp(-s))
    c.expect("J sigmoid", check.jacobian(ops.sigmoid)(s), np.diag(y * (1 - y)))
    c.say("-- 1.3(c): dC/dy_hat = (1 - y)/(1 - y_hat) - y/y_hat; times dy_hat/ds = y_hat(1 - y_hat) it is")
    c.say("   y_hat - y, the fused binary cross-entropy gradient (1.3(b) writes -y_hat/y_hat + ... by mistake).")
    t = jnp.array([1.0, 0.0, 1.0])
    grad = jax.grad(losses.binary_cross_entropy_with_logits)(s, t) * s.size
    c.expect("dC/ds", grad, ((1 - t) / (1 - y) - t / y) * y * (1 - y))


# --------------------------------------------------------------------------------------
def seed004(c: Checker) -> None:
    """Seed 004's exercise: Y = X W, f = Y^2 elementwise, L = sum f."""
    c.say("== seed 004: affine -> square -> sum, the ops' own fwd/bwd rules ==")
    X = jnp.array([[0.0, 1.0], [2.0, 3.0]])
    W = jnp.ones((2, 2))
    b = jnp.zeros(2)
    Y, lin_res = ops.linear.fwd(X, W, b)
    F, sq_res = ops.square.fwd(Y)
    L = jnp.sum(F)
    c.expect("Y = XW", Y, [[1, 1], [5, 5]])
    c.expect("f(Y) = Y^2", F, [[1, 1], [25, 25]])
    c.expect("(a) L", L, 52.0)
    dF = jnp.ones_like(F)  # d(sum f)/df
    c.expect("(b) dL/df", dF, [[1, 1], [1, 1]])
    (dY,) = ops.square.bwd(sq_res, dF)
    c.expect("(c) dL/dY", dY, [[2, 2], [10, 10]])
    dX, dW, db = ops.linear.bwd(lin_res, dY)
    c.expect("(d) dL/dX", dX, [[4, 4], [20, 20]])
    c.expect("(e) dL/dW", dW, [[20, 20], [32, 32]])

    def ref(X, W):
        return jnp.sum(ops.square.reference(ops.linear.reference(X, W, b)))

    rX, rW = jax.grad(ref, argnums=(0, 1))(X, W)
    c.expect("jax.grad dL/dX", rX, dX)
    c.expect("jax.grad dL/dW", rW, dW)


EXAMPLES: dict[str, Callable[[Checker], None]] = {
    "000": seed000,
    "001": seed001,
    "002": seed002,
    "003": seed003,
    "004": seed004,
}


def main(argv: list[str] | None = None) -> int:
    """Replay the worked examples named in ``argv`` (all of them without), printing each value.

    Args:
        argv: seed ids such as ``["002", "004"]`` (default: ``sys.argv[1:]``).

    Returns:
        The exit status: 0 when every value agrees, 1 when any differs (an unknown id exits with 2).
    """
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    # No ``choices=``: Python 3.11's argparse refuses an empty ``nargs="*"`` list against them.
    p.add_argument("examples", nargs="*", metavar="ID", help=f"seeds to replay, from {', '.join(EXAMPLES)} (default: all)")
    names = p.parse_args(argv).examples or list(EXAMPLES)
    unknown = [n for n in names if n not in EXAMPLES]
    if unknown:
        p.error(f"argument ID: invalid choice(s) {', '.join(map(repr, unknown))} (choose from {', '.join(EXAMPLES)})")
    summary = []
    for name in names:
        c = Checker()
        EXAMPLES[name](c)
        summary.append((name, c.count, c.failures))
        print()
    print("summary")
    for name, count, failures in summary:
        status = "ok" if not failures else f"{len(failures)} MISMATCH: {', '.join(failures)}"
        print(f"  seed {name}: {count} values checked, {status}")
    return 1 if any(f for _, _, f in summary) else 0


if __name__ == "__main__":
    sys.exit(main())
