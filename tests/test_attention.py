"""ops.attention: the memory its backward needs, fully masked rows, bad input."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from manualgrad import ops, reference_mode


def _qkv(t, d=16, heads=2, seed=0):
    rng = np.random.default_rng(seed)
    return tuple(jnp.asarray(rng.standard_normal((1, heads, t, d)), jnp.float32) for _ in range(4))


def _temp_bytes(reference: bool, t: int, block: int) -> int:
    q, k, v, g = _qkv(t)

    def step(q, k, v):
        with reference_mode(reference):
            return jax.grad(lambda *a: jnp.sum(ops.attention(*a, causal=True, block=block) * g), argnums=(0, 1, 2))(q, k, v)

    return jax.jit(step).lower(q, k, v).compile().memory_analysis().temp_size_in_bytes


def test_the_backward_keeps_no_t_by_t_matrix():
    # jax.grad of plain attention keeps (heads, T, T) probabilities; the hand-written rules keep
    # O(T) per row and work on (heads, block, T) at a time. Measured at T=512, block 64, d=16:
    # 0.94 MB against 8.4 MB; at T=2048, block 128 (d=64, 4 heads): 17 MB against 336 MB.
    manual, reference = _temp_bytes(False, 512, 64), _temp_bytes(True, 512, 64)
    t_by_t = 2 * 512 * 512 * 4  # one float32 (heads, T, T) array
    assert reference >= t_by_t
    assert manual < t_by_t / 2 and manual < reference / 4, (manual, reference)


def test_two_unrolled_blocks_stay_below_the_reference():
    # T = 2 x block runs unrolled (ops.attention.UNROLL): measured 1.6 MB against 2.1 MB (1.2 MB
    # before the backward formed its blocks keys by queries, 11-15% faster)
    from manualgrad.ops.attention import UNROLL

    assert UNROLL == 2
    manual, reference = _temp_bytes(False, 256, 128), _temp_bytes(True, 256, 128)
    assert manual < 0.85 * reference, (manual, reference)


def test_a_row_that_attends_nothing_gives_zeros_and_zero_gradients():
    q, k, v, g = (a[0, 0, :4] for a in _qkv(4, d=3))
    mask = jnp.ones((4, 4), bool).at[2].set(False)
    for block in (1, 3, 128):
        y, pullback = jax.vjp(lambda q, k, v: ops.attention(q, k, v, mask, block=block), q, k, v)
        np.testing.assert_array_equal(y[2], 0.0)
        q_bar, k_bar, v_bar = pullback(g.at[2].set(1.0))
        np.testing.assert_array_equal(q_bar[2], 0.0)
        assert np.all(np.isfinite(k_bar)) and np.all(np.isfinite(v_bar))
        # the other rows are ordinary softmax attention
        s = (q @ k.T) / np.sqrt(3)
        rows = np.array([0, 1, 3])
        np.testing.assert_allclose(y[rows], (jax.nn.softmax(s, axis=-1) @ v)[rows], rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize(
    "args, kwargs, message",
    [
        ((jnp.zeros((3, 4)), jnp.zeros((5, 3)), jnp.zeros((5, 2))), {}, r"q.shape=\(3, 4\) and k.shape=\(5, 3\) must have the same feature size"),
        ((jnp.zeros((3, 4)), jnp.zeros((5, 4)), jnp.zeros((6, 2))), {}, r"k.shape=\(5, 4\) and v.shape=\(6, 2\) must have the same length T_k"),
        ((jnp.zeros((3, 4)), jnp.zeros((5, 4)), jnp.zeros((5, 2)), jnp.ones((3, 4), bool)), {},
         r"mask.shape=\(3, 4\) does not broadcast to \(..., T_q, T_k\)=\(3, 5\)"),
        ((jnp.zeros((3, 4)), jnp.zeros((5, 4)), jnp.zeros((5, 2)), jnp.ones((3, 5))), {}, r"mask must be boolean"),
        ((jnp.zeros((3, 4)), jnp.zeros((5, 4)), jnp.zeros((5, 2))), {"block": 0}, r"block must be a positive integer, got 0"),
        ((jnp.zeros((2, 3, 4)), jnp.zeros((3, 5, 4)), jnp.zeros((3, 5, 2))), {}, r"leading axes differ"),
    ],
    ids=["qk-features", "kv-length", "mask-broadcast", "mask-dtype", "block", "leading-axes"],
)
@pytest.mark.parametrize("use_jit", [False, True], ids=["eager", "jit"])
def test_bad_input_names_the_op_and_the_shapes(args, kwargs, message, use_jit):
    f = lambda *a: ops.attention(*a, **kwargs)  # noqa: E731
    with pytest.raises(ValueError, match="manualgrad.ops.attention: .*" + message):
        (jax.jit(f) if use_jit else f)(*args)


def test_a_short_causal_sequence_runs_as_two_blocks_the_first_skipping_half_the_keys():
    # at T = 128 with block 128, one block would multiply every query with every key; two blocks
    # of 64 skip the 64 x 64 corner that the mask removes (measured: 12.5 against 16-18 ms for
    # forward + backward at the transformer's shapes)
    from manualgrad.ops.attention import _spans

    assert _spans(128, 128, 128, causal=True) == [(0, 64, 64), (64, 128, 128)]
    assert _spans(5, 4, 128, causal=True) == [(0, 3, 3), (3, 5, 4)]
    assert _spans(128, 128, 128, causal=False) == [(0, 128, 128)]  # nothing to skip: one block


def test_attention_in_groups_of_leading_rows_passes_every_check(monkeypatch):
    """On CPU the leading (batch x head) rows run in groups whose largest block of scores fits
    GROUP_BYTES (1 MiB): shrunk here so that tiny examples run in groups, and every kind of check
    the op registry runs, on these examples: a mask shared by every row, a mask per batch entry
    split with the rows (its head axis broadcast), the loop over query blocks inside each group;
    then the per-batch mask again with two rows a group."""
    from manualgrad import check
    from manualgrad.core import Example

    attention_module = __import__("manualgrad.ops.attention", fromlist=["_groups"])
    monkeypatch.setattr(attention_module, "GROUP_BYTES", 80)
    q = np.zeros((2, 3, 5, 4))
    assert attention_module._groups(q, q, True, 128) == 6  # the largest block, 2 x 5 scores in float64: a row a group
    assert attention_module._groups(q[..., :2, :], q[..., :2, :], False, 128) == 3  # 2 x 2 a row: 2 rows a group

    def examples(rng):
        def qkv(lead, tq, tk, d=3):
            return rng.normal(size=(*lead, tq, d)), rng.normal(size=(*lead, tk, d)), rng.normal(size=(*lead, tk, 2))

        per_batch = rng.random((2, 1, 5, 4)) < 0.7
        per_batch[1, 0, 2] = False  # a row that attends nothing, in the second batch entry only
        return [
            Example(qkv((2, 3), 5, 5), {"causal": True}),
            Example((*qkv((2, 3), 5, 4), per_batch), {"scale": 0.5}),
            Example((*qkv((4,), 5, 4), np.tril(np.ones((5, 4), bool))), {"block": 2}),
        ]

    reports = check.check_op(ops.attention, examples, dtypes=(jnp.float64,))
    assert reports and all(r.passed for r in reports), [r for r in reports if not r.passed]
    monkeypatch.setattr(attention_module, "GROUP_BYTES", 2 * 5 * 4 * 8)  # 5 x 4 scores a row: 2 rows a group
    assert attention_module._groups(q, q[..., :4, :], False, 128) == 3
    reports = check.check_op(ops.attention, lambda rng: examples(rng)[1:2], dtypes=(jnp.float64,))
    assert reports and all(r.passed for r in reports), [r for r in reports if not r.passed]


def test_groups_of_rows_give_the_ungrouped_values_and_less_memory(monkeypatch):
    """The groups change where the work runs, not what it computes (float32, T = 256, 16 rows:
    2 groups of 8), and hold one group's scores instead of all."""
    attention_module = __import__("manualgrad.ops.attention", fromlist=["_groups"])
    q, k, v, g = (jnp.asarray(np.random.default_rng(i).standard_normal((4, 4, 256, 8)), jnp.float32) for i in range(4))

    def run():
        f = lambda q, k, v: jax.vjp(lambda *a: ops.attention(*a, causal=True), q, k, v)[1](g)  # noqa: E731
        return jax.jit(f)(q, k, v), jax.jit(f).lower(q, k, v).compile().memory_analysis().temp_size_in_bytes

    assert attention_module._groups(q, k, True, 128) == 2  # 16 rows x 128 x 256 x 4 B = 2 MiB of scores
    grouped, grouped_bytes = run()
    monkeypatch.setattr(attention_module, "GROUP_BYTES", 1 << 40)
    whole, whole_bytes = run()
    for a, b in zip(grouped, whole):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
    assert grouped_bytes < 0.7 * whole_bytes, (grouped_bytes, whole_bytes)
