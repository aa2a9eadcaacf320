"""Traveltimes of a batch of models, scheduled for the operator at hand.

Each iteration of an algorithm needs, for ``R`` models at once, the traveltimes of some rays with
their gradient (a mini-batch per model, or all rays) and the traveltimes of all rays without it (the
full-data misfit). How to get both cheaply depends on the operator, so each kind has its evaluator,
all with one interface, ``evaluator(x, s, rays, while_waiting) -> (t_rays, t_full)``:

- :class:`KernelRows`, linear operators: the constant kernel's rows as padded (index, value)
  tensors; the rays of each model are gathered and differentiated by torch, the full data are one
  sparse product without autograd;
- :class:`InlineForward`, nonlinear operators: one call of the operator for all models, whose
  autograd Function applies the Jacobian rows of the requested rays in backward;
- :class:`PipelinedForward`, nonlinear operators whose engine runs in the background
  (``runs_in_background``, the C++ ShortestPathOperator): two jobs, the sources of the requested
  rays first (traveltimes and Jacobian rows, which the gradient needs), then the other sources
  (traveltimes only). The full data are returned as a :class:`Pending` whose second job runs while
  the caller computes its step.

``while_waiting`` is called once the operator's work is queued and before the evaluator waits for it:
the caller completes the previous iteration's records there. ``x`` are the models, ``s`` their
slowness; with ``paper_gradient`` the nonlinear evaluators pass the gradient of the data term to
``x`` unchanged (the step of the paper's code, Eq. 28).
"""
from __future__ import annotations


import numpy as np
import torch

from ..operators._base import torch_csr
from . import native


def traveltime_evaluator(op, device, dtype, *, paper_gradient, allow_pending):
    """The evaluator for operator ``op`` (see the module's docstring)."""
    if getattr(op, "is_linear", False):
        return KernelRows(op.jacobian(np.ones(op.n_params)), device, dtype)
    if allow_pending and getattr(op, "runs_in_background", False):
        return PipelinedForward(op, device, dtype, paper_gradient)
    return InlineForward(op, paper_gradient)


def _paper_input(x, s, paper_gradient):
    # paper: value s, gradient passed to x unchanged: dC/dx := S^T (f - y) (the paper's code)
    return x + (s - x).detach() if paper_gradient else s


class KernelRows:
    """Rows of a constant sparse kernel as padded (index, value) tensors: ``t_i = sum_j v_ij s[idx_ij]``."""

    pending = False

    def __init__(self, G, device, dtype):
        G = G.tocsr()
        G.sort_indices()
        counts = np.diff(G.indptr)
        width = max(int(counts.max()), 1)
        n = G.shape[0]
        idx = np.zeros((n, width), dtype=np.int64)
        val = np.zeros((n, width), dtype=np.float64)
        for i in range(n):
            a, b = G.indptr[i], G.indptr[i + 1]
            idx[i, :b - a] = G.indices[a:b]
            val[i, :b - a] = G.data[a:b]
        self._dense = None
        self.index = torch.tensor(idx, device=device)
        self.value = torch.tensor(val, dtype=dtype, device=device)
        self.matrix = torch_csr(G, dtype).to(device)

    @property
    def dense_kernel(self):
        """The kernel as a dense ``(n_data, n_cells)`` tensor (made on first use): the full data as one
        dense product, which a CUDA graph can capture."""
        if self._dense is None:
            self._dense = self.matrix.to_dense()
        return self._dense

    def rows(self, s, rays):
        """Traveltimes of rays ``rays`` (R, B) for slowness ``s`` (R, n_cells): differentiable."""
        return native.kernel_rows(s, rays, self.index, self.value)

    def full(self, s):
        """All traveltimes (R, n_data), no autograd."""
        return native.kernel_full(self.matrix, s)

    def __call__(self, x, s, rays, while_waiting=None):
        t_rays = self.rows(s, rays)
        with torch.no_grad():
            t_full = self.full(s.detach())
        if while_waiting is not None:
            while_waiting()
        return t_rays, t_full


class InlineForward:
    """A nonlinear operator called once for all models; Jacobian rows only for the requested rays."""

    pending = False

    def __init__(self, op, paper_gradient):
        self.op, self.paper_gradient = op, paper_gradient

    def __call__(self, x, s, rays, while_waiting=None):
        if while_waiting is not None:
            while_waiting()
        t_full = self.op.forward(_paper_input(x, s, self.paper_gradient), jacobian_rows=rays)
        return torch.gather(t_full, 1, rays), t_full.detach()


class Pending:
    """Full-data traveltimes whose second job is still running: :meth:`result` waits for it."""

    def __init__(self, job, t_head, device, dtype):
        self.job, self.t_head, self.device, self.dtype = job, t_head, device, dtype

    def result(self):
        t_rest = torch.tensor(self.job.result()[0], dtype=self.dtype, device=self.device)
        return torch.where(torch.isnan(self.t_head), t_rest, self.t_head)


class PipelinedForward:
    """A background engine's two jobs per call: the requested rays' sources, then the others."""

    pending = True

    def __init__(self, op, device, dtype, paper_gradient):
        self.op, self.device, self.dtype, self.paper_gradient = op, device, dtype, paper_gradient
        self.source_of = np.asarray(op.data_sources)
        self.n_sources = op.survey.n_sources

    def __call__(self, x, s, rays, while_waiting=None):
        s_in = _paper_input(x, s, self.paper_gradient)
        s_np = s_in.detach().to("cpu", torch.float64).numpy()
        rays_np = rays.cpu().numpy()
        R, n_data = s_np.shape[0], len(self.source_of)
        rows_r = np.arange(R)[:, None]
        rows_mask = np.zeros((R, n_data), bool)
        rows_mask[rows_r, rays_np] = True
        head_sources = np.zeros((R, self.n_sources), bool)
        head_sources[rows_r, self.source_of[rays_np]] = True
        head = self.op.submit(s_np, want_jacobian=True, jacobian_rows=rows_mask, sources=head_sources)
        rest = self.op.submit(s_np, want_jacobian=False, sources=~head_sources)
        if while_waiting is not None:       # the previous iteration's records, while the workers run
            while_waiting()
        t_full = self.op.forward(s_in, jacobian_rows=rays, pending=head)
        return torch.gather(t_full, 1, rays), Pending(rest, t_full.detach(), self.device, self.dtype)
