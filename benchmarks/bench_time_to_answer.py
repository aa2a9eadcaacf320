"""Time to an answer: the paper's linear case (VSbrd) for one survey, full protocol against the options
that stop, prune or lower the decoder's precision (issue 19, item 4).

For each of the paper's truths (mc1-mc3, the published test models) with the shipped prior
(``VAEPrior.pretrained()``), straight rays between x = 0.01 m and x = 6.49 m (the paper's sensor
positions, rays on cell boundaries put in the row above as the published kernel does), noise-free data,
and Table 1's VSbrd settings (``PAPER_CASES["VSbrd"]``, 100 starts = ``PAPER_N_STARTS``), this measures:

* the wall time until the returned model is final (``fit`` + ``invert`` returned), per survey;
* the returned (selected) model's full-data RMSE (ns), and the iteration it was found at;
* whether it is accepted at the paper's threshold (the data RMSE of the truth's encode-decode model
  through the prior, Table 2);
* the start-iterations computed (stopped and pruned starts leave the batch);

for the full protocol and for each option:

``tol``      convergence stop per start (``tol``, ``n_epochs_no_change``);
``prune``    successive halving across starts (``prune="halving"``, ``prune_every``, ``prune_keep``);
``bf16``     the decoder under bfloat16 autocast (``precision="bfloat16"``; selected models re-scored in
             float32);
``fast``     the combination that gave the fastest answer within 5 %: bfloat16 and halving every epoch
             keeping a quarter (``fast_tol10``, ``fast_e2``, ``fast_e3_tol5``: with the convergence stop too,
             compared in the record: the stop ends the surviving start on a plateau too early).

Beside them, in the same run, the per-iteration cost of the paper's own loop (its published
``SGD_DGM.py``, run from a temporary copy given by ``--paper-code``; the copy is imported, never
vendored) on the same decoder, one start at a time, against latentinv's batched start-iteration in
float32 and in bfloat16 (interleaved rounds, minimum kept).

The full protocol (100 starts x 3000 iterations) takes about a quarter of an hour per survey on a
2-core CPU, so the scale is configurable: ``--full-seeds`` (the full protocol's seeds, all truths in one
batch; its time is reported per survey), ``--seeds`` (the options' seeds, one survey per call),
``--truths``, ``--n-starts``, ``--epochs``, ``--option-seeds`` (fewer seeds for an option, e.g.
``tol=1``); ``--reuse JSON ...`` takes in the rows of earlier records of this script (e.g. the full
protocol run in a separate process; every reused row names its file and command). The reference of "within 5 %" is the full
protocol's best RMSE of each truth (over its seeds).

Usage::

    git -C /path/to/VAE_SGD show HEAD:SGD_DGM.py > /tmp/paper_code/SGD_DGM.py   # a temporary copy
    nice -n 5 python benchmarks/bench_time_to_answer.py --paper-code /tmp/paper_code \\
        --full-seeds 0 --seeds 0 1 2 3 4 --output docs/bench_time_to_answer.json
"""
from __future__ import annotations

import argparse
import copy
import dataclasses
import importlib.util
import json
import os
import platform
import shlex
import sys
import time
import types
from pathlib import Path

import numpy as np
import torch

from latentinv import StraightRayOperator, VAEPrior, paper_crosshole
from latentinv.inversion import PAPER_CASES, PAPER_N_STARTS, LatentInverter, paper_slowness
from machine_info import code_info, cpu_counts, cpu_flags, cpu_model  # noqa: E402  (a sibling script)

DEFAULT_TEST_MODELS = Path(__file__).resolve().parents[1] / ".." / "shared" / "data" / "paper_test_models"

#: The options, as LatentInverter keyword arguments. ``fast``: the combination that gave the fastest
#: answer within 5 % here (chosen on the full protocol's histories: see docs/benchmarks/time_to_answer.md).
OPTIONS = {
    "full": {},
    "tol": dict(tol=1e-3, n_epochs_no_change=5),
    "prune": dict(prune="halving", prune_every=1, prune_keep=0.25),
    "bf16": dict(precision="bfloat16"),
    "fast": dict(precision="bfloat16", prune="halving", prune_every=1, prune_keep=0.25),
    "fast_tol10": dict(precision="bfloat16", prune="halving", prune_every=1, prune_keep=0.25,
                       tol=1e-3, n_epochs_no_change=10),
    "fast_e2": dict(precision="bfloat16", prune="halving", prune_every=2, prune_keep=0.5,
                    tol=3e-3, n_epochs_no_change=10),
    "fast_e3_tol5": dict(precision="bfloat16", prune="halving", prune_every=3, prune_keep=0.5,
                         tol=1e-3, n_epochs_no_change=5),
}


def machine():
    flags = cpu_flags()
    return dict(platform=platform.platform(), cpu=cpu_model(), **cpu_counts(),
                torch_threads=torch.get_num_threads(), torch=torch.__version__,
                python=sys.version.split()[0], avx512_bf16="avx512_bf16" in flags, amx="amx_bf16" in flags)


def rmse(a, b):
    return np.sqrt(np.mean((np.asarray(a, float) - np.asarray(b, float)) ** 2, axis=-1))


def paper_problem(test_models, truths, prior):
    """Operator, truths (flat), noise-free data and the paper's thresholds (encode-decode data RMSE)."""
    op = StraightRayOperator(*paper_crosshole(0.01, 6.49), boundary_rays="upper_left")
    models = np.stack([np.load(Path(test_models) / f"{t}.npy").reshape(-1).astype(np.float64) for t in truths])
    data = op.response(paper_slowness(models))
    recon = prior.decode(prior.encode(models))
    thresholds = rmse(op.response(paper_slowness(recon)), data)
    return op, models, data, thresholds


def run_inverter(prior, op, data, seed, n_starts, n_epochs, options, history_file=None):
    """One call (all rows of ``data`` as surveys): wall time, and per survey the returned model's
    data RMSE, its iteration, and the start-iterations computed (``history_file``: an ``.npz`` of
    every start's data RMSE history, for offline study of stopping and pruning rules)."""
    settings = dict(PAPER_CASES["VSbrd"], n_epochs=n_epochs)
    inv = LatentInverter(prior, op, n_starts=n_starts, random_state=seed, device="cpu", verbose=0,
                         **settings, **options)
    t0 = time.perf_counter()
    res = inv.fit(data).invert(data)
    wall = time.perf_counter() - t0
    S = len(data)
    rows = np.arange(S)
    computed = np.isfinite(res.data_rmse_history).sum(axis=(1, 2))
    if history_file:
        np.savez_compressed(history_file, data_rmse_history=res.data_rmse_history.astype(np.float32),
                            data_rmse=res.data_rmse, best_iteration=res.best_iteration)
    return dict(wall_s=wall, n_surveys=S, n_iterations=int(inv.n_iterations_),
                rmse=res.data_rmse[rows, res.best_start].tolist(),
                best_start=res.best_start.tolist(),
                best_iteration=res.best_iteration[rows, res.best_start].tolist(),
                start_iterations=computed.tolist(),
                bf16_rmse_change=res.settings.get("bfloat16_rmse_change"))


# -- the paper's own loop, from the user's temporary copy ---------------------------------------------------
def load_paper_code(path):
    """Import ``SGD_DGM.py`` from ``path`` (the file or its folder). Its top-level ``import pygimli`` is
    only used by the nonlinear branch: an empty stand-in module is supplied when pygimli is absent."""
    path = Path(path)
    if path.is_dir():
        path = path / "SGD_DGM.py"
    if not path.is_file():
        raise SystemExit(f"--paper-code: {path} not found (a copy of jlalvis/VAE_SGD's SGD_DGM.py)")
    try:
        import pygimli  # noqa: F401
    except ImportError:
        sys.modules.setdefault("pygimli", types.ModuleType("pygimli"))
    spec = importlib.util.spec_from_file_location("paper_SGD_DGM", path)
    module = importlib.util.module_from_spec(spec)
    # Python >= 3.11 refuses its dataclass's NumPy-array defaults (mutable): while the copy is imported,
    # ``dataclasses.dataclass`` turns such a default into a default_factory returning a copy of it
    original = dataclasses.dataclass

    def tolerant_dataclass(cls=None, **kwargs):
        def wrap(c):
            for name in list(getattr(c, "__annotations__", {})):
                value = c.__dict__.get(name)
                if isinstance(value, np.ndarray):
                    setattr(c, name, dataclasses.field(default_factory=lambda v=value: v.copy()))
            return original(c, **kwargs)
        return wrap if cls is None else wrap(cls)

    dataclasses.dataclass = tolerant_dataclass
    try:
        spec.loader.exec_module(module)
    finally:
        dataclasses.dataclass = original
    return module


class _ImageDecoder(torch.nn.Module):
    """The shipped decoder as the paper's code calls it: ``(1, d) -> (1, 1, n_rows, n_cols)``."""

    def __init__(self, decoder, shape):
        super().__init__()
        self.decoder, self.shape = decoder, shape

    def forward(self, z):
        return self.decoder(z).reshape(z.shape[0], 1, *self.shape)


def paper_loop_seconds(module, decoder, op, data, truth, z0, n_epochs, seed):
    """Wall time of the paper's SGD_DGM (VSbrd, linear, one start) for ``n_epochs`` epochs of 25."""
    s = PAPER_CASES["VSbrd"]
    setup = module.SGDsetup(
        epochs=n_epochs, batch_size=s["batch_size"], lr=s["lr"], clr=s["lr_decay"], ninits=1,
        zinit=z0[None, :], gen=decoder, fwd="linear", A=op.matrix.toarray(), d=data, reg="ring",
        lam=s["lam"], clam=s["lam_decay"], device="cpu", step_eps=s["decay_every"], DGM="VAE",
        optimizer="SGD", truemodel=truth.reshape(129, 65))
    np.random.seed(seed)
    t0 = time.perf_counter()
    dloss, _, _, _ = module.SGD_DGM(setup, z0)
    dt = time.perf_counter() - t0
    iterations = len(dloss)
    return dt, iterations, float(np.sqrt(dloss[-1] / len(data)))


def per_iteration_rows(prior, op, data, truth, paper_code, repeats, paper_epochs, n_starts):
    """Paper loop per iteration vs latentinv per start-iteration (float32, bfloat16), interleaved."""
    rows = []
    dec = copy.deepcopy(prior.decoder_).requires_grad_(False)
    paper = None
    if paper_code:
        module = load_paper_code(paper_code)
        paper = _ImageDecoder(dec, (129, 65))
        z0 = np.random.default_rng(0).standard_normal(20)
        paper_loop_seconds(module, paper, op, data[0], truth, z0, 1, 0)    # warm-up
    invs = {}
    for label, opts in (("float32", {}), ("bfloat16", dict(precision="bfloat16"))):
        invs[label] = LatentInverter(prior, op, n_starts=n_starts, random_state=0, device="cpu", verbose=0,
                                     **dict(PAPER_CASES["VSbrd"], n_epochs=1), **opts).fit(data[:1])
        invs[label].invert(data[:1])   # warm-up
    best = {}
    for _ in range(repeats):
        if paper is not None:
            dt, its, _ = paper_loop_seconds(module, paper, op, data[0], truth, z0, paper_epochs, 0)
            best["paper"] = min(best.get("paper", np.inf), dt / its)
        for label, inv in invs.items():
            t0 = time.perf_counter()
            inv.invert(data[:1])
            dt = time.perf_counter() - t0
            best[label] = min(best.get(label, np.inf), dt / (n_starts * inv.n_iterations_))
    ref = best.get("paper")
    if ref is not None:
        rows.append(dict(method="paper's SGD_DGM.py (1 start at a time, same decoder, frozen)",
                         per_start_iteration_ms=1e3 * ref, ratio=1.0,
                         iterations=paper_epochs * 25))
    for label in ("float32", "bfloat16"):
        rows.append(dict(method=f"LatentInverter, {n_starts} starts, {label}",
                         per_start_iteration_ms=1e3 * best[label],
                         ratio=None if ref is None else ref / best[label], iterations=25))
    return rows


def summarize(rows, truths, thresholds, reference):
    """Per option and truth: worst/median wall time per survey and RMSE ratio to the reference best."""
    table = []
    for option in dict.fromkeys(r["option"] for r in rows):
        mine = [r for r in rows if r["option"] == option]
        for i, t in enumerate(truths):
            cells = [(r["wall_s"] / r["n_surveys"], r["rmse"][r["truths"].index(t)], r["start_iterations"]
                      [r["truths"].index(t)]) for r in mine if t in r["truths"]]
            if not cells:
                continue
            walls, rm, work = map(np.asarray, zip(*cells))
            ratio = rm / reference[i]       # NaN where no full-protocol run of this truth
            table.append(dict(option=option, truth=t, n_seeds=len(cells), wall_s_max=float(walls.max()),
                              wall_s_median=float(np.median(walls)), rmse_median=float(np.median(rm)),
                              rmse_max=float(rm.max()),
                              rmse_ratio_max=None if np.isnan(reference[i]) else float(ratio.max()),
                              within_5pct=None if np.isnan(reference[i]) else int(np.sum(ratio <= 1.05)),
                              accepted=int(np.sum(rm <= thresholds[i])),
                              start_iterations_median=float(np.median(work))))
    return table


def markdown(record):
    """The record's tables in Markdown (per-iteration ratio, then time to answer per option and truth)."""
    lines = ["| what | per start-iteration | ratio to the paper's loop |", "|---|---|---|"]
    for r in record.get("per_iteration", []):
        ratio = f"{r['ratio']:.1f}x" if r.get("ratio") else ""
        lines.append(f"| {r['method']} | {r['per_start_iteration_ms']:.2f} ms | {ratio} |")
    lines += ["", "| option | truth | runs | s per survey (median / max) | returned RMSE, ns (median / max) | "
              "max / full best | within 5 % | accepted | start-iterations (median) |",
              "|---|---|---|---|---|---|---|---|---|"]
    for r in record.get("summary", []):
        ratio = "" if r["rmse_ratio_max"] is None else f"{r['rmse_ratio_max']:.3f}"
        within = "" if r["within_5pct"] is None else f"{r['within_5pct']} of {r['n_seeds']}"
        lines.append(f"| {r['option']} | {r['truth']} | {r['n_seeds']} | {r['wall_s_median']:.1f} / {r['wall_s_max']:.1f} "
                     f"| {r['rmse_median']:.4f} / {r['rmse_max']:.4f} | {ratio} | {within} | "
                     f"{r['accepted']} of {r['n_seeds']} | {r['start_iterations_median']:.0f} |")
    return "\n".join(lines)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--test-models", default=str(DEFAULT_TEST_MODELS), help="folder of mc1.npy ... mc3.npy")
    p.add_argument("--truths", nargs="+", default=["mc1", "mc2", "mc3"])
    p.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2, 3, 4], help="seeds of the options")
    p.add_argument("--full-seeds", nargs="*", type=int, default=[0],
                   help="seeds of the full protocol (all truths in one batch); none: skip it")
    p.add_argument("--reuse", nargs="*", default=[],
                   help="reuse the rows of earlier JSON records of this script (e.g. a full-protocol run made "
                        "in a separate process); each reused row names its file")
    p.add_argument("--options", nargs="*", default=["tol", "prune", "bf16", "fast"], choices=list(OPTIONS)[1:])
    p.add_argument("--option-seeds", nargs="*", default=[],
                   help="per-option seed counts, e.g. tol=1 bf16=1 (default: every seed)")
    p.add_argument("--n-starts", type=int, default=PAPER_N_STARTS)
    p.add_argument("--epochs", type=int, default=PAPER_CASES["VSbrd"]["n_epochs"])
    p.add_argument("--paper-code", default=None, help="temporary copy of the paper's SGD_DGM.py (file or folder)")
    p.add_argument("--paper-epochs", type=int, default=1, help="epochs (of 25 iterations) of the paper's loop")
    p.add_argument("--repeats", type=int, default=3, help="interleaved rounds of the per-iteration rows")
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--output", default="bench_time_to_answer.json")
    p.add_argument("--save-histories", default=None, help="folder for the full protocol's RMSE histories (.npz)")
    args = p.parse_args(argv)
    for name in ("repeats", "n_starts", "epochs", "paper_epochs"):     # --repeats 0 was a KeyError at the end
        if getattr(args, name) < 1:
            p.error(f"--{name.replace('_', '-')} must be at least 1, got {getattr(args, name)}")
    if hasattr(sys.stdout, "reconfigure"):
        sys.stdout.reconfigure(line_buffering=True)
    if args.threads:
        torch.set_num_threads(args.threads)
    info = machine()
    info["load_average_start"] = os.getloadavg()
    prior = VAEPrior.pretrained()
    op, models, data, thresholds = paper_problem(args.test_models, args.truths, prior)
    print(f"machine: {info['cpu']}, {info['cpus_available']} CPUs available, torch {info['torch']} "
          f"({info['torch_threads']} threads), load {info['load_average_start']}")
    print("thresholds (encode-decode data RMSE, ns): "
          + ", ".join(f"{t} {v:.4f}" for t, v in zip(args.truths, thresholds)))
    record = dict(command="python benchmarks/bench_time_to_answer.py " + " ".join(map(shlex.quote, argv or sys.argv[1:])),
                  date=time.strftime("%Y-%m-%d"), machine=info, latentinv=code_info(), truths=args.truths, thresholds=thresholds.tolist(),
                  n_starts=args.n_starts, epochs=args.epochs, options={k: OPTIONS[k] for k in ["full"] + args.options},
                  rows=[], per_iteration=[])

    def save():
        record["machine"]["load_average_end"] = os.getloadavg()
        Path(args.output).write_text(json.dumps(record, indent=1))

    if args.paper_code or args.repeats:
        record["per_iteration"] = per_iteration_rows(prior, op, data, models[0], args.paper_code, args.repeats,
                                                     args.paper_epochs, args.n_starts)
        for r in record["per_iteration"]:
            ratio = f"{r['ratio']:.1f}x" if r["ratio"] else ""
            print(f"  {r['method']:<64}{r['per_start_iteration_ms']:>9.3f} ms/start-iteration {ratio:>7}")
        save()

    for path in args.reuse:
        old = json.loads(Path(path).read_text())
        # a row keeps where it was first measured (a record of reused rows can be reused again)
        reused = [dict(dict(reused_from=path, reused_command=old.get("command"),
                            reused_load_average=[old["machine"].get("load_average_start"),
                                                 old["machine"].get("load_average_end")]), **r)
                  for r in old["rows"]]
        record["rows"] += reused
        if not record["per_iteration"] and old.get("per_iteration"):
            record["per_iteration"] = [dict(dict(reused_from=path, reused_command=old.get("command")), **r)
                                       for r in old["per_iteration"]]
        record.setdefault("reused", []).append(dict(path=path, command=old.get("command"), date=old.get("date"),
                                                    n_rows=len(reused)))
        print(f"{len(reused)} rows reused from {path} ({old.get('command')})")
    for seed in args.full_seeds:
        hist = None
        if args.save_histories:
            Path(args.save_histories).mkdir(parents=True, exist_ok=True)
            hist = Path(args.save_histories) / f"full_seed{seed}_{'_'.join(args.truths)}.npz"
        out = run_inverter(prior, op, data, seed, args.n_starts, args.epochs, {}, hist)
        out.update(option="full", seed=seed, truths=list(args.truths), settings={})
        record["rows"].append(out)
        print(f"[full seed {seed}] {out['wall_s']:.1f} s for {len(data)} surveys; RMSE "
              f"{np.round(out['rmse'], 4).tolist()} (best at iterations {out['best_iteration']})")
        save()
    counts = dict(s.split("=") for s in args.option_seeds)
    for option in args.options:
        for seed in args.seeds[:int(counts.get(option, len(args.seeds)))]:
            for i, t in enumerate(args.truths):
                out = run_inverter(prior, op, data[i:i + 1], seed, args.n_starts, args.epochs, OPTIONS[option])
                out.update(option=option, seed=seed, truths=[t], settings=OPTIONS[option])
                record["rows"].append(out)
                print(f"[{option} seed {seed} {t}] {out['wall_s']:.1f} s; RMSE {out['rmse'][0]:.4f} "
                      f"(threshold {thresholds[i]:.4f}); {out['start_iterations'][0]} start-iterations")
                save()

    full_rows = [r for r in record["rows"] if r["option"] == "full"]
    if full_rows:
        reference = np.array([min((r["rmse"][r["truths"].index(t)] for r in full_rows if t in r["truths"]),
                                  default=np.nan) for t in args.truths])
        record["reference_best_rmse"] = [None if np.isnan(v) else float(v) for v in reference]
        record["summary"] = summarize(record["rows"], args.truths, thresholds, reference)
        print(f"\n{'option':<7}{'truth':<6}{'seeds':>6}{'s/survey max':>14}{'median':>9}{'RMSE median':>13}"
              f"{'max/best':>10}{'<=5%':>6}{'accepted':>10}{'start-its':>11}")
        for r in record["summary"]:
            ratio = "-" if r["rmse_ratio_max"] is None else f"{r['rmse_ratio_max']:.3f}"
            within = "-" if r["within_5pct"] is None else r["within_5pct"]
            print(f"{r['option']:<7}{r['truth']:<6}{r['n_seeds']:>6}{r['wall_s_max']:>14.1f}{r['wall_s_median']:>9.1f}"
                  f"{r['rmse_median']:>13.4f}{ratio:>10}{within:>6}"
                  f"{r['accepted']:>10}{r['start_iterations_median']:>11.0f}")
    save()
    print("\n" + markdown(record))
    print(f"load average at the end: {record['machine']['load_average_end']}; wrote {args.output}")


if __name__ == "__main__":
    main()
