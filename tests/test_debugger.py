"""The gradient debugger: every planted mistake gets exactly its diagnosis, says where, draws."""

import functools
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from manualgrad import check, defop
from manualgrad.check import cli, plot
from manualgrad.core import REGISTRY, Example
from manualgrad.testing import assert_op_correct, assert_rule_correct
from tests.conftest import ROOT

RNG = np.random.default_rng(0)


# -- five rules: elementwise, linear, a matmul of square operands, a loss with a constant
# argument, a rule with a static argument; each with its correct backward and planted ones ----
def cube(x):
    return x**3


def cube_fwd(x):
    return x**3, x


CUBE = {
    "correct": lambda x, g: (3 * x**2 * g,),
    "scale": lambda x, g: (3.001 * x**2 * g,),  # the student's 3.001
    "sign": lambda x, g: (-3 * x**2 * g,),
    "zero": lambda x, g: (jnp.where(x > 0, 3 * x**2 * g, 0),),  # a branch lost
    "transpose": lambda x, g: ((3 * x**2 * g).T,),
    "cotangent": lambda x, g: (3 * x**2,),  # g forgotten
    "nonfinite": lambda x, g: ((3 * x**2 * g).at[0, 1].set(jnp.nan),),
    "unexplained": lambda x, g: (2 * x * g,),  # the power rule half applied
}


def linear(x, w, b):
    return x @ w + b


def linear_fwd(x, w, b):
    return x @ w + b, (x, w)


LINEAR = {
    "correct": lambda r, g: (g @ r[1].T, r[0].T @ g, g.sum(0)),
    "scale": lambda r, g: (g @ r[1].T, r[0].T @ g, 2 * g.sum(0)),
    "sign": lambda r, g: (-(g @ r[1].T), r[0].T @ g, g.sum(0)),
    "zero": lambda r, g: (g @ r[1].T, r[0].T @ g, jnp.zeros(g.shape[1], g.dtype)),
    "transpose": lambda r, g: (g @ r[1].T, g.T @ r[0], g.sum(0)),  # (5, 3) for w (3, 5)
    "cotangent": lambda r, g: (g @ r[1].T, r[0].T @ g, jnp.full(g.shape[1], g.shape[0], g.dtype)),
    "nonfinite": lambda r, g: (g @ r[1].T, (r[0].T @ g).at[1, 2].set(jnp.inf), g.sum(0)),
    "unexplained": lambda r, g: (g @ r[1].T, r[0][::-1].T @ g, g.sum(0)),
}


def matmul(a, b):
    return a @ b


MATMUL = {
    "correct": lambda r, g: (g @ r[1].T, r[0].T @ g),
    "scale": lambda r, g: (0.5 * g @ r[1].T, r[0].T @ g),
    "transpose": lambda r, g: (g @ r[1].T, g.T @ r[0]),  # square: the shapes agree
    "unexplained": lambda r, g: (g @ r[1], r[0].T @ g),
}


def mse(pred, target):
    return jnp.mean((pred - jax.lax.stop_gradient(target)) ** 2)


def mse_fwd(pred, target):
    d = pred - target
    return jnp.mean(d**2), d


MSE = {
    "correct": lambda d, g: (2 * d * g / d.size, None),
    "scale": lambda d, g: (2 * d * g, None),  # the mean's 1/n forgotten
    "sign": lambda d, g: (-2 * d * g / d.size, None),
    "zero": lambda d, g: (jnp.where(d > 0, 2 * d * g / d.size, 0), None),
    "transpose": lambda d, g: ((2 * d * g / d.size).T, None),
    "cotangent": lambda d, g: (2 * d / d.size, None),  # reference / g: a scale would fit too
    "nonfinite": lambda d, g: ((2 * d * g / d.size).at[2, 0].set(jnp.inf), None),
    "unexplained": lambda d, g: (2 * d**2 * g / d.size, None),
}


def softmax(x, axis):
    return jax.nn.softmax(x, axis=axis)


def softmax_fwd(x, axis):
    y = jax.nn.softmax(x, axis=axis)
    return y, y


def _softmax_bwd(y, g, axis, factor=1, ignore_sum=False):
    inner = jnp.sum(y if ignore_sum else g * y, axis=axis, keepdims=True)
    return (factor * y * (g - inner),)


SOFTMAX = {
    "correct": lambda y, g, axis: _softmax_bwd(y, g, axis),
    "scale": lambda y, g, axis: _softmax_bwd(y, g, axis, factor=2),
    "sign": lambda y, g, axis: _softmax_bwd(y, g, axis, factor=-1),
    "zero": lambda y, g, axis: (jnp.where(y > 0.3, _softmax_bwd(y, g, axis)[0], 0),),
    "transpose": lambda y, g, axis: (_softmax_bwd(y, g, axis)[0].T,),
    "cotangent": lambda y, g, axis: _softmax_bwd(y, g, axis, ignore_sum=True),  # sum(y) where sum(g y) belongs
    "nonfinite": lambda y, g, axis: (_softmax_bwd(y, g, axis)[0] / (y < y.max()),),  # 0/0 and x/0 at the maxima
    "unexplained": lambda y, g, axis: (y * g,),  # the sum term forgotten
}

X33 = RNG.normal(size=(3, 3))
RULES = {  # name: (reference, fwd, backwards, args, constant, static)
    "elementwise": (cube, cube_fwd, CUBE, (X33,), (), {}),
    "linear": (linear, linear_fwd, LINEAR, (RNG.normal(size=(4, 3)), RNG.normal(size=(3, 5)), RNG.normal(size=5)), (), {}),
    "matmul": (matmul, lambda a, b: (a @ b, (a, b)), MATMUL, (RNG.normal(size=(3, 3)), RNG.normal(size=(3, 3))), (), {}),
    "loss": (mse, mse_fwd, MSE, (RNG.normal(size=(3, 3)), RNG.normal(size=(3, 3))), ("target",), {}),
    "static": (softmax, softmax_fwd, SOFTMAX, (X33,), (), {"axis": 0}),
}
PLANTED = [(rule, word) for rule, spec in RULES.items() for word in spec[2] if word != "correct"]
# the j-th plant of a word runs in the (j mod 4)-th (dtype, jit) combination: each word, planted
# on four or five rules, meets float64 and float32, eager and jit
COMBOS = [(jnp.float64, False), (jnp.float32, True), (jnp.float32, False), (jnp.float64, True)]
COMBO = [COMBOS[[w for _, w in PLANTED[:n]].count(word) % 4] for n, (_, word) in enumerate(PLANTED)]


def make_op(rule, word):
    reference, fwd, backwards, args, constant, static = RULES[rule]
    op = defop(name=f"test_debugger.{rule}[{word}]", constant=constant, static=tuple(static))(reference)
    return op.defvjp(fwd, backwards[word]), args, static


def diagnoses(report):
    return {r.diagnosis.split()[0] for r in report.failed}


def test_the_table_plants_every_word_on_several_rules():
    for word in check.WORDS:
        assert sum(w == word for _, w in PLANTED) >= 4, word
    assert all(w in check.WORDS for _, w in PLANTED)


@pytest.mark.parametrize("n", range(len(PLANTED)), ids=[f"{r}-{w}" for r, w in PLANTED])
def test_a_planted_mistake_is_caught_fast_and_gets_exactly_its_word(n):
    """Fast mode first: it must fail, and its fallback is the full comparison (the default
    method's code), whose diagnosis must be exactly the planted word."""
    rule, word = PLANTED[n]
    op, args, static = make_op(rule, word)
    dtype, jit = COMBO[n]
    report = check.check_vjp(op, *check.cast(args, dtype), jit=jit, method="fast", **static)
    assert not report.passed and report.mode == ("vjp+jit" if jit else "vjp") + " (fast failed)"
    assert diagnoses(report) == {word}, f"{dtype.__name__} jit={jit}:\n{report}"
    text = str(report)
    assert text.splitlines()[1].split(": ", 1)[1].startswith(word), text  # the report leads with it
    for r in report.failed:
        assert r.diagnosis and (r.worst is not None or r.error), r


@pytest.mark.parametrize("rule", RULES)
def test_correct_rules_pass_without_a_diagnosis(rule):
    op, args, static = make_op(rule, "correct")
    for dtype, jit, method in [(jnp.float64, False, "reference"), (jnp.float32, True, "fast")]:
        report = check.check_vjp(op, *check.cast(args, dtype), jit=jit, method=method, **static)
        assert report.passed, str(report)
        assert all(r.diagnosis == "" and r.worst is None for r in report.rows)
    assert report.mode == "fast+jit"


def test_the_scale_names_its_constant_and_the_student_reads_words():
    op, args, _ = make_op("elementwise", "scale")
    row = check.check_vjp(op, *check.cast(args, jnp.float32)).failed[0]
    assert row.diagnosis.startswith("scale 1.000333 — x_bar is 1.000333 times the reference everywhere")
    op, args, _ = make_op("loss", "scale")
    assert check.check_vjp(op, *args).failed[0].diagnosis.startswith("scale 9 ")  # 1/n of 9 elements forgotten


def test_a_transposed_shape_is_a_transpose():
    op, args, _ = make_op("linear", "transpose")
    (row,) = check.check_vjp(op, *args).failed
    assert row.what == "w_bar#0" and "(5, 3)" in row.error and "axes 0 and 1 swapped" in row.diagnosis


@pytest.mark.parametrize("vmap", [False, True])
def test_worst_indexes_the_wrong_element(vmap):
    @defop(name="test_debugger.one_wrong")
    def one_wrong(x):
        return x**3

    one_wrong.defvjp(cube_fwd, lambda x, g: ((3 * x**2 * g).at[..., 1, 2].multiply(1.5),))
    x = RNG.uniform(1, 2, size=(3, 3, 4) if vmap else (3, 4))
    row = check.check_vjp(one_wrong, x, vmap=vmap).failed[0]
    assert len(row.worst.index) == x.ndim and row.worst.index[-2:] == (1, 2)
    assert row.worst.manual == pytest.approx(1.5 * row.worst.reference)
    assert row.reference[row.worst.index] == row.worst.reference and row.diagnosis.startswith("unexplained")


def test_check_rule_runs_every_check_on_an_unregistered_rule():
    wrong = check.check_rule(mse, mse_fwd, MSE["scale"], *RULES["loss"][3], constant=("target",), dtypes=(jnp.float32,))
    assert {r.mode for r in wrong} == {"vjp", "vjp+jit", "vjp+jit+vmap", "no-autodiff"}
    assert {d for r in wrong for d in diagnoses(r)} == {"scale"} and "tests.test_debugger.mse" not in REGISTRY


def test_a_wrong_shaped_cotangent_is_reported_by_every_check_not_raised():
    reference, fwd, rules, args, _, _ = RULES["linear"]
    reports = check.check_rule(reference, fwd, rules["transpose"], *args, dtypes=(jnp.float32,))
    assert {r.mode for r in reports} == {"vjp", "vjp+jit", "vjp+jit+vmap", "no-autodiff"}
    assert not any(r.passed for r in reports)
    (bwd,) = next(r for r in reports if r.mode == "no-autodiff").failed
    assert "w_bar.shape=(5, 3) for w.shape=(3, 5)" in bwd.error
    assert all("transpose" in diagnoses(r) for r in reports if r.mode != "no-autodiff")


def test_check_rule_refuses_bad_input_by_name():
    with pytest.raises(ValueError, match=r"check_rule: softmax takes 2 array arguments \('x', 'axis'\).*static"):
        check.check_rule(softmax, softmax_fwd, SOFTMAX["correct"], X33)
    with pytest.raises(ValueError, match=r"check_rule: constant/static names \['y'\]"):
        check.check_rule(cube, cube_fwd, CUBE["correct"], X33, constant=("y",))


def test_the_testing_helpers_fail_with_the_diagnosis():
    reports = assert_rule_correct(softmax, softmax_fwd, SOFTMAX["correct"], X33, static={"axis": 0}, dtypes=(jnp.float32,))
    assert len(reports) == 4 and all(r.passed for r in reports)
    op, args, _ = make_op("elementwise", "cotangent")
    with pytest.raises(AssertionError, match=r"^test_debugger.elementwise\[cotangent\]: x_bar#0: cotangent — x_bar does "
                       r"not scale with the output cotangent g(?s:.*)3 of 4 checks failed"):
        assert_op_correct(op, lambda rng: [Example(args)], dtypes=(jnp.float32,), fast=True)


def test_pictures_of_a_failed_report(tmp_path):
    pytest.importorskip("matplotlib")
    op, args, _ = make_op("matmul", "transpose")
    report = check.check_vjp(op, *args, cotangents=1)
    (path,) = report.plot(tmp_path)
    assert path.name == "test_debugger.matmul-transpose_vjp_float64_b_bar-0.png" and path.read_bytes()[:4] == b"\x89PNG"
    op, args, _ = make_op("elementwise", "zero")  # three axes: the slice through the worst element
    stacked = np.stack([args[0], args[0] + 1, args[0] - 1])
    (row, *_) = check.check_vjp(op, stacked, vmap=True).failed
    view, label = plot.worst_slice(row.manual, row.worst.index)
    assert view.shape == (3, 3) and label == f"[{row.worst.index[0]}, :, :]"
    np.testing.assert_array_equal(view, row.manual[row.worst.index[0]])
    with pytest.raises(ValueError, match="Row.plot: row 'forward' has no arrays"):
        report.rows[0].plot(tmp_path / "no.png")


BROKEN_MODULE = '''
from manualgrad import defop, Example

@defop(examples=lambda rng: [Example((rng.normal(size=(3, 2)),))])
def cube(x):
    return x ** 3

cube.defvjp(lambda x: (x ** 3, x), lambda x, g: (-3 * x ** 2 * g,))
'''


def test_the_cli_prints_diagnoses_pictures_and_one_line_per_op(tmp_path, monkeypatch, capsys):
    pytest.importorskip("matplotlib")
    (tmp_path / "broken_homework.py").write_text(BROKEN_MODULE)
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setattr(cli, "check_op", functools.partial(check.check_op, dtypes=(jnp.float32,)))  # the quick half
    try:
        status = check.main(["--module", "broken_homework", "--plot", str(tmp_path / "pictures")])
    finally:
        REGISTRY.pop("broken_homework.cube", None)
    out = capsys.readouterr().out
    assert status == 1 and "x_bar#0, x_bar#1: sign — x_bar is minus the reference everywhere" in out
    last = out.splitlines()[-1]
    assert last.startswith("broken_homework.cube") and last.endswith("4 checks  FAILED 3  x_bar: sign")
    assert out.count("picture: ") == 1 == len(list((tmp_path / "pictures").glob("*.png")))  # one per diagnosis


def test_python_m_manualgrad_check_would_not_warn():
    """runpy warns when the module it runs was imported with its package; the CLI's
    ``__main__`` is imported by nothing (``manualgrad.check.cli`` holds ``main``)."""
    import manualgrad  # noqa: F401

    assert "manualgrad.check.__main__" not in sys.modules and (ROOT / "manualgrad/check/__main__.py").exists()


def test_a_wrong_forward_is_blamed_on_the_forward_and_one_number_rows_give_their_ratio():
    @defop(name="test_debugger.cube_forward_scaled")
    def cube(x):
        return x ** 3

    cube.defvjp(lambda x: (1.5 * x ** 3, x), lambda x, g: (3 * x * x * g,))
    x = jnp.linspace(-1.0, 1.0, 6)
    forward = check.check_vjp(cube, x).failed[0]
    assert forward.what == "forward"
    assert forward.diagnosis.startswith("scale 1.5 — forward is 1.5 times the reference everywhere: a constant "
                                        "factor in the forward computation is wrong"), forward.diagnosis

    @defop(name="test_debugger.cube_tripled")
    def tripled(x):
        return x ** 3

    tripled.defvjp(lambda x: (x ** 3, x), lambda x, g: (9 * x * x * g,))
    fd = check.check_vjp(tripled, x, method="fd").failed[0]  # a directional check compares one number
    assert "manual / reference = 3" in fd.diagnosis and "method='reference'" in fd.diagnosis, fd.diagnosis
    assert check.check_vjp(tripled, x).failed[0].diagnosis.startswith("scale 3 ")  # every element: certain
