"""Straight-ray traveltime operator: exact ray lengths per cell (a Siddon-type traversal)."""
from __future__ import annotations

import warnings

import numpy as np
import scipy.sparse as sp
import torch

from ..geometry import CrossholeSurvey, Grid2D
from ._base import ForwardOperator

__all__ = ["StraightRayOperator", "straight_ray_matrix"]

# a ray lies "on" a grid line when it is closer than this fraction of a cell to it
_LINE_TOL = 1e-9


def _line_index(coord, start, step, n):
    """Index of the grid line ``coord`` lies on, or -1 (tolerance relative to the step)."""
    k = (coord - start) / step
    r = np.round(k)
    return int(r) if abs(k - r) <= _LINE_TOL and 0 <= r <= n else -1


def straight_ray_matrix(grid, survey):
    """Sparse matrix of the length (m) of every straight ray in every cell.

    Each ray is cut at every grid line it crosses (parametric crossing points, as in Siddon 1985);
    each piece is credited to the cell that holds its midpoint, so row ``i`` sums to the
    source-receiver distance of datum ``i`` up to rounding.

    A ray running exactly along a cell boundary (a vertical or horizontal ray on a grid line) is
    split half and half between the two cells that share the boundary; on the outer edge of the grid
    it is credited wholly to the one cell inside.

    Parameters
    ----------
    grid : Grid2D
    survey : CrossholeSurvey
        Every sensor must lie in the grid (boundary included).

    Returns
    -------
    scipy.sparse.csr_matrix of shape (n_data, n_cells)
    """
    survey.check_in(grid, owner="StraightRayOperator")
    x0, z0 = grid.origin
    xe, ze = grid.x_edges, grid.depth_edges
    rows, cols, vals = [], [], []
    for i, (p, q) in enumerate(zip(survey.source_positions, survey.receiver_positions)):
        d = q - p
        length = float(np.hypot(d[0], d[1]))
        ts = [0.0, 1.0]
        if d[0] != 0:
            t = (xe - p[0]) / d[0]
            ts.extend(t[(t > 0) & (t < 1)])
        if d[1] != 0:
            t = (ze - p[1]) / d[1]
            ts.extend(t[(t > 0) & (t < 1)])
        ts = np.unique(np.asarray(ts))
        seg = np.diff(ts) * length
        mid = p[None, :] + 0.5 * (ts[:-1] + ts[1:])[:, None] * d[None, :]
        keep = seg > 0
        seg, mid = seg[keep], mid[keep]
        # a vertical ray on a grid line x = const, or a horizontal one on z = const
        on_x = _line_index(p[0], x0, grid.dx, grid.n_cols) if d[0] == 0 else -1
        on_z = _line_index(p[1], z0, grid.dz, grid.n_rows) if d[1] == 0 else -1
        col = np.clip(np.floor((mid[:, 0] - x0) / grid.dx).astype(int), 0, grid.n_cols - 1)
        row = np.clip(np.floor((mid[:, 1] - z0) / grid.dz).astype(int), 0, grid.n_rows - 1)
        if on_x >= 0 or on_z >= 0:
            if on_x >= 0:
                left, right = on_x - 1, on_x
                sides = [c for c in (left, right) if 0 <= c < grid.n_cols]
                parts = [(row, np.full_like(col, c)) for c in sides]
            else:
                up, down = on_z - 1, on_z
                sides = [r for r in (up, down) if 0 <= r < grid.n_rows]
                parts = [(np.full_like(row, r), col) for r in sides]
            for r_, c_ in parts:
                rows.append(np.full(len(seg), i))
                cols.append(r_ * grid.n_cols + c_)
                vals.append(seg / len(parts))
        else:
            rows.append(np.full(len(seg), i))
            cols.append(row * grid.n_cols + col)
            vals.append(seg)
    G = sp.csr_matrix(
        (np.concatenate(vals), (np.concatenate(rows), np.concatenate(cols))),
        shape=(survey.n_data, grid.n_cells),
    )
    G.sum_duplicates()
    G.sort_indices()
    return G


class StraightRayOperator(ForwardOperator):
    """Linear traveltime operator ``t = G s`` with exact straight-ray lengths ``G`` (m).

    Parameters
    ----------
    grid : Grid2D
        The model grid; ``s`` is slowness per cell (ns/m) in the package's cell order.
    survey : CrossholeSurvey
        Sensors inside the grid. The paper's linear case uses boreholes at x = 0.01 and 6.49 m
        (``CrossholeSurvey.paper(0.01, 6.49)``).

    Attributes
    ----------
    matrix : scipy.sparse.csr_matrix of shape (n_data, n_params)
        Ray lengths per cell (m), computed once.
    """

    is_linear = True
    backend = "python"

    def __init__(self, grid, survey):
        if not isinstance(grid, Grid2D):
            raise TypeError(f"StraightRayOperator: grid must be a Grid2D, got {type(grid).__name__}")
        if not isinstance(survey, CrossholeSurvey):
            raise TypeError(
                f"StraightRayOperator: survey must be a CrossholeSurvey, got {type(survey).__name__}"
            )
        self.grid = grid
        self.survey = survey
        self.matrix = straight_ray_matrix(grid, survey)
        self.n_data, self.n_params = self.matrix.shape
        self._torch_cache = {}

    def __reduce__(self):
        return (StraightRayOperator, (self.grid, self.survey))

    def __repr__(self):
        return f"StraightRayOperator(grid={self.grid!r}, survey={self.survey!r})"

    def _response_and_jacobian(self, m, want_jacobian):
        t = (self.matrix @ m.T).T
        return t, ([self.matrix] * len(m) if want_jacobian else None)

    def jacobian(self, m=None):
        """The constant matrix ``G`` (``m`` is validated when given, and otherwise unused)."""
        if m is not None:
            super().jacobian(m)
        return self.matrix

    def adjoint(self, v):
        """``G^T v`` for data ``v`` of shape ``(n_data,)`` or ``(n, n_data)`` (ns -> ns*m)."""
        a = np.asarray(v, dtype=np.float64)
        if a.shape[-1:] != (self.n_data,) or a.ndim > 2:
            raise ValueError(
                f"StraightRayOperator: adjoint expects shape ({self.n_data},) or (n, {self.n_data}), "
                f"got {a.shape}"
            )
        if not np.all(np.isfinite(a)):
            raise ValueError("StraightRayOperator: adjoint input holds NaN or inf")
        return (self.matrix.T @ a.T).T

    def torch_matrix(self, device="cpu", dtype=torch.float32, transpose=False):
        """``G`` (or ``G^T``) as a torch sparse CSR tensor, cached per device and dtype."""
        key = (str(torch.device(device)), dtype, transpose)
        if key not in self._torch_cache:
            M = (self.matrix.T.tocsr() if transpose else self.matrix).astype(np.float64)
            M.sort_indices()
            with warnings.catch_warnings():  # torch flags sparse CSR as beta; it is used read-only here
                warnings.filterwarnings("ignore", message="Sparse CSR tensor support is in beta")
                tensor = torch.sparse_csr_tensor(
                    torch.tensor(M.indptr, dtype=torch.int64),
                    torch.tensor(M.indices, dtype=torch.int64),
                    torch.tensor(M.data, dtype=dtype),
                    size=M.shape,
                    check_invariants=True,
                )
            self._torch_cache[key] = tensor.to(device)
        return self._torch_cache[key]

    def forward(self, m):
        """Differentiable ``t = G m`` in torch for ``(n_params,)`` or ``(batch, n_params)``."""
        if not isinstance(m, torch.Tensor):
            raise TypeError(f"StraightRayOperator.forward expects a torch.Tensor, got {type(m).__name__}")
        if m.shape[-1] != self.n_params or m.ndim > 2:
            raise ValueError(
                f"StraightRayOperator: model must have shape ({self.n_params},) or "
                f"(batch, {self.n_params}), got {tuple(m.shape)}"
            )
        single = m.ndim == 1
        mb = m[None, :] if single else m
        G = self.torch_matrix(mb.device, mb.dtype)
        GT = self.torch_matrix(mb.device, mb.dtype, transpose=True)
        out = _LinearSparse.apply(mb, G, GT)
        return out[0] if single else out

    __call__ = forward


class _LinearSparse(torch.autograd.Function):
    """``m @ G^T`` for a batch of models and a constant sparse ``G``; backward ``g @ G``."""

    @staticmethod
    def forward(ctx, m, G, GT):
        ctx.GT = GT
        return (G @ m.T.contiguous()).T

    @staticmethod
    def backward(ctx, grad_out):
        return (ctx.GT @ grad_out.T.contiguous()).T, None, None
