"""``python -m experiments.benchmark [--quick] [--only {mlp,cnn,sequence,recurrent,lmhead}] --out DIR``: the families
of rows in one table (:data:`FAMILIES`), the run over them, and the files it writes.

A new family of rows is a module with a ``rows(case, settings)`` function, one :class:`Family`
entry here, and its targets in :data:`experiments.benchmark.targets.TARGETS`.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import pathlib
import sys
from typing import Any, Callable, Sequence

from experiments import common
from experiments.benchmark import (
    configs, epochs, layers, lmhead, machine, recurrent, report, sequence, steps, transformer_layers,
)
from experiments.benchmark.timing import Settings
from experiments.flags import HelpFormatter
from manualgrad import malloc


@dataclasses.dataclass(frozen=True)
class Family:
    """One family of rows: what it measures, for which cases, where its rows go.

    Attributes:
        only: the ``--only`` choice that selects it.
        section: the list of benchmark.json its rows join: ``rows``, ``layers`` or ``epochs``.
        cases: what a full run measures, one call of ``rows`` each (a config, a batch, a context).
        quick: what ``--quick`` measures.
        label: the progress line of one case.
        rows: ``rows(case, settings)`` measures one case.
    """

    only: str
    section: str
    cases: tuple[Any, ...]
    quick: tuple[Any, ...]
    label: Callable[[Any], str]
    rows: Callable[[Any, Settings], list[dict]]


def _step_label(c: configs.Config) -> str:
    return f"train step {c.model} batch {c.batch}"


#: every family of rows, in the order they are measured and listed
FAMILIES: tuple[Family, ...] = (
    Family("mlp", "rows", configs.MLP_CONFIGS, (configs.SMALL,), _step_label, steps.step_rows),
    Family("cnn", "rows", configs.CNN_CONFIGS, (), _step_label, steps.step_rows),
    Family("cnn", "layers", tuple(c.batch for c in configs.CNN_CONFIGS), (), lambda b: f"CNN layers batch {b}",
           layers.layer_rows),
    Family("sequence", "rows", sequence.ATTENTION_T, (256,), lambda t: f"attention T={t}", sequence.attention_rows),
    Family("sequence", "rows", sequence.TRANSFORMER_T, (), lambda t: f"transformer train step T={t}",
           sequence.transformer_rows),
    Family("sequence", "rows", (transformer_layers.T,), (), lambda t: f"transformer layers T={t}",
           transformer_layers.transformer_layer_rows),
    Family("recurrent", "rows", recurrent.LSTM_T, (32,), lambda t: f"LSTM forward + backward T={t}", recurrent.lstm_rows),
    Family("lmhead", "rows", lmhead.VOCABS, (), lambda v: f"output layer + cross-entropy V={v}", lmhead.lmhead_rows),
    Family("mlp", "epochs", ((128, epochs.EPOCH_EXAMPLES), (1024, epochs.EPOCH_EXAMPLES)), ((1024, 4096),),
           lambda case: f"epoch {common.MNIST.architecture} batch {case[0]}", epochs.epoch_rows),
)


def benchmark(families: Sequence[Family] = FAMILIES, *, quick: bool = False, rounds: int = 9,
              block_seconds: float = 0.2, epoch_repeats: int = 5, with_torch: bool = True, reuse_memory: bool = False,
              progress: Callable[[str], None] = lambda s: None) -> dict:
    """Measure the GEMM rate, then every case of ``families``.

    Args:
        families: the families to measure.
        quick: measure each family's ``quick`` cases instead of its full ones.
        rounds: timed rounds per implementation (rows report the median).
        block_seconds: the length of one timed block of calls.
        epoch_repeats: timed epochs per epoch variant.
        with_torch: add the PyTorch rows (when torch is installed).
        reuse_memory: whether :func:`manualgrad.malloc.reuse_freed_memory` is on (recorded).
        progress: called with a line before each measurement.

    Returns:
        The benchmark.json document: ``device``, ``gemm_peak_gflops``, the sections ``rows``,
        ``layers`` and ``epochs``, ``versions`` and ``settings``.
    """
    progress(f"large GEMM ({machine.PEAK_SIZE}^3 float32)")
    peak = machine.peak_gflops(rounds, block_seconds)
    settings = Settings(rounds, block_seconds, epoch_repeats, with_torch, peak)
    sections: dict[str, list[dict]] = {"rows": [], "layers": [], "epochs": []}
    for family in families:
        for case in family.quick if quick else family.cases:
            progress(family.label(case))
            sections[family.section] += family.rows(case, settings)
    return {
        "device": machine.device_description(),
        "gemm_peak_gflops": peak,
        **sections,
        "versions": machine.versions(reuse_memory),
        "settings": {"rounds": rounds, "block_seconds": block_seconds, "epoch_repeats": epoch_repeats,
                     "optimizer": configs.describe_optimizer()},
    }


def main(argv: Sequence[str] | None = None) -> int:
    """Run the benchmark from the command line; write ``benchmark.json`` and ``BENCHMARKS.md``.

    Returns:
        The exit status (0; unusable flags exit with status 2).
    """
    from experiments.benchmark import __doc__ as description

    p = argparse.ArgumentParser(description=description.split("\n\n")[0], formatter_class=HelpFormatter)
    p.add_argument("--out", default="runs/benchmark", help="folder for benchmark.json and BENCHMARKS.md")
    p.add_argument("--rounds", type=int, default=9, help="timed rounds per implementation (the median is reported)")
    p.add_argument("--block-seconds", type=float, default=0.2, help="length of one timed block of steps")
    p.add_argument("--epoch-repeats", type=int, default=5, help="timed epochs per epoch variant")
    p.add_argument("--no-torch", action="store_true", help="leave out the PyTorch rows")
    p.add_argument("--quick", action="store_true",
                   help="smoke run (seconds): the California Housing config, attention at T=256, the LSTM at T=32, "
                        "a 4096-example epoch, one short round")
    p.add_argument("--only", choices=tuple(dict.fromkeys(f.only for f in FAMILIES)), default=None,
                   help="only the MLP, the CNN, the sequence (attention, transformer), the recurrent (LSTM) or the "
                        "lmhead (fused output layer + cross-entropy) rows (default: all)")
    p.add_argument("--malloc-defaults", action="store_true",
                   help="measure with glibc's malloc as it starts, without manualgrad.malloc.reuse_freed_memory() "
                        "(every framework in the process, PyTorch too, runs with the same setting)")
    args = p.parse_args(argv)
    if args.rounds < 1 or args.epoch_repeats < 1 or not args.block_seconds > 0:
        p.error("--rounds and --epoch-repeats must be >= 1 and --block-seconds > 0")
    if args.quick:
        args.rounds, args.block_seconds, args.epoch_repeats = 1, 0.01, 1
    reuse_memory = False if args.malloc_defaults else malloc.reuse_freed_memory()
    result = benchmark(
        [f for f in FAMILIES if args.only in (None, f.only)], quick=args.quick, rounds=args.rounds,
        block_seconds=args.block_seconds, epoch_repeats=args.epoch_repeats, with_torch=not args.no_torch,
        reuse_memory=reuse_memory, progress=lambda s: print(f"measuring {s}", file=sys.stderr, flush=True),
    )
    out = pathlib.Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "benchmark.json").write_text(json.dumps(result, indent=2))
    command = "python -m experiments.benchmark " + " ".join(argv if argv is not None else sys.argv[1:])
    text = report.markdown(result, command.strip())
    (out / "BENCHMARKS.md").write_text(text)
    print(text)
    return 0
