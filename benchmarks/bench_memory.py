"""Memory of an inversion: the lower bound the estimator checks before a batch, against the peak it takes.

For each batch (``--surveys`` surveys x ``--starts`` starts, the linear case: the paper's grid, 625
straight rays, the shipped default prior, VSbrd's settings for ``--epochs`` epochs), in a fresh process:

- the decoder's activations kept per start for the gradient (``latentinv._memory.saved_bytes_per_row``,
  what the README's "about 0.6 MB per start" quotes);
- the lower bound that ``LatentInverter.invert`` compares with the memory available before it runs
  (``_check_batch_fits``: the activations, the records, the result);
- the peak resident memory the run added: the kernel's high-water mark (``VmHWM``, reset through
  ``/proc/self/clear_refs`` just before ``invert``) less the resident memory before it (``VmRSS``), Linux
  only, after a warm-up of one start (torch's one-time buffers paid, the batch's memory not yet held);
- their ratio: the bound's share of what the run took (it must stay at most 1 for the check never to refuse
  a batch that fits).

Usage: ``python benchmarks/bench_memory.py [--surveys 1 4 16] [--starts 100] [--epochs 1] [--json out.json]``.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys

import torch

from machine_info import code_info, cpu_counts, cpu_model, cpus_text  # noqa: E402  (a sibling script)

CHILD = r"""
import json, sys
import numpy as np
import torch
import latentinv._memory as memory
from latentinv import StraightRayOperator, VAEPrior, paper_crosshole
from latentinv.inversion import PAPER_CASES, LatentInverter, paper_slowness
from machine_info import peak_added_bytes      # a sibling script (the child runs in benchmarks/)

surveys, starts, epochs = map(int, sys.argv[1:4])
torch.set_num_threads(int(sys.argv[4]))

grid, survey = paper_crosshole(0.01, 6.49)
operator = StraightRayOperator(grid, survey)
prior = VAEPrior.pretrained()
rng = np.random.default_rng(0)
models = prior.sample(surveys, random_state=0)
times = operator.response(paper_slowness(models)) + rng.normal(0, 0.5, (surveys, operator.n_data))
settings = dict(PAPER_CASES["VSbrd"], n_epochs=epochs)
inverter = LatentInverter(prior, operator, n_starts=starts, random_state=0, **settings).fit(times)

bound = {}
real_check = memory.check_fits
def recording_check(owner, n_rows, bytes_per_row, device, **kw):
    bound[str(device)] = bound.get(str(device), 0) + n_rows * bytes_per_row
    return real_check(owner, n_rows, bytes_per_row, device, **kw)
memory.check_fits = recording_check

# warm-up of one start: torch's first-call buffers and thread pools, without leaving the batch's
# activations in the allocator's pools (a warm-up of the same batch would, and the run would add nothing)
LatentInverter(prior, operator, n_starts=1, random_state=0, **settings).fit(times[:1]).invert(times[:1])
bound.clear()                          # the warm-up's own check
added = peak_added_bytes(lambda: inverter.invert(times))
print(json.dumps(dict(bound=bound, added=added)))
"""


def per_start_activations():
    """The shipped prior's activations kept per start for the latent gradient, in bytes."""
    from latentinv import VAEPrior
    from latentinv._memory import saved_bytes_per_row

    prior = VAEPrior.pretrained()
    decoder = prior.decoder_.eval().requires_grad_(False)
    return saved_bytes_per_row(decoder, torch.zeros(1, prior.n_components, dtype=torch.float32))


def measure(surveys, starts, epochs, threads):
    here = os.path.dirname(os.path.abspath(__file__))
    out = subprocess.run([sys.executable, "-c", CHILD, str(surveys), str(starts), str(epochs), str(threads)],
                         capture_output=True, text=True, cwd=here)
    if out.returncode != 0:
        return dict(surveys=surveys, starts=starts, failed=out.stderr.strip().splitlines()[-1:])
    r = json.loads(out.stdout.strip().splitlines()[-1])
    added = r["added"]
    bound = r["bound"].get("cpu", 0)
    return dict(surveys=surveys, starts=starts, epochs=epochs, bound_bytes=bound, peak_added_bytes=added,
                bound_over_peak=bound / added if added > 0 else None)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--surveys", type=int, nargs="+", default=[1, 4, 16])
    ap.add_argument("--starts", type=int, default=100)
    ap.add_argument("--epochs", type=int, default=1)
    ap.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's default)")
    ap.add_argument("--json", default=None, help="JSON record to write")
    a = ap.parse_args()
    for name in ("surveys", "starts", "epochs", "threads"):
        values = getattr(a, name)
        for v in values if isinstance(values, list) else [values]:
            if v is not None and v < 1:
                ap.error(f"--{name}: expected a whole number of at least 1, got {v}")
    if not os.path.exists("/proc/self/clear_refs"):
        ap.error("the peak is read from Linux's /proc/self/status after a reset through /proc/self/clear_refs,"
                 " which this system does not have")
    threads = a.threads or torch.get_num_threads()
    act = per_start_activations()
    print(f"# bench_memory on {cpu_model()}, {cpus_text()}, torch {torch.__version__},"
          f" {threads} threads")
    print(f"shipped prior: {act / 1e6:.3f} MB of activations kept per start for the gradient")
    print(f"{'surveys':>8} {'starts':>7} {'bound MB':>9} {'peak added MB':>14} {'bound/peak':>11}")
    rows = []
    for s in a.surveys:
        row = measure(s, a.starts, a.epochs, threads)
        rows.append(row)
        if "failed" in row:
            print(f"{s:>8} {a.starts:>7}  failed: {row['failed']}")
            continue
        ratio = row["bound_over_peak"]
        print(f"{s:>8} {a.starts:>7} {row['bound_bytes'] / 1e6:>9.1f} {row['peak_added_bytes'] / 1e6:>14.1f}"
              f" {ratio if ratio is None else round(ratio, 3)!s:>11}")
    if a.json:
        record = dict(machine=dict(cpu=cpu_model(), **cpu_counts(), torch=torch.__version__, threads=threads),
                      code=code_info(), activations_per_start_bytes=act, rows=rows,
                      command=" ".join([os.path.basename(sys.argv[0])] + sys.argv[1:]))
        with open(a.json, "w") as f:
            json.dump(record, f, indent=1, allow_nan=False)
        print(f"wrote {a.json}")


if __name__ == "__main__":
    main()
