"""ShortestPathOperator: analytic values, identities, backend agreement, properties, bad inputs."""
import os
import pickle
import threading
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from latentinv._backend import HAS_CORE
from latentinv._cpus import available_cpus
from latentinv.geometry import CrossholeSurvey, Grid2D, paper_crosshole
from latentinv.operators.shortest_path import (
    ShortestPathOperator, _node_positions, local_lengths, sensor_nodes,
)

BACKENDS = ["python"] + (["cpp"] if HAS_CORE else [])
needs_core = pytest.mark.skipif(not HAS_CORE, reason="latentinv._core not built")


def small_case(seed=0, n_rows=14, n_cols=9, cell=(0.2, 0.15), origin=(1.0, 0.5)):
    """A non-square grid with an origin offset and sensors on both borders (corners)."""
    grid = Grid2D(n_rows, n_cols, cell, origin=origin)
    x0, z0 = origin
    depths_s = z0 + cell[1] * np.array([1, 4, 7, 12])
    depths_r = z0 + cell[1] * np.array([0, 3, 5, 9, 14])
    survey = CrossholeSurvey(
        np.column_stack([np.full(4, x0), depths_s]),
        np.column_stack([np.full(5, x0 + n_cols * cell[0]), depths_r]),
    )
    rng = np.random.default_rng(seed)
    m = rng.uniform(5.0, 15.0, grid.n_cells)
    return grid, survey, m


def channel_model(grid, seed=0):
    """A heterogeneous 'channel' slowness (ns/m): two layers, a slow channel, some noise."""
    rng = np.random.default_rng(seed)
    z = grid.cell_centers[:, 1]
    x = grid.cell_centers[:, 0]
    s = np.where(z > grid.origin[1] + 0.4 * grid.height, 1 / 0.07, 1 / 0.1)
    channel = np.abs(z - (grid.origin[1] + 0.3 * grid.height + 0.1 * grid.height * np.sin(x))) < 0.1 * grid.height
    s = np.where(channel, 1 / 0.06, s)
    return s * (1 + 0.03 * rng.random(grid.n_cells))


# -- analytic values --------------------------------------------------------------------------------
@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("n, expected", [(0, 1 + np.sqrt(2)), (3, np.sqrt(5))])
def test_pygimli_2x2_goldens(backend, n, expected):
    grid = Grid2D(2, 2, 1.0)
    survey = CrossholeSurvey([[0.0, 0.0]], [[2.0, 1.0]])
    op = ShortestPathOperator(grid, survey, n_secondary_nodes=n, backend=backend)
    t, J = op.response_and_jacobian(np.ones(4))
    assert t[0] == pytest.approx(expected, abs=1e-14)
    assert J.sum() == pytest.approx(expected, abs=1e-14)


@pytest.mark.parametrize("backend", BACKENDS)
def test_homogeneous_error_shrinks_with_secondary_nodes(backend):
    grid, survey, _ = small_case()
    slowness = 8.0  # ns/m
    exact = slowness * survey.distances
    errors = []
    for n in (0, 1, 3, 7):
        op = ShortestPathOperator(grid, survey, n_secondary_nodes=n, backend=backend)
        t = op.response(np.full(grid.n_cells, slowness))
        assert np.all(t >= exact - 1e-12)  # a graph path is never shorter than the straight ray
        errors.append(np.mean(t - exact))
    assert all(a > b for a, b in zip(errors, errors[1:])), errors
    assert errors[-1] < 0.01 * np.mean(exact)
    assert errors[0] > 5 * errors[-1]


# -- identities -------------------------------------------------------------------------------------
@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("n", [0, 2, 3])
def test_jacobian_times_model_is_response(backend, n):
    grid, survey, m = small_case(seed=n)
    op = ShortestPathOperator(grid, survey, n_secondary_nodes=n, backend=backend)
    t, J = op.response_and_jacobian(m)
    np.testing.assert_allclose(J @ m, t, rtol=0, atol=1e-10)
    assert J.shape == (survey.n_data, grid.n_cells)
    assert J.has_sorted_indices and np.all(np.diff(J.indptr) > 0) and np.all(J.data > 0)
    # each row's total length is at least the straight distance
    assert np.all(np.asarray(J.sum(axis=1)).ravel() >= survey.distances - 1e-12)


@pytest.mark.parametrize("backend", BACKENDS)
def test_reciprocity(backend):
    grid, survey, m = small_case(seed=3)
    forward = ShortestPathOperator(grid, survey, 3, backend=backend)
    backward = ShortestPathOperator(grid, survey.reciprocal(), 3, backend=backend)
    np.testing.assert_allclose(backward.response(m), forward.response(m), rtol=0, atol=1e-10)


# -- backends and engines agree ---------------------------------------------------------------------
def _sensor_on_secondary_nodes_case():
    grid = Grid2D(10, 7, (0.3, 0.2), origin=(-1.0, 2.0))
    n = 3
    nodes = _node_positions(grid, n)
    rng = np.random.default_rng(7)
    picks = rng.choice(len(nodes), size=9, replace=False)
    sources, receivers = nodes[picks[:4]], nodes[picks[4:]]
    pairs = [[0, 1], [3, 4], [2, 0], [1, 2], [0, 3], [3, 0], [2, 4]]  # unsorted subset
    return grid, CrossholeSurvey(sources, receivers, pairs), n


@needs_core
@pytest.mark.parametrize("kind", ["heterogeneous", "homogeneous", "secondary-node sensors", "paper"])
def test_cpp_equals_python(kind):
    if kind == "secondary-node sensors":
        grid, survey, n = _sensor_on_secondary_nodes_case()
        m = np.random.default_rng(1).uniform(1.0, 20.0, grid.n_cells)
    elif kind == "paper":
        grid, survey = paper_crosshole()
        n, m = 2, channel_model(grid)
    else:
        grid, survey, m = small_case(seed=11)
        n = 3
        if kind == "homogeneous":  # many equal-time paths: the canonical tie rule decides
            m = np.full(grid.n_cells, 10.0)
    cpp = ShortestPathOperator(grid, survey, n, n_threads=2, backend="cpp")
    py = ShortestPathOperator(grid, survey, n, backend="python")
    assert (cpp.backend, py.backend) == ("cpp", "python")
    tc, Jc = cpp.response_and_jacobian(m)
    tp, Jp = py.response_and_jacobian(m)
    np.testing.assert_array_equal(tc, tp)  # bitwise: identical weights, unique Dijkstra distances
    assert abs(Jc - Jp).max() <= 1e-10
    assert np.array_equal(Jc.indptr, Jp.indptr) and np.array_equal(Jc.indices, Jp.indices)


@needs_core
def test_local_lengths_bitwise_equal_to_engine():
    grid = Grid2D(3, 4, (0.1, 0.07))
    for n in (0, 1, 3, 10):
        op = ShortestPathOperator(grid, CrossholeSurvey([[0, 0]], [[0.4, 0.21]]), n, backend="cpp")
        np.testing.assert_array_equal(op._engine.local_lengths(), local_lengths(grid, n))


@needs_core
def test_every_solver_and_queue_identical():
    """Dijkstra (heap, buckets), wavefront and sweep (every SIMD kernel here): the same bits."""
    grid, survey = paper_crosshole()
    op = ShortestPathOperator(grid, survey, 3, n_threads=2, backend="cpp")
    m = np.stack([channel_model(grid, seed) for seed in range(2)])
    a = op._engine.run(m, True, 2, "heap", solver="dijkstra")
    variants = [dict(queue="buckets", solver="dijkstra")]
    simds = ["scalar"] + (["avx2"] if op._engine.avx2_available else [])
    variants += [dict(solver=solver, simd=simd) for solver in ("wavefront", "sweep") for simd in simds]
    for kw in variants:
        b = op._engine.run(m, True, 2, **kw)
        np.testing.assert_array_equal(a[0], b[0], err_msg=str(kw))
        for x, y in zip(a[1], b[1]):
            np.testing.assert_array_equal(x, y, err_msg=str(kw))
    # a contrast too large for the ring of buckets falls back to the heap and still matches python
    grid, survey, m = small_case()
    m[::7] *= 1e6
    tc = ShortestPathOperator(grid, survey, 2, backend="cpp", solver="dijkstra").response(m)
    np.testing.assert_array_equal(tc, ShortestPathOperator(grid, survey, 2, backend="python").response(m))
    np.testing.assert_array_equal(tc, ShortestPathOperator(grid, survey, 2, backend="cpp").response(m))
    with pytest.raises(ValueError, match="bucket"):
        ShortestPathOperator(grid, survey, 2, backend="cpp")._engine.run(m[None], False, 1, "buckets",
                                                                         solver="dijkstra")


@needs_core
def test_results_do_not_depend_on_threads_or_batching():
    grid, survey, _ = small_case()
    m = np.stack([small_case(seed=s)[2] for s in range(5)])
    ref_t, ref_J = ShortestPathOperator(grid, survey, 3, n_threads=1).response_and_jacobian(m)
    for n_threads in (2, 3, 8):
        t, J = ShortestPathOperator(grid, survey, 3, n_threads=n_threads).response_and_jacobian(m)
        np.testing.assert_array_equal(t, ref_t)
        for a, b in zip(J, ref_J):
            assert (a != b).nnz == 0
    one_by_one = np.stack([ShortestPathOperator(grid, survey, 3).response(mi) for mi in m])
    np.testing.assert_array_equal(one_by_one, ref_t)


@pytest.mark.parametrize("backend", BACKENDS)
def test_concurrent_calls_from_python_threads(backend):
    grid, survey, _ = small_case()
    op = ShortestPathOperator(grid, survey, 3, n_threads=2, backend=backend)
    models = [small_case(seed=s)[2] for s in range(8)]
    expected = [op.response_and_jacobian(m) for m in models]
    barrier = threading.Barrier(4)

    def work(i):
        barrier.wait() if i < 4 else None
        return op.response_and_jacobian(models[i])

    with ThreadPoolExecutor(4) as pool:
        results = list(pool.map(work, range(len(models))))
    for (t, J), (te, Je) in zip(results, expected):
        np.testing.assert_array_equal(t, te)
        assert (J != Je).nnz == 0


# -- properties -------------------------------------------------------------------------------------
@st.composite
def random_problem(draw):
    n_rows = draw(st.integers(1, 7))
    n_cols = draw(st.integers(1, 7))
    dx = draw(st.floats(0.05, 2.0))
    dz = draw(st.floats(0.05, 2.0))
    n = draw(st.integers(0, 4))
    grid = Grid2D(n_rows, n_cols, (dx, dz), origin=(draw(st.floats(-5, 5)), draw(st.floats(-5, 5))))
    nodes = _node_positions(grid, n)
    k = draw(st.integers(2, min(8, len(nodes))))
    picks = draw(st.lists(st.integers(0, len(nodes) - 1), min_size=k, max_size=k, unique=True))
    n_src = draw(st.integers(1, k - 1))
    survey = CrossholeSurvey(nodes[picks[:n_src]], nodes[picks[n_src:]])
    lo = draw(st.floats(0.01, 10.0))
    ratio = draw(st.floats(1.0, 50.0))
    seed = draw(st.integers(0, 2**31))
    m = np.random.default_rng(seed).uniform(lo, lo * ratio, grid.n_cells)
    return grid, survey, n, m, seed


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(random_problem())
def test_traveltime_properties(problem):
    grid, survey, n, m, seed = problem
    op = ShortestPathOperator(grid, survey, n, n_threads=2)
    t, J = op.response_and_jacobian(m)
    assert np.all(t > 0)
    # at least the straight distance at the minimum slowness
    assert np.all(t >= survey.distances * m.min() * (1 - 1e-12))
    # at most the graph time of the uniform medium at the maximum slowness. (Not the straight-ray
    # time at the maximum slowness: a graph path can be longer than the straight ray, e.g. 1 + sqrt(2)
    # against sqrt(5) on the 2x2 golden.)
    assert np.all(t <= op.response(np.full(grid.n_cells, m.max())) * (1 + 1e-12))
    # monotone in slowness
    bump = 1 + np.random.default_rng(seed + 1).random(grid.n_cells)
    assert np.all(op.response(m * bump) >= t * (1 - 1e-12))
    np.testing.assert_allclose(J @ m, t, rtol=1e-12, atol=0)
    if HAS_CORE:
        tp = ShortestPathOperator(grid, survey, n, backend="python").response(m)
        np.testing.assert_array_equal(tp, t)


def _solver_variants():
    from latentinv._backend import core
    simds = ["scalar"] + (["avx2"] if core.ShortestPathEngine.avx2_available else [])
    return [dict(solver=solver, simd=simd) for solver in ("wavefront", "sweep") for simd in simds]


@st.composite
def solver_problem(draw):
    """Random grids, sensors, slowness fields with ties: smooth, blocky (piecewise constant: many
    equal-time paths), homogeneous, or high contrast; several sources (lanes of one pass)."""
    n_rows = draw(st.integers(1, 9))
    n_cols = draw(st.integers(1, 9))
    grid = Grid2D(n_rows, n_cols, (draw(st.floats(0.05, 2.0)), draw(st.floats(0.05, 2.0))))
    n = draw(st.integers(0, 4))
    nodes = _node_positions(grid, n)
    k = draw(st.integers(2, min(12, len(nodes))))
    picks = draw(st.lists(st.integers(0, len(nodes) - 1), min_size=k, max_size=k, unique=True))
    n_src = draw(st.integers(1, k - 1))
    survey = CrossholeSurvey(nodes[picks[:n_src]], nodes[picks[n_src:]])
    rng = np.random.default_rng(draw(st.integers(0, 2**31)))
    kind = draw(st.sampled_from(["uniform", "blocky", "homogeneous", "contrast"]))
    lo = draw(st.floats(0.01, 10.0))
    if kind == "uniform":
        m = rng.uniform(lo, lo * 3, grid.n_cells)
    elif kind == "blocky":
        m = rng.choice([lo, 2 * lo, 4 * lo], grid.n_cells)
    elif kind == "homogeneous":
        m = np.full(grid.n_cells, lo)
    else:
        m = lo * 10.0 ** rng.uniform(0, 4, grid.n_cells)
    return grid, survey, n, m


@needs_core
@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(solver_problem())
def test_label_correcting_solvers_equal_dijkstra_bit_for_bit(problem):
    """The wavefront and sweep solvers (every SIMD kernel) return Dijkstra's times and Jacobians,
    bit for bit, ties included (the canonical tie rule reads only the final distances)."""
    grid, survey, n, m = problem
    ref = ShortestPathOperator(grid, survey, n, n_threads=1, solver="dijkstra")
    t_ref, J_ref = ref.response_and_jacobian(m)
    for kw in _solver_variants():
        op = ShortestPathOperator(grid, survey, n, n_threads=2, **kw)
        t, J = op.response_and_jacobian(m)
        np.testing.assert_array_equal(t, t_ref, err_msg=str(kw))
        assert (J != J_ref).nnz == 0, kw
        np.testing.assert_allclose(J @ m, t, rtol=1e-12, atol=0)


@needs_core
@pytest.mark.parametrize("n", [15, 16, 70])
def test_label_correcting_solvers_with_many_secondary_nodes(n):
    """m = 4 + 4n local nodes: 64 (the largest with the side-only repeat rounds), 68 and 284 (full
    repeat rounds, rows pushed in several blocks of 32): still Dijkstra's bits."""
    grid = Grid2D(3, 2, (0.3, 0.2))
    nodes = _node_positions(grid, n)
    rng = np.random.default_rng(n)
    picks = rng.choice(len(nodes), 9, replace=False)
    survey = CrossholeSurvey(nodes[picks[:4]], nodes[picks[4:]])
    m = rng.uniform(5.0, 15.0, grid.n_cells)
    t_ref, J_ref = ShortestPathOperator(grid, survey, n, solver="dijkstra").response_and_jacobian(m)
    for kw in _solver_variants():
        t, J = ShortestPathOperator(grid, survey, n, **kw).response_and_jacobian(m)
        np.testing.assert_array_equal(t, t_ref, err_msg=str(kw))
        assert (J != J_ref).nnz == 0, kw


@needs_core
def test_label_correcting_solvers_on_the_paper_geometry_and_subsets():
    """Paper grid, two models at once, source subsets and Jacobian-row subsets (the pipelined
    inversion's head/rest jobs): every solver equals Dijkstra, by run and by submit."""
    grid, survey = paper_crosshole()
    m = np.stack([channel_model(grid, seed) for seed in (3, 4)])
    rng = np.random.default_rng(0)
    rows = rng.random((2, survey.n_data)) < 0.05
    head = np.zeros((2, survey.n_sources), bool)
    head[np.arange(2)[:, None], survey.pairs[:, 0][rows.argmax(1)][:, None]] = True
    head |= rng.random((2, survey.n_sources)) < 0.5
    ref = ShortestPathOperator(grid, survey, 3, n_threads=2, solver="dijkstra")
    t_ref, J_ref = ref._response_and_jacobian(m, True, jacobian_rows=rows, sources=head)
    for kw in _solver_variants():
        op = ShortestPathOperator(grid, survey, 3, n_threads=2, **kw)
        t, J = op.submit(m, want_jacobian=True, jacobian_rows=rows, sources=head).result()
        np.testing.assert_array_equal(t, t_ref)
        for a, b in zip(J, J_ref):
            assert (a != b).nnz == 0
        rest = op.submit(m, sources=~head).result()[0]
        full = ref.response(m)
        np.testing.assert_array_equal(np.where(np.isnan(t), rest, t), full)


@needs_core
def test_solver_options_are_checked_and_reported():
    from latentinv._backend import core

    grid, survey, m = small_case()
    op = ShortestPathOperator(grid, survey, 2)
    assert op.kernel == f"wavefront-{core.ShortestPathEngine.default_simd}"
    assert ShortestPathOperator(grid, survey, 2, solver="dijkstra").kernel == "dijkstra"
    assert ShortestPathOperator(grid, survey, 2, solver="sweep", simd="scalar").kernel == "sweep-scalar"
    assert ShortestPathOperator(grid, survey, 2, backend="python").kernel == "scipy-dijkstra"
    assert core.ShortestPathEngine.sweep_lanes == 4
    with pytest.raises(ValueError, match="solver must be"):
        ShortestPathOperator(grid, survey, 2, solver="bellman")
    with pytest.raises(ValueError, match="simd must be"):
        ShortestPathOperator(grid, survey, 2, simd="avx512")
    with pytest.raises(ValueError, match=r"needs the C\+\+ backend"):
        ShortestPathOperator(grid, survey, 2, backend="python", solver="wavefront")
    with pytest.raises(ValueError, match="applies to the label-correcting"):
        ShortestPathOperator(grid, survey, 2, solver="dijkstra", simd="scalar")
    with pytest.raises(ValueError, match="queue applies to the Dijkstra solver"):
        op._engine.run(m[None], False, 1, "heap")
    with pytest.raises(ValueError, match="solver must be"):
        op._engine.run(m[None], False, 1, solver="x")
    if not core.ShortestPathEngine.avx2_available:
        with pytest.raises(ValueError, match="avx2"):
            ShortestPathOperator(grid, survey, 2, simd="avx2")
    op2 = pickle.loads(pickle.dumps(ShortestPathOperator(grid, survey, 2, solver="sweep", simd="scalar")))
    assert (op2.solver, op2.simd, op2.kernel) == ("sweep", "scalar", "sweep-scalar")
    stats = op._engine.sweep_statistics(m, [0, 1])
    assert len(stats) == 3 and stats[1] > 0 and stats[2] >= stats[1]


# -- contract: torch, pickling, attributes ----------------------------------------------------------
def test_torch_forward_and_backward_use_the_jacobian():
    grid, survey, m = small_case()
    op = ShortestPathOperator(grid, survey, 2)
    x = torch.tensor(np.stack([m, 1.1 * m]), requires_grad=True)
    out = op(x)
    g = torch.linspace(-1, 1, survey.n_data, dtype=torch.float64)
    (out * g).sum().backward()
    _, jac = op.response_and_jacobian(x.detach().numpy())
    expected = np.stack([J.T @ g.numpy() for J in jac])
    np.testing.assert_allclose(x.grad.numpy(), expected, rtol=1e-12)


@pytest.mark.parametrize("backend", BACKENDS)
def test_jacobian_rows_give_the_batch_gradient(backend):
    """Only the mini-batch rows of J are needed: same gradient as the full Jacobian, cheaper."""
    grid, survey, m = small_case(seed=3)
    op = ShortestPathOperator(grid, survey, 2, backend=backend)
    rows = torch.tensor([[0, 5, 7, 19], [2, 3, 11, 12]])
    x = torch.tensor(np.stack([m, 0.9 * m]), requires_grad=True)
    out = op.forward(x, jacobian_rows=rows)
    np.testing.assert_array_equal(out.detach().numpy(), op.response(x.detach().numpy()))
    w = torch.linspace(0.5, 2.0, rows.shape[1], dtype=torch.float64)
    (torch.gather(out, 1, rows) * w).sum().backward()
    _, jac = op.response_and_jacobian(x.detach().numpy())
    expected = np.stack([jac[i][rows[i].numpy()].T @ w.numpy() for i in range(2)])
    np.testing.assert_allclose(x.grad.numpy(), expected, rtol=1e-12)
    # a gradient on a row outside jacobian_rows is refused (its row may not have been computed)
    x2 = x.detach().clone().requires_grad_(True)
    out2 = op.forward(x2, jacobian_rows=rows)
    with pytest.raises(RuntimeError, match="outside jacobian_rows"):
        out2[:, 1].sum().backward()
    with pytest.raises(ValueError, match="jacobian_rows must lie in"):
        op.forward(x2, jacobian_rows=torch.tensor([[0], [survey.n_data]]))
    with pytest.raises(ValueError, match="integer indices of shape"):
        op.forward(x2, jacobian_rows=torch.zeros(3, 2, dtype=torch.long))


@needs_core
def test_engine_leaves_unflagged_jacobian_rows_empty():
    grid, survey, m = small_case(seed=4)
    op = ShortestPathOperator(grid, survey, 3, backend="cpp")
    flags = np.zeros((1, survey.n_data), np.uint8)
    flags[0, [1, 4, 9]] = 1
    t_full, (ip, ix, dv) = op._engine.run(m[None], True, 2)
    t_some, (jp, jx, ev) = op._engine.run(m[None], True, 2, jacobian_rows=flags)
    np.testing.assert_array_equal(t_full, t_some)
    for r in range(survey.n_data):
        got = (jx[jp[r]:jp[r + 1]], ev[jp[r]:jp[r + 1]])
        if flags[0, r]:
            np.testing.assert_array_equal(got[0], ix[ip[r]:ip[r + 1]])
            np.testing.assert_array_equal(got[1], dv[ip[r]:ip[r + 1]])
        else:
            assert len(got[0]) == 0
    with pytest.raises(ValueError, match="jacobian_rows must be None or an array of shape"):
        op._engine.run(m[None], True, 1, jacobian_rows=np.ones((2, survey.n_data), np.uint8))


@pytest.mark.parametrize("backend", BACKENDS)
def test_pickle_roundtrip_and_attributes(backend):
    grid, survey, m = small_case()
    op = ShortestPathOperator(grid, survey, 2, n_threads=3, backend=backend)
    assert (op.n_data, op.n_params, op.is_linear, op.backend) == (20, grid.n_cells, False, backend)
    assert (op.grid, op.survey, op.n_secondary_nodes, op.n_threads) == (grid, survey, 2, 3)
    assert op.n_nodes == 15 * 10 + 2 * (15 * 9 + 14 * 10)
    clone = pickle.loads(pickle.dumps(op))
    assert clone.backend == backend and clone.n_threads == 3
    np.testing.assert_array_equal(clone.response(m), op.response(m))


def test_default_threads_and_backend():
    grid, survey, _ = small_case()
    op = ShortestPathOperator(grid, survey)
    assert op.n_threads == available_cpus()     # affinity and cgroup quota (tests/test_cpus.py)
    assert op.n_secondary_nodes == 3
    assert op.backend == ("cpp" if HAS_CORE else "python")


@pytest.mark.parametrize("backend", BACKENDS)
def test_n_threads_set_after_construction_is_checked_and_resolved(backend, monkeypatch):
    """The workers set ``op.n_threads`` (``parallel.operator_threads``), and a user may undo a limit with
    None: it was stored as given, and the C++ engine refused None (or 0) only at the next call
    ("ShortestPathEngine.run: n_threads must be a positive integer, got None"). It is now checked when set,
    and None is the CPUs available, as in the constructor; get_params keeps the constructor's value."""
    grid, survey, m = small_case()
    op = ShortestPathOperator(grid, survey, 2, n_threads=1, backend=backend)
    expected = op.response(m)
    monkeypatch.setattr("latentinv.operators.shortest_path.available_cpus", lambda: 5)   # any machine
    op.n_threads = None
    assert op.n_threads == 5 and op.get_params()["n_threads"] == 1
    np.testing.assert_array_equal(op.response(m), expected)
    for bad in (0, 2.0, True):
        with pytest.raises(ValueError, match=r"^ShortestPathOperator: n_threads must be a positive integer or "
                                             rf"None, got {bad!r}$"):
            op.n_threads = bad
    assert op.n_threads == 5


# -- bad inputs -------------------------------------------------------------------------------------
@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("bad, match", [
    (lambda m: np.where(np.arange(m.size) == 5, np.nan, m), "NaN or inf"),
    (lambda m: np.where(np.arange(m.size) == 5, np.inf, m), "NaN or inf"),
    (lambda m: np.where(np.arange(m.size) == 5, 0.0, m), "> 0"),
    (lambda m: -m, "> 0"),
    # subnormal: refused by the shared check before the contrast limit (float64's smallest normal number)
    (lambda m: np.where(np.arange(m.size) == 5, 1e-320, m),
     r"at least 2\.2250738585072014e-308 ns/m .*smallest normal float64 number.*got minimum 1e-320 at model 0, cell 5"),
    (lambda m: m[:-1], "shape"),
    (lambda m: np.stack([m, m])[None], "shape"),
    (lambda m: "slow", "numeric"),
])
def test_bad_models_raise(backend, bad, match):
    grid, survey, m = small_case()
    op = ShortestPathOperator(grid, survey, 2, backend=backend)
    with pytest.raises(ValueError, match=match):
        op.response(bad(m))
    with pytest.raises(ValueError, match=match):
        op.response_and_jacobian(bad(m))
    with pytest.raises(ValueError, match=match):
        op.submit(bad(m))
    if np.ndim(bad(m)) == 1:
        with pytest.raises(ValueError, match=match):
            op.jacobian(bad(m))
    if not isinstance(bad(m), str):
        with pytest.raises(ValueError, match="ShortestPathOperator.forward: .*" + match):
            op.forward(torch.tensor(bad(m), requires_grad=True))


DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("value, match", [
    (np.nan, r"NaN or inf: model 1, cell 5 is nan"),
    (-12.5, r"> 0 in every cell .*minimum -12\.5 at model 1, cell 5"),
])
def test_torch_forward_names_the_bad_cell(device, backend, value, match):
    grid, survey, m = small_case()
    op = ShortestPathOperator(grid, survey, 2, backend=backend)
    batch = np.stack([m, m])
    batch[1, 5] = value
    with pytest.raises(ValueError, match="ShortestPathOperator.forward: .*" + match):
        op.forward(torch.tensor(batch, dtype=torch.float32, device=device))
    with pytest.raises(ValueError, match=match):
        op.submit(torch.tensor(batch, device=device))
    for dtype in (torch.int64, torch.bool, torch.complex128):
        with pytest.raises(ValueError, match=f"got dtype {str(dtype)[6:]}"):
            op.forward(torch.ones((2, grid.n_cells), dtype=dtype, device=device))


@pytest.mark.parametrize("backend", BACKENDS)
def test_empty_batch_gives_an_empty_result(backend):
    grid, survey, m = small_case()
    op = ShortestPathOperator(grid, survey, 2, n_threads=2, backend=backend)
    empty = np.ones((0, grid.n_cells))
    t, jac = op.response_and_jacobian(empty)
    assert t.shape == (0, survey.n_data) and t.dtype == np.float64 and jac == []
    assert op.response(empty).shape == (0, survey.n_data)
    t, jac = op.submit(empty, want_jacobian=True).result()
    assert t.shape == (0, survey.n_data) and jac == []
    x = torch.ones((0, grid.n_cells), dtype=torch.float64, requires_grad=True)
    out = op.forward(x)
    assert out.shape == (0, survey.n_data)
    out.sum().backward()
    assert x.grad.shape == (0, grid.n_cells)
    # the batch of one after an empty one still computes (the engine is left usable)
    np.testing.assert_array_equal(op.response(m[None]), op.response(m)[None])
    if backend == "cpp":
        times, (indptr, indices, data) = op._engine.run(empty, True, 3)
        assert times.shape == (0, survey.n_data)
        assert indptr.tolist() == [0] and len(indices) == 0 and len(data) == 0


def _process_threads():
    return len(os.listdir("/proc/self/task"))


@needs_core
@pytest.mark.skipif(not os.path.isdir("/proc/self/task"), reason="needs /proc/self/task (Linux)")
def test_background_pool_is_bounded_by_tasks_and_machine():
    from latentinv._backend import core

    cap = core.ShortestPathEngine.max_threads
    assert cap >= 4 and cap % 4 == 0
    grid, survey, m = small_case()  # 4 sources: 4 (model, source) tasks per model (Dijkstra)
    op = ShortestPathOperator(grid, survey, 1, n_threads=500, backend="cpp", solver="dijkstra")
    assert op._engine.pool_size == 0
    before = _process_threads()
    expected = op.response(m[None])
    np.testing.assert_array_equal(op.submit(m[None]).result()[0], expected)
    assert op._engine.pool_size == 4                # one model: 4 tasks, not 500 threads
    assert _process_threads() - before == 4
    many = np.tile(m, (3 * cap, 1))                 # more tasks than the machine-wide bound
    np.testing.assert_array_equal(op.submit(many).result()[0], np.tile(expected, (3 * cap, 1)))
    assert op._engine.pool_size == cap
    assert _process_threads() - before == cap
    del op
    assert _process_threads() == before             # the pool's threads are joined


@needs_core
def test_engine_validates_n_threads():
    from latentinv._backend import core

    engine = core.ShortestPathEngine(2, 2, 1.0, 1.0, 0, [0], [8], [0], [0])
    m = np.ones((1, 4))
    for bad in (0, -3, True, 2.5, "3", None, np.float64(2.0)):
        for call in (engine.run, engine.submit):
            with pytest.raises(ValueError, match=r"n_threads must be a positive integer, got .*"
                                                 + type(bad).__name__):
                call(m, False, bad)
    for fine in (1, np.int64(3), 10**30):           # huge requests are clamped, not refused
        assert engine.run(m, False, fine)[0][0, 0] == pytest.approx(2 * np.sqrt(2), abs=1e-15)
    assert engine.pool_size == 0
    assert engine.submit(m, False, 10**30).result()[0][0, 0] == pytest.approx(2 * np.sqrt(2), abs=1e-15)
    assert engine.pool_size == 1                    # one task
    with pytest.raises(ValueError, match="n_threads"):
        ShortestPathOperator(Grid2D(2, 2, 1.0), CrossholeSurvey([[0.0, 0.0]], [[2.0, 2.0]]), 0,
                             n_threads=2.0)


def test_bad_construction_raises():
    grid, survey, _ = small_case()
    with pytest.raises(ValueError, match="n_secondary_nodes"):
        ShortestPathOperator(grid, survey, -1)
    with pytest.raises(ValueError, match="n_secondary_nodes"):
        ShortestPathOperator(grid, survey, 2.5)
    with pytest.raises(ValueError, match="n_threads"):
        ShortestPathOperator(grid, survey, 2, n_threads=0)
    with pytest.raises(ValueError, match="backend"):
        ShortestPathOperator(grid, survey, 2, backend="gpu")
    with pytest.raises(TypeError, match="Grid2D"):
        ShortestPathOperator("grid", survey)
    outside = CrossholeSurvey([[-3.0, 0.5]], [[2.0, 1.0]])
    with pytest.raises(ValueError, match="outside the grid"):
        ShortestPathOperator(grid, outside)


def test_sensor_off_the_graph_names_nearest_node():
    grid = Grid2D(4, 4, 1.0)
    survey = CrossholeSurvey([[0.0, 1.3]], [[4.0, 2.0]])
    # with 3 secondary nodes the side x=0 has nodes at depth 1.25, 1.5, 1.75: 1.3 is on none
    with pytest.raises(ValueError, match=r"source 0 .* not on a graph node.*nearest node .*\(0\.0, 1\.25\)"):
        ShortestPathOperator(grid, survey, 3)
    # with 9 secondary nodes 1.3 is a node: accepted, and on the side it is the exact distance
    op = ShortestPathOperator(grid, survey, 9)
    assert op.response(np.ones(16))[0] >= np.hypot(4.0, 0.7) - 1e-12
    nodes = sensor_nodes(grid, [[0.0, 1.3], [2.0, 0.0], [1.0, 1.0]], 9)
    positions = _node_positions(grid, 9)[nodes]
    np.testing.assert_allclose(positions, [[0.0, 1.3], [2.0, 0.0], [1.0, 1.0]], atol=1e-12)


@needs_core
def test_engine_validates_before_touching_memory():
    from latentinv._backend import core

    with pytest.raises(ValueError, match="out of range"):
        core.ShortestPathEngine(2, 2, 1.0, 1.0, 0, [0], [99], [0], [0])
    with pytest.raises(ValueError, match="source index"):
        core.ShortestPathEngine(2, 2, 1.0, 1.0, 0, [0], [8], [1], [0])
    with pytest.raises(ValueError, match="dx and dz"):
        core.ShortestPathEngine(2, 2, float("nan"), 1.0, 0, [0], [8], [0], [0])
    engine = core.ShortestPathEngine(2, 2, 1.0, 1.0, 0, [0], [8], [0], [0])
    with pytest.raises(ValueError, match="shape"):
        engine.run(np.ones((1, 5)), False, 1)
    with pytest.raises(ValueError, match="NaN or inf"):
        engine.run(np.array([[1.0, np.nan, 1.0, 1.0]]), True, 1)
    with pytest.raises(ValueError, match="> 0"):
        engine.run(np.array([[1.0, 0.0, 1.0, 1.0]]), True, 1)
    with pytest.raises(ValueError, match="n_threads"):
        engine.run(np.ones((1, 4)), True, 0)
    with pytest.raises(ValueError, match=r"shape \(n_models, 4\)"):
        engine.run(np.ones((0, 5)), False, 1)
    with pytest.raises(ValueError, match="queue"):
        engine.run(np.ones((1, 4)), True, 1, "fibonacci")
    t, _ = engine.run(np.ones((1, 4)), False, 1)
    assert t[0, 0] == pytest.approx(2 * np.sqrt(2), abs=1e-15)


# -- source subsets and background jobs (submit) ---------------------------------------------------
def _jacobian_rows_equal(a, b, rows):
    return all((a[r] != b[r]).nnz == 0 for r in rows)


@pytest.mark.parametrize("backend", BACKENDS)
@settings(max_examples=15, deadline=None)
@given(seed=st.integers(0, 2**31), n_models=st.integers(1, 3))
def test_source_subsets_match_the_full_run(backend, seed, n_models):
    grid, survey, _ = small_case()
    op = ShortestPathOperator(grid, survey, 2, n_threads=2, backend=backend)
    rng = np.random.default_rng(seed)
    m = np.stack([small_case(seed=int(s))[2] for s in rng.integers(0, 1000, n_models)])
    flags = rng.random((n_models, survey.n_sources)) < 0.5
    t_all, J_all = op.response_and_jacobian(m)
    t_sub, J_sub = op._response_and_jacobian(op._check_models(m)[0], True, sources=flags)
    wanted = flags[:, op.data_sources]                              # (n_models, n_data)
    np.testing.assert_array_equal(t_sub[wanted], t_all[wanted])
    assert np.all(np.isnan(t_sub[~wanted]))
    for k in range(n_models):
        assert _jacobian_rows_equal(J_sub[k], J_all[k], np.flatnonzero(wanted[k]))
        assert all(J_sub[k][r].nnz == 0 for r in np.flatnonzero(~wanted[k]))
    # the two complementary halves give the full run, as the pipelined inversion combines them
    head = op.submit(m, want_jacobian=True, sources=flags).result()[0]
    rest = op.submit(m, sources=~flags).result()[0]
    np.testing.assert_array_equal(np.where(np.isnan(head), rest, head), t_all)


@needs_core
def test_submitted_jobs_equal_run_whatever_the_order_of_waiting():
    grid, survey = paper_crosshole()
    op = ShortestPathOperator(grid, survey, 3, n_threads=2, backend="cpp")
    models = [channel_model(grid, seed)[None] for seed in range(4)]
    rows = np.zeros((1, survey.n_data), bool)
    rows[0, ::37] = True
    pending = [op.submit(m, want_jacobian=True, jacobian_rows=rows) for m in models]
    assert op.runs_in_background
    for m, p in reversed(list(zip(models, pending))):      # waited in the opposite order
        t, J = p.result()
        te, Je = op._response_and_jacobian(m, True, jacobian_rows=rows)
        np.testing.assert_array_equal(t, te)
        assert (J[0] != Je[0]).nnz == 0 and J[0].nnz > 0
        assert p.result() is p.result()                    # kept, not recomputed
    # a job whose result is never asked for, then the operator dropped: no hang, no crash
    op.submit(models[0])
    del op, pending


@needs_core
def test_pending_result_is_checked_against_the_model():
    grid, survey, m = small_case(seed=5)
    op = ShortestPathOperator(grid, survey, 2, backend="cpp")
    x = torch.tensor(m[None], requires_grad=True)
    rows = torch.tensor([[1, 2, 3]])
    mask = np.zeros((1, survey.n_data), bool)
    mask[0, [1, 2, 3]] = True
    pending = op.submit(m[None], want_jacobian=True, jacobian_rows=mask)
    out = op.forward(x, jacobian_rows=rows, pending=pending)
    torch.gather(out, 1, rows).sum().backward()
    _, jac = op.response_and_jacobian(m[None])
    np.testing.assert_allclose(x.grad.numpy()[0], jac[0][[1, 2, 3]].T @ np.ones(3), rtol=1e-12)
    with pytest.raises(ValueError, match="other slowness values"):
        op.forward(torch.tensor(1.1 * m[None], requires_grad=True), jacobian_rows=rows,
                   pending=pending)
    with pytest.raises(ValueError, match="want_jacobian=False"):
        op.forward(torch.tensor(m[None], requires_grad=True), pending=op.submit(m[None]))
    with pytest.raises(ValueError, match="did not compute"):
        op.forward(torch.tensor(m[None], requires_grad=True), jacobian_rows=torch.tensor([[4]]),
                   pending=pending)
    with pytest.raises(ValueError, match="sources must be None or a boolean array of shape"):
        op.submit(m[None], sources=np.ones((1, 2), bool))
    with pytest.raises(ValueError, match="NaN or inf"):
        op.submit(np.full((1, grid.n_cells), np.nan))
    with pytest.raises(ValueError, match="sources must be None or an array of shape"):
        op._engine.submit(m[None], False, 1, sources=np.ones((2, survey.n_sources), np.uint8))


@needs_core
@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs os.fork")
def test_background_pool_survives_fork():
    """A child forked after the pool started gets a fresh pool (the parent's threads are gone)."""
    import subprocess
    import sys
    import textwrap

    script = textwrap.dedent("""
        import os, signal, sys, numpy as np
        from latentinv.geometry import CrossholeSurvey, Grid2D
        from latentinv.operators import ShortestPathOperator
        grid = Grid2D(10, 6, 0.1)
        d = 0.05 + 0.2 * np.arange(4)
        op = ShortestPathOperator(grid, CrossholeSurvey(np.c_[np.zeros(4), d], np.c_[np.full(4, 0.6), d]), 1,
                                  n_threads=2)
        m = np.linspace(5, 9, grid.n_cells)[None]
        expected = op.submit(m).result()[0]
        pid = os.fork()
        if pid == 0:
            signal.alarm(60)
            ok = np.array_equal(op.submit(m).result()[0], expected)
            os._exit(0 if ok else 3)
        _, status = os.waitpid(pid, 0)
        sys.exit(os.waitstatus_to_exitcode(status))
    """)
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(sys.path))
    done = subprocess.run([sys.executable, "-c", script], env=env, timeout=120)
    assert done.returncode == 0


# -- the limits of float64 path times: clear errors, and an engine that stays sound after one --------
def _small_operator(backend):
    grid = Grid2D(4, 3, 1.0)
    survey = CrossholeSurvey([[0.0, 1.0], [0.0, 3.0]], [[3.0, 0.0], [3.0, 2.0], [3.0, 4.0]])
    return ShortestPathOperator(grid, survey, n_secondary_nodes=1, backend=backend)


@pytest.mark.parametrize("backend", BACKENDS)
def test_slowness_contrast_beyond_the_limit_is_refused(backend):
    op = _small_operator(backend)
    m = np.full(op.n_params, 5.0)
    m[5] = 5.0 / (op.max_slowness_contrast * 1.01)
    for call in (op.response, op.response_and_jacobian, lambda x: op.submit(x).result()):
        with pytest.raises(ValueError, match="slowness contrast .* at most 1e\\+08"):
            call(m)
    m[5] = 5.0 / (op.max_slowness_contrast * 0.99)     # just inside: answered, and exact (J m = t)
    t, J = op.response_and_jacobian(m)
    np.testing.assert_allclose(J @ m, t, rtol=1e-12)


@pytest.mark.parametrize("backend", BACKENDS)
def test_overflowing_times_raise_and_leave_the_engine_sound(backend):
    op = _small_operator(backend)
    good = np.random.default_rng(0).uniform(0.5, 2.0, op.n_params)
    t0, J0 = op.response_and_jacobian(good)
    huge = np.full(op.n_params, 9e307)                  # contrast 1, but path times overflow
    for call in (op.response, op.response_and_jacobian, lambda x: op.submit(x, want_jacobian=True).result()):
        with pytest.raises(ValueError, match="overflow|predecessor cycle"):
            call(huge)
    with pytest.raises(ValueError, match="overflow the model's dtype float32"):
        op.forward(torch.full((op.n_params,), 3e38, dtype=torch.float32))
    # the workspaces reused after the errors give the same answers as before, bit for bit
    t1, J1 = op.response_and_jacobian(good)
    np.testing.assert_array_equal(t1, t0)
    assert (J1 != J0).nnz == 0


# -- Richardson extrapolation (extrapolate_from) -------------------------------------------------------
@pytest.mark.parametrize("backend", BACKENDS)
def test_extrapolation_is_richardsons_combination_of_two_graphs(backend):
    """Times and Jacobians: (a X_n - b X_c) / (a - b) of two plain operators, a = (n+1)^2, b =
    (c+1)^2; J @ m == t still; submit (rows, sources) gives the same; pickling keeps the option."""
    grid, survey, m = small_case()
    m2 = np.stack([m, small_case(seed=1)[2]])
    op = ShortestPathOperator(grid, survey, 5, backend=backend, extrapolate_from=1)
    tf, Jf = ShortestPathOperator(grid, survey, 5, backend=backend).response_and_jacobian(m2)
    tc, Jc = ShortestPathOperator(grid, survey, 1, backend=backend).response_and_jacobian(m2)
    a, b = 36.0, 4.0
    t, J = op.response_and_jacobian(m2)
    np.testing.assert_array_equal(t, (a * tf - b * tc) / (a - b))
    for k in range(2):
        np.testing.assert_allclose(J[k].toarray(), (a * Jf[k].toarray() - b * Jc[k].toarray()) / (a - b),
                                   rtol=0, atol=1e-15)
        np.testing.assert_allclose(J[k] @ m2[k], t[k], rtol=1e-12)
    assert (np.concatenate([j.data for j in J]) < 0).any()   # the coarse graph's cells enter negatively
    rows = np.zeros((2, survey.n_data), bool)
    rows[:, ::3] = True
    sources = np.ones((2, survey.n_sources), bool)
    sources[1, 0] = False
    ts, Js = op.submit(m2, want_jacobian=True, jacobian_rows=rows if op.supports_jacobian_rows else None,
                       sources=sources).result()
    gone = survey.pairs[:, 0] == 0
    assert np.isnan(ts[1, gone]).all()
    np.testing.assert_array_equal(ts[0], t[0])
    np.testing.assert_array_equal(ts[1, ~gone], t[1, ~gone])
    if op.supports_jacobian_rows:
        keep = rows[0]
        np.testing.assert_allclose(Js[0][keep].toarray(), J[0][keep].toarray(), rtol=0, atol=1e-15)
        assert Js[0][~keep].nnz == 0
    again = pickle.loads(pickle.dumps(op))
    assert again.extrapolate_from == 1 and "extrapolate_from=1" in repr(again)
    np.testing.assert_array_equal(again.response(m), t[0])


@pytest.mark.parametrize("backend", BACKENDS)
def test_extrapolation_removes_most_of_the_graph_error_in_a_homogeneous_medium(backend):
    """Straight rays, exact times s * distance: the graph overestimates them (angles between nodes);
    6 nodes extrapolated from 2 err 3x less than the 6-node graph on average, and less than a
    10-node graph (measured: 0.0065, 0.0203 and 0.0081 ns)."""
    grid, survey, _ = small_case()
    s = np.full(grid.n_cells, 10.0)
    exact = s[0] * survey.distances
    plain = ShortestPathOperator(grid, survey, 6, backend=backend).response(s)
    extra = ShortestPathOperator(grid, survey, 6, backend=backend, extrapolate_from=2).response(s)
    dense = ShortestPathOperator(grid, survey, 10, backend=backend).response(s)
    assert (plain >= exact - 1e-12).all()
    err_plain, err_extra = np.abs(plain - exact).mean(), np.abs(extra - exact).mean()
    assert err_plain > 1e-3
    assert err_extra < err_plain / 3, (err_plain, err_extra)
    assert err_extra < np.abs(dense - exact).mean()


@pytest.mark.parametrize("bad", [3, 4, -1, 1.0, True, "2"])
def test_extrapolate_from_must_be_a_coarser_node_count(bad):
    grid, survey, _ = small_case()
    with pytest.raises(ValueError, match="extrapolate_from must be None or an integer in"):
        ShortestPathOperator(grid, survey, 3, extrapolate_from=bad)


def test_extrapolate_from_names_itself_when_a_sensor_is_off_the_coarse_graph():
    """A source at 1/7 of a cell sits on a node of the 6-node graph but not of the 2-node one: the error
    says that the coarse graph of extrapolate_from is the one it is off, not n_secondary_nodes=6."""
    grid = Grid2D(6, 10, 0.2)
    survey = CrossholeSurvey([[0.0, 0.2 * (2 + 1 / 7)]], [[2.0, 0.6]])
    ShortestPathOperator(grid, survey, 6)
    with pytest.raises(ValueError, match=r"n_secondary_nodes=2 nodes on a cell side.*\(With extrapolate_from=2 "
                                         r"every sensor must also sit on a node of the coarse graph of 2 "
                                         r"secondary nodes: change extrapolate_from, or pass None.\)$"):
        ShortestPathOperator(grid, survey, 6, extrapolate_from=2)


def _scaled_problem(cell_size, n=3):
    """10 x 6 cells of ``cell_size``, 2 + 2 sensors on nodes, fixed random slowness."""
    c = cell_size
    grid = Grid2D(10, 6, c)
    survey = CrossholeSurvey([[0.0, 1 * c], [0.0, 5 * c]], [[6 * c, 2 * c], [6 * c, 8 * c]])
    s = np.random.default_rng(0).uniform(10.0, 20.0, grid.n_cells)
    return grid, survey, s


@settings(max_examples=12, deadline=None)
@given(exponent=st.integers(-150, 150), backend=st.sampled_from(["cpp", "python"] if HAS_CORE else ["python"]))
def test_traveltimes_scale_with_the_cell_size(exponent, backend):
    """The graph is the same at every scale: times and Jacobian are ``cell_size`` times those of unit
    cells, to float64 rounding, over the whole accepted range (1e-160 m cells once gave times 1e-4
    off, and 1e-200 m cells times of 0)."""
    unit = ShortestPathOperator(*_scaled_problem(1.0)[:2], backend=backend)
    grid, survey, s = _scaled_problem(10.0 ** exponent)
    op = ShortestPathOperator(grid, survey, backend=backend)
    t_unit = unit.response(s)
    np.testing.assert_allclose(op.response(s) / 10.0 ** exponent, t_unit, rtol=1e-13)
    np.testing.assert_allclose(op.jacobian(s).toarray() / 10.0 ** exponent, unit.jacobian(s).toarray(),
                               rtol=1e-13, atol=1e-13)


@pytest.mark.parametrize("cell_size", [1e-200, 1e-160, 1e160, 1e300])
def test_cells_beyond_float64_lengths_are_refused(cell_size):
    grid, survey, _ = _scaled_problem(cell_size)
    with pytest.raises(ValueError, match=r"ShortestPathOperator: cell size \(dx, dz\) = .* outside the range "
                                         r".* expected dx and dz in \[5\.97e-154, 9\.48e\+153\] m"):
        ShortestPathOperator(grid, survey)


# -- the engine's index arithmetic, sensor snapping and rounding margins -----------------------------
@needs_core
@pytest.mark.parametrize("n_rows, n_cols, n", [(3, 49, 1), (2, 48, 1), (2, 2, 49)])
def test_grid_sizes_whose_fast_division_rounds_low_equal_python(n_rows, n_cols, n):
    """The engine divides node and cell ids by C, C + 1 and n through a double reciprocal, and
    49 * (1 / 49) rounds below 1: 49 columns (C), 48 columns (C + 1) or 49 secondary nodes need its
    correction step (no other width up to 97 does). Every solver still equals the Python graph."""
    grid = Grid2D(n_rows, n_cols, (0.1, 0.13), origin=(0.5, -1.0))
    nodes = _node_positions(grid, n)
    left = nodes[np.isclose(nodes[:, 0], grid.origin[0])]
    right = nodes[np.isclose(nodes[:, 0], grid.origin[0] + grid.width)]
    survey = CrossholeSurvey(left[::2], right[1::2])
    m = np.random.default_rng(n_cols).uniform(5.0, 15.0, grid.n_cells)
    t_py, J_py = ShortestPathOperator(grid, survey, n, backend="python").response_and_jacobian(m)
    for solver in ("wavefront", "dijkstra"):
        t, J = ShortestPathOperator(grid, survey, n, n_threads=1, backend="cpp",
                                    solver=solver).response_and_jacobian(m)
        np.testing.assert_array_equal(t, t_py, err_msg=solver)
        assert np.array_equal(J.indptr, J_py.indptr) and np.array_equal(J.indices, J_py.indices), solver
        np.testing.assert_allclose(J.data, J_py.data, rtol=0, atol=1e-12, err_msg=solver)


@needs_core
def test_engine_node_positions_are_the_graph_nodes():
    """ShortestPathEngine.node_position: (x, depth) of every node from the grid origin, the nodes of
    the Python graph (corners, horizontal then vertical sides, secondary nodes at k / (n + 1))."""
    grid = Grid2D(3, 4, (0.3, 0.2), origin=(1.0, 2.0))
    n = 3
    op = ShortestPathOperator(grid, CrossholeSurvey([[1.0, 2.0]], [[2.2, 2.6]]), n, backend="cpp")
    got = np.array([op._engine.node_position(v) for v in range(op.n_nodes)])
    np.testing.assert_allclose(got, _node_positions(grid, n) - np.array(grid.origin), rtol=0, atol=1e-12)


@pytest.mark.parametrize("backend", BACKENDS)
def test_sensors_snap_to_a_node_only_within_1e_9_of_a_cell(backend):
    """A sensor 1e-12 cell off a node is that node; 1e-6 cell off it is refused, not moved."""
    grid = Grid2D(4, 3, (0.5, 0.25))
    n = 3
    on_side, corner = np.array([0.0, 0.375]), np.array([1.5, 0.75])   # left side k = 1; a corner
    for d_src, d_rcv in (((0.0, 1.0), (1.0, 0.0)), ((1.0, 0.0), (0.0, 1.0))):
        step_src, step_rcv = np.array(d_src) * grid.cell_size, np.array(d_rcv) * grid.cell_size
        near = ShortestPathOperator(grid, CrossholeSurvey(on_side + 1e-12 * step_src,
                                                          corner - 1e-12 * step_rcv), n, backend=backend)
        exact = ShortestPathOperator(grid, CrossholeSurvey(on_side, corner), n, backend=backend)
        np.testing.assert_array_equal(near._source_nodes, exact._source_nodes)
        np.testing.assert_array_equal(near._receiver_nodes, exact._receiver_nodes)
        with pytest.raises(ValueError, match="source 0 .* is not on a graph node"):
            ShortestPathOperator(grid, CrossholeSurvey(on_side + 1e-6 * step_src, corner), n, backend=backend)
        with pytest.raises(ValueError, match="receiver 0 .* is not on a graph node"):
            ShortestPathOperator(grid, CrossholeSurvey(on_side, corner - 1e-6 * step_rcv), n, backend=backend)


@pytest.mark.parametrize("backend", BACKENDS)
def test_slowness_contrast_exactly_at_the_limit_is_accepted(backend):
    """A contrast of exactly max_slowness_contrast is "at most" the limit: accepted, and the traveltimes
    are J m (each path's times are its lengths times the slownesses it crosses)."""
    op = _small_operator(backend)
    m = np.full(op.n_params, 1.0)
    m[5] = op.max_slowness_contrast                     # max / min == 1e8 exactly: "at most" the limit
    t, J = op.response_and_jacobian(m)
    np.testing.assert_allclose(J @ m, t, rtol=1e-12)


@needs_core
def test_label_correcting_solvers_equal_dijkstra_beyond_the_rounding_margin():
    """Path times of 1e12 to 1e15 times a fast cell's crossing (a slow column in front of it): there an
    edge's rounding can make a detour through a third node of a cell shorter than the direct edge, and
    the repeat rounds inside a cell must push every node, not only along the sides (the shortcut that
    sweep_group allows only within its rounding margin). Beyond the operator's contrast limit, so on
    the engine itself: times only (path back-tracking is not defined there)."""
    from latentinv._backend import core

    grid, n = Grid2D(2, 3, (0.025, 1.0)), 8          # flat cells: a small margin
    nodes = _node_positions(grid, n)
    sources = np.flatnonzero(nodes[:, 0] == 0.0)
    receivers = np.flatnonzero(nodes[:, 0] > grid.dx * (1 + 1e-9))
    pairs = np.array([(s, r) for s in range(len(sources)) for r in range(len(receivers))])
    engine = core.ShortestPathEngine(grid.n_rows, grid.n_cols, grid.dx, grid.dz, n, sources.tolist(),
                                     receivers.tolist(), pairs[:, 0].tolist(), pairs[:, 1].tolist())
    for exponent in (12, 12.5, 13, 13.5, 14, 14.5, 15):
        image = np.ones(grid.shape)
        image[:, 0] = 10.0 ** exponent
        m = grid.to_flat(image)[None]
        ref = engine.run(m, False, 1, solver="dijkstra")[0]
        for kw in _solver_variants():
            np.testing.assert_array_equal(engine.run(m, False, 1, **kw)[0], ref, err_msg=f"{exponent} {kw}")


def test_get_and_set_params_reach_the_operator_through_the_inverter():
    # LatentInverter.get_params(deep=True) listed no operator__ parameter of a ShortestPathOperator and
    # set_params(operator__n_secondary_nodes=...) (a GridSearchCV over the graph's accuracy) raised
    # AttributeError: it had neither get_params nor set_params
    from sklearn.base import clone
    from sklearn.model_selection import GridSearchCV

    from latentinv import LatentInverter
    from latentinv.inversion import TorchGenerator

    grid = Grid2D(10, 6, 0.1)
    survey = CrossholeSurvey(np.c_[np.zeros(3), [0.2, 0.5, 0.8]], np.c_[np.full(3, 0.6), [0.2, 0.5, 0.8]])
    m = np.random.default_rng(0).uniform(12.0, 17.0, grid.n_cells)
    op = ShortestPathOperator(grid, survey, n_secondary_nodes=2)
    assert op.get_params() == {"grid": grid, "survey": survey, "n_secondary_nodes": 2, "n_threads": None,
                               "backend": "auto", "solver": "auto", "simd": "auto", "extrapolate_from": None}
    copy = clone(op, safe=False)
    assert copy is not op and copy.get_params() == op.get_params()
    np.testing.assert_array_equal(copy.response(m), op.response(m))
    assert op.set_params(n_secondary_nodes=3) is op and op.n_secondary_nodes == 3
    np.testing.assert_array_equal(op.response(m), ShortestPathOperator(grid, survey, n_secondary_nodes=3).response(m))
    with pytest.raises(ValueError, match=r"invalid parameter\(s\) \['boundary_rays'\]"):
        op.set_params(boundary_rays="split")
    with pytest.raises(ValueError, match="n_secondary_nodes must be an integer"):
        op.set_params(n_secondary_nodes=-1)

    gen = TorchGenerator(torch.nn.Sequential(torch.nn.Linear(2, grid.n_cells), torch.nn.Sigmoid()), 2)
    inv = LatentInverter(gen, ShortestPathOperator(grid, survey, n_secondary_nodes=2), n_starts=1, n_epochs=1,
                         batch_size=None, device="cpu")
    assert "operator__n_secondary_nodes" in inv.get_params(deep=True)
    assert clone(inv).set_params(operator__n_secondary_nodes=3).operator.n_secondary_nodes == 3
    X = np.full((2, survey.n_data), 7.0)
    gs = GridSearchCV(inv, {"operator__n_secondary_nodes": [1, 2]}, cv=2,
                      scoring=lambda est, X, y=None: float(est.operator_.n_secondary_nodes)).fit(X)
    assert gs.best_params_ == {"operator__n_secondary_nodes": 2}


@pytest.mark.skipif(not hasattr(os, "fork") or not os.path.exists("/proc/self/status"),
                    reason="address-space limit (RLIMIT_AS) on Linux only")
@pytest.mark.parametrize("backend, n_rows, n", [("cpp", 1000, 100), ("python", 500, 60)])
def test_a_graph_beyond_memory_is_a_memory_error_that_names_its_size(backend, n_rows, n):
    """Under a 6 GB address-space limit, C++'s labels of 201 million nodes were a bare
    MemoryError('std::bad_alloc'), and the Python backend's graph of 30 million nodes NumPy's 'Unable to
    allocate ...'. The error now names the node count, the grid, n_secondary_nodes and n_threads, and what needs less."""
    if backend == "cpp" and not HAS_CORE:
        pytest.skip("latentinv._core not built")
    import subprocess
    import sys
    nodes = (n_rows + 1) ** 2 + 2 * n_rows * (n_rows + 1) * n
    code = f"""
import resource
resource.setrlimit(resource.RLIMIT_AS, (6 * 2**30, 6 * 2**30))
import numpy as np
from latentinv import CrossholeSurvey, Grid2D
from latentinv.operators import ShortestPathOperator
grid = Grid2D({n_rows}, {n_rows}, 0.1)
survey = CrossholeSurvey([[0.0, 0.1]], [[{n_rows} * 0.1, 0.2]])
try:
    op = ShortestPathOperator(grid, survey, n_secondary_nodes={n}, n_threads=1, backend={backend!r})
    op.response(np.ones(grid.n_cells))
except MemoryError as exc:
    print(exc)
"""
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    assert (f"ShortestPathOperator: out of memory for the graph of {nodes} nodes ({n_rows} x {n_rows} cells, "
            f"n_secondary_nodes={n}) with n_threads=1 ({backend} backend)") in out.stdout, out.stdout
    assert "fewer secondary nodes, fewer threads or a coarser grid need less memory" in out.stdout
