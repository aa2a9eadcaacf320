"""check_operator: the shipped operators pass it, and each way of breaking the contract fails the check
that names it (and only the checks it breaks)."""
import re

import numpy as np
import pytest
import scipy.sparse as sp
from hypothesis import given, settings
from hypothesis import strategies as st

from latentinv import CrossholeSurvey, Grid2D, StraightRayOperator, paper_crosshole
from latentinv.operators import ForwardOperator, check_operator


def _small():
    grid = Grid2D(12, 8, 0.1)
    depths = 0.1 + 0.2 * np.arange(6)
    return grid, CrossholeSurvey(np.column_stack([np.zeros(6), depths]), np.column_stack([np.full(6, 0.8), depths]))


class MatrixOperator(ForwardOperator):
    """t = G m."""
    is_linear = True

    def __init__(self, matrix):
        self.matrix = sp.csr_matrix(matrix)
        self.n_data, self.n_params = self.matrix.shape

    def _response_and_jacobian(self, m, want_jacobian):
        return m @ self.matrix.T, ([self.matrix] * len(m) if want_jacobian else None)


class Bent(ForwardOperator):
    """A nonlinear traveltime operator, homogeneous of degree 1: t_i = sqrt(sum_j G_ij m_j**2) * c_i with
    c_i chosen so that t = G m on a homogeneous model; J = diag(c**2 / t) G diag(m)."""

    def __init__(self, matrix, jacobian_factor=1.0):
        self.matrix = sp.csr_matrix(matrix)
        self.c = np.sqrt(np.asarray(self.matrix.sum(axis=1)).ravel())
        self.n_data, self.n_params = self.matrix.shape
        self.jacobian_factor = jacobian_factor

    def _response_and_jacobian(self, m, want_jacobian):
        t = self.c * np.sqrt((m * m) @ self.matrix.T)
        if not want_jacobian:
            return t, None
        return t, [self.jacobian_factor * sp.diags(self.c ** 2 / tk) @ self.matrix @ sp.diags(mk)
                   for tk, mk in zip(t, m)]


def _straight_matrix():
    return StraightRayOperator(*_small()).matrix


def _failed(err):
    """The names of the failed checks in a check_operator ValueError."""
    return sorted(re.findall(r"^- (\w+):", str(err.value), flags=re.M))


def test_the_shipped_operators_pass_on_the_papers_grid():
    from latentinv import ShortestPathOperator
    grid, survey = paper_crosshole()
    straight = check_operator(StraightRayOperator(grid, survey), n_models=2)
    assert straight["linear"] == 0.0 and straight["jacobian"] == 0.0
    for op in (ShortestPathOperator(grid, survey), ShortestPathOperator(grid, survey, n_secondary_nodes=1)):
        report = check_operator(op, n_models=2)
        assert "linear" not in report
        assert report["jacobian"] == 0.0 and report["jacobian_median"] < 1e-7   # no tie at h = 1e-6
        assert report["homogeneous_jacobian"] < 1e-12 and report["forward_gradient"] < 1e-12


def test_a_nonlinear_homogeneous_operator_passes_and_a_jacobian_off_by_a_factor_fails():
    G = _straight_matrix()
    report = check_operator(Bent(G))
    assert report["jacobian"] == 0.0 and report["homogeneous_jacobian"] < 1e-12
    with pytest.raises(ValueError, match=r"^check_operator: Bent fails 2 check\(s\) on 3 model\(s\)") as err:
        check_operator(Bent(G, jacobian_factor=2.0))
    # forward's gradient is the (wrong) Jacobian's transpose, as the bridge promises: not a failure
    assert _failed(err) == ["homogeneous_jacobian", "jacobian"]
    assert "(measured 1, limit 0.05)" in str(err.value)       # every datum off


class _Noisy(MatrixOperator):
    def _response_and_jacobian(self, m, want_jacobian):
        t, J = super()._response_and_jacobian(m, want_jacobian)
        return t + 1e-3 * np.random.default_rng().standard_normal(t.shape), J


class _FirstModelOnly(MatrixOperator):
    def _response_and_jacobian(self, m, want_jacobian):
        t, J = super()._response_and_jacobian(m, want_jacobian)
        return np.repeat(t[:1], len(m), axis=0), J


class _TimeZeroShift(MatrixOperator):
    is_linear = False

    def _response_and_jacobian(self, m, want_jacobian):
        t, J = super()._response_and_jacobian(m, want_jacobian)
        return t + 2.0, J


class _NotLinear(Bent):
    is_linear = True


class _Negative(MatrixOperator):
    def _response_and_jacobian(self, m, want_jacobian):
        t, J = super()._response_and_jacobian(m, want_jacobian)
        return -t, (None if J is None else [-j for j in J])


class _WrongGradient(MatrixOperator):
    def forward(self, m, jacobian_rows=None, pending=None):
        out = super().forward(m)
        return out.detach() + 0.5 * (out - out.detach())      # the values right, half the gradient


@pytest.mark.parametrize("make, failed", [
    (_Noisy, ["batch", "deterministic", "forward", "homogeneous_jacobian", "homogeneous_scale", "jacobian"]),
    (_FirstModelOnly, ["batch", "homogeneous_jacobian", "jacobian"]),
    (_TimeZeroShift, ["homogeneous_jacobian", "homogeneous_scale"]),
    (_NotLinear, ["linear"]),
    (_Negative, ["homogeneous"]),
    (_WrongGradient, ["forward_gradient"]),
])
def test_each_broken_contract_fails_the_checks_that_name_it(make, failed):
    with pytest.raises(ValueError, match=rf"^check_operator: {make.__name__} fails {len(failed)} check") as err:
        check_operator(make(_straight_matrix()))
    assert _failed(err) == failed


def test_homogeneous_false_skips_the_traveltime_identities():
    report = check_operator(_TimeZeroShift(_straight_matrix()), homogeneous=False)
    assert "homogeneous_scale" not in report and report["jacobian"] == 0.0


def test_models_given_are_used_and_ties_on_a_binary_model_are_counted():
    """Two slowness values: first arrivals tie between mirrored paths, where central differences average
    the two one-sided derivatives; the check counts such data and allows max_kink_fraction of them."""
    from latentinv import ShortestPathOperator
    grid, survey = _small()
    op = ShortestPathOperator(grid, survey, n_secondary_nodes=1)
    binary = np.where(np.arange(grid.n_cells) % 3 == 0, 10.0, 14.0)
    report = check_operator(op, binary, max_kink_fraction=0.99)
    assert 0.0 <= report["jacobian"] <= 0.99
    with pytest.raises(ValueError, match=r"must have shape \(96,\)"):
        check_operator(op, np.ones(5))


@settings(max_examples=25, deadline=None)
@given(seed=st.integers(0, 2**32 - 1), n_data=st.integers(1, 12), n_params=st.integers(1, 12),
       density=st.floats(0.1, 1.0))
def test_no_false_failure_on_random_matrix_operators(seed, n_data, n_params, density):
    rng = np.random.default_rng(seed)
    G = sp.random(n_data, n_params, density=density, random_state=rng, format="csr") * 3.0
    G = G + sp.csr_matrix((np.full(n_data, 0.1), (np.arange(n_data), rng.integers(0, n_params, n_data))),
                          shape=(n_data, n_params))     # every datum crosses a cell
    report = check_operator(MatrixOperator(G), random_state=seed)
    assert max(v for k, v in report.items()) < 1e-6


@pytest.mark.parametrize("kwargs, message", [
    (dict(n_models=0), r"n_models must be an integer >= 1, got 0"),
    (dict(n_models=2.0), r"n_models must be an integer >= 1, got 2\.0"),
    (dict(rtol=0.0), r"rtol must be > 0, got 0\.0"),
    (dict(rtol=1.0), r"rtol must be a number in \[0, 1\), got 1\.0"),
    (dict(max_kink_fraction=1.0), r"max_kink_fraction must be a number in \[0, 1\), got 1\.0"),
    (dict(max_kink_fraction=float("nan")), r"max_kink_fraction must be a number in \[0, 1\), got nan"),
])
def test_parameters_out_of_range_are_refused(kwargs, message):
    with pytest.raises(ValueError, match=rf"^check_operator: {message}"):
        check_operator(MatrixOperator(_straight_matrix()), **kwargs)


def test_an_object_that_is_not_an_operator_is_refused():
    with pytest.raises(TypeError, match=r"^check_operator: operator must subclass latentinv\.operators\."
                                        r"ForwardOperator, got ndarray"):
        check_operator(np.eye(3))
