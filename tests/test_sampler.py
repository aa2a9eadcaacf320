"""LatentSampler: posteriors known in closed form, detailed balance of pCN, inputs, diagnostics and
scikit-learn's estimator checks.

The analytic problem: a linear generator ``g(z) = A z + b`` (``TorchGenerator(torch.nn.Linear)``),
the identity as slowness map and straight rays on a 3 x 3 grid, so that ``t = M z + c`` with
``M = G A`` and ``c = G b``. With a standard-normal prior and noise ``N(0, sigma**2 I)`` the posterior
of ``z`` is ``N(mu, Sigma)``, ``Sigma = (M^T M / sigma**2 + I)^-1``, ``mu = Sigma M^T (y - c) / sigma**2``;
with a uniform prior on [-1, 1]^2 it is that Gaussian truncated to the box (moments by quadrature).
"""
import sys
import re
import warnings

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from sklearn.exceptions import ConvergenceWarning
from sklearn.utils.estimator_checks import estimator_checks_generator

from latentinv.geometry import CrossholeSurvey, Grid2D
from latentinv.inversion import LatentInverter, LatentSampler, TorchGenerator
from latentinv.inversion.mcmc import (HMC, MALA, PCN, RWM, ChainState, ChainStreams, DifferentialEvolution,
                                      DifferentialEvolutionMALA, Preconditioner, StepAdaptation, from_latent,
                                      to_latent)
from latentinv.inversion.posterior import RHAT_LIMIT, split_rhat
from latentinv.inversion.runtime import torch_threads
from latentinv.operators import StraightRayOperator
from test_sklearn_compat import _WIDTHS, _XFAIL_WIDTH, _applies, _check_name


def _arviz():
    """ArviZ, an optional dependency (latentinv[arviz], in the test extra); the tests that need it skip
    without it (a machine with only the package's own dependencies)."""
    return pytest.importorskip("arviz", reason="ArviZ (latentinv[arviz]) is not installed")


@pytest.fixture(autouse=True)
def one_thread():
    # tiny tensors: two threads only contend on a shared machine (same numbers either way)
    with torch_threads(1):
        yield


def identity(x):
    return x


identity.domain = None


def _operator(n_src=5, n_rec=2):
    grid = Grid2D(3, 3, 1.0)
    src = np.column_stack([np.zeros(n_src), np.linspace(0.3, 2.7, n_src)])
    rec = np.column_stack([np.full(n_rec, 3.0), np.linspace(0.5, 2.5, n_rec)])
    return StraightRayOperator(grid, CrossholeSurvey(src, rec))


def _linear_problem(d=3, sigma=0.1, uniform=False, seed=0):
    """Operator, generator, ``M``, ``c`` and data ``y`` (10 rays) of the module's analytic problem."""
    op = _operator()
    torch.manual_seed(seed)
    lin = torch.nn.Linear(d, 9)
    with torch.no_grad():
        lin.weight.mul_(0.3)
        lin.bias.fill_(1.0)
    gen = TorchGenerator(lin.eval(), d, latent_distribution="uniform" if uniform else "normal")
    G = op.jacobian(np.ones(9)).toarray()
    M = G @ lin.weight.detach().double().numpy()
    c = G @ lin.bias.detach().double().numpy()
    rng = np.random.default_rng(seed + 1)
    z_true = rng.uniform(-0.6, 0.6, d) if uniform else rng.standard_normal(d)
    y = M @ z_true + c + sigma * rng.standard_normal(len(c))
    return op, gen, M, c, y


def _gaussian_posterior(M, c, y, sigma):
    cov = np.linalg.inv(M.T @ M / sigma**2 + np.eye(M.shape[1]))
    return cov @ M.T @ (y - c) / sigma**2, cov


def _sampler(gen, op, **kw):
    params = dict(slowness_map=identity, n_chains=16, n_burnin=300, n_samples=400, random_state=0,
                  device="cpu")
    params.update(kw)
    return LatentSampler(gen, op, **params)


def _assert_moments(result, mu, cov):
    """Mean and covariance within 4.5 Monte Carlo standard errors (from the ESS that ArviZ gives)."""
    _arviz()
    ess = result.ess()[0].min()
    sd = np.sqrt(np.diag(cov))
    m_hat, c_hat = result.latent_mean()[0], result.latent_covariance()[0]
    assert np.all(np.abs(m_hat - mu) <= 4.5 * sd / np.sqrt(ess)), (m_hat, mu, ess)
    # standard error of a sample covariance of Gaussian draws: sqrt((S_ii S_jj + S_ij**2) / n)
    se = np.sqrt((np.outer(sd**2, sd**2) + cov**2) / ess)
    assert np.all(np.abs(c_hat - cov) <= 4.5 * se), (c_hat, cov, ess)
    assert result.rhat()[0].max() < 1.05


METHODS = ["pcn", "mala", "rwm", "de", "de-mala", "hmc"]
GRADIENT_METHODS = ["mala", "de-mala", "hmc"]
#: HMC's leapfrog steps per proposal in these tests (each one a forward run and a gradient)
N_LEAPFROG = 4


def _method_params(method):
    return dict(method=method, n_leapfrog=N_LEAPFROG) if method == "hmc" else dict(method=method)


def test_each_survey_starts_from_its_own_latents_in_one_call():
    """initial_latents of shape (n_surveys, n_chains, d): each survey's chains start from its own array
    (here each survey's SGD solutions, initial_latents_from(survey="all")), in one batched call whose
    chains are those of one call per survey; another number of surveys than X's, or another X than fit's
    (whose rows the arrays pair with), is a ValueError."""
    op, gen, _, _, y = _linear_problem()
    Y = np.stack([y, y + 0.3])
    sgd = LatentInverter(gen, op, n_starts=4, n_epochs=2, batch_size=5, random_state=0, device="cpu",
                         slowness_map=identity).fit(Y).invert(Y)
    starts = LatentSampler.initial_latents_from(sgd, 3, survey="all")
    assert starts.shape == (2, 3, 3) and not np.allclose(starts[0], starts[1])
    params = dict(n_chains=3, n_burnin=0, n_samples=4, noise_std=0.1, step_size=1e-9, adapt_preconditioner=False)
    both = _sampler(gen, op, initial_latents=starts, **params).fit(Y).sample(Y)
    np.testing.assert_allclose(both.samples[:, :, 0], starts, atol=1e-5)     # a vanishing step: at the starts
    for s in range(2):
        alone = _sampler(gen, op, initial_latents=starts[s], **params).fit(Y[s:s + 1]).sample(Y[s:s + 1])
        np.testing.assert_allclose(both.samples[s], alone.samples[0], atol=1e-6)
    with pytest.raises(ValueError, match=r"LatentSampler: initial_latents holds starting latents for 2 surveys, "
                                         r"but X has 1"):
        _sampler(gen, op, initial_latents=starts, **params).fit(Y[:1]).sample(Y[:1])
    with pytest.raises(ValueError, match=r"or \(n_surveys, 3, 3\), one array per survey of X, got \(2, 2, 3\)"):
        _sampler(gen, op, initial_latents=starts[:, :2], **params).fit(Y)
    with pytest.raises(ValueError, match=r"LatentSampler: initial_latents holds one array per survey of the X "
                                         r"given to fit, and this X is another"):
        _sampler(gen, op, initial_latents=starts, **params).fit(Y).sample(Y[::-1])


def test_a_sampling_repeats_from_its_replay_random_state():
    """As the inverter's: random_state=None, then the result's replay_random_state, gives the same chains."""
    op, gen, _, _, y = _linear_problem()
    params = dict(n_chains=2, n_burnin=5, n_samples=5, noise_std=0.1)
    first = _sampler(gen, op, random_state=None, **params).fit(y[None]).sample(y[None])
    again = _sampler(gen, op, random_state=first.settings["replay_random_state"], **params).fit(y[None]).sample(y[None])
    np.testing.assert_array_equal(again.samples, first.samples)


@pytest.mark.parametrize("method", METHODS)
def test_gaussian_posterior_matches_closed_form(method):
    sigma = 0.1
    op, gen, M, c, y = _linear_problem(sigma=sigma)
    mu, cov = _gaussian_posterior(M, c, y, sigma)
    # an informative posterior, far from the prior: the test could not pass by sampling N(0, I)
    assert np.sqrt(np.diag(cov)).max() < 0.5 and np.max(np.abs(mu) / np.sqrt(np.diag(cov))) > 1.2
    result = _sampler(gen, op, noise_std=sigma, **_method_params(method)).fit(y[None]).sample(y[None])
    _assert_moments(result, mu, cov)
    per_iteration = N_LEAPFROG if method == "hmc" else 1
    # "auto": the gradient methods fit the Gauss-Newton preconditioner before the burn-in and at its 3 refits
    # (after 25, 75 and 175 iterations), d = 3 forward runs per chain each
    fits = 4 if method in GRADIENT_METHODS else 0
    assert result.n_forward == 16 * ((300 + 400) * per_iteration + 1 + 3 * fits)
    assert result.settings["preconditioner_fit"] == ("gauss-newton" if fits else "empirical")
    rate = result.acceptance_rate.mean()
    assert 0.15 < rate <= 1.0


@pytest.mark.parametrize("method, preconditioner", [("mala", "empirical"), ("hmc", "empirical"),
                                                    ("rwm", "gauss-newton"), ("de-mala", "empirical")])
def test_the_other_preconditioner_fit_matches_closed_form_too(method, preconditioner):
    sigma = 0.1
    op, gen, M, c, y = _linear_problem(sigma=sigma)
    mu, cov = _gaussian_posterior(M, c, y, sigma)
    result = _sampler(gen, op, noise_std=sigma, preconditioner=preconditioner,
                      **_method_params(method)).fit(y[None]).sample(y[None])
    _assert_moments(result, mu, cov)
    fits = 4 if preconditioner == "gauss-newton" else 0
    per_iteration = N_LEAPFROG if method == "hmc" else 1
    assert result.n_forward == 16 * ((300 + 400) * per_iteration + 1 + 3 * fits)


@pytest.mark.parametrize("uniform", [False, True])
def test_the_gauss_newton_fit_is_the_posterior_covariance_of_a_linear_problem(uniform):
    """For t = M z + c, J = M dz/du; with normal latents the fit is Sigma exactly (independent of u: the
    closed form), with uniform ones (z = erf(u / sqrt(2))) it is the Gauss-Newton covariance written out."""
    from latentinv.inversion.mcmc import likelihood_jacobian
    sigma, d = 0.1, 3
    op, gen, M, c, y = _linear_problem(d=d, sigma=sigma, uniform=uniform)
    n_chains, n_surveys = 4, 2
    sampler = _sampler(gen, op, noise_std=sigma, n_chains=n_chains).fit(np.stack([y, y + 0.1]))
    problem = sampler._problem(np.stack([y, y + 0.1]), np.full(len(y), sigma), allow_pending=False,
                               nonlinear_gradient="exact")
    u = torch.tensor(np.random.default_rng(5).normal(0, 0.7, (n_surveys * n_chains, d)), dtype=torch.float32)
    J = likelihood_jacobian(problem, u, uniform).numpy().astype(np.float64)
    dz_du = np.sqrt(2 / np.pi) * np.exp(-0.5 * u.double().numpy() ** 2) if uniform else np.ones(u.shape)
    np.testing.assert_allclose(J, M[None] * dz_du[:, None, :], rtol=1e-5, atol=1e-6)
    # in passes of one chain (d rows) each: the same Jacobian
    # in one pass of every row, against passes of one chain (d rows) each: float32 rounding apart
    np.testing.assert_allclose(likelihood_jacobian(problem, u, uniform, max_rows=len(u) * d).numpy(), J,
                               rtol=1e-5, atol=1e-7)
    assert likelihood_jacobian.__defaults__ == (None, None) and max(d, len(u) // 2) // d == 1     # J: one chain a pass
    pre = Preconditioner(len(u), d, "cpu", torch.float64)
    pre.fit_gauss_newton(problem, u, uniform, n_chains)
    C = (pre.chol @ pre.chol.transpose(1, 2)).numpy()
    Jc = J.reshape(n_surveys, n_chains, len(y), d)
    for k in range(n_surveys):     # the mean over the survey's chains of J^T J / sigma**2, plus the prior's I
        H = np.mean([Jr.T @ Jr for Jr in Jc[k]], axis=0) / sigma**2 + np.eye(d)
        for r in range(n_chains):
            np.testing.assert_allclose(C[k * n_chains + r], np.linalg.inv(H), rtol=1e-8, atol=1e-12)
    if not uniform:      # float32 Jacobian: the closed form to float32 rounding
        np.testing.assert_allclose(C[0], _gaussian_posterior(M, c, y, sigma)[1], rtol=1e-4, atol=1e-7)
    assert torch.equal(pre.chol, torch.tril(pre.chol))        # lower triangular, as solve() takes it


def test_the_jacobian_passes_shrink_to_the_memory_available(monkeypatch):
    """A pass's double-backward graph is measured per row; where max(d, R / 2) rows would take more than
    half the memory available the passes hold fewer whole chains (the same Jacobian), and where not one
    chain fits the fit is a MemoryError that names the way out."""
    import latentinv._memory as memory
    from latentinv.inversion import mcmc
    d, n_chains = 3, 16
    op, gen, M, c, y = _linear_problem(d=d, sigma=0.1)
    sampler = _sampler(gen, op, noise_std=0.1, n_chains=n_chains).fit(y[None])
    problem = sampler._problem(y[None], np.full(len(y), 0.1), allow_pending=False, nonlinear_gradient="exact")
    u = torch.tensor(np.random.default_rng(4).normal(0, 1, (n_chains, d)), dtype=torch.float32)
    per_row = memory.saved_bytes_per_row(mcmc._pass_graph(problem, False), u[:1])
    # the pass counts the first backward's graph, built to be differentiated again: with a nonlinear
    # slowness map (the paper's), whose backward keeps a tensor per row, more than the same outputs without
    from latentinv.inversion import paper_slowness
    curved = LatentSampler(gen, op, slowness_map=paper_slowness, n_chains=2, noise_std=0.1, device="cpu").fit(y[None])
    curved = curved._problem(y[None], np.full(len(y), 0.1), allow_pending=False, nonlinear_gradient="exact")

    def first_backward_not_kept(uu):
        _, s = curved.decode(uu)
        v = torch.zeros_like(s, requires_grad=True)
        return torch.autograd.grad(s, uu, v)[0], s, v
    kept = memory.saved_bytes_per_row(mcmc._pass_graph(curved, False), u[:1])
    assert kept >= memory.saved_bytes_per_row(first_backward_not_kept, u[:1]) + 4 * op.n_params > 0
    monkeypatch.setattr(memory, "available_bytes", lambda device: None)      # nothing known: R / 2 rows
    assert mcmc.jacobian_pass_rows(problem, u, False) == n_chains // 2
    J = mcmc.likelihood_jacobian(problem, u, False)
    for room, rows in [(1e12, n_chains // 2), (2 * per_row * 2 * d + 1, 2 * d), (2 * per_row * 2 * d - 1, d),
                       (per_row * d + 1, d)]:
        monkeypatch.setattr(memory, "available_bytes", lambda device, room=room: room)
        assert mcmc.jacobian_pass_rows(problem, u, False) == rows, room
        decoded = []
        real = problem.decode
        monkeypatch.setattr(problem, "decode", lambda z: decoded.append(len(z)) or real(z))
        np.testing.assert_allclose(mcmc.likelihood_jacobian(problem, u, False).numpy(), J.numpy(), rtol=1e-5,
                                   atol=1e-7)
        monkeypatch.setattr(problem, "decode", real)
        passes = decoded[2:]                  # after the probe's two (4 and 2 rows): whole chains a pass
        assert decoded[:2] == [4, 2] and max(passes) == rows // d * d and sum(passes) == n_chains * d
    # a preconditioner measures the pass's rows once, at its first fit (the refits hold the same rows)
    probes = []
    real_probe = mcmc.pass_row_bytes
    monkeypatch.setattr(mcmc, "pass_row_bytes", lambda *a: probes.append(1) or real_probe(*a))
    pre = Preconditioner(n_chains, d, "cpu", torch.float32)
    pre.fit_gauss_newton(problem, u, False, n_chains)
    pre.fit_gauss_newton(problem, u, False, n_chains)
    assert len(probes) == 1 and pre.pass_row_bytes == per_row
    monkeypatch.setattr(memory, "available_bytes", lambda device: per_row * d - 1)
    with pytest.raises(MemoryError, match=r"Gauss-Newton preconditioner's Jacobian needs at least .* for one "
                                          r"chain \(3 decodings.*Use preconditioner='empirical'"):
        Preconditioner(n_chains, d, "cpu", torch.float32).fit_gauss_newton(problem, u, False, n_chains)


def test_memory_for_exactly_one_chain_is_one_chain_a_pass(monkeypatch):
    """At the MemoryError's edge: memory for exactly one chain's d decoded rows (d times the bytes per
    row) is enough, and its passes hold one chain; a byte less is the error."""
    import latentinv._memory as memory
    from latentinv.inversion import mcmc
    d, per_row = 3, 1000.0
    u = torch.zeros(8, d)
    monkeypatch.setattr(memory, "available_bytes", lambda device: per_row * d)
    assert mcmc.jacobian_pass_rows(None, u, False, per_row=per_row) == d
    monkeypatch.setattr(memory, "available_bytes", lambda device: per_row * d - 1)
    with pytest.raises(MemoryError, match="for one chain"):
        mcmc.jacobian_pass_rows(None, u, False, per_row=per_row)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_the_gauss_newton_fit_and_a_run_on_cuda():
    """On CUDA: the fit equals the CPU's (float32 rounding: the kernel's sparse product, the decoder's
    double backward), and an HMC run that fits it samples the closed-form posterior."""
    sigma, d = 0.1, 3
    op, gen, M, c, y = _linear_problem(d=d, sigma=sigma)
    u = torch.tensor(np.random.default_rng(9).normal(0, 1, (4, d)), dtype=torch.float32)
    chols = []
    for device in ("cpu", "cuda"):
        gen.module.to(device)
        sampler = _sampler(gen, op, noise_std=sigma, n_chains=4, device=device).fit(y[None])
        problem = sampler._problem(y[None], np.full(len(y), sigma), allow_pending=False, nonlinear_gradient="exact")
        pre = Preconditioner(4, d, device, torch.float32)
        pre.fit_gauss_newton(problem, u.to(device), False, 4)
        chols.append(pre.chol.cpu())
    torch.testing.assert_close(chols[1], chols[0], rtol=1e-5, atol=1e-6)
    mu, cov = _gaussian_posterior(M, c, y, sigma)
    result = _sampler(gen, op, noise_std=sigma, device="cuda", **_method_params("hmc")).fit(y[None]).sample(y[None])
    gen.module.to("cpu")
    _assert_moments(result, mu, cov)
    assert result.settings["preconditioner_fit"] == "gauss-newton"


def test_chains_without_a_finite_jacobian_are_left_out_of_the_fit(monkeypatch):
    import latentinv.inversion.mcmc as mcmc
    sigma, d = 0.1, 3
    op, gen, M, c, y = _linear_problem(d=d, sigma=sigma)
    sampler = _sampler(gen, op, noise_std=sigma, n_chains=3).fit(y[None])
    problem = sampler._problem(y[None], np.full(len(y), sigma), allow_pending=False, nonlinear_gradient="exact")
    u = torch.tensor(np.random.default_rng(8).normal(0, 1, (3, d)), dtype=torch.float32)
    J = mcmc.likelihood_jacobian(problem, u, False)
    broken = J.clone()
    broken[1, 4, 2] = float("nan")
    monkeypatch.setattr(mcmc, "likelihood_jacobian", lambda *a, **k: broken)
    pre = Preconditioner(3, d, "cpu", torch.float32)
    pre.fit_gauss_newton(problem, u, False, 3)
    Jd = J.double().numpy()
    H = (Jd[0].T @ Jd[0] + Jd[2].T @ Jd[2]) / 2 / sigma**2 + np.eye(d)       # chains 0 and 2 only
    np.testing.assert_allclose((pre.chol[0] @ pre.chol[0].T).double().numpy(), np.linalg.inv(H), rtol=1e-5)
    broken[:] = float("inf")
    with pytest.raises(ValueError, match=r"not finite at any chain of surveys \[0\].*preconditioner='empirical'"):
        pre.fit_gauss_newton(problem, u, False, 3)


def test_the_jacobian_through_a_nonlinear_operator_is_its_finite_differences():
    """A shortest-path operator's backward applies G^T but cannot be differentiated again: the Jacobian is
    G(s) D from the operator's own Jacobians; against central differences of its traveltimes."""
    sys.path.insert(0, str(__import__("pathlib").Path(__file__).parent / "golden"))
    import cases
    from latentinv.inversion.mcmc import likelihood_jacobian
    op, gen = cases._graph(), cases._generator()
    y = cases._data(op, n=1)
    sampler = LatentSampler(gen, op, n_chains=2, noise_std=0.1, method="mala", device="cpu").fit(y)
    problem = sampler._problem(y, np.full(y.shape[1], 0.1), allow_pending=False, nonlinear_gradient="exact")
    u = torch.tensor(np.random.default_rng(7).normal(0, 1, (2, cases.D)), dtype=torch.float32)
    J = likelihood_jacobian(problem, u, False, max_rows=2 * cases.D).double().numpy()     # both rows in one pass
    np.testing.assert_allclose(likelihood_jacobian(problem, u, False, max_rows=cases.D).double().numpy(), J,
                               rtol=1e-6, atol=1e-9)                                       # a row per pass

    def traveltimes(z):
        return op.response(problem.slowness_map(torch.tensor(gen.decode(z[None]))).numpy())[0]
    h = 1e-3
    for r in range(2):
        z = u[r].double().numpy()
        fd = np.stack([(traveltimes(z + h * e) - traveltimes(z - h * e)) / (2 * h) for e in np.eye(cases.D)], 1)
        np.testing.assert_allclose(J[r], fd, rtol=0.02, atol=0.02 * np.abs(fd).max())


@pytest.mark.parametrize("n_burnin, adapt, fits", [(0, True, 1), (60, True, 2), (60, False, 0)])
def test_gauss_newton_fits_are_counted_as_forward_runs(n_burnin, adapt, fits, monkeypatch):
    """One fit before the first iteration and one per refit (a burn-in of 60 refits once, after 25
    iterations); none without adaptation. Each fit is d forward runs per chain."""
    calls = []
    real = Preconditioner.fit_gauss_newton
    monkeypatch.setattr(Preconditioner, "fit_gauss_newton", lambda self, *a: calls.append(1) or real(self, *a))
    op, gen, M, c, y = _linear_problem(d=3)
    result = _sampler(gen, op, noise_std=0.1, method="mala", n_chains=2, n_burnin=n_burnin, n_samples=5,
                      adapt_preconditioner=adapt).fit(y[None]).sample(y[None])
    assert len(calls) == fits
    assert result.n_forward == 2 * ((n_burnin + 5) + 1 + 3 * fits)
    assert result.settings["preconditioner_fit"] == ("gauss-newton" if adapt else "none")


def test_the_jacobian_of_a_nonlinear_slowness_map_is_autograds():
    """With the paper's slowness map (1 / velocity of the model values) the traveltimes are nonlinear in z:
    the double-backward Jacobian against torch.autograd.functional.jacobian of one row at a time."""
    from latentinv.inversion import paper_slowness
    from latentinv.inversion.mcmc import likelihood_jacobian
    op, gen, M, c, y = _linear_problem(d=3)
    sampler = LatentSampler(gen, op, slowness_map=paper_slowness, n_chains=3, noise_std=0.1, device="cpu").fit(y[None])
    problem = sampler._problem(y[None], np.full(len(y), 0.1), allow_pending=False, nonlinear_gradient="exact")
    u = torch.tensor(np.random.default_rng(6).normal(0, 1, (3, 3)), dtype=torch.float32)
    J = likelihood_jacobian(problem, u, False)

    def traveltimes(row):
        x, s = problem.decode(row[None])
        return problem.traveltimes(x, s, problem.all_rays(1))[0][0]
    for r in range(3):
        want = torch.autograd.functional.jacobian(traveltimes, u[r])
        torch.testing.assert_close(J[r], want, rtol=1e-5, atol=1e-6)


def test_classic_pcn_without_preconditioner_matches_closed_form():
    sigma = 0.3
    op, gen, M, c, y = _linear_problem(d=2, sigma=sigma, seed=3)
    mu, cov = _gaussian_posterior(M, c, y, sigma)
    result = _sampler(gen, op, method="pcn", noise_std=sigma, adapt_preconditioner=False,
                      n_samples=600).fit(y[None]).sample(y[None])
    _assert_moments(result, mu, cov)
    # the burn-in steered the acceptance to pCN's target
    assert abs(result.acceptance_rate.mean() - 0.234) < 0.08


@pytest.mark.parametrize("method", METHODS)
def test_uniform_latents_match_the_truncated_posterior(method):
    sigma = 0.6     # broad enough that the box and the prior's shape matter
    op, gen, M, c, y = _linear_problem(d=2, sigma=sigma, uniform=True, seed=2)
    # the posterior on [-1, 1]^2 by quadrature (midpoints of a 600 x 600 grid)
    h = 2.0 / 600
    g = -1 + h * (np.arange(600) + 0.5)
    Z = np.stack(np.meshgrid(g, g, indexing="ij"), -1).reshape(-1, 2)
    logp = -0.5 * np.sum((Z @ M.T + c - y) ** 2, 1) / sigma**2
    p = np.exp(logp - logp.max())
    p /= p.sum()
    mu = p @ Z
    cov = (Z - mu).T @ ((Z - mu) * p[:, None])
    result = _sampler(gen, op, noise_std=sigma, **_method_params(method)).fit(y[None]).sample(y[None])
    assert np.all(np.abs(result.samples) < 1)
    _assert_moments(result, mu, cov)


def test_hmc_leapfrog_conserves_energy_to_second_order_and_is_reversible():
    # a quadratic potential U(u) = |A u - b|^2 / 2 + |u|^2 / 2 (phi and its gradient in closed form):
    # the leapfrog's energy error must fall at least as eps^2 (so log_accept -> 0), and the trajectory run
    # back from (u', -r') must return to u (reversibility, which the acceptance ratio relies on)
    rng = np.random.default_rng(1)
    R, d = 6, 3
    A = torch.tensor(rng.normal(size=(d, d)) * 2.0)
    b = torch.tensor(rng.normal(size=d))

    def evaluate(u):
        res = u @ A.T - b
        return ChainState(u, u, u, u, 0.5 * (res * res).sum(1), res @ A)

    pre = Preconditioner(R, d, "cpu", torch.float64)
    pre.chol = torch.tensor(np.tril(rng.normal(size=(R, d, d)) * 0.2) + np.eye(d))

    class Streams:
        def uniforms(self, n=3):
            return torch.full((R, n), 0.5, dtype=torch.float64)      # no jitter: eps exactly

    u0 = torch.tensor(rng.normal(size=(R, d)))
    xi = torch.tensor(rng.normal(size=(R, d)))
    errors = []
    for eps in (0.02, 0.01, 0.005):
        k = HMC(n_leapfrog=7)
        k.bind(evaluate)
        k.start(None, R, Streams())
        step = torch.full((R,), eps, dtype=torch.float64)
        u1 = k.propose(evaluate(u0), step, xi, pre)
        errors.append(float(k.log_accept(evaluate(u0), evaluate(u1), step, pre).abs().max()))
        r1 = k.r_last - 0.5 * eps * pre.apply_transpose(evaluate(u1).grad + u1)
        back = HMC(n_leapfrog=7)
        back.bind(evaluate)
        back.start(None, R, Streams())
        torch.testing.assert_close(back.propose(evaluate(u1), step, -r1, pre), u0, rtol=1e-9, atol=1e-9)
    assert 0 < errors[-1] < 1e-4
    # halving eps divides the error by 4 or more (at least second order; a wrong sign or a missing
    # half step leaves a first-order error, or none that falls at all)
    assert errors[0] / errors[1] > 3.5 and errors[1] / errors[2] > 3.5


def test_pcn_acceptance_ratio_is_the_metropolis_hastings_ratio():
    # detailed balance: for pCN with reference N(m, L L^T), exp(log_accept) must equal
    # pi(u') q(u | u') / (pi(u) q(u' | u)) with pi ~ exp(-phi - |u|^2 / 2) and q the Gaussian
    # proposal density, for arbitrary pairs (u, u'), potentials and betas
    rng = np.random.default_rng(0)
    R, d = 50, 4
    pre = Preconditioner(R, d, "cpu", torch.float64)
    pre.mean = torch.tensor(rng.normal(size=(R, d)))
    L = np.tril(rng.normal(size=(R, d, d)) * 0.3) + 2 * np.eye(d)
    pre.chol = torch.tensor(L)
    beta = torch.tensor(rng.uniform(0.05, 0.99, R))
    u, v = (torch.tensor(rng.normal(size=(R, d)) * 2) for _ in range(2))
    phi_u, phi_v = (torch.tensor(rng.uniform(0, 5, R)) for _ in range(2))

    def state(w, phi):
        return ChainState(w, w, w, w, phi)

    log_a = PCN().log_accept(state(u, phi_u), state(v, phi_v), beta, pre)

    def log_q(to, frm):   # N(to; m + rho (frm - m), beta^2 L L^T)
        rho = torch.sqrt(1 - beta**2)[:, None]
        r = to - (pre.mean + rho * (frm - pre.mean))
        w = torch.linalg.solve_triangular(pre.chol, r[:, :, None], upper=False)[:, :, 0] / beta[:, None]
        return -0.5 * (w * w).sum(1) - d * torch.log(beta)

    def log_pi(w, phi):
        return -phi - 0.5 * (w * w).sum(1)

    expected = log_pi(v, phi_v) + log_q(u, v) - log_pi(u, phi_u) - log_q(v, u)
    torch.testing.assert_close(log_a, expected, rtol=1e-10, atol=1e-10)
    # random-walk Metropolis: a symmetric proposal, so the ratio is pi(u') / pi(u) whatever L and step
    torch.testing.assert_close(RWM().log_accept(state(u, phi_u), state(v, phi_v), beta, pre),
                               log_pi(v, phi_v) - log_pi(u, phi_u), rtol=1e-10, atol=1e-10)
    # and the classic pCN (m = 0, L = I) reduces to phi(u) - phi(u')
    plain = Preconditioner(R, d, "cpu", torch.float64)
    torch.testing.assert_close(PCN().log_accept(state(u, phi_u), state(v, phi_v), beta, plain), phi_u - phi_v)


def _archived_kernel(kernel, R=40, d=3, n_chains=8, seed=0):
    """``kernel`` started on ``R`` random states (float64), with a random archive of 30 states per survey."""
    rng = np.random.default_rng(seed)
    u = torch.tensor(rng.normal(size=(R, d)))
    streams = ChainStreams(([np.random.default_rng([seed, i]) for i in range(R)],
                            [np.random.default_rng([seed, R + i]) for i in range(R)]), d, "cpu", torch.float64)
    kernel.start(ChainState(u, u, u, u, torch.zeros(R)), n_chains, streams)
    kernel.archive = torch.tensor(rng.normal(size=(R // n_chains, 30, d)))
    return kernel, rng, streams


@pytest.mark.parametrize("cls", [DifferentialEvolution, DifferentialEvolutionMALA])
def test_differential_evolution_proposals_and_acceptance_ratio(cls):
    R, d = 40, 3
    kernel, rng, streams = _archived_kernel(cls(p_jump=0.3))
    pre = Preconditioner(R, d, "cpu", torch.float64)
    pre.chol = torch.tensor(np.tril(rng.normal(size=(R, d, d)) * 0.3) + 2 * np.eye(d))
    u = torch.tensor(rng.normal(size=(R, d)))
    step = torch.tensor(rng.uniform(0.2, 2.0, R))
    grad = torch.tensor(rng.normal(size=(R, d)))
    cur = ChainState(u, u, u, u, torch.tensor(rng.uniform(0, 5, R)), grad)
    xi = torch.tensor(rng.normal(size=(R, d)))
    v = kernel.propose(cur, step, xi, pre)
    jump = kernel.jump
    assert 0 < int(jump.sum()) < R
    # every proposal is u + gamma (a - b) + jitter xi with a != b from the chain's survey's archive
    # (gamma = 1 for jumps); the non-jumps of DE-MALA are MALA's proposals
    if cls is DifferentialEvolutionMALA:
        torch.testing.assert_close(v[~jump], MALA().propose(cur, step, xi, pre)[~jump])
    rows = torch.nonzero(jump if cls is DifferentialEvolutionMALA else torch.ones(R, dtype=torch.bool))[:, 0]
    for r in rows.tolist():
        arch = kernel.archive[r // 8]
        gamma = 1.0 if jump[r] else step[r].item() * 2.38 / np.sqrt(2 * d)
        diff = (v[r] - u[r] - kernel.jitter * xi[r]) / gamma
        pairs = arch[:, None] - arch[None]                       # (a, b) -> a - b
        gap = torch.linalg.vector_norm(pairs - diff, dim=-1)
        a, b = np.unravel_index(int(gap.argmin()), gap.shape)
        assert gap[a, b] < 1e-9 and a != b
    # the acceptance ratio: the symmetric one pi(v) / pi(u) for DE moves (prior term included),
    # MALA's Hastings ratio for the others
    prop = ChainState(v, v, v, v, torch.tensor(rng.uniform(0, 5, R)), torch.tensor(rng.normal(size=(R, d))))
    log_a = kernel.log_accept(cur, prop, step, pre)

    def log_pi(s):
        return -s.phi - 0.5 * (s.u * s.u).sum(1)

    expected = log_pi(prop) - log_pi(cur)
    if cls is DifferentialEvolutionMALA:
        expected = torch.where(jump, expected, MALA().log_accept(cur, prop, step, pre))
    torch.testing.assert_close(log_a, expected, rtol=1e-10, atol=1e-10)
    # jumps are left out of the step adaptation (NaN: the step is kept)
    signal = kernel.adaptation_signal(torch.full((R,), 0.5, dtype=torch.float64))
    assert torch.all(torch.isnan(signal[jump])) and torch.all(signal[~jump] == 0.5)
    adapt = StepAdaptation(step.clone(), 0.3, 10.0)
    adapt.update(signal)
    torch.testing.assert_close(adapt.step[jump], step[jump])


def test_differential_evolution_archive_grows_in_the_burnin_only():
    kernel, rng, _ = _archived_kernel(DifferentialEvolution(archive_every=2, archive_size=34))
    state = ChainState(*(torch.ones(40, 3, dtype=torch.float64),) * 4, torch.zeros(40))
    kernel.observe(0, state, True)                       # iteration 1 of every 2: nothing added
    assert kernel.archive.shape == (5, 30, 3)
    kernel.observe(1, state, True)                       # 8 chains' states added, the oldest 4 dropped
    assert kernel.archive.shape == (5, 34, 3) and torch.all(kernel.archive[:, -8:] == 1)
    frozen = kernel.archive.clone()
    for k in range(2, 10):
        kernel.observe(k, state, False)                  # after the burn-in: frozen
    torch.testing.assert_close(kernel.archive, frozen)


def _two_mode_problem(sigma=0.3):
    """A 2-D latent problem whose posterior has two separated modes: the generator sees
    ``z_1**2 + 0.8 z_1`` (which takes the same value at two ``z_1`` far apart) and ``z_2``. Returns
    the sampler's inputs and the posterior mass of the mode ``z_1 > -0.4`` by quadrature."""

    class Fold(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.lin = torch.nn.Linear(2, 9)
            with torch.no_grad():
                self.lin.weight.copy_(torch.tensor(np.random.default_rng(0).uniform(0.1, 0.4, (9, 2))))
                self.lin.bias.fill_(1.0)

        def forward(self, z):
            return self.lin(torch.stack([z[:, 0] ** 2 + 0.8 * z[:, 0], z[:, 1]], 1))

    op, module = _operator(), Fold().eval()
    G = op.jacobian(np.ones(9)).toarray()
    with torch.no_grad():
        x_true = module(torch.tensor([[1.6, 0.3]])).double().numpy()[0]
    y = G @ x_true + sigma * np.random.default_rng(1).standard_normal(G.shape[0])
    h = 8.0 / 800                                        # quadrature on [-4, 4]^2
    g = -4 + h * (np.arange(800) + 0.5)
    Z = np.stack(np.meshgrid(g, g, indexing="ij"), -1).reshape(-1, 2)
    with torch.no_grad():
        X = module(torch.tensor(Z, dtype=torch.float32)).double().numpy()
    logp = -0.5 * np.sum((X @ G.T - y) ** 2, 1) / sigma**2 - 0.5 * np.sum(Z**2, 1)
    p = np.exp(logp - logp.max())
    p /= p.sum()
    # the barrier between the modes (the highest log density on the line z_1 = -0.4 between them)
    ridge = np.abs(Z[:, 0] + 0.2) < h
    assert logp.max() - logp[ridge].max() > 40
    return TorchGenerator(module, 2), op, y, p[Z[:, 0] > -0.4].sum()


def test_differential_evolution_jumps_put_the_right_mass_in_each_of_two_modes():
    sigma = 0.3
    gen, op, y, mass = _two_mode_problem(sigma)
    assert 0.8 < mass < 0.9             # unequal modes: the prior weighs z_1 = 1.6 more than z_1 = -2.4
    for method in ("de-mala", "de"):
        r = _sampler(gen, op, method=method, noise_std=sigma, jump_probability=0.3,
                     n_samples=600).fit(y[None]).sample(y[None])
        in_mode = r.samples[0, :, :, 0] > -0.4
        # chains started from the prior switch modes: most chains visit both
        assert np.sum((in_mode.mean(1) > 0) & (in_mode.mean(1) < 1)) >= 10
        # the mass of the mode within 3 Monte Carlo standard errors (from the ESS of the indicator;
        # over seeds 0-4 the error was 0-1.6 of them), and that error small enough to tell
        az = _arviz()
        ess = float(az.ess(az.convert_to_dataset({"in_mode": in_mode.astype(float)}))["in_mode"].values)
        se = np.sqrt(mass * (1 - mass) / ess)
        assert se < 0.08 and abs(in_mode.mean() - mass) < 3 * se, (method, in_mode.mean(), mass, se)
    # a single random-walk chain stays in the mode it starts in; MALA's chains (16, from the prior)
    # keep the split of their starts, whatever the modes' masses
    rwm = _sampler(gen, op, method="rwm", n_chains=1, noise_std=sigma, n_samples=600).fit(y[None]).sample(y[None])
    assert rwm.samples[0, 0, :, 0].min() > -0.4 or rwm.samples[0, 0, :, 0].max() < -0.4
    with pytest.warns(ConvergenceWarning, match=r"the chains disagree for surveys \[0\]: worst rank-normalised"):
        mala = _sampler(gen, op, method="mala", noise_std=sigma, n_samples=600).fit(y[None]).sample(y[None])
    frac = (mala.samples[0, :, :, 0] > -0.4).mean(1)
    assert np.all((frac == 0) | (frac == 1)) and abs(frac.mean() - mass) > 0.1
    assert mala.rhat()[0, 0] > 1.5       # what the warning reports: the modes' split is frozen


def test_a_single_chain_is_warned_that_r_hat_cannot_compare_chains():
    """One chain per survey: split R-hat compares the two halves of that chain only. On the two-mode
    problem a single random-walk chain stays in the mode it starts in (the posterior mass it reports is
    0 or 1, against 0.85) and its halves agree, so R-hat alone looks converged: a ConvergenceWarning
    says that one chain cannot show it (ArviZ's rhat is NaN for one chain)."""
    sigma = 0.3
    gen, op, y, mass = _two_mode_problem(sigma)
    with pytest.warns(ConvergenceWarning, match=r"1 chain per survey: R-hat .* n_chains >= 4"):
        rwm = _sampler(gen, op, method="rwm", n_chains=1, noise_std=sigma, n_samples=600).fit(y[None]).sample(y[None])
    frac = (rwm.samples[0, 0, :, 0] > -0.4).mean()
    assert frac in (0.0, 1.0) and abs(frac - mass) > 0.1
    # two chains or more: no such warning (the chains' own disagreement is R-hat's to tell)
    op2, gen2, M, c, y2 = _linear_problem(sigma=0.1)
    with warnings.catch_warnings():
        warnings.simplefilter("error", ConvergenceWarning)
        _sampler(gen2, op2, method="pcn", n_chains=4, noise_std=0.1).fit(y2[None]).sample(y2[None])


def test_pcn_kernel_keeps_a_discrete_target_invariant():
    # a 1-D check of the whole kernel (proposal + accept/reject) on a grid: with pi(u) ~
    # exp(-phi(u) - u^2/2), the transition matrix K (proposal density times acceptance, the rejected
    # mass on the diagonal) satisfies pi_i K_ij = pi_j K_ji and pi K = pi
    u = np.linspace(-4, 4, 161)
    phi = 0.8 * (u - 1.0) ** 2 + np.sin(3 * u)
    beta = 0.4
    pre = Preconditioner(len(u), 1, "cpu", torch.float64)
    q = np.exp(-0.5 * ((u[None, :] - np.sqrt(1 - beta**2) * u[:, None]) / beta) ** 2)
    q /= q.sum(1, keepdims=True)       # the proposal restricted to the grid (symmetric w.r.t. N(0, 1))
    pi = np.exp(-phi - u**2 / 2)
    pi /= pi.sum()
    K = np.zeros((len(u), len(u)))
    for j in range(len(u)):
        cur = ChainState(*(torch.tensor(u[:, None]),) * 4, torch.tensor(phi))
        prop = ChainState(*(torch.full((len(u), 1), u[j]),) * 4, torch.full((len(u),), phi[j]))
        a = np.exp(np.minimum(PCN().log_accept(cur, prop, torch.full((len(u),), beta), pre).numpy(), 0))
        K[:, j] = q[:, j] * a
    K[np.arange(len(u)), np.arange(len(u))] += 1 - K.sum(1)
    flow = pi[:, None] * K
    # the grid's normalisation of q breaks exact symmetry of q w.r.t. N(0, 1) only at the edges
    inner = slice(40, 121)
    np.testing.assert_allclose(flow[inner, inner], flow.T[inner, inner], rtol=0.05, atol=1e-12)
    np.testing.assert_allclose((pi @ K)[inner], pi[inner], rtol=0.02)


@pytest.mark.parametrize("target", [0.234, 0.574])
def test_step_adaptation_freezes_the_step_that_gives_the_target_acceptance(target):
    # a known acceptance curve a(step) = exp(-(step / 0.3)**2), observed with noise of mean one
    # (a_k = a(step) * w_k, w_k ~ Gamma(4, 1/4) and clipped at 1, as the acceptance probabilities
    # of a real chain scatter around their mean); the frozen step must solve a(step) = target:
    # step* = 0.3 sqrt(-log target), reached from 30 times too small and from 10 times too large.
    # (Over 10 seeds the Robbins-Monro rule froze 0.35-0.37 and 0.20-0.23 here; a dual-averaging
    # rule tried instead, 0.36-0.38 and 0.18-0.21: no better, so not adopted.)
    rng = np.random.default_rng(0)
    expected = 0.3 * np.sqrt(-np.log(target))
    step0 = torch.tensor([expected / 30, expected * 10], dtype=torch.float64)
    adapt = StepAdaptation(step0, target, max_step=10.0)
    for k in range(600):
        if k == 300:
            adapt.restart()                    # a preconditioner refit in the middle
        a = torch.exp(-(adapt.step / 0.3) ** 2)
        # the noise is drawn so that the mean acceptance at step* is the target (clipping aside)
        adapt.update((a * torch.tensor(rng.gamma(4.0, 0.25, 2))).clamp(max=1.0))
    frozen = adapt.frozen().numpy()
    # clipping at 1 lowers the mean acceptance a little: step* from the clipped mean, by bisection
    w = rng.gamma(4.0, 0.25, 200_000)
    lo, hi = 1e-3, 1.0
    for _ in range(60):
        mid = 0.5 * (lo + hi)
        lo, hi = (mid, hi) if np.minimum(np.exp(-(mid / 0.3) ** 2) * w, 1).mean() > target else (lo, mid)
    assert abs(lo - expected) / expected < 0.1
    np.testing.assert_allclose(frozen, lo, rtol=0.1)
    # the step never leaves (0, max_step]
    capped = StepAdaptation(torch.tensor([0.5]), 0.234, max_step=1.0)
    for _ in range(50):
        capped.update(torch.tensor([1.0]))
    assert capped.step.item() == 1.0 and capped.frozen().item() <= 1.0


def test_uniform_transform_round_trip_and_law():
    z = torch.linspace(-0.999, 0.999, 101, dtype=torch.float64)
    torch.testing.assert_close(to_latent(from_latent(z, True), True), z)
    u = torch.tensor(np.random.default_rng(0).standard_normal(200_000))
    counts, _ = np.histogram(to_latent(u, True).numpy(), bins=10, range=(-1, 1))
    assert np.all(np.abs(counts / 20_000 - 1) < 0.05)      # U(-1, 1)
    torch.testing.assert_close(from_latent(z, False), z)


def test_chains_start_from_sgd_solutions_and_are_reproducible():
    sigma = 0.1
    op, gen, M, c, y = _linear_problem(sigma=sigma)
    sgd = LatentInverter(gen, op, slowness_map=identity, batch_size=None, n_epochs=30, lr=1e-3,
                         regularization=None, lam=0.0, n_starts=3, random_state=0, device="cpu")
    res = sgd.fit(y[None]).invert(y[None])
    z0 = LatentSampler.initial_latents_from(res, 5)
    order = np.argsort(res.data_rmse[0])
    np.testing.assert_array_equal(z0, res.latents[0][order[[0, 1, 2, 0, 1]]])
    kw = dict(n_chains=5, n_burnin=0, n_samples=3, noise_std=sigma, initial_latents=z0, step_size=1e-9,
              adapt_preconditioner=False)
    first = _sampler(gen, op, **kw).fit(y[None]).sample(y[None])
    # with a vanishing pCN step the chains stay at their starts
    np.testing.assert_allclose(first.samples[0, :, 0], z0, atol=1e-6)
    again = _sampler(gen, op, **kw).fit(y[None]).sample(y[None])
    np.testing.assert_array_equal(first.samples, again.samples)
    for survey in (2, -1, True, 0.5, "0", "ALL"):
        with pytest.raises(ValueError, match=rf"survey must be an int in \[0, 1\) or 'all', got {survey!r}"):
            LatentSampler.initial_latents_from(res, 5, survey=survey)
    for n_chains in (0, -1, 2.0, "3", True):
        with pytest.raises(ValueError, match=rf"n_chains must be an int >= 1, got {n_chains!r}"):
            LatentSampler.initial_latents_from(res, n_chains)


def test_initial_latents_from_a_survey_are_its_own_lowest_misfit_starts():
    """Of several surveys, the latents of the asked survey's starts ranked by that survey's misfit (the data
    RMSE, or the chi-square when there is one; a start without a finite one last), taken again in turn for
    more chains than starts."""
    from types import SimpleNamespace
    latents = np.arange(2 * 3 * 2, dtype=float).reshape(2, 3, 2)          # (surveys, starts, d)
    res = SimpleNamespace(latents=latents, data_rmse=np.array([[3.0, 1.0, 2.0], [0.5, np.nan, 0.2]]))
    np.testing.assert_array_equal(LatentSampler.initial_latents_from(res, 4, survey=1), latents[1][[2, 0, 1, 2]])
    np.testing.assert_array_equal(LatentSampler.initial_latents_from(res, 2, survey=0), latents[0][[1, 2]])
    # with noise_std the inverter's misfit is the chi-square: a per-datum noise_std ranks otherwise than the
    # unweighted data RMSE (before: ranked by data_rmse, [1, 2] here)
    res.chi2 = np.array([[9.0, 30.0, 4.0], [1.0, 2.0, np.inf]])
    np.testing.assert_array_equal(LatentSampler.initial_latents_from(res, 2, survey=0), latents[0][[2, 0]])
    np.testing.assert_array_equal(LatentSampler.initial_latents_from(res, 4, survey=1), latents[1][[0, 1, 2, 0]])
    # equal misfits, and the starts without a finite one (NaN or inf alike), keep the order of the starts:
    # NumPy's default sort is not stable (with AVX-512 it reordered these ties), so the chains' starts
    # would depend on the CPU
    n = 40
    tied = SimpleNamespace(latents=np.arange(n * 2, dtype=float).reshape(1, n, 2),
                           data_rmse=np.tile([0.5, 1.0, np.inf, np.nan], n // 4)[None])
    expected = np.concatenate([np.arange(0, n, 4), np.arange(1, n, 4), np.sort(np.r_[2:n:4, 3:n:4])])
    np.testing.assert_array_equal(LatentSampler.initial_latents_from(tied, n), tied.latents[0][expected])


@pytest.mark.parametrize("method, preconditioner", [("mala", "empirical"), ("mala", "gauss-newton"),
                                                    ("hmc", "gauss-newton"), ("pcn", "empirical")])
def test_a_survey_does_not_depend_on_the_others(method, preconditioner):
    """A survey's chains in a batch of three surveys and alone: the same draws, bit for bit, with a generator
    that rounds each row alike in any batch (:class:`_Affine`; an ``nn.Linear`` need not) and a burn-in long
    enough for refits (after 25 and 75 iterations), so that the preconditioner's own arithmetic is in it."""
    sigma = 0.1
    op, gen, M, c, y = _linear_problem(sigma=sigma)
    gen = TorchGenerator(_Affine(gen.module), 3)
    Y = np.stack([y, y + 0.05, y - 0.03])
    kw = dict(n_chains=3, n_burnin=120, n_samples=20, noise_std=sigma, method=method, preconditioner=preconditioner,
              **({"n_leapfrog": 3} if method == "hmc" else {}))
    both = _sampler(gen, op, **kw).fit(Y).sample(Y)
    alone = _sampler(gen, op, **kw).fit(Y[[2]]).sample(Y[[2]])
    np.testing.assert_array_equal(both.samples[2], alone.samples[0])
    np.testing.assert_array_equal(both.mean[2], alone.mean[0])


def test_result_maps_and_inference_data():
    sigma = 0.1
    op, gen, M, c, y = _linear_problem(sigma=sigma)
    sampler = _sampler(gen, op, n_chains=4, n_burnin=50, n_samples=30, thin=2, noise_std=sigma,
                       n_model_samples=5).fit(y[None])
    r = sampler.sample(y[None])
    assert r.samples.shape == (1, 4, 30, 3) and r.model_samples.shape == (1, 5, 9)
    # the model statistics come from the draws: for the linear generator, mean model = g(mean z)
    # over the same draws (every draw after the burn-in, thinning aside: compared loosely)
    lin = gen.module
    with torch.no_grad():
        g_mean = lin(torch.tensor(r.latent_mean(), dtype=torch.float32)).numpy()[0]
    np.testing.assert_allclose(r.mean[0], g_mean, atol=0.03)
    assert np.all(r.std >= 0) and np.all((r.channel_probability >= 0) & (r.channel_probability <= 1))
    # every model is > 0.5 here (bias 1, small weights): channel everywhere
    np.testing.assert_array_equal(r.channel_probability, 1.0)
    np.testing.assert_allclose(sampler.predict(y[None]), r.mean)
    assert r.data_rmse_history.shape == (1, 4, 50 + 60)
    _arviz()
    idata = r.to_inference_data()
    assert idata.posterior["z"].shape == (4, 30, 1, 3)
    assert idata.posterior["z"].dims == ("chain", "draw", "survey", "latent")
    assert idata.sample_stats["data_rmse"].dims == ("chain", "draw", "survey")
    np.testing.assert_array_equal(idata.posterior["z"].values[:, :, 0], r.samples[0])
    assert idata.sample_stats["chi2"].shape == (4, 30, 1)


class _ArviZ1:
    """ArviZ 1.x as to_inference_data meets it (from_dict takes the groups in one dict and returns an
    xarray.DataTree); CI's Python 3.11 gets ArviZ 0.x, and ArviZ 1.3.0 itself ran the tests on Python
    3.13 (docs/user_trial.md, "Python 3.13 and ArviZ 1")."""
    __version__ = "1.3.0"

    def __init__(self):
        self.calls = []

    def from_dict(self, data, *, name=None, sample_dims=None, coords=None, dims=None, attrs=None):
        self.calls.append((data, dims))
        return "a DataTree"


def test_to_inference_data_speaks_arviz_1(monkeypatch):
    """ArviZ 1.x's from_dict refused the keyword per group ("from_dict() got an unexpected keyword
    argument 'posterior'"): every user on Python >= 3.12, where pip picks ArviZ 1.x."""
    sigma = 0.1
    op, gen, M, c, y = _linear_problem(sigma=sigma)
    r = _sampler(gen, op, n_chains=2, n_burnin=5, n_samples=4, noise_std=sigma).fit(y[None]).sample(y[None])
    fake = _ArviZ1()
    monkeypatch.setitem(sys.modules, "arviz", fake)
    assert r.to_inference_data() == "a DataTree"
    [(data, dims)] = fake.calls
    assert sorted(data) == ["posterior", "sample_stats"] and sorted(data["sample_stats"]) == ["chi2", "data_rmse"]
    np.testing.assert_array_equal(data["posterior"]["z"], np.moveaxis(r.samples, 0, 2))
    assert dims == {"z": ["survey", "latent"], "data_rmse": ["survey"], "chi2": ["survey"]}


def test_missing_arviz_is_a_clear_import_error(monkeypatch):
    sigma = 0.1
    op, gen, M, c, y = _linear_problem(sigma=sigma)
    r = _sampler(gen, op, n_chains=2, n_burnin=5, n_samples=5, noise_std=sigma).fit(y[None]).sample(y[None])
    monkeypatch.setitem(sys.modules, "arviz", None)
    for call in (r.to_inference_data, r.ess):
        with pytest.raises(ImportError, match="needs ArviZ: pip install arviz"):
            call()
    assert r.rhat().shape == (1, 3) and np.all(np.isfinite(r.rhat()))   # R-hat is latentinv's own
    summary = r.summary()              # a report without ArviZ: no ESS, and why
    assert summary["min_ess_bulk"] is None and "needs ArviZ" in summary["ess_unavailable"]
    assert summary["max_rhat"] == r.rhat().max(1).tolist()
    monkeypatch.undo()
    _arviz()
    summary = r.summary()
    assert summary["min_ess_bulk"] == r.ess().min(1).tolist() and "ess_unavailable" not in summary


# ---- convergence diagnostics ---------------------------------------------------------------------------
@settings(max_examples=40, deadline=None)
@given(K=st.integers(2, 6), n=st.integers(4, 60), d=st.integers(1, 3), shift=st.floats(0, 3),
       ties=st.booleans(), seed=st.integers(0, 2**31 - 1))
def test_split_rhat_is_arviz_rank_normalised_rhat(K, n, d, shift, ties, seed):
    x = np.random.default_rng(seed).standard_normal((K, n, d))
    x[0] += shift
    if ties:
        x = np.round(x)
    az = _arviz()
    want = az.rhat(az.convert_to_dataset({"z": x}))["z"].values
    got = split_rhat(x)
    np.testing.assert_allclose(got, want, rtol=1e-12, equal_nan=True)


def test_split_rhat_values():
    rng = np.random.default_rng(0)
    same = rng.standard_normal((4, 2000, 2))
    assert np.all(np.abs(split_rhat(same) - 1) < 0.01)
    apart = same + np.array([0.0, 0.0, 3.0, 3.0])[:, None, None]      # two chains in another mode
    assert np.all(split_rhat(apart) > 1.5)
    trend = same[:1] + np.linspace(0, 5, 2000)[None, :, None]           # one chain, drifting: split catches it
    assert np.all(split_rhat(trend) > 1.5)
    assert np.all(np.isnan(split_rhat(same[:, :3])))                    # too short to split
    const = same.copy()
    const[:, :, 1] = 2.0
    assert np.isnan(split_rhat(const)[1]) and np.isfinite(split_rhat(const)[0])
    with pytest.raises(ValueError, match="draws must be \\(n_chains, n_draws, d\\), got shape \\(4, 2000\\)"):
        split_rhat(same[:, :, 0])


def test_sampler_is_silent_when_chains_agree_and_warns_when_too_short():
    sigma = 0.1
    op, gen, M, c, y = _linear_problem(sigma=sigma)
    with warnings.catch_warnings():
        warnings.simplefilter("error", ConvergenceWarning)
        r = _sampler(gen, op, method="pcn", noise_std=sigma).fit(y[None]).sample(y[None])
    assert r.rhat().max() < RHAT_LIMIT
    with pytest.warns(ConvergenceWarning, match="3 kept draws per chain are too few"):
        _sampler(gen, op, n_chains=2, n_burnin=5, n_samples=3, noise_std=sigma).fit(y[None]).sample(y[None])


@pytest.mark.parametrize("method", ["mala", "hmc"])
def test_chains_that_never_move_warn_and_have_no_effective_draws(method):
    """Chains started together far from a very narrow posterior accept nothing: R-hat is NaN (not a
    number > 1.05) and the std zero. That is a stuck sampler, not a converged, certain one: warned,
    and the ESS (which ArviZ would count as every draw) NaN. (With the Gauss-Newton preconditioner, the
    default of these methods, the same chains move: it whitens the narrow posterior from the first
    iteration; the empirical one keeps them stuck, as a poorly scaled sampler would be.)"""
    op, gen, M, c, y = _linear_problem(sigma=0.1)
    sampler = _sampler(gen, op, method=method, noise_std=1e-4, n_chains=4, n_burnin=10, n_samples=20,
                       preconditioner="empirical", initial_latents=np.full((4, 3), 2.0)).fit(y[None])
    with pytest.warns(ConvergenceWarning, match=r"did not move over the kept draws for surveys \[0\], in \[3\] "
                                                r"of 3 latent dimensions \(acceptance rate after the burn-in 0.000\)"):
        r = sampler.sample(y[None])
    assert np.isnan(r.rhat()).all() and (r.std == 0).all()
    _arviz()
    assert np.isnan(r.ess()).all() and np.isnan(r.ess("tail")).all()


def test_chains_no_better_than_a_homogeneous_medium_warn():
    """The data of a homogeneous medium, which the prior's models cannot fit as well as the homogeneous
    model does (exactly): a posterior around poor fits, warned like LatentInverter's (BaselineWarning,
    at the user's line); the prior's own data do not warn."""
    from latentinv.baselines import BaselineWarning

    op, gen, M, c, y = _linear_problem(sigma=0.1)
    sampler = _sampler(gen, op, method="pcn", noise_std=0.1, n_chains=4, n_burnin=50, n_samples=50).fit(y[None])
    with warnings.catch_warnings():
        warnings.simplefilter("error", BaselineWarning)
        good = sampler.sample(y[None])
    assert good.homogeneous_rmse.shape == (1,) and good.data_rmse_history.min() < good.homogeneous_rmse[0]
    flat = np.asarray(op.response(np.full((1, 9), 1.3)))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        r = sampler.sample(flat)
    ours = [w for w in caught if w.category is BaselineWarning]
    assert len(ours) == 1 and ours[0].filename == __file__
    assert r.homogeneous_rmse[0] < 1e-5
    assert re.search(r"LatentSampler: the chains' best models of 1 of 1 surveys fit the data no better than the "
                     r"best homogeneous-velocity model \(survey 0: data RMSE [0-9.e+-]+ ns against [0-9.e+-]+ ns\)"
                     r".*initial_latents", str(ours[0].message))


@pytest.mark.parametrize("params, message", [
    (dict(noise_std=None), "noise_std is required"),
    (dict(method="nuts"), "method must be one of ['de', 'de-mala', 'hmc', 'mala', 'pcn', 'rwm'], got 'nuts'"),
    (dict(n_leapfrog=0), "n_leapfrog must be >= 1, got 0"),
    (dict(jump_probability=1.5), "jump_probability must be <= 1, got 1.5"),
    (dict(n_chains=0), "n_chains must be >= 1, got 0"),
    (dict(n_samples=2.5), "n_samples must be an integer, got 2.5"),
    (dict(thin=0), "thin must be >= 1, got 0"),
    (dict(step_size=1.5), "step_size must be <= 1.0, got 1.5"),
    (dict(target_acceptance=1), "target_acceptance must be < 1, got 1"),
    (dict(adapt_preconditioner="yes"), "adapt_preconditioner must be True or False, got 'yes'"),
    (dict(preconditioner="newton"), "preconditioner must be 'auto', 'empirical' or 'gauss-newton', got 'newton'"),
    (dict(preconditioner="gauss-newton", method="pcn"), "preconditioner='gauss-newton' cannot serve method='pcn'"),
    (dict(preconditioner="gauss-newton", method="de"), "preconditioner='gauss-newton' cannot serve method='de' (its "
                                                       "difference moves do not use a covariance)"),
    (dict(preconditioner="gauss-newton", method="mala", adapt_preconditioner=False),
     "preconditioner='gauss-newton' needs adapt_preconditioner=True"),
    (dict(noise_std=-1.0), "noise_std must be a positive number"),
    (dict(initial_latents=np.zeros((2, 3))), "initial_latents must have shape (n_chains, n_components) = (4, 3)"),
    (dict(random_state="7"), "random_state must be None, an int in [0, 2**32 - 1] or a numpy.random.RandomState; "
                             "got '7'."),
])
def test_bad_parameters_are_clear_errors(params, message):
    op, gen, M, c, y = _linear_problem()
    kw = dict(n_chains=4, noise_std=0.1)
    kw.update(params)
    with pytest.raises(ValueError, match="LatentSampler: " + __import__("re").escape(message)):
        _sampler(gen, op, **kw).fit(y[None])


# -- scikit-learn's estimator checks ------------------------------------------------------------------
class _Affine(torch.nn.Module):
    """``g(z) = A z + b`` (an ``nn.Linear``'s weights) in element-wise float32 operations, which give
    each row the same bits in a batch of any size. torch's matrix product need not: on an Intel Xeon
    (MKL) a 40-row ``nn.Linear`` rounds some values an ulp otherwise than row by row, and the chains'
    accept decisions and adapted steps carry that through the burn-in, so that the posterior means of
    ``predict`` moved by up to 1e-5 with the surveys in the batch (check_methods_subset_invariance asks
    1e-7). The sampler's own part, each survey's chains independent of the others, is what the checks
    are for."""

    def __init__(self, lin):
        super().__init__()
        self.weight = torch.nn.Parameter(lin.weight.detach().clone())
        self.bias = torch.nn.Parameter(lin.bias.detach().clone())

    def forward(self, z):
        x = self.bias
        for j in range(z.shape[1]):
            x = x + z[:, j:j + 1] * self.weight[:, j]
        return x


def _check_instance(n_data):
    n_src, n_rec = {2: (2, 1), 3: (3, 1), 4: (2, 2), 5: (5, 1), 10: (5, 2)}[n_data]
    op = _operator(n_src, n_rec)
    torch.manual_seed(0)
    lin = torch.nn.Linear(2, 9)
    with torch.no_grad():
        lin.weight.mul_(0.5)
        lin.bias.fill_(0.5)
    return LatentSampler(TorchGenerator(_Affine(lin).eval(), 2), op, n_chains=2, n_burnin=4, n_samples=3,
                         noise_std=0.5, random_state=0, device="cpu")


def _sampler_checks():
    params = []
    for n_data in _WIDTHS:
        for estimator, check in estimator_checks_generator(_check_instance(n_data), legacy=True, mark=None):
            applies, reason = _applies(_check_name(check), n_data)
            if applies:
                marks = [] if reason is None else [pytest.mark.xfail(reason=reason, strict=True)]
                params.append(pytest.param(estimator, check, marks=marks,
                                           id=f"n_data={n_data}-{_check_name(check)}"))
    return params


@pytest.mark.parametrize("estimator, check", _sampler_checks())
def test_sampler_sklearn_compatible(estimator, check):
    check(estimator)


@pytest.mark.parametrize("param, value, match", [
    ("noise_std", 1e-20, r"noise_std must keep 1 / noise_std\*\*2 a finite, nonzero float32"),
    ("step_size", 1e-300, r"step_size must be a positive float32 .*got 1e-300, which is 0 in float32"),
])
def test_settings_that_freeze_the_chains_in_float32_are_refused(param, value, match):
    """1/sigma^2 = inf or a step of 0 in float32 kept every chain at its start: the 'posterior' was the
    starting draws, with only a generic R-hat warning."""
    op, gen, M, c, y = _linear_problem()
    kw = dict(n_chains=2, n_burnin=2, n_samples=2, noise_std=0.1)
    kw[param] = value
    with pytest.raises(ValueError, match=f"LatentSampler: {match}"):
        _sampler(gen, op, **kw).fit(y[None])


@pytest.mark.parametrize("method", ["pcn", "de-mala"])
def test_model_mean_and_std_are_those_of_the_draws(method):
    """With thin=1 every post-burn-in state is kept, so the posterior mean and standard deviation of
    the models (accumulated as running sums) must be those of the decoded draws, to float32 rounding
    (a variance returned as the std, or draws of the burn-in counted, would differ)."""
    op, gen, M, c, y = _linear_problem()
    res = _sampler(gen, op, noise_std=0.1, n_burnin=40, n_samples=50, method=method).fit(y[None]).sample(y[None])
    x = gen.decode(res.samples[0].reshape(-1, res.samples.shape[-1]))
    assert x.shape == (16 * 50, 9)
    np.testing.assert_allclose(res.mean[0], x.mean(0), rtol=0, atol=2e-6)
    assert np.all(x.std(0) > 0.02)                   # a spread, not a point: a variance is ~10x smaller
    np.testing.assert_allclose(res.std[0], x.std(0), rtol=2e-3)


def test_map_model_is_the_visited_state_of_highest_posterior_density():
    """The MAP model and latent are, over every chain and iteration, the state of least
    ``chi2 + ||z||**2`` (normal latent prior): no kept draw is more probable (the state of least
    chi-square is less probable than some: noise 0.3, where the mode and the least-squares fit differ),
    and it is near the analytic posterior mode."""
    sigma = 0.3
    op, gen, M, c, y = _linear_problem(sigma=sigma)
    res = _sampler(gen, op, noise_std=sigma, n_burnin=100, n_samples=200).fit(y[None]).sample(y[None])
    mode, _ = _gaussian_posterior(M, c, y, sigma)
    lsq = np.linalg.lstsq(M, y - c, rcond=None)[0]
    assert np.linalg.norm(mode - lsq) > 0.05                  # the choice matters
    z_map = res.map_latent[0]
    np.testing.assert_allclose(res.map_model[0], gen.decode(z_map[None])[0], atol=1e-6)

    def objective(z):
        return np.sum((z @ M.T + c - y) ** 2, axis=-1) / sigma**2 + np.sum(z * z, axis=-1)
    draws = res.samples[0].reshape(-1, M.shape[1])
    assert objective(z_map) <= objective(draws).min() * (1 + 1e-5)
    assert objective(z_map) - objective(mode) < 0.05           # within 0.025 of the mode in -log density
    # the model's own chi-square is that of the history at the state chosen
    map_chi2 = np.sum((op.response(res.map_model[0]) - y) ** 2) / sigma**2
    assert np.isclose(res.chi2_history[0], map_chi2, rtol=1e-4).any()


def test_map_of_a_uniform_prior_is_the_least_chi2_state():
    """Under a uniform latent prior (flat in its box) the posterior mode is the state of least
    chi-square over every chain and iteration."""
    op, gen, M, c, y = _linear_problem(uniform=True)
    sigma = 0.1
    res = _sampler(gen, op, noise_std=sigma, n_burnin=20, n_samples=30).fit(y[None]).sample(y[None])
    chi2 = res.chi2_history[0]
    chains_best = chi2.min(axis=1)
    assert chains_best.max() > 1.01 * chains_best.min()     # chains differ, so the choice matters
    np.testing.assert_allclose(res.map_model[0], gen.decode(res.map_latent[0][None])[0], atol=1e-6)
    map_chi2 = np.sum((op.response(res.map_model[0]) - y) ** 2) / sigma**2
    assert map_chi2 == pytest.approx(chi2.min(), rel=1e-4)


def test_thinning_keeps_the_last_state_of_each_block_and_acceptance_counts_every_iteration():
    """With thin=3, draw j is the state after post-burn-in iteration 3 j + 2 (its chi-square is that
    of the history at that iteration), and the acceptance rate is the share of post-burn-in
    iterations at which the state moved (a rejected proposal repeats the chi-square exactly)."""
    op, gen, M, c, y = _linear_problem()
    sigma, burnin, n, thin = 0.1, 20, 12, 3
    res = _sampler(gen, op, noise_std=sigma, n_burnin=burnin, n_samples=n, thin=thin,
                   method="rwm").fit(y[None]).sample(y[None])
    chi2 = res.chi2_history[0]                                    # (chains, iterations)
    assert chi2.shape == (16, burnin + n * thin) and res.samples.shape == (1, 16, n, M.shape[1])
    x = gen.decode(res.samples[0].reshape(-1, M.shape[1]))
    draws_chi2 = (np.sum((op.response(x) - y) ** 2, axis=1) / sigma**2).reshape(16, n)
    np.testing.assert_allclose(draws_chi2, chi2[:, burnin + thin - 1::thin], rtol=1e-4)
    # ArviZ's sample statistics sit beside the draws they belong to (they were taken from the first
    # state of each block while the draws are the last: a mutation audit found it)
    _arviz()
    idata = res.to_inference_data()
    np.testing.assert_array_equal(idata.posterior["z"].values[:, :, 0], res.samples[0])
    np.testing.assert_allclose(idata.sample_stats["chi2"].values[:, :, 0], draws_chi2, rtol=1e-4)
    moved = np.diff(chi2[:, burnin - 1:], axis=1) != 0               # the n * thin post-burn-in steps
    assert 0.05 < moved.mean() < 0.95
    np.testing.assert_allclose(res.acceptance_rate[0], moved.mean(axis=1), rtol=0, atol=1e-6)   # float32


def test_adaptation_windows_double_and_leave_the_last_first_iterations_to_the_step():
    from latentinv.inversion.mcmc import adaptation_windows

    assert adaptation_windows(100) == [25, 75]       # 25 + 50; the next (175) would not leave 25
    assert adaptation_windows(50) == [25]            # ends exactly 25 before the burn-in's end
    assert adaptation_windows(49) == []
    assert adaptation_windows(400) == [25, 75, 175, 375]


def test_a_bad_device_is_named_with_the_sampler():
    op, gen, M, c, y = _linear_problem()
    with pytest.raises(ValueError, match=r"^LatentSampler: device must be 'cpu', 'cuda', 'cuda:N' or 'auto'; "
                                         r"got 'tpu'\.$"):
        _sampler(gen, op, noise_std=0.1, device="tpu").fit(y[None])


# ---- sixth mutation audit: DE pairs and jumps, HMC's trajectory, the burn-in's end, model samples ---------
@pytest.mark.parametrize("n", [2, 3, 7])
def test_differential_evolution_pairs_draw_every_ordered_pair_of_distinct_states_alike(n):
    """Uniforms at the centres of an ``n x (n - 1)`` grid map one to one onto the ``n (n - 1)`` ordered
    pairs ``a != b`` of an archive of ``n`` states: each state is drawn as ``a`` and as ``b`` equally
    often (the last one too) and never paired with itself; an archive of 2 states gives both pairs."""
    kernel = DifferentialEvolution()
    kernel.archive = torch.zeros(1, n, 1)
    i, j = np.meshgrid(np.arange(n), np.arange(n - 1), indexing="ij")
    uni = torch.tensor(np.column_stack([(i.ravel() + 0.5) / n, (j.ravel() + 0.5) / (n - 1), np.zeros(i.size)]))
    a, b = kernel.pairs(uni)
    assert sorted(zip(a.tolist(), b.tolist())) == [(p, q) for p in range(n) for q in range(n) if p != q]
    # the ends of [0, 1): the first state, and the last one as a or as b
    top = float(np.nextafter(1.0, 0.0))
    a, b = kernel.pairs(torch.tensor([[0.0, 0.0, 0.0], [top, 0.0, 0.0], [0.0, top, 0.0]]))
    assert a.tolist() == [0, n - 1, 0] and b.tolist() == [1, 0, n - 1]


@pytest.mark.parametrize("cls", [DifferentialEvolution, DifferentialEvolutionMALA])
def test_differential_evolution_jumps_are_chosen_by_the_third_uniform_alone(cls):
    """The jump/no-jump choice reads the third uniform only, independent of the two that pick the pair
    (the symmetry of a jump, a and b exchangeable, needs it); a DE step's gamma is step 2.38 / sqrt(2 d),
    a jump's 1. The uniforms are fixed so that the first one and the choice disagree."""
    R, d, n_chains = 4, 3, 2
    uni = torch.tensor([[0.05, 0.5, 0.9], [0.95, 0.2, 0.1], [0.6, 0.9, 0.05], [0.1, 0.1, 0.7]], dtype=torch.float64)

    class Streams:
        def uniforms(self, n=3):
            return uni

    rng = np.random.default_rng(3)
    u = torch.tensor(rng.normal(size=(R, d)))
    kernel = cls(p_jump=0.3)
    kernel.start(ChainState(u, u, u, u, torch.zeros(R), torch.zeros(R, d, dtype=torch.float64)), n_chains, Streams())
    kernel.archive = torch.tensor(rng.normal(size=(R // n_chains, 5, d)))
    step = torch.tensor([0.5, 0.7, 1.3, 2.0], dtype=torch.float64)
    xi = torch.tensor(rng.normal(size=(R, d)))
    v = kernel.propose(ChainState(u, u, u, u, torch.zeros(R), torch.zeros(R, d, dtype=torch.float64)), step, xi,
                       Preconditioner(R, d, "cpu", torch.float64))
    assert kernel.jump.tolist() == [False, True, True, False]
    for r in range(R):
        a = min(int(uni[r, 0] * 5), 4)
        b = min(int(uni[r, 1] * 4), 3)
        b += b >= a
        gamma = 1.0 if kernel.jump[r] else step[r].item() * 2.38 / np.sqrt(2 * d)
        if cls is DifferentialEvolutionMALA and not kernel.jump[r]:
            continue                                     # a MALA step (its own test)
        arch = kernel.archive[r // n_chains]
        torch.testing.assert_close(v[r], u[r] + gamma * (arch[a] - arch[b]) + kernel.jitter * xi[r],
                                   rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("n_leapfrog, jitter", [(1, 0.0), (3, 0.0), (5, 0.999)])
def test_hmc_trajectory_is_n_leapfrog_steps_of_the_jittered_step(n_leapfrog, jitter):
    """An independent leapfrog in the unwhitened momenta ``p = L^-T r`` (mass matrix ``C^-1``, ``C = L L^T``):
    ``n_leapfrog`` full steps of ``eps = step (0.9 + 0.2 U)``, ``U`` the
    kernel's uniform, with ``n_leapfrog - 1`` evaluations inside; the Hamiltonian's change is the
    acceptance ratio."""
    rng = np.random.default_rng(7)
    R, d = 3, 2
    A, b = rng.normal(size=(d, d)), rng.normal(size=d)
    calls = []

    def evaluate(u):
        calls.append(1)
        res = u @ torch.tensor(A).T - torch.tensor(b)
        return ChainState(u, u, u, u, 0.5 * (res * res).sum(1), res @ torch.tensor(A))

    L = np.tril(rng.normal(size=(R, d, d)) * 0.3) + np.eye(d)
    pre = Preconditioner(R, d, "cpu", torch.float64)
    pre.chol = torch.tensor(L)

    class Streams:
        def uniforms(self, n=3):
            return torch.full((R, n), jitter, dtype=torch.float64)

    u0, xi = rng.normal(size=(R, d)), rng.normal(size=(R, d))
    step = rng.uniform(0.1, 0.4, R)
    kernel = HMC(n_leapfrog=n_leapfrog)
    kernel.bind(evaluate)
    kernel.start(None, R, Streams())
    cur = evaluate(torch.tensor(u0))
    calls.clear()
    u1 = kernel.propose(cur, torch.tensor(step), torch.tensor(xi), pre).numpy()
    assert len(calls) == n_leapfrog - 1

    def grad_U(u):
        return (u @ A.T - b) @ A + u

    def H(u, p, C):
        res = A @ u - b
        return 0.5 * res @ res + 0.5 * u @ u + 0.5 * p @ C @ p

    for r in range(R):
        C = L[r] @ L[r].T
        eps = step[r] * (0.9 + 0.2 * jitter)
        u, p = u0[r].copy(), np.linalg.solve(L[r].T, xi[r])
        p0 = p.copy()
        for _ in range(n_leapfrog):
            p = p - 0.5 * eps * grad_U(u)
            u = u + eps * C @ p
            p = p - 0.5 * eps * grad_U(u)
        np.testing.assert_allclose(u1[r], u, rtol=1e-10, atol=1e-12)
        log_a = kernel.log_accept(cur, evaluate(torch.tensor(u1)), torch.tensor(step), pre)[r].item()
        assert log_a == pytest.approx(H(u0[r], p0, C) - H(u, p, C), rel=1e-9, abs=1e-12)


def test_hmc_forward_runs_are_n_leapfrog_per_iteration_and_counted_as_made(monkeypatch):
    """A run of 5 iterations with n_leapfrog=3 evaluates the target 1 + 5 x 3 times per chain (the start,
    each proposal, its 2 inner points), and n_forward reports those evaluations."""
    import latentinv.inversion.sampler as sampler_module

    calls = []
    real = sampler_module.evaluate
    monkeypatch.setattr(sampler_module, "evaluate", lambda problem, u, **kw: calls.append(u.shape[0]) or
                        real(problem, u, **kw))
    op, gen, M, c, y = _linear_problem(d=3)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        r = _sampler(gen, op, noise_std=0.1, method="hmc", n_leapfrog=3, n_chains=2, n_burnin=0, n_samples=5,
                     adapt_preconditioner=False).fit(y[None]).sample(y[None])
    assert calls == [2] * (1 + 5 * 3)
    assert r.n_forward == 2 * (1 + 5 * 3)


def test_differential_evolution_takes_the_samplers_jump_probability():
    """With jump_probability=1 every move is a jump, which the step adaptation never sees: the steps stay at
    their initial 1 through the burn-in (a kernel built with the default 0.1 would adapt them)."""
    op, gen, M, c, y = _linear_problem(d=3)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")        # short chains: ConvergenceWarning, BaselineWarning
        r = _sampler(gen, op, noise_std=0.1, method="de", jump_probability=1.0, n_chains=4, n_burnin=40,
                     n_samples=5).fit(y[None]).sample(y[None])
        assert np.all(r.step_size == 1.0)
        r = _sampler(gen, op, noise_std=0.1, method="de", jump_probability=0.0, n_chains=4, n_burnin=40,
                     n_samples=5).fit(y[None]).sample(y[None])
    assert np.all(r.step_size != 1.0)


def test_the_burnin_ends_at_n_burnin_for_the_archive_the_refits_and_the_step(monkeypatch):
    """With n_burnin=100: the archive is told 'burn-in' for iterations 0-99 only, the preconditioner is
    refitted to the 25 then 50 states of its windows (ends 25, 75), and the kept draws move with the
    step frozen once, at the burn-in's end (the mean log step of the last window's second half),
    not the last adapted one."""
    observed, windows, frozen = [], [], []
    real_observe, real_update, real_frozen = DifferentialEvolution.observe, Preconditioner.update, StepAdaptation.frozen
    monkeypatch.setattr(DifferentialEvolution, "observe", lambda self, k, state, burnin:
                        observed.append((k, burnin)) or real_observe(self, k, state, burnin))
    monkeypatch.setattr(Preconditioner, "update",
                        lambda self, window, n: windows.append(window.shape[0]) or real_update(self, window, n))
    monkeypatch.setattr(StepAdaptation, "frozen", lambda self: frozen.append(real_frozen(self)) or frozen[-1])
    op, gen, M, c, y = _linear_problem(d=3)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        r = _sampler(gen, op, noise_std=0.1, method="de", n_chains=4, n_burnin=100, n_samples=5
                     ).fit(y[None]).sample(y[None])
    assert observed == [(k, k < 100) for k in range(105)]
    assert windows == [25, 50]
    assert len(frozen) == 1
    np.testing.assert_array_equal(r.step_size[0], frozen[0].numpy())


def test_model_samples_are_the_last_draws_of_the_chains_in_turn():
    """Model j decodes chain j % K at draw n_kept - 1 - j // K, the first draw where that runs out."""
    op, gen, M, c, y = _linear_problem(d=3)
    sampler = _sampler(gen, op, noise_std=0.1, n_chains=3, n_model_samples=8).fit(y[None])
    samples = np.random.default_rng(0).standard_normal((2, 3, 2, 3))      # (surveys, chains, draws, d)
    got = sampler._model_samples(samples, 2, 3)
    chains, draws = [0, 1, 2, 0, 1, 2, 0, 1], [1, 1, 1, 0, 0, 0, 0, 0]
    for s in range(2):
        np.testing.assert_allclose(got[s], gen.decode(samples[s, chains, draws]), rtol=0, atol=1e-6)


@pytest.mark.parametrize("rhat, warned", [
    ([1.0, 1.0501, 1.0], True),                # one dimension above the limit is enough
    ([1.0, RHAT_LIMIT, 1.0], False),           # at the limit: silent
    ([1.04, np.nan, 1.0], "stuck"),             # NaN: a stuck dimension, not a disagreement
])
def test_the_disagreement_warning_is_the_worst_dimension_strictly_above_the_limit(rhat, warned):
    from types import SimpleNamespace
    from latentinv.inversion.sampler import _warn_if_chains_disagree

    result = SimpleNamespace(samples=np.zeros((1, 2, 4, 3)), rhat=lambda: np.array([rhat]),
                             acceptance_rate=np.full((1, 2), 0.3))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        _warn_if_chains_disagree(result, "X")
    messages = [str(w.message) for w in caught if w.category is ConvergenceWarning]
    if warned == "stuck":
        assert len(messages) == 1 and "did not move over the kept draws for surveys [0], in [1] of 3" in messages[0]
    elif warned:
        assert len(messages) == 1 and "worst rank-normalised split R-hat 1.050 (> 1.05) in [1] of 3" in messages[0]
    else:
        assert messages == []
    # 4 kept draws are enough for split R-hat, 3 are not
    result.samples = np.zeros((1, 2, 3, 3))
    with pytest.warns(ConvergenceWarning, match="3 kept draws per chain are too few"):
        _warn_if_chains_disagree(result, "X")


def test_model_statistics_are_those_of_every_state_after_the_burnin_whatever_the_thinning(monkeypatch):
    """With thin=3 the kept draws are every third state, but the posterior mean, std and channel frequency
    of the models come from every post-burn-in state (the chain's states as the history records them)."""
    from latentinv.inversion.history import History

    states, real = [], History.record
    monkeypatch.setattr(History, "record", lambda self, k, t_full, x, *a, **kw:
                        states.append((k, x.to(torch.float64).clone())) or real(self, k, t_full, x, *a, **kw))
    op, gen, M, c, y = _linear_problem()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        res = _sampler(gen, op, noise_std=0.1, n_chains=4, n_burnin=20, n_samples=10, thin=3,
                       method="rwm").fit(y[None]).sample(y[None])
    X = torch.stack([x for k, x in states if k >= 20]).reshape(-1, 9).numpy()      # 30 states x 4 chains
    assert X.shape == (4 * 30, 9)
    np.testing.assert_allclose(res.mean[0], X.mean(0), rtol=0, atol=1e-9)
    np.testing.assert_allclose(res.std[0], X.std(0), rtol=1e-6)
    kept = gen.decode(res.samples[0].reshape(-1, 3))
    assert np.abs(kept.mean(0) - X.mean(0)).max() > 1e-4          # the draws alone would differ


def test_n_iterations_is_the_burnin_and_the_thinned_draws():
    op, gen, M, c, y = _linear_problem()
    sampler = _sampler(gen, op, noise_std=0.1, n_chains=2, n_burnin=7, n_samples=5, thin=3).fit(y[None])
    assert sampler.n_iterations_ == 7 + 5 * 3
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        assert sampler.sample(y[None]).data_rmse_history.shape == (1, 2, sampler.n_iterations_)


def test_the_homogeneous_baseline_is_weighted_by_each_rays_noise():
    """With one noise per ray, the baseline is the weighted least-squares uniform slowness
    ``s = sum w l y / sum w l**2`` (``l``: the rays' lengths, ``w = 1 / sigma**2``), its RMSE unweighted."""
    op, gen, M, c, y = _linear_problem()
    sigma = np.linspace(0.02, 0.5, op.n_data)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        r = _sampler(gen, op, noise_std=sigma, n_chains=2, n_burnin=5, n_samples=5).fit(y[None]).sample(y[None])
    length, w = op.jacobian(np.ones(9)).toarray().sum(1), 1 / sigma**2
    s = np.sum(w * length * y) / np.sum(w * length**2)
    s_plain = np.sum(length * y) / np.sum(length**2)
    rmse, rmse_plain = (np.sqrt(np.mean((y - v * length) ** 2)) for v in (s, s_plain))
    assert abs(rmse - rmse_plain) > 0.01 * rmse                       # the weights matter here
    assert r.homogeneous_rmse[0] == pytest.approx(rmse, rel=1e-9)


@pytest.mark.parametrize("method", ["pcn", "hmc"])
def test_models_without_a_positive_slowness_have_no_posterior_density(method):
    """One latent, a linear generator whose cells reach zero slowness (the identity map) at ``z = hi``, data of
    that very model: the physical posterior is the Gaussian truncated to ``z < hi`` (by quadrature). Proposals
    past it were accepted with the finite traveltimes a straight-ray kernel gives to negative slowness: 39 %
    (pCN) to 43 % (HMC) of the draws had a cell of non-positive slowness, and the posterior mean was 4.037 to
    4.041 against 4.006 (more than 10 Monte Carlo standard errors off)."""
    op, gen, M, c, _ = _linear_problem(d=1)
    w = gen.module.weight.detach().double().numpy()[:, 0]
    b = gen.module.bias.detach().double().numpy()
    hi = np.min(-b[w < 0] / w[w < 0])                   # 4.05: the first cell to reach 0 as z grows
    assert 3.5 < hi < 4.5 and np.all(b + w * -hi > 0)   # inside at the fit's probes and down to -hi
    sigma = 0.05
    y = M[:, 0] * hi + c
    g = np.linspace(hi - 3, hi, 30001)
    p = np.exp(-0.5 * ((np.outer(g, M[:, 0]) + c - y) ** 2).sum(1) / sigma**2 - 0.5 * g**2)
    mean = (g * p).sum() / p.sum()
    sd = np.sqrt((g * g * p).sum() / p.sum() - mean**2)
    res = _sampler(gen, op, noise_std=sigma, n_chains=8, n_samples=600, **_method_params(method)).fit(y[None]).sample(y[None])
    x = gen.decode(res.samples[0].reshape(-1, 1))
    assert x.min() > 0
    _arviz()
    assert abs(res.latent_mean()[0, 0] - mean) <= 4.5 * sd / np.sqrt(res.ess()[0, 0]), (res.latent_mean(), mean)


def test_a_nonlinear_operator_rejects_proposals_outside_the_slowness_domain():
    """A shortest-path engine refuses non-positive slowness: a proposal there ended the run with the
    operator's ValueError ('slowness must be > 0 in every cell') instead of being rejected."""
    from latentinv.operators import ShortestPathOperator
    grid = Grid2D(4, 4, 1.0)
    survey = CrossholeSurvey(np.column_stack([np.zeros(5), [0.25, 1.0, 2.0, 3.0, 3.75]]),
                             np.column_stack([np.full(4, 4.0), [0.5, 1.5, 2.5, 3.5]]))
    op = ShortestPathOperator(grid, survey, n_secondary_nodes=3)
    torch.manual_seed(1)
    lin = torch.nn.Linear(2, 16)
    with torch.no_grad():
        lin.weight.mul_(0.4)
        lin.bias.fill_(1.0)
    gen = TorchGenerator(lin.eval(), 2)
    y = op.response(gen.decode(np.array([[0.5, -0.5]])))
    for method in ("rwm", "mala"):
        # steps of 5 prior standard deviations, unadapted: many proposals reach negative slowness
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", ConvergenceWarning)        # 40 draws from unadapted chains
            res = _sampler(gen, op, method=method, n_chains=8, n_burnin=0, n_samples=40, step_size=5.0,
                           noise_std=3.0, adapt_preconditioner=False, preconditioner="empirical").fit(y).sample(y)
        assert gen.decode(res.samples[0].reshape(-1, 2)).min() > 0
        assert res.acceptance_rate.mean() < 0.5


def test_initial_latents_from_a_posterior_are_its_chains_last_draws():
    """A PosteriorResult (to run its chains on) gave AttributeError: 'PosteriorResult' object has no
    attribute 'latents'; an array the same, unnamed."""
    from types import SimpleNamespace
    from latentinv.inversion.posterior import PosteriorResult
    samples = np.arange(2 * 3 * 4 * 2, dtype=float).reshape(2, 3, 4, 2)          # (surveys, chains, kept, d)
    res = PosteriorResult(**{f: None for f in PosteriorResult.__dataclass_fields__ if f not in ("settings",)})
    res.samples = samples
    np.testing.assert_array_equal(LatentSampler.initial_latents_from(res, 4, survey=1), samples[1, [0, 1, 2, 0], -1])
    with pytest.raises(ValueError, match=r"survey must be an int in \[0, 2\) or 'all', got 2"):
        LatentSampler.initial_latents_from(res, 3, survey=2)
    np.testing.assert_array_equal(LatentSampler.initial_latents_from(res, 4, survey="all"),
                                  samples[:, [0, 1, 2, 0], -1])
    for bad in (samples[0, :, -1], SimpleNamespace(latents=samples[0])):
        with pytest.raises(TypeError, match="result must be an InversionResult .*LatentInverter.invert.* or a "
                                            "PosteriorResult .*, got (ndarray|SimpleNamespace)"):
            LatentSampler.initial_latents_from(bad, 3)
    # a run continued from the last draws of another: its first states are those draws
    op, gen, M, c, y = _linear_problem()
    first = _sampler(gen, op, noise_std=0.1, n_chains=3, n_burnin=20, n_samples=10).fit(y[None]).sample(y[None])
    z0 = LatentSampler.initial_latents_from(first, 3)
    np.testing.assert_array_equal(z0, first.samples[0, :, -1])
    more = _sampler(gen, op, noise_std=0.1, n_chains=3, n_burnin=0, n_samples=4, step_size=1e-9,
                    adapt_preconditioner=False, initial_latents=z0).fit(y[None]).sample(y[None])
    np.testing.assert_allclose(more.samples[0, :, 0], z0, atol=1e-6)


@pytest.mark.parametrize("params, message", [
    (dict(method="mala", jump_probability=0.3), r"jump_probability=0.3 has no effect with method='mala'"),
    (dict(method="pcn", n_leapfrog=4), r"n_leapfrog=4 has no effect with method='pcn'"),
    (dict(method="rwm", adapt_preconditioner=False, preconditioner="empirical"),
     r"preconditioner='empirical' has no effect with adapt_preconditioner=False"),
])
def test_a_parameter_that_cannot_act_is_named(params, message):
    """Options documented as "ignored by the other methods" were ignored without a word; now a warning
    names them (set off their defaults), and the methods that use them stay quiet."""
    op, gen, _, _, y = _linear_problem()
    kw = dict(noise_std=0.1, n_chains=2, n_burnin=2, n_samples=2)
    with pytest.warns(UserWarning, match=message):
        _sampler(gen, op, **params, **kw).fit(y[None])
    with warnings.catch_warnings():
        warnings.filterwarnings("error", message=".*has no effect")
        _sampler(gen, op, **kw).fit(y[None])
        _sampler(gen, op, method="de-mala", jump_probability=0.3, **kw).fit(y[None])
        _sampler(gen, op, method="hmc", n_leapfrog=4, **kw).fit(y[None])
        _sampler(gen, op, method="rwm", preconditioner="empirical", **kw).fit(y[None])
