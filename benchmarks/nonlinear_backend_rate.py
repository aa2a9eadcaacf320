"""The raytracing of one iteration of the paper's nonlinear case (the Jacobians of 6 truths, 3 secondary
nodes), with the C++ backend and with the pure-Python one, on this machine.

Why: on a GPU machine the nonlinear reproduction ran at 6.9 s per iteration because the script had
imported a source tree without the compiled core (docs/benchmarks/gpu.md, 2026-11-29). This prints the
two backends' rates side by side (the mean over the passes after one warm-up pass, which builds the
graph), and their ratio, so that a log's rate says which backend ran.

    python benchmarks/nonlinear_backend_rate.py [--seconds 20]
"""
import argparse
import time

import numpy as np

from latentinv.datasets import held_out_corner, load_held_out_crop
from latentinv.geometry import CrossholeSurvey, Grid2D
from latentinv.inversion import paper_slowness
from latentinv.operators import ShortestPathOperator
from machine_info import cpu_model, cpus_text  # a sibling script


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--seconds", type=float, default=20.0, help="time spent on each backend")
    args = p.parse_args(argv)
    if not args.seconds > 0:
        p.error(f"--seconds must be positive, got {args.seconds}")
    slowness = paper_slowness(np.stack([load_held_out_crop(*held_out_corner(s)).ravel() for s in range(6)]))
    print(f"machine: {cpu_model()}, {cpus_text()}")
    rates = {}
    for backend in ("cpp", "python"):
        op = ShortestPathOperator(Grid2D.paper(), CrossholeSurvey.paper(0.0, 6.5), n_secondary_nodes=3,
                                  backend=backend)
        for row in slowness:         # warm-up pass, not timed
            op.jacobian(row)
        t0, passes = time.perf_counter(), 0
        while time.perf_counter() - t0 < args.seconds:
            for row in slowness:
                op.jacobian(row)
            passes += 1
        rates[backend] = (time.perf_counter() - t0) / passes
        print(f"{backend}: {rates[backend]:.3f} s per pass of 6 Jacobians "
              f"({op.n_threads} threads, {passes} passes after a warm-up pass)", flush=True)
    print(f"python / cpp: {rates['python'] / rates['cpp']:.1f}x (the pure-Python backend's time per pass over "
          f"the C++ one's)")
    return rates


if __name__ == "__main__":
    main()
