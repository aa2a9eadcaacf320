"""Straight-ray operator: exact lengths against an independent clipping computation, identities."""
import pickle
from pathlib import Path

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


@pytest.mark.parametrize("offset, split", [(1e-6, False), (-1e-6, False), (1e-12, True), (-1e-12, True)])
def test_rays_beside_a_grid_line_are_split_only_within_1e_9_of_a_cell(offset, split):
    """A vertical (a horizontal) ray 1e-6 cell beside an inner grid line runs inside one column (row), as
    the clipping reference says; within 1e-9 cell of the line it is on it, and split half and half."""
    grid = Grid2D(3, 4, (0.5, 0.25))
    x, z = 1.0 + offset * grid.dx, 0.5 + offset * grid.dz   # beside x = 1 (columns 1 | 2), depth 0.5 (rows 1 | 2)
    survey = CrossholeSurvey([[x, 0.0], [0.0, z]], [[x, 0.75], [2.0, z]], pairs=[[0, 0], [1, 1]])
    G = StraightRayOperator(grid, survey).matrix.toarray().reshape(2, *grid.shape)
    vertical, horizontal = np.zeros(grid.shape), np.zeros(grid.shape)
    if split:
        vertical[:, 1:3], horizontal[1:3, :] = 0.125, 0.25
    else:
        vertical[:, 2 if offset > 0 else 1] = 0.25
        horizontal[2 if offset > 0 else 1, :] = 0.5
        np.testing.assert_allclose(G.reshape(2, -1), reference_matrix(grid, survey), rtol=0, atol=1e-12)
    np.testing.assert_allclose(G[0], vertical, rtol=0, atol=1e-12)
    np.testing.assert_allclose(G[1], horizontal, rtol=0, atol=1e-12)


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


# -- slowness checks in every public entry (numpy and torch, CPU and CUDA) -------------------------
DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])


def _small_operator(**kwargs):
    grid = Grid2D(4, 4, 1.0)
    survey = CrossholeSurvey([[0.0, 1.0], [0.0, 3.0]], [[4.0, 2.0]])
    return StraightRayOperator(grid, survey, **kwargs)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("value, match", [
    (np.nan, r"NaN or inf: model 1, cell 7 is nan"),
    (np.inf, r"NaN or inf: model 1, cell 7 is inf"),
    (-np.inf, r"NaN or inf: model 1, cell 7 is -inf"),
    (-12.5, r"> 0 in every cell .*minimum -12\.5 at model 1, cell 7"),
    (0.0, r"> 0 in every cell .*minimum 0\.0 at model 1, cell 7"),
])
def test_every_entry_rejects_bad_slowness(device, value, match):
    op = _small_operator()
    m = np.full((2, 16), 12.5)
    m[1, 7] = value
    with pytest.raises(ValueError, match="StraightRayOperator.forward: .*" + match):
        op.forward(torch.tensor(m, dtype=torch.float32, device=device, requires_grad=True))
    with pytest.raises(ValueError, match="StraightRayOperator.forward: .*" + match):
        op(torch.tensor(m, device=device))
    for entry in (op.response, op.response_and_jacobian):
        with pytest.raises(ValueError, match=match):
            entry(m)
        with pytest.raises(ValueError, match=match):
            entry(torch.tensor(m, device=device))
    with pytest.raises(ValueError, match=match.replace("model 1", "model 0")):
        op.jacobian(m[1])
    # the same slowness without the bad cell passes and gives G m
    m[1, 7] = 12.5
    out = op.forward(torch.tensor(m, device=device))
    np.testing.assert_allclose(out.cpu().numpy(), 12.5 * np.tile(op.survey.distances, (2, 1)), rtol=1e-13)


@pytest.mark.parametrize("bad, match", [
    (torch.ones(16, dtype=torch.int64), "floating-point tensor .*float32, float64.*got dtype int64"),
    (torch.ones(16, dtype=torch.bool), "got dtype bool"),
    (torch.ones(16, dtype=torch.complex64), "got dtype complex64"),
    (torch.ones(16, dtype=torch.float16), "got dtype float16"),
    (torch.ones(15), r"shape \(16,\) or \(batch, 16\).*got shape \(15,\)"),
    (torch.ones(2, 3, 16), r"got shape \(2, 3, 16\)"),
    (torch.tensor(1.0), r"got shape \(\)"),
])
def test_forward_rejects_wrong_dtype_and_shape(bad, match):
    op = _small_operator()
    with pytest.raises(ValueError, match=match):
        op.forward(bad)
    with pytest.raises(TypeError, match="torch.Tensor"):
        op.forward(np.ones(16))


@pytest.mark.parametrize("bad, match", [
    (np.ones(16, dtype=bool), "real numbers, got dtype bool"),
    (np.ones(16, dtype=complex), "real numbers, got dtype complex128"),
    (np.array(["1.0"] * 16), "numeric array"),
    (torch.ones(16, dtype=torch.bool), "real numbers, got a tensor of dtype bool"),
])
def test_numpy_entries_reject_wrong_dtype(bad, match):
    op = _small_operator()
    for entry in (op.response, op.response_and_jacobian, op.jacobian):
        with pytest.raises(ValueError, match=match):
            entry(bad)
    # integer slowness is a number like any other: G @ m
    np.testing.assert_allclose(op.response(np.full(16, 3)), 3 * op.survey.distances, rtol=1e-14)


def test_forward_takes_the_base_operators_arguments():
    """Code written for any ForwardOperator passes ``jacobian_rows`` (an SGD mini-batch): StraightRayOperator's
    forward refused it with a TypeError (mypy: the override's signature was not the base's). The rows are
    checked as the base class checks them; traveltimes and gradients are those of every datum (G^T v)."""
    op = _small_operator()
    rng = np.random.default_rng(0)
    m = torch.tensor(rng.uniform(10, 20, (3, 16)), requires_grad=True)
    rows = torch.tensor([[0, 1], [1, 1], [0, 0]])
    v = torch.tensor(rng.standard_normal((3, op.n_data)))
    (op.forward(m, jacobian_rows=rows) * v).sum().backward()
    np.testing.assert_allclose(m.grad.numpy(), v.numpy() @ op.matrix.toarray(), rtol=1e-12)
    np.testing.assert_array_equal(op(m, rows).detach().numpy(), op.forward(m).detach().numpy())
    np.testing.assert_array_equal(op.forward(m[0], jacobian_rows=[1]).detach().numpy(),
                                  op.forward(m[0]).detach().numpy())
    with pytest.raises(ValueError, match=r"StraightRayOperator.forward: jacobian_rows must lie in \[0, 2\), got "
                                         r"\[0, 2\]"):
        op.forward(m, jacobian_rows=[[0], [2], [1]])
    with pytest.raises(ValueError, match=r"jacobian_rows must be integer indices of shape \(3, k\), got \(2, 1\)"):
        op.forward(m, jacobian_rows=[[0], [1]])
    with pytest.raises(ValueError, match="pending must be None .* got object"):
        op.forward(m, pending=object())


def test_empty_batch_forward_and_backward():
    op = _small_operator()
    m = torch.ones((0, 16), dtype=torch.float64, requires_grad=True)
    out = op.forward(m)
    assert out.shape == (0, op.n_data)
    out.sum().backward()
    assert m.grad.shape == (0, 16)
    t, jac = op.response_and_jacobian(np.ones((0, 16)))
    assert t.shape == (0, op.n_data) and jac == []


# -- boundary_rays: the paper's published convention -----------------------------------------------
PAPER_MODEL = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "paper_test_models" / "mc2.npy"


@pytest.mark.skipif(not PAPER_MODEL.exists(), reason=f"paper test model not available at {PAPER_MODEL}")
def test_upper_left_reproduces_the_published_kernel():
    grid, survey = Grid2D.paper(), CrossholeSurvey.paper(0.01, 6.49)
    x = np.load(PAPER_MODEL)
    assert x.shape == (129, 65)
    slowness = grid.to_flat(1.0 / (0.06 + 0.02 * (1.0 - x)))  # ns/m
    published = [87.20833333, 89.55708196, 89.12601286, 89.95910883, 91.09316376,
                 92.17834269, 94.76929608, 96.85659095, 104.34586758, 110.9934262]
    upper = StraightRayOperator(grid, survey, boundary_rays="upper_left").response(slowness)
    np.testing.assert_allclose(upper[:10], published, rtol=0, atol=1e-6)
    split = StraightRayOperator(grid, survey).response(slowness)
    assert split[0] - upper[0] == pytest.approx(0.20833333, abs=1e-6)
    np.testing.assert_allclose(split[1:10], published[1:], rtol=0, atol=1e-6)  # oblique rays agree


def test_boundary_rays_small_grid_and_parameter():
    grid = Grid2D(3, 2, 1.0)
    # vertical ray on the inner line x = 1, horizontal ray on the inner line depth = 1,
    # vertical ray on the left edge x = 0 (one cell inside under both conventions)
    survey = CrossholeSurvey([[1.0, 0.0], [0.0, 1.0], [0.0, 0.0]], [[1.0, 2.5], [2.0, 1.0], [0.0, 3.0]],
                             pairs=[[0, 0], [1, 1], [2, 2]])
    G = StraightRayOperator(grid, survey, boundary_rays="upper_left").matrix.toarray()
    np.testing.assert_allclose(G[0].reshape(3, 2), [[1, 0], [1, 0], [0.5, 0]])
    np.testing.assert_allclose(G[1].reshape(3, 2), [[1, 1], [0, 0], [0, 0]])
    np.testing.assert_allclose(G[2].reshape(3, 2), [[1, 0], [1, 0], [1, 0]])
    op = StraightRayOperator(grid, survey, "upper_left")
    assert "boundary_rays='upper_left'" in repr(op)
    assert op.get_params()["boundary_rays"] == "upper_left" and op.boundary_rays == "upper_left"
    clone = pickle.loads(pickle.dumps(op))
    assert clone.boundary_rays == "upper_left" and (clone.matrix != op.matrix).nnz == 0
    assert StraightRayOperator(grid, survey).get_params()["boundary_rays"] == "split"
    for bad in ("upper", "", None, 1):
        with pytest.raises(ValueError, match=r"boundary_rays must be 'split' or 'upper_left', got"):
            StraightRayOperator(grid, survey, boundary_rays=bad)


@st.composite
def rays_on_and_off_grid_lines(draw):
    n_rows, n_cols = draw(st.integers(1, 6)), draw(st.integers(1, 6))
    dx, dz = draw(st.floats(0.05, 2.0)), draw(st.floats(0.05, 2.0))
    grid = Grid2D(n_rows, n_cols, (dx, dz), origin=(-0.3, 1.2))
    sources, receivers = [], []
    for _ in range(draw(st.integers(1, 5))):
        kind = draw(st.sampled_from(["free", "horizontal", "vertical"]))
        a, b = draw(points), draw(points)
        if kind == "horizontal":  # both ends on the same depth line (edges included)
            k = draw(st.integers(0, n_rows))
            a, b = (a[0], k / n_rows), (b[0], k / n_rows)
        elif kind == "vertical":
            k = draw(st.integers(0, n_cols))
            a, b = (k / n_cols, a[1]), (k / n_cols, b[1])
        sources.append(a)
        receivers.append(b)
    scale, off = np.array([grid.width, grid.height]), np.array(grid.origin)
    sources = off + np.array(sources) * scale
    receivers = off + np.array(receivers) * scale
    return grid, sources, receivers


@settings(max_examples=60, deadline=None)
@given(rays_on_and_off_grid_lines())
def test_conventions_differ_only_on_boundary_segments(case):
    grid, sources, receivers = case
    n = len(sources)
    assume(np.linalg.norm(sources - receivers, axis=1).min() > 1e-6)
    survey = CrossholeSurvey(sources, receivers, pairs=np.column_stack([np.arange(n), np.arange(n)]))
    split = StraightRayOperator(grid, survey).matrix.toarray()
    upper = StraightRayOperator(grid, survey, "upper_left").matrix.toarray()
    tol = 1e-12 * (1 + survey.distances.max())
    for G in (split, upper):
        np.testing.assert_allclose(G.sum(axis=1), survey.distances, rtol=0, atol=tol)
        assert G.min() >= 0
    xl = (sources[:, 0] - grid.origin[0]) / grid.dx
    zl = (sources[:, 1] - grid.origin[1]) / grid.dz
    for i in range(n):
        S, U = split[i].reshape(grid.shape), upper[i].reshape(grid.shape)
        d = receivers[i] - sources[i]
        if d[1] == 0 and abs(zl[i] - round(zl[i])) < 1e-9 and 0 < round(zl[i]) < grid.n_rows:
            k = int(round(zl[i]))  # on the inner line between rows k-1 and k: all goes up
            np.testing.assert_allclose(U[k - 1], S[k - 1] + S[k], rtol=0, atol=tol)
            np.testing.assert_allclose(S[k - 1], S[k], rtol=0, atol=tol)
            assert np.all(U[k] == 0) and S[k].sum() > 0
            np.testing.assert_array_equal(np.delete(U, [k - 1, k], 0), np.delete(S, [k - 1, k], 0))
        elif d[0] == 0 and abs(xl[i] - round(xl[i])) < 1e-9 and 0 < round(xl[i]) < grid.n_cols:
            k = int(round(xl[i]))  # on the inner line between columns k-1 and k: all goes left
            np.testing.assert_allclose(U[:, k - 1], S[:, k - 1] + S[:, k], rtol=0, atol=tol)
            np.testing.assert_allclose(S[:, k - 1], S[:, k], rtol=0, atol=tol)
            assert np.all(U[:, k] == 0) and S[:, k].sum() > 0
            np.testing.assert_array_equal(np.delete(U, [k - 1, k], 1), np.delete(S, [k - 1, k], 1))
        else:  # off every inner line (or on an outer edge): identical rows
            np.testing.assert_array_equal(U, S)


def test_overflowing_straight_ray_times_raise():
    grid = Grid2D(4, 3, 1.0)
    op = StraightRayOperator(grid, CrossholeSurvey([[0.0, 1.0]], [[3.0, 2.0], [3.0, 3.5]]))
    with pytest.raises(ValueError, match="overflow float64"):
        op.response(np.full(op.n_params, 1e308))
    with pytest.raises(ValueError, match="overflow the model's dtype float32"):
        op.forward(torch.full((op.n_params,), 3e38))
    ok = op.forward(torch.full((op.n_params,), 1e37))  # large but representable: answered
    assert torch.isfinite(ok).all()


@pytest.mark.parametrize("device", DEVICES)
def test_subnormal_slowness_is_refused_below_the_dtypes_smallest_normal_number(device):
    """Slowness below a dtype's smallest normal number (float64: 2.2e-308 ns/m, float32: 1.2e-38) is
    subnormal: it keeps fewer digits and the straight-ray times lose them silently (at 1e-320 ns/m the
    times were off by 5e-4, relative). Every entry refuses it, naming the dtype's bound; the bound itself
    is accepted and gives G m to rounding."""
    op = _small_operator()
    tiny64, tiny32 = float(np.finfo(np.float64).tiny), float(np.finfo(np.float32).tiny)
    # what the check prevents: at 1e-320 ns/m, G m computed in float64 is off from the exact product of
    # the same (float64) inputs by 1.4e-4, relative: some 4 significant digits left of 16
    from fractions import Fraction
    G = op.matrix.toarray()
    exact = [sum(Fraction(float(g)) for g in row) * Fraction(1e-320) for row in G]
    rel = [float(abs(Fraction(float(t)) - e) / e) for t, e in zip(op.matrix @ np.full(16, 1e-320), exact)]
    assert min(rel) > 1e-5
    m = np.full((2, 16), 12.5)
    m[1, 7] = 1e-320
    match64 = (r"slowness must be at least 2\.2250738585072014e-308 ns/m in every cell \(the smallest normal "
               r"float64 number.*got minimum 1e-320 at model 1, cell 7")
    for entry in (op.response, op.response_and_jacobian):
        with pytest.raises(ValueError, match="StraightRayOperator: " + match64):
            entry(m)
        with pytest.raises(ValueError, match="StraightRayOperator: " + match64):
            entry(torch.tensor(m, device=device))
    with pytest.raises(ValueError, match="StraightRayOperator: " + match64.replace("model 1", "model 0")):
        op.jacobian(m[1])
    with pytest.raises(ValueError, match="StraightRayOperator.forward: " + match64):
        op.forward(torch.tensor(m, device=device, requires_grad=True))
    # float32: its own bound, 1.2e-38 (1e-39 is subnormal there, normal in float64)
    m32 = np.full((2, 16), 12.5, dtype=np.float32)
    m32[1, 7] = 1e-39
    match32 = (r"slowness must be at least 1\.1754943508222875e-38 ns/m in every cell \(the smallest normal "
               r"float32 number.*got minimum 1\.0000002153053333e-39 at model 1, cell 7")
    with pytest.raises(ValueError, match="StraightRayOperator.forward: " + match32):
        op.forward(torch.tensor(m32, device=device))
    with pytest.raises(ValueError, match="StraightRayOperator: " + match32):
        op.response(m32)
    with pytest.raises(ValueError, match="StraightRayOperator: " + match32):
        op.response(torch.tensor(m32, device=device))
    # the same value in float64 is normal: accepted
    np.testing.assert_allclose(op.response(np.full(16, 1e-39)), 1e-39 * op.survey.distances, rtol=1e-14)
    # each dtype's smallest normal number is accepted, and gives G m to rounding
    np.testing.assert_allclose(op.response(np.full(16, tiny64)), tiny64 * op.survey.distances, rtol=1e-14)
    out = op.forward(torch.full((16,), tiny32, device=device))
    np.testing.assert_allclose(out.cpu().numpy(), tiny32 * op.survey.distances, rtol=1e-6)


def test_has_a_medium_uses_the_operators_lower_bound():
    """The samplers' predicate for a model with a medium (rows of other slowness are replaced before they
    reach the operator) agrees with the operators' check: a subnormal cell has no medium, per dtype."""
    from latentinv.inversion.equations import has_a_medium
    from latentinv.operators._base import smallest_slowness

    tiny32 = float(np.finfo(np.float32).tiny)
    s32 = torch.tensor([[1.0, tiny32], [1.0, 1e-39], [1.0, 0.0], [1.0, 2.0]], dtype=torch.float32)
    assert has_a_medium(s32).tolist() == [True, False, False, True]
    s64 = torch.tensor([[1.0, 1e-39], [1.0, 1e-320]], dtype=torch.float64)
    assert has_a_medium(s64).tolist() == [True, False]
    assert smallest_slowness(torch.float32) == tiny32 == smallest_slowness(np.float32)
    assert smallest_slowness(np.int64) == float(np.finfo(np.float64).tiny)
    assert smallest_slowness(torch.float16) == float(np.finfo(np.float16).tiny)


@settings(max_examples=30, deadline=None)
@given(n_rows=st.integers(1, 6), n_cols=st.integers(1, 6), density=st.sampled_from([0.0, 0.3, 1.0]),
       seed=st.integers(0, 2**31 - 1))
def test_torch_csr_is_the_matrix_with_stride_one_parts(n_rows, n_cols, density, seed):
    # an empty numpy array has stride 0, which torch 2.11's CSR invariant check refused
    import scipy.sparse as sp

    from latentinv.operators._base import torch_csr

    M = sp.random(n_rows, n_cols, density=density, format="csr", random_state=seed)
    T = torch_csr(M, torch.float64)
    for part in (T.crow_indices(), T.col_indices(), T.values()):
        assert part.stride() == (1,)
    np.testing.assert_array_equal(T.to_dense().numpy(), M.toarray())


def test_set_params_rebuilds_the_operator_and_reaches_it_through_the_inverter():
    # get_params made LatentInverter advertise operator__boundary_rays, but the operator had no
    # set_params: inverter.set_params(operator__...) and GridSearchCV over it raised AttributeError
    from sklearn.base import clone
    from sklearn.model_selection import GridSearchCV

    from latentinv import LatentInverter
    from latentinv.inversion import TorchGenerator

    grid, survey = paper_crosshole(0.0, 6.5)
    m = np.full(grid.n_cells, 14.0)
    upper_left = StraightRayOperator(grid, survey, boundary_rays="upper_left")
    op = StraightRayOperator(grid, survey)
    assert op.set_params(boundary_rays="upper_left") is op
    assert op.boundary_rays == "upper_left"
    assert (op.matrix != upper_left.matrix).nnz == 0
    np.testing.assert_array_equal(op.response(m), upper_left.response(m))
    with pytest.raises(ValueError, match=r"invalid parameter\(s\) \['n_secondary_nodes'\]"):
        op.set_params(n_secondary_nodes=3)
    with pytest.raises(ValueError, match="boundary_rays"):
        op.set_params(boundary_rays="lower_right")

    gen = TorchGenerator(torch.nn.Sequential(torch.nn.Linear(2, grid.n_cells), torch.nn.Sigmoid()), 2)
    inv = LatentInverter(gen, StraightRayOperator(grid, survey), n_starts=1, n_epochs=1, device="cpu")
    assert clone(inv).set_params(operator__boundary_rays="upper_left").operator.boundary_rays == "upper_left"
    X = np.full((2, survey.n_data), 100.0)
    gs = GridSearchCV(inv, {"operator__boundary_rays": ["split", "upper_left"]}, cv=2,
                      scoring=lambda est, X, y=None: 0.0).fit(X)
    assert gs.best_estimator_.operator.boundary_rays == "split"


@pytest.mark.parametrize("boundary_rays", ["split", "upper_left"])
@pytest.mark.parametrize("offsets", [(0.0, 1e-12), (0.0, -1e-12), (3e-10, -5e-10), (1e-12, 4e-10)])
def test_a_ray_whose_ends_are_both_within_1e_9_of_a_cell_of_one_grid_line_is_on_it(offsets, boundary_rays):
    """Both ends on the line (within 1e-9 cell) but not at exactly the same depth (x): the ray runs within
    1e-9 cell of the line over its whole length and goes where a ray exactly on it goes (half and half, or
    wholly to the row above / column on the left), not wholly to the row (column) of its midpoint."""
    grid = Grid2D(3, 4, (0.5, 0.25))
    a, b = offsets
    # horizontal: from x = 0 to 2 on depth 0.5 (rows 1 | 2); vertical: from depth 0 to 0.75 on x = 1 (cols 1 | 2)
    survey = CrossholeSurvey([[0.0, 0.5 + a * grid.dz], [1.0 + a * grid.dx, 0.0]],
                             [[2.0, 0.5 + b * grid.dz], [1.0 + b * grid.dx, 0.75]], pairs=[[0, 0], [1, 1]])
    G = StraightRayOperator(grid, survey, boundary_rays).matrix.toarray().reshape(2, *grid.shape)
    horizontal, vertical = np.zeros(grid.shape), np.zeros(grid.shape)
    if boundary_rays == "split":
        horizontal[1:3, :], vertical[:, 1:3] = 0.25, 0.125
    else:
        horizontal[1, :], vertical[:, 1] = 0.5, 0.25
    np.testing.assert_allclose(G[0], horizontal, rtol=0, atol=1e-9)
    np.testing.assert_allclose(G[1], vertical, rtol=0, atol=1e-9)
    # the traveltime of rows (columns) of different slowness: the mean of the two (or the upper / left one)
    slowness = grid.to_flat(np.add.outer(np.arange(3.0), 10 * np.arange(4.0)) + 1)
    t = StraightRayOperator(grid, survey, boundary_rays).response(slowness)
    expected = [2.0 * (2.5 + 15.0), 0.75 * 17.0] if boundary_rays == "split" else [2.0 * (2.0 + 15.0), 0.75 * 12.0]
    np.testing.assert_allclose(t, expected, rtol=1e-9)


def test_adjoint_refuses_complex_and_text_and_takes_a_tensor_that_requires_grad():
    """adjoint dropped the imaginary part of complex data (NumPy's ComplexWarning only), failed on text with
    NumPy's 'could not convert string to float' and on a tensor that requires grad with torch's message."""
    grid = Grid2D(4, 4, 1.0)
    op = StraightRayOperator(grid, CrossholeSurvey([[0.0, 1.0]], [[4.0, 2.0], [4.0, 3.0]]))
    for bad, what in [(np.ones(2, dtype=complex), "complex128"), (np.array([True, False]), "bool"),
                      ("ab", "<U2"), (torch.ones(2, dtype=torch.complex64), "complex64")]:
        with pytest.raises(ValueError, match=rf"StraightRayOperator: adjoint expects real data \(ns\), "
                                             rf"got dtype {what}"):
            op.adjoint(bad)
    v = torch.tensor([1.0, 2.0], requires_grad=True)
    np.testing.assert_allclose(op.adjoint(v), op.matrix.T @ np.array([1.0, 2.0]), rtol=1e-15)
    np.testing.assert_allclose(op.adjoint(np.array([1, 2])), op.matrix.T @ np.array([1.0, 2.0]), rtol=1e-15)
