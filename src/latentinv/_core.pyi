"""Type stub of the compiled core ``latentinv._core`` (C++17, pybind11; see cpp/)."""
from typing import Literal, Optional, Tuple

import numpy as np
import numpy.typing as npt

# (times (n_models, n_data), stacked CSR (indptr, indices, data) or None)
_RunResult = Tuple[
    npt.NDArray[np.float64],
    Optional[Tuple[npt.NDArray[np.int64], npt.NDArray[np.int32], npt.NDArray[np.float64]]],
]

class ShortestPathEngine:
    """Shortest-path traveltimes on a regular grid with secondary nodes.

    The topology (grid, secondary nodes, sensor nodes, pairs) is fixed at construction; ``run`` only
    changes the edge weights. Invalid input raises ``ValueError`` (``std::invalid_argument``).
    """

    def __init__(
        self,
        n_rows: int,
        n_cols: int,
        dx: float,
        dz: float,
        n_secondary: int,
        source_nodes: list[int],
        receiver_nodes: list[int],
        pair_sources: list[int],
        pair_receivers: list[int],
    ) -> None: ...
    @property
    def n_nodes(self) -> int: ...
    @property
    def n_cells(self) -> int: ...
    @property
    def n_data(self) -> int: ...
    @property
    def n_local(self) -> int: ...
    def local_lengths(self) -> npt.NDArray[np.float64]: ...
    def node_position(self, node: int) -> Tuple[float, float]: ...
    @property
    def n_sources(self) -> int: ...
    @property
    def pool_size(self) -> int:
        """Worker threads of the background pool started so far (0 before the first ``submit``)."""
    max_threads: int
    """Upper bound (class attribute, read-only) on the threads of one ``run`` and on the pool:
    ``4 * std::thread::hardware_concurrency()``."""
    avx2_available: bool
    """Whether the AVX2 kernel of the label-correcting solvers was compiled in and the CPU has AVX2
    (class attribute, read-only)."""
    default_simd: Literal["avx2", "scalar"]
    """The kernel ``simd="auto"`` runs on this machine (class attribute, read-only)."""
    sweep_lanes: int
    """Sources solved together by one pass of the label-correcting solvers: 4 (class attribute)."""
    def sweep_statistics(
        self,
        slowness: npt.ArrayLike,
        sources: list[int],
        simd: Literal["auto", "avx2", "scalar"] = "auto",
        solver: Literal["auto", "wavefront", "sweep", "dijkstra"] = "auto",
    ) -> Tuple[int, int, int]:
        """``(rounds, cells processed, node pushes)`` of one label-correcting solve of up to
        ``sweep_lanes`` sources on ``slowness (n_cells,)`` (rounds: sweeps, or 1 for the wavefront)."""
    def run(
        self,
        slowness: npt.ArrayLike,
        want_jacobian: bool,
        n_threads: int,
        queue: Literal["auto", "heap", "buckets"] = "auto",
        jacobian_rows: Optional[npt.ArrayLike] = None,
        sources: Optional[npt.ArrayLike] = None,
        solver: Literal["auto", "wavefront", "sweep", "dijkstra"] = "auto",
        simd: Literal["auto", "avx2", "scalar"] = "auto",
    ) -> _RunResult:
        """``slowness (n_models, n_cells)`` (ns/m) -> ``(times (n_models, n_data) ns, CSR or None)``.

        The CSR ``(indptr, indices, data)`` stacks the Jacobians of all models: row
        ``model * n_data + datum``, column = cell, value = ray length in the cell (m). The GIL is
        released; ``n_threads`` threads share the (model, source) tasks. ``jacobian_rows``
        ``(n_models, n_data)`` and ``sources`` ``(n_models, n_sources)`` are optional uint8 flags:
        unflagged Jacobian rows are left empty; the data of an unflagged (model, source) get NaN
        times and empty rows. ``slowness`` may have 0 rows (an empty result). ``n_threads`` must be
        a positive ``int`` (ValueError otherwise); at most ``min(n_threads, tasks, max_threads)``
        threads run. ``solver``: ``"auto"`` (= ``"wavefront"``: multi-source label correcting,
        ``sweep_lanes`` sources per task, cells in bucket order), ``"sweep"`` (the same, cells in
        alternating sweeps) or ``"dijkstra"`` (one task per source; the only solver that takes a
        ``queue`` other than ``"auto"``). ``simd``: lanes of the label-correcting solvers (``"avx2"``
        raises ValueError where unavailable). Every solver and kernel gives the same times and
        Jacobians, bit for bit.
        """
    def submit(
        self,
        slowness: npt.ArrayLike,
        want_jacobian: bool,
        n_threads: int,
        queue: Literal["auto", "heap", "buckets"] = "auto",
        jacobian_rows: Optional[npt.ArrayLike] = None,
        sources: Optional[npt.ArrayLike] = None,
        solver: Literal["auto", "wavefront", "sweep", "dijkstra"] = "auto",
        simd: Literal["auto", "avx2", "scalar"] = "auto",
    ) -> "PendingRun":
        """``run``'s work queued on the engine's persistent worker pool (grown to
        ``min(n_threads, the job's (model, source) tasks, max_threads)``, never shrunk); jobs are
        served in submission order; the inputs are copied; returns at once."""

class PendingRun:
    """A job of ``ShortestPathEngine.submit``."""

    def result(
        self,
    ) -> _RunResult:
        """Wait (GIL released) and return ``run``'s tuple; later calls return the same objects."""
    def done(self) -> bool: ...
