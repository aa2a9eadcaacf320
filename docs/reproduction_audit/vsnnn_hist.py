import sys, numpy as np, torch
from pathlib import Path
HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]
sys.path.insert(0, str(HERE))
from own_rays import ray_matrix
from latentinv.prior import VAEPrior
from latentinv.geometry import CrossholeSurvey, Grid2D
from latentinv.operators import StraightRayOperator
from latentinv.inversion import LatentInverter, PAPER_CASES
torch.set_num_threads(1)
T = str(ROOT.parent / "shared" / "data" / "paper_test_models") + "/"
truth = np.load(T + "mc2.npy").reshape(-1)
Z0 = np.load(T + "zinitVAE500.npy")[1:2]
prior = VAEPrior.load(str(ROOT / "src" / "latentinv" / "data" / "channels_ti_prior"), device="cpu")
dec = prior.decoder_.eval()
A = ray_matrix(); slow = lambda x: 1.0 / (0.06 + 0.02 * (1.0 - x))
d = A @ slow(truth)
N = int(sys.argv[1])
res = {}
for dtype in (torch.float32, torch.float64):
    At = torch.tensor(A, dtype=dtype); dt = torch.tensor(d, dtype=dtype)
    decd = prior.decoder_.eval().to(dtype)
    z = torch.tensor(Z0, dtype=dtype); h = []
    for k in range(N):
        z = z.detach().requires_grad_(True)
        sim = slow(decd(z).reshape(1, -1)) @ At.T
        loss = ((dt - sim) ** 2).sum()
        g, = torch.autograd.grad(loss, z)
        h.append(float(torch.sqrt(((dt - sim) ** 2).mean())))
        z = (z - 1e-4 * g).detach()
    res[str(dtype)] = np.array(h)
prior.decoder_.float()
op = StraightRayOperator(Grid2D.paper(), CrossholeSurvey.paper(0.01, 6.49), boundary_rays="upper_left")
s = dict(PAPER_CASES["VSnnn"], n_epochs=N)
r = LatentInverter(prior, op, n_starts=1, initial_latents=Z0, random_state=0, device="cpu", **s).fit(d[None]).invert(d[None])
e = r.data_rmse_history[0, 0]
o32, o64 = res["torch.float32"], res["torch.float64"]
for k in list(range(0, N, max(1, N // 12))) + [N - 1]:
    print(k, f"own32 {o32[k]:.5f} own64 {o64[k]:.5f} engine {e[k]:.5f}")
print("max |own32-engine|", np.abs(o32 - e).max(), "max |own64-engine|", np.abs(o64 - e).max(), "max|own32-own64|", np.abs(o32-o64).max())
