"""The contract every forward operator follows, and its bridge into torch autograd.

An operator maps slowness per cell (s/m ... here ns/m, in the package's cell order, see
:mod:`latentinv.geometry`) to first-arrival traveltimes (ns) for the pairs of a survey:

- ``n_data``, ``n_params``: sizes of data and model vectors;
- ``response(m)``: NumPy traveltimes for one model ``(n_params,)`` or a batch ``(n_models, n_params)``;
- ``jacobian(m)``: the Jacobian (ray lengths per cell, m) at ``m`` as a SciPy CSR matrix;
- ``response_and_jacobian(m)``: both at once for a batch (a list of CSR matrices);
- ``forward(m)``: torch, batched and differentiable;
- ``adjoint(v)`` for linear operators.

Operators whose engine can run in the background (``runs_in_background``) also offer
``submit(m, ...)``, which returns a :class:`PendingResponse` at once; ``forward(m, pending=...)``
then takes its result instead of calling the engine again.

Writing an operator
-------------------
Subclass :class:`ForwardOperator` (the estimators refuse any other object), set ``n_data`` and
``n_params``, and implement ``_response_and_jacobian(m, want_jacobian)``: ``m`` is a checked float64 array
``(n_models, n_params)`` of slowness (ns/m, finite and > 0); return traveltimes (ns) as an array
``(n_models, n_data)`` and, when ``want_jacobian``, a list of ``n_models`` SciPy sparse matrices
``(n_data, n_params)`` (``d t / d m``, m), else None. The base class checks the shapes returned and NaN or
infinite traveltimes (ValueError naming the operator). Optional: ``is_linear = True`` when the response
is ``jacobian(m) @ m`` with a Jacobian independent of ``m`` (the estimators then use ``jacobian(ones)`` as
the kernel and check it against ``response`` in ``fit``); ``get_params()`` returning the constructor's
arguments, for ``set_params(operator__...)`` and searches. A nonlinear operator's Jacobian is not checked
against ``response`` in ``fit``: run :func:`~latentinv.operators.check_operator` once (finite differences,
homogeneity of traveltimes, determinism, batches, the torch bridge).
"""
from __future__ import annotations

import math
from typing import Optional

import numpy as np
import scipy.sparse as sp
import torch

from .._checks import ignoring_warnings

__all__ = ["ForwardOperator", "JacobianFunction", "PendingResponse", "check_slowness_tensor",
           "check_times_tensor", "smallest_slowness"]

#: speeds (m/ns) above this, over three times light's in vacuum (0.2998 m/ns), are a mix-up of units
#: (a slowness in ns/m read as a velocity, times in s read as ns), never a medium
IMPLAUSIBLE_SPEED = 1.0

#: slowness (ns/m) below which no path shorter than 1e12 m overflows float64: an infinite traveltime
#: for such a model is the engine's, not the model's
_NO_OVERFLOW = np.finfo(np.float64).max / 1e12

#: floating dtypes a torch model may have (the output of ``forward`` keeps the model's dtype)
TORCH_FLOAT_DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)


def _dtype_names(dtypes):
    return ", ".join(str(d).replace("torch.", "") for d in dtypes)


def smallest_slowness(dtype):
    """The smallest slowness (ns/m) a model of ``dtype`` may hold: the dtype's smallest normal number
    (``finfo(dtype).tiny``), and never below float64's, in which the NumPy and C++ engines compute.

    Below it a number is subnormal: it keeps fewer significant digits (at 1e-320 in float64 about 4),
    and traveltimes computed from it lose them without a word. ``dtype``: a NumPy or torch dtype; an
    integer (or any non-floating) dtype gives float64's bound.
    """
    return _lower_bound(dtype)[0]


def _lower_bound(dtype):
    """``(smallest slowness, name of the dtype whose smallest normal number it is)``."""
    if isinstance(dtype, torch.dtype):
        tiny = torch.finfo(dtype).tiny if dtype.is_floating_point else 0.0
        name = str(dtype).replace("torch.", "")
    else:
        dtype = np.dtype(dtype)
        tiny = float(np.finfo(dtype).tiny) if dtype.kind == "f" else 0.0
        name = dtype.name
    floor = float(np.finfo(np.float64).tiny)
    return (float(tiny), name) if tiny >= floor else (floor, "float64")


def _raise_bad_values(a, owner, dtype=np.float64):
    """Name the first bad cell of a float64 array ``(n_models, n_params)`` that failed the check
    (``dtype``: the model's own dtype, whose smallest normal number is the lower bound)."""
    finite = np.isfinite(a)
    if not finite.all():
        k, j = np.argwhere(~finite)[0]
        raise ValueError(f"{owner}: model (slowness) holds NaN or inf: model {k}, cell {j} is "
                         f"{float(a[k, j])!r} (expected finite slowness > 0, in ns/m)")
    k, j = np.unravel_index(np.argmin(a), a.shape)
    if a[k, j] <= 0:
        raise ValueError(f"{owner}: slowness must be > 0 in every cell (ns/m), got minimum "
                         f"{float(a[k, j])!r} at model {k}, cell {j}")
    tiny, name = _lower_bound(dtype)
    raise ValueError(f"{owner}: slowness must be at least {tiny!r} ns/m in every cell (the smallest normal "
                     f"{name} number: below it the value is subnormal, keeps fewer digits, and "
                     f"the traveltimes lose them), got minimum {float(a[k, j])!r} at model {k}, cell {j}")


def check_slowness_tensor(m, n_params, owner, dtypes=TORCH_FLOAT_DTYPES):
    """Check a torch slowness model ``(n_params,)`` or ``(batch, n_params)`` where it lives.

    Type, dtype and shape are checked from metadata; the values (finite, and at least the dtype's
    smallest normal number, :func:`smallest_slowness`) by one fused reduction (``torch.aminmax``: NaN
    propagates into both results, so ``min >= tiny and max < inf`` rejects NaN, +-inf, zeros, negative
    and subnormal values) with no copy of the model. On a CUDA tensor the
    ``bool`` of the result is a host synchronisation (a few microseconds plus waiting for the queued
    kernels); only when the check fails is the model copied to the host to name the bad cell.

    Returns
    -------
    batch : torch.Tensor of shape (batch, n_params)
        ``m`` itself, or a view with a leading axis of 1.
    single : bool
        Whether ``m`` was one model ``(n_params,)``.

    Raises
    ------
    TypeError
        If ``m`` is not a torch tensor.
    ValueError
        On a dtype outside ``dtypes``, a wrong shape, or a NaN, infinite, non-positive or subnormal
        slowness.
    """
    if not isinstance(m, torch.Tensor):
        raise TypeError(f"{owner}: model must be a torch.Tensor, got {type(m).__name__}")
    if m.dtype not in dtypes:
        raise ValueError(f"{owner}: model (slowness) must be a floating-point tensor (dtype one "
                         f"of {_dtype_names(dtypes)}), got dtype {str(m.dtype).replace('torch.', '')}")
    if m.ndim not in (1, 2) or m.shape[-1] != n_params:
        raise ValueError(f"{owner}: model must have shape ({n_params},) or (batch, {n_params}) "
                         f"(slowness per cell), got shape {tuple(m.shape)}")
    single = m.ndim == 1
    batch = m[None, :] if single else m
    if batch.numel():
        with torch.no_grad():
            low, high = torch.aminmax(batch.detach())
            ok = bool(torch.logical_and(low >= smallest_slowness(m.dtype), high < math.inf))  # host sync on CUDA
        if not ok:
            _raise_bad_values(batch.detach().to("cpu", torch.float64).numpy(), owner, m.dtype)
    return batch, single


def check_times_tensor(out, owner):
    """Traveltimes that overflowed the model's dtype (inf) raise a ValueError naming the datum."""
    if out.numel() and bool(torch.isinf(out.detach()).any()):   # a host sync on CUDA
        k, j = (int(v) for v in torch.nonzero(torch.isinf(out.detach()).reshape(-1, out.shape[-1]))[0])
        raise ValueError(
            f"{owner}: traveltimes overflow the model's dtype {str(out.dtype).replace('torch.', '')} "
            f"(datum {j} of model {k}): the slowness is too large for this dtype")


class ForwardOperator:
    """Base class: validation of models and the torch bridge; subclasses implement the physics."""

    #: whether ``response`` is linear in the model (then ``jacobian`` does not depend on ``m``)
    is_linear = False
    #: name of the engine that computes the response ("cpp", "python", "pygimli", "scipy")
    backend = "python"
    #: whether ``_response_and_jacobian`` accepts ``jacobian_rows`` (rows it may leave empty)
    supports_jacobian_rows = False
    #: whether ``submit`` queues the work on background threads (and returns before it is done)
    runs_in_background = False

    #: largest slowness contrast ``max / min`` within one model, or None for no limit. Graph
    #: operators set one: beyond it, edge times vanish against path times in float64
    #: (``fl(t + w) == t``) and first-arrival paths are no longer defined.
    max_slowness_contrast: Optional[float] = None

    n_data: int
    n_params: int

    # -- scikit-learn's parameter protocol (nested: ``LatentInverter.set_params(operator__...)``) ------
    # (no get_params here: scikit-learn treats an operator without one as a single value, and a
    # subclass lists its own constructor parameters to take part)
    def set_params(self, **params):
        """Set constructor parameters by name (as scikit-learn's ``set_params``, so that
        ``LatentInverter.set_params(operator__...)`` and searches over them work) and build the operator
        again from them (its ray matrix or graph), for a subclass with ``get_params``.

        Parameters
        ----------
        **params
            Constructor parameters by name (those of ``get_params()``); the others keep their values.

        Returns
        -------
        self
            Rebuilt in place.

        Raises
        ------
        ValueError
            On a name that is not a constructor parameter (a value the constructor refuses raises the
            constructor's error).
        TypeError
            For an operator without ``get_params``.
        """
        if not hasattr(self, "get_params"):
            raise TypeError(f"{type(self).__name__}.set_params: this operator does not list its constructor "
                            "parameters (no get_params); build a new one instead")
        current = self.get_params()
        unknown = sorted(set(params) - set(current))
        if unknown:
            raise ValueError(f"{type(self).__name__}.set_params: invalid parameter(s) {unknown}; expected some "
                             f"of {sorted(current)}")
        current.update(params)
        self.__init__(**current)
        return self

    # -- to implement -------------------------------------------------------------------------------
    def _response_and_jacobian(self, m, want_jacobian):
        """``m``: validated float64 array (n_models, n_params). Returns (times, list of CSR or None)."""
        raise NotImplementedError

    # -- validation -----------------------------------------------------------------------------------
    def _check_models(self, m, positive=True):
        """A float64 copy ``(n_models, n_params)`` of ``m`` (NumPy, list or torch tensor on any
        device), and whether ``m`` was one model. Raises ValueError on a non-real dtype (bool,
        complex, strings), a wrong shape, NaN/inf, or (``positive``) a slowness below the smallest
        normal number of its dtype (:func:`smallest_slowness`: <= 0, or subnormal)."""
        name = type(self).__name__
        dtype = np.float64
        if isinstance(m, torch.Tensor):
            if m.dtype == torch.bool or m.is_complex():
                raise ValueError(f"{name}: model (slowness) must hold real numbers, got a tensor "
                                 f"of dtype {str(m.dtype).replace('torch.', '')}")
            dtype = m.dtype
            m = m.detach().to("cpu", torch.float64).numpy()
        try:
            raw = np.asarray(m)
        except (TypeError, ValueError):
            raise ValueError(f"{name}: model must be a numeric array, got {type(m).__name__}") from None
        if raw.dtype.kind in "bc":
            raise ValueError(f"{name}: model (slowness) must hold real numbers, got dtype {raw.dtype}")
        if raw.dtype.kind not in "iuf":
            try:
                if raw.dtype.kind != "O":
                    raise TypeError
                raw = raw.astype(np.float64)
            except (TypeError, ValueError):
                raise ValueError(f"{name}: model must be a numeric array of slowness values, got "
                                 f"{type(m).__name__} of dtype {raw.dtype}") from None
        if raw.dtype.kind == "f" and not isinstance(dtype, torch.dtype):
            dtype = raw.dtype
        a = np.array(raw, dtype=np.float64, copy=True)
        single = a.ndim == 1
        if single:
            a = a[None, :]
        if a.ndim != 2 or a.shape[1] != self.n_params:
            raise ValueError(
                f"{name}: model must have shape ({self.n_params},) or (n_models, {self.n_params}) "
                f"(slowness per cell), got shape {np.shape(m)}"
            )
        if a.size and not (np.all(np.isfinite(a)) and (not positive or a.min() >= smallest_slowness(dtype))):
            _raise_bad_values(a, name, dtype)
        limit = self.max_slowness_contrast
        if limit is not None and a.size:
            contrast = a.max(axis=1) / a.min(axis=1)
            if np.any(contrast > limit):
                k = int(np.argmax(contrast))
                raise ValueError(
                    f"{name}: slowness contrast (max / min within a model) must be at most {limit:.0e}, "
                    f"got {contrast[k]:.3g} in model {k} ({a[k].min():.3g} to {a[k].max():.3g} ns/m): "
                    "beyond it edge times vanish against path times in float64")
        return a, single

    def _engine_output(self, a, t, jac, want_jacobian):
        """What ``_response_and_jacobian`` returned for models ``a``, checked against the contract:
        traveltimes ``(n_models, n_data)``, no NaN or infinity below overflow (a user's engine returning
        NaN made the SGD fail with "no start gave a finite misfit" and the MCMC chains stall without a
        word, and a wrong shape failed later with an IndexError far from the operator), and with ``want_jacobian`` one
        matrix ``(n_data, n_params)`` per model (a transposed one failed in the backward pass)."""
        name = f"{type(self).__name__}._response_and_jacobian"
        t = np.asarray(t, dtype=np.float64)
        if t.shape != (len(a), self.n_data):
            raise ValueError(f"{name}: must return traveltimes of shape (n_models, n_data) = "
                             f"{(len(a), self.n_data)}, got shape {t.shape}")
        nan = np.isnan(t)
        if nan.any():
            k, j = np.argwhere(nan)[0]
            raise ValueError(f"{name}: returned {int(nan.sum())} NaN traveltimes (the first: datum {j} of "
                             f"model {k}); expected finite traveltimes (ns) for every datum")
        # model by model (a model of large slowness beside it does not excuse another's): beyond _NO_OVERFLOW
        # the overflow check of _check_times names the slowness instead
        inf = np.isinf(t) & (a.max(axis=1, initial=0.0) <= _NO_OVERFLOW)[:, None]
        if inf.any():
            k, j = np.argwhere(inf)[0]
            raise ValueError(f"{name}: returned {int(inf.sum())} infinite traveltimes (the first: datum {j} of "
                             f"model {k}) for slowness at most {a[k].max():.3g} ns/m, which cannot overflow float64 "
                             "along any path shorter than 1e12 m; expected finite traveltimes (ns) for every datum")
        if want_jacobian:
            shapes = [getattr(J, "shape", None) for J in (jac or [])]
            if len(shapes) != len(a) or any(s != (self.n_data, self.n_params) for s in shapes):
                raise ValueError(f"{name}: must return one Jacobian of shape (n_data, n_params) = "
                                 f"{(self.n_data, self.n_params)} per model ({len(a)}), got "
                                 f"{'None' if jac is None else shapes[:3]}")
        return t, jac

    def _check_times(self, t, owner, dtype=np.float64):
        """Traveltimes that overflowed (to +inf, in float64 or in the output ``dtype``) raise."""
        big = np.finfo(dtype).max
        with np.errstate(invalid="ignore"):
            over = np.isposinf(t) | (np.abs(t) > big)
        if np.any(over):
            k, j = np.argwhere(over)[0]
            raise ValueError(
                f"{owner}: traveltimes overflow {np.dtype(dtype).name} (datum {j} of model {k} is "
                f"{float(t[k, j])!r} ns, the largest finite value is {big:.3g}): the slowness is too "
                "large for this dtype")
        return t

    # -- public contract ----------------------------------------------------------------------------
    def response(self, m):
        """Traveltimes (ns) for slowness ``m`` (ns/m): ``(n_data,)`` or ``(n_models, n_data)``.

        Parameters
        ----------
        m : array-like or torch.Tensor of shape (n_params,) or (n_models, n_params)
            Slowness per cell (ns/m), in the operator's cell order (pyGIMLi's for
            :class:`~latentinv.operators.PyGimliOperator`); a tensor is copied to the host.

        Returns
        -------
        ndarray of float64 of shape (n_data,) or (n_models, n_data)
            Traveltimes in ns, one row per model.

        Raises
        ------
        ValueError
            On a non-real dtype, a wrong shape, a NaN, infinite, non-positive or subnormal slowness
            (:func:`smallest_slowness` of its dtype), a contrast beyond ``max_slowness_contrast``, or
            traveltimes that overflow float64.
        """
        a, single = self._check_models(m)
        t, _ = self._engine_output(a, *self._response_and_jacobian(a, want_jacobian=False), False)
        self._check_times(t, type(self).__name__)
        return t[0] if single else t

    def jacobian(self, m):
        """Jacobian d t / d m at ``m`` (ray length per cell, m) as CSR ``(n_data, n_params)``.

        Parameters
        ----------
        m : array-like or torch.Tensor of shape (n_params,)
            One slowness model (ns/m), in the operator's cell order.

        Returns
        -------
        scipy.sparse.csr_matrix of shape (n_data, n_params)
            Ray length of each datum in each cell, in m.

        Raises
        ------
        ValueError
            For a batch of models (use :meth:`response_and_jacobian`), or a model :meth:`response`
            refuses.
        """
        a, single = self._check_models(m)
        if not single:
            raise ValueError(
                f"{type(self).__name__}: jacobian takes one model of shape ({self.n_params},); "
                "use response_and_jacobian for a batch"
            )
        t, jac = self._engine_output(a, *self._response_and_jacobian(a, want_jacobian=True), True)
        self._check_times(t, type(self).__name__)
        return jac[0]

    def response_and_jacobian(self, m):
        """Traveltimes and Jacobians at once: ``(times (n_models, n_data), [CSR, ...])`` for a batch,
        ``(times (n_data,), CSR)`` for one model.

        Parameters
        ----------
        m : array-like or torch.Tensor of shape (n_params,) or (n_models, n_params)
            Slowness per cell (ns/m), in the operator's cell order.

        Returns
        -------
        times : ndarray of float64 of shape (n_data,) or (n_models, n_data)
            Traveltimes in ns.
        jacobians : scipy.sparse.csr_matrix or list of them, each of shape (n_data, n_params)
            Ray lengths per cell (m): one matrix for one model ``(n_params,)``, a list of
            ``n_models`` for a batch.

        Raises
        ------
        ValueError
            On a model :meth:`response` refuses.
        """
        a, single = self._check_models(m)
        t, jac = self._engine_output(a, *self._response_and_jacobian(a, want_jacobian=True), True)
        self._check_times(t, type(self).__name__)
        return (t[0], jac[0]) if single else (t, jac)

    def forward(self, m, jacobian_rows=None, pending=None):
        """Differentiable torch traveltimes for ``m`` of shape ``(n_params,)`` or ``(batch, n_params)``.

        The output has the dtype and device of ``m``. Gradients flow through the Jacobian transpose
        (for a nonlinear operator the Jacobian at ``m``, i.e. the linearised update of the paper's
        Eq. 28).

        ``jacobian_rows``: optional integer indices ``(batch, k)`` of the data whose gradient is
        needed (an SGD mini-batch). Operators that can (``supports_jacobian_rows``) then skip the
        other rows of the Jacobian; the gradient reaching any other datum must be zero, which the
        backward pass checks (RuntimeError otherwise).

        ``pending``: a :class:`PendingResponse` that the operator's ``submit`` started for the same
        slowness values (checked, ValueError otherwise); its result is used instead of a new engine
        call. It must hold the Jacobian (and its ``jacobian_rows`` must cover these) when ``m``
        requires a gradient.

        ``m`` is checked before the engine runs (ValueError on a dtype other than float16,
        bfloat16, float32 or float64, a wrong shape, or a NaN, infinite, non-positive or subnormal slowness;
        TypeError if it is not a tensor). The check on a CUDA tensor synchronises with the host
        (the engine needs the model on the host anyway).

        Parameters
        ----------
        m : torch.Tensor of shape (n_params,) or (batch, n_params)
            Slowness per cell (ns/m), in the operator's cell order; float16, bfloat16, float32 or
            float64, on any device.
        jacobian_rows : array-like of int of shape (batch, k) or (k,) for one model, default=None
            Data whose gradient is needed (above); None: all.
        pending : PendingResponse, default=None
            The result of ``submit`` for the same slowness (above); None: call the engine.

        Returns
        -------
        torch.Tensor of shape (n_data,) or (batch, n_data)
            Traveltimes in ns, with the dtype and device of ``m``.

        Raises
        ------
        TypeError
            If ``m`` is not a tensor.
        ValueError
            On a model refused (above), ``jacobian_rows`` of a wrong shape, dtype or range, a
            ``pending`` that does not answer for ``m``, or traveltimes that overflow the dtype of ``m``.
        """
        mb, single = check_slowness_tensor(m, self.n_params, f"{type(self).__name__}.forward")
        mask = self._rows_mask(jacobian_rows, mb.shape[0], single)
        out = JacobianFunction.apply(mb, self, mask, pending)
        return out[0] if single else out

    def _rows_mask(self, jacobian_rows, n_models, single):
        """``jacobian_rows`` checked, as a boolean mask ``(n_models, n_data)``; None for None."""
        if jacobian_rows is None:
            return None
        idx = torch.as_tensor(jacobian_rows).detach().to("cpu")
        if single and idx.ndim == 1:
            idx = idx[None, :]
        if idx.ndim != 2 or idx.shape[0] != n_models or idx.dtype.is_floating_point or idx.dtype == torch.bool:
            raise ValueError(f"{type(self).__name__}.forward: jacobian_rows must be integer indices "
                             f"of shape ({n_models}, k), got {tuple(idx.shape)} {idx.dtype}")
        if idx.numel() and (int(idx.min()) < 0 or int(idx.max()) >= self.n_data):
            raise ValueError(f"{type(self).__name__}.forward: jacobian_rows must lie in "
                             f"[0, {self.n_data}), got [{int(idx.min())}, {int(idx.max())}]")
        mask = np.zeros((n_models, self.n_data), dtype=bool)
        np.put_along_axis(mask, idx.numpy().astype(np.int64), True, axis=1)
        return mask

    __call__ = forward


class JacobianFunction(torch.autograd.Function):
    """Enters a NumPy/C++ operator into autograd: forward calls the engine, backward applies J^T."""

    @staticmethod
    def forward(ctx, m, operator, row_mask=None, pending=None):
        a = m.detach().to("cpu", torch.float64).numpy()
        a, _ = operator._check_models(a)
        want = m.requires_grad
        if pending is not None:
            t, jac = pending.result_for(a, want, row_mask)
        elif want and row_mask is not None and operator.supports_jacobian_rows:
            t, jac = operator._response_and_jacobian(a, want_jacobian=True, jacobian_rows=row_mask)
        else:
            t, jac = operator._response_and_jacobian(a, want_jacobian=want)
        if pending is None:     # a pending result holds NaN for the sources left out on purpose
            # (rows skipped by jacobian_rows are empty rows of a full-shape matrix: checked as well)
            t, jac = operator._engine_output(a, t, jac, want)
        # the contract is checked whether or not the engine skipped rows (same behaviour everywhere)
        ctx.row_mask = row_mask if want else None
        ctx.jacobians = jac
        ctx.n_params = operator.n_params
        out = torch.tensor(t, dtype=m.dtype)       # cast on the host: overflow checked before moving
        check_times_tensor(out, f"{type(operator).__name__}.forward")
        return out.to(m.device)

    @staticmethod
    def backward(ctx, grad_out):
        g = grad_out.detach().to("cpu", torch.float64).numpy()
        if ctx.row_mask is not None and np.any(g[~ctx.row_mask] != 0):
            raise RuntimeError("operator.forward(..., jacobian_rows=...): a gradient reached data "
                               "outside jacobian_rows, whose Jacobian rows were not computed")
        jac = ctx.jacobians
        grad = np.zeros((len(jac), ctx.n_params))  # an empty batch has an empty gradient
        for i in range(len(jac)):
            grad[i] = jac[i].T @ g[i]
        return torch.tensor(grad, dtype=grad_out.dtype, device=grad_out.device), None, None, None


class PendingResponse:
    """A computation started by an operator's ``submit``; ``result()`` waits for it.

    ``result()`` returns ``(times (n_models, n_data), list of CSR or None)`` like the operator's
    ``response_and_jacobian``, except that the data of sources left out (``sources``) hold NaN and
    empty Jacobian rows. It may be called any number of times.

    Attributes
    ----------
    models : ndarray (n_models, n_params)
        The slowness it was submitted for (a copy).
    want_jacobian : bool
    jacobian_rows : ndarray of bool (n_models, n_data) or None
        The Jacobian rows computed (None: all).
    """

    def __init__(self, models, want_jacobian, jacobian_rows, fetch):
        self.models = models
        self.want_jacobian = bool(want_jacobian)
        self.jacobian_rows = jacobian_rows
        self._fetch = fetch
        self._value = None

    def result(self):
        if self._value is None:
            if self._fetch is None:          # an earlier call raised: raise again
                raise self._error
            value = self._fetch()
            self._fetch = None
            if np.any(np.isposinf(value[0])):   # NaN marks data left out on purpose; inf never
                k, j = np.argwhere(np.isposinf(value[0]))[0]
                self._error = ValueError(f"PendingResponse.result: traveltimes overflow float64 "
                                         f"(datum {j} of model {k} is inf): the slowness is too large")
                raise self._error
            self._value = value
        return self._value

    def result_for(self, models, want_jacobian, row_mask):
        """``result()``, after checking that it answers for ``models`` (and the rows wanted)."""
        if models.shape != self.models.shape or not np.array_equal(models, self.models):
            raise ValueError("operator.forward(..., pending=...): pending was submitted for other "
                             "slowness values than the model given")
        if want_jacobian:
            if not self.want_jacobian:
                raise ValueError("operator.forward(..., pending=...): the model requires a gradient "
                                 "but pending was submitted with want_jacobian=False")
            if self.jacobian_rows is not None and (
                    row_mask is None or np.any(row_mask & ~self.jacobian_rows)):
                raise ValueError("operator.forward(..., pending=...): jacobian_rows asks for rows "
                                 "that pending did not compute")
        return self.result()


def csr_row_block(matrices):
    """Stack a list of CSR matrices vertically (helper for batched Jacobians)."""
    return sp.vstack(matrices, format="csr")


def torch_csr(M, dtype):
    """A scipy sparse matrix as a torch sparse CSR tensor on the CPU, its invariants checked.

    Each part is copied into a fresh stride-1 vector: numpy gives an empty array stride 0, which the
    CSR invariant check of some torch releases (2.11) refuses ("expected col_indices to be a
    contiguous tensor per batch"), so a matrix without entries would fail there.
    """
    M = M.tocsr().astype(np.float64)
    M.sort_indices()

    def vector(a, dt):
        return torch.as_tensor(a, dtype=dt).clone(memory_format=torch.contiguous_format)

    # torch flags sparse CSR as beta; latentinv uses it read-only
    with ignoring_warnings(dict(message="Sparse CSR tensor support is in beta"),
                           dict(message="Sparse invariant checks are implicitly disabled")):
        return torch.sparse_csr_tensor(vector(M.indptr, torch.int64), vector(M.indices, torch.int64),
                                       vector(M.data, dtype), size=M.shape, check_invariants=True)
