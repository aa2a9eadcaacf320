"""The outcome of an inversion: :class:`InversionResult`."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional

import numpy as np

__all__ = ["InversionResult"]

#: entries of ``InversionResult.settings`` that hold one value per survey (joined by ``concatenate``)
PER_SURVEY_SETTINGS = ("bfloat16_rmse_change",)


@dataclass
class InversionResult:
    """Outcome of :meth:`LatentInverter.invert` for ``n_surveys`` surveys and ``n_starts`` starts.

    Histories are indexed ``[survey, start, iteration]``; entries after a start stopped (target
    reached or divergence) are NaN. The misfit of iteration ``k`` is that of the model decoded from
    the iterate ``z_k`` before its update (as in the paper's code).

    Attributes
    ----------
    models : ndarray of shape (n_surveys, n_cells)
        Lowest-misfit model (values in [0, 1]) over all starts and iterations.
    best_start : ndarray of shape (n_surveys,)
        The start that gave ``models``.
    start_models : ndarray of shape (n_surveys, n_starts, n_cells)
        Lowest-misfit model of each start.
    latents : ndarray of shape (n_surveys, n_starts, n_components)
        Latent vector of each start's selected model.
    data_rmse : ndarray of shape (n_surveys, n_starts)
        Full-data RMSE (ns) of each start's selected model.
    chi2 : ndarray of shape (n_surveys, n_starts) or None
        Chi-square ``sum ((y - f) / sigma)**2`` of each start's selected model (with ``noise_std``).
    best_iteration : ndarray of shape (n_surveys, n_starts)
        Iteration of each start's selected model.
    data_rmse_history, latent_norm_history, learning_rate_history, lam_history : ndarray of shape (n_surveys, n_starts, n_iterations)
        Per iteration: full-data RMSE (ns), ``||z_k||``, step size (Eq. 21), lambda (Eq. 22).
    chi2_history : ndarray of shape (n_surveys, n_starts, n_iterations) or None
    n_iterations_run : ndarray of shape (n_surveys, n_starts)
        Iterations performed by each start (less than the budget after an early stop or divergence).
    reached_target : ndarray of bool, shape (n_surveys, n_starts)
    diverged : ndarray of bool, shape (n_surveys, n_starts)
        NaN or a latent norm above ``100 sqrt(d)``: the start was stopped before the bad iterate was
        decoded; its selected model comes from the iterations before.
    converged : ndarray of bool, shape (n_surveys, n_starts)
        Stopped by the convergence rule (``tol``): no relative improvement of its best misfit for
        ``n_epochs_no_change`` epochs.
    pruned : ndarray of bool, shape (n_surveys, n_starts)
        Dropped by successive halving (``prune="halving"``); its selected model is its best before.
    settings : dict
        The parameters of the run, its seed, number of iterations and device; ``replay_random_state``
        is the int that, given as ``random_state``, repeats the call (the int given, or the one drawn
        for ``random_state=None`` or a RandomState).
    homogeneous_slowness : ndarray of shape (n_surveys,) or None
        Slowness (ns/m) of the best homogeneous-velocity model of each survey's data
        (:func:`latentinv.baselines.homogeneous_fit`, weighted by ``1 / noise_std**2`` when given).
    homogeneous_rmse : ndarray of shape (n_surveys,) or None
        Data RMSE (ns) of that model: the baseline an acceptance threshold must clearly beat
        (:meth:`accepted` warns otherwise).
    descent_rmse : ndarray of shape (n_surveys,) or None
        Data RMSE (ns) of the best point found by a line search along the full-data gradient from the
        selected model's latent (distances 2 to 1/128 latent units; :mod:`.stationarity`): near
        ``data_rmse[s, best_start[s]]`` where the SGD converged to a minimum, far below it where its
        step schedule ran out first.
    stationary : ndarray of bool of shape (n_surveys,) or None
        False where that line search lowered the data RMSE (``sqrt(chi2)`` with ``noise_std``) by more
        than 10 %: :meth:`LatentInverter.invert` warns (``ConvergenceWarning``). True where the
        selected start stopped at ``target_misfit`` (not a minimum by design; not checked).
    """

    models: np.ndarray
    best_start: np.ndarray
    start_models: np.ndarray
    latents: np.ndarray
    data_rmse: np.ndarray
    chi2: Optional[np.ndarray]
    best_iteration: np.ndarray
    data_rmse_history: np.ndarray
    latent_norm_history: np.ndarray
    learning_rate_history: np.ndarray
    lam_history: np.ndarray
    chi2_history: Optional[np.ndarray]
    n_iterations_run: np.ndarray
    reached_target: np.ndarray
    diverged: np.ndarray
    converged: Optional[np.ndarray] = None
    pruned: Optional[np.ndarray] = None
    settings: dict = field(default_factory=dict)
    homogeneous_slowness: Optional[np.ndarray] = None
    homogeneous_rmse: Optional[np.ndarray] = None
    descent_rmse: Optional[np.ndarray] = None
    stationary: Optional[np.ndarray] = None

    @classmethod
    def concatenate(cls, parts):
        """One result of the surveys of ``parts`` (results of consecutive chunks, in order): arrays
        joined along the survey axis, histories padded with NaN to the longest run.

        Parameters
        ----------
        parts : sequence of InversionResult
            At least one, with the same starts and fields (``settings`` is the first part's, with the
            per-survey entries of all).

        Returns
        -------
        InversionResult
        """
        import dataclasses

        n_iter = max(p.data_rmse_history.shape[2] for p in parts)

        def pad(a):
            if a.ndim == 3 and a is not None and a.shape[2] < n_iter and a.dtype.kind == "f":
                return np.concatenate([a, np.full(a.shape[:2] + (n_iter - a.shape[2],), np.nan)], 2)
            return a

        fields = {}
        for f in dataclasses.fields(cls):
            values = [getattr(p, f.name) for p in parts]
            if f.name == "settings":
                fields[f.name] = dict(values[0])
                # per-survey entries (one value per survey of the chunk): those of every chunk, in order
                for key in PER_SURVEY_SETTINGS:
                    if all(key in v for v in values):
                        fields[f.name][key] = [x for v in values for x in v[key]]
            elif values[0] is None:
                fields[f.name] = None
            else:
                fields[f.name] = np.concatenate([pad(v) if f.name.endswith("_history") else v
                                                 for v in values], axis=0)
        return cls(**fields)

    @property
    def n_surveys(self):
        return self.models.shape[0]

    @property
    def n_starts(self):
        return self.latents.shape[1]

    def _threshold(self, threshold, caller):
        """``threshold`` (ns) broadcast to ``(n_surveys, n_starts)``, checked; warns against the baseline."""
        shape = self.data_rmse.shape
        try:
            if isinstance(threshold, bool) or np.asarray(threshold).dtype.kind not in "iuf":
                raise TypeError("not a real number")   # "1" would parse, True would be 1 ns
            thr = np.asarray(threshold, dtype=np.float64)
            thr = np.broadcast_to(thr, shape)
        except (TypeError, ValueError):
            raise ValueError(
                f"InversionResult.{caller}: threshold must be a number of ns or an array that "
                f"broadcasts to (n_surveys, n_starts) = {shape}, got {threshold!r}") from None
        if np.isnan(thr).any() or (thr < 0).any():
            raise ValueError(f"InversionResult.{caller}: threshold must be >= 0 ns (not NaN), got "
                             f"{threshold!r}")
        if self.homogeneous_rmse is not None:
            from ..baselines import check_against_baselines
            check_against_baselines(
                data_rmse=thr.max(axis=1), homogeneous_rmse=self.homogeneous_rmse, stacklevel=4,
                what=f"the acceptance threshold of InversionResult.{caller}")
        return thr

    def accepted(self, threshold):
        """Boolean ``(n_surveys, n_starts)``: selected data RMSE <= ``threshold`` (ns), not diverged.

        ``threshold``: a number or an array broadcasting to ``(n_surveys, n_starts)`` (one value
        per survey as ``(n_surveys, 1)``). Warns with :class:`latentinv.baselines.BaselineWarning`
        when a survey's threshold is above ``DATA_RATIO`` (0.5) times the data RMSE of its best
        homogeneous-velocity model (:attr:`homogeneous_rmse`): such an acceptance says little.

        Parameters
        ----------
        threshold : float or array-like
            In ns, >= 0; broadcasts to ``(n_surveys, n_starts)``.

        Returns
        -------
        ndarray of bool of shape (n_surveys, n_starts)

        Raises
        ------
        ValueError
            On a threshold that is not real, negative or NaN, or does not broadcast.
        """
        thr = self._threshold(threshold, "accepted")
        return (self.data_rmse <= thr) & ~self.diverged

    def accepted_fraction(self, threshold):
        """Fraction of the starts of each survey whose selected data RMSE (ns) is <= ``threshold``.

        Diverged starts count as not accepted. Returns an array of shape ``(n_surveys,)``. Warns as
        :meth:`accepted` when the threshold is not clearly better than the homogeneous model's
        data RMSE (:attr:`homogeneous_rmse`, reported beside the fraction).

        Parameters
        ----------
        threshold : float or array-like
            As in :meth:`accepted`.

        Returns
        -------
        ndarray of float64 of shape (n_surveys,)
            In [0, 1].

        Raises
        ------
        ValueError
            As :meth:`accepted`.
        """
        thr = self._threshold(threshold, "accepted_fraction")
        return ((self.data_rmse <= thr) & ~self.diverged).mean(axis=1)
