"""When a start leaves the batch: its target misfit reached, diverged, converged (no relative
improvement of its best misfit over a window of epochs) or pruned (successive halving across the
starts of a survey). A start that leaves is never computed again, so the batch shrinks."""
from __future__ import annotations

import math

import numpy as np
import torch

# a start whose latent norm exceeds this many times sqrt(d) is declared diverged
DIVERGENCE_FACTOR = 100.0


class Stopping:
    """The stop rules of ``R = n_surveys * n_starts`` rows and the reason each row stopped.

    Parameters
    ----------
    n_rows, n_starts, d : int
    target_misfit : float or None
        Stop a row once its iterate's misfit (data RMSE, or ``sqrt(chi2 / n_data)``) is at most this.
    tol : float or None
        Relative tolerance of the convergence rule: a row stops when its best misfit has not fallen
        below ``(1 - tol)`` times its reference for ``n_epochs_no_change`` epochs (the reference is
        the best misfit at the last such fall).
    n_epochs_no_change : int
    prune_every : int or None
        Successive halving: every ``prune_every`` epochs, each survey keeps the best ``prune_keep``
        fraction of its running starts (at least one), ranked by their best misfit so far.
    prune_keep : float
    """

    def __init__(self, n_rows, n_starts, d, device, *, target_misfit=None, tol=None,
                 n_epochs_no_change=5, prune_every=None, prune_keep=0.5):
        self.n_starts, self.target = n_starts, target_misfit
        self.tol, self.window = tol, n_epochs_no_change
        self.prune_every, self.prune_keep = prune_every, prune_keep
        self.max_norm = DIVERGENCE_FACTOR * math.sqrt(d)
        flags = lambda: torch.zeros(n_rows, dtype=torch.bool, device=device)
        self.reached, self.diverged, self.converged, self.pruned = flags(), flags(), flags(), flags()
        if tol is not None:
            self.reference = torch.full((n_rows,), float("inf"), device=device)
            self.last_fall = torch.zeros(n_rows, dtype=torch.long, device=device)

    @property
    def needs_epoch_end(self):
        """True when a rule decides at the end of an epoch (it reads the best misfits then)."""
        return self.tol is not None or self.prune_every is not None

    def after_step(self, rows, rms, z_new, running=None):
        """Rows (local indices into ``rows``' batch) that stop after this step: target reached, or the
        new iterate not finite or too far (diverged). Returns a boolean mask over the batch.
        ``running``: a boolean mask over the batch of the rows that still run (None: all of them); the
        others never stop again (a batch that keeps its stopped rows, see :mod:`.graphed`)."""
        stop = torch.zeros(z_new.shape[0], dtype=torch.bool, device=z_new.device)
        if self.target is not None:
            hit = rms <= self.target
            if running is not None:
                hit &= running
            self.reached[rows] |= hit
            stop |= hit
        bad = ~stop & (~torch.isfinite(z_new).all(1) | (torch.linalg.vector_norm(z_new, dim=1) > self.max_norm))
        if running is not None:
            bad &= running
        self.diverged[rows] |= bad
        return stop | bad

    def at_epoch_end(self, epoch, rows, best_misfit):
        """Boolean mask over ``rows`` (global indices of the running rows) of those that stop at the
        end of ``epoch`` (0-based): converged, or pruned."""
        stop = torch.zeros(len(rows), dtype=torch.bool, device=rows.device)
        best = best_misfit[rows]
        if self.tol is not None:
            fell = best < (1.0 - self.tol) * self.reference[rows]
            self.reference[rows] = torch.where(fell, best, self.reference[rows])
            self.last_fall[rows] = torch.where(fell, epoch, self.last_fall[rows])
            conv = (epoch - self.last_fall[rows]) >= self.window
            self.converged[rows] |= conv
            stop |= conv
        if self.prune_every is not None and (epoch + 1) % self.prune_every == 0:
            cut = self._halving(rows.cpu().numpy(), best.cpu().numpy(), stop.cpu().numpy())
            cut = torch.tensor(cut, device=rows.device)
            self.pruned[rows] |= cut
            stop |= cut
        return stop

    def _halving(self, rows, best, stopping):
        """Per survey, the running rows beyond the best ``ceil(keep * n)`` (ties: the lower start)."""
        cut = np.zeros(len(rows), bool)
        survey = rows // self.n_starts
        for s in np.unique(survey):
            mine = np.flatnonzero((survey == s) & ~stopping)
            if len(mine) <= 1:
                continue
            keep = max(1, math.ceil(self.prune_keep * len(mine)))
            order = mine[np.lexsort((rows[mine], np.nan_to_num(best[mine], nan=np.inf)))]
            cut[order[keep:]] = True
        return cut
