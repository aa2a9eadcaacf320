"""Baselines: the best constant model and the best homogeneous-velocity model, and the warning."""
import warnings

import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

from latentinv.baselines import (DATA_RATIO, MODEL_RATIO, BaselineWarning, check_against_baselines,
                                 constant_model_rmse, homogeneous_fit)
from latentinv.geometry import CrossholeSurvey, Grid2D
from latentinv.operators import ShortestPathOperator, StraightRayOperator


@given(st.lists(st.floats(0, 1), min_size=2, max_size=40))
@settings(max_examples=50, deadline=None)
def test_constant_model_rmse_is_the_minimum_over_constants(values):
    m = np.array(values)
    best = constant_model_rmse(m)
    # an independent search over constants never beats it, and the mean attains it
    cs = np.linspace(-0.5, 1.5, 401)
    brute = np.sqrt(((m[None, :] - cs[:, None]) ** 2).mean(axis=1)).min()
    assert best <= brute + 1e-12
    assert np.isclose(best, np.sqrt(((m - m.mean()) ** 2).mean()), atol=1e-12)


@pytest.mark.parametrize("make", [
    lambda g: StraightRayOperator(g, CrossholeSurvey(np.c_[np.full(4, 0.01), np.linspace(0.2, 1.4, 4)],
                                                     np.c_[np.full(4, 0.79), np.linspace(0.2, 1.4, 4)])),
    lambda g: ShortestPathOperator(g, CrossholeSurvey(np.c_[np.zeros(4), np.linspace(0.2, 1.4, 4)],
                                                      np.c_[np.full(4, 0.8), np.linspace(0.2, 1.4, 4)]),
                                   n_secondary_nodes=2),
])
def test_homogeneous_fit_recovers_a_homogeneous_medium_and_is_least_squares(make):
    op = make(Grid2D(16, 8, 0.1))
    d = op.response(np.full(op.n_params, 12.5))
    s0, r = homogeneous_fit(op, d)
    assert np.isclose(s0, 12.5, rtol=1e-12) and r < 1e-9
    rng = np.random.default_rng(0)
    noisy = op.response(rng.uniform(12.5, 16.7, op.n_params)) + rng.normal(0, 0.3, op.n_data)
    s0, r = homogeneous_fit(op, noisy)
    # least squares: the residual is orthogonal to the unit-slowness times (normal equation), and
    # the reported RMSE is that of the model's own response
    t1 = op.response(np.ones(op.n_params))
    pred = op.response(np.full(op.n_params, s0))
    assert abs(np.dot(noisy - pred, t1)) < 1e-9 * np.dot(noisy, t1)
    assert np.isclose(r, np.sqrt(np.mean((noisy - pred) ** 2)), rtol=1e-12)


def test_homogeneous_fit_batched_equals_single():
    g = Grid2D(16, 8, 0.1)
    op = StraightRayOperator(g, CrossholeSurvey(np.c_[np.full(3, 0.01), [0.3, 0.8, 1.3]],
                                                np.c_[np.full(3, 0.79), [0.3, 0.8, 1.3]]))
    D = np.random.default_rng(1).uniform(5, 10, (3, op.n_data))
    s, r = homogeneous_fit(op, D)
    for i in range(3):
        assert np.allclose(homogeneous_fit(op, D[i]), (s[i], r[i]), rtol=1e-12)
    with pytest.raises(ValueError, match="n_data|shape"):
        homogeneous_fit(op, D[:, :-1])
    with pytest.raises(ValueError, match="NaN"):
        homogeneous_fit(op, np.full(op.n_data, np.nan))


def test_warning_fires_only_where_not_clearly_better():
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert check_against_baselines(model_rmse=0.69 * 0.4 / 0.7 * MODEL_RATIO, constant_rmse=0.4)
        assert check_against_baselines(data_rmse=DATA_RATIO * 6.0, homogeneous_rmse=6.0)
    with pytest.warns(BaselineWarning, match="best constant model"):
        ok = check_against_baselines(model_rmse=[0.1, 0.42], constant_rmse=[0.44, 0.45])
    assert ok.tolist() == [True, False]
    with pytest.warns(BaselineWarning, match="homogeneous"):
        assert not check_against_baselines(data_rmse=3.5, homogeneous_rmse=6.0)
    # a tiny baseline (traveltimes in seconds: 5.95e-9 "ns") is printed as it is, not rounded to [0.0]
    with pytest.warns(BaselineWarning, match=r"data RMSE \[106\.8\] ns is not clearly better than the best "
                                             r"homogeneous-velocity model's \[5\.947e-09\] ns"):
        check_against_baselines(data_rmse=106.807, homogeneous_rmse=5.9466e-9)


def test_homogeneous_fit_with_sigma_is_weighted_least_squares():
    """With per-datum sigma the fit solves the weighted normal equation sum w t1 (d - s t1) = 0,
    w = 1 / sigma**2, and its RMSE is the unweighted one of that model (ignoring sigma survived)."""
    op = StraightRayOperator(Grid2D(16, 8, 0.1),
                             CrossholeSurvey(np.c_[np.full(4, 0.01), np.linspace(0.2, 1.4, 4)],
                                             np.c_[np.full(4, 0.79), np.linspace(0.2, 1.4, 4)]))
    rng = np.random.default_rng(1)
    d = op.response(rng.uniform(12.5, 16.7, op.n_params)) + rng.normal(0, 0.3, op.n_data)
    sigma = rng.uniform(0.05, 3.0, op.n_data)
    s_w, r_w = homogeneous_fit(op, d, sigma)
    s_u, _ = homogeneous_fit(op, d)
    t1 = op.response(np.ones(op.n_params))
    w = 1 / sigma**2
    assert abs(np.dot(w * t1, d - s_w * t1)) < 1e-9 * np.dot(w * t1, d)
    assert abs(s_w - s_u) > 1e-5 * s_u                       # the weights matter here
    assert np.isclose(r_w, np.sqrt(np.mean((d - s_w * t1) ** 2)), rtol=1e-12)
    s_1, _ = homogeneous_fit(op, d, 2.0)                      # one sigma for all: unweighted
    assert np.isclose(s_1, s_u, rtol=1e-12)


def test_the_warning_names_the_items_that_fail_when_given_labels():
    """Only the failing items are listed; without their names a reader of
    "data RMSE [4.483, 5.105, 6.912, 1.231] ns" could not tell which 4 of 6 truths they were."""
    with pytest.warns(BaselineWarning) as caught:
        check_against_baselines(data_rmse=[0.1, 4.0, 0.2, 3.0], homogeneous_rmse=[1.0, 5.0, 1.0, 4.0],
                                labels=["mc1", "mc2", "mc3", "mv1"], what="the run")
    message = str(caught[0].message)
    assert "[mc2 4.0, mv1 3.0]" in message and "[mc2 5.0, mv1 4.0]" in message
    assert "mc1" not in message and "mc3" not in message
    with pytest.raises(ValueError, match="labels: expected 4 names, one per item; got 2"):
        check_against_baselines(data_rmse=[0.1, 4.0, 0.2, 3.0], homogeneous_rmse=[1.0, 5.0, 1.0, 4.0],
                                labels=["a", "b"])


@pytest.mark.parametrize("sigma, message", [
    (0.0, r"got 0\.0"),
    (-1.0, r"got -1\.0"),
    (np.nan, r"got nan"),
    (np.inf, r"got inf"),
    ("0.5", r"got '0\.5'"),
    (True, r"got True"),
    (np.ones(3), r"got an array of shape \(3,\)"),
    (np.r_[0.0, np.ones(3)], r"got 1 that are not finite and positive \(the first at datum 0: 0\.0\)"),
])
def test_homogeneous_fit_refuses_a_sigma_that_is_not_positive_noise(sigma, message):
    """sigma = 0, inf or NaN returned a slowness and an RMSE of NaN (a baseline that then passed or failed
    every comparison), a negative sigma was squared away, and an array of the wrong length got numpy's
    broadcasting error."""
    op = StraightRayOperator(Grid2D(16, 8, 0.1), CrossholeSurvey([[0.01, 0.2], [0.01, 1.4]],
                                                                 [[0.79, 0.2], [0.79, 1.4]]))
    d = op.response(np.full(op.n_params, 12.5))
    with pytest.raises(ValueError, match=r"homogeneous_fit: sigma must be None, a positive number or an array "
                                         r"of 4 positive numbers \(ns\), " + message):
        homogeneous_fit(op, d, sigma)
    assert homogeneous_fit(op, d, np.float32(0.5))[0] == pytest.approx(12.5)
    assert homogeneous_fit(op, d, [0.5, 1, 2, 3])[0] == pytest.approx(12.5)
    assert homogeneous_fit(op, d, np.array([0.5, 1, 2, 3], dtype=object))[0] == pytest.approx(12.5)
