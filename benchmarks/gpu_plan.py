"""The decisions that ``benchmarks/gpu_checks.sh`` makes between its steps, from what the call has
measured so far: a lent GPU call runs unattended, and a wrong guess costs the scarce device time.

- ``training BENCH_TRAINING_JSON``: the prior's training arithmetic. Of the rows of
  ``bench_training.py`` that ran (the ablation row aside), the fastest whose loss curve stays within
  ``--max-curve-diff`` of float32's windows (``keeps the loss curve``, issue 16). Prints
  ``PRECISION GRAPHS MS_PER_ITERATION``, GRAPHS being ``--cuda-graphs`` or ``-``.
- ``iterations``: how many training iterations to ask for, so that the training ends within the
  seconds given at the rate measured (with a margin), never beyond the target (the paper's 1e5), never
  fewer than already done; 0 when not even ``--minimum`` more fit.
- ``tables BENCH_INVERSION_JSON``: the arithmetic of Tables 3-4's run, from ``bench_inversion.py``'s
  ``--layouts`` and ``--sgan-rates`` rows: the fastest VAE layout (among those whose answer fits as
  well as the eager row's) and the fastest SGAN variant, as ``reproduce_paper.py`` options (float32
  with the default kernels where a choice is absent; cuDNN's autotuner where either chose it).
- ``check-out DIR``: what of ``$OUT`` would not come back from the device machine (its limits: at most
  8 files, 16 MiB each, 64 MiB together, no deeper than two folders, names of letters, digits, '.',
  '_' and '-'). Prints one line per problem; exits 1 if there is any.

Usage (what gpu_checks.sh runs)::

    python benchmarks/gpu_plan.py training "$OUT/bench_training.json"
    python benchmarks/gpu_plan.py iterations --ms 2.6 --seconds 300 --done 0
    python benchmarks/gpu_plan.py tables "$RESULTS/bench/bench_inversion.json"
    python benchmarks/gpu_plan.py check-out "$OUT"
"""
from __future__ import annotations

import argparse
import json
import math
import re
import sys
from pathlib import Path

#: largest relative difference of a row's loss-curve windows from float32's that still "keeps the curve"
#: (bfloat16's windows came within 1.5 % of float32's in the CPU runs of docs/benchmarks/prior.md)
MAX_CURVE_DIFF = 0.02
#: the paper's schedule (iterations of batch 100)
PAPER_ITERATIONS = 100_000
#: the device tool's limits on what comes back from $OUT (.library/device/README.md)
OUT_MAX_FILES = 8
OUT_MAX_FILE_BYTES = 16 * 2**20
OUT_MAX_TOTAL_BYTES = 64 * 2**20
OUT_MAX_DEPTH = 2          # $OUT/a/b/file comes back, $OUT/a/b/c/file does not
_NAME = re.compile(r"^[A-Za-z0-9._-]+$")


def choose_training(record, max_curve_diff=MAX_CURVE_DIFF):
    """``(precision, cuda_graphs, ms_per_iteration)`` of the fastest usable row of a
    ``bench_training.py`` record; float32 eager when no other row qualifies. Raises ValueError when
    not even float32 ran."""
    # a row without a finite positive time is one that did not run: a NaN time was chosen before (min
    # over NaN keeps whichever comes first), and its NaN then stopped `gpu_plan.py iterations`
    rows = [r for r in record["rows"] if "error" not in r and not r.get("ablation", False)
            and _positive(r.get("ms_per_iteration"))]
    base = next((r for r in rows if r["precision"] == "float32" and not r.get("cuda_graphs", False)), None)
    if base is None:
        raise ValueError("bench_training: the float32 row did not run (or has no finite time per iteration); "
                         "no training can be planned")

    def keeps_curve(r):
        diff = r.get("max_window_rel_diff_vs_float32")
        return r is base or (diff is not None and math.isfinite(diff) and diff <= max_curve_diff)

    best = min((r for r in rows if keeps_curve(r)), key=lambda r: r["ms_per_iteration"])
    return best["precision"], bool(best.get("cuda_graphs", False)), float(best["ms_per_iteration"])


def _positive(value):
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value) and value > 0


def plan_iterations(ms_per_iteration, seconds, *, done=0, target=PAPER_ITERATIONS, safety=1.15,
                    granularity=1000, minimum=1000):
    """Iterations to train to (a total, counting the ``done`` ones of a checkpoint): as many as fit in
    ``seconds`` at ``ms_per_iteration`` times ``safety``, rounded down to ``granularity``, at most
    ``target``; 0 when fewer than ``minimum`` more would fit."""
    if not (ms_per_iteration > 0 and math.isfinite(ms_per_iteration)):
        raise ValueError(f"ms_per_iteration must be a positive number, got {ms_per_iteration!r}")
    if done >= target:
        return 0
    # (1 + 1e-12): a time that fits a whole number of iterations exactly is not floored one short by
    # the quotient's rounding (1.15 s at 1.15 ms: 999.9999999999999)
    reach = done + int(max(0.0, seconds) / (ms_per_iteration * 1e-3 * safety) * (1 + 1e-12))
    if reach >= target:
        return target
    total = reach // granularity * granularity
    return total if total - done >= minimum else 0


def tables_options(record):
    """``reproduce_paper.py`` options for the fastest arithmetic ``bench_inversion.py`` found: its "vae
    fastest" and "sgan fastest" rows (either may be absent: the default then)."""
    chosen = {r["case"]: r for r in record["rows"] if r.get("case") in ("vae fastest", "sgan fastest")}
    options = []
    for case, prefix in (("vae fastest", "--"), ("sgan fastest", "--sgan-")):
        row = chosen.get(case)
        if row is None:
            continue
        if row.get("precision", "float32") != "float32":
            options += [f"{prefix}precision", row["precision"]]
        layout = row.get("layout") or []
        if layout:      # a list as bench_inversion.py writes it; one name (a hand-edited record) was spelt out
            options += [f"{prefix}layout", layout if isinstance(layout, str) else ",".join(layout)]
    if any(r.get("cudnn_autotune") for r in chosen.values()):
        options.append("--cudnn-benchmark")
    return options


def out_problems(out):
    """What of folder ``out`` would not come back (see the module's docstring): a list of sentences."""
    out = Path(out)
    problems, files, total = [], [], 0
    for path in sorted(out.rglob("*")):
        rel = path.relative_to(out)
        if any(not _NAME.match(part) for part in rel.parts):
            problems.append(f"{rel}: a name with characters other than letters, digits, '.', '_', '-'")
        if path.is_symlink() or not (path.is_file() or path.is_dir()):
            problems.append(f"{rel}: not a plain file or folder")
            continue
        if path.is_dir():
            continue
        if len(rel.parts) - 1 > OUT_MAX_DEPTH:
            problems.append(f"{rel}: more than {OUT_MAX_DEPTH} folders down")
        size = path.stat().st_size
        if size > OUT_MAX_FILE_BYTES:
            problems.append(f"{rel}: {size / 2**20:.1f} MiB, over {OUT_MAX_FILE_BYTES // 2**20} MiB")
        files.append(rel)
        total += size
    if len(files) > OUT_MAX_FILES:
        problems.append(f"{len(files)} files, over {OUT_MAX_FILES}: {', '.join(map(str, files))}")
    if total > OUT_MAX_TOTAL_BYTES:
        problems.append(f"{total / 2**20:.1f} MiB in all, over {OUT_MAX_TOTAL_BYTES // 2**20} MiB")
    return problems


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = p.add_subparsers(dest="command", required=True)
    t = sub.add_parser("training", help="the prior's training arithmetic from bench_training.json")
    t.add_argument("record")
    t.add_argument("--max-curve-diff", type=float, default=MAX_CURVE_DIFF)
    i = sub.add_parser("iterations", help="training iterations that fit in the seconds left")
    i.add_argument("--ms", type=float, required=True, help="milliseconds per training iteration")
    i.add_argument("--seconds", type=float, required=True, help="seconds the training may take")
    i.add_argument("--done", type=int, default=0, help="iterations already in the checkpoint")
    i.add_argument("--target", type=int, default=PAPER_ITERATIONS)
    i.add_argument("--minimum", type=int, default=1000)
    i.add_argument("--granularity", type=int, default=1000)
    tb = sub.add_parser("tables", help="reproduce_paper.py's arithmetic options from bench_inversion.json")
    tb.add_argument("record")
    c = sub.add_parser("check-out", help="what of $OUT would not come back")
    c.add_argument("out")
    a = p.parse_args(argv)
    if a.command == "training":
        precision, graphs, ms = choose_training(json.loads(Path(a.record).read_text()), a.max_curve_diff)
        print(precision, "--cuda-graphs" if graphs else "-", f"{ms:.4f}")
    elif a.command == "tables":
        print(" ".join(tables_options(json.loads(Path(a.record).read_text()))))
    elif a.command == "iterations":
        print(plan_iterations(a.ms, a.seconds, done=a.done, target=a.target, minimum=a.minimum,
                              granularity=a.granularity))
    else:
        problems = out_problems(a.out)
        for line in problems:
            print(f"OUT will not come back whole: {line}")
        return 1 if problems else 0
    return 0


if __name__ == "__main__":
    sys.exit(main())
