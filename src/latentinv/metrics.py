"""Misfit metrics of an inversion and scorers for scikit-learn model selection.

Metrics take arrays with one survey per row:

- :func:`data_rmse`: root-mean-square traveltime misfit (ns) per survey;
- :func:`model_rmse`: root-mean-square model error per survey (model units, [0, 1] for the VAE prior);
- :func:`acceptance_rate`: fraction of surveys whose data RMSE is at most a threshold (ns).

``model_rmse`` has the ``(y_true, y_pred)`` signature of :func:`sklearn.metrics.make_scorer`
(``make_scorer(model_rmse, greater_is_better=False)``, also given as :data:`model_rmse_scorer`).
Data-space scores need the traveltimes of the predicted models, which only the estimator can
compute (``estimator.simulate``): :func:`make_data_rmse_scorer` and :func:`make_acceptance_scorer`
return scorers ``scorer(estimator, X, y=None)`` usable as ``scoring=`` in ``GridSearchCV``.

Every acceptance verdict can carry its baseline: :func:`acceptance_rate` takes the data RMSE of the
best homogeneous-velocity model (:func:`latentinv.baselines.homogeneous_fit`) and warns
(:class:`latentinv.baselines.BaselineWarning`) when the threshold is not clearly below it; the
acceptance scorer computes that baseline from the estimator's operator.
"""
from __future__ import annotations

import numpy as np
from sklearn.metrics import make_scorer

__all__ = ["data_rmse", "model_rmse", "acceptance_rate", "model_rmse_scorer",
           "make_data_rmse_scorer", "make_acceptance_scorer"]


def _rows(a, b, name):
    a = np.asarray(a, dtype=np.float64)
    b = np.asarray(b, dtype=np.float64)
    a = a.reshape(1, -1) if a.ndim == 1 else a.reshape(a.shape[0], -1)
    b = b.reshape(1, -1) if b.ndim == 1 else b.reshape(b.shape[0], -1)
    if a.shape != b.shape:
        raise ValueError(f"{name}: the two arrays must have the same shape (one row per survey), "
                         f"got {a.shape} and {b.shape}")
    if not (np.all(np.isfinite(a)) and np.all(np.isfinite(b))):
        raise ValueError(f"{name}: inputs hold NaN or inf")
    return a, b


def _reduce(values, multioutput, name):
    if multioutput == "raw_values":
        return values
    if multioutput == "uniform_average":
        return float(values.mean())
    raise ValueError(f"{name}: multioutput must be 'uniform_average' or 'raw_values', got {multioutput!r}")


def data_rmse(t_observed, t_predicted, multioutput="uniform_average"):
    """Traveltime RMSE (ns) per survey, ``sqrt(mean_i (t_obs_i - t_pred_i)**2)``.

    Parameters
    ----------
    t_observed, t_predicted : array-like of shape (n_surveys, n_data) or (n_data,)
        Traveltimes in ns.
    multioutput : {"uniform_average", "raw_values"}, default="uniform_average"
        Mean over surveys, or one value per survey.
    """
    a, b = _rows(t_observed, t_predicted, "data_rmse")
    return _reduce(np.sqrt(np.mean((a - b) ** 2, axis=1)), multioutput, "data_rmse")


def model_rmse(m_true, m_pred, multioutput="uniform_average"):
    """Model RMSE per survey, ``sqrt(mean_cells (m_true - m_pred)**2)`` (model units).

    Parameters
    ----------
    m_true, m_pred : array-like of shape (n_surveys, n_cells), (n_surveys, n_rows, n_cols) or (n_cells,)
    multioutput : {"uniform_average", "raw_values"}, default="uniform_average"
    """
    a, b = _rows(m_true, m_pred, "model_rmse")
    return _reduce(np.sqrt(np.mean((a - b) ** 2, axis=1)), multioutput, "model_rmse")


def _check_threshold(threshold, name):
    try:
        value = float(threshold)
    except (TypeError, ValueError):
        value = float("nan")
    if isinstance(threshold, bool) or not np.isfinite(value) or value < 0:
        raise ValueError(f"{name}: threshold must be a finite number >= 0 (ns), got {threshold!r}")
    return value


def acceptance_rate(t_observed, t_predicted, threshold, homogeneous_rmse=None):
    """Fraction of surveys whose data RMSE (ns) is at most ``threshold`` (ns).

    The paper accepts an inverted model when it fits the data to the noise level.

    Parameters
    ----------
    t_observed, t_predicted : array-like of shape (n_surveys, n_data) or (n_data,)
        Traveltimes in ns.
    threshold : float
        Acceptance threshold (ns).
    homogeneous_rmse : float or array-like of shape (n_surveys,), default=None
        Data RMSE (ns) of each survey's best homogeneous-velocity model
        (:func:`latentinv.baselines.homogeneous_fit`). When given, a
        :class:`~latentinv.baselines.BaselineWarning` is issued where ``threshold`` exceeds
        ``DATA_RATIO`` (0.5) times it: such an acceptance says little.
    """
    threshold = _check_threshold(threshold, "acceptance_rate")
    rmse = data_rmse(t_observed, t_predicted, multioutput="raw_values")
    if homogeneous_rmse is not None:
        h = np.asarray(homogeneous_rmse, dtype=np.float64)
        if h.ndim > 1 or (h.ndim == 1 and h.shape != rmse.shape) or not np.all(np.isfinite(h)) or np.any(h < 0):
            raise ValueError(f"acceptance_rate: homogeneous_rmse must be a finite number >= 0 or an array "
                             f"of {rmse.shape[0]} such numbers (ns, one per survey), got {homogeneous_rmse!r}")
        from .baselines import check_against_baselines
        check_against_baselines(data_rmse=np.full(rmse.shape, threshold), homogeneous_rmse=h,
                                what="the acceptance threshold of acceptance_rate", stacklevel=3)
    return float(np.mean(rmse <= threshold))


#: ``make_scorer(model_rmse, greater_is_better=False)``: scores ``-model RMSE`` of ``predict(X)`` vs ``y``.
model_rmse_scorer = make_scorer(model_rmse, greater_is_better=False)


class _DataScorer:
    """Scorer ``(estimator, X, y=None)`` on the traveltimes of the predicted models."""

    def __init__(self, kind, threshold=None):
        self.kind = kind
        self.threshold = threshold

    def __call__(self, estimator, X, y=None):
        X = np.asarray(X, dtype=np.float64)
        t_pred = estimator.simulate(estimator.predict(X))
        if self.kind == "rmse":
            return -data_rmse(X, t_pred)
        from .baselines import homogeneous_fit
        operator = getattr(estimator, "operator_", None)
        homogeneous = None
        if operator is not None:
            _, homogeneous = homogeneous_fit(operator, X.reshape(X.shape[0], -1),
                                             getattr(estimator, "noise_std", None))
        return acceptance_rate(X, t_pred, self.threshold, homogeneous_rmse=homogeneous)

    def __repr__(self):
        if self.kind == "rmse":
            return "make_data_rmse_scorer()"
        return f"make_acceptance_scorer(threshold={self.threshold!r})"


def make_data_rmse_scorer():
    """Scorer: minus the mean data RMSE (ns) of ``estimator.predict(X)`` against ``X``."""
    return _DataScorer("rmse")


def make_acceptance_scorer(threshold):
    """Scorer: fraction of surveys of ``X`` whose predicted model fits within ``threshold`` ns RMSE.

    Warns (:class:`~latentinv.baselines.BaselineWarning`) when ``threshold`` is not clearly below
    the data RMSE of the best homogeneous-velocity model of a survey (computed with the estimator's
    operator: one extra operator response per call).
    """
    return _DataScorer("acceptance", _check_threshold(threshold, "make_acceptance_scorer"))
