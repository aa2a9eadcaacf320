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

    ``R = n_surveys * n_starts`` rows; row ``r`` belongs to survey ``r // n_starts``. The estimators
    build one per run (``_problem`` of their shared base class); it holds no algorithm.

    Parameters
    ----------
    decoder : torch.nn.Module
        Latents ``(R, d)`` to models ``(R, n_cells)`` (flat C order), differentiable; its output's dtype
        must be ``dtype`` (the decoder is not cast).
    slowness_map : callable
        Torch map from model values to slowness (ns/m), element-wise (a tensor like its input);
        :func:`paper_slowness` of a float32 CPU matrix runs through the compiled kernels.
    operator : ForwardOperator
        The forward operator (traveltimes in ns of slowness in ns/m, ray lengths in m); a linear one's
        kernel is read once, a nonlinear one is called at every evaluation.
    Y : ndarray of shape (n_surveys, n_data)
        Observed traveltimes (ns).
    sigma : ndarray of shape (n_data,) or None
        Noise standard deviations (ns); None: unweighted (as in the paper).
    n_starts : int
        Rows per survey.
    device : torch.device or str
        Where the data, the weights and a linear operator's kernel are held (a string is turned into a
        ``torch.device``).
    nonlinear_gradient : {"paper", "exact"}, default="paper"
        ``"paper"``: for a nonlinear operator, the data term's gradient reaches the models as the
        paper's code computes it (Eq. 28: ``S^T (f - y)``, no factor 2, no derivative of the slowness
        map); ``"exact"``: the chain rule. Any value other than ``"paper"`` is the chain rule; no effect
        with a linear operator.
    allow_pending : bool, default=False
        Let a background engine return the full data as a :class:`~.traveltimes.Pending`.
    dtype : torch.dtype, default=torch.float32
        Floating-point type of the observed data, the noise weights and a linear operator's kernel (and
        of the traveltimes computed from them); the decoder's models must have it. The estimators use
        the default, float32.
    precision : {"float32", "bfloat16"}, default="float32"
        The decoder's arithmetic: ``"bfloat16"`` runs it under ``torch.autocast`` (models are cast
        back to ``dtype``; everything after the decoder stays in ``dtype``). Any other value is float32.
    """

    def __init__(self, decoder, slowness_map, operator, Y, sigma, n_starts, device, *,
                 nonlinear_gradient="paper", allow_pending=False, dtype=torch.float32,
                 precision="float32"):
        self.decoder, self.slowness_map, self.operator = decoder, slowness_map, operator
        self.precision = precision
        self.device, self.dtype = torch.device(device), dtype     # a string too ("cpu", "cuda:0")
        self.n_surveys, self.n_data = Y.shape
        self.n_starts = int(n_starts)
        self.n_rows = self.n_surveys * self.n_starts
        # nothing of R rows yet: the estimators check that a batch fits in memory after building its problem
        # (latentinv._memory), so the rows' data are made at their first use (float64 copies of R rows, as
        # before, could take more memory than the check counts before it ran); the weights are one row's
        self._Y, self._y = torch.tensor(np.ascontiguousarray(Y), dtype=dtype, device=device), None
        self.w = (None if sigma is None else
                  torch.tensor(1.0 / sigma**2, dtype=dtype, device=device).expand(self.n_rows, self.n_data))
        self._selected = None       # (rows, y[rows], w[rows]) of the last selection (see _observed)
        self.is_linear = bool(getattr(operator, "is_linear", False))
        self.paper_gradient = not self.is_linear and nonlinear_gradient == "paper"
        self.traveltimes = traveltime_evaluator(operator, device, dtype, paper_gradient=self.paper_gradient,
                                                allow_pending=allow_pending)

    @property
    def y(self):
        """Observed traveltimes of every row, ``(R, n_data)`` (a survey's row repeated ``n_starts`` times)."""
        if self._y is None:
            self._y = self._Y.repeat_interleave(self.n_starts, dim=0)
        return self._y

    @property
    def pending(self):
        """True when the full data come back as :class:`~.traveltimes.Pending` (a background engine)."""
        return self.traveltimes.pending

    @property
    def weighted(self):
        return self.w is not None

    def all_rays(self, n_rows=None):
        """Ray indices ``(n_rows, n_data)`` that select every datum.

        Parameters
        ----------
        n_rows : int, default=None
            Rows to index; None: all ``R`` rows.

        Returns
        -------
        torch.Tensor of int64 of shape (n_rows, n_data)
            ``0 .. n_data - 1`` in every row, on :attr:`device`: an expanded view (one row of memory,
            not writable row by row).
        """
        n = self.n_rows if n_rows is None else n_rows
        return torch.arange(self.n_data, device=self.device).expand(n, self.n_data)

    def decode(self, z, precision=None, autocast_cache=True):
        """Models ``x = g(z)`` and their slowness ``s(x)`` (``precision``: None is the problem's).
        ``autocast_cache=False``: bfloat16 weights cast anew at every call (a step captured in a CUDA
        graph must not keep autocast's cache, which is freed when the context exits).

        Parameters
        ----------
        z : torch.Tensor of shape (n, d)
            Latent vectors (any number of rows), on the decoder's device; autograd follows them.
        precision : {"float32", "bfloat16"} or None, default=None
            The decoder's arithmetic for this call; None: the problem's ``precision``.
        autocast_cache : bool, default=True
            Keep ``torch.autocast``'s cache of bfloat16 weights within the call (bfloat16 only).

        Returns
        -------
        x : torch.Tensor of shape (n, n_cells)
            Model values (cast to ``dtype`` under bfloat16; the decoder's output as is otherwise).
        s : torch.Tensor of shape (n, n_cells)
            Their slowness (ns/m) through ``slowness_map``, differentiable.
        """
        if (precision or self.precision) == "bfloat16":
            with torch.autocast(self.device.type, dtype=torch.bfloat16, cache_enabled=autocast_cache):
                x = self.decoder(z)
            x = x.to(self.dtype)
        else:
            x = self.decoder(z)
        return x, native.slowness(self.slowness_map, x)

    def full_traveltimes(self, x, s):
        """All traveltimes ``(n, n_data)`` of the slowness ``s`` of ``n`` rows (``R`` or fewer), without
        autograd; the models ``x`` are not read.

        Parameters
        ----------
        x : torch.Tensor of shape (n, n_cells)
            The models; not used (the traveltimes depend on ``s`` only; kept for the callers' symmetry
            with the evaluators, ``(x, s)``).
        s : torch.Tensor of shape (n, n_cells)
            Slowness (ns/m) of each row.

        Returns
        -------
        torch.Tensor of shape (n, n_data)
            Traveltimes (ns) of every ray, not attached to the graph: a linear operator's kernel
            product (of ``dtype``, on :attr:`device`); otherwise ``operator.response`` on float64
            copies of ``s``, returned as ``dtype`` on :attr:`device`.
        """
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
        ``t_rays`` belong to (index tensor; None: every row).

        Parameters
        ----------
        t_rays : torch.Tensor of shape (n, B)
            Computed traveltimes (ns) of the rays ``rays`` of each row; autograd follows them.
        rays : torch.Tensor of int64 of shape (n, B)
            Ray (datum) indices in ``[0, n_data)`` of each row (a mini-batch, or :meth:`all_rays`).
        rows : torch.Tensor of int64 of shape (n,), default=None
            The problem's rows that the ``n`` rows are; None: all ``R`` rows (``n = R``).

        Returns
        -------
        torch.Tensor of shape (n,)
            The data term of each row (ns**2 without weights, dimensionless chi-square terms with
            them), halved where the paper's nonlinear gradient is in use.
        """
        y, w = self._observed(rows)
        resid = torch.gather(y, 1, rays) - t_rays
        sq = resid * resid
        if w is not None:
            sq = sq * torch.gather(w, 1, rays)
        loss = sq.sum(1)
        return 0.5 * loss if self.paper_gradient else loss

    def misfit(self, t_full, rows=None):
        """:class:`Misfit` of full-data traveltimes ``t_full`` of rows ``rows`` (None: all R rows).

        Parameters
        ----------
        t_full : torch.Tensor of shape (n, n_data)
            Traveltimes (ns) of every ray of each row (:meth:`full_traveltimes`).
        rows : torch.Tensor of int64 of shape (n,), default=None
            The problem's rows that the ``n`` rows are; None: all ``R`` rows (``n = R``).

        Returns
        -------
        Misfit
            Tensors of shape ``(n,)``: ``rmse`` (ns), ``chi2`` (None without ``sigma``), ``value`` (the
            chi-square with ``sigma``, the sum of squared residuals in ns**2 without) and
            ``rms_for_target`` (``sqrt(chi2 / n_data)`` with ``sigma``, the RMSE in ns without).
        """
        y, w = self._observed(rows)
        r_full = y - t_full
        sse = (r_full * r_full).sum(1)
        rmse = torch.sqrt(sse / self.n_data)
        if w is None:
            return Misfit(rmse, None, sse, rmse)
        chi2 = (r_full * r_full * w).sum(1)
        return Misfit(rmse, chi2, chi2, torch.sqrt(chi2 / self.n_data))
