import pickle
import re

import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

from latentinv import CrossholeSurvey, Grid2D, paper_crosshole


def test_paper_case():
    grid, survey = paper_crosshole()
    assert grid.shape == (129, 65) and grid.n_cells == 8385
    assert grid.width == pytest.approx(6.5) and grid.height == pytest.approx(12.9)
    assert survey.n_data == 625
    # source-major order: datum 26 is source 1 -> receiver 1
    np.testing.assert_array_equal(survey.pairs[26], [1, 1])
    np.testing.assert_allclose(survey.sources[:, 1], 0.5 * np.arange(1, 26))
    np.testing.assert_allclose(survey.receivers[:, 0], 6.5)
    # datum 0: horizontal, 6.5 m; datum 24: source at 0.5 m, receiver at 12.5 m depth
    assert survey.distances[0] == pytest.approx(6.5)
    assert survey.distances[24] == pytest.approx(np.hypot(6.5, 12.0))


def test_cell_order_and_converters():
    grid = Grid2D(3, 4, 0.5, origin=(1.0, 2.0))
    flat = np.arange(12.0)
    img = grid.to_image(flat)
    assert img[1, 2] == 1 * 4 + 2
    np.testing.assert_array_equal(grid.to_flat(img), flat)
    # cell centre of flat index 6 = (row 1, col 2)
    np.testing.assert_allclose(grid.cell_centers[6], [1.0 + 2.5 * 0.5, 2.0 + 1.5 * 0.5])
    assert grid.cell_index(1.0 + 2.5 * 0.5, 2.0 + 1.5 * 0.5) == 6
    pg = grid.to_pygimli_order(flat)
    # pyGIMLi: bottom row first, x fastest
    np.testing.assert_array_equal(pg[:4], [8, 9, 10, 11])
    np.testing.assert_array_equal(grid.from_pygimli_order(pg), flat)
    batch = np.stack([flat, 2 * flat])
    assert grid.to_image(batch).shape == (2, 3, 4)


@settings(max_examples=30, deadline=None)
@given(st.integers(1, 9), st.integers(1, 9), st.integers(0, 3))
def test_pygimli_order_round_trip(n_rows, n_cols, n_batch):
    grid = Grid2D(n_rows, n_cols)
    v = np.random.default_rng(0).random((n_batch, grid.n_cells))
    np.testing.assert_array_equal(grid.from_pygimli_order(grid.to_pygimli_order(v)), v)


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(n_rows=0, n_cols=3), "n_rows"),
        (dict(n_rows=2.5, n_cols=3), "n_rows"),
        (dict(n_rows=2, n_cols=3, cell_size=-1), "cell_size"),
        (dict(n_rows=2, n_cols=3, cell_size=np.nan), "cell_size"),
        (dict(n_rows=2, n_cols=3, origin=(0, np.inf)), "origin"),
        (dict(n_rows=True, n_cols=3), r"n_rows must be a positive integer, got True"),
        (dict(n_rows="2", n_cols=3), r"n_rows must be a positive integer, got '2'"),
        (dict(n_rows=2, n_cols=np.float64(3.0)), r"n_cols must be a positive integer, got .*3\.0"),
        (dict(n_rows=2, n_cols=3, cell_size="0.1"), r"cell_size must be a real number, got '0\.1' \(str\)"),
        (dict(n_rows=2, n_cols=3, cell_size=True), r"cell_size must be a real number, got True \(bool\)"),
        (dict(n_rows=2, n_cols=3, cell_size=0.0), r"cell_size must be a finite positive number, got 0\.0"),
        (dict(n_rows=2, n_cols=3, cell_size=(0.1, -np.inf)), r"cell_size\[1\] \(dz\) must be a finite positive"),
        (dict(n_rows=2, n_cols=3, cell_size=(0.1, "a")), r"cell_size\[1\] \(dz\) must be a real number, got 'a'"),
        (dict(n_rows=2, n_cols=3, cell_size=[[0.1, 0.1]]), r"cell_size must be a number or \(dx, dz\)"),
        (dict(n_rows=2, n_cols=3, origin=5), r"origin must be \(x, depth\) in m, got 5"),
        (dict(n_rows=2, n_cols=3, origin=None), r"origin must be \(x, depth\) in m, got None"),
        (dict(n_rows=2, n_cols=3, origin=("0", "1")), r"origin\[0\] \(x\) must be a real number, got '0'"),
        (dict(n_rows=2, n_cols=3, origin=(0.0, np.nan)), r"origin\[1\] \(depth\) must be a finite number, got nan"),
    ],
)
def test_grid_bad_input(kwargs, match):
    with pytest.raises(ValueError, match=match):
        Grid2D(**kwargs)


def test_converter_shape_errors():
    grid = Grid2D(3, 4)
    with pytest.raises(ValueError, match="12"):
        grid.to_image(np.zeros(11))
    with pytest.raises(ValueError, match=r"\(3, 4\)"):
        grid.to_flat(np.zeros((4, 3)))


def test_survey_bad_input():
    src = [[0.0, 1.0], [0.0, 2.0]]
    rcv = [[1.0, 1.0]]
    with pytest.raises(ValueError, match="NaN"):
        CrossholeSurvey([[0.0, np.nan]], rcv)
    with pytest.raises(ValueError, match="empty"):
        CrossholeSurvey(np.zeros((0, 2)), rcv)
    with pytest.raises(ValueError, match="duplicate"):
        CrossholeSurvey(src, rcv, pairs=[[0, 0], [0, 0]])
    with pytest.raises(ValueError, match="receiver indices"):
        CrossholeSurvey(src, rcv, pairs=[[0, 1]])
    with pytest.raises(ValueError, match="source == receiver"):
        CrossholeSurvey(src, [[0.0, 1.0]])
    with pytest.raises(ValueError, match="shape"):
        CrossholeSurvey([[0.0, 1.0, 2.0]], rcv)


@pytest.mark.parametrize("sources, receivers, pairs, match", [
    ([["0", "1"]], [[1.0, 1.0]], None, r"sources must be real \(x, depth\) positions in m, got list \(dtype <U1\)"),
    ([[True, False]], [[1.0, 1.0]], None, r"sources must be real .*\(dtype bool\)"),
    ([[0.0, 1.0]], [[1.0, 1j]], None, r"receivers must be real .*\(dtype complex128\)"),
    (None, [[1.0, 1.0]], None, r"sources must be real .*NoneType"),
    ([[0.0, 1.0], [0.0]], [[1.0, 1.0]], None, r"sources must be real .*not an array"),
    ([[0.0, 1.0]], [[-np.inf, 1.0]], None, r"receivers holds NaN or inf at rows \[0\]"),
    ([[0.0, 1.0]], [[1.0, 1.0]], [["0", "0"]], r"pairs must hold integer indices, got dtype <U1"),
    ([[0.0, 1.0]], [[1.0, 1.0]], [[True, False]], r"pairs must hold integer indices, got dtype bool"),
    ([[0.0, 1.0]], [[1.0, 1.0]], [[0.5, 0.0]], r"pairs must hold integer indices"),
    ([[0.0, 1.0]], [[1.0, 1.0]], [[0, np.nan]], r"pairs must hold integer indices"),
])
def test_survey_rejects_wrong_types(sources, receivers, pairs, match):
    with pytest.raises(ValueError, match=match):
        CrossholeSurvey(sources, receivers, pairs)


def test_paper_survey_checks_positions():
    with pytest.raises(ValueError, match=r"source_x must be a real number, got 'a'"):
        CrossholeSurvey.paper("a")
    with pytest.raises(ValueError, match=r"receiver_x must be a finite number, got inf"):
        CrossholeSurvey.paper(0.0, np.inf)
    survey = CrossholeSurvey.paper(np.float32(0.25), 6)
    np.testing.assert_allclose(survey.distances[:25], np.hypot(5.75, 0.5 * np.arange(25)), rtol=1e-14)


def test_survey_outside_grid():
    grid = Grid2D(4, 4, 1.0)
    survey = CrossholeSurvey([[0.0, 1.0]], [[4.5, 1.0]])
    with pytest.raises(ValueError, match=r"receiver 0 at \(x, depth\) = \(4.5, 1\) m lies outside the grid: expected x in \[0, 4\] m"):
        survey.check_in(grid)


def test_explicit_pairs_reciprocal_and_pickle():
    survey = CrossholeSurvey([[0.0, 1.0], [0.0, 2.0]], [[3.0, 1.0], [3.0, 3.0]], pairs=[[1, 0], [0, 1]])
    assert survey.n_data == 2
    rec = survey.reciprocal()
    np.testing.assert_allclose(rec.source_positions, survey.receiver_positions)
    np.testing.assert_allclose(rec.distances, survey.distances)
    assert pickle.loads(pickle.dumps(survey)) == survey
    grid = Grid2D(2, 3, (0.5, 0.25), origin=(-1.0, 0.5))
    assert pickle.loads(pickle.dumps(grid)) == grid


@pytest.mark.parametrize("scale", [1e-200, 1e200])
def test_survey_at_extreme_scales_is_accepted(scale):
    """Distinct sources and receivers are distinct at any scale (a squared distance once underflowed,
    and sensors 1e-200 m apart were refused as source == receiver)."""
    survey = CrossholeSurvey([[0.0, 1 * scale]], [[6 * scale, 2 * scale]])
    assert survey.n_data == 1


def test_cell_centres_indices_and_extent_on_a_grid_of_unequal_sides():
    """dx != dz and an origin: nothing may take one cell side for the other."""
    grid = Grid2D(3, 5, (0.4, 0.1), origin=(-1.0, 2.0))
    rows, cols = np.divmod(np.arange(grid.n_cells), grid.n_cols)
    centres = np.column_stack([-1.0 + 0.4 * (cols + 0.5), 2.0 + 0.1 * (rows + 0.5)])
    np.testing.assert_allclose(grid.cell_centers, centres, rtol=0, atol=1e-12)
    np.testing.assert_array_equal(grid.cell_index(*centres.T), np.arange(grid.n_cells))
    # just inside the far corner of cell (1, 1); beyond the far edges: the last row and column
    assert grid.cell_index(-1.0 + 0.8 - 1e-9, 2.0 + 0.2 - 1e-9) == 1 * 5 + 1
    assert grid.cell_index(1.0, 2.3) == grid.n_cells - 1
    assert (grid.width, grid.height) == pytest.approx((2.0, 0.3), abs=1e-15)
    np.testing.assert_allclose(grid.x_edges, -1.0 + 0.4 * np.arange(6), rtol=0, atol=1e-15)
    np.testing.assert_allclose(grid.depth_edges, 2.0 + 0.1 * np.arange(4), rtol=0, atol=1e-15)


def test_default_pairs_are_source_major_for_unequal_counts():
    survey = CrossholeSurvey([[0.0, 0.5], [0.0, 1.0]], [[3.0, 0.2], [3.0, 0.7], [3.0, 1.4]])
    np.testing.assert_array_equal(survey.pairs, [[0, 0], [0, 1], [0, 2], [1, 0], [1, 1], [1, 2]])
    np.testing.assert_allclose(survey.distances, np.hypot(3.0, [0.3, 0.2, 0.9, 0.8, 0.3, 0.4]), rtol=1e-15)


@pytest.mark.parametrize("offset, inside", [(1e-12, True), (1e-6, False)])
def test_the_grid_boundary_admits_sensors_within_1e_9_of_a_cell(offset, inside):
    grid = Grid2D(4, 2, (0.5, 0.25), origin=(1.0, 0.0))
    dx, dz = grid.cell_size
    points = [[2.0 + offset * dx, 0.5], [1.5, 1.0 + offset * dz],     # beyond the far edges
              [1.0 - offset * dx, 0.5], [1.5, -offset * dz]]          # before the origin
    np.testing.assert_array_equal(grid.contains(points), [inside] * 4)
    survey = CrossholeSurvey(points[:2], points[2:])
    if inside:
        survey.check_in(grid)
    else:
        with pytest.raises(ValueError, match="source 0 .* lies outside the grid"):
            survey.check_in(grid)


def test_cell_index_refuses_points_outside_the_grid_and_contains_refuses_points_that_are_not_pairs():
    """cell_index clipped any point into the grid (a point at (100, 100) m was in the last cell, one at
    (0, 0) in the first, NaN in cell 4); contains read a (2, 3) array as three points."""
    grid = Grid2D(3, 4, 0.5, origin=(1.0, 2.0))
    np.testing.assert_array_equal(grid.cell_index([1.0, 3.0, 3.0 + 1e-12, 1.5], [2.0, 3.5, 3.5, 2.0 - 1e-12]),
                                  [0, 11, 11, 1])      # on the boundary (within 1e-9 cell): kept
    for x, depth, i in [(100.0, 100.0, 0), ([1.2, 0.0], [2.1, 0.0], 1), (np.nan, 2.5, 0), (3.0 + 1e-6, 3.0, 0)]:
        with pytest.raises(ValueError, match=rf"Grid2D.cell_index: point {i} at \(x, depth\) = .* lies outside "
                                             r"the grid: expected x in \[1, 3\] m, depth in \[2, 3.5\] m"):
            grid.cell_index(x, depth)
    with pytest.raises(ValueError, match=r"Grid2D.contains: points must have a last axis of length 2 "
                                         r"\(x, depth\), got shape \(2, 3\)"):
        grid.contains(np.zeros((2, 3)))
    np.testing.assert_array_equal(grid.contains([[1.5, 2.5], [0.0, 2.5]]), [True, False])
    np.testing.assert_array_equal(grid.contains([1.5, 2.5]), [True])


def test_grids_and_surveys_are_immutable_and_copy_their_inputs():
    """An operator is built from its grid and survey once: changed in place afterwards, the objects (and
    a worker's pickled copy, rebuilt from them) would show one geometry and the operator's rays another,
    without a word. They refuse the change, keep read-only copies of the arrays given, and stay so
    through pickling, deep copies and scikit-learn's clone."""
    import copy
    import pickle

    from sklearn.base import clone

    from latentinv import StraightRayOperator

    given_receivers = np.column_stack([np.full(25, 6.49), 0.5 * np.arange(1, 26)])
    grid = Grid2D.paper()
    survey = CrossholeSurvey(np.column_stack([np.full(25, 0.01), 0.5 * np.arange(1, 26)]), given_receivers)
    given_receivers[:, 0] = 3.0                 # the caller's array: not the survey's
    assert np.all(survey.receivers[:, 0] == 6.49)
    op = StraightRayOperator(grid, survey)
    for g, s in [(grid, survey), (pickle.loads(pickle.dumps(grid)), pickle.loads(pickle.dumps(survey))),
                 (copy.deepcopy(grid), copy.deepcopy(survey)),
                 (clone(op).get_params()["grid"], clone(op).get_params()["survey"])]:
        assert g == grid and s == survey and hash(g) == hash(grid)
        for name in ("sources", "receivers", "pairs"):
            with pytest.raises(ValueError, match="read-only"):
                getattr(s, name)[0, 0] = 1
        with pytest.raises(AttributeError, match=re.escape("CrossholeSurvey is immutable: cannot set 'sources'")):
            s.sources = s.sources + 1
        with pytest.raises(AttributeError, match=re.escape("Grid2D is immutable: cannot set 'dx'")):
            g.dx = 0.2
        with pytest.raises(AttributeError, match="Grid2D is immutable: cannot delete 'origin'"):
            del g.origin
    # what the operator was built from is what it shows
    assert np.array_equal(op.survey.receivers, survey.receivers) and op.grid.dx == 0.1


def test_a_survey_copies_the_pairs_it_is_given():
    """The test above gave no pairs: pairs given as int64, the dtype the survey keeps, are a copy too (the
    caller's array stays writable and its later changes are not the survey's), as sources and receivers."""
    sources = np.column_stack([np.zeros(2), [0.5, 1.0]])
    receivers = np.column_stack([np.full(2, 2.0), [0.5, 1.0]])
    pairs = np.array([[0, 0], [1, 1], [0, 1]], dtype=np.int64)
    survey = CrossholeSurvey(sources, receivers, pairs)
    assert pairs.flags.writeable and not survey.pairs.flags.writeable
    pairs[0] = [1, 0]
    np.testing.assert_array_equal(survey.pairs, [[0, 0], [1, 1], [0, 1]])
    np.testing.assert_allclose(survey.distances, [2.0, 2.0, np.hypot(2.0, 0.5)])
