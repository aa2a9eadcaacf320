"""The raytracing of one iteration of the paper's nonlinear case (the Jacobians of 6 truths, 3 secondary
nodes), with the C++ backend and with the pure-Python one, on this machine.

Why: on a GPU machine the nonlinear reproduction ran at 6.9 s per iteration because the script had
imported a source tree without the compiled core (docs/benchmarks/gpu.md, 2026-11-29). This prints the
two backends' rates side by side, so that a log's rate says which backend ran.

    python benchmarks/nonlinear_backend_rate.py [--seconds 20]
"""
import argparse
import os
import platform
import time

import numpy as np

from latentinv.datasets import held_out_corner, load_held_out_crop
from latentinv.geometry import CrossholeSurvey, Grid2D
from latentinv.inversion import paper_slowness
from latentinv.operators import ShortestPathOperator


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--seconds", type=float, default=20.0, help="time spent on each backend")
    args = p.parse_args(argv)
    slowness = paper_slowness(np.stack([load_held_out_crop(*held_out_corner(s)).ravel() for s in range(6)]))
    print(f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} CPUs")
    for backend in ("cpp", "python"):
        op = ShortestPathOperator(Grid2D.paper(), CrossholeSurvey.paper(0.0, 6.5), n_secondary_nodes=3,
                                  backend=backend)
        t0, passes = time.perf_counter(), 0
        while time.perf_counter() - t0 < args.seconds:
            for row in slowness:
                op.jacobian(row)
            passes += 1
        print(f"{backend}: {(time.perf_counter() - t0) / passes:.3f} s per pass of 6 Jacobians "
              f"({op.n_threads} threads, {passes} passes)", flush=True)


if __name__ == "__main__":
    main()
