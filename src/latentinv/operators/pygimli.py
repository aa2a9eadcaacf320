"""pyGIMLi compatibility: the modelling interface pyGIMLi users know, and data/mesh converters.

pyGIMLi (optional extra ``latentinv[pygimli]``) is imported only inside the functions that need it.
pyGIMLi's conventions: ``y`` points up (``y = -depth``), cells of a rectilinear grid are ordered with
``x`` fastest from the bottom row up, a ``DataContainer`` holds one list of sensors and the index
columns ``s`` (shot) and ``g`` (geophone), and traveltimes in ``t``.
"""
from __future__ import annotations

import numbers
import warnings

import numpy as np
import scipy.sparse as sp

from ..geometry import CrossholeSurvey, Grid2D
from ._base import IMPLAUSIBLE_SPEED, ForwardOperator

__all__ = [
    "PyGimliOperator", "to_pygimli_data", "from_pygimli_data", "to_pygimli_mesh",
    "grid_from_pygimli_mesh",
]


def _import_pygimli():
    try:
        import pygimli as pg
    except ImportError as exc:  # pragma: no cover - depends on the environment
        raise ImportError(
            "this feature needs pyGIMLi: pip install 'latentinv[pygimli]' (or pip install pygimli)"
        ) from exc
    return pg


def to_pygimli_mesh(grid):
    """A pyGIMLi rectilinear mesh of ``grid`` (``y = -depth``; cells in pyGIMLi's order)."""
    pg = _import_pygimli()
    if not isinstance(grid, Grid2D):
        raise TypeError(f"to_pygimli_mesh: grid must be a Grid2D, got {type(grid).__name__}")
    return pg.createGrid(x=grid.x_edges, y=-grid.depth_edges[::-1])


def grid_from_pygimli_mesh(mesh, rtol=1e-9):
    """The :class:`Grid2D` of a regular rectilinear pyGIMLi mesh.

    Raises
    ------
    TypeError
        If ``mesh`` is not a pyGIMLi mesh.
    ValueError
        If the mesh is not 2-D, has no cells, is not rectilinear (a cell that is not an axis-aligned
        rectangle of 4 nodes, checked first), is not a regular grid of equal rectangles, or its cells
        are not in pyGIMLi's ``createGrid`` order.
    """
    if not all(hasattr(mesh, name) for name in ("dim", "nodes", "cells", "cellCount")):
        raise TypeError(f"grid_from_pygimli_mesh: mesh must be a pyGIMLi mesh, got {type(mesh).__name__}")
    if mesh.dim() != 2:
        raise ValueError(f"grid_from_pygimli_mesh: expected a 2-D mesh, got a {mesh.dim()}-D mesh "
                         f"({mesh.cellCount()} cells)")
    if mesh.cellCount() == 0:
        raise ValueError("grid_from_pygimli_mesh: the mesh has no cells")
    # rectilinear first: every cell an axis-aligned rectangle (a triangle mesh whose cell count happens to
    # equal that of a grid on its node coordinates is not a grid whose cells are out of order)
    for k, cell in enumerate(mesh.cells()):
        corners = np.array([[n.pos()[0], n.pos()[1]] for n in cell.nodes()], dtype=float).reshape(-1, 2)
        rounded = np.round(corners, 12)
        n_x, n_y = (len(np.unique(rounded[:, i])) for i in (0, 1))
        if len(corners) != 4 or n_x != 2 or n_y != 2 or len(np.unique(rounded, axis=0)) != 4:
            what = {3: "a triangle", 4: "a quadrilateral that is not an axis-aligned rectangle"}.get(
                len(corners), f"a cell of {len(corners)} nodes")
            raise ValueError(
                f"grid_from_pygimli_mesh: expected a rectilinear grid (every cell an axis-aligned rectangle "
                f"of 4 nodes, as pg.createGrid makes), got cell {k}: {what}, nodes "
                f"{[tuple(float(v) for v in c) for c in corners]}")
    nodes = np.array([[n.pos()[0], n.pos()[1]] for n in mesh.nodes()])
    xs, ys = np.unique(np.round(nodes[:, 0], 12)), np.unique(np.round(nodes[:, 1], 12))
    n_cols, n_rows = len(xs) - 1, len(ys) - 1
    if n_cols < 1 or n_rows < 1 or mesh.cellCount() != n_rows * n_cols:
        raise ValueError(
            f"grid_from_pygimli_mesh: expected a rectilinear grid, got {mesh.cellCount()} cells on "
            f"{len(xs)} x {len(ys)} distinct node coordinates"
        )
    dx, dy = np.diff(xs), np.diff(ys)
    if not (np.allclose(dx, dx[0], rtol=rtol) and np.allclose(dy, dy[0], rtol=rtol)):
        raise ValueError("grid_from_pygimli_mesh: the mesh spacing is not uniform; Grid2D needs equal cells")
    grid = Grid2D(n_rows, n_cols, (float(dx[0]), float(dy[0])), origin=(float(xs[0]), float(-ys[-1])))
    centers = np.array([[c.center()[0], -c.center()[1]] for c in mesh.cells()])
    expected = grid.to_pygimli_order(grid.cell_centers.T).T
    if not np.allclose(centers, expected, atol=1e-9 * max(grid.dx, grid.dz)):
        raise ValueError("grid_from_pygimli_mesh: the mesh cells are not in pyGIMLi's createGrid order")
    return grid


def to_pygimli_data(survey, times=None):
    """A pyGIMLi ``DataContainer`` (sensors, ``s``/``g``, ``valid``, optional ``t`` in ns) of ``survey``.

    Sources and receivers at the same position share one pyGIMLi sensor. Every datum is marked valid
    (``valid`` = 1), so that pyGIMLi's ``removeInvalid`` keeps it.
    """
    pg = _import_pygimli()
    if not isinstance(survey, CrossholeSurvey):
        raise TypeError(f"to_pygimli_data: survey must be a CrossholeSurvey, got {type(survey).__name__}")
    positions = np.vstack([survey.sources, survey.receivers])
    uniq, inverse = np.unique(np.round(positions, 12), axis=0, return_inverse=True)
    inverse = inverse.ravel()
    data = pg.DataContainer()
    data.registerSensorIndex("s")
    data.registerSensorIndex("g")
    for x, depth in uniq:
        data.createSensor(pg.Pos(float(x), float(-depth)))
    data.resize(survey.n_data)
    data.set("s", pg.Vector(inverse[survey.pairs[:, 0]].astype(float)))
    data.set("g", pg.Vector(inverse[survey.n_sources + survey.pairs[:, 1]].astype(float)))
    # every datum valid: a resized container holds valid = 0, which pyGIMLi's removeInvalid and
    # checkDataValidity read as invalid (they would remove every datum)
    data.set("valid", pg.Vector(np.ones(survey.n_data)))
    if times is not None:
        t = np.asarray(times, dtype=float)
        if t.shape != (survey.n_data,):
            raise ValueError(
                f"to_pygimli_data: times must have shape ({survey.n_data},), got {t.shape}"
            )
        data.set("t", pg.Vector(t))
    return data


def from_pygimli_data(data):
    """``(CrossholeSurvey, times or None)`` from a pyGIMLi ``DataContainer``.

    The survey's sources are the sensors used as ``s``, its receivers those used as ``g`` (in sensor
    order), and its pairs follow the data order.

    Data that pyGIMLi marks invalid (``valid`` other than 1, the data its ``removeInvalid`` removes) are
    dropped, with a UserWarning that says how many and names the first: the survey's pairs and the times
    are those of the valid data, in their order. A ``valid`` column of zeros only is read as unset (as
    pyGIMLi's ``haveData('valid')`` does: a container resized in code holds zeros there until
    ``markValid``) and every datum is kept; a container whose every datum was marked invalid looks the
    same, and is read whole. Any other ``valid`` column with no 1 in it is a ValueError.

    Traveltimes ``t`` are returned as they are: latentinv expects ns (slowness in ns/m), while pyGIMLi's
    own traveltime examples use s. A UserWarning says so when a datum's straight distance over its time
    exceeds 1 m/ns (light travels 0.3 m/ns), which times in s do by a factor of about 1e9.

    Raises
    ------
    ValueError
        If an ``s`` or ``g`` index of a valid datum is not a sensor (pyGIMLi's -1, or past the last
        sensor), a sensor has a z coordinate, or the container holds no data, or no valid data.
    """
    owner = "from_pygimli_data"
    if not all(hasattr(data, name) for name in ("sensorPositions", "haveData", "size")):
        raise TypeError(f"{owner}: data must be a pyGIMLi DataContainer, got {type(data).__name__}")
    raw = np.array([[p[0], p[1], p[2]] for p in data.sensorPositions()], dtype=float).reshape(-1, 3)
    if np.any(raw[:, 2] != 0):
        k = int(np.flatnonzero(raw[:, 2] != 0)[0])
        raise ValueError(f"{owner}: sensor {k} has z = {raw[k, 2]:.10g} m; expected 2-D sensors (x, y)")
    sensors = np.column_stack([raw[:, 0], -raw[:, 1]])
    s = np.asarray(data["s"], dtype=int)
    g = np.asarray(data["g"], dtype=int)
    if len(s) == 0:
        raise ValueError(f"{owner}: the DataContainer holds no data")
    kept = np.arange(len(s))            # the container's datum numbers of the data read
    if data.haveData("valid"):          # False when absent or all zero (never marked)
        valid = np.asarray(data["valid"], dtype=float)
        if valid.shape != s.shape:
            raise ValueError(f"{owner}: the 'valid' column has {valid.size} values, expected one per datum "
                             f"({len(s)})")
        invalid = np.flatnonzero(valid != 1)
        if len(invalid) == len(s):
            raise ValueError(f"{owner}: all {len(s)} data are marked invalid (pyGIMLi's 'valid' column is not 1 "
                             "for any datum); expected at least one valid datum")
        if len(invalid):
            warnings.warn(f"{owner}: {len(invalid)} of {len(s)} data are marked invalid (pyGIMLi's 'valid' column "
                          f"is not 1; first: datum {int(invalid[0])}) and were dropped: the survey and the times "
                          f"hold the other {len(s) - len(invalid)}", UserWarning, stacklevel=2)
            kept = np.flatnonzero(valid == 1)
            s, g = s[kept], g[kept]
    for name, index in (("s", s), ("g", g)):
        bad = np.flatnonzero((index < 0) | (index >= len(sensors)))
        if len(bad):
            raise ValueError(f"{owner}: {name!r} of datum {int(kept[bad[0]])} is {int(index[bad[0]])}, expected a "
                             f"sensor index in [0, {len(sensors)})")
    src_ids, s_idx = np.unique(s, return_inverse=True)
    rcv_ids, g_idx = np.unique(g, return_inverse=True)
    survey = CrossholeSurvey(sensors[src_ids], sensors[rcv_ids], np.column_stack([s_idx, g_idx]))
    times = None
    if data.haveData("t"):
        times = np.asarray(data["t"], dtype=float)[kept].copy()
        with np.errstate(divide="ignore", invalid="ignore"):
            speed = np.where(times > 0, survey.distances / times, 0.0)
        if np.any(speed > IMPLAUSIBLE_SPEED):
            k = int(np.argmax(speed))
            warnings.warn(f"{owner}: datum {int(kept[k])} is {survey.distances[k]:.3g} m in {times[k]:.3g} ns, "
                          f"{speed[k]:.3g} m/ns, faster than light (0.3 m/ns): latentinv's traveltimes are in "
                          "ns (pyGIMLi's are in s: multiply them by 1e9)", UserWarning, stacklevel=2)
    return survey, times


class PyGimliOperator(ForwardOperator):
    """The shortest-path traveltime operator behind pyGIMLi's modelling interface.

    Models are slowness per cell in **pyGIMLi's cell order** (see :meth:`Grid2D.to_pygimli_order`),
    as a pyGIMLi user passes them. ``response(model)``, ``createJacobian(model)`` then ``jacobian()``
    behave as in pyGIMLi's ``TravelTimeDijkstraModelling``; the torch ``forward`` of the package's
    operator contract is available too.

    Parameters
    ----------
    grid : Grid2D
    survey : CrossholeSurvey
        Every sensor must lie on a graph node (a cell corner or a secondary node), under both
        backends: pyGIMLi itself would move it to the nearest node without a word (ValueError).
    n_secondary_nodes : int, default=3
        Secondary nodes per cell edge (pyGIMLi's ``secNodes``).
    backend : {"latentinv", "pygimli"}, default="latentinv"
        ``"latentinv"`` computes with :class:`~latentinv.operators.ShortestPathOperator` (C++ or its
        Python fallback; pyGIMLi is not needed); ``"pygimli"`` delegates to pyGIMLi's own
        ``TravelTimeDijkstraModelling`` (pyGIMLi must be installed). Both give the same traveltimes;
        their Jacobians differ where a path runs along a side shared by two cells: latentinv credits
        that segment to the cell whose (smaller) slowness its time used, so ``J(m) @ m == response(m)``,
        while pyGIMLi's Jacobian may credit it to the other cell (on a 30 x 20 grid with 30 rays,
        ``J(m) @ m`` was off by up to 1.9 ns). Use ``"latentinv"`` for gradients (an inversion).
    n_threads : int or None, default=None
        Threads of the latentinv engine (see :class:`~latentinv.operators.ShortestPathOperator`). A
        positive integer or None under either backend (ValueError otherwise); ``backend="pygimli"``
        ignores it (pyGIMLi's own ``TravelTimeDijkstraModelling`` does the work), as the Python backend
        of ``ShortestPathOperator`` does. The attribute ``n_threads`` is the engine's thread count
        (resolved, as ``ShortestPathOperator``'s: the CPUs available for None), and setting it sets the
        engine's (what the inverters do in parallel workers); ``get_params`` keeps the value given.
    """

    max_slowness_contrast = 1e8   # a graph method, as ShortestPathOperator

    @property
    def n_threads(self):
        """The engine's threads (latentinv backend); under pyGIMLi's, the value given (unused there)."""
        engine = self.__dict__.get("_engine")
        return engine.n_threads if self._backend_name == "latentinv" and engine is not None else self._n_threads

    @n_threads.setter
    def n_threads(self, value):
        from .shortest_path import check_n_threads
        check_n_threads(value, "PyGimliOperator")
        self._n_threads = value
        engine = self.__dict__.get("_engine")
        if self._backend_name == "latentinv" and engine is not None:
            engine.n_threads = value        # None too: the engine resolves it to the CPUs available

    def __init__(self, grid, survey, n_secondary_nodes=3, backend="latentinv", n_threads=None):
        if backend not in ("latentinv", "pygimli"):
            raise ValueError(
                f"PyGimliOperator: backend must be 'latentinv' or 'pygimli', got {backend!r}"
            )
        if not isinstance(grid, Grid2D):
            raise TypeError(f"PyGimliOperator: grid must be a Grid2D, got {type(grid).__name__}")
        if not isinstance(survey, CrossholeSurvey):
            raise TypeError(
                f"PyGimliOperator: survey must be a CrossholeSurvey, got {type(survey).__name__}"
            )
        if (isinstance(n_secondary_nodes, bool) or not isinstance(n_secondary_nodes, numbers.Integral)
                or not 0 <= n_secondary_nodes <= 1000):
            raise ValueError(f"PyGimliOperator: n_secondary_nodes must be an integer in [0, 1000], "
                             f"got {n_secondary_nodes!r}")
        from .shortest_path import check_n_threads

        check_n_threads(n_threads, "PyGimliOperator")   # under either backend, as ShortestPathOperator
        self.grid, self.survey = grid, survey
        self.n_secondary_nodes = n_secondary_nodes
        self._backend_name = backend
        self._n_threads_requested = self._n_threads = n_threads
        self.n_data, self.n_params = survey.n_data, grid.n_cells
        self._jacobian = None
        if backend == "latentinv":
            from .shortest_path import ShortestPathOperator

            self._engine = ShortestPathOperator(grid, survey, n_secondary_nodes=n_secondary_nodes,
                                                n_threads=n_threads)
            self.backend = self._engine.backend
        else:
            pg = _import_pygimli()
            from pygimli.physics.traveltime import TravelTimeDijkstraModelling

            from .shortest_path import sensor_nodes

            survey.check_in(grid, owner="PyGimliOperator")
            # pyGIMLi moves a sensor off every node to the nearest one without a word: refuse it, as
            # the latentinv backend does
            sensor_nodes(grid, survey.sources, n_secondary_nodes, "source", "PyGimliOperator")
            sensor_nodes(grid, survey.receivers, n_secondary_nodes, "receiver", "PyGimliOperator")
            mesh = to_pygimli_mesh(grid)
            if n_secondary_nodes:
                mesh = pg.Mesh(mesh)
                mesh.createSecondaryNodes(int(n_secondary_nodes))
            fop = TravelTimeDijkstraModelling()
            fop.setData(to_pygimli_data(survey))
            fop.setMesh(mesh, ignoreRegionManager=True)
            self._engine, self._mesh = fop, mesh
            self.backend = "pygimli"

    def get_params(self, deep=False):
        """The constructor parameters, by name (as scikit-learn's ``get_params``; ``n_threads`` as given).

        Parameters
        ----------
        deep : bool, default=False
            Unused (the parameters hold no estimators); scikit-learn's signature.

        Returns
        -------
        dict
            ``grid``, ``survey``, ``n_secondary_nodes``, ``backend``, ``n_threads``.
        """
        return {"grid": self.grid, "survey": self.survey, "n_secondary_nodes": self.n_secondary_nodes,
                "backend": self._backend_name, "n_threads": self._n_threads_requested}

    def __reduce__(self):       # the resolved count, as ShortestPathOperator pickles (workers keep it)
        return (PyGimliOperator, (self.grid, self.survey, self.n_secondary_nodes, self._backend_name,
                                  self.n_threads))

    def __repr__(self):
        return (f"PyGimliOperator(grid={self.grid!r}, survey={self.survey!r}, "
                f"n_secondary_nodes={self.n_secondary_nodes}, backend={self._backend_name!r})")

    # -- the package's contract (models in pyGIMLi order) -------------------------------------------
    def _response_and_jacobian(self, m, want_jacobian):
        if self.backend == "pygimli":
            pg = _import_pygimli()
            times, jacs = [], []
            for model in m:
                if want_jacobian:
                    self._engine.createJacobian(pg.Vector(model))
                    jac = pg.utils.sparseMatrix2csr(self._engine.jacobian())
                    jacs.append(sp.csr_matrix(jac))
                    times.append(np.asarray(self._engine.response(pg.Vector(model))))
                else:
                    times.append(np.asarray(self._engine.response(pg.Vector(model))))
            return np.array(times, dtype=float), (jacs if want_jacobian else None)
        ours = self.grid.from_pygimli_order(m)
        t, jacs = self._engine._response_and_jacobian(ours, want_jacobian)
        if want_jacobian:
            # columns from the package's order to pyGIMLi's: column j of ours is cell perm[j]
            perm = self.grid.to_pygimli_order(np.arange(self.n_params))
            inverse = np.empty_like(perm)
            inverse[perm] = np.arange(self.n_params)
            jacs = [J[:, inverse].tocsr() for J in jacs]
        return t, jacs

    # -- pyGIMLi's interface ------------------------------------------------------------------------
    def createJacobian(self, model):  # noqa: N802 - pyGIMLi's name
        """Compute and keep the Jacobian at ``model`` (pyGIMLi order); read it with :meth:`jacobian`.

        Parameters
        ----------
        model : array-like of shape (n_params,)
            One slowness model (ns/m) in pyGIMLi's cell order.

        Raises
        ------
        ValueError
            On a batch of models or a model :meth:`response` refuses.
        """
        self._jacobian = ForwardOperator.jacobian(self, model)

    def jacobian(self, m=None):
        """With no argument, the Jacobian of the last :meth:`createJacobian` (pyGIMLi style).

        Parameters
        ----------
        m : array-like of shape (n_params,), default=None
            One slowness model (ns/m) in pyGIMLi's cell order: the Jacobian at ``m`` (nothing kept).

        Returns
        -------
        scipy.sparse.csr_matrix of shape (n_data, n_params)
            Ray length per cell (m), columns in pyGIMLi's cell order.

        Raises
        ------
        RuntimeError
            With no argument, before any :meth:`createJacobian`.
        """
        if m is not None:
            return ForwardOperator.jacobian(self, m)
        if self._jacobian is None:
            raise RuntimeError("PyGimliOperator: call createJacobian(model) before jacobian()")
        return self._jacobian

    def data(self, times=None):
        """The survey as a pyGIMLi ``DataContainer`` (with ``t`` when ``times`` are given).

        Parameters
        ----------
        times : array-like of shape (n_data,), default=None
            Traveltimes in ns, stored as the container's ``t``.

        Returns
        -------
        pygimli.DataContainer
            Sensors at ``(x, -depth)``, ``s`` and ``g`` per datum, every datum valid.

        Raises
        ------
        ValueError
            If ``times`` is not of shape ``(n_data,)``.
        ImportError
            Without pyGIMLi.
        """
        return to_pygimli_data(self.survey, times)

    def mesh(self):
        """The grid as a pyGIMLi mesh (cells in pyGIMLi order).

        Returns
        -------
        pygimli.Mesh
            A rectilinear mesh with ``y = -depth`` (no secondary nodes).

        Raises
        ------
        ImportError
            Without pyGIMLi.
        """
        return to_pygimli_mesh(self.grid)
