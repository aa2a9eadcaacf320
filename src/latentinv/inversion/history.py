"""Records of an iterative run: per-iteration histories, the best model so far of every row, and the
assembly of an :class:`~.result.InversionResult`."""
from __future__ import annotations

import numpy as np
import torch

from .result import InversionResult
from .traveltimes import Pending


class History:
    """Histories (kept on the device) and the best-so-far model of each of ``problem.n_rows`` rows.

    :meth:`record` takes iteration ``k``'s full-data traveltimes; when they are still
    :class:`~.traveltimes.Pending`, the record is completed by :meth:`flush` (called while the next
    iteration's operator runs, or at the end).
    """

    def __init__(self, problem, n_iterations, z0, n_params):
        dev = problem.device
        R = problem.n_rows
        self.problem = problem
        self.rmse = torch.full((n_iterations, R), float("nan"), device=dev)
        self.chi2 = torch.full((n_iterations, R), float("nan"), device=dev) if problem.weighted else None
        self.norm = torch.full((n_iterations, R), float("nan"), device=dev)
        self.best_misfit = torch.full((R,), float("inf"), device=dev)
        self.best_x = torch.zeros(R, n_params, dtype=problem.dtype, device=dev)
        self.best_z = z0.clone()
        self.best_iteration = torch.zeros(R, dtype=torch.long, device=dev)
        self.n_run = torch.zeros(R, dtype=torch.long, device=dev)
        self.lr, self.lam = [], []
        self._late = None

    def schedule(self, lr, lam):
        """The step size and regularisation weight of the next iteration."""
        self.lr.append(lr)
        self.lam.append(lam)

    def record(self, k, t_full, x, z, znorm, rows=None, penalty=None):
        """Iteration ``k``'s full-data misfit of rows ``rows`` (index tensor; None: every row):
        histories and the best model so far, the one of least misfit value plus ``penalty`` (per row;
        None: the misfit alone). Returns the RMS to compare with a target misfit, or None when
        ``t_full`` is pending (then recorded by :meth:`flush`)."""
        if isinstance(t_full, Pending):
            self._late = (k, t_full, x, z, znorm, rows, penalty)
            return None
        m = self.problem.misfit(t_full, rows)
        if rows is None:
            rows = slice(None)

        def write(h, v):
            h[k, rows] = v
        value = m.value if penalty is None else m.value + penalty
        self._update(write, k, m.rmse, m.chi2, value, x, z, znorm, rows)
        self.n_run[rows] += 1
        return m.rms_for_target

    def record_masked(self, k, t_full, x, z, znorm, running):
        """:meth:`record` of every row at once, keeping only the rows where ``running`` (a boolean mask)
        holds, with ``k`` a 0-dim long tensor on the device: no host synchronisation and no shape that
        depends on the data (a step captured in a CUDA graph). The other rows' histories stay NaN and
        their best model unchanged, as if they had not been computed. Returns the RMS of every row."""
        m = self.problem.misfit(t_full)
        nan = torch.full_like(m.rmse, float("nan"))
        keep = lambda v: None if v is None else torch.where(running, v, nan)
        at = k.reshape(1)

        def write(h, v):
            h.index_copy_(0, at, v[None])
        # an infinite misfit never improves the best one: rows not running keep theirs
        value = torch.where(running, m.value, torch.full_like(m.value, float("inf")))
        self._update(write, k, keep(m.rmse), keep(m.chi2), value, x, z, torch.where(running, znorm, nan),
                     slice(None))
        self.n_run += running
        return m.rms_for_target

    def _update(self, write, k, rmse, chi2, value, x, z, znorm, rows):
        """Histories at iteration ``k`` (through ``write(history, values)``) and the best so far."""
        if self.chi2 is not None:
            write(self.chi2, chi2)
        write(self.rmse, rmse)
        write(self.norm, znorm)
        improved = value < self.best_misfit[rows]
        self.best_misfit[rows] = torch.where(improved, value, self.best_misfit[rows])
        self.best_x[rows] = torch.where(improved[:, None], x, self.best_x[rows])
        self.best_z[rows] = torch.where(improved[:, None], z, self.best_z[rows])
        self.best_iteration[rows] = torch.where(improved, k, self.best_iteration[rows])

    def flush(self):
        """Complete a pending record (waits for the operator's job)."""
        if self._late is not None:
            k, pending, x, z, znorm, rows, penalty = self._late
            self._late = None
            with torch.no_grad():
                self.record(k, pending.result(), x, z, znorm, rows, penalty)

    def result(self, stopping, *, settings, owner="LatentInverter"):
        """The :class:`~.result.InversionResult` of the iterations recorded so far."""
        p = self.problem
        S, K, d = p.n_surveys, p.n_starts, self.best_z.shape[1]
        n_done = len(self.lr)
        best_mis = self.best_misfit.cpu().numpy().reshape(S, K)
        best_start = np.argmin(np.where(np.isfinite(best_mis), best_mis, np.inf), axis=1)
        if not np.all(np.isfinite(best_mis[np.arange(S), best_start])):
            bad = np.flatnonzero(~np.isfinite(best_mis).any(1))
            raise RuntimeError(f"{owner}: no start gave a finite misfit for surveys "
                               f"{bad.tolist()} (the generator or operator returned NaN, or the misfit "
                               "overflowed float32: residuals too large for the noise_std given?)")

        def per_iteration(h):
            return h[:n_done].T.cpu().numpy().astype(np.float64).reshape(S, K, n_done)

        start_models = self.best_x.cpu().numpy().astype(np.float64).reshape(S, K, -1)
        rmse = per_iteration(self.rmse)
        n_run = self.n_run.cpu().numpy().reshape(S, K)
        best_it = self.best_iteration.cpu().numpy().reshape(S, K)
        ran = np.arange(n_done)[None, None, :] < n_run[:, :, None]
        pick = best_it[:, :, None]
        chi2 = per_iteration(self.chi2) if self.chi2 is not None else None
        return InversionResult(
            models=start_models[np.arange(S), best_start],
            best_start=best_start,
            start_models=start_models,
            latents=self.best_z.cpu().numpy().astype(np.float64).reshape(S, K, d),
            data_rmse=np.take_along_axis(rmse, pick, 2)[:, :, 0],
            chi2=None if chi2 is None else np.take_along_axis(chi2, pick, 2)[:, :, 0],
            best_iteration=best_it,
            data_rmse_history=rmse,
            latent_norm_history=per_iteration(self.norm),
            learning_rate_history=np.where(ran, np.asarray(self.lr)[None, None, :], np.nan),
            lam_history=np.where(ran, np.asarray(self.lam)[None, None, :], np.nan),
            chi2_history=chi2,
            n_iterations_run=n_run,
            reached_target=stopping.reached.cpu().numpy().reshape(S, K),
            diverged=stopping.diverged.cpu().numpy().reshape(S, K),
            converged=stopping.converged.cpu().numpy().reshape(S, K),
            pruned=stopping.pruned.cpu().numpy().reshape(S, K),
            settings=settings,
        )
