"""``python -m manualgrad.check``: every check on the chosen registered ops, with diagnoses."""

from __future__ import annotations

import argparse
import importlib
from typing import Sequence

import jax

from manualgrad.check.report import Report, Row
from manualgrad.check.rules import check_op
from manualgrad.core import REGISTRY

__all__ = ["main"]


def _select(ops: Sequence[str], modules: Sequence[str]) -> list[str]:
    """Registry names chosen by ``--op`` (a full name or its last part) and ``--module``."""
    import manualgrad.losses  # noqa: F401  (registers the library's ops)
    import manualgrad.ops  # noqa: F401

    chosen = []
    for module in modules:
        before = set(REGISTRY)
        try:
            importlib.import_module(module)
        except ImportError as e:
            raise SystemExit(f"manualgrad.check: --module {module!r} cannot be imported ({type(e).__name__}: {e}); "
                             "run from the folder that holds it, or put that folder on PYTHONPATH") from None
        mine = sorted(n for n in REGISTRY if n in set(REGISTRY) - before or n.startswith(module + "."))
        if not mine:
            raise SystemExit(f"manualgrad.check: module {module!r} registers no ops (define them with defop(examples=...))")
        chosen += mine
    for name in ops:
        found = [n for n in REGISTRY if n == name or n.endswith("." + name)]
        if len(found) != 1:
            known = ", ".join(sorted(REGISTRY))
            raise SystemExit(f"manualgrad.check: --op {name!r} matches {found or 'no op'}; registered: {known}")
        chosen += found
    return sorted(set(chosen)) if chosen else sorted(REGISTRY)


def _head(row: Row) -> str:
    """``x_bar: scale 2``: the row's array and the first words of its diagnosis."""
    return f"{row.what.split('#')[0]}: {row.diagnosis.split(' — ')[0]}"


def summary(name: str, reports: Sequence[Report]) -> str:
    """One line for one op: its checks, and for a failure each distinct diagnosis (its first words)."""
    failed = [r for r in reports if not r.passed]
    line = f"{name:<50} {len(reports):3d} checks  "
    if not failed:
        return line + "ok"
    heads = sorted({_head(row) for r in failed for row in r.failed})
    return line + f"FAILED {len(failed)}  " + "; ".join(heads)


def main(argv: Sequence[str] | None = None) -> int:
    """Run every check on the chosen ops; print each failure's diagnosis as it is found, the
    largest errors per dtype and mode, and one summary line per op.

    Args:
      argv: the command line (default ``sys.argv[1:]``).

    Returns:
      The exit status: 0 when every check passed, else 1.
    """
    parser = argparse.ArgumentParser(
        prog="python -m manualgrad.check",
        description="Check hand-written VJPs against jax.vjp of each op's plain reference: eager, jit, "
        "jit+vmap in float64 and float32, finite differences and Hessian-vector products in float64, "
        "and a trace of each backward with JAX's autodiff switched off. A failure says where (the worst "
        "element) and how (a diagnosis: scale, sign, zero, transpose, cotangent, nonfinite or unexplained). "
        "Without --op or --module, every registered op of manualgrad is checked (about two minutes on two CPU cores).",
    )
    parser.add_argument("--op", action="append", default=[], metavar="NAME",
                        help="an op to check: its full name (manualgrad.ops.relu) or last part (relu); repeatable")
    parser.add_argument("--module", action="append", default=[], metavar="MODULE",
                        help="import MODULE and check the ops it registers (e.g. my_project.layers); repeatable")
    parser.add_argument("--fast", action="store_true",
                        help="compare v^T J u for random u, v instead of every element (large examples); "
                        "a failure still gets the full comparison")
    parser.add_argument("--plot", metavar="DIR", help="draw each failed row (reference, manual, difference) as a PNG in DIR")
    parser.add_argument("--list", action="store_true", help="list the registered ops and exit")
    args = parser.parse_args(argv)
    names = _select(args.op, args.module)
    if args.list:
        print("\n".join(names))
        return 0
    worst: dict[tuple[str, str], tuple[float, float, str]] = {}
    summaries = []
    for name in names:
        reports = check_op(REGISTRY[name].op, fast=args.fast)
        drawn: set[str] = set()  # one picture per op and distinct diagnosis
        for r in reports:
            key = (r.dtype, r.mode)
            if r.max_rel >= worst.get(key, (0.0, 0.0, ""))[1]:
                worst[key] = (r.max_abs, r.max_rel, name)
            if not r.passed:
                print(r)
            if args.plot and not r.passed:
                new = {_head(row): row for row in r.failed if row.manual is not None and _head(row) not in drawn}
                drawn |= set(new)
                for path in r.plot(args.plot, rows=list(new.values())):
                    print(f"  picture: {path}")
        summaries.append((summary(name, reports), all(r.passed for r in reports)))
    print(f"\non {jax.devices()[0].platform}: largest errors per dtype and mode")
    for (dtype, mode), (abs_err, rel_err, name) in sorted(worst.items()):
        print(f"  {dtype:<8} {mode:<22} max_abs={abs_err:.2e}  max_rel={rel_err:.2e}  ({name})")
    print("\none line per op:")
    print("\n".join(line for line, _ in summaries))
    return 0 if all(ok for _, ok in summaries) else 1
