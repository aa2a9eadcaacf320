"""Scale-out benchmark: surveys per minute of LatentInverter serially and on a local Dask cluster.

The linear case (paper grid 129 x 65, 625 straight rays, the shipped default prior, VSbrd settings with a
reduced budget), in one run on one machine. Every row times the inversion alone: each row's estimator is
fitted before its clock starts (``timed`` in the JSON); the ``client.map`` rows time ``invert``'s chunks,
which leave out only its homogeneous baseline (one straight-ray response of the surveys).

- serial, all surveys in one batch, with 1 torch thread and with one per CPU the process may run on
  (``n_jobs=None``);
- a ``LocalCluster`` of 1 worker x 1 thread and of ``--workers`` workers x 1 thread (processes),
  one survey per chunk sent to the workers (``client.map``; joblib would run the chunks of a
  one-thread cluster in the calling process), and the same through ``joblib.parallel_backend("dask")``
  (the user's path) on the larger cluster;
- the overhead per chunk: (Dask wall time with 1 worker - serial 1-thread time of the same chunks in
  line) / number of chunks;
- the parallel efficiency: rate(N workers) / (N x rate(1 worker));
- the pickled size of the fitted estimator against the prior's weights file, and its pickling time.

Usage: ``python benchmarks/bench_scaleout.py [--surveys 8] [--starts 10] [--epochs 10] [--workers 2]
[--json out.json]``. The cluster starts before the timed part (workers import torch once).
"""
from __future__ import annotations

import argparse
import json
import os
import pickle
import time
from importlib.resources import files

import joblib
import numpy as np
import torch

from latentinv import StraightRayOperator, VAEPrior, paper_crosshole
from latentinv.inversion import PAPER_CASES, InversionResult, LatentInverter, paper_slowness
from latentinv.inversion.parallel import run_chunk
from latentinv.inversion.randomness import as_seed
from latentinv.inversion.runtime import torch_threads
from machine_info import code_info, cpu_model, cpus_text  # noqa: E402  (a sibling script)


def machine():
    return f"{cpu_model()}, {cpus_text()}, torch {torch.__version__}"


def serial_threads():
    """The torch thread counts of the serial one-batch rows: 1 and the CPUs the process may run on."""
    from latentinv._cpus import available_cpus

    return sorted({1, available_cpus()})


def timed(fn):
    t0 = time.perf_counter()
    out = fn()
    return time.perf_counter() - t0, out


#: What every row's seconds are (the JSON's ``timed``)
TIMED = "invert alone: each row's estimator is fitted (fit) before its clock starts"


def chunk_arguments(estimator, data, seed):
    """``run_chunk``'s arguments for ``client.map``, one survey per chunk, as ``LatentInverter.invert``
    passes them: the estimator, the chunk's traveltimes, sigma (None: the estimator's), the seed and the
    chunk's slice of the surveys."""
    n = len(data)
    return ([estimator] * n, [data[i:i + 1] for i in range(n)], [None] * n, [seed] * n,
            [slice(i, i + 1) for i in range(n)])


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--surveys", type=int, default=8)
    ap.add_argument("--starts", type=int, default=10)
    ap.add_argument("--epochs", type=int, default=10)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--json", default=None)
    args = ap.parse_args(argv)
    from distributed import Client, LocalCluster

    prior = VAEPrior.pretrained(device="cpu")
    op = StraightRayOperator(*paper_crosshole())
    data = op.response(paper_slowness(prior.sample(args.surveys, random_state=3)))
    settings = dict(PAPER_CASES["VSbrd"], n_epochs=args.epochs, n_starts=args.starts, random_state=0,
                    device="cpu")

    def inverter(**kw):
        return LatentInverter(prior, op, **settings, **kw).fit(data)

    rows, results = [], {}

    def row(name, seconds, res, chunks=None):
        rate = 60.0 * args.surveys / seconds
        rows.append(dict(mode=name, seconds=seconds, surveys_per_minute=rate, chunks=chunks))
        results[name] = res
        print(f"{name:<44s} {seconds:8.1f} s {rate:8.2f} surveys/min", flush=True)

    print(f"# {machine()}; {args.surveys} surveys x {args.starts} starts x "
          f"{args.epochs * 25} iterations (linear case); timed: {TIMED}")
    inv = inverter()
    size = len(pickle.dumps(inv))
    t_pickle = min(timed(lambda: pickle.dumps(inv))[0] for _ in range(3))
    weights = (files("latentinv") / "data" / "channels_ti_prior" / "weights.safetensors").stat().st_size
    print(f"pickled fitted estimator: {size / 1e6:.2f} MB ({size / weights:.3f}x the prior's weights "
          f"file), {1e3 * t_pickle:.1f} ms")

    for threads in serial_threads():
        with torch_threads(threads):
            est = inverter()
            t, res = timed(lambda: est.invert(data))
        row(f"serial, one batch, {threads} thread(s)", t, res)
    with torch_threads(1):
        est = inverter(n_jobs=1, chunk_size=1)
        t, res = timed(lambda: est.invert(data))
    row("serial, one survey per chunk, 1 thread", t, res, args.surveys)
    serial_chunks = t

    seed = as_seed(settings["random_state"])
    for n_workers in (1, args.workers):
        with LocalCluster(n_workers=n_workers, threads_per_worker=1, processes=True,
                          dashboard_address=None, silence_logs=40) as cluster, Client(cluster) as client:
            client.run(lambda: __import__("latentinv.inversion"))        # imports before timing
            # the chunks straight to the workers (client.map): joblib runs them in this process
            # when the cluster has a single thread in all (its n_jobs resolves to 1)
            est = inverter()

            def on_workers():
                shared = client.scatter(est, broadcast=True)
                futures = client.map(run_chunk, *chunk_arguments(shared, data, seed), pure=False)
                return InversionResult.concatenate(client.gather(futures))
            t, res = timed(on_workers)
            row(f"Dask LocalCluster {n_workers} worker(s) x 1 thread", t, res, args.surveys)
            if n_workers > 1:        # the user's path: joblib's Dask backend
                est = inverter(chunk_size=1)
                with joblib.parallel_backend("dask"):
                    t, res = timed(lambda: est.invert(data))
                row(f"joblib Dask backend, {n_workers} workers x 1 thread", t, res, args.surveys)

    by = {r["mode"]: r for r in rows}
    one = by["Dask LocalCluster 1 worker(s) x 1 thread"]
    many = by[f"Dask LocalCluster {args.workers} worker(s) x 1 thread"]
    speedup = one["seconds"] / many["seconds"]
    efficiency = speedup / args.workers
    overhead = (one["seconds"] - serial_chunks) / args.surveys
    same = all(np.array_equal(results[r["mode"]].models, results["serial, one survey per chunk, 1 thread"].models)
               for r in rows if "Dask" in r["mode"])
    print(f"{args.workers} workers / 1 worker: {speedup:.2f}x (parallel efficiency {efficiency:.0%}); "
          f"overhead per chunk {overhead * 1e3:.0f} ms; Dask models equal the serial per-chunk run bit "
          f"for bit: {same}")
    serial2 = by[f"serial, one batch, {serial_threads()[-1]} thread(s)"]
    print(f"serial {serial_threads()[-1]}-thread one batch vs {args.workers} workers: "
          f"{serial2['seconds'] / many['seconds']:.2f}x")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(dict(machine=machine(), latentinv=code_info(), args=vars(args), timed=TIMED, rows=rows, speedup=speedup,
                           efficiency=efficiency, overhead_per_chunk_s=overhead, bit_for_bit=same,
                           pickled_bytes=size, weights_bytes=weights, pickle_seconds=t_pickle,
                           load_average=os.getloadavg()), f, indent=2)


if __name__ == "__main__":
    main()
