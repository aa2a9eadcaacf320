"""Straight-ray traveltime operator: exact ray lengths per cell (a Siddon-type traversal)."""
from __future__ import annotations


import numpy as np
import scipy.sparse as sp
import torch

from ..geometry import CrossholeSurvey, Grid2D
from ._base import ForwardOperator, check_slowness_tensor, check_times_tensor, torch_csr

__all__ = ["StraightRayOperator", "straight_ray_matrix"]

# a ray lies "on" a grid line when it is closer than this fraction of a cell to it
_LINE_TOL = 1e-9
#: conventions for a ray segment lying exactly on a cell boundary (see straight_ray_matrix)
BOUNDARY_RAYS = ("split", "upper_left")


def _check_boundary_rays(boundary_rays, owner):
    if not isinstance(boundary_rays, str) or boundary_rays not in BOUNDARY_RAYS:
        raise ValueError(f"{owner}: boundary_rays must be 'split' or 'upper_left', "
                         f"got {boundary_rays!r}")
    return boundary_rays


def _line_index(coord, start, step, n):
    """Index of the grid line ``coord`` lies on, or -1 (tolerance relative to the step)."""
    k = (coord - start) / step
    r = np.round(k)
    return int(r) if abs(k - r) <= _LINE_TOL and 0 <= r <= n else -1


def _same_line(a, b, start, step, n):
    """Index of the grid line both ``a`` and ``b`` lie on (within the tolerance), or -1."""
    k = _line_index(a, start, step, n)
    return k if k >= 0 and _line_index(b, start, step, n) == k else -1


def straight_ray_matrix(grid, survey, boundary_rays="split"):
    """Sparse matrix of the length (m) of every straight ray in every cell.

    Each ray is cut at every grid line it crosses (parametric crossing points, as in Siddon 1985);
    each piece is credited to the cell that holds its midpoint, so row ``i`` sums to the
    source-receiver distance of datum ``i`` up to rounding.

    A ray running exactly along a cell boundary (a vertical or horizontal ray on a grid line: both of its
    ends within ``1e-9`` cell of the same line) belongs to two cells equally; ``boundary_rays`` says
    where it goes:

    - ``"split"`` (default): half and half between the two cells that share the boundary. This is
      the symmetric choice: the limit of rays an infinitesimal distance above and below the line,
      invariant under flipping the grid, so it favours neither neighbour and the traveltime is the
      mean of the two rows' slownesses.
    - ``"upper_left"``: wholly to the cell row above (smaller row index) for a horizontal ray, wholly
      to the column on the left (smaller column index) for a vertical one. This reproduces the
      straight-ray kernel of the paper's published code (Irving/Laloy), which assigns each segment
      to a cell by a ceil rule on its midpoint; it biases the data toward the upper rows (all 25
      horizontal rays of the paper's geometry lie on boundaries).

    Under either convention a ray on the outer edge of the grid is credited wholly to the one cell
    inside, and each row sums to the source-receiver distance.

    Parameters
    ----------
    grid : Grid2D
    survey : CrossholeSurvey
        Every sensor must lie in the grid (boundary included).
    boundary_rays : {"split", "upper_left"}, default="split"
        Convention for segments on a cell boundary (above).

    Returns
    -------
    scipy.sparse.csr_matrix of shape (n_data, n_cells)
    """
    _check_boundary_rays(boundary_rays, "straight_ray_matrix")
    if not isinstance(grid, Grid2D):
        raise TypeError(f"straight_ray_matrix: grid must be a Grid2D, got {type(grid).__name__}")
    if not isinstance(survey, CrossholeSurvey):
        raise TypeError(f"straight_ray_matrix: survey must be a CrossholeSurvey, got {type(survey).__name__}")
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
        # a vertical ray on a grid line x = const, or a horizontal one on z = const: both ends within
        # _LINE_TOL cell of the same line (not only d == 0: ends a rounding apart run along it too)
        on_x = _same_line(p[0], q[0], x0, grid.dx, grid.n_cols)
        on_z = _same_line(p[1], q[1], z0, grid.dz, grid.n_rows) if on_x < 0 else -1
        col = np.clip(np.floor((mid[:, 0] - x0) / grid.dx).astype(int), 0, grid.n_cols - 1)
        row = np.clip(np.floor((mid[:, 1] - z0) / grid.dz).astype(int), 0, grid.n_rows - 1)
        if on_x >= 0 or on_z >= 0:
            if on_x >= 0:
                left, right = on_x - 1, on_x
                sides = [c for c in (left, right) if 0 <= c < grid.n_cols]
                if boundary_rays == "upper_left":
                    sides = sides[:1]  # the left column (the one inside on an outer edge)
                parts = [(row, np.full_like(col, c)) for c in sides]
            else:
                up, down = on_z - 1, on_z
                sides = [r for r in (up, down) if 0 <= r < grid.n_rows]
                if boundary_rays == "upper_left":
                    sides = sides[:1]  # the row above (the one inside on an outer edge)
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
    boundary_rays : {"split", "upper_left"}, default="split"
        Where a ray segment lying exactly on a cell boundary goes: ``"split"`` half and half
        between the two cells (symmetric, unbiased); ``"upper_left"`` wholly to the row above or
        the column on the left, as the paper's published straight-ray kernel does (use it to
        reproduce the paper's linear-case data). See :func:`straight_ray_matrix`.

    Attributes
    ----------
    matrix : scipy.sparse.csr_matrix of shape (n_data, n_params)
        Ray lengths per cell (m), computed once.
    """

    is_linear = True
    backend = "python"

    def __init__(self, grid, survey, boundary_rays="split"):
        if not isinstance(grid, Grid2D):
            raise TypeError(f"StraightRayOperator: grid must be a Grid2D, got {type(grid).__name__}")
        if not isinstance(survey, CrossholeSurvey):
            raise TypeError(
                f"StraightRayOperator: survey must be a CrossholeSurvey, got {type(survey).__name__}"
            )
        self.grid = grid
        self.survey = survey
        self.boundary_rays = _check_boundary_rays(boundary_rays, "StraightRayOperator")
        self.matrix = straight_ray_matrix(grid, survey, boundary_rays)
        self.n_data, self.n_params = self.matrix.shape
        self._torch_cache = {}

    def __reduce__(self):
        return (StraightRayOperator, (self.grid, self.survey, self.boundary_rays))

    def __repr__(self):
        return (f"StraightRayOperator(grid={self.grid!r}, survey={self.survey!r}, "
                f"boundary_rays={self.boundary_rays!r})")

    def get_params(self, deep=False):
        """The constructor parameters, by name (as scikit-learn's ``get_params``).

        Parameters
        ----------
        deep : bool, default=False
            Unused (the parameters hold no estimators); scikit-learn's signature.

        Returns
        -------
        dict
            ``grid``, ``survey``, ``boundary_rays``.
        """
        return {"grid": self.grid, "survey": self.survey, "boundary_rays": self.boundary_rays}

    def _response_and_jacobian(self, m, want_jacobian):
        t = (self.matrix @ m.T).T
        return t, ([self.matrix] * len(m) if want_jacobian else None)

    def jacobian(self, m=None):
        """The constant matrix ``G`` (``m`` is validated when given, and otherwise unused).

        Parameters
        ----------
        m : array-like or torch.Tensor of shape (n_params,), default=None
            One slowness model (ns/m); a batch raises ValueError.

        Returns
        -------
        scipy.sparse.csr_matrix of shape (n_data, n_params)
            :attr:`matrix` itself (ray lengths per cell, m; not a copy).
        """
        if m is not None:
            super().jacobian(m)
        return self.matrix

    def adjoint(self, v):
        """``G^T v`` for data ``v`` of shape ``(n_data,)`` or ``(n, n_data)`` (ns -> ns*m).

        Parameters
        ----------
        v : array-like or torch.Tensor of shape (n_data,) or (n, n_data)
            Real, finite values per datum (ns for traveltimes).

        Returns
        -------
        ndarray of float64 of shape (n_params,) or (n, n_params)
            One value per cell (ns*m for ``v`` in ns).

        Raises
        ------
        ValueError
            On a non-real dtype, a wrong shape, or NaN/inf.
        """
        if isinstance(v, torch.Tensor):
            v = v.detach().cpu()
            kind = "c" if v.is_complex() else ("b" if v.dtype == torch.bool else "f")
            dtype = str(v.dtype).replace("torch.", "")
        else:
            v = np.asarray(v)
            kind, dtype = v.dtype.kind, v.dtype
        try:
            if kind not in "iufO":
                raise TypeError
            a = np.asarray(v, dtype=np.float64)
        except (TypeError, ValueError):
            raise ValueError(f"StraightRayOperator: adjoint expects real data (ns), got dtype {dtype}") from None
        if a.shape[-1:] != (self.n_data,) or a.ndim > 2:
            raise ValueError(
                f"StraightRayOperator: adjoint expects shape ({self.n_data},) or (n, {self.n_data}), "
                f"got {a.shape}"
            )
        if not np.all(np.isfinite(a)):
            raise ValueError("StraightRayOperator: adjoint input holds NaN or inf")
        return (self.matrix.T @ a.T).T

    def torch_matrix(self, device="cpu", dtype=torch.float32, transpose=False):
        """``G`` (or ``G^T``) as a torch sparse CSR tensor, cached per device and dtype.

        Parameters
        ----------
        device : str or torch.device, default="cpu"
        dtype : torch.dtype, default=torch.float32
            Of the values (the indices are int64).
        transpose : bool, default=False
            Return ``G^T`` ``(n_params, n_data)`` instead.

        Returns
        -------
        torch.Tensor
            Sparse CSR of shape ``(n_data, n_params)`` (``(n_params, n_data)`` transposed), ray lengths
            in m; the cached tensor itself (do not modify it).
        """
        key = (str(torch.device(device)), dtype, transpose)
        if key not in self._torch_cache:
            M = self.matrix.T if transpose else self.matrix
            tensor = torch_csr(M, dtype)
            self._torch_cache[key] = tensor.to(device)
        return self._torch_cache[key]

    def forward(self, m, jacobian_rows=None, pending=None):
        """Differentiable ``t = G m`` in torch for ``(n_params,)`` or ``(batch, n_params)``.

        Takes :meth:`ForwardOperator.forward`'s arguments, so that code written for any operator runs
        with this one: ``jacobian_rows`` is checked as there and needs no work here (the gradient of every
        datum is one sparse product); ``pending`` must be None (this operator has no ``submit``).

        ``m`` must be a float32 or float64 tensor of finite slowness of at least the dtype's smallest
        normal number (ns/m; :func:`~latentinv.operators._base.smallest_slowness`), else ValueError
        (TypeError if it is not a tensor). The check is one fused reduction over ``m`` with no copy
        (see :func:`~latentinv.operators._base.check_slowness_tensor`); on a CUDA tensor it forces
        a host synchronisation.

        Parameters
        ----------
        m : torch.Tensor of shape (n_params,) or (batch, n_params)
            Slowness per cell (ns/m), float32 or float64, on any device.
        jacobian_rows : array-like of int of shape (batch, k) or (k,) for one model, default=None
            Data whose gradient is needed; checked, and the gradient of every datum is computed.
        pending : None
            Anything else is a ValueError.

        Returns
        -------
        torch.Tensor of shape (n_data,) or (batch, n_data)
            Traveltimes in ns, with the dtype and device of ``m``.

        Raises
        ------
        TypeError
            If ``m`` is not a tensor.
        ValueError
            On a model refused (above), ``jacobian_rows`` of a wrong shape, dtype or range, a
            ``pending`` given, or traveltimes that overflow the dtype of ``m``.
        """
        mb, single = check_slowness_tensor(m, self.n_params, "StraightRayOperator.forward",
                                           dtypes=(torch.float32, torch.float64))
        if pending is not None:
            raise ValueError("StraightRayOperator.forward: pending must be None (a linear operator has no "
                             f"submit: its traveltimes are one sparse product), got {type(pending).__name__}")
        self._rows_mask(jacobian_rows, mb.shape[0], single)
        G = self.torch_matrix(mb.device, mb.dtype)
        GT = self.torch_matrix(mb.device, mb.dtype, transpose=True)
        out = _LinearSparse.apply(mb, G, GT)
        check_times_tensor(out, "StraightRayOperator.forward")
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
