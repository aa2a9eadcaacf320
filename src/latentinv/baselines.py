"""The baselines a skeptic asks for beside every threshold and every acceptance.

A threshold of "fits to the encode-decode misfit" means little when the prior cannot encode the
image better than a constant would, and an "accepted" inversion means little when a homogeneous
medium fits the data about as well. Two baselines make such cases visible:

- **the best constant model** (model space): for a truth ``m`` the constant ``c`` that minimises
  ``RMSE(m, c)`` is ``mean(m)``, and its RMSE is the (population) standard deviation of ``m``;
- **the best homogeneous-velocity model** (data space): first-arrival traveltimes are homogeneous of
  degree one in slowness for straight rays and for shortest paths alike (``t(a s) = a t(s)``: the
  paths do not change when every cell is scaled), so with ``t1 = response(1)`` the best uniform
  slowness ``s0`` for data ``d`` is the weighted least-squares ``<d, t1>_w / <t1, t1>_w``.

"Clearly better" is defined by two ratios (module constants, documented in the warnings):
a prior's encode-decode model RMSE must be at most :data:`MODEL_RATIO` (0.7) times the best constant
model's, and an accepted data misfit at most :data:`DATA_RATIO` (0.5) times the best homogeneous
model's. The paper's priors pass both by far (its Table 2: encode-decode model RMSE 0.10-0.17
against about 0.44 for a constant model of its channel truths).
"""
from __future__ import annotations

import warnings

import numpy as np

from ._checks import noise_levels

__all__ = [
    "MODEL_RATIO", "DATA_RATIO", "BaselineWarning", "constant_model_rmse", "homogeneous_fit",
    "check_against_baselines", "warn_if_no_better_than_homogeneous",
]

#: a reconstruction (or inverted model) is "clearly better" than the best constant model when its
#: model RMSE is at most this fraction of the constant model's
MODEL_RATIO = 0.7
#: an accepted data misfit is "clearly better" than the best homogeneous-velocity model's when its
#: data RMSE is at most this fraction of the homogeneous model's
DATA_RATIO = 0.5


class BaselineWarning(UserWarning):
    """A prior or a fit that is not clearly better than a trivial baseline."""


def constant_model_rmse(models):
    """RMSE of the best constant model for each model: the standard deviation of its values.

    Parameters
    ----------
    models : array-like of shape (n_cells,) or (n_models, n_cells)
        Finite model values, ``n_cells >= 1``.

    Returns
    -------
    rmse : float or ndarray of shape (n_models,)
        In model units (a NumPy float for one model).

    Raises
    ------
    ValueError
        On another shape, or NaN or inf.
    """
    m = np.asarray(models, dtype=np.float64)
    if m.ndim not in (1, 2) or m.shape[-1] == 0:
        raise ValueError(f"models must have shape (n_cells,) or (n_models, n_cells) with n_cells >= 1, "
                         f"got {m.shape}")
    if not np.isfinite(m).all():
        raise ValueError("models contain NaN or infinity")
    return m.std(axis=-1)


def homogeneous_fit(operator, data, sigma=None):
    """Best homogeneous-velocity model for traveltimes ``data``.

    Parameters
    ----------
    operator : ForwardOperator
        Any operator of :mod:`latentinv.operators` (straight rays or shortest paths).
    data : array of shape (n_data,) or (n_surveys, n_data)
        Traveltimes (ns).
    sigma : float or array of shape (n_data,), optional
        Noise standard deviations (ns), finite and positive (others raise a ValueError): the fit is
        weighted by ``1 / sigma**2``; the returned RMSE is the plain (unweighted) one, as the paper's
        misfits.

    Returns
    -------
    slowness : float or ndarray (n_surveys,)
        The best uniform slowness (ns/m).
    data_rmse : float or ndarray (n_surveys,)
        The data RMSE (ns) of that model.
    """
    d = np.asarray(data, dtype=np.float64)
    single = d.ndim == 1
    d = np.atleast_2d(d)
    if d.ndim != 2 or d.shape[1] != operator.n_data:
        raise ValueError(f"data must have shape ({operator.n_data},) or (n_surveys, {operator.n_data}), "
                         f"got {np.shape(data)}")
    if not np.isfinite(d).all():
        raise ValueError("data contain NaN or infinity")
    w = np.ones(operator.n_data) if sigma is None else 1.0 / noise_levels(
        sigma, operator.n_data, "homogeneous_fit", "sigma",
        f"None, a positive number or an array of {operator.n_data} positive numbers (ns)") ** 2
    t1 = np.asarray(operator.response(np.ones(operator.n_params)), dtype=np.float64)
    s0 = (d * w * t1).sum(axis=1) / (w * t1 * t1).sum()
    rmse = np.sqrt(np.mean((d - s0[:, None] * t1) ** 2, axis=1))
    return (float(s0[0]), float(rmse[0])) if single else (s0, rmse)


def check_against_baselines(*, model_rmse=None, constant_rmse=None, data_rmse=None,
                            homogeneous_rmse=None, what="the prior", stacklevel=2, labels=None):
    """Warn (:class:`BaselineWarning`) where a result is not clearly better than its baseline.

    ``model_rmse`` is compared with ``MODEL_RATIO * constant_rmse`` and ``data_rmse`` with
    ``DATA_RATIO * homogeneous_rmse``, element by element (arrays broadcast). ``what`` names the
    result in the message; ``labels`` (optional, one name per item, e.g. the truths) name the items
    that fail in it, which are otherwise listed by value alone. Returns a boolean array (or bool):
    True where every given comparison passes.

    Parameters
    ----------
    model_rmse, constant_rmse : float or array-like, default=None
        A model RMSE and the best constant model's (:func:`constant_model_rmse`); compared when both
        are given.
    data_rmse, homogeneous_rmse : float or array-like, default=None
        A data RMSE (ns) and the best homogeneous-velocity model's (:func:`homogeneous_fit`);
        compared when both are given.
    what : str, default="the prior"
    stacklevel : int, default=2
        Of the warning (2: the caller's line).
    labels : sequence of str, default=None
        One name per item (after broadcasting).

    Returns
    -------
    ok : bool or ndarray of bool
        A bool for scalars (True when no comparison is given).

    Raises
    ------
    ValueError
        For ``labels`` of another length than the items.
    """
    ok = np.array(True)
    checks = (
        (model_rmse, constant_rmse, MODEL_RATIO, "model RMSE {} is not clearly better than the best "
         "constant model's {}", "the prior may not have learned these images"),
        (data_rmse, homogeneous_rmse, DATA_RATIO, "data RMSE {} ns is not clearly better than the best "
         "homogeneous-velocity model's {} ns", "an acceptance at this level says little"),
    )
    for value, baseline, ratio, text, meaning in checks:
        if value is None or baseline is None:
            continue
        v, b = np.broadcast_arrays(np.asarray(value, float), np.asarray(baseline, float))
        if labels is not None and len(labels) != v.size:
            raise ValueError(f"check_against_baselines: labels: expected {v.size} names, one per item; got "
                             f"{len(labels)}")
        good = v <= ratio * b
        ok = ok & good
        if not good.all():
            i = np.flatnonzero(~good.ravel())

            def listed(x):
                # 4 significant digits: rounding to 3 decimals printed a baseline of 5.9e-9 ns (data in seconds) as 0.0
                values = [float(f"{y:.4g}") for y in x.ravel()[i]]
                return values if labels is None else "[" + ", ".join(
                    f"{labels[k]} {y}" for k, y in zip(i, values)) + "]"
            found = text.format(listed(v), listed(b))
            warnings.warn(f"{what}: {found} (needs at most {ratio} times it); {meaning}",
                          BaselineWarning, stacklevel=stacklevel)
    return bool(ok) if ok.ndim == 0 else ok


def warn_if_no_better_than_homogeneous(owner, best_rmse, homogeneous_rmse, models="the selected models",
                                       more="iterations (n_epochs) or starts", where="result.homogeneous_rmse"):
    """A :class:`BaselineWarning` for the surveys whose best data RMSE (``best_rmse``, ns, one per survey;
    NaN counts as no fit) is no lower than the best homogeneous-velocity model's: data of a medium that
    the slowness map does not describe (within DataScaleWarning's factor 3), a budget far too small, or
    a modelling error would otherwise give a poor answer without a word. (Accepting a fit asks more:
    ``DATA_RATIO`` times the baseline.) ``more`` says what to give more of. The warning points at the
    first line outside latentinv. Returns the indices of those surveys.

    Parameters
    ----------
    owner : str
        Starts the message (e.g. the estimator's name).
    best_rmse, homogeneous_rmse : array-like of shape (n_surveys,)
        Data RMSEs (ns): the best fit and the best homogeneous-velocity model's.
    models : str, default="the selected models"
        What ``best_rmse`` is of, in the message.
    more : str, default="iterations (n_epochs) or starts"
    where : str, default="result.homogeneous_rmse"
        Where the caller finds the baseline, in the message.

    Returns
    -------
    ndarray of int
        Indices of the surveys warned about (empty when none).
    """
    from ._checks import caller_stacklevel

    best = np.asarray(best_rmse, dtype=np.float64)
    best = np.where(np.isfinite(best), best, np.inf)
    hom = np.asarray(homogeneous_rmse, dtype=np.float64)
    bad = np.flatnonzero(~(best < hom))
    if bad.size:
        i = bad[np.argmax(best[bad] / np.maximum(hom[bad], 1e-300))]
        warnings.warn(
            f"{owner}: {models} of {bad.size} of {len(best)} surveys fit the data no better than the best "
            f"homogeneous-velocity model (survey {i}: data RMSE {best[i]:.3g} ns against {hom[i]:.3g} ns). "
            f"Check that slowness_map describes the medium's velocities and that the data are in ns; give "
            f"more {more}; data of other physics than the operator's (e.g. bent rays inverted with straight "
            f"ones) leave this modelling error. {where} holds the baseline.",
            BaselineWarning, stacklevel=caller_stacklevel())
    return bad
