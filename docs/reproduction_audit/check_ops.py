import sys, time, numpy as np
from pathlib import Path
HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]
sys.path.insert(0, str(HERE))
from own_rays import ray_matrix
from latentinv.geometry import CrossholeSurvey, Grid2D
from latentinv.operators import StraightRayOperator, ShortestPathOperator
from latentinv.inversion import paper_slowness
T = str(ROOT.parent / "shared" / "data" / "paper_test_models") + "/"
mc2 = np.load(T + "mc2.npy").reshape(-1)
A = ray_matrix()
op = StraightRayOperator(Grid2D.paper(), CrossholeSurvey.paper(0.01, 6.49), boundary_rays="upper_left")
M = op.matrix.toarray() if hasattr(op.matrix, "toarray") else np.asarray(op.matrix)
print("own vs package kernel: max abs diff", np.abs(A - M).max(), "row sums diff", np.abs(A.sum(1) - M.sum(1)).max())
d_own = A @ paper_slowness(mc2)
d_pkg = op.response(paper_slowness(mc2[None]))[0]
pub = np.array([87.20833333, 89.55708196, 89.12601286, 89.95910883, 91.09316376, 92.17834269,
                94.76929608, 96.85659095, 104.34586758, 110.9934262])
print("mc2 data own[:10]", np.round(d_own[:10], 8))
print("max |own - published notebook| first 10:", np.abs(d_own[:10] - pub).max(), " |pkg - pub|:", np.abs(d_pkg[:10] - pub).max())
opS = StraightRayOperator(Grid2D.paper(), CrossholeSurvey.paper(0.01, 6.49), boundary_rays="split")
print("split vs published max:", np.abs(opS.response(paper_slowness(mc2[None]))[0][:10] - pub).max())
op0 = StraightRayOperator(Grid2D.paper(), CrossholeSurvey.paper(0.0, 6.5), boundary_rays="upper_left")
d0 = op0.response(paper_slowness(mc2[None]))[0]
print("boreholes at 0/6.5 vs published max:", np.abs(d0[:10] - pub).max(), " RMS diff over 625 vs 0.01/6.49:", np.sqrt(np.mean((d0 - d_pkg)**2)))
t = time.time()
sim = ShortestPathOperator(Grid2D.paper(), CrossholeSurvey.paper(0.0, 6.5), n_secondary_nodes=2)
dnl = sim.response(paper_slowness(mc2[None]))[0]
pubnl = np.array([87.13997650882436, 88.85231383473649, 88.06465116064848, 89.57799557331239, 90.59223094936465,
                  92.54180948685604, 94.60954535709703, 97.46453959380602, 103.65961129410708, 109.95063580724003])
print("nonlinear 2 nodes vs published notebook (pyGIMLi) first 10: max", np.abs(dnl[:10] - pubnl).max(), f"({time.time()-t:.1f}s)")
