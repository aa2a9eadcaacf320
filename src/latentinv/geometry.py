"""Grids, crosshole surveys and the one cell-order convention of the package.

Coordinates are ``(x, depth)`` in metres: ``x`` is horizontal (between the boreholes) and ``depth``
grows downwards. A model lives on a :class:`Grid2D` of ``n_rows`` (depth) by ``n_cols`` (x) cells.

Cell order (the package's only convention)
-----------------------------------------
A flat model vector has ``n_cells = n_rows * n_cols`` entries and cell ``(row, col)`` sits at flat index
``row * n_cols + col``: it is the C-order ravel of the image array ``(n_rows, n_cols)`` whose row 0 is at
the top (shallowest). pyGIMLi orders the cells of a rectilinear mesh with ``x`` fastest and its ``y``
axis pointing up (``y = -depth``), i.e. the bottom row first: :meth:`Grid2D.to_pygimli_order` and
:meth:`Grid2D.from_pygimli_order` convert.
"""
from __future__ import annotations

import numbers

import numpy as np

__all__ = ["Grid2D", "CrossholeSurvey", "paper_crosshole"]

# relative tolerance (in cell sizes) for "a sensor lies on the grid boundary"
_EDGE_TOL = 1e-9


def _positive_int(value, name, owner):
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < 1:
        raise ValueError(f"{owner}: {name} must be a positive integer, got {value!r}")
    return int(value)


def _finite_float(value, name, owner, positive=False):
    # a real number (Python, NumPy or a 0-d array); strings and booleans are refused, not parsed
    if (isinstance(value, (bool, np.bool_, str, bytes))
            or not (isinstance(value, numbers.Real)
                    or (isinstance(value, np.ndarray) and value.ndim == 0 and value.dtype.kind in "iuf"))):
        raise ValueError(f"{owner}: {name} must be a real number, got {value!r} "
                         f"({type(value).__name__})")
    out = float(value)
    if not np.isfinite(out) or (positive and out <= 0):
        what = "a finite positive number" if positive else "a finite number"
        raise ValueError(f"{owner}: {name} must be {what}, got {value!r}")
    return out


class _Frozen:
    """Immutable after ``__init__``: an operator is built from its grid and survey once, so a grid or survey
    changed in place afterwards would leave the operator's rays on the old geometry while the objects
    (and anything rebuilt from them, such as a worker's pickled copy) showed the new one. Build a new one
    instead; the arrays are read-only copies for the same reason."""

    def _freeze(self):
        object.__setattr__(self, "_frozen", True)

    def __setattr__(self, name, value):
        if getattr(self, "_frozen", False):
            raise AttributeError(f"{type(self).__name__} is immutable: cannot set {name!r}; build a new "
                                 f"{type(self).__name__} (the operators built from this one keep its values)")
        object.__setattr__(self, name, value)

    def __delattr__(self, name):
        if getattr(self, "_frozen", False):
            raise AttributeError(f"{type(self).__name__} is immutable: cannot delete {name!r}")
        object.__delattr__(self, name)


class Grid2D(_Frozen):
    """A regular 2-D grid of rectangular cells (immutable).

    Parameters
    ----------
    n_rows : int
        Number of cells along depth.
    n_cols : int
        Number of cells along x.
    cell_size : float or tuple of (float, float), default=0.1
        Cell size in metres, either one value or ``(dx, dz)``.
    origin : tuple of (float, float), default=(0.0, 0.0)
        ``(x, depth)`` of the top-left corner of the grid, in metres.

    Notes
    -----
    Flat index of cell ``(row, col)`` is ``row * n_cols + col`` (see the module docstring).
    """

    def __init__(self, n_rows, n_cols, cell_size=0.1, origin=(0.0, 0.0)):
        owner = "Grid2D"
        self.n_rows = _positive_int(n_rows, "n_rows", owner)
        self.n_cols = _positive_int(n_cols, "n_cols", owner)
        if np.ndim(cell_size) == 0:
            dx = dz = _finite_float(cell_size, "cell_size", owner, positive=True)
        else:
            if isinstance(cell_size, (str, bytes)) or np.ndim(cell_size) != 1:
                raise ValueError(f"{owner}: cell_size must be a number or (dx, dz), got {cell_size!r}")
            sizes = tuple(cell_size)
            if len(sizes) != 2:
                raise ValueError(f"{owner}: cell_size must be a number or (dx, dz), got {cell_size!r}")
            dx = _finite_float(sizes[0], "cell_size[0] (dx)", owner, positive=True)
            dz = _finite_float(sizes[1], "cell_size[1] (dz)", owner, positive=True)
        self.dx, self.dz = dx, dz
        if isinstance(origin, (str, bytes)) or np.ndim(origin) != 1:
            raise ValueError(f"{owner}: origin must be (x, depth) in m, got {origin!r}")
        origin = tuple(origin)
        if len(origin) != 2:
            raise ValueError(f"{owner}: origin must be (x, depth), got {origin!r}")
        self.origin = (
            _finite_float(origin[0], "origin[0] (x)", owner),
            _finite_float(origin[1], "origin[1] (depth)", owner),
        )
        self._freeze()

    # -- description -----------------------------------------------------------------------------
    @classmethod
    def paper(cls):
        """The test grid of Lopez-Alvis et al. (2021): 129 rows x 65 columns of 0.1 m (6.5 m x 12.9 m).

        Returns
        -------
        Grid2D
            ``Grid2D(129, 65, 0.1)``, origin ``(0, 0)``.
        """
        return cls(129, 65, 0.1)

    @property
    def shape(self):
        """``(n_rows, n_cols)``: the shape of a model as an image."""
        return (self.n_rows, self.n_cols)

    @property
    def n_cells(self):
        return self.n_rows * self.n_cols

    @property
    def cell_size(self):
        return (self.dx, self.dz)

    @property
    def width(self):
        """Extent along x, in m."""
        return self.n_cols * self.dx

    @property
    def height(self):
        """Extent along depth, in m."""
        return self.n_rows * self.dz

    @property
    def x_edges(self):
        """The ``n_cols + 1`` cell boundaries along x, in m."""
        return self.origin[0] + self.dx * np.arange(self.n_cols + 1)

    @property
    def depth_edges(self):
        """The ``n_rows + 1`` cell boundaries along depth, in m."""
        return self.origin[1] + self.dz * np.arange(self.n_rows + 1)

    @property
    def cell_centers(self):
        """Array of shape (n_cells, 2): ``(x, depth)`` of each cell centre in flat order, in m."""
        x = self.origin[0] + self.dx * (np.arange(self.n_cols) + 0.5)
        z = self.origin[1] + self.dz * (np.arange(self.n_rows) + 0.5)
        zz, xx = np.meshgrid(z, x, indexing="ij")
        return np.column_stack([xx.ravel(), zz.ravel()])

    def contains(self, points, tol=_EDGE_TOL):
        """Whether each ``(x, depth)`` point lies in the closed grid rectangle (boundary included,
        within ``tol`` cell).

        Parameters
        ----------
        points : array-like of shape (n, 2) or (2,)
            ``(x, depth)`` in m; any leading shape is flattened to ``n`` points.
        tol : float, default=1e-9
            Tolerance beyond the boundary, in cells (``tol * dx`` along x, ``tol * dz`` along depth).

        Returns
        -------
        ndarray of bool of shape (n,)
            ``(1,)`` for a single point of shape ``(2,)``.

        Raises
        ------
        ValueError
            If the last axis of ``points`` is not of length 2.
        """
        p = np.asarray(points, dtype=float)
        if p.ndim < 1 or p.shape[-1] != 2:
            raise ValueError(f"Grid2D.contains: points must have a last axis of length 2 (x, depth), "
                             f"got shape {p.shape}")
        p = p.reshape(-1, 2)
        x0, z0 = self.origin
        tx, tz = tol * self.dx, tol * self.dz
        return (
            (p[:, 0] >= x0 - tx)
            & (p[:, 0] <= x0 + self.width + tx)
            & (p[:, 1] >= z0 - tz)
            & (p[:, 1] <= z0 + self.height + tz)
        )

    def _outside(self, owner, what, point):
        """The error message for a point outside the grid."""
        num = lambda v: f"{float(v):.10g}"        # noqa: E731  (12.9, not 12.900000000000002)
        x0, z0 = self.origin
        return (f"{owner}: {what} at (x, depth) = ({num(point[0])}, {num(point[1])}) m lies outside the grid: "
                f"expected x in [{num(x0)}, {num(x0 + self.width)}] m, depth in [{num(z0)}, "
                f"{num(z0 + self.height)}] m")

    def cell_index(self, x, depth):
        """Flat index of the cell holding each point (points on the far edges go to the last cell).

        Parameters
        ----------
        x, depth : float or array-like of float
            Coordinates in m, broadcast against each other.

        Returns
        -------
        int or ndarray of int
            ``row * n_cols + col`` in the broadcast shape of ``x`` and ``depth`` (a NumPy integer for
            scalars).

        Raises
        ------
        ValueError
            If a point lies outside the grid (beyond ``1e-9`` cell of its boundary) or is NaN.
        """
        x = np.asarray(x, dtype=float)
        depth = np.asarray(depth, dtype=float)
        points = np.stack(np.broadcast_arrays(x, depth), axis=-1).reshape(-1, 2)
        inside = self.contains(points)
        if not np.all(inside):
            i = int(np.argmin(inside))
            raise ValueError(self._outside("Grid2D.cell_index", f"point {i}", points[i]))
        col = np.clip(np.floor((x - self.origin[0]) / self.dx).astype(int), 0, self.n_cols - 1)
        row = np.clip(np.floor((depth - self.origin[1]) / self.dz).astype(int), 0, self.n_rows - 1)
        return row * self.n_cols + col

    # -- cell-order converters ---------------------------------------------------------------------
    def _check_last(self, values, n, what):
        a = np.asarray(values)
        if a.ndim < 1 or a.shape[-1] != n:
            raise ValueError(
                f"Grid2D{self.shape}: {what} must have a last axis of length {n}, got shape {a.shape}"
            )
        return a

    def to_image(self, values):
        """Flat vectors ``(..., n_cells)`` -> images ``(..., n_rows, n_cols)``, row 0 at the top.

        Parameters
        ----------
        values : array-like of shape (..., n_cells)
            Models in this package's flat order.

        Returns
        -------
        ndarray of shape (..., n_rows, n_cols)
            A reshaped view where NumPy can give one.

        Raises
        ------
        ValueError
            If the last axis is not of length ``n_cells``.
        """
        a = self._check_last(values, self.n_cells, "values")
        return a.reshape(a.shape[:-1] + self.shape)

    def to_flat(self, images):
        """Images ``(..., n_rows, n_cols)`` (row 0 at the top) -> flat vectors ``(..., n_cells)``.

        Parameters
        ----------
        images : array-like of shape (..., n_rows, n_cols)
            Models as images, row 0 at the top.

        Returns
        -------
        ndarray of shape (..., n_cells)
            In this package's flat order.

        Raises
        ------
        ValueError
            If the last two axes are not ``(n_rows, n_cols)``.
        """
        a = np.asarray(images)
        if a.ndim < 2 or a.shape[-2:] != self.shape:
            raise ValueError(
                f"Grid2D{self.shape}: images must end with shape {self.shape}, got shape {a.shape}"
            )
        return a.reshape(a.shape[:-2] + (self.n_cells,))

    def to_pygimli_order(self, values):
        """Flat vectors in this package's order -> pyGIMLi's order (x fastest, bottom row first).

        Parameters
        ----------
        values : array-like of shape (..., n_cells)
            Models in this package's flat order (row 0 at the top).

        Returns
        -------
        ndarray of shape (..., n_cells)
            The same models in pyGIMLi's cell order.

        Raises
        ------
        ValueError
            If the last axis is not of length ``n_cells``.
        """
        return self.to_flat(self.to_image(values)[..., ::-1, :])

    def from_pygimli_order(self, values):
        """Inverse of :meth:`to_pygimli_order`.

        Parameters
        ----------
        values : array-like of shape (..., n_cells)
            Models in pyGIMLi's cell order (x fastest, bottom row first).

        Returns
        -------
        ndarray of shape (..., n_cells)
            The same models in this package's flat order.

        Raises
        ------
        ValueError
            If the last axis is not of length ``n_cells``.
        """
        a = self._check_last(values, self.n_cells, "values")
        img = a.reshape(a.shape[:-1] + self.shape)[..., ::-1, :]
        return self.to_flat(img)

    # -- identity ------------------------------------------------------------------------------------
    def _key(self):
        return (self.n_rows, self.n_cols, self.dx, self.dz, self.origin)

    def __eq__(self, other):
        return isinstance(other, Grid2D) and self._key() == other._key()

    def __hash__(self):
        return hash(self._key())

    def __repr__(self):
        return (
            f"Grid2D(n_rows={self.n_rows}, n_cols={self.n_cols}, "
            f"cell_size=({self.dx!r}, {self.dz!r}), origin={self.origin!r})"
        )

    def __reduce__(self):
        return (Grid2D, (self.n_rows, self.n_cols, (self.dx, self.dz), self.origin))


def _positions(value, name):
    try:
        raw = np.asarray(value)
    except (TypeError, ValueError):
        raw = None
    if raw is None or raw.dtype.kind not in "iuf":
        what = "not an array" if raw is None else f"dtype {raw.dtype}"
        raise ValueError(f"CrossholeSurvey: {name} must be real (x, depth) positions in m, got "
                         f"{type(value).__name__} ({what})")
    p = np.array(raw, dtype=float, copy=True)
    if p.ndim == 1 and p.size == 2:
        p = p.reshape(1, 2)
    if p.ndim != 2 or p.shape[1] != 2:
        raise ValueError(
            f"CrossholeSurvey: {name} must be an array of shape (n, 2) of (x, depth) in m, "
            f"got shape {p.shape}"
        )
    if p.shape[0] == 0:
        raise ValueError(f"CrossholeSurvey: {name} is empty; at least one position is needed")
    if not np.all(np.isfinite(p)):
        bad = np.argwhere(~np.isfinite(p).all(axis=1)).ravel()
        raise ValueError(f"CrossholeSurvey: {name} holds NaN or inf at rows {bad.tolist()}")
    return p


class CrossholeSurvey(_Frozen):
    """Sources, receivers and the source-receiver pairs that make the data (immutable: read-only arrays).

    Parameters
    ----------
    sources : array-like of shape (n_sources, 2)
        Transmitter positions ``(x, depth)`` in m.
    receivers : array-like of shape (n_receivers, 2)
        Receiver positions ``(x, depth)`` in m.
    pairs : array-like of int of shape (n_data, 2), default=None
        ``(source index, receiver index)`` of each datum. ``None`` takes every pair in source-major
        order (datum ``i * n_receivers + j`` is source ``i`` to receiver ``j``), as in the paper.

    Raises
    ------
    ValueError
        On NaN/inf positions, empty inputs, out-of-range or duplicate pairs, or a pair whose source
        and receiver coincide.
    """

    def __init__(self, sources, receivers, pairs=None):
        self.sources = _positions(sources, "sources")
        self.receivers = _positions(receivers, "receivers")
        ns, nr = len(self.sources), len(self.receivers)
        if pairs is None:
            s, r = np.meshgrid(np.arange(ns), np.arange(nr), indexing="ij")
            pairs = np.column_stack([s.ravel(), r.ravel()])
        try:
            pairs = np.asarray(pairs)
        except (TypeError, ValueError):
            raise ValueError(f"CrossholeSurvey: pairs must be an integer array of shape (n_data, 2), "
                             f"got {type(pairs).__name__}") from None
        if pairs.dtype.kind not in "iuf":
            raise ValueError(f"CrossholeSurvey: pairs must hold integer indices, got dtype {pairs.dtype}")
        if pairs.ndim != 2 or pairs.shape[1] != 2 or pairs.shape[0] == 0:
            raise ValueError(
                f"CrossholeSurvey: pairs must be a non-empty integer array of shape (n_data, 2), "
                f"got shape {pairs.shape}"
            )
        if not np.issubdtype(pairs.dtype, np.integer):
            if not np.all(np.isfinite(pairs)) or np.any(pairs != np.round(pairs)):
                raise ValueError("CrossholeSurvey: pairs must hold integer indices")
        pairs = pairs.astype(np.int64)
        if pairs[:, 0].min() < 0 or pairs[:, 0].max() >= ns:
            raise ValueError(f"CrossholeSurvey: source indices in pairs must be in [0, {ns}), got "
                             f"[{pairs[:, 0].min()}, {pairs[:, 0].max()}]")
        if pairs[:, 1].min() < 0 or pairs[:, 1].max() >= nr:
            raise ValueError(f"CrossholeSurvey: receiver indices in pairs must be in [0, {nr}), got "
                             f"[{pairs[:, 1].min()}, {pairs[:, 1].max()}]")
        uniq, counts = np.unique(pairs, axis=0, return_counts=True)
        if np.any(counts > 1):
            raise ValueError(
                f"CrossholeSurvey: duplicate pairs {uniq[counts > 1][:5].tolist()} (each pair once)"
            )
        dist = np.hypot(*(self.sources[pairs[:, 0]] - self.receivers[pairs[:, 1]]).T)  # no underflow
        if np.any(dist == 0):
            raise ValueError(
                f"CrossholeSurvey: pairs {pairs[dist == 0][:5].tolist()} have source == receiver"
            )
        self.pairs = pairs
        for array in (self.sources, self.receivers, self.pairs):    # copies of the inputs: read-only
            array.setflags(write=False)
        self._freeze()

    @classmethod
    def paper(cls, source_x=0.0, receiver_x=6.5):
        """The paper's survey: 25 transmitters and 25 receivers at 0.5, 1.0, ..., 12.5 m depth.

        The nonlinear case puts the boreholes at x = 0 and 6.5 m (the defaults); the paper's linear
        case at 0.01 and 6.49 m, keeping straight rays just inside the grid.

        Parameters
        ----------
        source_x : float, default=0.0
            x of the transmitter borehole, in m.
        receiver_x : float, default=6.5
            x of the receiver borehole, in m.

        Returns
        -------
        CrossholeSurvey
            625 data, source-major (datum ``i * 25 + j`` is transmitter ``i`` to receiver ``j``).

        Raises
        ------
        ValueError
            If ``source_x`` or ``receiver_x`` is not a finite real number, or they are equal (source
            and receiver coincide).
        """
        source_x = _finite_float(source_x, "source_x", "CrossholeSurvey.paper")
        receiver_x = _finite_float(receiver_x, "receiver_x", "CrossholeSurvey.paper")
        depth = 0.5 * np.arange(1, 26)
        return cls(
            np.column_stack([np.full(25, source_x), depth]),
            np.column_stack([np.full(25, receiver_x), depth]),
        )

    @property
    def n_sources(self):
        return len(self.sources)

    @property
    def n_receivers(self):
        return len(self.receivers)

    @property
    def n_data(self):
        return len(self.pairs)

    @property
    def source_positions(self):
        """``(n_data, 2)``: the source of each datum."""
        return self.sources[self.pairs[:, 0]]

    @property
    def receiver_positions(self):
        """``(n_data, 2)``: the receiver of each datum."""
        return self.receivers[self.pairs[:, 1]]

    @property
    def distances(self):
        """``(n_data,)``: straight source-receiver distance of each datum, in m."""
        return np.linalg.norm(self.source_positions - self.receiver_positions, axis=1)

    def reciprocal(self):
        """The same data with sources and receivers swapped (datum order kept).

        Returns
        -------
        CrossholeSurvey
            Datum ``k`` runs from this survey's receiver of datum ``k`` to its source.
        """
        return CrossholeSurvey(self.receivers, self.sources, self.pairs[:, ::-1].copy())

    def check_in(self, grid, owner="CrossholeSurvey"):
        """Raise ValueError unless every sensor lies inside ``grid`` (boundary included).

        Parameters
        ----------
        grid : Grid2D
            The grid the sensors must lie in (within ``1e-9`` cell of its boundary).
        owner : str, default="CrossholeSurvey"
            The name that starts the error message.

        Raises
        ------
        ValueError
            Naming the first source, then receiver, outside ``grid``.
        """
        for name, pos in (("source", self.sources), ("receiver", self.receivers)):
            inside = grid.contains(pos)
            if not np.all(inside):
                i = int(np.argmin(inside))
                raise ValueError(grid._outside(owner, f"{name} {i}", pos[i]))

    def __eq__(self, other):
        return (
            isinstance(other, CrossholeSurvey)
            and np.array_equal(self.sources, other.sources)
            and np.array_equal(self.receivers, other.receivers)
            and np.array_equal(self.pairs, other.pairs)
        )

    __hash__ = None     # type: ignore[assignment]  # equal by value: unhashable, as NumPy arrays

    def __repr__(self):
        return f"CrossholeSurvey(n_sources={self.n_sources}, n_receivers={self.n_receivers}, n_data={self.n_data})"

    def __reduce__(self):
        return (CrossholeSurvey, (self.sources, self.receivers, self.pairs))


def paper_crosshole(source_x=0.0, receiver_x=6.5):
    """``(Grid2D.paper(), CrossholeSurvey.paper(source_x, receiver_x))``: the paper's test case.

    Parameters
    ----------
    source_x : float, default=0.0
        x of the transmitter borehole, in m (the paper's linear case: 0.01).
    receiver_x : float, default=6.5
        x of the receiver borehole, in m (the paper's linear case: 6.49).

    Returns
    -------
    grid : Grid2D
        129 x 65 cells of 0.1 m.
    survey : CrossholeSurvey
        25 transmitters x 25 receivers at 0.5, 1.0, ..., 12.5 m depth (625 data).
    """
    return Grid2D.paper(), CrossholeSurvey.paper(source_x, receiver_x)
