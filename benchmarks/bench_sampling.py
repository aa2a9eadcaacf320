"""Benchmark of LatentSampler on the paper's linear case (mc2, 0.25 ns) and two controls.

Rows (``--rows``, one run, one machine), all with the straight-ray operator of the paper's crosshole
geometry (boreholes at x = 0.01 / 6.49 m, 625 rays) and data = response(paper_slowness(truth)) +
0.25 ns x the published noise realization (noiserealz.npy):

- ``mc2``: the paper's truth mc2 (``../shared/data/paper_test_models/mc2.npy``, or --test-models),
  likelihood sigma = 0.25 ns (the issue's case: the noise alone);
- ``mc2-model-error``: the same data, likelihood sigma = sqrt(0.25**2 + e**2) ns with ``e`` the data
  RMSE of the truth's encode-decode model against the noise-free data (the paper's Table 2
  threshold, as in ``reproduce_paper.py``): the prior's modelling error treated as an independent
  Gaussian error added to the noise, the standard treatment of a modelling error in a Gaussian
  likelihood;
- ``generated``: a truth the prior can represent exactly (an mv-like truth: ``prior.sample(1,
  random_state=--generated-seed)``), sigma = 0.25 ns: a well-defined posterior, the check of the
  sampler on the real decoder and operator.

The prior is ``VAEPrior.pretrained()`` (the shipped default prior, trained on the paper's training
image away from mc1-mc3), ``--pretrained procedural`` (the shipped procedural prior, the default
before; the log's earlier rows) or ``--prior PATH`` (a saved :class:`VAEPrior`, e.g. one trained by
``reproduce_paper.py --train-only``). Chains start from short SGD runs (``--sgd-epochs`` epochs of the
VSbrd settings from ``--sgd-starts`` starts; one SGD per truth, shared by the rows of that truth and
counted in each): ``--start accepted`` seeds the chains from the starts whose selected model is
accepted at the paper's threshold with noise (data RMSE <= e + 0.25 ns), best first and taken in
turn (the best start alone when none is accepted); ``sgd``: every start in turn; ``best``: the
lowest-misfit start only. Reported per row: chains, draws, acceptance, step sizes, R-hat and
bulk/tail ESS per latent dimension (ArviZ), ESS per second and per forward run, the posterior mean's
model RMSE against the truth (and the SGD's), the chains' data RMSE, and a figure (mean, standard
deviation, channel probability, samples).

Forward runs counted: every decoder evaluation of one latent vector followed by traveltimes, in the
SGD (one per start and iteration; its mini-batches of 25 rays still decode the whole model) and in
the chains (one per chain and proposal, plus the initial point).

Usage::

    PYTHONPATH=src python benchmarks/bench_sampling.py [--rows mc2 mc2-model-error generated]
        [--prior PATH | --pretrained channels_ti|procedural] [--method pcn|mala|rwm|de|de-mala|hmc]
        [--jump-probability 0.1] [--n-leapfrog 10] [--preconditioner auto|empirical|gauss-newton] [--chains 16]
        [--burnin 1000] [--samples 1000] [--thin 1]
        [--sgd-starts 8] [--sgd-epochs 20] [--start accepted|sgd|best] [--threads 2] [--quick]
        [--out bench-sampling]
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
ROWS = ("mc2", "mc2-model-error", "generated")


def machine():
    """reproduce_paper's description of the machine, with the threads and the load average."""
    from reproduce_paper import machine as described   # a sibling script: benchmarks/ is on sys.path

    return dict(described(), torch_threads=torch.get_num_threads(), load_average=list(os.getloadavg()))


def parse_args(argv):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--test-models", default="../shared/data/paper_test_models")
    p.add_argument("--rows", nargs="+", choices=ROWS, default=list(ROWS))
    p.add_argument("--prior", default=None, help="a saved VAEPrior (VAEPrior.load); default: a shipped one")
    p.add_argument("--pretrained", choices=["channels_ti", "procedural"], default="channels_ti",
                   help="the shipped prior used without --prior: VAEPrior.pretrained(image=...)")
    p.add_argument("--generated-seed", type=int, default=1)
    p.add_argument("--method", choices=["pcn", "mala", "rwm", "de", "de-mala", "hmc"], default="pcn")
    p.add_argument("--n-leapfrog", type=int, default=10, help="hmc: leapfrog steps per proposal")
    p.add_argument("--preconditioner", choices=["auto", "empirical", "gauss-newton"], default="auto",
                   help="LatentSampler's preconditioner (auto: gauss-newton for the gradient methods)")
    p.add_argument("--jump-probability", type=float, default=0.1,
                   help="de, de-mala: probability of a gamma = 1 jump")
    p.add_argument("--chains", type=int, default=16)
    p.add_argument("--burnin", type=int, default=1000)
    p.add_argument("--samples", type=int, default=1000)
    p.add_argument("--thin", type=int, default=1)
    p.add_argument("--sgd-starts", type=int, default=8)
    p.add_argument("--sgd-epochs", type=int, default=20)
    p.add_argument("--start", choices=["accepted", "sgd", "best"], default="accepted")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--quick", action="store_true", help="2 SGD epochs, 4 chains x (50 + 50) draws")
    p.add_argument("--out", default="bench-sampling")
    a = p.parse_args(argv)
    if a.quick:
        a.sgd_epochs, a.sgd_starts, a.chains, a.burnin, a.samples = 2, 2, 4, 50, 50
    return a


def rmse(a, b):
    return float(np.sqrt(np.mean((np.asarray(a, float) - np.asarray(b, float)) ** 2)))


def starting_latents(res, n_chains, how, threshold):
    """Chains' initial latents from the SGD result ``res`` (one survey) and the accepted starts."""
    rmse_ = res.data_rmse[0]
    order = np.argsort(np.where(np.isfinite(rmse_), rmse_, np.inf), kind="stable")
    if how == "best":
        picks = order[:1]
    elif how == "accepted":
        picks = order[rmse_[order] <= threshold] if np.any(rmse_ <= threshold) else order[:1]
    else:
        picks = order
    return res.latents[0][picks[np.arange(n_chains) % len(picks)]].copy(), len(picks)


def run_sgd(a, prior, op, y):
    t0, c0 = time.perf_counter(), time.process_time()
    sgd = LatentInverter(prior, op, **dict(PAPER_CASES["VSbrd"], n_epochs=a.sgd_epochs),
                         n_starts=a.sgd_starts, random_state=a.seed, device="cpu").fit(y)
    res = sgd.invert(y)
    return res, time.perf_counter() - t0, a.sgd_starts * int(sgd.n_iterations_), time.process_time() - c0


def main(argv=None):
    a = parse_args(argv)
    if hasattr(sys.stdout, "reconfigure"):
        sys.stdout.reconfigure(line_buffering=True)
    torch.set_num_threads(a.threads)
    folder = Path(a.test_models)
    if not (folder / "mc2.npy").is_file():
        sys.exit(f"mc2.npy not found in {folder}: pass --test-models (the paper's test_models folder)")
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    grid, survey = latentinv.paper_crosshole(0.01, 6.49)
    op = latentinv.StraightRayOperator(grid, survey)
    noise = NOISE_STD * np.load(folder / "noiserealz.npy")
    prior = VAEPrior.pretrained(image=a.pretrained) if a.prior is None else VAEPrior.load(a.prior)
    prior_name = (f"VAEPrior.pretrained(image={a.pretrained!r})" if a.prior is None
                  else f"VAEPrior.load({Path(a.prior).name})")
    truths = {"mc2": np.load(folder / "mc2.npy").reshape(-1).astype(np.float64),
              "generated": prior.sample(1, random_state=a.generated_seed)[0].astype(np.float64)}
    record = dict(prior=prior_name, method=a.method, jump_probability=a.jump_probability, n_leapfrog=a.n_leapfrog,
                  preconditioner=a.preconditioner,
                  n_chains=a.chains, n_burnin=a.burnin,
                  n_samples=a.samples, thin=a.thin, start=a.start, argv=sys.argv[1:], rows=[],
                  machine_at_start=machine())
    sgd_cache = {}
    from latentinv.plotting import plot_posterior

    for row in a.rows:
        name = "generated" if row == "generated" else "mc2"
        truth = truths[name]
        d_clean = op.response(paper_slowness(truth))
        y = (d_clean + noise)[None]
        recon = prior.decode(prior.encode(truth[None]))[0]
        e = rmse(op.response(paper_slowness(recon)), d_clean)      # Table 2's threshold (no noise)
        threshold = e + NOISE_STD                                  # the paper's threshold with noise
        sigma = float(np.hypot(NOISE_STD, e)) if row == "mc2-model-error" else NOISE_STD
        if name not in sgd_cache:
            sgd_cache[name] = run_sgd(a, prior, op, y)
            res, t_sgd, f_sgd, c_sgd = sgd_cache[name]
            print(f"[sgd {name}] {a.sgd_starts} starts in {t_sgd:.0f} s; data RMSE "
                  f"{np.round(res.data_rmse[0], 3).tolist()} ns; threshold e + 0.25 = {threshold:.3f} ns",
                  flush=True)
        res, t_sgd, f_sgd, c_sgd = sgd_cache[name]
        z0, n_seeds = starting_latents(res, a.chains, a.start, threshold)
        sampler = LatentSampler(prior, op, method=a.method, jump_probability=a.jump_probability,
                                n_leapfrog=a.n_leapfrog, preconditioner=a.preconditioner,
                                n_chains=a.chains, n_burnin=a.burnin,
                                n_samples=a.samples, thin=a.thin, initial_latents=z0, noise_std=sigma,
                                random_state=a.seed, device="cpu").fit(y)
        c0 = time.process_time()
        post = sampler.sample(y)
        c_mcmc = time.process_time() - c0
        rhat, ess_bulk, ess_tail = post.rhat()[0], post.ess("bulk")[0], post.ess("tail")[0]
        after = post.data_rmse_history[0][:, a.burnin:]
        rep = dict(
            row=row, truth=name if name == "mc2" else f"prior.sample(1, random_state={a.generated_seed})",
            noise_ns=NOISE_STD, encode_decode_data_rmse_ns=e, threshold_ns=threshold, sigma_ns=sigma,
            sgd=dict(n_starts=a.sgd_starts, time_s=t_sgd, cpu_time_s=c_sgd, forward_runs=f_sgd,
                     data_rmse_ns=res.data_rmse[0].tolist(), model_rmse=rmse(res.models[0], truth),
                     n_accepted=int(np.sum(res.data_rmse[0] <= threshold)), n_chain_seeds=n_seeds),
            sampling_time_s=post.elapsed_s, sampling_cpu_time_s=c_mcmc, sampling_forward_runs=post.n_forward,
            total_forward_runs=post.n_forward + f_sgd, total_time_s=t_sgd + post.elapsed_s,
            total_cpu_time_s=c_sgd + c_mcmc,
            acceptance_rate=post.acceptance_rate[0].tolist(), step_size=post.step_size[0].tolist(),
            rhat=rhat.tolist(), max_rhat=float(rhat.max()), n_dims_rhat_below_1_05=int((rhat < 1.05).sum()),
            ess_bulk=ess_bulk.tolist(), ess_tail=ess_tail.tolist(), min_ess_bulk=float(ess_bulk.min()),
            min_ess_bulk_per_s=float(ess_bulk.min() / post.elapsed_s),
            min_ess_bulk_per_forward=float(ess_bulk.min() / post.n_forward),
            posterior_mean_model_rmse=rmse(post.mean[0], truth), map_model_rmse=rmse(post.map_model[0], truth),
            mean_data_rmse_after_burnin=float(after.mean()),
            chain_data_rmse_after_burnin=after.mean(1).tolist(),
            mean_std=float(post.std[0].mean()), load_average=list(os.getloadavg()))
        record["rows"].append(rep)
        record["machine_at_end"] = machine()
        (out / "bench_sampling.json").write_text(json.dumps(record, indent=1))
        plot_posterior(post, grid, truth=truth, n_samples=3).savefig(out / f"posterior_{row}.png", dpi=90)
        print(f"[mcmc {row}] sigma {sigma:.3f} ns (e {e:.3f}); {a.method}: {a.chains} chains x ({a.burnin} + "
              f"{a.samples * a.thin}) in {post.elapsed_s:.0f} s; acceptance {np.mean(post.acceptance_rate):.3f} "
              f"({np.min(post.acceptance_rate):.3f}-{np.max(post.acceptance_rate):.3f}); max R-hat "
              f"{rhat.max():.3f} ({int((rhat < 1.05).sum())}/{len(rhat)} dims < 1.05); min bulk ESS "
              f"{ess_bulk.min():.0f}; forward runs {rep['total_forward_runs']} in all; time "
              f"{rep['total_time_s']:.0f} s ({rep['total_cpu_time_s']:.0f} CPU s); data RMSE after burn-in {rep['mean_data_rmse_after_burnin']:.3f} ns; "
              f"posterior mean model RMSE {rep['posterior_mean_model_rmse']:.3f} (SGD best "
              f"{rep['sgd']['model_rmse']:.3f}); load {os.getloadavg()[0]:.1f}", flush=True)


if __name__ == "__main__":
    main()
