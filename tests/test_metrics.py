"""Tests of latentinv.metrics: values against hand computations, scorer plumbing."""
import re

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays
from sklearn.metrics import make_scorer

from latentinv.metrics import (acceptance_rate, data_rmse, make_acceptance_scorer,
                               make_data_rmse_scorer, model_rmse, model_rmse_scorer)


def test_data_rmse_hand_values():
    t_obs = np.array([[10.0, 12.0, 14.0, 16.0], [1.0, 1.0, 1.0, 1.0]])
    t_pred = np.array([[11.0, 11.0, 15.0, 15.0], [1.0, 1.0, 1.0, 5.0]])
    # survey 0: all residuals 1 -> 1; survey 1: one residual of 4 over 4 data -> sqrt(16/4) = 2
    np.testing.assert_allclose(data_rmse(t_obs, t_pred, multioutput="raw_values"), [1.0, 2.0])
    assert data_rmse(t_obs, t_pred) == pytest.approx(1.5)
    assert data_rmse(t_obs[0], t_pred[0]) == pytest.approx(1.0)


def test_model_rmse_accepts_images():
    m = np.zeros((2, 3, 4))
    p = np.ones((2, 12)) * np.array([[0.5], [0.1]])
    np.testing.assert_allclose(model_rmse(m, p, multioutput="raw_values"), [0.5, 0.1])


def test_model_rmse_refuses_images_of_two_shapes():
    """Two stacks of images with the same cells but transposed: flattened, each would compare cells of
    other places; refused, naming both shapes."""
    m = np.random.default_rng(0).random((2, 3, 4))
    with pytest.raises(ValueError, match=re.escape("model_rmse: m_true and m_pred are images of two shapes, "
                                                   "(3, 4) and (4, 3) (n_rows, n_cols; transposed?)")):
        model_rmse(m, m.transpose(0, 2, 1))
    assert model_rmse(m, m) == 0.0


@settings(max_examples=30, deadline=None)
@given(arrays(np.float64, (5, 7), elements=st.floats(-100, 100)),
       arrays(np.float64, (5, 7), elements=st.floats(-100, 100)))
def test_rmse_properties(a, b):
    r = data_rmse(a, b, multioutput="raw_values")
    assert np.all(r >= 0)
    np.testing.assert_allclose(r, data_rmse(b, a, multioutput="raw_values"))
    np.testing.assert_allclose(r, np.linalg.norm(a - b, axis=1) / np.sqrt(7), rtol=1e-12,
                               atol=1e-12)
    assert data_rmse(a, a) == 0.0


def test_acceptance_rate_threshold_inclusive():
    t_obs = np.zeros((4, 2))
    t_pred = np.array([[0.5, 0.5], [1.0, 1.0], [2.0, 2.0], [0.0, 0.0]])
    assert acceptance_rate(t_obs, t_pred, 1.0) == 0.75     # 0.5, 1.0 (inclusive), 0.0
    assert acceptance_rate(t_obs, t_pred, 0.0) == 0.25
    with pytest.raises(ValueError, match="threshold"):
        acceptance_rate(t_obs, t_pred, -1.0)


def test_errors_name_the_metric():
    with pytest.raises(ValueError, match="data_rmse.*same shape"):
        data_rmse(np.zeros((2, 3)), np.zeros((2, 4)))
    with pytest.raises(ValueError, match="model_rmse.*NaN"):
        model_rmse(np.array([np.nan]), np.array([0.0]))
    with pytest.raises(ValueError, match="multioutput"):
        data_rmse(np.zeros(3), np.zeros(3), multioutput="variance_weighted")


class _Stub:
    """An estimator-like object: predict returns fixed models, simulate adds fixed offsets."""

    def __init__(self, offsets):
        self.offsets = np.asarray(offsets, dtype=float)

    def predict(self, X):
        return np.zeros((len(X), 3))

    def simulate(self, models):
        return self._X + self.offsets[:, None]


def test_data_scorers_use_simulate_of_predict():
    X = np.arange(8.0).reshape(2, 4)
    stub = _Stub([0.5, 3.0])
    stub._X = X
    assert make_data_rmse_scorer()(stub, X) == pytest.approx(-(0.5 + 3.0) / 2)
    assert make_acceptance_scorer(1.0)(stub, X) == 0.5
    assert make_acceptance_scorer(3.0)(stub, X, None) == 1.0
    with pytest.raises(ValueError, match="threshold"):
        make_acceptance_scorer(float("nan"))


def test_model_rmse_scorer_is_make_scorer():
    from sklearn.base import BaseEstimator, RegressorMixin

    class P(RegressorMixin, BaseEstimator):
        def predict(self, X):
            return np.full((len(X), 2), 0.5)
    y = np.zeros((3, 2))
    assert model_rmse_scorer(P(), np.zeros((3, 1)), y) == pytest.approx(-0.5)
    assert make_scorer(model_rmse, greater_is_better=False)(P(), np.zeros((3, 1)), y) == -0.5


class _GridEstimator:
    """An estimator on a 12 x 8 grid whose predictions are fixed, counting its predict calls."""

    def __init__(self):
        from latentinv import StraightRayOperator
        from latentinv.geometry import CrossholeSurvey, Grid2D
        self.operator_ = StraightRayOperator(Grid2D(12, 8, 0.1), CrossholeSurvey([[0.0, 0.5]], [[0.8, 0.5]]))
        self.calls = 0

    def predict(self, X):
        self.calls += 1
        return np.tile(np.linspace(0, 1, 96), (len(X), 1))


def test_model_rmse_scorer_takes_images_of_the_grid_and_refuses_transposed_ones():
    """True models as images (n, n_rows, n_cols) score as their flat rows; a transposed stack has as many
    cells, and flattened it would be compared with the wrong cells: refused, before any inversion."""
    est, X = _GridEstimator(), np.zeros((2, 1))
    truths = np.random.default_rng(0).random((2, 96))
    expected = -model_rmse(truths, est.predict(X))
    assert model_rmse_scorer(est, X, truths.reshape(2, 12, 8)) == pytest.approx(expected)
    assert model_rmse_scorer(est, X, truths) == pytest.approx(expected)
    calls = est.calls
    with pytest.raises(ValueError, match=r"images of shape \(8, 12\), the estimator's grid is \(12, 8\) "
                                         r"\(n_rows, n_cols\) \(transposed\?\)"):
        model_rmse_scorer(est, X, truths.reshape(2, 12, 8).transpose(0, 2, 1))
    with pytest.raises(ValueError, match=r"images of shape \(6, 16\), the estimator's grid is \(12, 8\)"):
        model_rmse_scorer(est, X, truths.reshape(2, 6, 16))
    with pytest.raises(ValueError, match="model_rmse_scorer: needs the true models y"):
        model_rmse_scorer(est, X, None)
    assert est.calls == calls             # refused before predicting


def test_estimator_score_refuses_transposed_images_and_no_y():
    import torch

    from latentinv import LatentInverter, StraightRayOperator
    from latentinv.geometry import CrossholeSurvey, Grid2D
    from latentinv.inversion import TorchGenerator
    op = StraightRayOperator(Grid2D(4, 3, 0.1), CrossholeSurvey([[0.0, 0.1], [0.0, 0.3]], [[0.3, 0.2]]))
    gen = TorchGenerator(torch.nn.Sequential(torch.nn.Linear(2, 12), torch.nn.Sigmoid()), 2)
    est = LatentInverter(gen, op, n_starts=1, n_epochs=1, batch_size=None, device="cpu").fit(np.ones((1, 2)))
    with pytest.raises(ValueError, match=r"LatentInverter.score: the true models y are images of shape \(3, 4\)"):
        est.score(np.ones((1, 2)), np.zeros((1, 3, 4)))
    with pytest.raises(ValueError, match="LatentInverter.score: needs the true models y"):
        est.score(np.ones((1, 2)), None)


def test_acceptance_rate_warns_when_the_threshold_is_not_below_the_homogeneous_baseline():
    from latentinv.baselines import BaselineWarning
    t_obs = np.zeros((2, 2))
    t_pred = np.array([[0.3, 0.3], [0.4, 0.4]])
    # threshold 0.45 ns: survey 0 has a homogeneous RMSE of 4 ns (0.45 <= 2: fine), survey 1 of
    # 0.8 ns (0.45 > 0.4: the acceptance says little) -> one warning naming survey 1's numbers
    with pytest.warns(BaselineWarning, match=r"data RMSE \[0\.45\] ns .* model's \[0\.8\] ns"):
        assert acceptance_rate(t_obs, t_pred, 0.45, homogeneous_rmse=[4.0, 0.8]) == 1.0
    import warnings
    with warnings.catch_warnings():
        warnings.simplefilter("error", BaselineWarning)
        assert acceptance_rate(t_obs, t_pred, 0.35, homogeneous_rmse=[4.0, 0.8]) == 0.5
        assert acceptance_rate(t_obs, t_pred, 0.45, homogeneous_rmse=None) == 1.0
    with pytest.raises(ValueError, match=r"homogeneous_rmse must be a finite number >= 0 or an array of 2 "
                                         r"such numbers \(ns, one per survey\), got \[1\.0\]"):
        acceptance_rate(t_obs, t_pred, 0.45, homogeneous_rmse=[1.0])
    with pytest.raises(ValueError, match=r"threshold must be a finite number >= 0 \(ns\), got 'big'"):
        acceptance_rate(t_obs, t_pred, "big")


def test_acceptance_scorer_compares_with_the_estimators_homogeneous_model():
    from latentinv.baselines import BaselineWarning
    from latentinv.geometry import CrossholeSurvey, Grid2D
    from latentinv.operators import StraightRayOperator
    grid = Grid2D(4, 4, 1.0)
    op = StraightRayOperator(grid, CrossholeSurvey(np.array([[0.0, 0.5], [0.0, 3.5]]),
                                                   np.array([[4.0, 0.5], [4.0, 3.5]])))
    lengths = op.response(np.ones(16))                       # 4, 5, 5, 4 m
    np.testing.assert_allclose(lengths, [4.0, 5.0, 5.0, 4.0])
    homogeneous = 10.0 * lengths[None, :]                    # exactly homogeneous data: baseline 0 ns
    layered = np.array([[40.0, 60.0, 40.0, 60.0]])           # best s0 = 10.976 ns/m, RMSE 11.42 ns
    stub = _Stub([0.5])
    stub.operator_ = op
    stub._X = homogeneous
    with pytest.warns(BaselineWarning, match="not clearly better"):
        assert make_acceptance_scorer(1.0)(stub, homogeneous) == 1.0
    stub._X = layered
    import warnings
    with warnings.catch_warnings():
        warnings.simplefilter("error", BaselineWarning)
        assert make_acceptance_scorer(1.0)(stub, layered) == 1.0      # 1 ns < 0.5 x 11.42 ns


# ------------------------------------------------------------------ pattern statistics (issue 15)
from latentinv.metrics import (channel_fraction, channel_widths, compare_patterns,  # noqa: E402
                               indicator_variogram, pattern_statistics, two_point_connectivity)


def _stripes(n_rows=16, n_cols=10, width=2, period=4, offset=1):
    """Horizontal channels: rows r with (r - offset) % period < width are channel (1)."""
    rows = (np.arange(n_rows) - offset) % period < width
    return np.repeat(rows[:, None], n_cols, axis=1).astype(float)


def _checkerboard(n=8):
    return (np.indices((n, n)).sum(0) % 2).astype(float)


def test_pattern_statistics_of_horizontal_stripes():
    img = _stripes()                       # 16 rows: 0110 0110 0110 0110 (channel rows 1, 2, 5, 6, ...)
    assert channel_fraction(img) == 0.5
    # along x every row is constant: no change, every channel cell connected to its neighbours
    np.testing.assert_array_equal(indicator_variogram(img, 5, "x"), 0.0)
    np.testing.assert_array_equal(two_point_connectivity(img, 5, "x"), 1.0)
    # along depth, lag h: pairs r = 0..15-h; indicators differ where (r - 1) % 4 and (r - 1 + h) % 4
    # fall on different sides: h = 1 -> 8 of 15 pairs, h = 2 -> all, h = 3 -> 6 of 13, h = 4 -> none
    np.testing.assert_allclose(indicator_variogram(img, 4, "depth"),
                               [0.5 * 8 / 15, 0.5, 0.5 * 6 / 13, 0.0])
    # a channel cell at the top of its 2-row channel reaches the next row, the bottom one does not:
    # tau(h) = max(width - h, 0) / width
    np.testing.assert_allclose(two_point_connectivity(img, 3, "depth"), [0.5, 0.0, 0.0])
    widths = channel_widths(img, "depth")
    assert widths.size == 4 * 10 and np.all(widths == 2)       # 4 channels crossed by 10 columns
    assert channel_widths(img, "x").size == 0                  # every x run touches the border
    np.testing.assert_array_equal(channel_widths(img, "x", include_border=True), 10)


def test_pattern_statistics_of_a_checkerboard():
    img = _checkerboard(8)
    assert channel_fraction(img) == 0.5
    for axis in ("x", "depth"):
        # odd lags always change the indicator, even lags never
        np.testing.assert_array_equal(indicator_variogram(img, 6, axis), [0.5, 0, 0.5, 0, 0.5, 0])
        # 4-connectivity: every channel cell is its own body, connected to no other cell
        np.testing.assert_array_equal(two_point_connectivity(img, 6, axis), 0.0)
        widths = channel_widths(img, axis)
        assert np.all(widths == 1) and widths.size == 8 * 3   # 4 per line, the border one excluded
    stats = pattern_statistics(img, max_lag=3)
    assert stats["mean_width_x"] == 1.0 and stats["channel_fraction"] == 0.5


def test_pattern_statistics_pool_images_and_take_flat_models():
    a, b = _stripes(offset=0), _checkerboard(16)[:, :10]
    stack = np.stack([a, b])
    # pooled: the mean of the per-image values (equal sizes)
    np.testing.assert_allclose(indicator_variogram(stack, 3, "depth"),
                               (indicator_variogram(a, 3, "depth") + indicator_variogram(b, 3, "depth")) / 2)
    assert channel_fraction(stack.reshape(2, -1), image_shape=(16, 10)) == channel_fraction(stack)
    # threshold: grey values at or above it are channel
    assert channel_fraction(np.full((4, 4), 0.5)) == 1.0
    assert channel_fraction(np.full((4, 4), 0.49)) == 0.0


def test_compare_patterns_is_zero_for_identical_sets_and_sees_differences():
    img = _stripes()
    same = compare_patterns(img, img, max_lag=4)
    assert same["fraction_difference"] == 0.0
    assert same["variogram_rmse_depth"] == 0.0 and same["width_wasserstein_depth"] == 0.0
    other = compare_patterns(_checkerboard(16)[:, :10], img, max_lag=4)
    assert other["fraction_difference"] == 0.0                # same fraction, other pattern
    assert other["width_wasserstein_depth"] == pytest.approx(1.0)   # widths 1 against 2
    assert other["connectivity_rmse_x"] == pytest.approx(1.0)       # 0 against 1 at every lag


@pytest.mark.parametrize("call, message", [
    (lambda: indicator_variogram(np.zeros((4, 4)), 4, "x"), "max_lag must be below"),
    (lambda: indicator_variogram(np.zeros((4, 4)), 0, "x"), "max_lag must be an int >= 1"),
    (lambda: two_point_connectivity(np.zeros((4, 4)), 2, "y"), "axis must be 'x'"),
    (lambda: channel_fraction(np.array([[np.nan]])), "NaN or inf"),
    (lambda: channel_fraction(np.zeros(5)), "images must be an image"),
])
def test_pattern_statistics_refuse_bad_inputs(call, message):
    with pytest.raises(ValueError, match=message):
        call()


@pytest.mark.parametrize("fn", [data_rmse, model_rmse])
@pytest.mark.parametrize("bad, match", [
    (np.zeros((0, 3)), r"must be a non-empty array .*got shape \(0, 3\)"),
    (np.ones((2, 3)) + 1j, "must hold real numbers, got dtype complex128"),
    (np.array([["1", "2", "3"]] * 2), "must hold real numbers, got dtype <U1"),
    ([[1.0, 2.0], [1.0]], "must be a rectangular array of real numbers"),
])
def test_rmse_refuses_what_numpy_would_convert_or_reshape(fn, bad, match):
    first = {"data_rmse": "t_observed", "model_rmse": "m_true"}[fn.__name__]
    with pytest.raises(ValueError, match=f"{fn.__name__}: {first} " + match):
        fn(bad, np.ones((2, 3)))
    assert fn(np.zeros((2, 3), dtype=bool), np.ones((2, 3))) == 1.0      # binary models are numbers


@pytest.mark.parametrize("images, image_shape, message", [
    (np.zeros((3, 90)), (5,), r"image_shape must be None or \(n_rows, n_cols\), two ints >= 1; got \(5,\)"),
    (np.zeros((3, 90)), (2.5, 36), r"two ints >= 1; got \(2\.5, 36\)"),
    (np.zeros((3, 90)), (-10, -9), r"two ints >= 1; got \(-10, -9\)"),
    (np.zeros((3, 90)), "ab", r"two ints >= 1; got 'ab'"),
    (np.zeros((3, 90)), (10, 10), r"images of shape \(3, 90\) do not match image_shape=\(10, 10\)"),
    # a stack of another shape was silently analysed as it was, image_shape ignored
    (np.zeros((3, 10, 9)), (9, 10), r"images of shape \(3, 10, 9\) do not match image_shape=\(9, 10\)"),
])
def test_image_shape_is_checked(images, image_shape, message):
    for fn in (channel_fraction, lambda *a, **k: pattern_statistics(*a, max_lag=2, **k), channel_widths):
        with pytest.raises(ValueError, match=message):
            fn(images, image_shape=image_shape)


def test_image_shape_of_numpy_ints_and_matching_stacks_is_taken():
    stack = (np.random.default_rng(0).uniform(size=(2, 10, 9)) > 0.5).astype(float)
    expected = channel_fraction(stack)
    assert channel_fraction(stack.reshape(2, -1), image_shape=np.array([10, 9])) == expected
    assert channel_fraction(stack.reshape(2, -1), image_shape=(np.int64(10), 9)) == expected
    assert channel_fraction(stack, image_shape=(10, 9)) == expected


def test_flat_models_without_image_shape_warn():
    """A batch of flat models read as one very wide image gives statistics of nothing real."""
    flat = (np.random.default_rng(1).uniform(size=(100, 129 * 65)) > 0.5).astype(float)
    with pytest.warns(UserWarning, match=r"images of shape \(100, 8385\) are taken as ONE image .* pass "
                                         r"image_shape=\(n_rows, n_cols\)"):
        channel_fraction(flat)
    import warnings
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        channel_fraction(flat[:2, :129 * 20].reshape(129, 40))                   # an image, not warned
        channel_fraction(flat, image_shape=(129, 65))


def test_two_point_connectivity_hand_values_conditioned_on_the_first_cell_and_pooled():
    """Two 1 x 5 images, lags along x. Lag 1: image A's pairs starting in a channel are (0,1) joined
    and (1,2) not; B's one, (0,1), is not: pooled 1/3 (conditioning on the second cell gives 1; a
    mean of per-image ratios 1/4). Lag 2: no pair joined: 0."""
    stack = np.array([[[1, 1, 0, 0, 0]], [[1, 0, 0, 0, 0]]], float)
    np.testing.assert_allclose(two_point_connectivity(stack, 2, axis="x"), [1 / 3, 0.0], rtol=0, atol=1e-15)


def test_compare_patterns_ignores_lags_without_pairs():
    """Samples whose channel is column 3 of 5: along x, lag 1 has a pair (not joined: tau 0) and lag 2
    none (NaN); against all-channel images (tau 1), the connectivity RMSE along x is that of lag 1
    alone: 1 (a NaN counted as 0 would give sqrt(1/2))."""
    samples = np.zeros((2, 5, 5))
    samples[:, :, 3] = 1
    reference = np.ones((2, 5, 5))
    assert np.isnan(two_point_connectivity(samples, 2, axis="x")[1])
    out = compare_patterns(samples, reference, max_lag=2)
    assert out["connectivity_rmse_x"] == pytest.approx(1.0, abs=1e-15)
    assert out["connectivity_rmse_depth"] == pytest.approx(0.0, abs=1e-15)     # a joined vertical line


# ---- round 4 of the mutation audit (docs/mutation_audit.md) ----------------------------------------------
def test_uniform_average_is_the_mean_over_surveys():
    """multioutput="uniform_average" is the mean of the surveys' RMSEs: 1, 2 and 6 give 3 (the median
    would give 2), for data and models alike."""
    truth = np.zeros((3, 4))
    pred = np.repeat([[1.0], [2.0], [6.0]], 4, axis=1)
    assert data_rmse(truth, pred) == 3.0 and model_rmse(truth, pred) == 3.0


def test_flat_models_warning_starts_at_twenty_times_wider_than_tall():
    """The flat-models warning is for a 2-D array at least 20 times wider than tall: 2 x 40 warns, 2 x 39
    does not."""
    import warnings
    with pytest.warns(UserWarning, match=r"images of shape \(2, 40\) are taken as ONE image"):
        channel_fraction(np.zeros((2, 40)))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        channel_fraction(np.zeros((2, 39)))


def test_compare_patterns_rmse_over_lags_hand_values():
    """compare_patterns' variogram and connectivity distances are root-mean-square differences over the
    lags: checkerboard against stripes along depth, lags 1-4, from the hand values of the two tests
    above: variogram [0.5, 0, 0.5, 0] against [4/15, 0.5, 3/13, 0], connectivity 0 against
    [0.5, 0, 0, 0] (RMS 0.25, where a mean absolute difference would give 0.125)."""
    out = compare_patterns(_checkerboard(16)[:, :10], _stripes(), max_lag=4)
    diff = np.array([0.5, 0.0, 0.5, 0.0]) - [4 / 15, 0.5, 3 / 13, 0.0]
    assert out["variogram_rmse_depth"] == pytest.approx(np.sqrt(np.mean(diff ** 2)), rel=1e-12)
    assert out["connectivity_rmse_depth"] == pytest.approx(0.25, rel=1e-12)


def test_acceptance_scorers_baseline_is_weighted_by_the_estimators_noise_std():
    """The acceptance scorer's homogeneous baseline is the fit weighted by 1 / noise_std**2 of the estimator
    (homogeneous_fit's sigma): the layered data of the test above with data 0 and 3 a thousand times surer
    give s0 = 12.5 ns/m by hand and an RMSE of 13.35 ns (11.42 unweighted), so 6.2 ns is below half of it
    (silent, where the unweighted baseline would warn) and 6.8 ns is not."""
    from latentinv.baselines import BaselineWarning
    from latentinv.geometry import CrossholeSurvey, Grid2D
    from latentinv.operators import StraightRayOperator
    import warnings
    op = StraightRayOperator(Grid2D(4, 4, 1.0), CrossholeSurvey(np.array([[0.0, 0.5], [0.0, 3.5]]),
                                                                np.array([[4.0, 0.5], [4.0, 3.5]])))
    layered = np.array([[40.0, 60.0, 40.0, 60.0]])
    lengths, sigma = np.array([4.0, 5.0, 5.0, 4.0]), np.array([1.0, 1e3, 1e3, 1.0])
    w = 1 / sigma ** 2
    s0 = np.sum(w * layered[0] * lengths) / np.sum(w * lengths ** 2)
    rmse = np.sqrt(np.mean((layered[0] - s0 * lengths) ** 2))
    assert s0 == pytest.approx(12.5, rel=1e-5) and 6.2 < 0.5 * rmse < 6.8 and 0.5 * 11.42 < 6.2
    stub = _Stub([0.5])
    stub.operator_, stub._X, stub.noise_std = op, layered, sigma
    with warnings.catch_warnings():
        warnings.simplefilter("error", BaselineWarning)
        assert make_acceptance_scorer(6.2)(stub, layered) == 1.0
    with pytest.warns(BaselineWarning, match="not clearly better"):
        make_acceptance_scorer(6.8)(stub, layered)


def test_score_and_scorer_refuse_true_models_outside_the_priors_unit_interval():
    """The models of a VAEPrior (sigmoid output) lie in [0, 1]: true models in slowness (ns/m) or 0-255
    were scored against them without a word (R^2 or RMSE of numbers in other units); now refused,
    naming the range, before any inversion. Models in [0, 1] score as before; a FrozenEstimator's prior
    and the sampler are held to the same rule."""
    import warnings

    from sklearn.frozen import FrozenEstimator

    from latentinv import LatentInverter, LatentSampler, StraightRayOperator, VAEPrior
    from latentinv.geometry import CrossholeSurvey, Grid2D
    op = StraightRayOperator(Grid2D(4, 3, 0.1), CrossholeSurvey([[0.0, 0.1], [0.0, 0.3]], [[0.3, 0.2]]))
    rng = np.random.default_rng(0)
    truths = (rng.random((2, 12)) > 0.5).astype(float)
    prior = VAEPrior(n_components=2, image_shape=(4, 3), architecture="mlp", hidden_size=4, n_iterations=2,
                     batch_size=2, random_state=0, device="cpu").fit(truths)
    slowness = 1.0 / (0.06 + 0.02 * (1 - truths))
    X = op.response(slowness)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")      # baseline and convergence warnings of these tiny runs
        for est in (LatentInverter(prior, op, n_starts=1, n_epochs=1, batch_size=None, device="cpu"),
                    LatentInverter(FrozenEstimator(prior), op, n_starts=1, n_epochs=1, batch_size=None,
                                   device="cpu"),
                    LatentSampler(prior, op, n_chains=2, n_burnin=1, n_samples=4, noise_std=1.0, device="cpu")):
            est.fit(X)
            name = type(est).__name__
            with pytest.raises(ValueError, match=rf"{name}.score: the true models y must hold model values in "
                                                 r"\[0, 1\] .* got values in \[12\.5, 16\.67\]"):
                est.score(X, slowness)
            with pytest.raises(ValueError, match=r"model_rmse_scorer: .* got values in \[0, 255\]"):
                model_rmse_scorer(est, X, truths * 255)
            assert np.isfinite(est.score(X, truths)) and model_rmse_scorer(est, X, truths) <= 0


@pytest.mark.parametrize("call, message", [
    # numpy's own messages, or (complex) the imaginary part dropped with a numpy warning only
    (lambda: channel_fraction(np.ones((4, 4)) + 1j),
     r"channel_fraction: images must hold real numbers, got dtype complex128"),
    (lambda: channel_fraction([["a", "b"]]), r"channel_fraction: images must hold real numbers, got dtype <U1"),
    (lambda: channel_fraction([[1.0, 2.0], [1.0]]), r"channel_fraction: images must be a rectangular array"),
    (lambda: channel_fraction(np.ones((4, 4)), threshold="a"), r"channel_fraction: threshold must be a finite "
                                                               r"number, got 'a'"),
    (lambda: channel_fraction(np.ones((4, 4)), threshold=None), r"threshold must be a finite number, got None"),
    (lambda: channel_fraction(np.ones((4, 4)), threshold=10**400), r"threshold must be a finite number, got 1000"),
    (lambda: channel_fraction(np.ones((4, 4)), threshold=[0.5, 0.6]), r"threshold must be a finite number, "
                                                                      r"got \[0\.5, 0\.6\]"),
    (lambda: channel_fraction(np.ones((4, 4)), threshold=True), r"threshold must be a finite number, got True"),
    (lambda: indicator_variogram(np.ones((4, 4)), 2, ["x"]), r"indicator_variogram: axis must be 'x' \(along "
                                                             r"rows\) or 'depth' \(down columns\), got \['x'\]"),
    # a truthy string counted the border runs
    (lambda: channel_widths(np.ones((4, 4)), include_border="no"), r"channel_widths: include_border must be "
                                                                   r"True or False, got 'no'"),
    # the default max_lag=20 on small images was refused in the name of indicator_variogram
    (lambda: pattern_statistics(np.ones((8, 30))), r"pattern_statistics: max_lag must be below the images' "
                                                   r"length along the axis \(8 cells\), got 20"),
    (lambda: compare_patterns(np.ones((30, 30)), np.ones((8, 30))), r"compare_patterns: max_lag must be below "
                                                                    r"the images' length along the axis \(8 cells\)"),
])
def test_pattern_statistics_name_themselves_and_the_bad_argument(call, message):
    with pytest.raises(ValueError, match=message):
        call()


def test_pattern_statistics_take_tensors_that_require_grad():
    import torch

    x = torch.rand(2, 5, 6, requires_grad=True)
    assert channel_fraction(x) == pytest.approx(float((x.detach().numpy() >= 0.5).mean()))
    assert channel_widths(x, include_border=np.bool_(True)).sum() == int((x.detach().numpy() >= 0.5).sum())


def _tiny_pipeline():
    """A LatentInverter on a 4 x 3 grid behind a FunctionTransformer that turns seconds into ns, fitted."""
    import torch
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import FunctionTransformer

    from latentinv import LatentInverter, StraightRayOperator
    from latentinv.geometry import CrossholeSurvey, Grid2D
    from latentinv.inversion import TorchGenerator
    torch.manual_seed(0)
    op = StraightRayOperator(Grid2D(4, 3, 0.1), CrossholeSurvey([[0.0, 0.1], [0.0, 0.3]], [[0.3, 0.2], [0.3, 0.35]]))
    gen = TorchGenerator(torch.nn.Sequential(torch.nn.Linear(2, 12), torch.nn.Sigmoid()), 2)
    est = LatentInverter(gen, op, n_starts=2, n_epochs=2, batch_size=None, device="cpu", random_state=0)
    truths = np.random.default_rng(0).random((3, 12))
    X_ns = op.response(1.0 / (0.06 + 0.02 * (1 - truths)))
    pipe = make_pipeline(FunctionTransformer(lambda x: x * 1e9), est).fit(X_ns * 1e-9, truths)
    return pipe, X_ns, truths


def test_scorers_see_through_a_pipeline():
    """In a Pipeline the data scorers raised AttributeError ('Pipeline' object has no attribute 'simulate'),
    and model_rmse_scorer scored transposed true images (-0.40 here) without the grid check, which looked
    for the operator on the Pipeline. Now they use the final step, on the data as the steps before it
    transform them (ns here, from seconds)."""
    import warnings

    from latentinv.baselines import BaselineWarning
    pipe, X_ns, truths = _tiny_pipeline()
    est = pipe[-1]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", BaselineWarning)
        models = est.predict(X_ns)
        t_pred = est.simulate(models)
        assert make_data_rmse_scorer()(pipe, X_ns * 1e-9) == pytest.approx(-data_rmse(X_ns, t_pred), rel=1e-12)
        rmse = np.sort(data_rmse(X_ns, t_pred, multioutput="raw_values"))
        threshold = float(rmse[0] + rmse[1]) / 2                # between two surveys: one accepted of 3
        assert rmse[1] - rmse[0] > 1e-3
        assert make_acceptance_scorer(threshold)(pipe, X_ns * 1e-9) == acceptance_rate(X_ns, t_pred, threshold) \
            == pytest.approx(1 / 3)
        assert model_rmse_scorer(pipe, X_ns * 1e-9, truths) == pytest.approx(-model_rmse(truths, models))
        with pytest.raises(ValueError, match=r"model_rmse_scorer: the true models y are images of shape \(3, 4\), "
                                             r"the estimator's grid is \(4, 3\) .*\(transposed\?\)"):
            model_rmse_scorer(pipe, X_ns * 1e-9, truths.reshape(3, 4, 3).transpose(0, 2, 1))
    from sklearn.linear_model import LinearRegression
    with pytest.raises(ValueError, match=r"make_data_rmse_scorer\(\): the estimator \(or a Pipeline's final step, or a "
                                         r"fitted search's best_estimator_\) must have predict and simulate.*"
                                         r"got LinearRegression"):
        make_data_rmse_scorer()(LinearRegression().fit(X_ns, truths), X_ns)


def test_scorers_see_through_a_fitted_search():
    """Nested cross-validation hands the outer scorer a fitted GridSearchCV: the data scorers refused it
    ("must have predict and simulate ... got GridSearchCV"), and model_rmse_scorer scored transposed true
    images (-0.40 on the trial's 12 x 8 grid) without the grid check, which looked for the operator on the
    search. They now use the search's best_estimator_ (here a Pipeline: its final step, on the data as its
    steps give them)."""
    import warnings

    from sklearn.model_selection import GridSearchCV, KFold, cross_val_score

    from latentinv.baselines import BaselineWarning
    pipe, X_ns, truths = _tiny_pipeline()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", BaselineWarning)
        search = GridSearchCV(pipe, {"latentinverter__lr": [1e-2, 2e-2]}, cv=KFold(3),
                              scoring=make_data_rmse_scorer()).fit(X_ns * 1e-9, truths)
        best = search.best_estimator_
        assert make_data_rmse_scorer()(search, X_ns * 1e-9) == make_data_rmse_scorer()(best, X_ns * 1e-9)
        assert make_acceptance_scorer(0.5)(search, X_ns * 1e-9) == make_acceptance_scorer(0.5)(best, X_ns * 1e-9)
        assert model_rmse_scorer(search, X_ns * 1e-9, truths) == model_rmse_scorer(best, X_ns * 1e-9, truths)
        with pytest.raises(ValueError, match=r"model_rmse_scorer: the true models y are images of shape \(3, 4\), "
                                             r"the estimator's grid is \(4, 3\) .*\(transposed\?\)"):
            model_rmse_scorer(search, X_ns * 1e-9, truths.reshape(3, 4, 3).transpose(0, 2, 1))
        inner = GridSearchCV(pipe, {"latentinverter__lr": [1e-2, 2e-2]}, cv=KFold(2), scoring=make_data_rmse_scorer())
        outer = cross_val_score(inner, np.vstack([X_ns] * 2) * 1e-9, np.vstack([truths] * 2), cv=KFold(2),
                                scoring=make_data_rmse_scorer(), error_score="raise")
        assert outer.shape == (2,) and np.all(outer < 0)


def test_multioutput_weights_average_the_surveys_as_sklearn_does():
    """``multioutput`` as an array of weights (sklearn's third option) raised numpy's "truth value of an
    array is ambiguous"; it is the weighted mean over surveys, as ``sklearn.metrics`` computes it."""
    from sklearn.metrics import root_mean_squared_error

    rng = np.random.default_rng(0)
    a, b = rng.random((3, 5)), rng.random((3, 5))
    w = np.array([1.0, 2.0, 5.0])
    per_survey = np.sqrt(((a - b) ** 2).mean(axis=1))
    for fn in (data_rmse, model_rmse):
        assert fn(a, b, multioutput=w) == pytest.approx(float(per_survey @ w / w.sum()), rel=1e-12)
        assert fn(a, b, multioutput=list(w)) == pytest.approx(root_mean_squared_error(a.T, b.T, multioutput=w))
        for bad, got in (([1.0, 2.0], r"an array of shape \(2,\)"), ([1.0, -1.0, 1.0], r"\[1\.0, -1\.0, 1\.0\]"),
                         ([0.0, 0.0, 0.0], r"\[0\.0, 0\.0, 0\.0\]"), ([1.0, np.nan, 1.0], r"\[1\.0, nan, 1\.0\]"),
                         ("variance_weighted", "'variance_weighted'")):
            with pytest.raises(ValueError, match=fr"{fn.__name__}: multioutput must be 'uniform_average', "
                                                 fr"'raw_values' or an array of 3 weights >= 0 \(one per survey, "
                                                 fr"not all 0\), got {got}"):
                fn(a, b, multioutput=bad)


def test_the_inversion_scorer_gives_each_scorers_number_from_one_inversion():
    """make_inversion_scorer: the three scores of one predict per call, each equal to its own scorer's; a
    scoring dict of the three scorers inverts once per scorer. In cross_validate and in GridSearchCV
    (refit on one key), the same numbers as the dict of separate scorers, from a third of the inversions."""
    import warnings

    from sklearn.model_selection import GridSearchCV, KFold, cross_validate

    from latentinv.baselines import BaselineWarning
    from latentinv.metrics import make_inversion_scorer
    pipe, X_ns, truths = _tiny_pipeline()
    est = pipe[-1]
    calls = []
    predict = type(est).predict
    spy = lambda self, X: calls.append(len(X)) or predict(self, X)
    threshold = 0.5
    separate = dict(neg_data_rmse=make_data_rmse_scorer(), acceptance=make_acceptance_scorer(threshold),
                    neg_model_rmse=model_rmse_scorer)
    with warnings.catch_warnings(), pytest.MonkeyPatch.context() as mp:
        warnings.simplefilter("ignore", BaselineWarning)
        mp.setattr(type(est), "predict", spy)
        scores = make_inversion_scorer(threshold)(pipe, X_ns * 1e-9, truths)
        assert calls == [3]
        for key, scorer in separate.items():
            assert scores[key] == scorer(pipe, X_ns * 1e-9, truths)
        assert make_inversion_scorer()(pipe, X_ns * 1e-9).keys() == {"neg_data_rmse"}
        X2, y2 = np.vstack([X_ns] * 2) * 1e-9, np.vstack([truths] * 2)
        calls.clear()
        one = cross_validate(pipe, X2, y2, cv=KFold(2), scoring=make_inversion_scorer(threshold), error_score="raise")
        n_one = len(calls)
        calls.clear()
        each = cross_validate(pipe, X2, y2, cv=KFold(2), scoring=separate, error_score="raise")
        assert len(calls) == 3 * n_one and n_one == 2             # one inversion per fold, against three
        for key in separate:
            np.testing.assert_array_equal(one[f"test_{key}"], each[f"test_{key}"])
        search = GridSearchCV(pipe, {"latentinverter__lr": [1e-2, 2e-2]}, cv=KFold(2), refit="neg_model_rmse",
                              scoring=make_inversion_scorer(threshold)).fit(X2, y2)
        assert set(search.cv_results_) >= {"mean_test_neg_data_rmse", "mean_test_acceptance",
                                           "mean_test_neg_model_rmse"}
    with pytest.raises(ValueError, match="threshold"):
        make_inversion_scorer(float("nan"))
    with pytest.raises(ValueError, match=r"make_inversion_scorer\(threshold=0.5\): the true models y are images "
                                         r"of shape \(3, 4\), the estimator's grid is \(4, 3\)"):
        make_inversion_scorer(threshold)(pipe, X_ns * 1e-9, truths.reshape(3, 4, 3).transpose(0, 2, 1))


def _per_survey_scores(pipe, X, truths, threshold):
    """Each survey's data RMSE (ns), acceptance (0/1) and model RMSE of the fitted pipeline, ``X`` in s."""
    est = pipe[-1]
    models = est.predict(X * 1e9)
    data = data_rmse(X * 1e9, est.simulate(models), multioutput="raw_values")
    return {"neg_data_rmse": -data, "acceptance": (data <= threshold).astype(float),
            "neg_model_rmse": -model_rmse(truths, models, multioutput="raw_values")}


def test_scorers_weight_the_surveys_by_sample_weight():
    """The scorers took no sample_weight. Each score is now the weighted mean over surveys: the hand
    computation from each survey's numbers; weights of 0 and 1 score the subset, integer weights the
    surveys repeated. The dict scorer gives the separate scorers' numbers. Bad weights are refused before
    anything is inverted, naming the scorer, the parameter, what it takes and what came."""
    import warnings

    from latentinv.baselines import BaselineWarning
    from latentinv.metrics import make_inversion_scorer
    pipe, X_ns, truths = _tiny_pipeline()
    X = X_ns * 1e-9
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", BaselineWarning)
        rmse = np.sort(-_per_survey_scores(pipe, X, truths, 0.0)["neg_data_rmse"])
        threshold = float(rmse[0] + rmse[1]) / 2                 # survey of the lowest RMSE accepted, alone
        per_survey = _per_survey_scores(pipe, X, truths, threshold)
        assert per_survey["acceptance"].sum() == 1
        scorers = dict(neg_data_rmse=make_data_rmse_scorer(), acceptance=make_acceptance_scorer(threshold),
                       neg_model_rmse=model_rmse_scorer)
        accepted = int(np.argmax(per_survey["acceptance"]))
        w = np.ones(3)
        w[accepted] = 3.0                                        # acceptance 3/5, not 1/3
        subset, repeated = [0, 2], [0, 0, 2]
        for weights, rows in (([1.0, 0.0, 1.0], subset), ([2, 0, 1], repeated)):
            together = make_inversion_scorer(threshold)(pipe, X, truths, sample_weight=weights)
            for key, scorer in scorers.items():
                hand = float(per_survey[key] @ w / w.sum())
                assert scorer(pipe, X, truths, sample_weight=w) == pytest.approx(hand, rel=1e-12)
                alone = scorer(pipe, X[rows], truths[rows])
                assert scorer(pipe, X, truths, sample_weight=weights) == together[key] == pytest.approx(alone, rel=1e-6)
        assert make_acceptance_scorer(threshold)(pipe, X, sample_weight=w) == pytest.approx(0.6)
        assert acceptance_rate([[0.0], [0.0]], [[1.0], [3.0]], 2.0, sample_weight=[3, 1]) == 0.75
        calls = []
        predict = type(pipe[-1]).predict
        with pytest.MonkeyPatch.context() as mp:
            mp.setattr(type(pipe[-1]), "predict", lambda self, X: calls.append(1) or predict(self, X))
            for scorer in (*scorers.values(), make_inversion_scorer(threshold)):
                expected = re.escape(f"{scorer!r}: sample_weight must be None or an array of 3 weights >= 0 "
                                     "(one per survey, not all 0), got ")
                for bad, got in (([1.0, 2.0], r"an array of shape \(2,\)"), ([0, 0, 0], r"\[0\.0, 0\.0, 0\.0\]"),
                                 ([1.0, -1.0, 1.0], r"\[1\.0, -1\.0, 1\.0\]"), ("1", "'1'"),
                                 ([1.0, np.inf, 1.0], r"\[1\.0, inf, 1\.0\]")):
                    with pytest.raises(ValueError, match=expected + got):
                        scorer(pipe, X, truths, sample_weight=bad)
        assert calls == []                                       # refused before any inversion


def test_scorers_take_the_weights_that_metadata_routing_passes():
    """With scikit-learn's metadata routing on, cross_validate(..., params={"sample_weight": w}) got "got
    unexpected argument(s) {'sample_weight'}, which are not routed to any object" for the library's
    scorers. A scorer now requests the weights as make_scorer's scorers do (set_score_request), and each
    fold's score is the hand-weighted mean over its test surveys; the dict scorer gives the separate
    scorers' numbers. Unrequested weights are scikit-learn's error naming the scorer."""
    import copy
    import warnings

    import sklearn
    from sklearn.exceptions import UnsetMetadataPassedError
    from sklearn.model_selection import KFold, cross_validate

    from latentinv.baselines import BaselineWarning
    from latentinv.metrics import make_inversion_scorer
    pipe, X_ns, truths = _tiny_pipeline()
    X2, y2 = np.vstack([X_ns, X_ns[::-1]]) * 1e-9, np.vstack([truths, truths[::-1]])
    w = np.array([1.0, 0.0, 2.0, 3.0, 1.0, 0.5])
    threshold = 0.5
    with pytest.raises(RuntimeError, match=r"make_data_rmse_scorer\(\).set_score_request: needs scikit-learn's "
                                           r"metadata routing, which is off"):
        make_data_rmse_scorer().set_score_request(sample_weight=True)
    with warnings.catch_warnings(), sklearn.config_context(enable_metadata_routing=True):
        warnings.simplefilter("ignore", BaselineWarning)
        # scikit-learn 1.9 names the scorer; 1.6.1 named the pipeline, with another wording
        with pytest.raises(UnsetMetadataPassedError, match=r"sample_weight'?\] are passed (to cross validation )?but are "
                                                           r"not explicitly set as requested or not requested for "
                                                           r"(model_rmse_scorer|cross_validate's estimator)"):
            cross_validate(pipe, X2, y2, cv=KFold(2), scoring=model_rmse_scorer, params={"sample_weight": w})
        one = make_inversion_scorer(threshold).set_score_request(sample_weight=True)
        separate = dict(neg_data_rmse=make_data_rmse_scorer().set_score_request(sample_weight=True),
                        acceptance=make_acceptance_scorer(threshold).set_score_request(sample_weight=True),
                        neg_model_rmse=copy.copy(model_rmse_scorer).set_score_request(sample_weight=True))
        assert model_rmse_scorer.get_metadata_routing().score.requests == {"sample_weight": None}   # the shared one
        results = [cross_validate(pipe, X2, y2, cv=KFold(2), scoring=scoring, params={"sample_weight": w},
                                  return_estimator=True, error_score="raise") for scoring in (one, separate)]
        for fold, (fitted, test) in enumerate(zip(results[0]["estimator"], (slice(0, 3), slice(3, 6)))):
            per_survey = _per_survey_scores(fitted, X2[test], y2[test], threshold)
            for key in separate:
                hand = float(per_survey[key] @ w[test] / w[test].sum())
                assert results[0][f"test_{key}"][fold] == results[1][f"test_{key}"][fold] \
                    == pytest.approx(hand, rel=1e-12)
        assert not np.allclose(results[0]["test_neg_model_rmse"],
                               cross_validate(pipe, X2, y2, cv=KFold(2), scoring=one)["test_neg_model_rmse"])


def test_a_score_request_is_kept_as_given_and_checked_when_set():
    """The test above requested True only: False, None and an alias are kept as given (what scikit-learn's
    routing reads), an alias routes the weights passed under its name, and a value that is neither is refused
    when set (scikit-learn's own check), not at the next search, leaving the request as it was."""
    import warnings

    import sklearn
    from sklearn.model_selection import KFold, cross_validate

    from latentinv.baselines import BaselineWarning
    pipe, X_ns, truths = _tiny_pipeline()
    X2 = np.vstack([X_ns, X_ns[::-1]]) * 1e-9
    w = np.array([1.0, 0.0, 2.0, 3.0, 1.0, 0.5])
    with warnings.catch_warnings(), sklearn.config_context(enable_metadata_routing=True):
        warnings.simplefilter("ignore", BaselineWarning)
        scorer = make_data_rmse_scorer()
        for value in (False, None, "survey_weight", True):
            assert scorer.set_score_request(sample_weight=value) is scorer
            assert scorer.get_metadata_routing().score.requests == {"sample_weight": value}
        assert scorer.set_score_request() is scorer     # not given: left as it is (scikit-learn's UNCHANGED)
        assert scorer.get_metadata_routing().score.requests == {"sample_weight": True}
        with pytest.raises(ValueError, match=re.escape("The alias you're setting for `sample_weight` should be "
                                                       "either a valid identifier or one of {None, True, False}")):
            scorer.set_score_request(sample_weight=1.5)
        assert scorer.get_metadata_routing().score.requests == {"sample_weight": True}
        weighted = cross_validate(pipe, X2, cv=KFold(2), scoring=scorer, params={"sample_weight": w})
        aliased = make_data_rmse_scorer().set_score_request(sample_weight="survey_weight")
        by_alias = cross_validate(pipe, X2, cv=KFold(2), scoring=aliased, params={"survey_weight": w})
        np.testing.assert_array_equal(by_alias["test_score"], weighted["test_score"])
        assert not np.allclose(weighted["test_score"], cross_validate(pipe, X2, cv=KFold(2), scoring=scorer)["test_score"])


def test_acceptance_rate_checks_its_sample_weight():
    """acceptance_rate took sample_weight through np.average, which averages with a negative weight (2 and -1
    gave an acceptance of 2.0) and says nothing of weights that are not one per survey until their shape."""
    t_obs, t_pred = [[0.0], [0.0]], [[1.0], [3.0]]            # data RMSE 1 and 3 ns: the first accepted at 2 ns
    assert acceptance_rate(t_obs, t_pred, 2.0, sample_weight=[1.0, 3.0]) == 0.25
    expected = re.escape("acceptance_rate: sample_weight must be None or an array of 2 weights >= 0 (one per "
                         "survey, not all 0), got ")
    for bad, got in (([2.0, -1.0], r"\[2\.0, -1\.0\]"), ([0.0, 0.0], r"\[0\.0, 0\.0\]"),
                     ([1.0, np.nan], r"\[1\.0, nan\]"), ([1.0, 1.0, 1.0], r"an array of shape \(3,\)")):
        with pytest.raises(ValueError, match=expected + got):
            acceptance_rate(t_obs, t_pred, 2.0, sample_weight=bad)


def test_scorers_name_themselves_when_X_is_not_an_array_and_weights_are_given():
    """With sample_weight, a scorer counted the surveys of X with scikit-learn's _num_samples, whose bare
    TypeError ("Expected sequence or array-like, got <class 'NoneType'>") escaped without naming the scorer
    (without weights the same X gives the scorer's own ValueError). Now a ValueError names the scorer and X."""
    from latentinv.metrics import make_inversion_scorer

    for scorer in (make_data_rmse_scorer(), make_acceptance_scorer(1.0), make_inversion_scorer(), model_rmse_scorer):
        for X in (None, 3.0):
            with pytest.raises(ValueError, match=re.escape(f"{scorer!r}: X must be the traveltimes, an array of "
                                                           f"shape (n_surveys, n_data)") + ".*got " + type(X).__name__):
                scorer(object(), X, sample_weight=[1.0])
        with pytest.raises(ValueError, match=re.escape(f"{scorer!r}: X must be the traveltimes")):
            scorer(object(), [[1.0, 2.0], [3.0]], sample_weight=[1.0, 1.0])        # ragged


def test_a_1d_x_is_one_survey_for_the_weights_and_then_the_estimators_error():
    """A 1-D X (one survey's traveltimes) was counted as n_data surveys by the weights' check, whose error
    then asked for n_data weights; it is one survey, and the estimator's own error gives the shape to pass."""
    pipe, X_ns, truths = _tiny_pipeline()
    pipe.fit(X_ns)
    with pytest.raises(ValueError) as weights_error:
        make_data_rmse_scorer()(pipe, X_ns[0], sample_weight=[1.0, 1.0])
    assert "array of 1 weights" in str(weights_error.value), weights_error.value
    with pytest.raises(ValueError) as estimator_error:
        make_data_rmse_scorer()(pipe, X_ns[0], sample_weight=[1.0])
    with pytest.raises(ValueError) as unweighted_error:
        make_data_rmse_scorer()(pipe, X_ns[0])
    assert str(estimator_error.value) == str(unweighted_error.value)
