"""How fast are hand-written gradients? ``python -m experiments.benchmark --out DIR``.

Everything is measured in one process, one run, so the ratios hold even where absolute
times drift on a shared machine:

* the train step (gradient, clipping to global norm, SGD with momentum) per ``grad`` source
  (``manual``, ``explicit``, ``reference``), the same step in PyTorch eager, and the "GEMMs only" row:
  the step's matrix products alone, jitted, with nothing between them (:mod:`.steps`);
* the CNN's convolutions and poolings one by one (:mod:`.layers`);
* the machine's large-GEMM rate (a 2048 x 2048 x 2048 float32 product) and every row's achieved
  rate, counting only the step's matrix-product FLOPs (:mod:`.machine`);
* a whole MNIST-sized epoch (60000 examples) as one scanned call (:func:`manualgrad.train.make_epoch`)
  against a Python loop over the jitted step (:mod:`.epochs`);
* the compiled step's temporary memory from XLA's memory analysis;
* attention alone at contexts 512, 2048 and 8192 (hand-written blockwise backward against
  ``jax.grad`` of plain softmax attention) and the Shakespeare transformer's train step at
  contexts 128 and 256 (:mod:`.sequence`).

Timing (:mod:`.timing`): every implementation is warmed up, then the implementations take turns
(in a rotated order) running blocks of steps for ``--rounds`` rounds; a row's time is the median
over rounds. Inputs are random (standard normal features, uniform labels): the step's cost does
not depend on the values. Writes ``DIR/benchmark.json`` and ``DIR/BENCHMARKS.md`` (the tables,
with the date, machine and command, and the targets of :mod:`.targets`; :mod:`.report`). The
families of rows are listed in :data:`experiments.benchmark.cli.FAMILIES`.
"""
