"""Shortest-path ray tracing: latentinv (C++ and Python) against ttcrpy (Grid2d, SPM) and pyGIMLi.

Paper geometry (129 x 65 cells of 0.1 m, 25 x 25 crosshole pairs) and one heterogeneous channel
model, all engines in one run:

1. forward and forward + Jacobian time at ``--nodes`` secondary nodes (default 3), latentinv C++ on
   1 and 2 threads, the Python fallback, ttcrpy on 1 and 2 threads and pyGIMLi, with ratios to
   ttcrpy at the same thread count (minimum over ``--repeat`` runs: the machine is shared), and the
   ablation rows of the C++ solvers in the same run: ``latentinv`` is the default (wavefront
   label-correcting, 4 sources per pass in AVX2 lanes where available), ``latentinv-dijkstra`` the
   previous engine (one Dijkstra per source, bucket queue), ``latentinv-sweep`` the same
   label-correcting kernel in alternating sweep order, ``latentinv-wavefront-scalar`` the portable
   kernel (no SIMD intrinsics);
2. peak memory of each engine (resident set growth in a fresh subprocess: graph + one F+J call);
3. accuracy against a high-resolution reference (latentinv C++ at ``--reference-nodes``, default 40;
   ttcrpy computes the same graph, so its error is the same at equal secondary nodes) for secondary
   nodes 1 to 10 on the paper's six truths (``--truths``), with the time of latentinv and ttcrpy at
   each (on the channel model).

Prints tables and writes JSON (``--json``). Run: ``python benchmarks/bench_raytrace.py``.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time

import numpy as np

from latentinv.datasets import layered_channel_slowness as channel_model

from latentinv.geometry import paper_crosshole
from latentinv._cpus import available_cpus
from machine_info import code_info, cpu_counts, cpu_model, cpus_text  # a sibling script




# -- engines: each returns (forward(m) -> t, forward_jacobian(m) -> (t, J)) ---------------------------
def latentinv_engine(n, threads, backend="cpp", **options):
    from latentinv.operators.shortest_path import ShortestPathOperator

    grid, survey = paper_crosshole()
    op = ShortestPathOperator(grid, survey, n_secondary_nodes=n, n_threads=threads, backend=backend,
                              **options)
    forward = lambda m: op.response(m)
    forward.kernel = op.kernel
    return forward, (lambda m: op.response_and_jacobian(m))


def ttcrpy_engine(n, threads):
    from ttcrpy.rgrid import Grid2d

    grid, survey = paper_crosshole()
    g = Grid2d(grid.x_edges, grid.depth_edges, cell_slowness=True, method="SPM", nsnx=n, nsnz=n,
               n_threads=threads)
    src, rcv = survey.source_positions, survey.receiver_positions
    to_tt = lambda m: grid.to_image(m).T.ravel()  # ttcrpy: (nx, nz) C order
    return (lambda m: g.raytrace(src, rcv, to_tt(m))), \
        (lambda m: g.raytrace(src, rcv, to_tt(m), compute_L=True))


def pygimli_engine(n, threads):
    import pygimli as pg
    from pygimli.physics.traveltime import TravelTimeDijkstraModelling

    from latentinv.operators.pygimli import to_pygimli_data, to_pygimli_mesh

    grid, survey = paper_crosshole()
    mesh = pg.Mesh(to_pygimli_mesh(grid))
    if n:
        mesh.createSecondaryNodes(n)
    fop = TravelTimeDijkstraModelling()
    fop.setData(to_pygimli_data(survey))
    fop.setMesh(mesh, ignoreRegionManager=True)

    def forward(m):
        return np.asarray(fop.response(pg.Vector(grid.to_pygimli_order(m))))

    def forward_jacobian(m):
        v = pg.Vector(grid.to_pygimli_order(m))
        fop.createJacobian(v)
        return np.asarray(fop.response(v)), fop.jacobian()

    return forward, forward_jacobian


ENGINES = {"latentinv": latentinv_engine,
           "latentinv-dijkstra": lambda n, t: latentinv_engine(n, t, solver="dijkstra"),
           "latentinv-sweep": lambda n, t: latentinv_engine(n, t, solver="sweep"),
           "latentinv-wavefront-scalar": lambda n, t: latentinv_engine(n, t, solver="wavefront",
                                                                       simd="scalar"),
           "latentinv-python": lambda n, t: latentinv_engine(n, t, "python"),
           "ttcrpy": ttcrpy_engine, "pygimli": pygimli_engine}


def batch_solves(n_sources=25, n_receivers=25, batch_size=25, n_iterations=750, seed=0, lanes=4):
    """Solves per SGD iteration of the paper's nonlinear case (625 data, batch of 25 drawn without
    replacement per epoch): the distinct sources of a batch (Jacobian rows needed), its distinct
    receivers (the reciprocal choice), and the passes of the label-correcting solver (4 lanes)."""
    rng = np.random.default_rng(seed)
    n_data = n_sources * n_receivers
    src, rcv = [], []
    for _ in range(n_iterations // (n_data // batch_size)):
        perm = rng.permutation(n_data)
        for j in range(n_data // batch_size):
            batch = perm[j * batch_size:(j + 1) * batch_size]
            src.append(len(np.unique(batch // n_receivers)))
            rcv.append(len(np.unique(batch % n_receivers)))
    src, rcv = np.array(src), np.array(rcv)
    best = np.minimum(src, rcv)
    return {"mean_batch_sources": float(src.mean()), "mean_batch_receivers": float(rcv.mean()),
            "mean_min_of_both": float(best.mean()),
            "full_misfit_solves": min(n_sources, n_receivers),
            "dijkstra_solves_per_iteration": n_sources,
            "wavefront_passes_per_iteration": float(np.mean(np.ceil(src / lanes)
                                                            + np.ceil((n_sources - src) / lanes)))}


def best_time(fn, m, repeat):
    best = np.inf
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn(m)
        best = min(best, time.perf_counter() - t0)
    return best


def peak_memory_mib(engine, n, threads):
    """Resident-set growth (MiB) of building ``engine`` and one F+J call, in a fresh process, and None;
    or None and the probe's error (the last line of its error output) where its process failed."""
    code = f"""
import sys, numpy as np
sys.path.insert(0, {os.path.dirname(os.path.abspath(__file__))!r})
import bench_raytrace as b
from latentinv.geometry import paper_crosshole
grid, _ = paper_crosshole(); m = b.channel_model(grid)
import latentinv.operators.shortest_path, scipy.sparse.csgraph
try:
    import ttcrpy.rgrid
except ImportError:
    pass
{'import pygimli' if engine == 'pygimli' else ''}
from machine_info import peak_added_bytes
def build_and_run():
    fwd, fj = b.ENGINES[{engine!r}]({n}, {threads})
    fj(m)
print(peak_added_bytes(build_and_run) / 2 ** 20)
"""
    try:
        out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=900)
    except subprocess.TimeoutExpired as exc:
        return None, f"the probe's subprocess timed out after {exc.timeout:g} s"
    if out.returncode != 0:
        lines = out.stderr.strip().splitlines()
        return None, lines[-1] if lines else (f"the probe's subprocess ended with exit status {out.returncode} "
                                              "and no error output")
    return float(out.stdout.strip().splitlines()[-1]), None


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--nodes", type=int, default=3, help="secondary nodes for the timing table")
    parser.add_argument("--repeat", type=int, default=5, help="timing repeats (minimum is reported)")
    parser.add_argument("--reference-nodes", type=int, default=40)
    parser.add_argument("--sweep", type=int, nargs="+", default=list(range(1, 11)))
    parser.add_argument("--extrapolate", nargs="*", default=["1:6", "2:6", "2:7", "1:7", "3:6", "4:7"],
                        help="COARSE:FINE pairs of secondary nodes for latentinv's Richardson "
                             "extrapolation rows (ShortestPathOperator(extrapolate_from=COARSE))")
    parser.add_argument("--truths", default=os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..",
                                                         "shared", "data", "paper_test_models"),
                        help="directory of the paper's truths (mc1-3.npy, mv1-3.npy) for the accuracy sweep")
    parser.add_argument("--skip-pygimli", action="store_true")
    parser.add_argument("--skip-memory", action="store_true")
    parser.add_argument("--json", default="bench_raytrace.json")
    parser.add_argument("--quick", action="store_true",
                        help="about two minutes: 1 timing repeat, the accuracy sweep at 1 and 3 nodes against a "
                             "10-node reference, one extrapolation pair (2:6), no memory rows")
    args = parser.parse_args(argv)
    if args.repeat < 1:     # best_time of no run is inf, which would be recorded as a time
        parser.error(f"--repeat must be at least 1, got {args.repeat}")
    if args.quick:
        args.repeat, args.sweep, args.reference_nodes, args.extrapolate, args.skip_memory = 1, [1, 3], 10, ["2:6"], True

    grid, survey = paper_crosshole()
    m = channel_model(grid)
    n = args.nodes
    report = {"machine": {"platform": platform.platform(), "cpu": cpu_model(),
                          **cpu_counts(), "python": sys.version.split()[0]},
              "latentinv": code_info(),
              "geometry": {"grid": repr(grid), "n_data": survey.n_data}, "nodes": n}

    # 1. timing table ------------------------------------------------------------------------------
    rows = [("latentinv", 1), ("latentinv", 2), ("latentinv-dijkstra", 1), ("latentinv-dijkstra", 2),
            ("latentinv-sweep", 1), ("latentinv-wavefront-scalar", 1), ("latentinv-python", 1),
            ("ttcrpy", 1), ("ttcrpy", 2)]
    if not args.skip_pygimli:
        rows.append(("pygimli", 1))
    timing, failed = [], []
    for name, threads in rows:
        try:
            fwd, fj = ENGINES[name](n, threads)
        except ImportError as exc:
            print(f"skip {name}: {exc}")
            continue
        repeat = 1 if name in ("latentinv-python", "pygimli") else args.repeat
        try:
            fj(m)  # warm up
            row = {"engine": name, "threads": threads, "kernel": getattr(fwd, "kernel", name), "repeats": repeat,
                   "forward_s": best_time(fwd, m, repeat), "forward_jacobian_s": best_time(fj, m, repeat)}
        except Exception as exc:      # a failing engine is recorded as failed, not as a time
            failed.append({"engine": name, "threads": threads, "error": f"{type(exc).__name__}: {exc}"})
            print(f"{name} ({threads} thread(s)) FAILED: {failed[-1]['error']}")
            continue
        timing.append(row)
    ref = {r["threads"]: r for r in timing if r["engine"] == "ttcrpy"}
    print(f"\nPaper geometry, channel model, {n} secondary nodes; {cpu_model()}, "
          f"{cpus_text()} (minimum of {args.repeat} runs; 1 run for latentinv-python and pygimli)")
    print(f"{'engine':<28}{'threads':>8}{'forward ms':>12}{'F+J ms':>10}{'F ratio':>10}{'F+J ratio':>11}  kernel")
    for r in timing:
        tt = ref.get(r["threads"])
        r["forward_speedup_vs_ttcrpy"] = tt["forward_s"] / r["forward_s"] if tt else None
        r["forward_jacobian_speedup_vs_ttcrpy"] = tt["forward_jacobian_s"] / r["forward_jacobian_s"] if tt else None
        f = lambda x: f"{x:.2f}x" if x else "-"
        print(f"{r['engine']:<28}{r['threads']:>8}{1e3 * r['forward_s']:>12.1f}{1e3 * r['forward_jacobian_s']:>10.1f}"
              f"{f(r['forward_speedup_vs_ttcrpy']):>10}{f(r['forward_jacobian_speedup_vs_ttcrpy']):>11}  {r['kernel']}")
    print("(ratio = ttcrpy time / engine time at the same thread count; > 1 is faster than ttcrpy)")
    report["timing"] = timing
    if failed:
        report["timing_failed"] = failed

    # 2. memory ---------------------------------------------------------------------------------------
    if not args.skip_memory:
        memory, memory_failed = [], []
        print(f"\nPeak memory (resident growth: graph + one F+J call), {n} secondary nodes")
        for name, threads in [("latentinv", 1), ("latentinv", 2), ("latentinv-dijkstra", 1),
                              ("latentinv-dijkstra", 2), ("latentinv-python", 1),
                              ("ttcrpy", 1), ("ttcrpy", 2)] + ([] if args.skip_pygimli else [("pygimli", 1)]):
            mib, error = peak_memory_mib(name, n, threads)
            if error is not None:     # a failed probe is recorded as failed, with its error, not as NaN
                memory_failed.append({"engine": name, "threads": threads, "error": error})
                print(f"{name:<28}{threads:>8}  FAILED: {error}")
                continue
            memory.append({"engine": name, "threads": threads, "peak_rss_growth_mib": mib})
            print(f"{name:<28}{threads:>8}{mib:>10.1f} MiB")
        report["memory"] = memory
        if memory_failed:
            report["memory_failed"] = memory_failed

    # solves per SGD iteration (paper's nonlinear case): what reciprocity could save
    solves = batch_solves()
    print("\nSolves per SGD iteration (25 x 25 pairs, batch 25): batch sources "
          f"{solves['mean_batch_sources']:.1f}, batch receivers {solves['mean_batch_receivers']:.1f}, "
          f"min of both {solves['mean_min_of_both']:.1f}; the full-data misfit needs "
          f"{solves['full_misfit_solves']} solves either way; Dijkstra runs "
          f"{solves['dijkstra_solves_per_iteration']} per iteration, the wavefront solver at most "
          f"{solves['wavefront_passes_per_iteration']:.2f} passes of 4 lanes (more where the "
          f"subsets' sources are far apart)")
    report["solves_per_iteration"] = solves

    # 3. accuracy against a high-resolution reference ------------------------------------------------
    # models: the paper's six truths (mc1-3, mv1-3, slowness of the paper's velocity law) when the
    # data directory is there, else the channel model; times are measured on the channel model
    models = {}
    if os.path.isdir(args.truths):
        for name in ("mc1", "mc2", "mc3", "mv1", "mv2", "mv3"):
            path = os.path.join(args.truths, name + ".npy")
            if os.path.exists(path):
                x = grid.to_flat(np.load(path).astype(np.float64))
                models[name] = 1.0 / (0.06 + 0.02 * (1.0 - x))   # paper_slowness (ns/m)
    if not models:
        models["channel"] = m
    fwd_ref, _ = latentinv_engine(args.reference_nodes, available_cpus())
    t0 = time.perf_counter()
    t_ref = {name: fwd_ref(s) for name, s in models.items()}
    print(f"\nReference: latentinv at {args.reference_nodes} secondary nodes on {', '.join(models)} "
          f"({time.perf_counter() - t0:.1f} s); MAE averaged over these models")
    sweep = []
    print(f"{'nodes':>6}{'MAE ns':>10}{'max ns':>9}{'latentinv F ms':>16}{'F+J ms':>9}{'ttcrpy F+J ms':>15}{'ttcrpy MAE':>12}")
    sweep_repeat = max(1, args.repeat // 2)
    for k in args.sweep:
        fwd, fj = latentinv_engine(k, 1)
        err = np.concatenate([fwd(s) - t_ref[name] for name, s in models.items()])
        fj(m)  # warm up
        row = {"nodes": k, "mae_ns": float(np.mean(np.abs(err))), "max_ns": float(np.max(np.abs(err))),
               "repeats": sweep_repeat,
               "latentinv_forward_s": best_time(fwd, m, sweep_repeat),
               "latentinv_forward_jacobian_s": best_time(fj, m, sweep_repeat)}
        try:
            tfwd, tfj = ttcrpy_engine(k, 1)
            tfj(m)  # warm up, and the same number of runs as latentinv's
            row["ttcrpy_forward_jacobian_s"] = best_time(tfj, m, sweep_repeat)
            errs = []
            for name, s in models.items():
                out = tfwd(s)
                errs.append((out[0] if isinstance(out, tuple) else out) - t_ref[name])
            row["ttcrpy_mae_ns"] = float(np.mean(np.abs(np.concatenate(errs))))
        except ImportError:
            row["ttcrpy_forward_jacobian_s"] = row["ttcrpy_mae_ns"] = None
        sweep.append(row)
        tt = row["ttcrpy_forward_jacobian_s"]
        print(f"{k:>6}{row['mae_ns']:>10.4f}{row['max_ns']:>9.3f}{1e3 * row['latentinv_forward_s']:>16.1f}"
              f"{1e3 * row['latentinv_forward_jacobian_s']:>9.1f}{(1e3 * tt if tt else float('nan')):>15.1f}"
              f"{(row['ttcrpy_mae_ns'] if row['ttcrpy_mae_ns'] is not None else float('nan')):>12.4f}")
    # Richardson extrapolation (extrapolate_from): two graph solves, one combination
    extrapolated = []
    if args.extrapolate:
        print(f"\n{'fine:coarse':>12}{'MAE ns':>10}{'max ns':>9}{'latentinv F+J ms':>18}")
    for pair in args.extrapolate:
        coarse, fine = (int(v) for v in pair.split(":"))
        _, fj = latentinv_engine(fine, 1, extrapolate_from=coarse)
        err = np.concatenate([fj(s[None])[0][0] - t_ref[name] for name, s in models.items()])
        row = {"nodes": fine, "extrapolate_from": coarse, "mae_ns": float(np.mean(np.abs(err))),
               "max_ns": float(np.max(np.abs(err))),
               "latentinv_forward_jacobian_s": best_time(fj, m, max(1, args.repeat // 2))}
        extrapolated.append(row)
        print(f"{f'{fine}:{coarse}':>12}{row['mae_ns']:>10.4f}{row['max_ns']:>9.3f}"
              f"{1e3 * row['latentinv_forward_jacobian_s']:>18.1f}")
    report["accuracy"] = {"reference_nodes": args.reference_nodes, "sweep": sweep,
                          "extrapolated": extrapolated}

    # accuracy per unit time: the cheapest latentinv setting reaching the target MAE, against
    # ttcrpy at the timing table's node count (same thread count: 1)
    target = 0.05
    ok = [r for r in sweep + extrapolated if r["mae_ns"] <= target]
    tt = ref.get(1)
    if ok and tt:
        best = min(ok, key=lambda r: r["latentinv_forward_jacobian_s"])
        tt_ok = [r for r in sweep if r.get("ttcrpy_mae_ns") is not None and r["ttcrpy_mae_ns"] <= target]
        summary = {"target_mae_ns": target, "latentinv_nodes": best["nodes"],
                   "latentinv_extrapolate_from": best.get("extrapolate_from"),
                   "latentinv_forward_jacobian_s": best["latentinv_forward_jacobian_s"],
                   "ttcrpy_nodes_needed": tt_ok[0]["nodes"] if tt_ok else None,
                   "ttcrpy_forward_jacobian_s_at_timing_nodes": tt["forward_jacobian_s"]}
        summary["ratio"] = summary["ttcrpy_forward_jacobian_s_at_timing_nodes"] / summary["latentinv_forward_jacobian_s"]
        how = (f"{best['nodes']} secondary nodes" if best.get("extrapolate_from") is None else
               f"{best['nodes']} secondary nodes extrapolated from {best['extrapolate_from']}")
        print(f"\nMAE <= {target} ns: latentinv needs {how}, F+J "
              f"{1e3 * best['latentinv_forward_jacobian_s']:.0f} ms on 1 thread; ttcrpy needs "
              f"{summary['ttcrpy_nodes_needed']} nodes; ttcrpy at {n} nodes takes "
              f"{1e3 * tt['forward_jacobian_s']:.0f} ms (ratio {summary['ratio']:.2f}x)")
        report["accuracy_per_time"] = summary
    with open(args.json, "w") as f:
        json.dump(report, f, indent=2, allow_nan=False)      # strict JSON: no NaN or Infinity
    print(f"\nwrote {args.json}")
    return report


if __name__ == "__main__":
    main()
