"""Benchmark of LatentSampler on the paper's linear case: mc2, 0.25 ns noise, the shipped prior.

The paper's test model mc2 (/work/shared/data/paper_test_models/mc2.npy, or --test-models), the
straight-ray operator of the paper's crosshole geometry (boreholes at x = 0.01 / 6.49 m, 625 rays),
data = response(paper_slowness(mc2)) + 0.25 ns x the published noise realization (noiserealz.npy),
prior = ``VAEPrior.pretrained()``. Chains start from short SGD runs (``--sgd-epochs`` epochs of the
VSbrd settings from ``--sgd-starts`` starts; each start's best latent seeds ``n_chains / n_starts``
chains, ``--start best`` seeds every chain from the lowest-misfit start). Reported: chains, draws,
acceptance, R-hat and bulk/tail ESS per latent dimension (ArviZ), ESS per second and per forward run,
the posterior mean's model RMSE against the truth (and the SGD's), and a figure (mean, standard
deviation, channel probability, samples).

Forward runs counted: every decoder evaluation of one latent vector followed by traveltimes, in the
SGD (one per start and iteration; its mini-batches of 25 rays still decode the whole model) and in
the chains (one per chain and proposal, plus the initial point).

Usage::

    PYTHONPATH=src python benchmarks/bench_sampling.py [--method pcn|mala] [--chains 16]
        [--burnin 1000] [--samples 1000] [--thin 1] [--sgd-starts 8] [--sgd-epochs 20]
        [--start sgd|best] [--threads 2] [--quick] [--out bench-sampling]
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import numpy as np
import torch

import latentinv
from latentinv.inversion import PAPER_CASES, LatentInverter, LatentSampler, paper_slowness
from latentinv.prior import VAEPrior

NOISE_STD = 0.25


def machine():
    """reproduce_paper's description of the machine, with the threads and the load average."""
    from reproduce_paper import machine as described   # a sibling script: benchmarks/ is on sys.path

    return dict(described(), torch_threads=torch.get_num_threads(), load_average=list(os.getloadavg()))


def parse_args(argv):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--test-models", default="/work/shared/data/paper_test_models")
    p.add_argument("--method", choices=["pcn", "mala"], default="pcn")
    p.add_argument("--chains", type=int, default=16)
    p.add_argument("--burnin", type=int, default=1000)
    p.add_argument("--samples", type=int, default=1000)
    p.add_argument("--thin", type=int, default=1)
    p.add_argument("--sgd-starts", type=int, default=8)
    p.add_argument("--sgd-epochs", type=int, default=20)
    p.add_argument("--start", choices=["sgd", "best"], default="sgd")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--quick", action="store_true", help="2 SGD epochs, 4 chains x (50 + 50) draws")
    p.add_argument("--out", default="bench-sampling")
    a = p.parse_args(argv)
    if a.quick:
        a.sgd_epochs, a.sgd_starts, a.chains, a.burnin, a.samples = 2, 2, 4, 50, 50
    return a


def main(argv=None):
    a = parse_args(argv)
    torch.set_num_threads(a.threads)
    folder = Path(a.test_models)
    if not (folder / "mc2.npy").is_file():
        sys.exit(f"mc2.npy not found in {folder}: pass --test-models (the paper's test_models folder)")
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    grid, survey = latentinv.paper_crosshole(0.01, 6.49)
    op = latentinv.StraightRayOperator(grid, survey)
    truth = np.load(folder / "mc2.npy").reshape(-1).astype(np.float64)
    y = (op.response(paper_slowness(truth)) + NOISE_STD * np.load(folder / "noiserealz.npy"))[None]
    prior = VAEPrior.pretrained()

    t0 = time.perf_counter()
    sgd = LatentInverter(prior, op, **dict(PAPER_CASES["VSbrd"], n_epochs=a.sgd_epochs),
                         n_starts=a.sgd_starts, random_state=a.seed, device="cpu").fit(y)
    res = sgd.invert(y)
    t_sgd = time.perf_counter() - t0
    sgd_forward = a.sgd_starts * sgd.n_iterations_
    print(f"[sgd] {a.sgd_starts} starts x {sgd.n_iterations_} iterations in {t_sgd:.0f} s; data RMSE "
          f"{np.round(res.data_rmse[0], 3).tolist()} ns", flush=True)
    if a.start == "best":
        z0 = np.repeat(res.latents[0][[int(res.best_start[0])]], a.chains, 0)
    else:
        z0 = LatentSampler.initial_latents_from(res, a.chains)

    sampler = LatentSampler(prior, op, method=a.method, n_chains=a.chains, n_burnin=a.burnin,
                            n_samples=a.samples, thin=a.thin, initial_latents=z0, noise_std=NOISE_STD,
                            random_state=a.seed, device="cpu").fit(y)
    post = sampler.sample(y)
    rhat, ess_bulk, ess_tail = post.rhat()[0], post.ess("bulk")[0], post.ess("tail")[0]
    n_forward = post.n_forward + sgd_forward
    rmse = lambda m: float(np.sqrt(np.mean((m - truth) ** 2)))
    report = dict(
        case="mc2, straight rays, 0.25 ns noise (published realization), VAEPrior.pretrained()",
        method=a.method, n_chains=a.chains, n_burnin=a.burnin, n_samples=a.samples, thin=a.thin,
        start=a.start, sgd=dict(n_starts=a.sgd_starts, n_iterations=int(sgd.n_iterations_), time_s=t_sgd,
                                forward_runs=sgd_forward, data_rmse_ns=res.data_rmse[0].tolist(),
                                model_rmse=rmse(res.models[0])),
        sampling_time_s=post.elapsed_s, sampling_forward_runs=post.n_forward,
        total_forward_runs=n_forward, total_time_s=t_sgd + post.elapsed_s,
        acceptance_rate=post.acceptance_rate[0].tolist(), step_size=post.step_size[0].tolist(),
        rhat=rhat.tolist(), max_rhat=float(rhat.max()), n_dims_rhat_below_1_05=int((rhat < 1.05).sum()),
        ess_bulk=ess_bulk.tolist(), ess_tail=ess_tail.tolist(), min_ess_bulk=float(ess_bulk.min()),
        min_ess_bulk_per_s=float(ess_bulk.min() / post.elapsed_s),
        min_ess_bulk_per_forward=float(ess_bulk.min() / post.n_forward),
        posterior_mean_model_rmse=rmse(post.mean[0]), map_model_rmse=rmse(post.map_model[0]),
        mean_data_rmse_after_burnin=float(np.mean(post.data_rmse_history[0][:, a.burnin:])),
        mean_std=float(post.std[0].mean()), machine=machine())
    (out / "bench_sampling.json").write_text(json.dumps(report, indent=1))
    from latentinv.plotting import plot_posterior
    plot_posterior(post, grid, truth=truth, n_samples=3).savefig(out / "posterior_mc2.png", dpi=90)
    print(f"[mcmc] {a.method}: {a.chains} chains x ({a.burnin} + {a.samples * a.thin}) in "
          f"{post.elapsed_s:.0f} s; acceptance {np.mean(post.acceptance_rate):.2f}; max R-hat "
          f"{rhat.max():.3f} ({int((rhat < 1.05).sum())}/{len(rhat)} dims < 1.05); min bulk ESS "
          f"{ess_bulk.min():.0f} ({ess_bulk.min() / post.elapsed_s:.2f}/s, "
          f"{ess_bulk.min() / post.n_forward:.4f}/forward run); forward runs {n_forward} in all; "
          f"posterior mean model RMSE {report['posterior_mean_model_rmse']:.3f} (SGD best "
          f"{report['sgd']['model_rmse']:.3f}); -> {out}", flush=True)


if __name__ == "__main__":
    main()
