"""``check_operator``: an operator of one's own against the contract the engine relies on.

``fit`` checks what it can afford on every call (shapes, NaN, a linear operator's kernel); the checks
here cost a few engine calls per model and catch what ``fit`` cannot: a Jacobian that disagrees with
the response's finite differences (a nonlinear Jacobian off by a factor only misdirects the SGD's
steps, without a word), a response that changes between calls or mixes the models of a batch, a
traveltime response that is not homogeneous of degree 1 in slowness (a time-zero shift), and a torch
``forward`` that disagrees with ``response`` or whose gradient is not the Jacobian's transpose.
"""
from __future__ import annotations

import numpy as np
import torch

from ._base import ForwardOperator

__all__ = ["check_operator"]

#: relative perturbation of the finite differences (central): small enough that a first-arrival path
#: rarely switches (on the paper's shortest-path graph and the default fields, 1e-4 left 4.1 % of the
#: data at a switch, 1e-5 2.5 %, 1e-6 none), large enough that float64 rounding stays far below
#: ``sqrt(rtol)`` (median relative difference 2e-9 there)
_FD_STEP = 1e-6


def _relative(a, b, scale):
    """Largest ``|a - b|`` over the largest ``|scale|`` (0 where both are zero)."""
    ref = float(np.max(np.abs(scale))) if np.size(scale) else 0.0
    err = float(np.max(np.abs(np.asarray(a) - np.asarray(b)))) if np.size(a) else 0.0
    return err / ref if ref > 0 else err


def _default_models(n_params, n_models, rng):
    """Log-normal slowness around 12.5 ns/m (0.08 m/ns), 20 % spread, independent per cell: first
    arrivals in such a field have no ties between paths, where one-sided derivatives differ."""
    return 12.5 * np.exp(0.2 * rng.standard_normal((n_models, n_params)))


def check_operator(operator, models=None, *, n_models=3, homogeneous=True, rtol=1e-6,
                   max_kink_fraction=0.05, random_state=0):
    """Check a forward operator against the contract the estimators rely on, and measure it.

    Run it once on an operator of one's own (a subclass of
    :class:`~latentinv.operators.ForwardOperator`) before inverting with it. Every check runs; a
    failing one is reported with what it measured, all of them in one ``ValueError``. The checks:

    - ``"deterministic"``: ``response`` twice on the same models gives the same traveltimes;
    - ``"batch"``: each row of ``response`` on a batch equals ``response`` of that model alone, and
      ``response_and_jacobian`` gives the same traveltimes;
    - ``"jacobian"``: ``jacobian(m) @ dm`` against the central difference
      ``(response(m + h dm) - response(m - h dm)) / 2h`` (``h = 1e-6``) along a random direction
      ``dm = m * u`` per model. First-arrival traveltimes are minima over paths, so a datum whose
      best path switches within ``+-h dm`` (a tie) differs legitimately: the check fails when more
      than ``max_kink_fraction`` of the data differ by more than ``sqrt(rtol)`` relative;
    - ``"homogeneous"`` (with ``homogeneous=True``): ``response(2 m) == 2 response(m)``,
      ``jacobian(m) @ m == response(m)`` and traveltimes >= 0, which hold for any traveltime operator
      (the time along a fixed path is linear in slowness, and the first arrival is the least of them);
    - ``"linear"`` (for ``is_linear = True``): the Jacobian is the same matrix at every model;
    - ``"forward"``: the torch ``forward`` equals ``response`` (float64) and its gradient is the
      Jacobian's transpose applied to a random vector; with ``supports_jacobian_rows`` also when the
      gradient is asked for a random half of the data.

    Parameters
    ----------
    operator : ForwardOperator
        The operator to check.
    models : array-like of shape (n_params,) or (n_models, n_params), default=None
        Slowness models (ns/m) to check at. None: ``n_models`` log-normal fields around 12.5 ns/m
        (0.08 m/ns) with a 20 % spread, independent per cell, drawn with ``random_state``. Models of
        few distinct values (a binary facies model through a slowness map) have ties between
        first-arrival paths everywhere, where the finite differences differ from any Jacobian.
    n_models : int, default=3
        Number of models drawn when ``models`` is None.
    homogeneous : bool, default=True
        Whether to check homogeneity of degree 1 (``"homogeneous"`` above); False for a response that
        is not a traveltime (another physics, or a test operator).
    rtol : float, default=1e-6
        Relative tolerance of the checks that are identities in exact arithmetic (scaled by the
        largest traveltime, or the largest Jacobian entry); the Jacobian's per-datum tolerance is
        ``sqrt(rtol)``, as the finite differences carry an O(h**2) error for a smooth response.
    max_kink_fraction : float, default=0.05
        Largest fraction of data allowed to disagree in the ``"jacobian"`` check, in [0, 1).
    random_state : int, default=0
        Seed of the models drawn, the directions and the gradient's vectors.

    Returns
    -------
    dict
        What each check measured, by name: ``"deterministic"``, ``"batch"``, ``"forward"`` and
        ``"forward_gradient"`` (largest relative difference), ``"jacobian"`` (fraction of data
        beyond tolerance) and ``"jacobian_median"`` (median relative difference),
        ``"homogeneous_scale"`` and ``"homogeneous_jacobian"`` (largest relative difference; with
        ``homogeneous``), ``"linear"`` (largest relative difference between the models' Jacobians;
        for a linear operator).

    Raises
    ------
    TypeError
        If ``operator`` does not subclass ``ForwardOperator``.
    ValueError
        On a parameter out of range, models the operator refuses, or failed checks (all of them
        listed, each with its measure and limit). An error the operator raises itself propagates.

    Examples
    --------
    >>> from latentinv import Grid2D, CrossholeSurvey, StraightRayOperator
    >>> from latentinv.operators import check_operator
    >>> survey = CrossholeSurvey([[0.0, 0.25], [0.0, 0.75]], [[1.0, 0.25], [1.0, 0.75]])
    >>> report = check_operator(StraightRayOperator(Grid2D(10, 10, 0.1), survey))
    >>> report["jacobian"], report["linear"]
    (0.0, 0.0)
    """
    if not isinstance(operator, ForwardOperator):
        raise TypeError(f"check_operator: operator must subclass latentinv.operators.ForwardOperator, got "
                        f"{type(operator).__name__}")
    if isinstance(n_models, bool) or not isinstance(n_models, (int, np.integer)) or n_models < 1:
        raise ValueError(f"check_operator: n_models must be an integer >= 1, got {n_models!r}")
    for name, value, hi in (("rtol", rtol, 1.0), ("max_kink_fraction", max_kink_fraction, 1.0)):
        if isinstance(value, bool) or not isinstance(value, (int, float, np.floating)) or not 0 <= value < hi:
            raise ValueError(f"check_operator: {name} must be a number in [0, {hi:g}), got {value!r}")
    if rtol <= 0:
        raise ValueError(f"check_operator: rtol must be > 0, got {rtol!r}")
    rng = np.random.default_rng(random_state)
    if models is None:
        M = _default_models(operator.n_params, int(n_models), rng)
    else:
        M, _ = operator._check_models(models)
    name = type(operator).__name__
    measured, failures = {}, []

    def record(key, value, limit, what):
        measured[key] = value
        if not value <= limit:          # NaN fails too
            failures.append(f"{key}: {what} (measured {value:.3g}, limit {limit:.3g})")

    T = operator.response(M)
    scale = T
    record("deterministic", _relative(operator.response(M), T, scale), rtol,
           "response gave other traveltimes on a second call with the same models")
    rows = np.stack([operator.response(m) for m in M])
    T2, jacobians = operator.response_and_jacobian(M)
    record("batch", max(_relative(rows, T, scale), _relative(T2, T, scale)), rtol,
           "the traveltimes of a model in a batch differ from those of the model alone, or "
           "response_and_jacobian's from response's")

    # the Jacobian against central differences, per datum, along dm = m * u
    dM = M * rng.standard_normal(M.shape)
    h = _FD_STEP
    fd = (operator.response(M + h * dM) - operator.response(M - h * dM)) / (2 * h)
    jd = np.stack([J @ dm for J, dm in zip(jacobians, dM)])
    per_datum = np.abs(fd - jd) / np.maximum(np.abs(fd), np.abs(T) * rtol + np.finfo(float).tiny)
    record("jacobian", float(np.mean(per_datum > np.sqrt(rtol))), max_kink_fraction,
           f"jacobian(m) @ dm differs from the finite difference of response by more than {np.sqrt(rtol):.1g} "
           "(relative) in this fraction of the data: the Jacobian is not the response's derivative")
    measured["jacobian_median"] = float(np.median(per_datum))

    if homogeneous:
        record("homogeneous_scale", _relative(operator.response(2 * M), 2 * T, scale), rtol,
               "response(2 m) differs from 2 response(m): traveltimes are homogeneous of degree 1 in slowness "
               "(a time-zero shift or an offset breaks it); pass homogeneous=False for another physics")
        record("homogeneous_jacobian", _relative(np.stack([J @ m for J, m in zip(jacobians, M)]), T, scale), rtol,
               "jacobian(m) @ m differs from response(m), which holds for traveltimes")
        if T.min() < 0:
            failures.append(f"homogeneous: negative traveltimes (the least is {T.min():.3g} ns)")
    if operator.is_linear:
        dense = [J.toarray() for J in jacobians]
        record("linear", max(_relative(D, dense[0], dense[0]) for D in dense), rtol,
               "is_linear = True, but the Jacobian changes with the model")

    # the torch bridge (or a subclass's own forward): values and the gradient J^T v
    m = torch.tensor(M, dtype=torch.float64, requires_grad=True)
    out = operator.forward(m)
    v = rng.standard_normal(T.shape)
    (grad,) = torch.autograd.grad(out, m, torch.from_numpy(v))
    expected = np.stack([J.T @ w for J, w in zip(jacobians, v)])
    record("forward", _relative(out.detach().numpy(), T, scale), rtol, "forward's traveltimes differ from response's")
    gradient_error = _relative(grad.numpy(), expected, expected)
    if operator.supports_jacobian_rows:    # the gradient of a random half of the data only
        keep = np.argsort(rng.random(T.shape), axis=1)[:, :max(1, T.shape[1] // 2)]
        vk = np.zeros_like(v)
        np.put_along_axis(vk, keep, np.take_along_axis(v, keep, axis=1), axis=1)
        m = torch.tensor(M, dtype=torch.float64, requires_grad=True)
        (grad,) = torch.autograd.grad(operator.forward(m, jacobian_rows=torch.from_numpy(keep)), m,
                                      torch.from_numpy(vk))
        expected = np.stack([J.T @ w for J, w in zip(jacobians, vk)])
        gradient_error = max(gradient_error, _relative(grad.numpy(), expected, expected))
    record("forward_gradient", gradient_error, rtol,
           "forward's gradient differs from jacobian(m).T @ v" +
           (" (all data, or a random half through jacobian_rows)" if operator.supports_jacobian_rows else ""))

    if failures:
        raise ValueError(f"check_operator: {name} fails {len(failures)} check(s) on {len(M)} model(s):\n- "
                         + "\n- ".join(failures))
    return measured
