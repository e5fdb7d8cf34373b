"""experiments.benchmark: what it counts, what it writes, and the one target that is not a timing."""

import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from experiments import common
from experiments.benchmark import cli, configs, layers, report, steps, targets, transformer_layers
from experiments.benchmark.configs import Config


def test_matmul_flops_counts_three_products_per_layer_but_the_first_input_gradient():
    # 784-256-128-10 at batch 128: each product is 2 * batch * d_in * d_out FLOPs
    forward = 2 * 128 * (784 * 256 + 256 * 128 + 128 * 10)
    assert Config(common.MNIST, 128).matmul_flops() == 3 * forward - 2 * 128 * 784 * 256
    assert Config(common.CALIFORNIA_HOUSING, 64).matmul_flops() == 3 * 2 * 64 * (8 * 64 + 64 * 64 + 64) - 2 * 64 * 8 * 64


# the MNIST-shaped configs: with one output (California Housing) XLA turns the last layer's
# products into multiply-reduce fusions, which its cost analysis counts differently
@pytest.mark.parametrize("config", configs.MLP_CONFIGS[:3], ids=lambda c: f"{c.model}@{c.batch}")
def test_gemms_only_does_exactly_the_counted_flops(config):
    compiled, _ = steps.gemms_only(config)
    analysis = compiled.cost_analysis()
    analysis = analysis[0] if isinstance(analysis, list) else analysis
    # XLA also counts one FLOP per element of any transpose it inserts; the smallest product
    # (the output layer's) is 0.25% of the total, so a missing or extra product fails this
    assert analysis["flops"] == pytest.approx(config.matmul_flops(), rel=1e-3)


@pytest.mark.parametrize("config", configs.MLP_CONFIGS + configs.CNN_CONFIGS, ids=lambda c: f"{c.model}@{c.batch}")
def test_manual_step_needs_no_more_temp_memory_than_reference(config):
    _, manual = steps.jax_step_runner(config, "manual")
    _, reference = steps.jax_step_runner(config, "reference")
    assert manual is not None and reference is not None
    assert manual <= reference


def _result(manual_ms: float, reference_ms: float, fraction: float, model: str = "784-256-128-10") -> dict:
    rows = [
        {"model": model, "batch": 128, "impl": impl, "step_ms": ms, "gflops": 1.0, "temp_bytes": temp}
        for impl, ms, temp in [("manual", manual_ms, 10), ("explicit", manual_ms, 10), ("reference", reference_ms, 12),
                               ("torch", 2 * manual_ms, None), ("gemms_only", 0.5, 0)]
    ]
    epochs = [{"model": "784-256-128-10", "batch": 128, "epoch": "scan", "grad": "manual", "fraction_of_peak": fraction}]
    return {"rows": rows, "epochs": epochs}


def test_targets_pass_and_fail_on_the_measured_numbers():
    met = {what: ok for what, _, ok in targets.evaluate(_result(1.0, 1.0, 0.61))}
    assert all(met.values()), met
    met = {what: ok for what, _, ok in targets.evaluate(_result(1.06, 1.0, 0.59))}
    assert not met["MLP manual / reference, every config <= 1.05"]
    assert not met["MLP manual / reference step time, median over configs <= 1.00"]
    assert not met["scanned epoch, batch 128: fraction of GEMM peak >= 0.60"]
    assert met["temp bytes manual <= reference at 784-256-128-10@128"]


def test_cnn_targets_are_the_cnn_issues():
    met = {what: ok for what, _, ok in targets.evaluate(_result(0.55, 1.0, 0.61, model="cnn"))}
    assert met["CNN manual / reference at cnn@128 <= 0.60"] and met["torch / manual at cnn@128 >= 0.8"]
    assert not any(what.startswith("MLP") for what in met)
    met = {what: ok for what, _, ok in targets.evaluate(_result(0.65, 1.0, 0.61, model="cnn"))}
    assert not met["CNN manual / reference at cnn@128 <= 0.60"]


def test_cnn_flops_count_the_convolutions():
    # conv 1->32 on 28x28, conv 32->64 on 14x14, dense 3136->128, 128->10 at batch 1
    fwd = [2 * 784 * 9 * 32, 2 * 196 * 9 * 32 * 64, 2 * 3136 * 128, 2 * 128 * 10]
    assert Config(configs.CNN, 1).matmul_flops() == 3 * sum(fwd) - fwd[0]


def test_sequence_targets_are_the_sequence_issues():
    def row(model, impl, ms, temp):
        return {"model": model, "batch": 1, "impl": impl, "step_ms": ms, "gflops": 1.0, "temp_bytes": temp}

    rows = [row("attention-T512", "manual", 12.0, 10), row("attention-T512", "reference", 10.0, 100),
            row("attention-T2048", "manual", 150.0, 17), row("attention-T2048", "reference", 440.0, 335),
            row("transformer-T128", "manual", 100.0, 5), row("transformer-T128", "reference", 97.0, 6),
            row("transformer-T128", "explicit", 101.0, 5), row("transformer-T128", "torch", 80.0, None)]
    met = {what: ok for what, _, ok in targets.evaluate({"rows": rows, "epochs": []})}
    assert met["attention manual / reference time at T=512 <= 1.3"] and met["attention manual / reference time at T=2048 <= 1.0"]
    assert met["attention manual temp bytes <= 1/8 of reference at T=2048"]
    assert met["transformer manual / reference at transformer-T128@1 <= 1.05"]
    assert met["explicit / manual, every config <= 1.10"] and not any(what.startswith(("MLP", "CNN")) for what in met)
    rows += [row("lstm-T256", "manual", 70.0, 30), row("lstm-T256", "reference", 100.0, 100), row("lstm-T256", "torch", 50.0, None),
             row("lmhead-V32768", "manual", 900.0, 10), row("lmhead-V32768", "reference", 1000.0, 90)]
    met = {what: ok for what, _, ok in targets.evaluate({"rows": rows, "epochs": []})}
    assert met["LSTM manual / reference time at T=256 <= 0.8"] and met["LSTM manual temp bytes <= 1/3 of reference at T=256"]
    assert not met["torch / manual at lstm-T256@1 >= 0.8"]  # 50 / 70
    assert met["lmhead manual / reference time at lmhead-V32768@1 <= 1.0"]
    assert met["lmhead manual temp bytes <= 1/8 of reference at lmhead-V32768@1"]
    rows[-1] = row("lmhead-V32768", "reference", 800.0, 70)
    met = {what: ok for what, _, ok in targets.evaluate({"rows": rows, "epochs": []})}
    assert not met["lmhead manual / reference time at lmhead-V32768@1 <= 1.0"]
    assert not met["lmhead manual temp bytes <= 1/8 of reference at lmhead-V32768@1"]
    rows[3] = row("attention-T2048", "reference", 140.0, 100)  # slower than the reference, and only 6x less memory
    met = {what: ok for what, _, ok in targets.evaluate({"rows": rows, "epochs": []})}
    assert not met["attention manual / reference time at T=2048 <= 1.0"]
    assert not met["attention manual temp bytes <= 1/8 of reference at T=2048"]


def test_quick_run_writes_the_json_and_the_report(tmp_path, capsys):
    assert cli.main(["--quick", "--no-torch", "--out", str(tmp_path)]) == 0
    result = json.loads((tmp_path / "benchmark.json").read_text())
    assert result["device"] and result["gemm_peak_gflops"] > 0
    mlp = [r for r in result["rows"] if r["model"] == "8-64-64-1"]
    assert {r["impl"] for r in mlp} == {"manual", "explicit", "reference", "gemms_only"} and {r["batch"] for r in mlp} == {64}
    attention = [r for r in result["rows"] if r["model"] == "attention-T256"]
    lstm = [r for r in result["rows"] if r["model"] == "lstm-T32"]
    assert {r["impl"] for r in attention} == {r["impl"] for r in lstm} == {"manual", "reference"}
    assert len(mlp) + len(attention) + len(lstm) == len(result["rows"])
    for row in result["rows"]:
        assert row["step_ms"] > 0 and row["gflops"] > 0
        assert isinstance(row["temp_bytes"], int)
    assert {(r["epoch"], r["grad"]) for r in result["epochs"]} == {("scan", "manual"), ("scan", "reference"), ("loop", "manual")}
    report = (tmp_path / "BENCHMARKS.md").read_text()
    assert "| 8-64-64-1 | 64 | manual |" in report and "Command: `python -m experiments.benchmark --quick" in report
    assert report in capsys.readouterr().out


@pytest.mark.parametrize("layer", layers.CNN_LAYERS, ids=lambda layer: layer[0].split()[0])
def test_every_per_layer_implementation_computes_the_same_cotangents(layer):
    # the per-layer rows time these functions: they must be the same computation, three ways
    _, shape, c_out, needs_x_bar = layer
    with jax.enable_x64(True):
        args = [jnp.asarray(a) for a in layers.layer_inputs(2, shape, c_out, np.float64)]
        outs = [jax.jit(layers.layer_function(c_out, needs_x_bar, impl))(*args) for impl in layers.LAYER_IMPLS]
    assert len(outs[0]) == (3 if needs_x_bar else 2)
    for out in outs[1:]:
        for a, ref in zip(out, outs[0], strict=True):
            np.testing.assert_allclose(a, ref, rtol=1e-10, atol=1e-10)


def test_the_report_has_a_row_per_cnn_layer():
    rows = [{"model": f"cnn/{name}", "batch": 128, "impl": impl, "step_ms": ms, "gflops": None if c is None else 1.0,
             "temp_bytes": 10} for name, _, c, _ in layers.CNN_LAYERS for impl, ms in (("manual", 1.0), ("reference", 2.0))]
    result = {**_result(1.0, 1.0, 0.61, model="cnn"), "epochs": [], "layers": rows, "device": "cpu",
              "gemm_peak_gflops": 100.0, "versions": {}}
    text = report.markdown(result, "cmd")
    assert "| conv1 3x3 1->32 28x28 | 128 | manual | 1.000 | 1.0 | 0.50 | 10 |" in text
    assert "| pool2 2x2 14x14x64 | 128 | reference | 2.000 | – | 1.00 | 10 |" in text


@pytest.mark.parametrize("layer", transformer_layers.LAYERS, ids=lambda layer: layer.name.split()[0])
def test_every_transformer_layer_row_times_the_same_computation_three_ways(layer):
    # manual, reference and PyTorch, on small float64 inputs: the value and every cotangent
    host = tuple(a.astype(np.float64) if a.dtype == np.float32 else a for a in transformer_layers.layer_inputs(layer, 2, 8))
    diff = transformer_layers._differentiated(host)
    step = transformer_layers.layer_step(layer, diff)
    (y, bars), (y_ref, bars_ref) = (jax.jit(step(impl))(*host) for impl in ("manual", "reference"))
    assert len(bars) == len(diff)
    np.testing.assert_allclose(y, y_ref, rtol=1e-12)
    for a, b in zip(bars, bars_ref, strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-10, atol=1e-12)
    torch = pytest.importorskip("torch")
    *args, g = host
    tensors = [torch.tensor(a, requires_grad=i in diff) for i, a in enumerate(args)]
    out = layer.torch_forward(*tensors)
    out.backward(torch.tensor(g))
    np.testing.assert_allclose(out.detach().numpy(), y, rtol=1e-10, atol=1e-12)
    for i, b in zip(diff, bars):
        np.testing.assert_allclose(tensors[i].grad.numpy(), b, rtol=1e-9, atol=1e-12)
