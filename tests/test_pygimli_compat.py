"""pyGIMLi compatibility: converters, pyGIMLi's goldens through both engines, cell-order handling."""
import numpy as np
import pytest

from latentinv import CrossholeSurvey, Grid2D
from latentinv.operators.pygimli import PyGimliOperator

pg = pytest.importorskip("pygimli")
from latentinv.operators.pygimli import (  # noqa: E402
    from_pygimli_data, grid_from_pygimli_mesh, to_pygimli_data, to_pygimli_mesh,
)

# pyGIMLi's own test case: a 2 x 2 grid of 1 m on y in [0, 2], shot at (0, 0), geophone at (1, 2),
# slowness [1, 2, 1, 4] in pyGIMLi's cell order.
GRID = Grid2D(2, 2, 1.0, origin=(0.0, -2.0))
SURVEY = CrossholeSurvey([[0.0, 0.0]], [[1.0, -2.0]])
SLOWNESS_PG = np.array([1.0, 2.0, 1.0, 4.0])


@pytest.mark.parametrize("backend", ["latentinv", "pygimli"])
@pytest.mark.parametrize("n, expected", [(0, 1 + np.sqrt(2)), (3, np.sqrt(5))])
def test_pygimli_goldens(backend, n, expected):
    op = PyGimliOperator(GRID, SURVEY, n_secondary_nodes=n, backend=backend)
    np.testing.assert_allclose(op.response(SLOWNESS_PG), [expected], rtol=1e-12)
    op.createJacobian(SLOWNESS_PG)
    np.testing.assert_allclose(op.jacobian() @ SLOWNESS_PG, [expected], rtol=1e-12)


def test_latentinv_jacobian_columns_in_pygimli_order():
    op = PyGimliOperator(GRID, SURVEY, n_secondary_nodes=3)
    op.createJacobian(SLOWNESS_PG)
    J = op.jacobian().toarray()[0]
    # the sqrt(5) path: (0,0) -> (0.5,1) in the bottom-left cell, (0.5,1) -> (1,2) in the top-left cell,
    # pyGIMLi cells 0 and 2, half the length each
    np.testing.assert_allclose(J, [np.sqrt(5) / 2, 0, np.sqrt(5) / 2, 0], rtol=1e-12)


def test_mesh_round_trip_and_order():
    grid = Grid2D(3, 4, (0.5, 0.25), origin=(1.0, 2.0))
    mesh = to_pygimli_mesh(grid)
    assert mesh.cellCount() == grid.n_cells
    assert grid_from_pygimli_mesh(mesh) == grid
    # cell k of the mesh is cell perm[k] of ours
    perm = grid.to_pygimli_order(np.arange(grid.n_cells))
    centers = np.array([[c.center()[0], -c.center()[1]] for c in mesh.cells()])
    np.testing.assert_allclose(centers, grid.cell_centers[perm], atol=1e-12)
    with pytest.raises(ValueError, match="uniform"):
        grid_from_pygimli_mesh(pg.createGrid(x=[0, 1, 3], y=[0, 1]))


def test_data_round_trip():
    survey = CrossholeSurvey([[0.0, 1.0], [0.0, 2.0]], [[3.0, 1.0], [3.0, 2.5], [0.0, 2.0]],
                             pairs=[[0, 0], [1, 1], [0, 2], [1, 0]])
    t = np.array([10.0, 11.0, 12.0, 13.0])
    data = to_pygimli_data(survey, t)
    assert data.sensorCount() == 4  # source 1 and receiver 2 share a position
    back, t2 = from_pygimli_data(data)
    np.testing.assert_array_equal(t2, t)
    np.testing.assert_allclose(back.source_positions, survey.source_positions)
    np.testing.assert_allclose(back.receiver_positions, survey.receiver_positions)
    with pytest.raises(ValueError, match="times"):
        to_pygimli_data(survey, t[:3])


def test_bad_backend():
    with pytest.raises(ValueError, match="backend"):
        PyGimliOperator(GRID, SURVEY, backend="fast")


@pytest.mark.parametrize("backend", ["latentinv", "pygimli"])
@pytest.mark.parametrize("value, match", [
    (np.nan, r"NaN or inf: model 0, cell 2 is nan"),
    (np.inf, r"NaN or inf: model 0, cell 2 is inf"),
    (-12.5, r"> 0 in every cell .*minimum -12\.5 at model 0, cell 2"),
    (0.0, r"> 0 in every cell .*minimum 0\.0 at model 0, cell 2"),
])
def test_bad_slowness_rejected_by_every_entry(backend, value, match):
    import torch

    op = PyGimliOperator(GRID, SURVEY, n_secondary_nodes=3, backend=backend)
    bad = SLOWNESS_PG.copy()
    bad[2] = value
    for entry in (op.response, op.response_and_jacobian, op.createJacobian, op.jacobian):
        with pytest.raises(ValueError, match="PyGimliOperator: .*" + match):
            entry(bad)
    with pytest.raises(ValueError, match="PyGimliOperator.forward: .*" + match):
        op.forward(torch.tensor(bad, requires_grad=True))
    with pytest.raises(ValueError, match="got dtype int64"):
        op.forward(torch.ones(4, dtype=torch.int64))
    # the checked entries still compute: pyGIMLi's golden through the torch path
    out = op.forward(torch.tensor(SLOWNESS_PG))
    assert float(out[0]) == pytest.approx(np.sqrt(5), abs=1e-12)


def test_bad_construction():
    with pytest.raises(TypeError, match="grid must be a Grid2D, got str"):
        PyGimliOperator("grid", SURVEY)
    with pytest.raises(TypeError, match="survey must be a CrossholeSurvey, got list"):
        PyGimliOperator(GRID, [[0.0, 0.0]])
    for bad in (-1, 2.5, True, "3"):
        with pytest.raises(ValueError, match="n_secondary_nodes must be an integer in"):
            PyGimliOperator(GRID, SURVEY, n_secondary_nodes=bad, backend="pygimli")


@pytest.mark.parametrize("backend", ["latentinv", "pygimli"])
@pytest.mark.parametrize("n, expected", [(0, 1 + np.sqrt(2)), (2, (np.sqrt(10) + np.sqrt(13)) / 3)])
def test_a_pickled_operator_keeps_its_secondary_nodes_and_backend(backend, n, expected):
    """What a worker process receives: the same graph (secondary nodes) and engine, so the same times (with 2
    secondary nodes the path bends at (1/3, 1): sqrt(10) / 3 + sqrt(13) / 3; with 3, sqrt(5))."""
    import pickle

    op = pickle.loads(pickle.dumps(PyGimliOperator(GRID, SURVEY, n_secondary_nodes=n, backend=backend)))
    assert op.n_secondary_nodes == n and repr(op).endswith(f"n_secondary_nodes={n}, backend={backend!r})")
    np.testing.assert_allclose(op.response(SLOWNESS_PG), [expected], rtol=1e-12)


@pytest.mark.parametrize("backend", ["latentinv", "pygimli"])
def test_set_params_rebuilds_the_graph_as_a_new_operator_would(backend):
    """get_params lists the constructor's parameters (so a LatentInverter's search reaches
    operator__n_secondary_nodes), clone builds an equal operator, and set_params rebuilds the graph: pyGIMLi's
    goldens 1 + sqrt(2) without secondary nodes, sqrt(5) with 3; an unknown name is refused."""
    from sklearn.base import clone

    op = PyGimliOperator(GRID, SURVEY, n_secondary_nodes=0, backend=backend)
    assert op.get_params() == {"grid": GRID, "survey": SURVEY, "n_secondary_nodes": 0, "backend": backend,
                               "n_threads": None}
    np.testing.assert_allclose(clone(op, safe=False).response(SLOWNESS_PG), [1 + np.sqrt(2)], rtol=1e-12)
    assert op.set_params(n_secondary_nodes=3) is op and op.get_params()["n_secondary_nodes"] == 3
    np.testing.assert_allclose(op.response(SLOWNESS_PG), [np.sqrt(5)], rtol=1e-12)
    with pytest.raises(ValueError, match=r"PyGimliOperator.set_params: invalid parameter\(s\) \['solver'\]"):
        op.set_params(solver="dijkstra")


def test_grid_from_pygimli_mesh_refuses_what_is_not_a_2d_grid():
    """A 3-D grid of 2 x 1 x 1 cells is not read as a 2-D grid of 1 x 2 cells (its z ignored); an empty
    mesh and a non-mesh get errors that say what was expected."""
    with pytest.raises(ValueError, match=r"grid_from_pygimli_mesh: expected a 2-D mesh, got a 3-D mesh"):
        grid_from_pygimli_mesh(pg.createGrid(x=[0, 1, 2], y=[0, 1], z=[0, 1]))
    with pytest.raises(ValueError, match=r"grid_from_pygimli_mesh: the mesh has no cells"):
        grid_from_pygimli_mesh(pg.Mesh(2))
    with pytest.raises(TypeError, match=r"grid_from_pygimli_mesh: mesh must be a pyGIMLi mesh, got str"):
        grid_from_pygimli_mesh("mesh.bms")
    # a 2-D grid is still read (and the secondary nodes of a Dijkstra mesh do not count as grid lines)
    mesh = pg.Mesh(to_pygimli_mesh(GRID))
    mesh.createSecondaryNodes(3)
    assert grid_from_pygimli_mesh(mesh) == GRID


@pytest.mark.parametrize("backend", ["latentinv", "pygimli"])
def test_a_sensor_off_the_graph_nodes_is_refused_by_both_backends(backend):
    """pyGIMLi's Dijkstra moves a sensor to the nearest mesh node without a word: a source at depth 1.3 m
    gave the time from depth 1.0 m (1 + sqrt(2) = 4.414 ns in a unit medium, not the 4.061 ns of a graph
    that had the source). Both backends refuse it, naming the nearest node."""
    grid = Grid2D(4, 4, 1.0)
    survey = CrossholeSurvey([[0.0, 1.3]], [[4.0, 2.0]])
    with pytest.raises(ValueError, match=r"source 0 at \(x, depth\) = \(0.0, 1.3\) m is not on a graph node"
                                         r".* nearest node is 5 at \(0.0, 1.0\) m"):
        PyGimliOperator(grid, survey, n_secondary_nodes=0, backend=backend)
    # on a node of the graph with secondary nodes (depth 1.25 with 3 per side) both give the same time
    on_node = CrossholeSurvey([[0.0, 1.25]], [[4.0, 2.0]])
    times = [PyGimliOperator(grid, on_node, n_secondary_nodes=3, backend=b).response(np.ones(16))
             for b in ("latentinv", "pygimli")]
    np.testing.assert_allclose(times[0], times[1], rtol=1e-12)
    assert times[0][0] >= np.hypot(4.0, 0.75) - 1e-12


def _data(sensors, s, g, t=None):
    data = pg.DataContainer()
    data.registerSensorIndex("s")
    data.registerSensorIndex("g")
    for p in sensors:
        data.createSensor(pg.Pos(*p))
    data.resize(len(s))
    data.set("s", pg.Vector(np.asarray(s, float)))
    data.set("g", pg.Vector(np.asarray(g, float)))
    if t is not None:
        data.set("t", pg.Vector(np.asarray(t, float)))
    return data


def test_from_pygimli_data_refuses_sensor_indices_outside_the_sensors_and_3d_sensors():
    """A geophone index of -1 (pyGIMLi's 'no sensor') took the last sensor as the receiver without a word;
    an index past the sensors was an IndexError; a sensor's z was dropped."""
    sensors = [(0, -1), (0, -2), (3, -1), (3, -2)]
    for g, bad in [([2, 3, -1], -1), ([2, 3, 4], 4)]:
        with pytest.raises(ValueError, match=rf"from_pygimli_data: 'g' of datum 2 is {bad}, expected a sensor "
                                             r"index in \[0, 4\)"):
            from_pygimli_data(_data(sensors, [0, 1, 0], g))
    with pytest.raises(ValueError, match=r"from_pygimli_data: 's' of datum 1 is -1"):
        from_pygimli_data(_data(sensors, [0, -1, 0], [2, 3, 3]))
    with pytest.raises(ValueError, match=r"from_pygimli_data: sensor 0 has z = 5 m; expected 2-D sensors \(x, y\)"):
        from_pygimli_data(_data([(0, -1, 5), (3, -1, 0)], [0], [1]))
    with pytest.raises(TypeError, match=r"from_pygimli_data: data must be a pyGIMLi DataContainer, got str"):
        from_pygimli_data("data.sgt")
    with pytest.raises(TypeError, match=r"to_pygimli_data: survey must be a CrossholeSurvey, got str"):
        to_pygimli_data("data.sgt")
    survey, _ = from_pygimli_data(_data(sensors, [0, 1, 0], [2, 3, 3]))
    np.testing.assert_allclose(survey.distances, [3.0, 3.0, np.hypot(3.0, 1.0)], rtol=1e-15)


def test_from_pygimli_data_warns_of_traveltimes_in_seconds():
    """pyGIMLi's traveltimes are in s, latentinv's in ns: 3 m in 2e-8 (s) is 1.5e8 m/ns, faster than light
    (0.3 m/ns). Times in ns pass without a warning."""
    sensors = [(0, -1), (3, -1)]
    with pytest.warns(UserWarning, match=r"from_pygimli_data: datum 0 .* 3 m in 2e-08 ns, 1.5e\+08 m/ns, "
                                         r"faster than light \(0.3 m/ns\): latentinv's traveltimes are in ns"):
        from_pygimli_data(_data(sensors, [0], [1], [2e-8]))
    import warnings
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        _, t = from_pygimli_data(_data(sensors, [0], [1], [20.0]))
    np.testing.assert_array_equal(t, [20.0])
    # the bound is 1 m/ns, as documented: 3 m in 2.5 ns (1.2 m/ns) is warned, 3 m in 3.1 ns (0.97 m/ns) is not
    with pytest.warns(UserWarning, match=r"datum 0 is 3 m in 2.5 ns, 1.2 m/ns, faster than light"):
        from_pygimli_data(_data(sensors, [0], [1], [2.5]))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        from_pygimli_data(_data(sensors, [0], [1], [3.1]))


def test_from_pygimli_data_drops_the_data_pyGIMLi_marks_invalid():
    """pyGIMLi marks bad data with valid = 0 (what its removeInvalid removes); from_pygimli_data returned
    them as data. They are now dropped with a warning that counts them; the survey and the times are the
    valid data's, and a datum's number in a message is the container's. A valid column of zeros only (a
    container resized in code, never marked) is pyGIMLi's 'no valid column' (haveData) and keeps all."""
    sensors = [(0, -1), (0, -2), (3, -1), (3, -2)]
    data = _data(sensors, [0, 1, 0, 1], [2, 3, 3, -1], [30.0, 31.0, 32.0, 33.0])
    data.markValid([0, 1, 2, 3])
    data.markInvalid([1, 3])               # datum 3's geophone is pyGIMLi's -1: invalid, not an error
    with pytest.warns(UserWarning, match=r"from_pygimli_data: 2 of 4 data are marked invalid \(pyGIMLi's 'valid' "
                                         r"column is not 1; first: datum 1\) and were dropped: the survey and the "
                                         r"times hold the other 2"):
        survey, t = from_pygimli_data(data)
    np.testing.assert_array_equal(t, [30.0, 32.0])
    np.testing.assert_allclose(survey.source_positions, [[0.0, 1.0], [0.0, 1.0]])
    np.testing.assert_allclose(survey.receiver_positions, [[3.0, 1.0], [3.0, 2.0]])
    np.testing.assert_allclose(survey.distances, [3.0, np.hypot(3.0, 1.0)], rtol=1e-15)
    # a bad index of a valid datum is still an error, named by the container's datum number
    data.markValid([1, 3])
    data.markInvalid([0])
    with pytest.raises(ValueError, match=r"from_pygimli_data: 'g' of datum 3 is -1"):
        with pytest.warns(UserWarning, match=r"1 of 4 data are marked invalid .*first: datum 0\)"):
            from_pygimli_data(data)
    data.set("valid", pg.Vector([-1.0, 0.0, 0.0, 0.0]))
    with pytest.raises(ValueError, match=r"from_pygimli_data: all 4 data are marked invalid \(pyGIMLi's 'valid' "
                                         r"column is not 1 for any datum\); expected at least one valid datum"):
        from_pygimli_data(data)
    # never marked (all zero): every datum kept, no warning. (Data all marked invalid by markInvalid look the
    # same, and are read too: pyGIMLi's haveData('valid') cannot tell them apart either.)
    import warnings
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        survey, t = from_pygimli_data(_data(sensors, [0, 1], [2, 3], [30.0, 31.0]))
    assert survey.n_data == 2 and t.tolist() == [30.0, 31.0]


def test_from_pygimli_data_keeps_the_data_pyGIMLis_removeInvalid_keeps():
    """pyGIMLi's removeInvalid keeps a datum only where ``valid`` is 1: 2, -1 and 0.5 are invalid to it as 0
    is (the test above marked with 0 and 1 only). from_pygimli_data reads the same data, in the same order,
    as a copy that removeInvalid cleaned."""
    sensors = [(0, -1), (0, -2), (3, -1), (3, -2)]
    data = _data(sensors, [0, 1, 0, 1, 0], [2, 3, 3, 2, 3], [30.0, 31.0, 32.0, 33.0, 34.0])
    data.set("valid", pg.Vector([1.0, 2.0, 0.5, -1.0, 1.0]))
    cleaned = pg.DataContainer(data)
    cleaned.removeInvalid()
    assert cleaned.size() == 2 and np.asarray(cleaned["t"]).tolist() == [30.0, 34.0]
    with pytest.warns(UserWarning, match=r"3 of 5 data are marked invalid .*first: datum 1\) and were dropped: "
                                         r"the survey and the times hold the other 2"):
        survey, t = from_pygimli_data(data)
    expected, t_expected = from_pygimli_data(cleaned)
    np.testing.assert_array_equal(t, t_expected)
    np.testing.assert_array_equal(survey.source_positions, expected.source_positions)
    np.testing.assert_array_equal(survey.receiver_positions, expected.receiver_positions)


def test_to_pygimli_data_marks_its_data_valid():
    """to_pygimli_data left valid = 0 (a resized container's default), which pyGIMLi reads as invalid: its
    removeInvalid emptied the container. Every datum is now valid, and the round trip keeps them all."""
    survey = CrossholeSurvey([[0.0, 1.0]], [[3.0, 1.0], [3.0, 2.0]])
    data = to_pygimli_data(survey, [10.0, 11.0])
    np.testing.assert_array_equal(np.asarray(data["valid"]), [1.0, 1.0])
    data.removeInvalid()
    assert data.size() == 2
    back, t = from_pygimli_data(data)
    assert back.n_data == 2 and t.tolist() == [10.0, 11.0]


@pytest.mark.parametrize("backend", ["latentinv", "pygimli"])
def test_n_threads_is_validated_under_both_backends(backend):
    """backend='pygimli' took any n_threads (0, -3, 2.5, '4') without a word; both backends now refuse what
    ShortestPathOperator refuses, and take a positive integer or None (the pyGIMLi backend ignores it)."""
    for bad in (0, -3, 2.5, "4", True):
        with pytest.raises(ValueError, match=rf"PyGimliOperator: n_threads must be a positive integer or None, "
                                             rf"got {bad!r}"):
            PyGimliOperator(GRID, SURVEY, n_secondary_nodes=3, backend=backend, n_threads=bad)
    for fine in (None, 1, np.int64(2)):
        op = PyGimliOperator(GRID, SURVEY, n_secondary_nodes=3, backend=backend, n_threads=fine)
        np.testing.assert_allclose(op.response(SLOWNESS_PG), [np.sqrt(5)], rtol=1e-12)


def test_grid_from_pygimli_mesh_says_a_triangle_mesh_is_not_rectilinear():
    """Two triangles on the nodes of a 2 x 1 grid have the grid's cell count (2 cells on 3 x 2 distinct
    coordinates): the error said 'not in pyGIMLi's createGrid order'. Rectilinearity is checked first."""
    mesh = pg.Mesh(2)
    nodes = [mesh.createNode(pg.Pos(x, y)) for x, y in [(0, 0), (1, 0), (2, 0), (0, 1), (1, 1), (2, 1)]]
    mesh.createTriangle(nodes[0], nodes[2], nodes[3])
    mesh.createTriangle(nodes[2], nodes[5], nodes[3])
    with pytest.raises(ValueError, match=r"grid_from_pygimli_mesh: expected a rectilinear grid \(every cell an "
                                         r"axis-aligned rectangle of 4 nodes.*got cell 0: a triangle, nodes "
                                         r"\[\(0\.0, 0\.0\), \(2\.0, 0\.0\), \(0\.0, 1\.0\)\]"):
        grid_from_pygimli_mesh(mesh)
    quad = pg.Mesh(2)
    corners = [quad.createNode(pg.Pos(x, y)) for x, y in [(0, 0), (1, 0), (1.5, 1), (0.5, 1)]]
    quad.createQuadrangle(*corners)
    with pytest.raises(ValueError, match=r"got cell 0: a quadrilateral that is not an axis-aligned rectangle"):
        grid_from_pygimli_mesh(quad)
    # rectangles out of createGrid's order keep their own message
    grid = pg.Mesh(2)
    n = [grid.createNode(pg.Pos(x, y)) for x, y in [(0, 0), (1, 0), (2, 0), (0, 1), (1, 1), (2, 1)]]
    grid.createQuadrangle(n[1], n[2], n[5], n[4])
    grid.createQuadrangle(n[0], n[1], n[4], n[3])
    with pytest.raises(ValueError, match=r"not in pyGIMLi's createGrid order"):
        grid_from_pygimli_mesh(grid)


def test_n_threads_set_on_the_operator_reaches_its_engine(monkeypatch):
    """The inverters' workers set ``op.n_threads`` (``parallel.operator_threads``): under the latentinv
    backend it reached the bridge, not its engine, which kept every CPU; and with the default None the
    workers' limit was skipped. The attribute is now the engine's resolved count, and sets it; the
    constructor's value stays what get_params gives (clones are equal). None set after 1 left the engine
    at 1 thread; it is now passed on and resolved there."""
    import pickle

    from latentinv._cpus import available_cpus
    from latentinv.inversion.parallel import operator_threads
    op = PyGimliOperator(GRID, SURVEY, n_secondary_nodes=3, backend="latentinv")
    assert op.n_threads == op._engine.n_threads == available_cpus()
    with operator_threads(op, 1):
        assert op._engine.n_threads == 1 and op.n_threads == 1
        assert pickle.loads(pickle.dumps(op))._engine.n_threads == 1      # what a worker receives
        np.testing.assert_allclose(op.response(SLOWNESS_PG), [np.sqrt(5)], rtol=1e-12)
    assert op._engine.n_threads == available_cpus() and op.get_params()["n_threads"] is None
    with pytest.raises(ValueError, match="PyGimliOperator: n_threads must be a positive integer or None, got 0"):
        op.n_threads = 0
    op.n_threads = 1
    monkeypatch.setattr("latentinv.operators.shortest_path.available_cpus", lambda: 5)     # any machine
    op.n_threads = None         # undoing a limit: the engine stayed at 1 thread (None was not passed on)
    assert op._engine.n_threads == op.n_threads == 5
    op.set_params(n_threads=1)  # rebuilds the engine with it
    assert op._engine.n_threads == op.n_threads == 1 == op.get_params()["n_threads"]
    ours = PyGimliOperator(GRID, SURVEY, n_secondary_nodes=3, backend="pygimli", n_threads=2)
    with operator_threads(ours, 1):
        assert ours.n_threads == 1
    assert ours.n_threads == 2 and ours.get_params()["n_threads"] == 2
