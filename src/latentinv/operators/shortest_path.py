"""Shortest-path (graph) traveltime operator with secondary nodes: C++ engine and NumPy/SciPy fallback.

The graph method of Giroux & Larouche (2013), as in pyGIMLi's ``TravelTimeDijkstraModelling``:
graph nodes are the cell corners plus ``n_secondary_nodes`` equally spaced nodes on every cell side;
inside each cell every pair of its ``4 + 4 n`` boundary nodes is joined by a straight segment of
traveltime ``length x slowness(cell)`` (a segment along a side shared by two cells takes the smaller
slowness). The first-arrival time of a datum is the shortest-path time from its source node to its
receiver node (one Dijkstra per source); its Jacobian row holds the length (m) of the back-tracked
path in each cell, credited to the cell whose slowness each segment used, so that
``J(m) @ m == response(m)``. This is the paper's nonlinear forward operator (its linearised update,
Eq. 28, uses this Jacobian).

Node numbering, local lengths and the tie rule are identical in both backends (and documented in
``cpp/shortest_path.hpp``):

- corners ``(R+1)(C+1)``: ``node = i*(C+1) + j`` (``i``: depth line, ``j``: x line);
- horizontal sides ``(R+1) C n``: ``NC + (i*C + j)*n + k`` (side on depth line ``i`` from x line
  ``j`` to ``j+1``, ``k``-th node from the left);
- vertical sides ``R (C+1) n``: ``NC + NH + (i*(C+1) + j)*n + k`` (side on x line ``j`` from depth
  line ``i`` to ``i+1``, ``k``-th node from the top);
- a segment's length is ``sqrt(ddx*ddx + ddz*ddz)`` with ``ddx = (a_p/(n+1))*dx - (a_q/(n+1))*dx``
  (``a`` the integer local coordinate), so weights are bitwise equal in C++ and NumPy;
- predecessor of node ``u``: among all ``(v, cell)`` with ``fl(d[v] + fl(L*s[cell])) == d[u]`` the
  lexicographically smallest ``(v, w, cell)``. With it both backends return the same paths, hence
  Jacobians equal to rounding, even where many paths tie (homogeneous media).

Engine notes (C++): edges are generated from the cell-local structure (no adjacency list). Two
exact solvers give the same distances bit for bit (proof in ``cpp/shortest_path.hpp``):

- ``"wavefront"`` (the default): multi-source label correcting, 4 sources per pass in the SIMD
  lanes of one vector (AVX2 where the CPU has it, else a portable kernel with the same layout);
  cells are processed in the order of a bucket queue keyed by their smallest new label, a cell only
  when one of its nodes changed since its last processing, until nothing changes;
- ``"dijkstra"``: one Dijkstra run per source with an exact bucket queue (a 4-ary heap for extreme
  slowness contrasts), stopped once the source's receivers are settled;
- ``"sweep"`` (ablation): the label-correcting solver with cells in alternating sweep orders.

Threads run over tasks (a group of sources of one model, or one source for Dijkstra) with the GIL
released, and results do not depend on the thread count, the solver or the SIMD kernel.
``submit`` queues the same tasks on a persistent pool of worker threads and returns at once.

Limitation: sources and receivers must sit on graph nodes (a corner or a secondary node, within
``1e-9`` of the cell size), as pyGIMLi requires them on mesh nodes.
"""
from __future__ import annotations

import numbers

import numpy as np
import scipy.sparse as sp
from scipy.sparse.csgraph import dijkstra

from .._backend import core, resolve_backend
from .._cpus import available_cpus
from ..geometry import CrossholeSurvey, Grid2D
from ._base import ForwardOperator, PendingResponse

__all__ = ["ShortestPathOperator", "sensor_nodes", "local_lengths", "check_n_threads"]

_NODE_TOL = 1e-9  # a sensor is on a node when closer than this fraction of a cell


# -- graph description shared by both backends ------------------------------------------------------
def _local_coordinates(n):
    """Integer local coordinates ``(a, b)`` (units of 1/(n+1) cell) of the 4+4n boundary nodes."""
    k = np.arange(1, n + 1)
    a = np.concatenate([[0, n + 1, 0, n + 1], k, k, np.zeros(n, int), np.full(n, n + 1)])
    b = np.concatenate([[0, 0, n + 1, n + 1], np.zeros(n, int), np.full(n, n + 1), k, k])
    return a.astype(np.int64), b.astype(np.int64)


def _check_length_range(grid, n_secondary_nodes, owner):
    """Refuse cells whose segment lengths ``sqrt(ddx*ddx + ddz*ddz)`` leave float64's normal range.

    Below it the squares underflow (lengths of 0, or rounded to a few digits: silently wrong times);
    above it they overflow to infinite lengths. The bounds are dx and dz in
    ``[sqrt(tiny) * (n + 1), sqrt(max / 2)]``: about 1e-154 to 1e154 m.
    """
    n = int(n_secondary_nodes)
    info = np.finfo(np.float64)
    lo, hi = float(np.sqrt(info.tiny)) * (n + 1), float(np.sqrt(info.max / 2))
    if not (lo <= min(grid.dx, grid.dz) and max(grid.dx, grid.dz) <= hi):
        raise ValueError(
            f"{owner}: cell size (dx, dz) = ({grid.dx:.3g}, {grid.dz:.3g}) m is outside the range in which "
            f"the graph's segment lengths can be computed in float64 with {n} secondary nodes; expected "
            f"dx and dz in [{lo:.3g}, {hi:.3g}] m. Express the geometry in other units (traveltimes scale "
            f"with the cell size).")


def local_lengths(grid, n_secondary_nodes):
    """Table ``(4+4n, 4+4n)`` of the lengths (m) between the boundary nodes of one cell.

    Computed with the same operations, in the same order, as the C++ engine, so both are bitwise
    equal (IEEE division, multiplication, subtraction and sqrt are correctly rounded).
    """
    n = int(n_secondary_nodes)
    a, b = _local_coordinates(n)
    frac = np.arange(n + 2, dtype=np.float64) / np.float64(n + 1)
    ox, oz = frac * grid.dx, frac * grid.dz
    ddx = ox[a][:, None] - ox[a][None, :]
    ddz = oz[b][:, None] - oz[b][None, :]
    return np.sqrt(ddx * ddx + ddz * ddz)


def _node_counts(grid, n):
    R, C = grid.n_rows, grid.n_cols
    n_corner = (R + 1) * (C + 1)
    n_horizontal = (R + 1) * C * n
    n_vertical = R * (C + 1) * n
    return n_corner, n_horizontal, n_vertical


def _node_positions(grid, n):
    """``(n_nodes, 2)`` positions ``(x, depth)`` in m of all graph nodes, in node order."""
    R, C = grid.n_rows, grid.n_cols
    x0, z0 = grid.origin
    frac = np.arange(1, n + 1) / (n + 1)
    zi, xj = np.meshgrid(np.arange(R + 1), np.arange(C + 1), indexing="ij")
    corners = np.column_stack([x0 + xj.ravel() * grid.dx, z0 + zi.ravel() * grid.dz])
    i, j, k = np.meshgrid(np.arange(R + 1), np.arange(C), np.arange(n), indexing="ij")
    horizontal = np.column_stack([x0 + (j.ravel() + frac[k.ravel()]) * grid.dx, z0 + i.ravel() * grid.dz])
    i, j, k = np.meshgrid(np.arange(R), np.arange(C + 1), np.arange(n), indexing="ij")
    vertical = np.column_stack([x0 + j.ravel() * grid.dx, z0 + (i.ravel() + frac[k.ravel()]) * grid.dz])
    return np.concatenate([corners, horizontal, vertical])


def _cell_nodes(grid, n):
    """``(n_cells, 4+4n)`` global node ids of every cell's boundary nodes, in local order."""
    R, C = grid.n_rows, grid.n_cols
    n_corner, n_horizontal, _ = _node_counts(grid, n)
    r, c = np.divmod(np.arange(R * C, dtype=np.int64), C)
    tl = r * (C + 1) + c
    k = np.arange(n, dtype=np.int64)
    top = (n_corner + (r * C + c) * n)[:, None] + k
    bottom = top + C * n
    left = (n_corner + n_horizontal + (r * (C + 1) + c) * n)[:, None] + k
    right = left + n
    corners = np.column_stack([tl, tl + 1, tl + C + 1, tl + C + 2])
    return np.concatenate([corners, top, bottom, left, right], axis=1)


def check_n_threads(n_threads, owner):
    """Refuse an ``n_threads`` that is neither None nor a positive integer (ValueError naming ``owner``)."""
    if n_threads is not None and (isinstance(n_threads, bool)
                                  or not isinstance(n_threads, numbers.Integral) or n_threads < 1):
        raise ValueError(f"{owner}: n_threads must be a positive integer or None, got {n_threads!r}")
    return n_threads


def sensor_nodes(grid, positions, n_secondary_nodes, what="sensor", owner="ShortestPathOperator"):
    """Graph node index of each position ``(x, depth)``.

    Raises
    ------
    ValueError
        If a position is not within ``1e-9`` cell of a corner or a secondary node; the message names
        the sensor and the nearest graph node.
    """
    n = int(n_secondary_nodes)
    p = np.asarray(positions, dtype=np.float64).reshape(-1, 2)
    R, C = grid.n_rows, grid.n_cols
    n_corner, n_horizontal, _ = _node_counts(grid, n)
    tx = (p[:, 0] - grid.origin[0]) / grid.dx  # in cells
    tz = (p[:, 1] - grid.origin[1]) / grid.dz
    out = np.empty(len(p), dtype=np.int64)
    for s, (u, v) in enumerate(zip(tx, tz)):
        j, i = int(np.rint(u)), int(np.rint(v))
        on_x = abs(u - j) <= _NODE_TOL and 0 <= j <= C  # on a vertical grid line
        on_z = abs(v - i) <= _NODE_TOL and 0 <= i <= R  # on a horizontal grid line
        node = -1
        if on_x and on_z:
            node = i * (C + 1) + j
        elif on_z and n > 0:  # on a horizontal side: secondary node k at fraction (k+1)/(n+1)
            cj = min(max(int(np.floor(u)), 0), C - 1)
            f = (u - cj) * (n + 1)
            k = int(np.rint(f)) - 1
            if 0 <= k < n and abs(f - (k + 1)) <= _NODE_TOL * (n + 1):
                node = n_corner + (i * C + cj) * n + k
        elif on_x and n > 0:
            ri = min(max(int(np.floor(v)), 0), R - 1)
            f = (v - ri) * (n + 1)
            k = int(np.rint(f)) - 1
            if 0 <= k < n and abs(f - (k + 1)) <= _NODE_TOL * (n + 1):
                node = n_corner + n_horizontal + (ri * (C + 1) + j) * n + k
        if node < 0:
            nodes = _node_positions(grid, n)
            d = np.hypot(nodes[:, 0] - p[s, 0], nodes[:, 1] - p[s, 1])
            near = int(np.argmin(d))
            raise ValueError(
                f"{owner}: {what} {s} at (x, depth) = ({float(p[s, 0])!r}, {float(p[s, 1])!r}) m is not on a graph "
                f"node (cell corner or one of the n_secondary_nodes={n} nodes on a cell side); the "
                f"nearest node is {near} at ({float(nodes[near, 0])!r}, {float(nodes[near, 1])!r}) m, "
                f"{d[near]:.3g} m away. Move the sensor onto a node or change n_secondary_nodes."
            )
        out[s] = node
    return out


class _PythonGraph:
    """The same graph as the C++ engine, explicit, for ``scipy.sparse.csgraph.dijkstra``.

    Parallel edges (a pair of nodes on a side shared by two cells) are deduplicated per model by the
    smallest ``(w, cell)``; the CSR holds both directions, sorted by (row, col).
    """

    def __init__(self, grid, n, source_nodes, receiver_nodes, pairs):
        self.n_cells = grid.n_cells
        self.n_nodes = sum(_node_counts(grid, n))
        m = 4 + 4 * n
        lengths = local_lengths(grid, n)
        P, Q = np.triu_indices(m, k=1)
        gid = _cell_nodes(grid, n)
        a = gid[:, P].ravel()
        b = gid[:, Q].ravel()
        cell = np.repeat(np.arange(self.n_cells, dtype=np.int64), len(P))
        length = np.tile(lengths[P, Q], self.n_cells)
        lo, hi = np.minimum(a, b), np.maximum(a, b)
        key = lo * self.n_nodes + hi
        order = np.argsort(key, kind="stable")
        ks = key[order]
        dup = np.flatnonzero(ks[1:] == ks[:-1])  # each shared-side pair appears exactly twice
        self.dup_a, self.dup_b = order[dup], order[dup + 1]
        is_dup = np.zeros(len(key), bool)
        is_dup[self.dup_a] = is_dup[self.dup_b] = True
        self.single = np.flatnonzero(~is_dup)
        self.edge_cell = cell
        self.edge_length = length
        ua = np.concatenate([a[self.single], a[self.dup_a]])
        ub = np.concatenate([b[self.single], b[self.dup_a]])
        rows = np.concatenate([ua, ub])  # entry (row, col): directed edge col -> row
        cols = np.concatenate([ub, ua])
        self.perm = np.lexsort((cols, rows))
        self.rows = rows[self.perm]
        self.indices = cols[self.perm].astype(np.int32)
        self.indptr = np.concatenate([[0], np.cumsum(np.bincount(rows, minlength=self.n_nodes))])
        self.source_nodes = np.asarray(source_nodes, np.int64)
        self.receiver_nodes = np.asarray(receiver_nodes, np.int64)
        self.pairs = np.asarray(pairs, np.int64)

    def _weights(self, s):
        w = self.edge_length * s[self.edge_cell]
        wa, wb = w[self.dup_a], w[self.dup_b]
        ca, cb = self.edge_cell[self.dup_a], self.edge_cell[self.dup_b]
        pick_a = (wa < wb) | ((wa == wb) & (ca < cb))
        chosen = np.where(pick_a, self.dup_a, self.dup_b)
        idx = np.concatenate([self.single, chosen])
        both = np.concatenate([idx, idx])[self.perm]  # original edge of each CSR entry
        return w[both], self.edge_cell[both], self.edge_length[both]

    def run(self, s, want_jacobian, sources=None):
        """``sources``: None or flags per source; the data of unflagged sources get NaN times."""
        weights, cells, lengths = self._weights(s)
        graph = sp.csr_matrix((weights, self.indices, self.indptr), shape=(self.n_nodes,) * 2)
        active = np.unique(self.pairs[:, 0])
        if sources is not None:
            active = active[np.asarray(sources, bool)[active]]
        n_data = len(self.pairs)
        times = np.full(n_data, np.nan)
        if len(active) == 0:
            return times, (sp.csr_matrix((n_data, self.n_cells)) if want_jacobian else None)
        dist = dijkstra(graph, directed=True, indices=self.source_nodes[active])
        rows, cols, vals = [], [], []
        for slot, source in enumerate(active):
            d = dist[slot]
            data = np.flatnonzero(self.pairs[:, 0] == source)
            targets = self.receiver_nodes[self.pairs[data, 1]]
            times[data] = d[targets]
            if not want_jacobian:
                continue
            # canonical predecessor: smallest source node among the entries that realise d[u]
            eq = np.flatnonzero(d[self.indices] + weights == d[self.rows])
            r = self.rows[eq]
            first = np.ones(len(eq), bool)
            first[1:] = r[1:] != r[:-1]
            pred_entry = np.full(self.n_nodes, -1, np.int64)
            pred_entry[r[first]] = eq[first]
            src = self.source_nodes[source]
            cur = targets.copy()
            walking = np.flatnonzero(cur != src)
            steps = 0
            while len(walking):
                steps += 1
                if steps > self.n_nodes:   # a predecessor cycle (cannot happen within the contrast limit)
                    raise ValueError("ShortestPathOperator: no path back to the source (predecessor "
                                     "cycle): path times lost their precision or overflowed in "
                                     "float64 (slowness, or its contrast, too large)")
                e = pred_entry[cur[walking]]
                rows.append(data[walking])
                cols.append(cells[e])
                vals.append(lengths[e])
                cur[walking] = self.indices[e]
                walking = walking[cur[walking] != src]
        if not want_jacobian:
            return times, None
        if rows:
            rows, cols, vals = np.concatenate(rows), np.concatenate(cols), np.concatenate(vals)
        jac = sp.csr_matrix((vals, (rows, cols)), shape=(n_data, self.n_cells))
        jac.sum_duplicates()
        jac.sort_indices()
        return times, jac


class ShortestPathOperator(ForwardOperator):
    """Shortest-path first-arrival traveltimes with secondary nodes (nonlinear operator).

    Parameters
    ----------
    grid : Grid2D
        The model grid; slowness is per cell in the package's cell order.
    survey : CrossholeSurvey
        Sources, receivers and pairs; every sensor must lie on a graph node (see Notes).
    n_secondary_nodes : int, default=3
        Number of secondary nodes on every cell side (0 uses the corners only).
    n_threads : int or None, default=None
        Threads of the C++ engine over (model, source) tasks; ``None`` uses the CPUs this process may
        use (its affinity mask, capped by a cgroup CPU quota: ``latentinv._cpus.available_cpus``).
        A call never runs more threads than it has tasks, nor more than
        ``4 x std::thread::hardware_concurrency()`` (``latentinv._core.ShortestPathEngine.max_threads``);
        the background pool of ``submit`` grows to the same bound. Results do not depend on it.
        Ignored by the Python backend. The attribute may be set later (the inverters' workers do): it is
        checked then, and None is resolved as here.
    backend : {"auto", "cpp", "python"}, default="auto"
        ``"auto"`` takes the compiled core when it is built (and ``LATENTINV_PUREPYTHON`` is unset).
    solver : {"auto", "wavefront", "sweep", "dijkstra"}, default="auto"
        Shortest-path solver of the C++ engine (module docstring); ``"auto"`` is ``"wavefront"``.
        All give the same traveltimes and Jacobians, bit for bit. The Python backend always uses
        SciPy's Dijkstra (and accepts only ``"auto"`` or ``"dijkstra"``).
    simd : {"auto", "avx2", "scalar"}, default="auto"
        Lanes of the label-correcting solvers: ``"auto"`` takes AVX2 where the build and the CPU
        have it, else the portable kernel; ``"avx2"`` raises where it is unavailable.
    extrapolate_from : int or None, default=None
        Richardson extrapolation to a continuous medium: also solve the graph with this many
        secondary nodes (fewer than ``n_secondary_nodes``) and return
        ``(a t_n - b t_c) / (a - b)`` with ``a = (n_secondary_nodes + 1)**2``,
        ``b = (extrapolate_from + 1)**2``, and the Jacobian of that combination (so that
        ``J(m) @ m == response(m)`` still holds; its entries may be negative). The graph's
        overestimate of a first arrival falls as ``h**2`` in the node spacing ``h = 1/(n + 1)``
        (measured on the paper's truths, docs/benchmarks/raytrace.md), so the combination
        cancels its leading term: on the paper's six truths ``n_secondary_nodes=6,
        extrapolate_from=2`` errs by 0.043 ns on average against a 40-node graph, as much as a
        plain graph with 10 nodes, for the cost of a 6-node and a 2-node solve. None (default):
        the graph's own shortest-path times, exact for the graph.

    Attributes
    ----------
    n_data, n_params : int
    backend : str
        ``"cpp"`` or ``"python"``: the engine actually used.
    kernel : str
        What runs: ``"wavefront-avx2"``, ``"wavefront-scalar"``, ``"sweep-avx2"``,
        ``"sweep-scalar"``, ``"dijkstra"`` (C++) or ``"scipy-dijkstra"`` (Python backend).
    is_linear : bool
        False.

    Notes
    -----
    Slowness in ns/m gives traveltimes in ns and Jacobian entries in m. The graph topology is built
    once here; each call only changes the edge weights. A sensor off every graph node raises a
    ValueError naming the nearest node. Both backends return the same paths (canonical tie rule,
    module docstring), so their traveltimes and Jacobians agree to rounding. Within one model the
    slowness contrast (max / min) must be at most 1e8 (:attr:`max_slowness_contrast`): beyond it an
    edge time can vanish against a path time in float64 and the predecessor of a node is no longer
    defined (ValueError; natural contrasts are below 1e2).

    References
    ----------
    Giroux, B. & Larouche, B. (2013). Task-parallel implementation of 3D shortest path raytracing for
    geophysical applications. Computers & Geosciences 54, 130-141.
    """

    is_linear = False
    max_slowness_contrast = 1e8

    @property
    def n_threads(self):
        """Threads of the C++ engine: the value set, or the CPUs available where None was set."""
        return self._n_threads

    @n_threads.setter
    def n_threads(self, value):
        # checked and resolved here, as in the constructor (the workers set it): the engine takes a
        # positive int only, and would refuse None or 0 at the next call instead
        check_n_threads(value, type(self).__name__)
        self._n_threads = available_cpus() if value is None else int(value)

    def __init__(self, grid, survey, n_secondary_nodes=3, n_threads=None, backend="auto",
                 solver="auto", simd="auto", extrapolate_from=None):
        name = type(self).__name__
        if not isinstance(grid, Grid2D):
            raise TypeError(f"{name}: grid must be a Grid2D, got {type(grid).__name__}")
        if not isinstance(survey, CrossholeSurvey):
            raise TypeError(f"{name}: survey must be a CrossholeSurvey, got {type(survey).__name__}")
        if (isinstance(n_secondary_nodes, bool) or not isinstance(n_secondary_nodes, numbers.Integral)
                or not 0 <= n_secondary_nodes <= 1000):
            raise ValueError(f"{name}: n_secondary_nodes must be an integer in [0, 1000], "
                             f"got {n_secondary_nodes!r}")
        check_n_threads(n_threads, name)
        if solver not in ("auto", "wavefront", "sweep", "dijkstra"):
            raise ValueError(f"{name}: solver must be 'auto', 'wavefront', 'sweep' or 'dijkstra', "
                             f"got {solver!r}")
        if simd not in ("auto", "avx2", "scalar"):
            raise ValueError(f"{name}: simd must be 'auto', 'avx2' or 'scalar', got {simd!r}")
        if extrapolate_from is not None and (
                isinstance(extrapolate_from, bool) or not isinstance(extrapolate_from, numbers.Integral)
                or not 0 <= extrapolate_from < n_secondary_nodes):
            raise ValueError(f"{name}: extrapolate_from must be None or an integer in [0, "
                             f"n_secondary_nodes - 1] = [0, {int(n_secondary_nodes) - 1}], "
                             f"got {extrapolate_from!r}")
        self.extrapolate_from = None if extrapolate_from is None else int(extrapolate_from)
        self.grid = grid
        self.survey = survey
        self.solver = solver
        self.simd = simd
        self.n_secondary_nodes = int(n_secondary_nodes)
        self._n_threads_requested = n_threads
        self.n_threads = n_threads
        self._backend_requested = backend
        self.backend = resolve_backend(backend, owner=name)
        self.n_data = survey.n_data
        self.n_params = grid.n_cells
        survey.check_in(grid, owner=name)
        n = self.n_secondary_nodes
        _check_length_range(grid, n, name)
        self._source_nodes = sensor_nodes(grid, survey.sources, n, "source", name)
        self._receiver_nodes = sensor_nodes(grid, survey.receivers, n, "receiver", name)
        if self.backend == "python" and solver not in ("auto", "dijkstra"):
            raise ValueError(f"{name}: solver={solver!r} needs the C++ backend (the Python backend "
                             f"runs SciPy's Dijkstra); use solver='auto' or 'dijkstra'")
        if self.backend == "python" and simd != "auto":
            raise ValueError(f"{name}: simd={simd!r} needs the C++ backend; use simd='auto'")
        if self.backend == "cpp":
            engine_solver = "wavefront" if solver == "auto" else solver
            if engine_solver == "dijkstra":
                if simd != "auto":
                    raise ValueError(f"{name}: simd={simd!r} applies to the label-correcting "
                                     f"solvers, not to solver='dijkstra'")
                self.kernel = "dijkstra"
            else:
                if simd == "avx2" and not core.ShortestPathEngine.avx2_available:
                    raise ValueError(f"{name}: simd='avx2' is not available here (not compiled in, "
                                     f"or the CPU lacks AVX2); use simd='auto' or 'scalar'")
                lanes = core.ShortestPathEngine.default_simd if simd == "auto" else simd
                self.kernel = f"{engine_solver}-{lanes}"
            self._run_options = dict(solver=engine_solver, simd=simd)
        else:
            self.kernel = "scipy-dijkstra"
        self._engine = self._build_engine(n, self._source_nodes, self._receiver_nodes)
        self._coarse_engine = None
        if self.extrapolate_from is not None:
            nc = self.extrapolate_from
            try:
                coarse_nodes = [sensor_nodes(grid, survey.sources, nc, "source", name),
                                sensor_nodes(grid, survey.receivers, nc, "receiver", name)]
            except ValueError as exc:     # on a node of the fine graph, not of the coarse one
                raise ValueError(f"{exc} (With extrapolate_from={nc} every sensor must also sit on a node "
                                 f"of the coarse graph of {nc} secondary nodes: change extrapolate_from, or "
                                 f"pass None.)") from None
            self._coarse_engine = self._build_engine(nc, *coarse_nodes)

    def _build_engine(self, n, source_nodes, receiver_nodes):
        grid, pairs = self.grid, self.survey.pairs
        try:
            if self.backend == "cpp":
                engine = core.ShortestPathEngine(grid.n_rows, grid.n_cols, grid.dx, grid.dz, n,
                                                 source_nodes.tolist(), receiver_nodes.tolist(),
                                                 pairs[:, 0].tolist(), pairs[:, 1].tolist())
            else:
                engine = _PythonGraph(grid, n, source_nodes, receiver_nodes, pairs)
        except MemoryError as exc:
            raise self._out_of_memory(exc, n) from exc
        return engine

    def _out_of_memory(self, exc, n=None):
        """A MemoryError that names the graph's size and what makes it smaller (``exc``: the engine's,
        e.g. C++'s bare ``std::bad_alloc``); ``n``: secondary nodes of the graph (None: the fine one)."""
        grid = self.grid
        n = self.n_secondary_nodes if n is None else n
        return MemoryError(
            f"{type(self).__name__}: out of memory for the graph of {int(sum(_node_counts(grid, n)))} nodes "
            f"({grid.n_rows} x {grid.n_cols} cells, n_secondary_nodes={n}) with n_threads={self.n_threads} "
            f"({self.backend} backend); every engine thread holds arrays over all the nodes, so fewer "
            f"secondary nodes, fewer threads or a coarser grid need less memory ({exc})")

    def _extrapolate(self, fine, coarse):
        """Richardson's combination of the fine and coarse graphs' (times, Jacobians)."""
        a = float(self.n_secondary_nodes + 1) ** 2
        b = float(self.extrapolate_from + 1) ** 2
        times = (a * fine[0] - b * coarse[0]) / (a - b)
        if fine[1] is None:
            return times, None
        return times, [((a * jf - b * jc) / (a - b)).tocsr() for jf, jc in zip(fine[1], coarse[1])]

    @property
    def n_nodes(self):
        """Number of graph nodes (corners plus secondary nodes)."""
        return int(sum(_node_counts(self.grid, self.n_secondary_nodes)))

    @property
    def supports_jacobian_rows(self):
        """The C++ engine skips the back-tracking of rows outside ``jacobian_rows``."""
        return self.backend == "cpp"

    @property
    def runs_in_background(self):
        """``submit`` queues the work on the C++ engine's worker threads (the Python backend
        computes at once)."""
        return self.backend == "cpp"

    @property
    def data_sources(self):
        """Source index of each datum, ``(n_data,)`` (the ``sources`` flags of ``submit`` are per
        source)."""
        return self.survey.pairs[:, 0]

    def _check_flags(self, flags, n_models, n_cols, what):
        if flags is None:
            return None
        a = np.asarray(flags)
        if a.dtype != bool or a.shape != (n_models, n_cols):
            raise ValueError(f"{type(self).__name__}: {what} must be None or a boolean array of shape "
                             f"({n_models}, {n_cols}), got {a.dtype} {a.shape}")
        return a

    def _split_jacobian(self, csr, n_models):
        indptr, indices, data = csr
        nd = self.n_data
        jac = []
        for k in range(n_models):
            lo, hi = indptr[k * nd], indptr[(k + 1) * nd]
            jac.append(sp.csr_matrix(
                (data[lo:hi], indices[lo:hi], indptr[k * nd:(k + 1) * nd + 1] - lo),
                shape=(nd, self.n_params)))
        return jac

    def _response_and_jacobian(self, m, want_jacobian, jacobian_rows=None, sources=None):
        fine = self._solve(self._engine, m, want_jacobian, jacobian_rows, sources)
        if self._coarse_engine is None:
            return fine
        return self._extrapolate(fine, self._solve(self._coarse_engine, m, want_jacobian,
                                                   jacobian_rows, sources))

    def _nodes_of(self, engine):
        return self.extrapolate_from if engine is self._coarse_engine else self.n_secondary_nodes

    def _solve(self, engine, m, want_jacobian, jacobian_rows, sources):
        try:
            return self._solve_unchecked(engine, m, want_jacobian, jacobian_rows, sources)
        except MemoryError as exc:
            raise self._out_of_memory(exc, self._nodes_of(engine)) from exc

    def _solve_unchecked(self, engine, m, want_jacobian, jacobian_rows, sources):
        if self.backend == "cpp":
            times, csr = engine.run(m, bool(want_jacobian), self.n_threads,
                                    jacobian_rows=jacobian_rows, sources=sources, **self._run_options)
            return times, (self._split_jacobian(csr, len(m)) if want_jacobian else None)
        times = np.empty((len(m), self.n_data))
        jac = [] if want_jacobian else None
        for k in range(len(m)):
            times[k], j = engine.run(m[k], want_jacobian, None if sources is None else sources[k])
            if want_jacobian:
                jac.append(j)
        return times, jac

    def submit(self, m, want_jacobian=False, jacobian_rows=None, sources=None):
        """Start computing traveltimes (and Jacobians) for slowness ``m``; returns at once.

        Parameters
        ----------
        m : array-like (n_models, n_params)
            Slowness (ns/m); copied.
        want_jacobian : bool, default=False
        jacobian_rows : bool array (n_models, n_data) or None
            Jacobian rows wanted (others left empty); None: all.
        sources : bool array (n_models, n_sources) or None
            Sources to run per model; the data of the others get NaN times and empty Jacobian
            rows. None: all.

        Returns
        -------
        PendingResponse
            ``result()`` gives ``(times (n_models, n_data), list of CSR or None)``.

        Notes
        -----
        With the C++ backend the work is queued on the engine's pool of ``n_threads`` worker
        threads, in submission order: a job submitted right behind another runs while the caller
        works on the first one's result. The Python backend computes before returning. Results are
        identical to ``response_and_jacobian``'s (bit for bit, whatever the scheduling).
        """
        a, _ = self._check_models(m)
        rows = self._check_flags(jacobian_rows, len(a), self.n_data, "jacobian_rows")
        src = self._check_flags(sources, len(a), self.survey.n_sources, "sources")
        if self.backend == "cpp":
            engines = [self._engine] + ([self._coarse_engine] if self._coarse_engine else [])
            jobs = [e.submit(a, bool(want_jacobian), self.n_threads, jacobian_rows=rows, sources=src,
                             **self._run_options) for e in engines]

            def fetch():
                out = []
                for job, engine in zip(jobs, engines):
                    try:
                        times, csr = job.result()
                    except MemoryError as exc:
                        raise self._out_of_memory(exc, self._nodes_of(engine)) from exc
                    out.append((times, self._split_jacobian(csr, len(a)) if want_jacobian else None))
                return out[0] if len(out) == 1 else self._extrapolate(*out)
        else:
            value = self._response_and_jacobian(a, want_jacobian, rows, src)

            def fetch():
                return value
        return PendingResponse(a, want_jacobian, rows, fetch)

    def get_params(self, deep=False):
        """The constructor parameters, by name (as scikit-learn's ``get_params``; ``n_threads`` and
        ``backend`` as given, None and "auto" unresolved).

        Parameters
        ----------
        deep : bool, default=False
            Unused (the parameters hold no estimators); scikit-learn's signature.

        Returns
        -------
        dict
            ``grid``, ``survey``, ``n_secondary_nodes``, ``n_threads``, ``backend``, ``solver``, ``simd``,
            ``extrapolate_from``.
        """
        return {"grid": self.grid, "survey": self.survey, "n_secondary_nodes": self.n_secondary_nodes,
                "n_threads": self._n_threads_requested, "backend": self._backend_requested,
                "solver": self.solver, "simd": self.simd, "extrapolate_from": self.extrapolate_from}

    def __reduce__(self):
        return (type(self), (self.grid, self.survey, self.n_secondary_nodes, self.n_threads,
                             self._backend_requested, self.solver, self.simd, self.extrapolate_from))

    def __repr__(self):
        return (f"ShortestPathOperator(grid={self.grid!r}, survey={self.survey!r}, "
                f"n_secondary_nodes={self.n_secondary_nodes}, n_threads={self.n_threads}, "
                f"backend={self.backend!r}, solver={self.solver!r}, simd={self.simd!r}, "
                f"extrapolate_from={self.extrapolate_from!r})")
