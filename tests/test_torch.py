"""PyTorch agreement by gradients: one batch, every parameter, float64, the same model in both.

PyTorch is an optional extra; without it these tests are skipped. A training run's parameter
gap mixes gradient errors with the trajectory's own sensitivity (see experiments.compare_torch);
a single batch's gradients in float64 leave no room for either, so they must agree to rounding.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from manualgrad import losses, nn, train

torch = pytest.importorskip("torch", reason="PyTorch (optional extra) is not installed")

RTOL = 1e-12  # float64: measured largest difference 3.9e-16 of the largest |gradient| entry


@pytest.fixture(autouse=True)
def float64():
    """float64 in JAX for the whole test (tests/conftest.py enables it globally today)."""
    with jax.enable_x64(True):
        yield


def torch_linear(p):
    """A float64 torch Linear with the weights of manualgrad's ``{"w": (d_in, d_out), "b"}``."""
    w = np.asarray(p["w"], np.float64)
    lin = torch.nn.Linear(*w.shape, dtype=torch.float64)
    with torch.no_grad():
        lin.weight.copy_(torch.tensor(w.T))
        lin.bias.copy_(torch.tensor(np.asarray(p["b"], np.float64)))
    return lin


def grads_of(linears):
    """Each torch Linear's gradient in manualgrad's layout: ``{"b", "w" = weight.grad.T}``."""
    return [{"b": lin.bias.grad.numpy(), "w": lin.weight.grad.numpy().T} for lin in linears]


def linear_params(params):
    """The Linear layers' params of a (nested) serial/fanout model, in order."""
    return [p for p in jax.tree_util.tree_leaves(params, is_leaf=lambda p: isinstance(p, dict)) if isinstance(p, dict)]


def assert_close(ours, theirs, what):
    for i, (a, b) in enumerate(zip(ours, theirs, strict=True)):
        for k in ("w", "b"):
            np.testing.assert_allclose(
                np.asarray(a[k]), b[k], rtol=RTOL, atol=RTOL * np.max(np.abs(b[k])), err_msg=f"{what}: Linear {i} {k}"
            )


def init(model, shape, seed=0):
    _, params = model.init(jax.random.PRNGKey(seed), shape)
    return jax.tree_util.tree_map(lambda a: jnp.asarray(a, jnp.float64), params)


@pytest.mark.parametrize("grad", train.GRADS)
def test_mlp_gradients_equal_torch_autograd(grad):
    model = nn.serial(nn.Linear(16), nn.ReLU(), nn.Linear(12), nn.ReLU(), nn.Linear(10))
    params = init(model, (-1, 20))
    rng = np.random.default_rng(0)
    x, y = rng.normal(size=(32, 20)), rng.integers(0, 10, 32)

    loss, grads = train.loss_and_grad(model, losses.softmax_cross_entropy, grad)(params, jnp.asarray(x), jnp.asarray(y))

    linears = [torch_linear(p) for p in linear_params(params)]
    net = torch.nn.Sequential(linears[0], torch.nn.ReLU(), linears[1], torch.nn.ReLU(), linears[2])
    t_loss = torch.nn.functional.cross_entropy(net(torch.tensor(x)), torch.tensor(y))
    t_loss.backward()

    assert jnp.result_type(loss) == jnp.float64
    np.testing.assert_allclose(float(loss), t_loss.item(), rtol=RTOL)
    assert_close(linear_params(grads), grads_of(linears), f"grad={grad}")


@pytest.mark.parametrize("grad", train.GRADS)
def test_two_head_gradients_equal_torch_autograd(grad):
    """A shared trunk under two heads: the trunk's gradient is the sum of both heads' (fanout)."""
    model = nn.serial(nn.Linear(16), nn.ReLU(), nn.fanout(nn.Linear(5), nn.serial(nn.Linear(8), nn.ReLU(), nn.Linear(2))))
    loss_fn = losses.multitask(losses.softmax_cross_entropy, losses.mse)
    params = init(model, (-1, 12), seed=1)
    rng = np.random.default_rng(1)
    x, labels, targets = rng.normal(size=(24, 12)), rng.integers(0, 5, 24), rng.normal(size=(24, 2))

    loss, grads = train.loss_and_grad(model, loss_fn, grad)(params, jnp.asarray(x), (jnp.asarray(labels), jnp.asarray(targets)))

    trunk, head_a, head_b1, head_b2 = (torch_linear(p) for p in linear_params(params))
    h = torch.relu(trunk(torch.tensor(x)))
    t_loss = torch.nn.functional.cross_entropy(head_a(h), torch.tensor(labels)) + torch.nn.functional.mse_loss(
        head_b2(torch.relu(head_b1(h))), torch.tensor(targets)
    )
    t_loss.backward()

    np.testing.assert_allclose(float(loss), t_loss.item(), rtol=RTOL)
    assert_close(linear_params(grads), grads_of([trunk, head_a, head_b1, head_b2]), f"grad={grad}")


@pytest.mark.parametrize("grad", train.GRADS)
@pytest.mark.parametrize("name", ["mnist", "fashion_mnist"])
def test_cnn_gradients_equal_torch_autograd(name, grad):
    """The experiments' CNNs (fashion_mnist's with batch norm in training mode; dropout at rate 0)
    against compare_torch's twin: every parameter's gradient, and the running statistics.

    On 12x12 images to stay quick (the layers do not depend on the size). Measured, relative to
    each parameter's largest |gradient| entry: 6.9e-16 (mnist), 3.0e-15 (fashion_mnist); the
    running statistics 2.2e-16 absolute."""
    from experiments import common, compare_torch

    task = common.task_for(name, "cnn")
    model = compare_torch.jax_model(task)
    params = init(model, (1, 12, 12, 1), seed=2)
    state = jax.tree_util.tree_map(lambda a: jnp.asarray(a, jnp.float64), nn.init_state(model, (8, 12, 12, 1))[1])
    rng = np.random.default_rng(2)
    x, y = rng.normal(size=(8, 12, 12, 1)), rng.integers(0, 10, 8)

    run = jax.jit(lambda p, x, y, s: train.loss_and_grad(model, losses.softmax_cross_entropy, grad)(p, x, y, state=s))
    loss, grads, new_state = run(params, jnp.asarray(x), jnp.asarray(y), state)

    net = compare_torch.torch_cnn(task, jax.device_get(params)).train()
    t_loss = torch.nn.functional.cross_entropy(net(compare_torch.torch_inputs(task, x)), torch.tensor(y))
    t_loss.backward()

    assert jnp.result_type(loss) == jnp.float64
    np.testing.assert_allclose(float(loss), t_loss.item(), rtol=RTOL)
    ours, theirs = jax.tree_util.tree_leaves(grads), compare_torch.torch_params(net, grad=True)
    assert len(ours) == len(theirs) == (12 if task.cnn_regularised else 8)
    # The convolutions' biases before batch norm (leaves 0 and 4) have gradient 0 exactly (the
    # normalisation removes the mean): both sides are rounding noise, held to the largest entry.
    largest = max(np.max(np.abs(b)) for b in theirs)
    for i, (a, b) in enumerate(zip(ours, theirs, strict=True)):
        assert a.shape == b.shape, f"leaf {i}"
        scale = largest if task.cnn_regularised and i in (0, 4) else np.max(np.abs(b))
        np.testing.assert_allclose(np.asarray(a), b, rtol=RTOL, atol=RTOL * scale, err_msg=f"grad={grad}: leaf {i}")
    ours, theirs = jax.tree_util.tree_leaves(new_state), compare_torch.torch_state(net)
    assert len(ours) == len(theirs) == (4 if task.cnn_regularised else 0)
    for a, b in zip(ours, theirs, strict=True):
        np.testing.assert_allclose(np.asarray(a), b, rtol=RTOL, atol=RTOL)


def test_sgd_with_clipping_and_weight_decay_equals_torch():
    """``sgd_with_clipping(lr, max_norm, momentum, weight_decay)`` against ``clip_grad_norm_`` then
    ``torch.optim.SGD(lr, momentum, weight_decay)``: four steps, one clipped, float64. PyTorch divides
    by ``norm + 1e-6`` when it clips, so the clipped step differs by that (a relative 1e-6 / norm)."""
    lr, max_norm, mu, wd = 0.1, 2.0, 0.9, 0.01
    rng = np.random.default_rng(0)
    params = {"w": rng.normal(size=(3, 2)), "b": rng.normal(size=2)}
    grads = [{k: rng.normal(size=v.shape) * s for k, v in params.items()} for s in (0.1, 5.0, 0.2, 0.3)]
    opt = train.sgd_with_clipping(lr, max_norm, mu, wd)
    ours = jax.tree_util.tree_map(jnp.asarray, params)
    state = opt.init(ours)
    theirs = {k: torch.tensor(v, requires_grad=True) for k, v in params.items()}
    t_opt = torch.optim.SGD(list(theirs.values()), lr=lr, momentum=mu, weight_decay=wd)
    for g in grads:
        u, state = opt.update(jax.tree_util.tree_map(jnp.asarray, g), state, ours)
        ours = jax.tree_util.tree_map(jnp.add, ours, u)
        for k, t in theirs.items():
            t.grad = torch.tensor(g[k])
        torch.nn.utils.clip_grad_norm_(list(theirs.values()), max_norm)
        t_opt.step()
    for k, t in theirs.items():
        np.testing.assert_allclose(np.asarray(ours[k]), t.detach().numpy(), rtol=1e-6, atol=1e-7)
    # without weight decay the parameters end elsewhere: the decay term is what was compared
    plain = train.sgd_with_clipping(lr, max_norm, mu)
    p = jax.tree_util.tree_map(jnp.asarray, params)
    s = plain.init(p)
    for g in grads:
        u, s = plain.update(jax.tree_util.tree_map(jnp.asarray, g), s, p)
        p = jax.tree_util.tree_map(jnp.add, p, u)
    assert not np.allclose(np.asarray(p["w"]), theirs["w"].detach().numpy(), rtol=1e-4)


@pytest.mark.parametrize("positions, grad", [("learned", g) for g in train.GRADS] + [("sinusoidal", "manual")])
def test_transformer_gradients_equal_torch_autograd(positions, grad):
    """TransformerLM against its PyTorch twin (experiments.torch_transformer: nn.Embedding, LayerNorm,
    Linear, F.scaled_dot_product_attention(is_causal=True), exact GELU), one batch in float64: the
    loss and every parameter's gradient. Measured: loss 4.4e-16 apart, gradients within 1e-15 of
    each parameter's largest entry. The key projection's bias gets gradient 0 exactly (a constant
    added to every score of a row leaves its softmax unchanged): both sides are noise of 1e-17,
    held to the largest gradient entry."""
    from experiments.torch_transformer import torch_grads, torch_lm

    model = nn.TransformerLM(13, 10, width=16, depth=2, heads=4, positions=positions)
    params = init(model, (1, 10), seed=3)
    rng = np.random.default_rng(3)
    x, y = rng.integers(0, 13, (3, 10)), rng.integers(0, 13, (3, 10))
    loss, grads = jax.jit(lambda p, x, y: train.loss_and_grad(model, losses.softmax_cross_entropy, grad)(p, x, y))(
        params, jnp.asarray(x), jnp.asarray(y))

    net = torch_lm(jax.device_get(params), heads=4, positions=positions)
    t_loss = torch.nn.functional.cross_entropy(net(torch.tensor(x)).reshape(-1, 13), torch.tensor(y).reshape(-1))
    t_loss.backward()
    np.testing.assert_allclose(float(loss), t_loss.item(), rtol=1e-10)
    theirs = torch_grads(jax.device_get(params), net, positions)
    largest = max(np.max(np.abs(b)) for b in jax.tree_util.tree_leaves(theirs))
    pairs = zip(jax.tree_util.tree_leaves_with_path(grads), jax.tree_util.tree_leaves(theirs), strict=True)
    for n, ((path, a), b) in enumerate(pairs, 1):
        key_bias = jax.tree_util.keystr(path).endswith("['k']['b']")
        np.testing.assert_allclose(np.asarray(a), b, rtol=1e-10, atol=1e-10 * (largest if key_bias else np.max(np.abs(b))),
                                   err_msg=f"grad={grad}: {jax.tree_util.keystr(path)}")
    assert n == (38 if positions == "learned" else 37)  # every leaf compared
