"""Batched Markov chain Monte Carlo in the latent space of a generator: :class:`LatentSampler`.

The sampler runs on the engine of the SGD: the same :class:`~.problem.LatentProblem` (decoding,
traveltimes, weighted data term, full-data misfit) and :class:`~.history.History` (per-iteration
misfits, the best model visited); only the loop (:func:`run_chains`) and its kernels
(:mod:`.mcmc`) are its own.
"""
from __future__ import annotations

import time
import warnings
from dataclasses import dataclass

import numpy as np
import torch
from sklearn.base import RegressorMixin
from sklearn.exceptions import ConvergenceWarning
from sklearn.utils.validation import check_is_fitted

from .._checks import is_int
from .base import LatentEstimatorBase, ModelScoreMixin, engine_tags
from .history import History
from .mcmc import (INITIAL_STEP, KERNELS, TARGET_ACCEPTANCE, ChainStreams, Preconditioner, StepAdaptation,
                   adaptation_windows, evaluate, from_latent)
from .posterior import CHANNEL_THRESHOLD, RHAT_LIMIT, PosteriorResult
from .randomness import replayable_seed, survey_generators
from .runtime import iterations

__all__ = ["LatentSampler", "run_chains"]


@dataclass(frozen=True)
class ChainSettings:
    """One run's settings (validated by the estimator)."""

    n_burnin: int
    n_samples: int
    thin: int
    step_size: float
    target_acceptance: float
    adapt_preconditioner: bool
    uniform: bool
    preconditioner: str = "empirical"

    @property
    def n_iterations(self):
        return self.n_burnin + self.n_samples * self.thin

    @property
    def gauss_newton(self):
        return self.adapt_preconditioner and self.preconditioner == "gauss-newton"

    @property
    def gauss_newton_fits(self):
        """Gauss-Newton fits of the preconditioner (each ``d`` forward runs per chain): at the start and
        at each refit; the empirical refits cost none."""
        return 1 + len(adaptation_windows(self.n_burnin)) if self.gauss_newton else 0


class Moments:
    """Running sums of the models after the burn-in (float64): mean, variance, channel frequency."""

    def __init__(self, n_rows, n_cells, device):
        self.n = 0
        self.sum = torch.zeros(n_rows, n_cells, dtype=torch.float64, device=device)
        self.sum_sq = torch.zeros_like(self.sum)
        self.channel = torch.zeros_like(self.sum)

    def add(self, x):
        x = x.to(torch.float64)
        self.n += 1
        self.sum += x
        self.sum_sq += x * x
        self.channel += (x > CHANNEL_THRESHOLD).to(torch.float64)


def run_chains(problem, u0, kernel, cfg, streams, *, check_first=None, progress=None):
    """Run ``R`` chains from whitened latents ``u0`` (R, d) on ``problem``; returns ``(history,
    moments, kept, acceptance_rate, step)``: the :class:`~.history.History` of every iteration, the
    :class:`Moments` of the models after the burn-in, the thinned latent draws (list of (R, d) CPU
    tensors), each chain's acceptance rate after the burn-in and its frozen step.

    The kernel is told the initial state (``start``) and every new state (``observe``, e.g. for an
    archive of past states) and chooses what the step adaptation sees (``adaptation_signal``); see
    :class:`~.mcmc.Kernel`. During the burn-in, each chain's step adapts towards ``cfg.target_acceptance``
    (:class:`~.mcmc.StepAdaptation`) and, with ``cfg.adapt_preconditioner``, the reference Gaussian
    is refitted at the ends of doubling windows (:func:`~.mcmc.adaptation_windows`): to the draws of the
    window, or (``cfg.preconditioner == "gauss-newton"``) to the Gauss-Newton Hessian at the chains'
    current points, which is also fitted before the first iteration
    (:meth:`~.mcmc.Preconditioner.fit_gauss_newton`); both are frozen afterwards, so that the kept draws
    come from one fixed reversible kernel.
    """
    R, d = u0.shape
    state = evaluate(problem, u0, uniform=cfg.uniform, gradient=kernel.needs_gradient)
    if check_first is not None:
        check_first(state.x, problem.slowness_map(state.x))
    history = History(problem, cfg.n_iterations, state.z, problem.operator.n_params)
    moments = Moments(R, problem.operator.n_params, u0.device)
    pre = Preconditioner(R, d, u0.device, u0.dtype)
    if cfg.gauss_newton:
        pre.fit_gauss_newton(problem, state.u, cfg.uniform, problem.n_starts)
    adapt = StepAdaptation(torch.full((R,), cfg.step_size, device=u0.device, dtype=u0.dtype),
                           cfg.target_acceptance, kernel.max_step)
    kernel.bind(lambda u: evaluate(problem, u, uniform=cfg.uniform, gradient=True))
    kernel.start(state, problem.n_starts, streams)
    refits = set(adaptation_windows(cfg.n_burnin)) if cfg.adapt_preconditioner else set()
    step, window, kept = adapt.step, [], []
    accepted = torch.zeros(R, device=u0.device)

    for k in iterations(cfg.n_iterations, progress):
        xi, log_u = streams.next()
        proposed = evaluate(problem, kernel.propose(state, step, xi, pre), uniform=cfg.uniform,
                            gradient=kernel.needs_gradient)
        log_a = torch.nan_to_num(kernel.log_accept(state, proposed, step, pre), nan=-torch.inf)
        accept = log_u < log_a
        state = state.where(accept, proposed)
        kernel.observe(k, state, k < cfg.n_burnin)
        znorm = torch.linalg.vector_norm(state.z, dim=1)
        # the posterior mode in z: least chi2 + ||z||**2 under a normal prior, least chi2 under a
        # uniform one (flat in its box)
        history.record(k, state.t_full, state.x, state.z, znorm, penalty=None if cfg.uniform else znorm**2)
        if k < cfg.n_burnin:
            adapt.update(kernel.adaptation_signal(torch.exp(log_a.clamp(max=0.0))))
            window.append(state.u)
            if k + 1 in refits:
                if cfg.gauss_newton:
                    pre.fit_gauss_newton(problem, state.u, cfg.uniform, problem.n_starts)
                else:
                    pre.update(torch.stack(window), problem.n_starts)
                window = []
                adapt.restart()
            step = adapt.step if k + 1 < cfg.n_burnin else adapt.frozen()
            continue
        accepted += accept
        moments.add(state.x)
        if (k - cfg.n_burnin) % cfg.thin == cfg.thin - 1:
            kept.append(state.z.cpu())
    return history, moments, kept, accepted / max(cfg.n_samples * cfg.thin, 1), step


def gauss_newton_conflict(method):
    """Why ``preconditioner="gauss-newton"`` cannot serve ``method``, or None where it can."""
    return {"pcn": "its reference Gaussian needs a mean, which the Gauss-Newton fit does not give",
            "de": "its difference moves do not use a covariance"}.get(method)


class LatentSampler(ModelScoreMixin, RegressorMixin, LatentEstimatorBase):
    """Posterior sampling of the latent vector by batched Markov chain Monte Carlo.

    The Bayesian counterpart of :class:`LatentInverter` (Lopez-Alvis et al., 2021, Section 1
    reviews MCMC in the latent space of deep generative priors, after Laloy et al., 2017, 2018):
    with the generator's latent prior (standard normal, or uniform in [-1, 1]) and the Gaussian
    likelihood ``y ~ N(f(s(g(z))), diag(noise_std**2))``, every chain of every survey advances as
    one batch (one decoder call and one operator call per iteration for all of them).

    Parameters
    ----------
    prior : VAEPrior, FrozenEstimator or generator, default=None
        The generative prior (the generator protocol of :mod:`latentinv.inversion`). ``None``: an
        unfitted ``VAEPrior(random_state=random_state)`` trained on ``y`` in :meth:`fit`, as for
        :class:`LatentInverter`.
    operator : ForwardOperator
        Slowness per cell (ns/m) -> traveltimes (ns); one's own is a subclass of
        :class:`~latentinv.operators.ForwardOperator`.
    slowness_map : callable, default=None
        Torch function from model values to slowness (ns/m), returning a new tensor like its input;
        ``None`` is :func:`paper_slowness`. Differentiable for the gradient methods and the
        Gauss-Newton preconditioner (fit refuses one without a gradient there); pCN, RWM and DE take
        one computed outside torch.
    method : {"pcn", "mala", "rwm", "de", "de-mala", "hmc"}, default="pcn"
        ``"pcn"``: preconditioned Crank-Nicolson, gradient-free (one forward run per proposal; works
        with any operator, a nonlinear one computes traveltimes only). ``"mala"``: Metropolis-adjusted
        Langevin, one forward run and one decoder gradient per proposal. ``"rwm"``: random-walk
        Metropolis with the adapted covariance, gradient-free like pCN but without its reference mean.
        ``"de"``: differential-evolution Metropolis from an archive of past states (DE-MCZ, the
        sampler of DREAM(ZS)), gradient-free, with occasional jumps by the difference of two
        archived states (moves between modes). ``"de-mala"``: MALA steps mixed with those jumps (the
        fastest to converge on the paper's mc2 with the procedural prior; docs/benchmarks/sampling.md).
        ``"hmc"``: Hamiltonian Monte Carlo, ``n_leapfrog`` decoder gradients per proposal (trajectories
        that cross a long, narrow mode where MALA diffuses). See :mod:`.mcmc`.
    n_chains : int, default=8
        Chains per survey. For a fixed budget of forward runs prefer fewer, longer chains: R-hat
        compares the chains' means, which need thousands of draws to settle in a long, narrow mode (on
        the paper's mc2, DE-MALA met R-hat < 1.05 with 8 chains of 2500-3000 draws, not with 16 of
        500-1000; docs/benchmarks/sampling.md). A single chain draws a ConvergenceWarning: R-hat
        then compares the halves of one chain and cannot show whether other chains would agree.
    n_samples : int, default=500
        Draws kept per chain after the burn-in (every ``thin``-th iteration).
    n_burnin : int, default=500
        Burn-in iterations per chain: step sizes and the preconditioner adapt, then freeze.
    thin : int, default=1
        Keep every ``thin``-th draw (the model statistics use every draw after the burn-in).
    step_size : float, default=None
        Initial step (pCN's ``beta`` in (0, 1], MALA's and DE-MALA's ``sqrt(h)``, RWM's scale of the
        proposal covariance's Cholesky factor, DE's factor on ``2.38 / sqrt(2 d)``, HMC's leapfrog step);
        None: 0.1 (DE: 1).
    target_acceptance : float, default=None
        Acceptance rate the burn-in steers each chain's step towards; None: 0.234 (pCN, RWM, DE), 0.574
        (MALA, DE-MALA), 0.651 (HMC).
    jump_probability : float, default=0.1
        ``"de"`` and ``"de-mala"``: the probability, per chain and iteration, of a jump by the
        difference of two archived states (``gamma = 1``); the other methods ignore it (a UserWarning
        where it is set).
    n_leapfrog : int, default=10
        ``"hmc"``: leapfrog steps per proposal (each a forward run and a decoder gradient); the other
        methods ignore it (a UserWarning where it is set).
    adapt_preconditioner : bool, default=True
        Refit the kernels' reference Gaussian during the burn-in (see ``preconditioner``). False: the
        prior ``N(0, I)`` throughout (the classic pCN).
    preconditioner : {"auto", "empirical", "gauss-newton"}, default="auto"
        How its covariance is refitted. ``"empirical"``: to the draws of each adaptation window,
        around each chain's mean (the mean too), pooled over the chains of a survey.
        ``"gauss-newton"``: to the inverse of the potential's Gauss-Newton Hessian ``J^T W J + I``
        at the chains' current points (``J``: the traveltimes' Jacobian to the latents; ``W``: ``1 /
        noise_std**2``), averaged over a survey's chains, also before the first iteration; each fit
        is counted as ``n_components`` forward runs per chain (decoder rows differentiated twice; a
        nonlinear operator's engine runs once per chain, with its Jacobian). The local posterior
        covariance near a mode, it whitens a long, narrow mode from the start where the early draws'
        covariance does not: on the paper's mc2, HMC's steps grew threefold and its smallest bulk ESS
        3.4 to 10.6 times (docs/benchmarks/sampling.md). Chains whose Jacobian is not finite are left
        out of the mean (a ValueError where no chain of a survey has one). The rows are
        differentiated in passes of whole chains, fewer where a pass would take more than half the
        memory available (a MemoryError where not one chain fits). Not for ``"pcn"``, whose
        reference Gaussian needs a mean, nor ``"de"``, whose moves use no covariance.
        ``"auto"``: ``"gauss-newton"`` for the gradient methods (``"mala"``, ``"de-mala"``,
        ``"hmc"``), ``"empirical"`` for the others.
    initial_latents : array-like of shape (n_chains, n_components) or (n_surveys, n_chains, n_components), default=None
        Starting latents, the same for every survey, or one array per survey of the X given to
        ``fit``, in its order (a ValueError at ``fit`` for another number of surveys, and at ``sample``
        for another X, e.g. a cross-validation's fold: use the former there), e.g. SGD solutions from
        :meth:`initial_latents_from` (``survey="all"``: each survey's own, in one batched call);
        None: draws from the latent prior. For a prior with uniform
        latents, values outside (-1, 1) (e.g. SGD solutions of ``clip_resample="normal"``) start
        just inside the box's edge (1e-6 from it: the chains move in the erf-whitened space).
    noise_std : float or array-like of shape (n_data,)
        Standard deviation (ns) of the Gaussian noise: required.
    n_model_samples : int, default=8
        Posterior models kept per survey in the result (for figures): the last kept draw of each chain
        in turn, then the one before, and so on. Beyond ``n_chains * n_samples`` models there are no
        new draws: the chains' first kept draws then repeat.
    random_state : int, RandomState instance or None, default=None
        Seeds the starting latents drawn from the prior and each survey's chains' random draws, as
        ``LatentInverter``'s: an int gives the same numbers at every call; a RandomState
        gives one int draw to each :meth:`sample` / :meth:`predict` call (a second call differs, and
        ``RandomState(4)`` is not ``4``; ``result.settings["replay_random_state"]`` repeats a call); a
        ``numpy.random.Generator`` is refused.
    device : {"auto", "cpu", "cuda"}, default="auto"
    verbose : int, default=0

    Attributes
    ----------
    prior_, operator_, n_features_in_, n_components_, latent_distribution_, device_
        As for :class:`LatentInverter`.
    n_iterations_ : int
        Iterations per chain, ``n_burnin + n_samples * thin``.

    Notes
    -----
    Uniform latents are sampled through the transform ``z = erf(u / sqrt(2))`` of standard-normal
    ``u`` (a transformed boundary, not a reflecting one): the box is never left and one kernel
    serves both priors. A proposal whose model has a slowness that is not finite and positive in every
    cell (outside the slowness map's domain) has no posterior density and is rejected, with any operator.
    Step sizes adapt *per chain* (Robbins-Monro on the log step, acceptance
    probability against the target) and the preconditioner *per survey*; both freeze at the end
    of the burn-in. A survey's chains draw from generators seeded by ``random_state`` and the
    survey's own data, so its result does not depend on the other surveys of ``X`` beyond float32
    rounding: the surveys' chains decode in one batch, and a decoder may round a row differently in a
    batch of another size (about 5e-7 in the latents with the shipped prior); over a long run an
    accept-or-reject decision can carry such a difference into a different chain.
    """

    _rows_param = "n_chains"
    _row_noun = "chain"
    _iterations_param = "n_burnin, n_samples or thin"
    _per_survey_starts = True

    def __init__(self, prior=None, operator=None, *, slowness_map=None, method="pcn", n_chains=8,
                 n_samples=500, n_burnin=500, thin=1, step_size=None, target_acceptance=None,
                 jump_probability=0.1, n_leapfrog=10, adapt_preconditioner=True, preconditioner="auto",
                 initial_latents=None, noise_std=None,
                 n_model_samples=8, random_state=None, device="auto", verbose=0):
        self.prior = prior
        self.operator = operator
        self.slowness_map = slowness_map
        self.method = method
        self.n_chains = n_chains
        self.n_samples = n_samples
        self.n_burnin = n_burnin
        self.thin = thin
        self.step_size = step_size
        self.target_acceptance = target_acceptance
        self.jump_probability = jump_probability
        self.n_leapfrog = n_leapfrog
        self.adapt_preconditioner = adapt_preconditioner
        self.preconditioner = preconditioner
        self.initial_latents = initial_latents
        self.noise_std = noise_std
        self.n_model_samples = n_model_samples
        self.random_state = random_state
        self.device = device
        self.verbose = verbose

    def __sklearn_tags__(self):
        return engine_tags(super().__sklearn_tags__())

    # -- validation ------------------------------------------------------------------------------------
    def _check_params(self, n_data):
        name = type(self).__name__
        number = self._check_number
        if self.method not in KERNELS:
            raise ValueError(f"{name}: method must be one of {sorted(KERNELS)}, got {self.method!r}")
        number(self.n_chains, "n_chains", 1, integer=True)
        number(self.n_samples, "n_samples", 1, integer=True)
        number(self.n_burnin, "n_burnin", 0, integer=True)
        number(self.thin, "thin", 1, integer=True)
        number(self.n_model_samples, "n_model_samples", 0, integer=True)
        if self.step_size is not None:
            number(self.step_size, "step_size", 0, KERNELS[self.method].max_step, low_open=True)
            if np.float32(self.step_size) == 0:       # the chains move in float32
                raise ValueError(f"{name}: step_size must be a positive float32 (at least about 1e-45); got "
                                 f"{self.step_size!r}, which is 0 in float32")
        if self.target_acceptance is not None:
            number(self.target_acceptance, "target_acceptance", 0, 1, low_open=True)
            if self.target_acceptance == 1:
                raise ValueError(f"{name}: target_acceptance must be < 1, got 1")
        number(self.jump_probability, "jump_probability", 0, 1)
        number(self.n_leapfrog, "n_leapfrog", 1, integer=True)
        if not isinstance(self.adapt_preconditioner, (bool, np.bool_)):
            raise ValueError(f"{name}: adapt_preconditioner must be True or False, got "
                             f"{self.adapt_preconditioner!r}")
        if self.preconditioner not in ("auto", "empirical", "gauss-newton"):
            raise ValueError(f"{name}: preconditioner must be 'auto', 'empirical' or 'gauss-newton', got "
                             f"{self.preconditioner!r}")
        if self.preconditioner == "gauss-newton" and not self.adapt_preconditioner:
            raise ValueError(f"{name}: preconditioner='gauss-newton' needs adapt_preconditioner=True (False keeps "
                             "the prior N(0, I) throughout)")
        why = gauss_newton_conflict(self.method) if self.preconditioner == "gauss-newton" else None
        if why:
            raise ValueError(f"{name}: preconditioner='gauss-newton' cannot serve method={self.method!r} ({why}); "
                             "use 'empirical'")
        if self.noise_std is None:
            raise ValueError(f"{name}: noise_std is required: the standard deviation (ns) of the Gaussian "
                             "likelihood, a positive number or an array of one per datum; got None")
        return self._check_common_params(n_data)

    def _slowness_map_needs_gradient(self):
        # the gradient methods and the Gauss-Newton preconditioner ("auto" picks it for them) differentiate
        # through the slowness map; pCN, RWM and DE use traveltimes only (a NumPy map serves them)
        return KERNELS[self.method].needs_gradient or self.preconditioner == "gauss-newton"

    def _idle_params(self, dist):
        return [("jump_probability", self.method not in ("de", "de-mala"),
                 f"with method={self.method!r} (the jumps of 'de' and 'de-mala')"),
                ("n_leapfrog", self.method != "hmc", f"with method={self.method!r} (HMC's trajectories)"),
                ("preconditioner", not self.adapt_preconditioner, "with adapt_preconditioner=False")]

    def _fit_schedule(self, op):
        self.n_iterations_ = int(self.n_burnin) + int(self.n_samples) * int(self.thin)

    # -- fit / sample ----------------------------------------------------------------------------------
    def fit(self, X, y=None):
        """Check the traveltimes against the operator and set up the prior (no sampling).

        Parameters
        ----------
        X : array-like of shape (n_surveys, n_data)
            Observed traveltimes (ns).
        y : array-like of shape (n_surveys, n_cells), default=None
            True models; needed only to train an unfitted prior.

        Returns
        -------
        self : LatentSampler
        """
        return self._fit(X, y)

    def predict(self, X):
        """Posterior mean model of each survey, ``(n_surveys, n_cells)`` float64 (values in [0, 1]).

        Parameters
        ----------
        X : array-like of shape (n_surveys, n_data)
            Traveltimes (ns).

        Returns
        -------
        models : ndarray of shape (n_surveys, n_cells), float64
            ``sample(X).mean`` (flat C order).
        """
        return self.sample(X).mean

    def sample(self, X):
        """Sample the posterior of each survey of ``X`` (traveltimes, ns): a :class:`PosteriorResult`.

        Warns as :meth:`LatentInverter.invert` does when the traveltimes are far (a factor 3) from
        those of the prior's own models or ``noise_std`` out of scale with them, and (``BaselineWarning``) when no chain visited a model that
        fits a survey's data better than the best homogeneous-velocity model
        (``result.homogeneous_rmse``): a posterior around such models describes a poor fit.

        Parameters
        ----------
        X : array-like of shape (n_surveys, n_data)
            Observed traveltimes (ns), one row per survey.

        Returns
        -------
        result : PosteriorResult
            Per survey: latent draws, a few models, mean, standard deviation, channel probability,
            acceptance rates and histories.

        Raises
        ------
        ValueError
            On traveltimes of a wrong shape, negative, NaN or inf, or a parameter changed since
            :meth:`fit`.
        """
        from ..baselines import homogeneous_fit, warn_if_no_better_than_homogeneous

        check_is_fitted(self)
        self._check_unchanged_params()
        Y = self._check_traveltimes(X, reset=False)
        self._check_survey_starts(Y)
        sigma = self._check_params(self.operator_.n_data)
        self._warn_if_off_scale(Y, sigma)
        result = self._run(Y, sigma)
        _, result.homogeneous_rmse = homogeneous_fit(self.operator_, Y, sigma)
        visited = np.where(np.isfinite(result.data_rmse_history), result.data_rmse_history, np.inf)
        warn_if_no_better_than_homogeneous(type(self).__name__, visited.min(axis=(1, 2)), result.homogeneous_rmse,
                                           models="the chains' best models",
                                           more="burn-in (n_burnin), or start the chains from SGD solutions (initial_latents)")
        return result

    @staticmethod
    def initial_latents_from(result, n_chains, survey=0):
        """Starting latents ``(n_chains, n_components)`` from an SGD :class:`InversionResult`: the
        latents of the ``n_chains`` lowest-misfit starts of ``survey`` (by ``result.chi2`` when the
        inversion had ``noise_std``, else by ``result.data_rmse``, as the inverter selects; taken again
        in turn when there are fewer starts than chains); or from a :class:`PosteriorResult` (to run its chains on): the last kept draw of each
        chain of ``survey``, taken again in turn when there are fewer chains. ``survey="all"``: each
        survey's, ``(n_surveys, n_chains, n_components)``, for one ``sample`` call over the same surveys.

        Parameters
        ----------
        result : InversionResult or PosteriorResult
            Of :meth:`LatentInverter.invert` or :meth:`sample`.
        n_chains : int
            Chains to start, >= 1.
        survey : int or "all", default=0
            Index of the survey in ``result``, or every survey.

        Returns
        -------
        ndarray of shape (n_chains, n_components) or (n_surveys, n_chains, n_components)
            A copy, for ``initial_latents``.

        Raises
        ------
        TypeError
            If ``result`` is neither result.
        ValueError
            On ``n_chains`` < 1 or not an integer, or ``survey`` out of range.
        """
        name = "LatentSampler.initial_latents_from"
        posterior = isinstance(result, PosteriorResult)
        if not posterior and not (hasattr(result, "latents") and hasattr(result, "data_rmse")):
            raise TypeError(f"{name}: result must be an InversionResult (LatentInverter.invert) or a "
                            f"PosteriorResult (LatentSampler.sample), got {type(result).__name__}")
        latents = np.asarray(result.samples[:, :, -1] if posterior else result.latents)
        if not is_int(n_chains, 1):
            raise ValueError(f"{name}: n_chains must be an int >= 1, got {n_chains!r}")
        if isinstance(survey, str) and survey == "all":
            return np.stack([LatentSampler.initial_latents_from(result, n_chains, s) for s in range(latents.shape[0])])
        if not (is_int(survey, 0) and survey < latents.shape[0]):
            raise ValueError(f"{name}: survey must be an int in [0, {latents.shape[0]}) or 'all', got {survey!r}")
        if posterior:
            return latents[survey][np.arange(int(n_chains)) % latents.shape[1]].copy()
        # the inverter's own misfit: the chi-square with noise_std (a per-datum noise_std ranks otherwise
        # than the unweighted data RMSE), else the data RMSE, which ranks as the sum of squares does
        misfit = np.asarray(result.data_rmse[survey] if getattr(result, "chi2", None) is None else result.chi2[survey])
        order = np.argsort(np.where(np.isfinite(misfit), misfit, np.inf), kind="stable")
        return latents[survey][order[np.arange(int(n_chains)) % len(order)]].copy()

    # -- the engine ------------------------------------------------------------------------------------
    def _extra_bytes_per_row(self, problem):
        """A chain's :class:`Moments` (three float64 sums of the models, on the device) and its kept draws
        (on the host)."""
        return 3 * 8 * problem.operator.n_params, 4 * self.n_components_ * int(self.n_samples)

    def _run(self, Y, sigma):
        dev = self.device_
        S, K, d = len(Y), int(self.n_chains), self.n_components_
        uniform = self.latent_distribution_ == "uniform"
        seed, replay = replayable_seed(self.random_state, type(self).__name__)
        problem = self._problem(Y, sigma, allow_pending=False, nonlinear_gradient="exact")
        kernel = KERNELS[self.method].for_sampler(self)
        cfg = ChainSettings(
            n_burnin=int(self.n_burnin), n_samples=int(self.n_samples), thin=int(self.thin),
            step_size=float(self.step_size or INITIAL_STEP[self.method]),
            target_acceptance=float(self.target_acceptance or TARGET_ACCEPTANCE[self.method]),
            adapt_preconditioner=bool(self.adapt_preconditioner), uniform=uniform,
            preconditioner=self._preconditioner(kernel))
        # the result keeps 2 per-iteration histories (data RMSE, chi-square) of every iteration
        self._check_batch_fits(problem, S, cfg.n_iterations, lambda n: (
            f"Sample at most {n} surveys per call, or lower n_chains."),
            result_histories=2, gradient=kernel.needs_gradient)
        gens = [survey_generators(seed, y, K) for y in Y]
        streams = ChainStreams(([g for pair in gens for g in pair[0]], [g for pair in gens for g in pair[1]]),
                               d, dev, problem.dtype)
        u0 = from_latent(self._start_latents(seed, S), uniform).to(problem.dtype).to(dev)
        check = lambda x, s: self._check_generator_output(x, s, "at the initial latents of the chains")
        progress = f"{type(self).__name__} ({S} surveys x {K} chains)" if self.verbose else None
        t0 = time.perf_counter()
        history, moments, kept, acceptance, step = run_chains(problem, u0, kernel, cfg, streams,
                                                              check_first=check, progress=progress)
        elapsed = time.perf_counter() - t0
        result = self._result(history, moments, kept, acceptance, step, cfg, seed, elapsed, S, K, d,
                              kernel.evaluations_per_iteration)
        result.settings["replay_random_state"] = replay     # random_state=replay repeats this call
        _warn_if_chains_disagree(result, type(self).__name__)
        return result

    def _preconditioner(self, kernel):
        """The preconditioner's fit, ``"auto"`` resolved (Gauss-Newton for the gradient methods)."""
        if self.preconditioner != "auto":
            return self.preconditioner
        return "gauss-newton" if kernel.needs_gradient else "empirical"

    def _result(self, history, moments, kept, acceptance, step, cfg, seed, elapsed, S, K, d, per_iteration):
        def per_survey(t):
            return t.cpu().numpy().astype(np.float64).reshape(S, K, *t.shape[1:])

        n_cells = self.n_cells_
        mean = per_survey(moments.sum).sum(1) / (moments.n * K)
        var = per_survey(moments.sum_sq).sum(1) / (moments.n * K) - mean**2
        samples = torch.stack(kept, 1).numpy().astype(np.float64).reshape(S, K, len(kept), d)
        best = history.best_misfit.cpu().numpy().reshape(S, K).argmin(1)
        model_samples = self._model_samples(samples, S, K)
        histories = [h[:cfg.n_iterations].T.cpu().numpy().astype(np.float64).reshape(S, K, -1)
                     for h in (history.rmse, history.chi2)]
        settings = dict({k: np.asarray(v).tolist() if k in ("initial_latents", "noise_std") else v
                         for k, v in self.get_params(deep=False).items()
                         if k not in ("prior", "operator", "slowness_map")}, seed=seed,
                        n_iterations=cfg.n_iterations, step_size=cfg.step_size,
                        target_acceptance=cfg.target_acceptance,
                        preconditioner_fit=cfg.preconditioner if cfg.adapt_preconditioner else "none",
                        device=str(self.device_),
                        latent_boundary="transformed (erf)" if cfg.uniform else None)
        return PosteriorResult(
            samples=samples, model_samples=model_samples, mean=mean,
            std=np.sqrt(np.clip(var, 0.0, None)),
            channel_probability=per_survey(moments.channel).sum(1) / (moments.n * K),
            acceptance_rate=per_survey(acceptance), step_size=per_survey(step),
            data_rmse_history=histories[0], chi2_history=histories[1],
            map_model=per_survey(history.best_x)[np.arange(S), best].reshape(S, n_cells),
            map_latent=per_survey(history.best_z)[np.arange(S), best],
            n_burnin=cfg.n_burnin, thin=cfg.thin,
            n_forward=S * K * (cfg.n_iterations * per_iteration + 1 + d * cfg.gauss_newton_fits),
            elapsed_s=elapsed, method=self.method, settings=settings)

    def _model_samples(self, samples, S, K):
        """The models of the last kept draw of chains taken in turn (one decoder call)."""
        n = int(self.n_model_samples)
        if n == 0:
            return np.zeros((S, 0, self.n_cells_))
        chains = np.arange(n) % K
        draws = samples.shape[2] - 1 - np.arange(n) // K
        draws = np.maximum(draws, 0)
        z = samples[:, chains, draws].reshape(S * n, -1)
        with torch.no_grad():
            x = self._decoder()(torch.tensor(z, dtype=torch.float32, device=self.device_))
        return x.cpu().numpy().astype(np.float64).reshape(S, n, -1)


def _warn_if_chains_disagree(result, owner):
    """A ``ConvergenceWarning`` for the surveys whose chains disagree (worst R-hat above
    :data:`~.posterior.RHAT_LIMIT`), are too short to tell, or are a single chain (nothing to compare):
    their standard deviations, channel probabilities and samples then describe the parts of the posterior
    the chains visited."""
    if result.samples.shape[1] < 2:
        warnings.warn(f"{owner}: 1 chain per survey: R-hat compares the two halves of that one chain and "
                      "cannot show whether chains from other starts would settle elsewhere (another mode: the "
                      "std, channel_probability and samples then describe the one this chain found); run "
                      "n_chains >= 4", ConvergenceWarning, stacklevel=4)
    if result.samples.shape[2] < 4:
        warnings.warn(f"{owner}: {result.samples.shape[2]} kept draws per chain are too few to check that the "
                      "chains agree (split R-hat needs 4); keep more (n_samples)", ConvergenceWarning, stacklevel=4)
        return
    rhat = result.rhat()
    # R-hat is NaN exactly where no chain moved over the kept draws: no proposal accepted there, so the
    # zero standard deviation is a stuck sampler, not certainty
    stuck = np.isnan(rhat).sum(1)
    frozen = np.flatnonzero(stuck)
    if len(frozen):
        warnings.warn(
            f"{owner}: the chains did not move over the kept draws for surveys {frozen.tolist()}, in "
            f"{stuck[frozen].tolist()} of {rhat.shape[1]} latent dimensions (acceptance rate after the burn-in "
            f"{', '.join(f'{a:.3f}' for a in result.acceptance_rate[frozen].mean(1))}): R-hat cannot be computed "
            "there, and the zero posterior std is a stuck sampler, not certainty. Start the chains from "
            "different latents (e.g. from more SGD starts than chains), lengthen the burn-in so the step "
            "sizes adapt, or raise noise_std if it is below the data's real errors.", ConvergenceWarning, stacklevel=4)
    worst = np.where(np.isnan(rhat), -np.inf, rhat).max(1)
    bad = np.flatnonzero(worst > RHAT_LIMIT)
    if len(bad):
        counts = (rhat[bad] > RHAT_LIMIT).sum(1)
        warnings.warn(
            f"{owner}: the chains disagree for surveys {bad.tolist()}: worst rank-normalised split R-hat "
            f"{', '.join(f'{worst[s]:.3f}' for s in bad)} (> {RHAT_LIMIT}) in {counts.tolist()} of "
            f"{rhat.shape[1]} latent dimensions. The posterior std, channel_probability and samples describe "
            "the modes the chains visited, not the whole posterior (they understate the uncertainty where "
            "chains stay in separate modes); run longer or more chains, use method='hmc' (trajectories across a "
            "long, narrow mode; with the Gauss-Newton preconditioner, its default) or a method with jumps "
            "between modes (method='de' or 'de-mala'), or read result.rhat() per dimension.",
            ConvergenceWarning, stacklevel=4)
