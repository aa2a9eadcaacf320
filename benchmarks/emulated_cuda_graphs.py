"""Run a script, or ``-c`` code, with ``LatentInverter(cuda_graphs=True)`` emulated on the CPU.

For rehearsing, on a machine without a GPU, the code paths that run only with ``cuda_graphs=True``
(``reproduce_paper.py --cuda-graphs``, ``gpu_checks.sh``'s capture probe): such an estimator fits as an
eager one and then runs the static step of ``latentinv.inversion.graphed`` as a capture would (the full
data a dense product, full batches ordered once), without the CUDA graph itself, which needs CUDA.
``benchmarks/gpu_rehearsal_python.sh`` runs scripts through it. Not for measurements. Usage::

    python benchmarks/emulated_cuda_graphs.py SCRIPT.py [ARGS...]
    python benchmarks/emulated_cuda_graphs.py -c CODE
"""
import runpy
import sys

from latentinv.inversion import LatentInverter, graphed

_fit, _static = LatentInverter.fit, graphed.run_sgd_static
emulated_runs = []


def _fit_eagerly(self, *args, **kwargs):
    """fit refuses cuda_graphs=True without CUDA: fit with it off, then restore it for invert."""
    graphs, self.cuda_graphs = self.cuda_graphs, False
    try:
        return _fit(self, *args, **kwargs)
    finally:
        self.cuda_graphs = graphs


def _static_without_capture(problem, z, streams, cfg, *, capture=False, **kwargs):
    emulated_runs.append(capture)
    kwargs.setdefault("dense_full", capture)
    kwargs.setdefault("reuse_full_batches", capture)
    return _static(problem, z, streams, cfg, capture=False, **kwargs)


def main(argv=None):
    argv = sys.argv[1:] if argv is None else argv
    if not argv or argv[0] in ("-h", "--help"):
        print("usage: emulated_cuda_graphs.py SCRIPT.py [ARGS...] | -c CODE [ARGS...]\n\n" + __doc__)
        raise SystemExit(0 if argv else 2)
    LatentInverter.fit = _fit_eagerly
    LatentInverter._check_unchanged_params = lambda self: None    # cuda_graphs differs between fit and run
    graphed.run_sgd_static = _static_without_capture
    try:
        if argv[0] == "-c":
            sys.argv = ["-c", *argv[2:]]
            exec(compile(argv[1], "<-c>", "exec"), {"__name__": "__main__"})
        else:
            sys.argv = argv
            runpy.run_path(argv[0], run_name="__main__")
    finally:
        print(f"[emulated CUDA graphs] {sum(emulated_runs)} runs of the static step as captured",
              file=sys.stderr)


if __name__ == "__main__":
    main()
