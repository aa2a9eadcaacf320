"""Misfit metrics of an inversion and scorers for scikit-learn model selection.

Metrics take arrays with one survey per row:

- :func:`data_rmse`: root-mean-square traveltime misfit (ns) per survey;
- :func:`model_rmse`: root-mean-square model error per survey (model units, [0, 1] for the VAE prior);
- :func:`acceptance_rate`: fraction of surveys whose data RMSE is at most a threshold (ns).

``model_rmse`` has the ``(y_true, y_pred)`` signature of :func:`sklearn.metrics.make_scorer`;
:data:`model_rmse_scorer` scores ``-model_rmse(y, estimator.predict(X))`` as that scorer would, and
also checks true models given as images against the estimator's grid (a transposed stack has the same
number of cells and would be compared cell by cell with the wrong cells).
Data-space scores need the traveltimes of the predicted models, which only the estimator can
compute (``estimator.simulate``): :func:`make_data_rmse_scorer` and :func:`make_acceptance_scorer`
return scorers ``scorer(estimator, X, y=None)`` usable as ``scoring=`` in ``GridSearchCV``;
:func:`make_inversion_scorer` gives all three from one inversion, as a dict (multi-metric scoring).
Each scorer takes ``sample_weight`` (one weight per survey: the score is a weighted mean over surveys),
which scikit-learn's metadata routing passes once the scorer requests it
(``scorer.set_score_request(sample_weight=True)``).

Every acceptance verdict can carry its baseline: :func:`acceptance_rate` takes the data RMSE of the
best homogeneous-velocity model (:func:`latentinv.baselines.homogeneous_fit`) and warns
(:class:`latentinv.baselines.BaselineWarning`) when the threshold is not clearly below it; the
acceptance scorer computes that baseline from the estimator's operator.

Pattern statistics judge a prior's models against its training image (binary images, 1 =
channel, thresholded at 0.5; axis ``"x"`` = along a row, axis ``"depth"`` = down a column, row 0 at
the top), each pooled over a stack of images:

- :func:`channel_fraction`: share of channel cells;
- :func:`indicator_variogram`: ``gamma(h) = 1/2 E[(I(u) - I(u + h))**2]``;
- :func:`two_point_connectivity`: ``tau(h) = P(u and u + h in the same channel body | u in a channel)``;
- :func:`channel_widths`: lengths of the runs of channel cells along an axis;
- :func:`pattern_statistics` (all of them) and :func:`compare_patterns` (samples vs training crops).
"""
from __future__ import annotations

import warnings

import numpy as np
from sklearn.utils.metadata_routing import UNCHANGED

from ._checks import is_int

__all__ = ["data_rmse", "model_rmse", "acceptance_rate", "model_rmse_scorer",
           "make_data_rmse_scorer", "make_acceptance_scorer", "make_inversion_scorer", "channel_fraction", "indicator_variogram",
           "two_point_connectivity", "channel_widths", "pattern_statistics", "compare_patterns"]


def _real_values(a, name, what):
    """``a`` (NumPy, torch or nested lists) as a float64 array of real numbers (bool allowed: binary
    models); the error names ``what`` of ``name``."""
    raw = a.detach().cpu().numpy() if hasattr(a, "detach") else a
    try:
        raw = np.asarray(raw)
    except ValueError:                  # ragged
        raise ValueError(f"{name}: {what} must be a rectangular array of real numbers") from None
    if raw.dtype.kind not in "biuf":    # complex would lose its imaginary part, text would be parsed
        raise ValueError(f"{name}: {what} must hold real numbers, got dtype {raw.dtype}")
    return raw.astype(np.float64)


def _real_array(a, name, what):
    """:func:`_real_values`, never empty."""
    a = _real_values(a, name, what)
    if a.size == 0 or a.ndim == 0:
        raise ValueError(f"{name}: {what} must be a non-empty array (one row per survey), got shape "
                         f"{a.shape}")
    return a


def _rows(a, b, name, what):
    a = _real_array(a, name, what[0])
    b = _real_array(b, name, what[1])
    if a.ndim == b.ndim == 3 and a.shape[1:] != b.shape[1:]:     # flattened, cells of other places would meet
        hint = "; transposed?" if a.shape[1:] == b.shape[:0:-1] else ""
        raise ValueError(f"{name}: {what[0]} and {what[1]} are images of two shapes, {a.shape[1:]} and "
                         f"{b.shape[1:]} (n_rows, n_cols{hint})")
    a = a.reshape(1, -1) if a.ndim == 1 else a.reshape(a.shape[0], -1)
    b = b.reshape(1, -1) if b.ndim == 1 else b.reshape(b.shape[0], -1)
    if a.shape != b.shape:
        raise ValueError(f"{name}: the two arrays must have the same shape (one row per survey), "
                         f"got {a.shape} and {b.shape}")
    if not (np.all(np.isfinite(a)) and np.all(np.isfinite(b))):
        raise ValueError(f"{name}: inputs hold NaN or inf")
    return a, b


def survey_weights(weights, n_surveys, name, param, also=""):
    """``weights`` as float64, one per survey (finite, >= 0, not all 0: the means of ``multioutput`` and
    ``sample_weight``); the ValueError names ``param`` of ``name``, what it takes (``also``: the other
    values it takes, e.g. "'raw_values' or ") and what came."""
    expected = f"{also}an array of {n_surveys} weights >= 0 (one per survey, not all 0)"
    try:
        w = np.asarray(weights.detach().cpu() if hasattr(weights, "detach") else weights)   # a torch tensor
        if w.dtype.kind not in "biuf":     # not text (np.asarray would parse "0.5"), complex or objects
            raise TypeError(f"dtype {w.dtype}")
        w = w.astype(np.float64)
    except (TypeError, ValueError):
        raise ValueError(f"{name}: {param} must be {expected}, got {weights!r}") from None
    if w.shape != (n_surveys,):
        raise ValueError(f"{name}: {param} must be {expected}, got an array of shape {w.shape}")
    if not (np.all(np.isfinite(w)) and np.all(w >= 0) and w.sum() > 0):
        shown = w.tolist() if w.size <= 8 else f"{w[:8].tolist()} ..."
        raise ValueError(f"{name}: {param} must be {expected}, got {shown}")
    return w


def _reduce(values, multioutput, name):
    if isinstance(multioutput, str) and multioutput == "raw_values":
        return values
    if isinstance(multioutput, str) and multioutput == "uniform_average":
        return float(values.mean())
    if isinstance(multioutput, str) or np.ndim(multioutput) != 1:
        raise ValueError(f"{name}: multioutput must be 'uniform_average', 'raw_values' or an array of "
                         f"{values.size} weights >= 0 (one per survey, not all 0), got {multioutput!r}")
    # weights, as sklearn's metrics take them
    weights = survey_weights(multioutput, values.size, name, "multioutput", also="'uniform_average', 'raw_values' or ")
    return float(np.average(values, weights=weights))


def data_rmse(t_observed, t_predicted, multioutput="uniform_average"):
    """Traveltime RMSE (ns) per survey, ``sqrt(mean_i (t_obs_i - t_pred_i)**2)``.

    Parameters
    ----------
    t_observed, t_predicted : array-like of shape (n_surveys, n_data) or (n_data,)
        Traveltimes in ns.
    multioutput : {"uniform_average", "raw_values"} or array-like of shape (n_surveys,), default="uniform_average"
        Mean over surveys, one value per survey, or the mean weighted by these weights (>= 0, not all 0).

    Returns
    -------
    rmse : float or ndarray of shape (n_surveys,)
        In ns; an array for ``"raw_values"`` (one survey for 1-D input).

    Raises
    ------
    ValueError
        On shapes that differ, non-real values, NaN or inf, or a wrong ``multioutput``.
    """
    a, b = _rows(t_observed, t_predicted, "data_rmse", ("t_observed", "t_predicted"))
    return _reduce(np.sqrt(np.mean((a - b) ** 2, axis=1)), multioutput, "data_rmse")


def model_rmse(m_true, m_pred, multioutput="uniform_average"):
    """Model RMSE per survey, ``sqrt(mean_cells (m_true - m_pred)**2)`` (model units).

    Parameters
    ----------
    m_true, m_pred : array-like of shape (n_surveys, n_cells), (n_surveys, n_rows, n_cols) or (n_cells,)
    multioutput : {"uniform_average", "raw_values"} or array-like of shape (n_surveys,), default="uniform_average"
        As in :func:`data_rmse`.

    Returns
    -------
    rmse : float or ndarray of shape (n_surveys,)
        In model units; an array for ``"raw_values"``.

    Raises
    ------
    ValueError
        As :func:`data_rmse`, and for images of two different shapes.
    """
    a, b = _rows(m_true, m_pred, "model_rmse", ("m_true", "m_pred"))
    return _reduce(np.sqrt(np.mean((a - b) ** 2, axis=1)), multioutput, "model_rmse")


def _check_threshold(threshold, name):
    try:
        value = float(threshold) if np.asarray(threshold).dtype.kind in "iuf" else float("nan")
    except (TypeError, ValueError):     # not a number, or an array of several (float() refuses those)
        value = float("nan")
    if isinstance(threshold, bool) or not np.isfinite(value) or value < 0:
        raise ValueError(f"{name}: threshold must be a finite number >= 0 (ns), got {threshold!r}")
    return value


def acceptance_rate(t_observed, t_predicted, threshold, homogeneous_rmse=None, sample_weight=None):
    """Fraction of surveys whose data RMSE (ns) is at most ``threshold`` (ns), weighted by ``sample_weight``.

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
    sample_weight : array-like of shape (n_surveys,), default=None
        One weight >= 0 per survey (not all 0); None: equal weights.

    Returns
    -------
    rate : float
        In [0, 1].

    Raises
    ------
    ValueError
        On a ``threshold`` that is not a finite number >= 0, inputs :func:`data_rmse` refuses, or a
        wrong ``homogeneous_rmse`` or ``sample_weight``.
    """
    threshold = _check_threshold(threshold, "acceptance_rate")
    rmse = data_rmse(t_observed, t_predicted, multioutput="raw_values")
    if sample_weight is not None:
        sample_weight = survey_weights(sample_weight, rmse.size, "acceptance_rate", "sample_weight", also="None or ")
    if homogeneous_rmse is not None:
        h = np.asarray(homogeneous_rmse, dtype=np.float64)
        if h.ndim > 1 or (h.ndim == 1 and h.shape != rmse.shape) or not np.all(np.isfinite(h)) or np.any(h < 0):
            raise ValueError(f"acceptance_rate: homogeneous_rmse must be a finite number >= 0 or an array "
                             f"of {rmse.shape[0]} such numbers (ns, one per survey), got {homogeneous_rmse!r}")
        from .baselines import check_against_baselines
        check_against_baselines(data_rmse=np.full(rmse.shape, threshold), homogeneous_rmse=h,
                                what="the acceptance threshold of acceptance_rate", stacklevel=3)
    return float(np.average(rmse <= threshold, weights=sample_weight))


def _final_step(estimator, X=None):
    """The estimator that inverts, and the data as it sees them: for a :class:`sklearn.pipeline.Pipeline`
    its final step and ``X`` transformed by the steps before it; for a fitted search (``GridSearchCV``,
    ``RandomizedSearchCV``: the estimator an outer cross-validation scores) its ``best_estimator_``, in
    turn; otherwise ``estimator`` and ``X``."""
    from sklearn.pipeline import Pipeline
    while True:
        if isinstance(estimator, Pipeline):
            if X is not None and len(estimator.steps) > 1:
                X = estimator[:-1].transform(X)
            estimator = estimator.steps[-1][1]
        elif hasattr(estimator, "best_estimator_") and hasattr(estimator, "cv_results_"):   # a fitted search
            estimator = estimator.best_estimator_
        else:
            return estimator, X


def check_image_grid(estimator, models, name, arg, rows, what=None):
    """Models given as images ``(n, n_rows, n_cols)`` must have the grid shape of the estimator's operator:
    flattened, a transposed stack has the right size and the wrong cells. The error names the argument
    ``arg`` (described as ``what``) and what one of its rows is (``rows``). A Pipeline's final step is the
    estimator."""
    estimator, _ = _final_step(estimator)
    grid = getattr(getattr(getattr(estimator, "operator_", None), "grid", None), "shape", None)
    shape = np.shape(models)
    if grid is not None and len(shape) == 3 and tuple(shape[1:]) != tuple(grid):
        hint = " (transposed?)" if tuple(shape[1:]) == tuple(grid)[::-1] else ""
        raise ValueError(f"{name}: {what or arg} are images of shape {tuple(shape[1:])}, the estimator's grid is "
                         f"{tuple(grid)} (n_rows, n_cols){hint}; pass {arg} of shape (n_{rows}, "
                         f"{grid[0]}, {grid[1]}) or flat rows of {grid[0] * grid[1]} cells")


def check_model_images(estimator, y, name, X=None):
    """True models ``y`` given as images ``(n, n_rows, n_cols)`` must have the estimator's grid shape
    (:func:`check_image_grid`). With a prior whose models lie in [0, 1], ``y`` must too: slowness or
    0-255 models would be scored against the predicted [0, 1] models without a word. With ``X`` (the
    traveltimes to invert), ``y`` must hold one model per survey of ``X``, of the estimator's number of
    cells: checked here, before the inversion, rather than after it."""
    check_image_grid(estimator, y, name, "y", "surveys", what="the true models y")
    shape = np.shape(y)
    if X is not None and len(shape) >= 1:
        from sklearn.utils.validation import _num_samples
        try:
            n_surveys = _num_samples(X)
        except TypeError:
            n_surveys = None            # not an array: the estimator says so
        n_models = 1 if len(shape) == 1 else shape[0]
        if n_surveys is not None and n_models != n_surveys:
            raise ValueError(f"{name}: y holds {n_models} true model{'s' if n_models != 1 else ''} for the "
                             f"{n_surveys} surveys of X; pass one model per survey, y of shape "
                             f"({n_surveys}, n_cells) or ({n_surveys}, n_rows, n_cols)")
        n_cells = getattr(_final_step(estimator)[0], "n_cells_", None)
        cells = int(np.prod(shape[1:])) if len(shape) > 1 else shape[0]
        if n_cells is not None and cells != n_cells:
            raise ValueError(f"{name}: the true models y have {cells} cells, the estimator's models {n_cells}")
    if _prior_models_in_unit_interval(getattr(_final_step(estimator)[0], "prior_", None)):
        try:
            values = np.asarray(y, dtype=np.float64)
        except (TypeError, ValueError):
            return                      # not numbers: the metric says so
        if values.size and np.isfinite(values).all() and (values.min() < 0.0 or values.max() > 1.0):
            raise ValueError(f"{name}: the true models y must hold model values in [0, 1] (1 = channel), as "
                             f"the prior's models that the estimator predicts; got values in "
                             f"[{values.min():.4g}, {values.max():.4g}]. Slowness (ns/m) or velocity? Pass "
                             "the models that slowness_map turns into slowness, not its output.")


def _prior_models_in_unit_interval(prior):
    """Whether a fitted prior's models lie in [0, 1] by construction: a VAEPrior with the sigmoid
    output, an SGANPrior ((tanh + 1) / 2); others (a TorchGenerator, the identity output) may differ."""
    from .prior import VAEPrior
    from .sgan import SGANPrior
    prior = getattr(prior, "estimator", prior)      # a FrozenEstimator's prior
    if isinstance(prior, SGANPrior):
        return True
    return isinstance(prior, VAEPrior) and prior.output_activation == "sigmoid"


class _SurveyScorer:
    """Base of the library's scorers, ``scorer(estimator, X, y=None, sample_weight=None)``: each score is a
    mean over the surveys of ``X``, weighted by ``sample_weight`` (one weight >= 0 per survey, not all 0;
    None: equal weights), which is checked before anything is inverted. With scikit-learn's metadata
    routing on (``sklearn.set_config(enable_metadata_routing=True)``), ``cross_validate(...,
    params={"sample_weight": w})`` and the searches pass each fold's weights to a scorer that requests
    them, ``scorer.set_score_request(sample_weight=True)``, as to a scorer of
    :func:`sklearn.metrics.make_scorer`."""

    _sample_weight_request = None   # scikit-learn's default: weights passed but not requested are an error

    def __call__(self, estimator, X, y=None, sample_weight=None):
        if sample_weight is not None:
            from sklearn.utils.validation import _num_samples
            try:        # a 1-D X is one survey, which the estimator then refuses with the shape to pass
                n_surveys = 1 if np.ndim(X) == 1 else _num_samples(X)
            except (TypeError, ValueError):     # not an array, or a ragged one: name the scorer
                raise ValueError(f"{self!r}: X must be the traveltimes, an array of shape (n_surveys, n_data), "
                                 f"to weight its surveys by sample_weight; got {type(X).__name__}") from None
            sample_weight = survey_weights(sample_weight, n_surveys, repr(self), "sample_weight",
                                           also="None or ")
        return self._score(estimator, X, y, sample_weight)

    def set_score_request(self, *, sample_weight=UNCHANGED):
        """Whether scikit-learn's metadata routing passes ``sample_weight`` to this scorer: True, False,
        None (the default: an error where it is passed) or the name it is passed under (left as it is when
        not given, as scikit-learn's setters leave it); as
        ``set_score_request`` of :func:`sklearn.metrics.make_scorer`'s scorers, this changes the scorer
        and returns it (``model_rmse_scorer`` is one object shared by its users: ``copy.copy`` it first
        to keep the change to yourself). Needs routing on."""
        from sklearn import get_config
        if not get_config()["enable_metadata_routing"]:
            raise RuntimeError(f"{self!r}.set_score_request: needs scikit-learn's metadata routing, which is "
                               "off; turn it on with sklearn.set_config(enable_metadata_routing=True)")
        if sample_weight is not UNCHANGED:
            self._request(sample_weight)        # scikit-learn's check of the value
            self._sample_weight_request = sample_weight
        return self

    def get_metadata_routing(self):
        """The scorer's request for ``sample_weight`` (:meth:`set_score_request`), which scikit-learn's
        metadata routing reads."""
        return self._request(self._sample_weight_request)

    def _request(self, alias):
        from sklearn.utils.metadata_routing import MetadataRequest
        request = MetadataRequest(owner=repr(self))
        request.score.add_request(param="sample_weight", alias=alias)
        return request


def _surveys_mean(weights):
    """``multioutput`` of :func:`data_rmse` and :func:`model_rmse` for ``weights`` (None: equal)."""
    return "uniform_average" if weights is None else weights


class _ModelScorer(_SurveyScorer):
    """``make_scorer(model_rmse, greater_is_better=False)`` (``-model_rmse(y, estimator.predict(X))``),
    with the true models checked first: present, and as images of the estimator's grid."""

    def _score(self, estimator, X, y, weights):
        if y is None:
            raise ValueError("model_rmse_scorer: needs the true models y (n_surveys, n_cells), or images "
                             "(n_surveys, n_rows, n_cols), beside the traveltimes X; got y=None")
        check_model_images(estimator, y, "model_rmse_scorer", X)
        return -model_rmse(y, estimator.predict(X), multioutput=_surveys_mean(weights))

    def __repr__(self):
        return "model_rmse_scorer"


#: Scores ``-model RMSE`` of ``predict(X)`` against the true models ``y``, as
#: ``make_scorer(model_rmse, greater_is_better=False)``, with ``y`` checked (see :class:`_ModelScorer`);
#: weighted by ``sample_weight`` (see :class:`_SurveyScorer`).
model_rmse_scorer = _ModelScorer()


def _estimator_acceptance(estimator, X, t_pred, threshold, weights=None):
    """:func:`acceptance_rate` of the predicted traveltimes, against the estimator's homogeneous baseline."""
    from .baselines import homogeneous_fit
    operator = getattr(estimator, "operator_", None)
    homogeneous = None
    if operator is not None:
        _, homogeneous = homogeneous_fit(operator, X.reshape(X.shape[0], -1), getattr(estimator, "noise_std", None))
    return acceptance_rate(X, t_pred, threshold, homogeneous_rmse=homogeneous, sample_weight=weights)


def _inverting_step(estimator, X, scorer):
    """The estimator that inverts and simulates (:func:`_final_step`) and the data it sees, as float64; a
    ValueError naming ``scorer`` when it cannot simulate."""
    estimator, X = _final_step(estimator, X)      # a Pipeline: its final step, on the data it sees
    if not (callable(getattr(estimator, "predict", None)) and callable(getattr(estimator, "simulate", None))):
        raise ValueError(f"{scorer!r}: the estimator (or a Pipeline's final step, or a fitted search's "
                         f"best_estimator_) must have predict and simulate, as LatentInverter and LatentSampler; "
                         f"got {type(estimator).__name__}")
    return estimator, np.asarray(X, dtype=np.float64)


class _DataScorer(_SurveyScorer):
    """Scorer ``(estimator, X, y=None, sample_weight=None)`` on the traveltimes of the predicted models."""

    def __init__(self, kind, threshold=None):
        self.kind = kind
        self.threshold = threshold

    def _score(self, estimator, X, y, weights):
        estimator, X = _inverting_step(estimator, X, self)
        t_pred = estimator.simulate(estimator.predict(X))
        if self.kind == "rmse":
            return -data_rmse(X, t_pred, multioutput=_surveys_mean(weights))
        return _estimator_acceptance(estimator, X, t_pred, self.threshold, weights)

    def __repr__(self):
        if self.kind == "rmse":
            return "make_data_rmse_scorer()"
        return f"make_acceptance_scorer(threshold={self.threshold!r})"


def make_data_rmse_scorer():
    """Scorer: minus the mean data RMSE (ns) of ``estimator.predict(X)`` against ``X`` (weighted by
    ``sample_weight``, one weight per survey, when given or routed: see :class:`_SurveyScorer`).

    In a :class:`~sklearn.pipeline.Pipeline` the final step inverts and simulates, and ``X`` is the data
    as the steps before it transform them (the traveltimes the final step sees, in ns).

    Returns
    -------
    scorer : callable
        ``scorer(estimator, X, y=None, sample_weight=None) -> float`` (``y`` is ignored), with
        ``set_score_request``.
    """
    return _DataScorer("rmse")


def make_acceptance_scorer(threshold):
    """Scorer: fraction of surveys of ``X`` whose predicted model fits within ``threshold`` ns RMSE
    (weighted by ``sample_weight``, as :func:`make_data_rmse_scorer`).

    Warns (:class:`~latentinv.baselines.BaselineWarning`) when ``threshold`` is not clearly below
    the data RMSE of the best homogeneous-velocity model of a survey (computed with the estimator's
    operator: one extra operator response per call). In a :class:`~sklearn.pipeline.Pipeline`, as
    :func:`make_data_rmse_scorer`: the final step, on the data the steps before it give it.

    Parameters
    ----------
    threshold : float
        Acceptance threshold on each survey's data RMSE (ns), finite and >= 0.

    Returns
    -------
    scorer : callable
        ``scorer(estimator, X, y=None, sample_weight=None) -> float`` in [0, 1] (``y`` is ignored),
        with ``set_score_request``.

    Raises
    ------
    ValueError
        On a ``threshold`` that is not a finite number >= 0.
    """
    return _DataScorer("acceptance", _check_threshold(threshold, "make_acceptance_scorer"))


class _InversionScorer(_SurveyScorer):
    """Several scores of one inversion: a dict, as scikit-learn takes from a callable ``scoring``."""

    def __init__(self, threshold=None):
        self.threshold = threshold

    def _score(self, estimator, X, y, weights):
        if y is not None:
            check_model_images(estimator, y, repr(self), X)
        final, X_seen = _inverting_step(estimator, X, self)
        models = final.predict(X_seen)          # the one inversion every score below reads
        t_pred = final.simulate(models)
        scores = {"neg_data_rmse": -data_rmse(X_seen, t_pred, multioutput=_surveys_mean(weights))}
        if self.threshold is not None:
            scores["acceptance"] = _estimator_acceptance(final, X_seen, t_pred, self.threshold, weights)
        if y is not None:
            scores["neg_model_rmse"] = -model_rmse(y, models, multioutput=_surveys_mean(weights))
        return scores

    def __repr__(self):
        return "make_inversion_scorer()" if self.threshold is None else \
            f"make_inversion_scorer(threshold={self.threshold!r})"


def make_inversion_scorer(threshold=None):
    """Scorer returning a dict of scores of **one** inversion of ``X`` per call, for ``scoring=`` of
    ``cross_validate``, ``GridSearchCV`` (with ``refit="neg_model_rmse"`` or another key) and the like:

    - ``"neg_data_rmse"``: as :func:`make_data_rmse_scorer`;
    - ``"acceptance"`` (with a ``threshold`` in ns): as :func:`make_acceptance_scorer`;
    - ``"neg_model_rmse"`` (when true models ``y`` are given): as :data:`model_rmse_scorer`.

    Each is the number its own scorer gives, from the same predicted models, with the same
    ``sample_weight`` (see :class:`_SurveyScorer`): a ``scoring`` dict of the separate scorers inverts
    ``X`` once per scorer (scikit-learn caches ``predict`` for its own scorers only), this one once. In a
    :class:`~sklearn.pipeline.Pipeline`, the final step on the data the steps before it give it.

    Parameters
    ----------
    threshold : float, default=None
        Acceptance threshold (ns), finite and >= 0; None: no ``"acceptance"`` score.

    Returns
    -------
    scorer : callable
        ``scorer(estimator, X, y=None, sample_weight=None) -> dict`` of float, with
        ``set_score_request``.

    Raises
    ------
    ValueError
        On a ``threshold`` that is not a finite number >= 0.
    """
    return _InversionScorer(None if threshold is None else _check_threshold(threshold, "make_inversion_scorer"))


# ---------------------------------------------------------------------------------- pattern statistics
_AXES = {"x": 1, "depth": 0}


#: a 2-D input at least this many times wider than tall, without image_shape, is most likely a batch
#: of flat models (the library's models are flat rows): it is still read as one image, with a warning
_FLAT_MODELS_RATIO = 20


def _binary_images(images, threshold, name, image_shape=None):
    """A stack (n, n_rows, n_cols) of bool images (``value >= threshold`` is channel)."""
    a = _real_values(images, name, "images")
    if image_shape is not None:
        shape = tuple(image_shape) if np.ndim(image_shape) == 1 else None      # tuple, list or array
        if shape is None or len(shape) != 2 or not all(is_int(v, minimum=1) for v in shape):
            raise ValueError(f"{name}: image_shape must be None or (n_rows, n_cols), two ints >= 1; got "
                             f"{image_shape!r}")
        # flat models must hold n_rows * n_cols cells; a stack must be of that shape (not silently ignored)
        if a.ndim == 2 and a.shape[1] == shape[0] * shape[1]:
            a = a.reshape(a.shape[0], *shape)
        elif not (a.ndim == 3 and a.shape[1:] == shape):
            raise ValueError(f"{name}: images of shape {a.shape} do not match image_shape={shape}; expected "
                             f"flat models (n_images, {shape[0] * shape[1]}) or a stack (n_images, "
                             f"{shape[0]}, {shape[1]})")
    elif a.ndim == 2:
        if a.shape[1] >= _FLAT_MODELS_RATIO * a.shape[0]:
            warnings.warn(f"{name}: images of shape {a.shape} are taken as ONE image of {a.shape[0]} rows and "
                          f"{a.shape[1]} columns; if they are flat models (n_images, n_cells), pass "
                          f"image_shape=(n_rows, n_cols)", UserWarning, stacklevel=3)
        a = a[None]
    if a.ndim != 3 or a.size == 0:
        raise ValueError(f"{name}: images must be an image (n_rows, n_cols), a stack (n_images, n_rows, "
                         f"n_cols), or flat models (n_images, n_cells) with image_shape; got shape "
                         f"{np.shape(images)}")
    if not np.all(np.isfinite(a)):
        raise ValueError(f"{name}: images hold NaN or inf")
    return a >= _pattern_threshold(threshold, name)


def _pattern_threshold(threshold, name):
    """``threshold`` as a finite float (a real number, not a bool); the error names ``name``."""
    real = isinstance(threshold, (int, float, np.integer, np.floating)) and not isinstance(threshold, (bool, np.bool_))
    try:
        t = float(threshold) if real else float("nan")
    except OverflowError:               # an int beyond the float range
        t = float("inf")
    if not np.isfinite(t):
        raise ValueError(f"{name}: threshold must be a finite number, got {threshold!r}")
    return t


def _axis(axis, name):
    if not isinstance(axis, str) or axis not in _AXES:
        raise ValueError(f"{name}: axis must be 'x' (along rows) or 'depth' (down columns), got {axis!r}")
    return _AXES[axis] + 1      # in the stack (n, rows, cols)


def _lags(max_lag, length, name):
    if isinstance(max_lag, bool) or not isinstance(max_lag, (int, np.integer)) or max_lag < 1:
        raise ValueError(f"{name}: max_lag must be an int >= 1, got {max_lag!r}")
    if max_lag >= length:
        raise ValueError(f"{name}: max_lag must be below the images' length along the axis ({length} "
                         f"cells), got {max_lag}")
    return range(1, int(max_lag) + 1)


def _pairs(b, h, ax):
    """The two members of every pair of cells ``h`` apart along stack axis ``ax``."""
    n = b.shape[ax]
    head = np.take(b, np.arange(0, n - h), axis=ax)
    tail = np.take(b, np.arange(h, n), axis=ax)
    return head, tail


def channel_fraction(images, threshold=0.5, image_shape=None):
    """Share of channel cells (``value >= threshold``), pooled over the images.

    Parameters
    ----------
    images : array-like of shape (n_rows, n_cols), (n_images, n_rows, n_cols) or (n_images, n_cells)
        Models or training crops (values in [0, 1]); flat models need ``image_shape``. Without it a
        2-D array is one image, and one at least 20 times wider than tall (most likely flat models)
        draws a UserWarning.
    threshold : float, default=0.5
    image_shape : tuple of int, default=None
        ``(n_rows, n_cols)`` of flat models (or of the stack, which must match).

    Returns
    -------
    fraction : float
    """
    return float(_binary_images(images, threshold, "channel_fraction", image_shape).mean())


def indicator_variogram(images, max_lag, axis="x", threshold=0.5, image_shape=None):
    """Indicator variogram ``gamma(h) = 1/2 mean[(I(u) - I(u + h))**2]`` for lags 1..max_lag (cells).

    The mean is over every pair of cells ``h`` apart along ``axis`` in every image (pooled).

    Parameters
    ----------
    images : array-like, see :func:`channel_fraction`
    max_lag : int
        Largest lag (cells), below the images' length along ``axis``.
    axis : {"x", "depth"}, default="x"
        ``"x"``: along rows (horizontal); ``"depth"``: down columns.
    threshold : float, default=0.5
    image_shape : tuple of int, default=None

    Returns
    -------
    gamma : ndarray of shape (max_lag,)
        ``gamma[h - 1]`` for lag ``h``; 0 for identical, 0.5 for always different indicators.
    """
    name = "indicator_variogram"
    b = _binary_images(images, threshold, name, image_shape)
    ax = _axis(axis, name)
    out = []
    for h in _lags(max_lag, b.shape[ax], name):
        head, tail = _pairs(b, h, ax)
        out.append(0.5 * float(np.mean(head != tail)))
    return np.array(out)


def two_point_connectivity(images, max_lag, axis="x", threshold=0.5, image_shape=None):
    """Two-point connectivity ``tau(h) = P(u and u + h in the same channel body | u in a channel)``.

    Channel bodies are the 4-connected components of channel cells in each image (a path of
    channel cells through shared edges); the probability is pooled over every pair of cells ``h``
    apart along ``axis`` whose first cell is channel. ``tau(h) <= P(I(u + h) = 1 | I(u) = 1)``.

    Parameters
    ----------
    images : array-like, see :func:`channel_fraction`
    max_lag : int
    axis : {"x", "depth"}, default="x"
    threshold : float, default=0.5
    image_shape : tuple of int, default=None

    Returns
    -------
    tau : ndarray of shape (max_lag,)
        ``tau[h - 1]`` for lag ``h``; NaN where no pair starts in a channel.
    """
    from scipy import ndimage

    name = "two_point_connectivity"
    b = _binary_images(images, threshold, name, image_shape)
    ax = _axis(axis, name)
    labels = np.stack([ndimage.label(im)[0] for im in b])    # 4-connectivity (the default structure)
    out = []
    for h in _lags(max_lag, b.shape[ax], name):
        head, tail = _pairs(labels, h, ax)
        start = head > 0
        n = int(start.sum())
        out.append(float(np.sum(start & (head == tail)) / n) if n else float("nan"))
    return np.array(out)


def channel_widths(images, axis="depth", threshold=0.5, image_shape=None, include_border=False):
    """Lengths (cells) of the runs of consecutive channel cells along ``axis``, pooled.

    Along ``"depth"`` (down columns) a run is the vertical thickness of a channel where a column
    crosses it; along ``"x"`` its horizontal extent.

    Parameters
    ----------
    images : array-like, see :func:`channel_fraction`
    axis : {"x", "depth"}, default="depth"
    threshold : float, default=0.5
    image_shape : tuple of int, default=None
    include_border : bool, default=False
        Count runs that touch the image's edge (truncated, so shorter than the channel).

    Returns
    -------
    widths : ndarray of int
        One entry per run (empty when there is none).
    """
    name = "channel_widths"
    if not isinstance(include_border, (bool, np.bool_)):
        raise ValueError(f"{name}: include_border must be True or False, got {include_border!r}")
    b = _binary_images(images, threshold, name, image_shape)
    ax = _axis(axis, name)
    lines = np.moveaxis(b, ax, -1).reshape(-1, b.shape[ax]).astype(np.int8)
    padded = np.pad(lines, ((0, 0), (1, 1)))
    step = np.diff(padded, axis=1)
    rows_s, starts = np.nonzero(step == 1)
    _, ends = np.nonzero(step == -1)           # same order: row-major, one end per start
    widths = ends - starts
    if not include_border:
        keep = (starts > 0) & (ends < b.shape[ax])
        widths = widths[keep]
    return widths.astype(np.int64)


def pattern_statistics(images, max_lag=20, threshold=0.5, image_shape=None):
    """Every pattern statistic of a stack of images, in one dict.

    Parameters
    ----------
    images : array-like, see :func:`channel_fraction`
    max_lag : int, default=20
        Largest lag (cells) of the variograms and connectivities, below the images' length along
        both axes.
    threshold : float, default=0.5
        Channel where ``value >= threshold``.
    image_shape : tuple of int, default=None
        ``(n_rows, n_cols)`` of flat models (see :func:`channel_fraction`).

    Returns
    -------
    stats : dict
        ``channel_fraction`` (float); ``variogram_x``, ``variogram_depth``, ``connectivity_x``,
        ``connectivity_depth`` (arrays of shape (max_lag,), lags 1..max_lag cells);
        ``widths_x``, ``widths_depth`` (run lengths, border runs excluded) and their means
        ``mean_width_x``, ``mean_width_depth`` (NaN without runs).
    """
    return _pattern_statistics(images, max_lag, threshold, image_shape, "pattern_statistics")


def _pattern_statistics(images, max_lag, threshold, image_shape, name):
    b = _binary_images(images, threshold, name, image_shape).astype(np.float64)
    for axis in ("x", "depth"):        # before any statistic: the errors name the function called
        _lags(max_lag, b.shape[_axis(axis, name)], name)
    stats = {"channel_fraction": float(b.mean())}
    for axis in ("x", "depth"):
        stats[f"variogram_{axis}"] = indicator_variogram(b, max_lag, axis)
        stats[f"connectivity_{axis}"] = two_point_connectivity(b, max_lag, axis)
        widths = channel_widths(b, axis)
        stats[f"widths_{axis}"] = widths
        stats[f"mean_width_{axis}"] = float(widths.mean()) if widths.size else float("nan")
    return stats


def compare_patterns(samples, reference, max_lag=20, threshold=0.5, image_shape=None):
    """Distances between the pattern statistics of generated ``samples`` and of ``reference`` crops.

    Parameters
    ----------
    samples, reference : array-like, see :func:`channel_fraction`
        Two stacks of images (the two may differ in size), each longer than ``max_lag`` cells along
        both axes.
    max_lag : int, default=20
        As in :func:`pattern_statistics`.
    threshold : float, default=0.5
        Channel where ``value >= threshold``, in both stacks.
    image_shape : tuple of int, default=None
        ``(n_rows, n_cols)`` of flat models, for both stacks.

    Returns
    -------
    comparison : dict of float
        ``channel_fraction`` and ``channel_fraction_reference``; ``fraction_difference``
        (samples minus reference); ``variogram_rmse_x``/``_depth`` and ``connectivity_rmse_x``/
        ``_depth`` (RMS difference over lags 1..max_lag, NaN lags ignored); ``width_wasserstein_x``/
        ``_depth`` (1-Wasserstein distance between the width distributions, cells; NaN when one has
        no run) and the mean widths of both.
    """
    from scipy.stats import wasserstein_distance

    a = _pattern_statistics(samples, max_lag, threshold, image_shape, "compare_patterns")
    b = _pattern_statistics(reference, max_lag, threshold, image_shape, "compare_patterns")
    out = {"channel_fraction": a["channel_fraction"], "channel_fraction_reference": b["channel_fraction"],
           "fraction_difference": a["channel_fraction"] - b["channel_fraction"]}
    for axis in ("x", "depth"):
        for key, label in (("variogram", "variogram_rmse"), ("connectivity", "connectivity_rmse")):
            diff = a[f"{key}_{axis}"] - b[f"{key}_{axis}"]
            diff = diff[np.isfinite(diff)]
            out[f"{label}_{axis}"] = float(np.sqrt(np.mean(diff ** 2))) if diff.size else float("nan")
        wa, wb = a[f"widths_{axis}"], b[f"widths_{axis}"]
        out[f"width_wasserstein_{axis}"] = (float(wasserstein_distance(wa, wb)) if wa.size and wb.size
                                            else float("nan"))
        out[f"mean_width_{axis}"] = a[f"mean_width_{axis}"]
        out[f"mean_width_{axis}_reference"] = b[f"mean_width_{axis}"]
    return out
