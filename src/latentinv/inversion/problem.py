"""The inverse problem in latent space, for a batch of models at once.

:class:`LatentProblem` holds what every algorithm of the engine needs and nothing of any algorithm:
the generator's decoder, the slowness map, the operator (behind its traveltime evaluator, see
:mod:`.traveltimes`), the observed data and the noise weights, for ``R = n_surveys * n_starts`` rows
(row ``r`` belongs to survey ``r // n_starts``; a start is a chain for a sampler).
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from . import native
from .traveltimes import traveltime_evaluator


@dataclass
class Misfit:
    """Full-data misfit of each row: data RMSE (ns), chi-square (with noise weights, else None), the
    misfit that selects the best model (chi-square with weights, the sum of squares without) and the
    RMS that a target misfit compares with (``sqrt(chi2 / n_data)`` with weights, the RMSE without)."""

    rmse: torch.Tensor
    chi2: torch.Tensor | None
    value: torch.Tensor
    rms_for_target: torch.Tensor


class LatentProblem:
    """``R`` latent-space problems: ``y_r ~ f(s(g(z_r)))`` with per-datum weights ``1 / sigma**2``.

    Parameters
    ----------
    decoder : torch.nn.Module
        Latents ``(R, d)`` to models ``(R, n_cells)``.
    slowness_map : callable
        Torch map from model values to slowness (ns/m).
    operator : ForwardOperator
    Y : ndarray of shape (n_surveys, n_data)
        Observed traveltimes (ns).
    sigma : ndarray of shape (n_data,) or None
        Noise standard deviations (ns); None: unweighted (as in the paper).
    n_starts : int
        Rows per survey.
    device : torch.device
    nonlinear_gradient : {"paper", "exact"}
        ``"paper"``: for a nonlinear operator, the data term's gradient reaches the models as the
        paper's code computes it (Eq. 28: ``S^T (f - y)``, no factor 2, no derivative of the slowness
        map); ``"exact"``: the chain rule.
    allow_pending : bool
        Let a background engine return the full data as a :class:`~.traveltimes.Pending`.
    precision : {"float32", "bfloat16"}
        The decoder's arithmetic: ``"bfloat16"`` runs it under ``torch.autocast`` (models are cast
        back to float32; everything after the decoder stays float32).
    """

    def __init__(self, decoder, slowness_map, operator, Y, sigma, n_starts, device, *,
                 nonlinear_gradient="paper", allow_pending=False, dtype=torch.float32,
                 precision="float32"):
        self.decoder, self.slowness_map, self.operator = decoder, slowness_map, operator
        self.precision = precision
        self.device, self.dtype = device, dtype
        self.n_surveys, self.n_data = Y.shape
        self.n_starts = int(n_starts)
        self.n_rows = self.n_surveys * self.n_starts
        self.y = torch.tensor(np.repeat(Y, self.n_starts, axis=0), dtype=dtype, device=device)
        self.w = (None if sigma is None else
                  torch.tensor(np.tile(1.0 / sigma**2, (self.n_rows, 1)), dtype=dtype, device=device))
        self._selected = None       # (rows, y[rows], w[rows]) of the last selection (see _observed)
        self.is_linear = bool(getattr(operator, "is_linear", False))
        self.paper_gradient = not self.is_linear and nonlinear_gradient == "paper"
        self.traveltimes = traveltime_evaluator(operator, device, dtype, paper_gradient=self.paper_gradient,
                                                allow_pending=allow_pending)

    @property
    def pending(self):
        """True when the full data come back as :class:`~.traveltimes.Pending` (a background engine)."""
        return self.traveltimes.pending

    @property
    def weighted(self):
        return self.w is not None

    def all_rays(self, n_rows=None):
        """Ray indices ``(n_rows, n_data)`` that select every datum."""
        n = self.n_rows if n_rows is None else n_rows
        return torch.arange(self.n_data, device=self.device).expand(n, self.n_data)

    def decode(self, z, precision=None, autocast_cache=True):
        """Models ``x = g(z)`` and their slowness ``s(x)`` (``precision``: None is the problem's).
        ``autocast_cache=False``: bfloat16 weights cast anew at every call (a step captured in a CUDA
        graph must not keep autocast's cache, which is freed when the context exits)."""
        if (precision or self.precision) == "bfloat16":
            with torch.autocast(self.device.type, dtype=torch.bfloat16, cache_enabled=autocast_cache):
                x = self.decoder(z)
            x = x.to(self.dtype)
        else:
            x = self.decoder(z)
        return x, native.slowness(self.slowness_map, x)

    def full_traveltimes(self, x, s):
        """All traveltimes (R, n_data) of models ``x`` with slowness ``s``, without autograd."""
        with torch.no_grad():
            if hasattr(self.traveltimes, "full"):
                return self.traveltimes.full(s)
            t = self.operator.response(s.detach().to("cpu", torch.float64).numpy())
            return torch.as_tensor(np.asarray(t).reshape(len(s), -1), dtype=self.dtype, device=self.device)

    def _observed(self, rows):
        """Data and weights of rows ``rows`` (an index tensor; None: every row). The running rows of
        an algorithm change only when a row stops: the last selection is kept for the same tensor."""
        if rows is None:
            return self.y, self.w
        if self._selected is None or self._selected[0] is not rows:
            self._selected = (rows, self.y[rows], None if self.w is None else self.w[rows])
        return self._selected[1:]

    def data_loss(self, t_rays, rays, rows=None):
        """Per row: ``sum_{i in rays} w_i (y_i - t_i)**2`` (Eq. 24's data term; half of it with the
        paper's nonlinear gradient, whose step carries no factor 2). ``rows``: the rows that
        ``t_rays`` belong to (index tensor; None: every row)."""
        y, w = self._observed(rows)
        resid = torch.gather(y, 1, rays) - t_rays
        sq = resid * resid
        if w is not None:
            sq = sq * torch.gather(w, 1, rays)
        loss = sq.sum(1)
        return 0.5 * loss if self.paper_gradient else loss

    def misfit(self, t_full, rows=None):
        """:class:`Misfit` of full-data traveltimes ``t_full`` of rows ``rows`` (None: all R rows)."""
        y, w = self._observed(rows)
        r_full = y - t_full
        sse = (r_full * r_full).sum(1)
        rmse = torch.sqrt(sse / self.n_data)
        if w is None:
            return Misfit(rmse, None, sse, rmse)
        chi2 = (r_full * r_full * w).sum(1)
        return Misfit(rmse, chi2, chi2, torch.sqrt(chi2 / self.n_data))
