"""Tests of latentinv.inversion: the paper's SGD in latent space (Eqs. 20-25, 28), batched."""
import dataclasses
import math
import pickle

import numpy as np
import pytest
import scipy.sparse as sp
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays
from scipy.stats import chi
from sklearn.base import clone
from sklearn.frozen import FrozenEstimator
from sklearn.model_selection import GridSearchCV

from latentinv.geometry import CrossholeSurvey, Grid2D
from latentinv.inversion import (
    PAPER_CASES, LatentInverter, TorchGenerator, _initial_latents, _as_seed, _survey_generators, chi_mean,
    learning_rate_schedule, paper_slowness, regularization_schedule, ring_gradient, ring_penalty,
)
from latentinv.operators import ForwardOperator, StraightRayOperator

D = 4  # latent dimension of the test generators


# ---------------------------------------------------------------------------------------------------
# fixtures: a small crosshole problem, a linear generator g(z) = A z + b, a fake nonlinear operator
# ---------------------------------------------------------------------------------------------------
def small_operator():
    grid = Grid2D(12, 8, 0.1)
    depths = 0.1 + 0.2 * np.arange(6)
    src = np.column_stack([np.zeros(6), depths])
    rec = np.column_stack([np.full(6, 0.8), depths])
    return StraightRayOperator(grid, CrossholeSurvey(src, rec))   # 36 data, 96 cells


def linear_generator(n_cells=96, d=D, seed=0, distribution="normal"):
    torch.manual_seed(seed)
    lin = torch.nn.Linear(d, n_cells)
    with torch.no_grad():
        lin.weight.mul_(0.5)
        lin.bias.fill_(0.5)
    return TorchGenerator(lin.eval(), d, latent_distribution=distribution)


class QuadraticOperator(ForwardOperator):
    """Fake nonlinear operator: t = G m + a (G m)**2, J = diag(1 + 2 a G m) G."""

    is_linear = False

    def __init__(self, base, a=0.01):
        self.base = base
        self.a = a
        self.G = base.matrix
        self.n_data, self.n_params = self.G.shape
        self.calls = 0

    def __reduce__(self):
        return (QuadraticOperator, (self.base, self.a))

    def _response_and_jacobian(self, m, want_jacobian):
        self.calls += 1
        u = (self.G @ m.T).T
        t = u + self.a * u**2
        jac = None
        if want_jacobian:
            jac = [sp.diags(1 + 2 * self.a * u[i]) @ self.G for i in range(len(m))]
            jac = [j.tocsr() for j in jac]
        return t, jac


@pytest.fixture(scope="module")
def problem():
    op = small_operator()
    gen = linear_generator()
    z_true = np.array([[0.5, -1.0, 0.3, 0.8], [-0.4, 0.9, 1.1, -0.2]])
    models = gen.decode(z_true)
    est = LatentInverter(gen, op, device="cpu")
    traveltimes = est.fit(np.ones((1, op.n_data))).simulate(models)
    return op, gen, z_true, models, traveltimes


# ---------------------------------------------------------------------------------------------------
# equations
# ---------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("d", [1, 2, 5, 20, 100])
def test_chi_mean_is_the_chi_distribution_mean(d):
    assert chi_mean(d) == pytest.approx(chi(d).mean(), rel=1e-12)


def test_chi_mean_d20_value():
    # sqrt(2) Gamma(10.5) / Gamma(10) = 4.41660512... (the mean norm of a 20-D standard normal)
    assert chi_mean(20) == pytest.approx(4.4166051, abs=1e-7)


@settings(max_examples=40, deadline=None)
@given(arrays(np.float64, (3, 20), elements=st.floats(-5, 5)).filter(
    lambda a: np.all(np.linalg.norm(a, axis=1) > 1e-3)), st.floats(0.01, 100))
def test_ring_gradient_autograd_equals_eq25(z, lam):
    zt = torch.tensor(z, requires_grad=True)
    ring_penalty(zt, lam).sum().backward()
    norm = np.linalg.norm(z, axis=1, keepdims=True)
    by_hand = 2 * lam * (norm - chi(20).mean()) * z / norm          # Eq. 25 with scipy's mu_chi
    np.testing.assert_allclose(zt.grad.numpy(), by_hand, rtol=1e-9, atol=1e-9)
    np.testing.assert_allclose(ring_gradient(torch.tensor(z), lam).numpy(), by_hand, rtol=1e-9,
                               atol=1e-9)


def test_schedules_follow_eqs_21_22_recursively():
    lr, lam = 1e-2, 10.0
    lrs, lams = [], []
    cur_lr, cur_lam = lr, lam
    for k in range(200):
        epoch = k // 25
        if k > 0 and k % 25 == 0 and epoch % 5 == 0:
            cur_lr *= 0.8                          # lr_{k+1} = lr_decay lr_k every 5 epochs
        lrs.append(cur_lr)
        lams.append(cur_lam)
        cur_lam *= 0.99                            # lambda_{k+1} = lam_decay lambda_k
    got_lr = [learning_rate_schedule(lr, 0.8, 5, k // 25) for k in range(200)]
    got_lam = [regularization_schedule(lam, 0.99, k) for k in range(200)]
    np.testing.assert_allclose(got_lr, lrs, rtol=1e-12)
    np.testing.assert_allclose(got_lam, lams, rtol=1e-12)


def test_schedules_reported_by_the_inversion(problem):
    op, gen, _, _, tt = problem
    est = LatentInverter(gen, op, batch_size=12, lr=1e-3, lr_decay=0.5, decay_every=2, lam=3.0,
                         lam_decay=0.9, n_epochs=5, n_starts=2, random_state=0, device="cpu")
    res = est.fit(tt).invert(tt)
    k = np.arange(15)                               # 3 iterations per epoch
    np.testing.assert_allclose(res.learning_rate_history[0, 1], 1e-3 * 0.5 ** (k // 3 // 2))
    np.testing.assert_allclose(res.lam_history[1, 0], 3.0 * 0.9**k)


# ---------------------------------------------------------------------------------------------------
# the batched engine against a straightforward one-start loop (the reference's math)
# ---------------------------------------------------------------------------------------------------
def reference_loop(gen, op, y, z0, batch_rng, *, lr, lr_decay, decay_every, batch_size, lam,
                   lam_decay, n_epochs, regularization, optimizer="sgd", nonlinear=None):
    """One start, torch.optim + StepLR, dense G, full product then batch rows (paper's code)."""
    z = torch.tensor(z0[None, :], dtype=torch.float32, requires_grad=True)
    opt = (torch.optim.SGD if optimizer == "sgd" else torch.optim.Adam)([z], lr=lr)
    sched = torch.optim.lr_scheduler.StepLR(opt, step_size=decay_every, gamma=lr_decay)
    yt = torch.tensor(y, dtype=torch.float32)
    dense = torch.tensor(op.jacobian(np.ones(op.n_params)).toarray() if not nonlinear
                         else op.G.toarray(), dtype=torch.float32)
    mchi = chi(z.numel()).mean()
    n = len(y)
    norms, rmses = [], []
    for epoch in range(n_epochs):
        perm = batch_rng.permutation(n)
        for j in range(n // batch_size):
            idx = torch.tensor(perm[j * batch_size:(j + 1) * batch_size])
            x = gen.decoder_(z)
            s = paper_slowness(x)
            if nonlinear:
                J = torch.tensor(op.jacobian(s.detach().double().numpy()[0]).toarray(),
                                 dtype=torch.float32)
                sim = op.forward(s)[0].detach()
            else:
                sim = dense @ s[0]
            e = yt[idx] - sim[idx]
            opt.zero_grad()
            if nonlinear == "paper":    # the paper's code: S^T e handed to x directly
                x.backward((-(J[idx].T @ e)).reshape(x.shape))
            elif nonlinear == "exact":  # chain rule through the slowness map
                s.backward((-(2 * J[idx].T @ e)).reshape(s.shape))
            else:
                torch.sum(e**2).backward()
            if regularization == "ring":
                (lam * (torch.norm(z) - mchi) ** 2).backward()
            norms.append(float(torch.norm(z.detach())))
            rmses.append(float(torch.sqrt(torch.mean((yt - sim.detach()) ** 2))))
            opt.step()
            lam = lam_decay * lam
        sched.step()
    return np.array(norms), np.array(rmses), z.detach().numpy()[0]


@pytest.mark.parametrize("case", ["linear-ring", "linear-adam", "nonlinear-paper", "nonlinear-exact"])
def test_one_start_reproduces_the_reference_loop(problem, case):
    op, gen, _, _, tt = problem
    nonlinear = case.split("-")[1] if case.startswith("nonlinear") else None
    operator = QuadraticOperator(op) if nonlinear else op
    y = tt[0] + (operator.response(paper_slowness(gen.decode([[0.5, -1.0, 0.3, 0.8]])))[0]
                 - tt[0] if nonlinear else 0)
    kw = dict(lr=1e-3, lr_decay=0.9, decay_every=2, batch_size=6, lam=2.0, lam_decay=0.98,
              n_epochs=4, regularization="ring")
    optimizer = "adam" if case == "linear-adam" else "sgd"
    if optimizer == "adam":
        kw["lr"] = 0.05
    if nonlinear == "paper":
        kw["lr"] = 1e-2
    est = LatentInverter(gen, operator, optimizer=optimizer, n_starts=1, random_state=7,
                         nonlinear_gradient=nonlinear or "paper", device="cpu", **kw)
    res = est.fit(y[None]).invert(y[None])
    seed = _as_seed(7)
    z0 = _initial_latents(seed, 1, D, "normal").numpy()[0]
    batch_rng = _survey_generators(seed, y, 1)[0][0]
    norms, rmses, _ = reference_loop(gen, operator, y, z0, batch_rng, optimizer=optimizer,
                                     nonlinear=nonlinear, **kw)
    assert len(norms) == 24
    np.testing.assert_allclose(res.latent_norm_history[0, 0], norms, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(res.data_rmse_history[0, 0], rmses, rtol=1e-5, atol=1e-5)
    # the path moved: a test of a frozen z would pass trivially otherwise
    assert abs(norms[-1] - norms[0]) > 1e-3
    assert res.best_iteration[0, 0] == int(np.argmin(rmses))


def test_nonlinear_operator_called_once_per_iteration_for_all_models(problem):
    op, gen, _, _, tt = problem
    fake = QuadraticOperator(op)
    est = LatentInverter(gen, fake, batch_size=6, n_epochs=2, n_starts=3, random_state=0,
                         device="cpu").fit(tt)
    fake.calls = 0
    est.invert(tt)          # 2 surveys x 3 starts = one batch of 6 models per iteration
    assert fake.calls == 12


# ---------------------------------------------------------------------------------------------------
# recovery
# ---------------------------------------------------------------------------------------------------
def test_linear_generator_recovers_z(problem):
    op, gen, z_true, models, tt = problem
    est = LatentInverter(gen, op, optimizer="adam", lr=0.05, lr_decay=1.0, batch_size=None,
                         regularization=None, lam_decay=1.0, n_epochs=600, n_starts=3,
                         target_misfit=1e-5, random_state=0, device="cpu")
    res = est.fit(tt).invert(tt)
    best = res.latents[np.arange(2), res.best_start]
    np.testing.assert_allclose(best, z_true, atol=1e-3)        # stated tolerance: 1e-3
    np.testing.assert_allclose(res.models, models, atol=1e-3)
    assert np.all(res.data_rmse[np.arange(2), res.best_start] < 1e-3)   # ns


def test_linear_generator_recovers_z_with_paper_sgd(problem):
    op, gen, z_true, _, tt = problem
    est = LatentInverter(gen, op, lr=5e-2, lr_decay=1.0, batch_size=None, regularization=None,
                         n_epochs=300, n_starts=3, random_state=0, device="cpu")
    res = est.fit(tt).invert(tt)
    # plain SGD converges slowly along the worst-resolved direction: stated tolerance 2e-3
    np.testing.assert_allclose(res.latents[np.arange(2), res.best_start], z_true, atol=2e-3)
    assert np.all(res.data_rmse[np.arange(2), res.best_start] < 1e-3)   # ns


def test_trained_prior_most_starts_fit_the_data():
    prior_mod = pytest.importorskip("latentinv.prior")
    rng = np.random.default_rng(0)
    op = small_operator()
    n_rows, n_cols = op.grid.shape
    depth = np.arange(n_rows)[:, None] + 0 * np.arange(n_cols)[None, :]
    tilt = np.arange(n_cols)[None, :] - n_cols / 2

    def layered(n):  # a tilted two-layer medium with a random interface
        c = rng.uniform(3, 9, n)[:, None, None]
        a = rng.uniform(-0.4, 0.4, n)[:, None, None]
        return (depth[None] > c + a * tilt[None]).astype(float).reshape(n, -1)

    prior = prior_mod.VAEPrior(n_components=2, image_shape=(n_rows, n_cols), architecture="mlp",
                               n_iterations=400, batch_size=50, beta=10.0, random_state=0,
                               device="cpu").fit(layered(500))
    truths = prior.decode(rng.standard_normal((3, 2)))
    est = LatentInverter(FrozenEstimator(prior), op, lr=1e-2, batch_size=6, n_epochs=40,
                         lam=1.0, n_starts=8, random_state=0, device="cpu")
    tt = est.fit(np.ones((1, op.n_data))).simulate(truths)
    res = est.invert(tt)
    # stated bound: data RMSE below 0.5 ns (the traveltimes are ~10-15 ns) for most starts
    assert np.mean(res.data_rmse < 0.5) >= 0.6
    assert np.all(res.data_rmse[np.arange(3), res.best_start] < 0.2)


# ---------------------------------------------------------------------------------------------------
# semantics: prior handling, determinism, independence of surveys, noise, stopping, divergence
# ---------------------------------------------------------------------------------------------------
def test_predict_is_float64_lowest_misfit(problem):
    op, gen, _, _, tt = problem
    est = LatentInverter(gen, op, n_epochs=3, batch_size=6, n_starts=4, random_state=0,
                         device="cpu").fit(tt)
    pred = est.predict(tt)
    res = est.invert(tt)
    assert pred.dtype == np.float64 and pred.shape == (2, op.n_params)
    np.testing.assert_array_equal(pred, res.models)
    hist_min = np.nanmin(res.data_rmse_history.reshape(2, -1), axis=1)
    np.testing.assert_allclose(res.data_rmse[np.arange(2), res.best_start], hist_min, rtol=1e-6)
    # the returned model reproduces its reported misfit
    t = est.simulate(pred)
    np.testing.assert_allclose(np.sqrt(np.mean((t - tt) ** 2, axis=1)), hist_min, rtol=1e-3)


def test_same_seed_same_result_and_survey_independence(problem):
    op, gen, _, _, tt = problem
    tt3 = np.vstack([tt, tt[:1] + 0.3])
    est = LatentInverter(gen, op, n_epochs=3, batch_size=6, n_starts=3, random_state=1,
                         device="cpu").fit(tt3)
    a = est.invert(tt3)
    b = est.invert(tt3)
    np.testing.assert_array_equal(a.data_rmse_history, b.data_rmse_history)
    np.testing.assert_array_equal(a.models, b.models)
    rev = est.invert(tt3[::-1])
    np.testing.assert_allclose(rev.data_rmse_history[::-1], a.data_rmse_history, rtol=1e-5)
    alone = est.invert(tt3[1:2])
    np.testing.assert_allclose(alone.latent_norm_history[0], a.latent_norm_history[1], rtol=1e-5)
    np.testing.assert_allclose(alone.models[0], a.models[1], atol=1e-5)
    # same initial latents for every survey; different mini-batch orders for different data
    np.testing.assert_array_equal(a.latent_norm_history[:, :, 0], a.latent_norm_history[:1, :, 0]
                                  .repeat(3, 0))
    assert not np.allclose(a.latent_norm_history[0, :, 5], a.latent_norm_history[2, :, 5])


@pytest.mark.parametrize("gradient, noise, optimizer", [("paper", None, "sgd"), ("exact", 0.05, "adam")])
def test_pipelined_raytracing_gives_the_same_numbers(problem, gradient, noise, optimizer, monkeypatch):
    """The C++ raytracer's background jobs (batch sources first, the rest during the step) change
    the schedule, not one bit of the result."""
    from latentinv._backend import HAS_CORE
    from latentinv.operators import ShortestPathOperator
    if not HAS_CORE:
        pytest.skip("latentinv._core not built")
    op, gen, _, models, _ = problem
    sp_op = ShortestPathOperator(op.grid, op.survey, n_secondary_nodes=2, n_threads=2)
    tt = LatentInverter(gen, sp_op, device="cpu").fit(np.ones((1, sp_op.n_data))).simulate(models)
    kw = dict(batch_size=6, n_epochs=3, n_starts=3, random_state=0, nonlinear_gradient=gradient,
              noise_std=noise, optimizer=optimizer, lr=0.05 if optimizer == "adam" else 1e-3)
    submitted = []
    submit = ShortestPathOperator.submit
    monkeypatch.setattr(ShortestPathOperator, "submit",
                        lambda self, *a, **k: submitted.append(1) or submit(self, *a, **k))
    threads = torch.get_num_threads()
    piped = LatentInverter(gen, sp_op, device="cpu", **kw).fit(tt).invert(tt)
    n_iter = piped.data_rmse_history.shape[-1]
    assert len(submitted) == 2 * n_iter == 36 and torch.get_num_threads() == threads
    inline = LatentInverter(gen, sp_op, device="cpu", **kw)
    inline._pipeline_nonlinear = False
    inline = inline.fit(tt).invert(tt)
    assert len(submitted) == 36
    for f in dataclasses.fields(piped):
        a, b = getattr(piped, f.name), getattr(inline, f.name)
        if isinstance(a, np.ndarray):
            np.testing.assert_array_equal(a, b, err_msg=f.name)
    assert np.all(np.isfinite(piped.data_rmse_history))          # every iteration recorded
    assert np.ptp(piped.latent_norm_history[0, 0]) > 1e-3           # and the path moved


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("operator", ["straight", "quadratic", "shortest_path"])
def test_cuda_matches_cpu(problem, operator):
    op, gen, _, models, tt = problem
    if operator == "quadratic":     # a nonlinear operator: models leave the GPU for its Jacobian
        op = QuadraticOperator(op)
    elif operator == "shortest_path":
        from latentinv.operators import ShortestPathOperator
        op = ShortestPathOperator(op.grid, op.survey, n_secondary_nodes=2)
        tt = LatentInverter(gen, op, device="cpu").fit(tt).simulate(models)
    kw = dict(batch_size=6, n_epochs=3, n_starts=4, random_state=0)
    cpu = LatentInverter(gen, op, device="cpu", **kw).fit(tt).invert(tt)
    gpu = LatentInverter(gen, op, device="cuda", **kw).fit(tt).invert(tt)
    assert gpu.settings["device"].startswith("cuda")
    np.testing.assert_allclose(gpu.data_rmse_history, cpu.data_rmse_history, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(gpu.models, cpu.models, atol=1e-4)


def test_start_k_does_not_depend_on_n_starts(problem):
    op, gen, _, _, tt = problem
    kw = dict(batch_size=6, n_epochs=2, random_state=3, device="cpu")
    few = LatentInverter(gen, op, n_starts=2, **kw).fit(tt).invert(tt)
    many = LatentInverter(gen, op, n_starts=5, **kw).fit(tt).invert(tt)
    np.testing.assert_allclose(many.data_rmse_history[:, :2], few.data_rmse_history, rtol=1e-5)


def test_fitted_prior_not_retrained_and_unchanged(problem):
    op, _, _, _, tt = problem
    gen = linear_generator()
    est = LatentInverter(gen, op, n_epochs=1, device="cpu").fit(tt, np.zeros((2, 3)))
    assert est.prior_ is gen
    before = gen.module.weight.detach().clone()
    est.predict(tt)
    assert torch.equal(gen.module.weight, before)
    assert gen.module.weight.grad is None


def test_unfitted_prior_needs_y(problem):
    prior_mod = pytest.importorskip("latentinv.prior")
    op, _, _, _, tt = problem
    with pytest.raises(ValueError, match="not fitted"):
        LatentInverter(prior_mod.VAEPrior(n_components=2), op).fit(tt)


def test_noise_weighting_and_chi2(problem):
    op, gen, _, _, tt = problem
    sigma = np.linspace(0.5, 1.5, op.n_data)
    est = LatentInverter(gen, op, noise_std=sigma, n_epochs=3, batch_size=6, n_starts=2,
                         random_state=0, device="cpu").fit(tt)
    res = est.invert(tt)
    t = est.simulate(res.start_models.reshape(-1, op.n_params)).reshape(2, 2, -1)
    chi2 = (((tt[:, None, :] - t) / sigma) ** 2).sum(-1)
    np.testing.assert_allclose(res.chi2, chi2, rtol=1e-3)
    np.testing.assert_allclose(np.nanmin(res.chi2_history, -1), res.chi2, rtol=1e-6)


def test_early_stop_at_target_misfit(problem):
    op, gen, _, _, tt = problem
    est = LatentInverter(gen, op, optimizer="adam", lr=0.05, lr_decay=1.0, batch_size=None,
                         regularization=None, n_epochs=600, n_starts=2, target_misfit=0.05,
                         random_state=0, device="cpu").fit(tt)
    res = est.invert(tt)
    assert res.reached_target.all()
    assert np.all(res.n_iterations_run < 600)
    assert np.all(res.data_rmse <= 0.05)
    last = res.n_iterations_run[0, 0]
    assert np.isnan(res.data_rmse_history[0, 0, last:]).all()


def test_divergence_is_detected_not_returned(problem):
    op, gen, _, _, tt = problem
    est = LatentInverter(gen, op, lr=1e4, lr_decay=1.0, batch_size=None, regularization=None,
                         n_epochs=20, n_starts=3, random_state=0, device="cpu").fit(tt)
    res = est.invert(tt)
    assert res.diverged.all()
    assert np.all(np.isfinite(res.models)) and np.all(np.isfinite(res.latents))
    assert np.all(np.linalg.norm(res.latents, axis=-1) < 100 * math.sqrt(D))
    assert np.all(res.accepted_fraction(1e9) == 0)


def test_uniform_latents_stochastic_clipping(problem):
    op, _, _, _, tt = problem
    gen = linear_generator(distribution="uniform")
    est = LatentInverter(gen, op, lr=0.5, lr_decay=1.0, regularization=None, batch_size=6,
                         n_epochs=5, n_starts=4, random_state=0, device="cpu").fit(tt)
    res = est.invert(tt)
    assert np.all(np.abs(res.latents) <= 1)
    assert np.nanmax(res.latent_norm_history) <= math.sqrt(D)
    with pytest.raises(ValueError, match="ring"):
        clone(est).set_params(regularization="ring").fit(tt)


@pytest.mark.parametrize("case", sorted(PAPER_CASES))
def test_paper_cases_are_parameter_sets(problem, case):
    op, _, _, _, tt = problem
    gen = linear_generator(distribution="uniform" if case.startswith("S") else "normal")
    params = dict(PAPER_CASES[case], batch_size=PAPER_CASES[case]["batch_size"] and 6)
    est = LatentInverter(gen, op, n_epochs=2, n_starts=2, random_state=0, device="cpu", **params)
    res = est.fit(tt).invert(tt)
    per_epoch = 6 if params["batch_size"] else 1
    assert res.data_rmse_history.shape == (2, 2, 2 * per_epoch)
    assert np.isfinite(res.models).all()


def test_accepted_fraction(problem):
    op, gen, _, _, tt = problem
    res = LatentInverter(gen, op, n_epochs=2, batch_size=6, n_starts=4, random_state=0,
                         device="cpu").fit(tt).invert(tt)
    thr = np.median(res.data_rmse)
    np.testing.assert_allclose(res.accepted_fraction(thr), (res.data_rmse <= thr).mean(1))


# ---------------------------------------------------------------------------------------------------
# inputs
# ---------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("bad, match", [
    (lambda t: np.where(np.arange(t.shape[1]) == 3, np.nan, t), "NaN"),
    (lambda t: t[:, :-1], "36"),
    (lambda t: -t, ">= 0"),
])
def test_bad_traveltimes_raise(problem, bad, match):
    op, gen, _, _, tt = problem
    est = LatentInverter(gen, op, device="cpu")
    with pytest.raises(ValueError, match=match):
        est.fit(bad(tt))
    est.fit(tt)
    with pytest.raises(ValueError, match=match):
        est.predict(bad(tt))


@pytest.mark.parametrize("param, value", [
    ("optimizer", "lbfgs"), ("lr", -1.0), ("batch_size", 0), ("batch_size", 1000),
    ("regularization", "l1"), ("n_starts", 0), ("noise_std", -1.0), ("lr_decay", 0.0),
    ("device", "tpu"),
])
def test_bad_parameters_raise_naming_them(problem, param, value):
    op, gen, _, _, tt = problem
    with pytest.raises(ValueError, match=param.split("_")[0]):
        LatentInverter(gen, op, **{param: value}).fit(tt)


def test_generator_size_mismatch(problem):
    op, _, _, _, tt = problem
    with pytest.raises(ValueError, match="96 cells"):
        LatentInverter(linear_generator(n_cells=50), op, device="cpu").fit(tt)


# ---------------------------------------------------------------------------------------------------
# scikit-learn
# ---------------------------------------------------------------------------------------------------
def test_gridsearch_over_inversion_settings(problem):
    from latentinv.metrics import make_acceptance_scorer, make_data_rmse_scorer
    op, gen, z_true, models, tt = problem
    rng = np.random.default_rng(0)
    Z = rng.standard_normal((6, D)) * 0.5
    M = gen.decode(Z)
    T = LatentInverter(gen, op, device="cpu").fit(tt).simulate(M)
    base = LatentInverter(gen, op, batch_size=6, n_epochs=3, n_starts=2, random_state=0,
                          regularization=None, device="cpu")
    gs = GridSearchCV(base, {"lr": [1e-4, 1e-2]}, cv=2).fit(T, M)
    assert gs.best_params_["lr"] == 1e-2
    assert gs.best_estimator_.predict(T).shape == M.shape
    gs2 = GridSearchCV(base, {"lr": [1e-4, 1e-2]}, cv=2,
                       scoring={"data": make_data_rmse_scorer(),
                                "acc": make_acceptance_scorer(0.5)}, refit="data").fit(T, M)
    assert gs2.best_params_["lr"] == 1e-2


def test_cross_validation_keeps_a_fitted_prior(problem):
    # GridSearchCV clones the inverter; a fitted VAEPrior passed as prior must come through
    # untouched (default cloning would make it unfitted, and fit would retrain it on y)
    prior_mod = pytest.importorskip("latentinv.prior")
    op, _, _, _, _ = problem
    n_rows, n_cols = op.grid.shape
    rng = np.random.default_rng(1)
    X = (rng.random((60, n_rows * n_cols)) > 0.5).astype(float)
    prior = prior_mod.VAEPrior(n_components=2, image_shape=(n_rows, n_cols), architecture="mlp",
                               hidden_size=8, n_iterations=5, random_state=0, device="cpu").fit(X)
    weights = {k: v.clone() for k, v in prior.module_.state_dict().items()}
    history = list(prior.history_["loss"])
    M = prior.decode(rng.standard_normal((4, 2)))
    base = LatentInverter(prior, op, batch_size=6, n_epochs=1, n_starts=2, random_state=0, device="cpu")
    T = clone(base).fit(np.ones((1, op.n_data))).simulate(M)
    assert clone(base).prior is prior and clone(base).get_params()["lr"] == base.lr
    assert not hasattr(clone(base), "prior_")
    gs = GridSearchCV(base, {"lr": [1e-3, 1e-2]}, cv=2).fit(T, M)
    assert gs.best_estimator_.prior_ is prior
    assert prior.history_["loss"] == history
    for k, v in prior.module_.state_dict().items():
        assert torch.equal(v, weights[k]), k
    # an unfitted prior is still cloned (and trained on y by fit)
    unfitted = prior_mod.VAEPrior(n_components=2, architecture="mlp", device="cpu")
    assert clone(LatentInverter(unfitted, op)).prior is not unfitted


def test_clone_and_pickle(problem):
    op, gen, _, _, tt = problem
    est = LatentInverter(gen, op, n_epochs=2, batch_size=6, n_starts=2, random_state=0,
                         device="cpu")
    c = clone(est)
    assert c.operator is not op and c.operator.n_data == op.n_data
    fitted = est.fit(tt)
    again = pickle.loads(pickle.dumps(fitted))
    np.testing.assert_allclose(again.predict(tt), fitted.predict(tt), atol=1e-6)
