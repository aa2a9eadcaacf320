"""The outcome of a latent-space MCMC run: :class:`PosteriorResult`."""
from __future__ import annotations

import inspect
from dataclasses import dataclass, field
from typing import Optional

import numpy as np

__all__ = ["PosteriorResult", "split_rhat", "RHAT_LIMIT"]

#: model value above which a cell counts as channel (the paper's models: 1 = channel, 0 = matrix)
CHANNEL_THRESHOLD = 0.5

#: worst R-hat above which :class:`LatentSampler` warns that its chains disagree
RHAT_LIMIT = 1.05


def _rank_normal(x):
    """Normal scores of the ranks of every draw of ``x`` (n_chains, n_draws), pooled over chains
    (average ranks for ties, Blom's offsets: ``Phi^-1((rank - 3/8) / (n + 1/4))``)."""
    from scipy.special import ndtri
    from scipy.stats import rankdata
    ranks = rankdata(x, method="average").reshape(x.shape)
    return ndtri((ranks - 0.375) / (x.size + 0.25))


def _psrf(x):
    """Potential scale reduction of chains ``x`` (n_chains, n): ``sqrt(((n - 1) / n W + B / n) / W)``
    with W the mean within-chain variance and B / n the variance of the chain means (both unbiased)."""
    n = x.shape[1]
    within = x.var(axis=1, ddof=1).mean()
    between_over_n = x.mean(axis=1).var(ddof=1)
    if not within > 0:           # every chain constant: infinite when they sit at different values
        return np.inf if between_over_n > 0 else np.nan
    return float(np.sqrt(((n - 1) / n * within + between_over_n) / within))


#: draws per chain below which R-hat and ESS are NaN (split halves of at least two draws; ArviZ's minimum)
MIN_DRAWS = 4


def split_rhat(draws):
    """Rank-normalised split R-hat (Vehtari, Gelman, Simpson, Carpenter & Buerkner, 2021) of each
    dimension of ``draws`` (n_chains, n_draws, d): each chain split into its first and last halves
    (the middle draw of an odd count left out), the draws replaced by the normal scores of their
    ranks, and the larger of the potential scale reductions of the draws ("bulk") and of their
    distances to the median ("tail"). Returns ``(d,)``: NaN where fewer than 4 draws per chain or a
    dimension that does not move, infinite where each chain (half) is constant at a value of its own.
    Near 1 when the chains sample the same distribution.

    Parameters
    ----------
    draws : array-like of shape (n_chains, n_draws, d)
        Draws of each chain (converted to float64). One chain is enough (its two halves are compared).

    Returns
    -------
    ndarray of float64 of shape (d,)
        R-hat of each dimension (NaN or inf as above).

    Raises
    ------
    ValueError
        Where ``draws`` is not three-dimensional.
    """
    draws = np.asarray(draws, dtype=np.float64)
    if draws.ndim != 3:
        raise ValueError(f"split_rhat: draws must be (n_chains, n_draws, d), got shape {draws.shape}")
    K, n, d = draws.shape
    half = n // 2
    out = np.full(d, np.nan)
    if K < 1 or n < MIN_DRAWS:
        return out
    for j in range(d):
        x = draws[:, :, j]
        split = np.concatenate([x[:, :half], x[:, n - half:]])
        if np.ptp(split) == 0:
            continue
        bulk = _psrf(_rank_normal(split))
        tail = _psrf(_rank_normal(np.abs(split - np.median(split))))
        out[j] = max(bulk, tail)
    return out


def _arviz(what):
    try:
        import arviz
    except ImportError:
        raise ImportError(f"PosteriorResult.{what} needs ArviZ: pip install arviz "
                          "(or latentinv[arviz])") from None
    return arviz


@dataclass
class PosteriorResult:
    """Outcome of :meth:`LatentSampler.sample` for ``n_surveys`` surveys and ``n_chains`` chains.

    Model statistics (mean, standard deviation, channel probability) are accumulated over every
    draw after the burn-in (not only the thinned ones); the samples kept are thinned.

    Attributes
    ----------
    samples : ndarray of shape (n_surveys, n_chains, n_kept, n_components)
        Latent draws after the burn-in, every ``thin``-th (float64, CPU memory); uniform latents
        in [-1, 1].
    model_samples : ndarray of shape (n_surveys, n_model_samples, n_cells)
        A few models drawn from the posterior (values in [0, 1]): the last kept draw of chains
        taken in turn.
    mean : ndarray of shape (n_surveys, n_cells)
        Posterior mean model (values in [0, 1]).
    std : ndarray of shape (n_surveys, n_cells)
        Posterior standard deviation of the model values, per cell.
    channel_probability : ndarray of shape (n_surveys, n_cells)
        Fraction of the draws whose model value exceeds 0.5 (channel) in each cell.
    acceptance_rate : ndarray of shape (n_surveys, n_chains)
        Fraction of accepted proposals after the burn-in.
    step_size : ndarray of shape (n_surveys, n_chains)
        The step each chain used after the burn-in (pCN's beta, MALA's sqrt(h), RWM's scale, DE's
        factor on 2.38 / sqrt(2 d)).
    data_rmse_history : ndarray of shape (n_surveys, n_chains, n_iterations)
        Full-data RMSE (ns) of each chain's current model, burn-in included.
    chi2_history : ndarray of shape (n_surveys, n_chains, n_iterations)
        Chi-square ``sum ((y - f) / sigma)**2`` of each chain's current model.
    map_model : ndarray of shape (n_surveys, n_cells)
        The visited model of highest posterior density in the latent space (any chain, burn-in
        included): the least ``chi2 + ||z||**2`` under a normal latent prior, the least chi-square under
        a uniform one, whose density is flat in its box. Not the best data fit when the prior pulls
        (``chi2_history`` holds every state's chi-square).
    map_latent : ndarray of shape (n_surveys, n_components)
        The latent of ``map_model``.
    n_burnin, thin : int
    n_forward : int
        Forward runs (decoder plus operator: one per chain and proposal, ``n_leapfrog`` for HMC, one
        for the initial point, and ``n_components`` per chain for each Gauss-Newton fit of the
        preconditioner, whose decoder rows are differentiated twice and whose nonlinear operator, if
        any, runs once per chain with its Jacobian) of the whole run.
    elapsed_s : float
        Wall time of the sampling (s).
    method : str
    settings : dict
        The sampler's parameters, its seed and the chains' settings; ``replay_random_state`` is the
        int that, given as ``random_state``, repeats the call.
    homogeneous_rmse : ndarray of shape (n_surveys,) or None
        Data RMSE (ns) of the best homogeneous-velocity model of each survey (the baseline of
        :mod:`latentinv.baselines`), set by :meth:`LatentSampler.sample`.
    """

    samples: np.ndarray
    model_samples: np.ndarray
    mean: np.ndarray
    std: np.ndarray
    channel_probability: np.ndarray
    acceptance_rate: np.ndarray
    step_size: np.ndarray
    data_rmse_history: np.ndarray
    chi2_history: np.ndarray
    map_model: np.ndarray
    map_latent: np.ndarray
    n_burnin: int
    thin: int
    n_forward: int
    elapsed_s: float
    method: str
    settings: dict = field(default_factory=dict)
    homogeneous_rmse: Optional[np.ndarray] = None
    _diagnostics: Optional[dict] = field(default=None, repr=False)

    @property
    def n_surveys(self):
        return self.samples.shape[0]

    @property
    def n_chains(self):
        return self.samples.shape[1]

    @property
    def n_components(self):
        return self.samples.shape[3]

    def latent_mean(self):
        """Posterior mean of the latents, ``(n_surveys, n_components)`` (from the kept draws).

        Returns
        -------
        ndarray of float64 of shape (n_surveys, n_components)
            Mean of :attr:`samples` over chains and kept draws.
        """
        return self.samples.mean(axis=(1, 2))

    def latent_covariance(self):
        """Posterior covariance of the latents, ``(n_surveys, d, d)`` (from the kept draws).

        Returns
        -------
        ndarray of float64 of shape (n_surveys, n_components, n_components)
            Sample covariance (``ddof=1``) of the kept draws of all chains pooled; NaN (with NumPy's
            RuntimeWarning) where only one draw was kept in all.
        """
        S, K, n, d = self.samples.shape
        flat = self.samples.reshape(S, K * n, d)
        return np.stack([np.cov(f, rowvar=False).reshape(d, d) for f in flat])

    def to_inference_data(self):
        """The kept draws as ArviZ's container: posterior variable ``z`` with dimensions
        ``(chain, draw, survey, latent)`` and sample statistics ``data_rmse`` (ns) and ``chi2``.
        Needs ArviZ (``pip install arviz``).

        Returns
        -------
        arviz.InferenceData or xarray.DataTree
            An ``arviz.InferenceData`` with ArviZ 0.x; an ``xarray.DataTree`` with ArviZ 1.x, which
            replaced InferenceData with it (both read as ``idata.posterior["z"]``). Group ``posterior``:
            ``z`` of shape ``(n_chains, n_kept, n_surveys, n_components)``; group ``sample_stats``:
            ``data_rmse`` and ``chi2`` of shape ``(n_chains, n_kept, n_surveys)``, those of the kept
            states (from :attr:`data_rmse_history` and :attr:`chi2_history`).

        Raises
        ------
        ImportError
            Without ArviZ (``latentinv[arviz]``).
        """
        az = _arviz("to_inference_data")
        z = np.moveaxis(self.samples, 0, 2)                      # (chain, draw, survey, latent)
        keep = slice(self.n_burnin + self.thin - 1, None, self.thin)   # the last state of each block, as kept
        rmse = np.moveaxis(self.data_rmse_history[:, :, keep], 0, 2)[:, :z.shape[1]]
        chi2 = np.moveaxis(self.chi2_history[:, :, keep], 0, 2)[:, :z.shape[1]]
        groups = {"posterior": {"z": z}, "sample_stats": {"data_rmse": rmse, "chi2": chi2}}
        dims = {"z": ["survey", "latent"], "data_rmse": ["survey"], "chi2": ["survey"]}
        if "posterior" in inspect.signature(az.from_dict).parameters:     # ArviZ 0.x: a keyword per group
            return az.from_dict(**groups, dims=dims)
        return az.from_dict(groups, dims=dims)                           # ArviZ 1.x: the groups in one dict

    def _diagnose(self):
        if self._diagnostics is None:
            az = _arviz("ess")
            ess_bulk = np.full((self.n_surveys, self.n_components), np.nan)
            ess_tail = ess_bulk.copy()
            # under MIN_DRAWS draws per chain there is no estimate (as split_rhat's NaN): not asked of
            # ArviZ, which would log its own shape-validation warning and return NaN
            for s in range(self.n_surveys if self.samples.shape[2] >= MIN_DRAWS else 0):
                ds = az.convert_to_dataset({"z": self.samples[s]})
                ess_bulk[s] = az.ess(ds, method="bulk")["z"].values
                ess_tail[s] = az.ess(ds, method="tail")["z"].values
            # a dimension no chain moved in has no effective sample (ArviZ counts every draw of it)
            frozen = np.ptp(self.samples, axis=(1, 2)) == 0
            ess_bulk[frozen] = ess_tail[frozen] = np.nan
            self._diagnostics = dict(ess_bulk=ess_bulk, ess_tail=ess_tail)
        return self._diagnostics

    def rhat(self):
        """Rank-normalised split R-hat (Vehtari et al., 2021; :func:`split_rhat`) of each latent
        dimension, ``(n_surveys, n_components)``, from the kept draws; below 1.01-1.05 the chains
        agree.

        Returns
        -------
        ndarray of float64 of shape (n_surveys, n_components)
            NaN where fewer than 4 draws per chain were kept or a dimension never moved, inf where each
            chain half sat at a value of its own (as :func:`split_rhat`).
        """
        return np.stack([split_rhat(self.samples[s]) for s in range(self.n_surveys)])

    def chains_agree(self):
        """Per survey, ``(n_surveys,)`` bool: True where there are at least 2 chains and every latent
        dimension's R-hat is defined and at most :data:`RHAT_LIMIT`, the test behind
        :class:`LatentSampler`'s ``ConvergenceWarning``. False where the chains disagree, a dimension
        never moved (R-hat NaN), fewer than 4 draws were kept, or there is one chain. Test this, not
        ``summary()["max_rhat"] > limit``: a NaN R-hat compares False with any limit.

        Returns
        -------
        ndarray of bool of shape (n_surveys,)
        """
        if self.n_chains < 2:
            return np.zeros(self.n_surveys, dtype=bool)
        return np.all(self.rhat() <= RHAT_LIMIT, axis=1)       # NaN <= limit is False

    def ess(self, method="bulk"):
        """Effective sample size of each latent dimension, ``(n_surveys, n_components)``, by ArviZ
        (``method``: ``"bulk"`` or ``"tail"``); NaN where no chain moved over the kept draws, and
        everywhere when fewer than 4 draws per chain were kept. Needs ArviZ. Computed once for both
        methods and kept.

        Parameters
        ----------
        method : {"bulk", "tail"}, default="bulk"
            ArviZ's bulk ESS (rank-normalised) or tail ESS (the smaller of those of the 5% and 95%
            quantiles).

        Returns
        -------
        ndarray of float64 of shape (n_surveys, n_components)
            Effective number of draws over all chains of each survey.

        Raises
        ------
        ValueError
            On another ``method``.
        ImportError
            Without ArviZ (``latentinv[arviz]``).
        """
        if method not in ("bulk", "tail"):
            raise ValueError(f"PosteriorResult.ess: method must be 'bulk' or 'tail', got {method!r}")
        return self._diagnose()[f"ess_{method}"]

    def _ess_or_why(self):
        """``(bulk ESS, None)``, or ``(None, why)`` without ArviZ (optional): the reports' ESS."""
        try:
            return self.ess(), None
        except ImportError as exc:
            return None, str(exc)

    def summary(self):
        """A dict of the run's headline numbers (per survey: worst R-hat, NaN where a dimension never
        moved; :meth:`chains_agree`; smallest bulk ESS; mean acceptance), for reports. Without ArviZ
        (optional: ``latentinv[arviz]``) ``min_ess_bulk`` is None and ``ess_unavailable`` says why.

        Returns
        -------
        dict
            ``method``, ``n_chains``, ``n_kept`` (draws kept per chain), ``n_burnin``, ``thin``,
            ``n_forward``, ``elapsed_s`` (s); and lists of one value per survey: ``max_rhat`` (NaN where
            any dimension's R-hat is NaN), ``chains_agree`` (bool), ``min_ess_bulk`` (NaN where any
            dimension's ESS is NaN; None without ArviZ, with ``ess_unavailable``, the ImportError's
            message) and ``acceptance_rate`` (the chains' mean).
        """
        ess, why = self._ess_or_why()
        ess = {"min_ess_bulk": ess.min(1).tolist()} if why is None else {"min_ess_bulk": None, "ess_unavailable": why}
        return dict(method=self.method, n_chains=self.n_chains, n_kept=int(self.samples.shape[2]),
                    n_burnin=self.n_burnin, thin=self.thin, n_forward=self.n_forward,
                    elapsed_s=self.elapsed_s, max_rhat=self.rhat().max(1).tolist(),
                    chains_agree=self.chains_agree().tolist(), **ess,
                    acceptance_rate=self.acceptance_rate.mean(1).tolist())
