"""Straight-ray operator: exact lengths against an independent clipping computation, identities."""
import pickle

import numpy as np
import pytest
import torch
from hypothesis import assume, given, settings, strategies as st

from latentinv import CrossholeSurvey, Grid2D, StraightRayOperator, paper_crosshole


def clipped_length(p, q, box):
    """Length of segment p-q inside the rectangle box = (x0, x1, z0, z1) (Liang-Barsky clipping)."""
    d = q - p
    t0, t1 = 0.0, 1.0
    for dp, lo, hi, start in ((d[0], box[0], box[1], p[0]), (d[1], box[2], box[3], p[1])):
        if dp == 0:
            if start < lo or start > hi:
                return 0.0
            continue
        a, b = (lo - start) / dp, (hi - start) / dp
        t0, t1 = max(t0, min(a, b)), min(t1, max(a, b))
    return max(t1 - t0, 0.0) * np.hypot(*d)


def reference_matrix(grid, survey):
    G = np.zeros((survey.n_data, grid.n_cells))
    xe, ze = grid.x_edges, grid.depth_edges
    for i, (p, q) in enumerate(zip(survey.source_positions, survey.receiver_positions)):
        for r in range(grid.n_rows):
            for c in range(grid.n_cols):
                G[i, r * grid.n_cols + c] = clipped_length(p, q, (xe[c], xe[c + 1], ze[r], ze[r + 1]))
    return G


points = st.tuples(st.floats(0, 1), st.floats(0, 1))


@settings(max_examples=40, deadline=None)
@given(
    n_rows=st.integers(1, 7), n_cols=st.integers(1, 7),
    dx=st.floats(0.05, 2.0), dz=st.floats(0.05, 2.0),
    src=st.lists(points, min_size=1, max_size=3), rcv=st.lists(points, min_size=1, max_size=3),
)
def test_lengths_equal_independent_clipping(n_rows, n_cols, dx, dz, src, rcv):
    grid = Grid2D(n_rows, n_cols, (dx, dz), origin=(-0.3, 1.2))
    scale = np.array([grid.width, grid.height])
    off = np.array(grid.origin)
    sources = off + np.array(src) * scale
    receivers = off + np.array(rcv) * scale
    dist = np.linalg.norm(sources[:, None] - receivers[None], axis=2)
    assume(dist.min() > 1e-6)
    # keep rays off grid lines (the boundary split is tested separately)
    d = (receivers[None] - sources[:, None]).reshape(-1, 2)
    assume(np.all(np.abs(d) > 1e-6))
    survey = CrossholeSurvey(sources, receivers)
    G = StraightRayOperator(grid, survey).matrix
    np.testing.assert_allclose(G.toarray(), reference_matrix(grid, survey), rtol=0, atol=1e-9 * max(dx, dz))
    np.testing.assert_allclose(G.sum(axis=1).A1, survey.distances, rtol=0, atol=1e-12 * (1 + survey.distances.max()))
    assert G.min() >= 0


def test_paper_row_sums_and_boundary_rays():
    grid, survey = paper_crosshole(0.01, 6.49)
    op = StraightRayOperator(grid, survey)
    np.testing.assert_allclose(op.matrix.sum(axis=1).A1, survey.distances, rtol=0, atol=1e-12)
    assert op.n_data == 625 and op.n_params == 8385
    # horizontal ray at 0.5 m lies on the line between rows 4 and 5: split half and half
    row0 = op.matrix[0].toarray().reshape(grid.shape)
    np.testing.assert_allclose(row0[4, 1:-1], 0.05)
    np.testing.assert_allclose(row0[5, 1:-1], 0.05)
    np.testing.assert_allclose(row0[4, 0], 0.5 * 0.09)  # first cell: from x = 0.01 to 0.1
    assert row0.sum() == pytest.approx(6.48, abs=1e-12)


def test_rays_on_grid_edge_and_vertical():
    grid = Grid2D(3, 2, 1.0)
    # vertical ray along the left edge x = 0, along the inner line x = 1, diagonal through corners
    survey = CrossholeSurvey([[0.0, 0.0], [1.0, 0.0], [0.0, 0.0]], [[0.0, 3.0], [1.0, 2.5], [2.0, 2.0]],
                             pairs=[[0, 0], [1, 1], [2, 2]])
    G = StraightRayOperator(grid, survey).matrix.toarray()
    np.testing.assert_allclose(G[0].reshape(3, 2), [[1, 0], [1, 0], [1, 0]])
    np.testing.assert_allclose(G[1].reshape(3, 2), [[0.5, 0.5], [0.5, 0.5], [0.25, 0.25]])
    np.testing.assert_allclose(G[2].reshape(3, 2), [[np.sqrt(2), 0], [0, np.sqrt(2)], [0, 0]])


def test_identities_and_torch():
    grid = Grid2D(6, 5, 0.2)
    survey = CrossholeSurvey([[0.0, 0.1], [0.0, 0.7]], [[1.0, 0.3], [1.0, 1.15], [0.5, 1.2]])
    op = StraightRayOperator(grid, survey)
    rng = np.random.default_rng(1)
    m = rng.uniform(10, 20, (4, op.n_params))
    t = op.response(m)
    np.testing.assert_allclose(op.jacobian(m[0]) @ m[0], t[0], rtol=1e-14)
    # homogeneous slowness: t = distance x slowness
    np.testing.assert_allclose(op.response(np.full(op.n_params, 12.5)), 12.5 * survey.distances, rtol=1e-13)
    v = rng.normal(size=(4, op.n_data))
    # adjoint identity <G m, v> = <m, G^T v>
    np.testing.assert_allclose(np.sum(t * v), np.sum(m * op.adjoint(v)), rtol=1e-12)
    mt = torch.tensor(m, requires_grad=True)
    out = op.forward(mt)
    np.testing.assert_allclose(out.detach().numpy(), t, rtol=1e-13)
    (out * torch.tensor(v)).sum().backward()
    np.testing.assert_allclose(mt.grad.numpy(), op.adjoint(v), rtol=1e-12)
    out32 = op.forward(torch.tensor(m[0], dtype=torch.float32))
    assert out32.dtype == torch.float32 and out32.shape == (op.n_data,)
    op2 = pickle.loads(pickle.dumps(op))
    np.testing.assert_array_equal(op2.response(m), t)


def test_bad_inputs():
    grid = Grid2D(4, 4, 1.0)
    survey = CrossholeSurvey([[0.0, 1.0]], [[4.0, 2.0]])
    op = StraightRayOperator(grid, survey)
    with pytest.raises(ValueError, match=r"shape \(16,\)"):
        op.response(np.ones(15))
    with pytest.raises(ValueError, match="NaN"):
        op.response(np.full(16, np.nan))
    with pytest.raises(ValueError, match="> 0"):
        op.response(-np.ones(16))
    with pytest.raises(ValueError, match="adjoint"):
        op.adjoint(np.ones(3))
    with pytest.raises(ValueError, match="outside the grid"):
        StraightRayOperator(grid, CrossholeSurvey([[-1.0, 1.0]], [[4.0, 2.0]]))
    with pytest.raises(TypeError, match="Grid2D"):
        StraightRayOperator("grid", survey)
