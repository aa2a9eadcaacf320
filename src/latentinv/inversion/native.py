"""The SGD engine's straight-ray iteration on the CPU through the compiled core's kernels
(``cpp/engine_kernels.cpp``), bit for bit what torch computes.

Around the decoder, an iteration of the linear case spends its time in small torch operations over
``(R, n_cells)`` and ``(R, batch, width)`` tensors: the slowness map (four element-wise passes forward
and four back), the rays' gather (an index tensor built, then gathered) and its scatter-add backward,
and the full-data sparse product with its transposed copy of the slowness. These kernels do the same
float32 operations in the same order in one pass each, so that the engine's results do not change by a
bit (the golden engine tests compare them exactly), and only run where that holds:

- :func:`slowness`: the paper's map ``1 / (0.06 + 0.02 (1 - x))``, forward and backward;
- :func:`kernel_rows`: the product terms ``s[r, index[ray, p]] * value[ray, p]`` of each requested ray
  (torch still sums them over ``p``, in its own order), and the scatter-add of their gradient;
- :func:`kernel_full`: the CSR kernel times every row of ``s``, each sum in the matrix's entry order
  from zero without fused multiply-adds, as MKL's CSR product on the CPU sums it.

Elsewhere (no compiled core, CUDA, another dtype, a user's slowness map, a second derivative) the torch
operations run.
"""
from __future__ import annotations

import torch

from ..nn import native as decoder_native
from .equations import paper_slowness

__all__ = ["available", "slowness", "kernel_rows", "kernel_full"]


#: Run the kernels where they apply (a switch for benchmarks and tests only: the results are the same).
use_kernels = True


def available() -> bool:
    """Whether the compiled core has the engine's kernels."""
    core = decoder_native.core
    return core is not None and hasattr(core, "engine_kernel_full")


def _applies(*tensors) -> bool:
    return use_kernels and available() and all(t.device.type == "cpu" and t.dtype == torch.float32 for t in tensors)


def _threads() -> int:
    decoder_native.openmp_runtime()      # the kernels' workers are torch's own pool (see there)
    return torch.get_num_threads()


class _PaperSlowness(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x):
        x = x.contiguous()
        s = torch.empty_like(x)
        decoder_native.core.engine_paper_slowness(x.numpy(), s.numpy(), _threads())
        ctx.save_for_backward(x, s)
        return s

    @staticmethod
    def backward(ctx, g):
        x, s = ctx.saved_tensors
        if torch.is_grad_enabled():       # create_graph: torch's differentiable ops, from the saved x
            return torch.autograd.grad(paper_slowness(x), x, g, create_graph=True)[0]
        gx = torch.empty_like(s)
        decoder_native.core.engine_paper_slowness_backward(g.contiguous().numpy(), s.numpy(), gx.numpy(),
                                                           _threads())
        return gx


def slowness(slowness_map, x: torch.Tensor) -> torch.Tensor:
    """``slowness_map(x)``: the paper's map on a float32 CPU matrix through the kernels."""
    if slowness_map is paper_slowness and x.dim() == 2 and _applies(x):
        return _PaperSlowness.apply(x)
    return slowness_map(x)


class _KernelRows(torch.autograd.Function):
    @staticmethod
    def forward(ctx, s, rays, index, value):
        s, rays = s.contiguous(), rays.contiguous()
        out = torch.empty((rays.shape[0], rays.shape[1], index.shape[1]), dtype=s.dtype)
        decoder_native.core.engine_kernel_rows(s.numpy(), index.numpy(), value.numpy(), rays.numpy(),
                                               out.numpy(), _threads())
        ctx.save_for_backward(rays, index, value)
        ctx.n_cells = s.shape[1]
        return out

    @staticmethod
    def backward(ctx, g):
        rays, index, value = ctx.saved_tensors
        # the gradient of the terms' sums over p arrives expanded (the same value along p): one per ray
        g_sum = g[:, :, 0] if g.stride(2) == 0 else None
        if torch.is_grad_enabled() or g_sum is None:    # torch's ops (create_graph, or another consumer)
            # the terms are linear in s: their gradient is the same at any s, zeros included
            with torch.enable_grad():
                s0 = torch.zeros((rays.shape[0], ctx.n_cells), dtype=g.dtype, requires_grad=True)
                (gs,) = torch.autograd.grad(_torch_terms(s0, rays, index, value), s0, g,
                                            create_graph=g.requires_grad)
            return gs, None, None, None
        gs = torch.empty((rays.shape[0], ctx.n_cells), dtype=g.dtype)
        decoder_native.core.engine_kernel_rows_backward(g_sum.contiguous().numpy(), index.numpy(),
                                                        value.numpy(), rays.numpy(), gs.numpy(), _threads())
        return gs, None, None, None


def _torch_terms(s, rays, index, value):
    """The rays' terms ``s[r, index[rays[r, b], p]] * value[rays[r, b], p]`` (R, B, P) in torch's ops."""
    R, B = rays.shape
    idx = index[rays]                      # (R, B, P)
    return torch.gather(s, 1, idx.reshape(R, -1)).reshape(idx.shape) * value[rays]


def kernel_rows(s, rays, index, value):
    """Traveltimes ``t[r, b] = sum_p s[r, index[rays[r, b], p]] * value[rays[r, b], p]`` (differentiable
    in ``s``), bit for bit as ``(s.gather(1, index[rays].reshape(R, -1)).reshape(R, B, P)
    * value[rays]).sum(-1)``."""
    if _applies(s, value) and s.dim() == 2 and rays.device.type == "cpu":
        return _KernelRows.apply(s, rays, index, value).sum(-1)
    return _torch_terms(s, rays, index, value).sum(-1)


def kernel_full(matrix, s):
    """All traveltimes ``(matrix @ s.T).T`` of rows ``s`` (no autograd), bit for bit as torch's CSR
    product on the CPU."""
    if _applies(s) and s.dim() == 2 and matrix.device.type == "cpu" and matrix.dtype == torch.float32:
        s = s.detach().contiguous()
        out_t = torch.empty((matrix.shape[0], s.shape[0]), dtype=s.dtype)
        decoder_native.core.engine_kernel_full(matrix.crow_indices().numpy(), matrix.col_indices().numpy(),
                                               matrix.values().numpy(), s.numpy(), out_t.numpy(), _threads())
        return out_t.T
    return (matrix @ s.T.contiguous()).T
