"""Independent recomputation of the paper's Table 2-4 quantities for one truth, a few published
starts: own SGD loop (Eqs. 20-25, Sec. 3.2 settings) over the shipped channels_ti prior's decoder,
own straight-ray matrix (own_rays.py); compared with latentinv's LatentInverter (PAPER_CASES).
Usage: python own_sgd.py TRUTH N_STARTS CASES"""
import sys, time, json, math
import numpy as np, torch
from pathlib import Path
HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]
sys.path.insert(0, str(HERE))
from scipy.stats import chi as chi_dist
from own_rays import ray_matrix
from latentinv.prior import VAEPrior
from latentinv.geometry import CrossholeSurvey, Grid2D
from latentinv.operators import StraightRayOperator
from latentinv.inversion import LatentInverter, PAPER_CASES

torch.set_num_threads(2)
truth_name, n_starts = sys.argv[1], int(sys.argv[2])
cases = sys.argv[3].split(",")
import os
ENGINE = os.environ.get("ENGINE", "1") == "1"
ITS = int(os.environ.get("ITS", "3000"))
T = str(ROOT.parent / "shared" / "data" / "paper_test_models") + "/"
truth = np.load(T + f"{truth_name}.npy").reshape(-1).astype(np.float64)
Z0 = np.load(T + "zinitVAE500.npy")[:n_starts]
noise = 0.25 * np.load(T + "noiserealz.npy")
prior = VAEPrior.load(str(ROOT / "src" / "latentinv" / "data" / "channels_ti_prior"), device="cpu")
dec = prior.decoder_.eval()
for p in dec.parameters():
    p.requires_grad_(False)
A = ray_matrix()
slow = lambda x: 1.0 / (0.06 + 0.02 * (1.0 - x))
d_clean = A @ slow(truth)
# Table 2: encode (latent mean) -> decode -> data RMSE against the truth's data; model RMSE
recon = prior.decode(prior.encode(truth[None]))[0]
thr = float(np.sqrt(np.mean((A @ slow(recon) - d_clean) ** 2)))
mrmse = float(np.sqrt(np.mean((recon - truth) ** 2)))
print(f"[own] {truth_name}: threshold {thr:.4f} ns, model RMSE {mrmse:.4f}", flush=True)
At = torch.tensor(A, dtype=torch.float32)
mu_chi = float(chi_dist(20).mean())

# Table 1 from the paper's text (l, c_l per epoch as the published StepLR; lambda 10, c_lambda 0.999 per iteration)
OWN = {"VSnnn": dict(opt="sgd", b=625, lr=1e-4, clr=1.0, reg=None, lam=0.0, clam=1.0, its=3000),
       "VSbnn": dict(opt="sgd", b=25, lr=1e-4, clr=1.0, reg=None, lam=0.0, clam=1.0, its=3000),
       "VSbod": dict(opt="sgd", b=25, lr=1e-2, clr=0.95, reg="origin", lam=10.0, clam=0.999, its=3000),
       "VSbrd": dict(opt="sgd", b=25, lr=1e-2, clr=0.95, reg="ring", lam=10.0, clam=0.999, its=3000)}

def own_run(cfg, d, seed=1):
    rng = np.random.RandomState(seed)
    dt = torch.tensor(d, dtype=torch.float32)
    z = torch.tensor(Z0, dtype=torch.float32)
    per_epoch = 625 // cfg["b"]
    lam, best, best_it = cfg["lam"], np.full(len(z), np.inf), np.zeros(len(z), int)
    final = None
    for k in range(cfg["its"]):
        epoch, j = divmod(k, per_epoch)
        if j == 0:
            perm = np.stack([rng.permutation(625) for _ in range(len(z))])
        lr = cfg["lr"] * cfg["clr"] ** epoch
        idx = torch.tensor(perm[:, j * cfg["b"]:(j + 1) * cfg["b"]])
        z = z.detach().requires_grad_(True)
        x = dec(z).reshape(len(z), -1)
        sim = slow(x) @ At.T                              # (n, 625)
        e = torch.gather(dt.expand_as(sim), 1, idx) - torch.gather(sim, 1, idx)
        loss = (e ** 2).sum(1)
        nz = z.norm(dim=1)
        if cfg["reg"] == "ring":
            loss = loss + lam * (nz - mu_chi) ** 2
        elif cfg["reg"] == "origin":
            loss = loss + lam * nz ** 2
        g, = torch.autograd.grad(loss.sum(), z)
        with torch.no_grad():
            rm = torch.sqrt(((dt - sim) ** 2).mean(1)).numpy().astype(np.float64)   # iterate before the step
            better = rm < best
            best[better], best_it[better] = rm[better], k
            final = rm
            z = z - lr * g
        lam *= cfg["clam"]
    return best, final, best_it

op = StraightRayOperator(Grid2D.paper(), CrossholeSurvey.paper(0.01, 6.49), boundary_rays="upper_left")
out = dict(truth=truth_name, n_starts=n_starts, threshold=thr, model_rmse=mrmse, cases={})
for case in cases:
    noisy = case.endswith("_noise")
    name = case.replace("_noise", "")
    d = d_clean + noise if noisy else d_clean
    t_thr = thr + 0.25 * noisy
    t0 = time.time()
    best, final, best_it = own_run(dict(OWN[name], its=ITS), d)
    t1 = time.time()
    settings = dict(PAPER_CASES[name])
    settings["n_epochs"] = ITS if settings["batch_size"] is None else ITS // 25
    if ENGINE:
        inv = LatentInverter(prior, op, n_starts=n_starts, initial_latents=Z0, random_state=0, device="cpu",
                             **settings)
        res = inv.fit(d[None]).invert(d[None])
        eng = res.data_rmse[0]
    else:
        class _I: n_iterations_ = 0
        inv, eng = _I(), np.full(n_starts, np.nan)
    t2 = time.time()
    row = dict(own_best=best.tolist(), own_final=final.tolist(), own_best_it=best_it.tolist(),
               own_accepted=int((best <= t_thr).sum()), own_accepted_final=int((final <= t_thr).sum()),
               own_mean=float(best.mean()), own_mean_final=float(final.mean()),
               engine_best=eng.tolist(), engine_accepted=int((eng <= t_thr).sum()), engine_mean=float(eng.mean()),
               engine_iterations=int(inv.n_iterations_), own_s=t1 - t0, engine_s=t2 - t1, threshold=t_thr)
    out["cases"][case] = row
    print(f"[{case}] thr {t_thr:.3f}: own best {np.round(best, 3).tolist()} (final {np.round(final, 3).tolist()}) "
          f"accepted {row['own_accepted']} mean {row['own_mean']:.3f} | engine {np.round(eng, 3).tolist()} "
          f"accepted {row['engine_accepted']} mean {row['engine_mean']:.3f} ({inv.n_iterations_} its) "
          f"[{t1-t0:.0f}s, {t2-t1:.0f}s]", flush=True)
    json.dump(out, open(str(HERE / f"own_sgd_{truth_name}_{ITS}_{int(ENGINE)}.json"), "w"), indent=1)
