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
    """Largest ``|a - b|`` over the largest ``|scale|`` of the same model (row): a model of large slowness
    in a batch does not hide the errors of a small one (an absolute difference where a row is zero)."""
    err = np.abs(np.asarray(a, dtype=float) - np.asarray(b, dtype=float)).reshape(len(scale), -1)
    ref = np.abs(np.asarray(scale, dtype=float)).reshape(len(scale), -1).max(axis=1, initial=0.0)
    return float(np.max(np.where(ref > 0, err.max(axis=1, initial=0.0) / np.where(ref > 0, ref, 1.0),
                                 err.max(axis=1, initial=0.0)), initial=0.0))


def _epsilon(t):
    """Machine epsilon of the precision the traveltimes ``t`` (float64, as the base class returns them)
    were computed in: float32's when every value is a float32 number (an engine in single precision,
    whose rounding the finite differences must step over), else float64's."""
    with np.errstate(over="ignore"):
        single = t.astype(np.float32).astype(np.float64)
    if np.any(t != 0) and np.array_equal(single, t):
        return float(np.finfo(np.float32).eps)
    return float(np.finfo(np.float64).eps)


def _default_models(n_params, n_models, rng):
    """Log-normal slowness around 12.5 ns/m (0.08 m/ns), 20 % spread, independent per cell: first
    arrivals in such a field have no ties between paths, where one-sided derivatives differ."""
    return 12.5 * np.exp(0.2 * rng.standard_normal((n_models, n_params)))


def check_operator(operator, models=None, *, n_models=3, homogeneous=True, rtol=1e-6,
                   max_kink_fraction=0.0, random_state=0):
    """Check a forward operator against the contract the estimators rely on, and measure it.

    Run it once on an operator of one's own (a subclass of
    :class:`~latentinv.operators.ForwardOperator`) before inverting with it. Every check runs; a
    failing one is reported with what it measured, all of them in one ``ValueError``. The checks:

    - ``"deterministic"``: ``response`` twice on the same models gives the same traveltimes;
    - ``"batch"``: each row of ``response`` on a batch equals ``response`` of that model alone, and
      ``response_and_jacobian`` gives the same traveltimes (with one model, a batch of it and of it at
      1.5 times its slowness);
    - ``"jacobian"``: ``jacobian(m) @ dm`` against the central difference
      ``(response(m + h dm) - response(m - h dm)) / 2h`` along a random direction ``dm = m * u`` per
      model (``h = 1e-6``; ``float32_eps ** (1/3)`` for traveltimes computed in float32), datum by datum,
      to ``sqrt(rtol)`` relative plus the traveltimes' rounding over the step. First-arrival traveltimes
      are minima over paths: where the best path switches (a tie, as in a homogeneous model), the
      central difference averages two derivatives, but any path's lies between the one-sided
      differences, so a datum counts only when it lies outside those too. The check fails when more
      than ``max_kink_fraction`` of the data count;
    - ``"homogeneous"`` (with ``homogeneous=True``): ``response(2 m) == 2 response(m)``,
      ``jacobian(m) @ m == response(m)`` and traveltimes >= 0, which hold for any traveltime operator
      (the time along a fixed path is linear in slowness, and the first arrival is the least of them);
    - ``"linear"`` and ``"linear_response"`` (for ``is_linear = True``): the Jacobian is the same matrix
      at every model, and ``response(m) == jacobian(m) @ m`` (what the estimators then use);
    - ``"forward"``: the torch ``forward`` returns a float64 tensor of ``response``'s shape for float64
      models, equal to ``response``, and its gradient is the Jacobian's transpose applied to a random
      vector; with ``supports_jacobian_rows`` also when the gradient is asked for a random half of the
      data.

    The identities are compared model by model, relative to the largest traveltime (or gradient entry)
    of that model, so that a model of large slowness in ``models`` does not hide the errors of another.

    Parameters
    ----------
    operator : ForwardOperator
        The operator to check.
    models : array-like of shape (n_params,) or (n_models, n_params), default=None
        Slowness models (ns/m) to check at. None: ``n_models`` log-normal fields around 12.5 ns/m
        (0.08 m/ns) with a 20 % spread, independent per cell, drawn with ``random_state``. Models of
        few distinct values (a binary facies model through a slowness map) have ties between
        first-arrival paths everywhere; the check allows for them (above), except in a response that is a
        difference of first arrivals (``ShortestPathOperator(extrapolate_from=...)``, whose Jacobian
        at a tie lies outside the one-sided differences in up to 30 % of the data): check such an
        operator at the default models.
    n_models : int, default=3
        Number of models drawn when ``models`` is None.
    homogeneous : bool, default=True
        Whether to check homogeneity of degree 1 (``"homogeneous"`` above); False for a response that
        is not a traveltime (another physics, or a test operator).
    rtol : float, default=1e-6
        Relative tolerance of the checks that are identities in exact arithmetic (scaled by the
        largest traveltime, Jacobian entry or gradient entry of each model); the Jacobian's per-datum
        tolerance is ``sqrt(rtol)``, as the finite differences carry an O(h**2) error for a smooth
        response.
    max_kink_fraction : float, default=0.0
        Largest fraction of data allowed to disagree in the ``"jacobian"`` check, in [0, 1): 0, as a
        Jacobian wrong in a single datum misdirects the steps (the shipped operators measure 0 at
        random models and, but for ``extrapolate_from``, at models with ties).
    random_state : int, numpy.random.Generator or None, default=0
        Seed of the models drawn, the directions and the gradient's vectors (None: fresh entropy).

    Returns
    -------
    dict
        What each check measured, by name: ``"deterministic"``, ``"batch"``, ``"forward"`` and
        ``"forward_gradient"`` (largest relative difference; inf for a ``forward`` without gradient),
        ``"jacobian"`` (fraction of data beyond tolerance) and ``"jacobian_median"`` (median relative
        difference),
        ``"homogeneous_scale"`` and ``"homogeneous_jacobian"`` (largest relative difference; with
        ``homogeneous``), ``"linear"`` (largest relative difference between the models' Jacobians) and
        ``"linear_response"`` (between ``jacobian(m) @ m`` and ``response(m)``; for a linear operator).

    Raises
    ------
    TypeError
        If ``operator`` does not subclass ``ForwardOperator``.
    ValueError
        On a parameter out of range or of the wrong type (``homogeneous`` not a bool, a
        ``random_state`` numpy cannot seed from, no models), models the operator refuses, or failed
        checks (all of them listed, each with its measure and limit). An error the operator raises
        itself propagates.

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
    if not isinstance(homogeneous, (bool, np.bool_)):
        raise ValueError(f"check_operator: homogeneous must be True or False, got {homogeneous!r}")
    try:
        rng = np.random.default_rng(random_state)
    except (TypeError, ValueError):
        raise ValueError(f"check_operator: random_state must be None, an integer >= 0 or a "
                         f"numpy.random.Generator, got {random_state!r}") from None
    if models is None:
        M = _default_models(operator.n_params, int(n_models), rng)
    else:
        M, _ = operator._check_models(models)
        if not len(M):
            raise ValueError(f"check_operator: models must hold at least one model, got shape {np.shape(models)}")
    name = type(operator).__name__
    measured, failures = {}, []

    def record(key, value, limit, what):
        measured[key] = value
        if not value <= limit:          # NaN fails too
            failures.append(f"{key}: {what} (measured {value:.3g}, limit {limit:.3g})")

    T = operator.response(M)
    scale = T
    record("deterministic", _relative(operator.response(M), T, scale), rtol,
           "response gave other traveltimes on a second call with the same models; seed or remove any "
           "randomness in the engine")
    rows = np.stack([operator.response(m) for m in M])
    T2, jacobians = operator.response_and_jacobian(M)
    mixed = 0.0
    if len(M) == 1:     # a batch of one cannot mix models: the model beside itself at 1.5 times the slowness
        pair = operator.response(np.vstack([M, 1.5 * M]))
        mixed = _relative(pair, np.vstack([T, operator.response(1.5 * M)]), np.vstack([T, 1.5 * T]))
    record("batch", max(_relative(rows, T, scale), _relative(T2, T, scale), mixed), rtol,
           "the traveltimes of a model in a batch differ from those of the model alone, or "
           "response_and_jacobian's from response's; compute each row of m from that model only, the "
           "same way with and without want_jacobian")

    # the Jacobian against finite differences, per datum, along dm = m * u
    dM = M * rng.standard_normal(M.shape)
    eps = _epsilon(T)
    h = _FD_STEP if eps < 1e-10 else eps ** (1 / 3)     # a float32 engine: the step that balances its
    up, down = operator.response(M + h * dM), operator.response(M - h * dM)  # rounding and O(h**2)
    fd = (up - down) / (2 * h)
    jd = np.stack([J @ dm for J, dm in zip(jacobians, dM)])
    # tolerance per datum: sqrt(rtol) relative, plus the rounding of the traveltimes over the step
    tol = np.sqrt(rtol) * np.abs(fd) + 16 * eps * np.maximum(np.abs(up), np.abs(down)) / h
    # first-arrival traveltimes are minima over paths: at a tie (a kink) any path's derivative lies
    # between the one-sided differences (exactly, for a concave response), so a datum counts only
    # when jacobian(m) @ dm lies outside them by more than tol (the central difference is their mean:
    # then it differs from that by more than tol too)
    one_sided = np.stack([(up - T) / h, (T - down) / h])
    off = (jd < one_sided.min(axis=0) - tol) | (jd > one_sided.max(axis=0) + tol)
    if off.any():
        k, j = np.argwhere(off)[0]
        where = (f" (the first: datum {j} of model {k}, jacobian(m) @ dm = {jd[k, j]:.6g}, finite "
                 f"difference {fd[k, j]:.6g})")
    else:
        where = ""
    record("jacobian", float(np.mean(off)), max_kink_fraction,
           f"jacobian(m) @ dm differs from the finite difference of response by more than {np.sqrt(rtol):.1g} "
           f"(relative) and lies outside the one-sided differences, in this fraction of the data{where}: "
           "the Jacobian is not the response's derivative (check its units, m, and its rows' order)")
    measured["jacobian_median"] = float(np.median(np.abs(fd - jd) / np.maximum(np.abs(fd), np.abs(T) * rtol
                                                                             + np.finfo(float).tiny)))

    if homogeneous:
        record("homogeneous_scale", _relative(operator.response(2 * M), 2 * T, scale), rtol,
               "response(2 m) differs from 2 response(m): traveltimes are homogeneous of degree 1 in slowness "
               "(a time-zero shift or an offset breaks it); pass homogeneous=False for another physics")
        record("homogeneous_jacobian", _relative(np.stack([J @ m for J, m in zip(jacobians, M)]), T, scale), rtol,
               "jacobian(m) @ m differs from response(m), which holds for traveltimes (the Jacobian holds "
               "the ray length per cell, m, of the path the traveltime took)")
        if T.min() < 0:
            failures.append(f"homogeneous: negative traveltimes (the least is {T.min():.3g} ns, limit 0); "
                            "traveltimes are >= 0")
    if operator.is_linear:
        dense = [J.toarray() if hasattr(J, "toarray") else np.asarray(J) for J in jacobians]
        record("linear", max(_relative(D, dense[0], dense[0]) for D in dense), rtol,
               "is_linear = True, but the Jacobian changes with the model; set is_linear = False")
        record("linear_response", _relative(np.stack([D @ m for D, m in zip(dense, M)]), T, scale), rtol,
               "is_linear = True, but response(m) differs from jacobian(m) @ m (an offset?), which the "
               "estimators then use as the response; set is_linear = False, or return jacobian(m) @ m")

    # the torch bridge (or a subclass's own forward): values and the gradient J^T v
    def bridge(v, jacobian_rows=None):
        """forward's values and its gradient applied to ``v`` (inf where forward gives no gradient), each
        against response and the Jacobians (None: forward's output is not what the contract says)."""
        m = torch.tensor(M, dtype=torch.float64, requires_grad=True)
        out = operator.forward(m) if jacobian_rows is None else operator.forward(m, jacobian_rows=jacobian_rows)
        if not isinstance(out, torch.Tensor) or out.shape != T.shape or out.dtype != torch.float64:
            failures.append(f"forward: expected a float64 tensor of shape {T.shape} for float64 models, got "
                            f"{type(out).__name__} {tuple(getattr(out, 'shape', ()))} {getattr(out, 'dtype', '')}")
            return None
        expected = np.stack([J.T @ w for J, w in zip(jacobians, v)])
        grad = torch.autograd.grad(out, m, torch.from_numpy(v))[0].numpy() if out.requires_grad else None
        return (_relative(out.detach().numpy(), T, scale),
                _relative(grad, expected, expected) if grad is not None else np.inf)

    v = rng.standard_normal(T.shape)
    errors = [bridge(v)]
    if operator.supports_jacobian_rows:    # the values and gradient of a random half of the data
        keep = np.argsort(rng.random(T.shape), axis=1)[:, :max(1, T.shape[1] // 2)]
        vk = np.zeros_like(v)
        np.put_along_axis(vk, keep, np.take_along_axis(v, keep, axis=1), axis=1)
        errors.append(bridge(vk, torch.from_numpy(keep)))
    errors = [e for e in errors if e is not None]
    if errors:
        note = " (all data, and a random half through jacobian_rows)" if operator.supports_jacobian_rows else ""
        record("forward", max(e[0] for e in errors), rtol, f"forward's traveltimes differ from response's{note}")
        record("forward_gradient", max(e[1] for e in errors), rtol,
               f"forward's gradient differs from jacobian(m).T @ v{note} (inf: forward's output does not "
               "require grad); leave forward to the base class, or apply the Jacobian's transpose in its backward")

    if failures:
        raise ValueError(f"check_operator: {name} fails {len(failures)} check(s) on {len(M)} model(s):\n- "
                         + "\n- ".join(failures))
    return measured
