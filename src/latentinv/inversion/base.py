"""What every estimator of the engine shares: the checks of the operator, the traveltimes, the noise
and the prior, the fitted prior's set-up, and the :class:`~.problem.LatentProblem` of a set of surveys.
:class:`~.estimator.LatentInverter` (SGD) and :class:`~.sampler.LatentSampler` (MCMC) build on it."""
from __future__ import annotations

import copy
import hashlib
import inspect
import math
import numbers
import os
import warnings

import numpy as np
import torch
from sklearn.base import BaseEstimator, clone
from sklearn.frozen import FrozenEstimator
from sklearn.metrics import r2_score
from sklearn.utils.validation import check_consistent_length, check_is_fitted, validate_data

from .._checks import caller_stacklevel, check_random_state, is_int, noise_levels
from .._common import _reject_1d, _resolve_device, _unchanged_on_failure
from ..metrics import _real_array, _rows, check_image_grid
from .equations import chi_mean, paper_slowness
from ..operators._base import ForwardOperator
from .generator import (check_generator_module, check_generator_output, check_geometry, check_slowness_map_call,
                        module_device, prior_is_fitted, probe_latents)
from .problem import LatentProblem
from .randomness import initial_latents, traveltimes_digest


def _max_traveltime(n_data):
    """Largest traveltime (ns) whose squared residuals, summed over ``n_data``, stay finite in float32."""
    return math.sqrt(float(np.finfo(np.float32).max) / (4.0 * max(int(n_data), 1)))


class DataScaleWarning(UserWarning):
    """Traveltimes not within :data:`DATA_SCALE_FACTOR` of those of the prior's own models: most likely
    in other units than ns, or of a medium that ``slowness_map`` does not describe."""


#: traveltimes whose median ratio to those of the prior's models is beyond this factor (either way)
#: are most likely in other units than ns, or of another medium than ``slowness_map`` describes
DATA_SCALE_FACTOR = 3.0
#: ``noise_std`` (its median) outside [NOISE_SCALE_RANGE[0], NOISE_SCALE_RANGE[1]] times the median traveltime
#: of the prior's models is most likely in other units than ns (GPR picks are not better than about 0.01 ns
#: on traveltimes of tens to hundreds of ns, and noise as large as the traveltimes leaves nothing to fit)
NOISE_SCALE_RANGE = (1e-5, 1.0)
#: prior models (the first probe latents: the origin, then fixed draws) simulated for that check
_SCALE_PROBES = 3


def _param_snapshot(params):
    """Copies of the parameters that could change in place (arrays, tensors, containers)."""
    return {k: v.detach().clone() if isinstance(v, torch.Tensor)
            else copy.deepcopy(v) if isinstance(v, (np.ndarray, list, tuple, dict)) else v
            for k, v in params.items()}


def _contents(value, path, depth=3):
    """``{path: fingerprint}`` of what ``value`` holds, so that a change in place is seen where the
    object is still the same one: arrays (NumPy, torch) by a SHA-256 of their bytes, numbers and
    strings by value, containers by item, other objects by their public attributes (private ones are
    caches, not inputs), ``depth`` levels down. An object with nothing to read (a compiled one) gives
    nothing: it is compared as an object only."""
    if isinstance(value, torch.Tensor):
        tensor = value.detach().cpu()
        if tensor.layout == torch.strided:      # a conjugate or negative view: its values (NumPy refuses the bits)
            tensor = tensor.resolve_conj().resolve_neg()
        try:
            value = tensor.numpy()
        except TypeError:       # a dtype NumPy lacks (bfloat16, float8): its bytes, under its torch dtype
            try:
                raw = tensor.reshape(-1).view(torch.uint8).numpy()
            except (TypeError, RuntimeError):       # no bytes to read (a sparse tensor): an object only
                return {}
            return {path: hashlib.sha256(f"{tensor.dtype}{tuple(tensor.shape)}".encode() + raw.tobytes()).hexdigest()}
    if isinstance(value, (list, tuple)):
        try:
            as_array = np.asarray(value)
        except (TypeError, ValueError):        # ragged
            as_array = None
        if as_array is not None and as_array.dtype.kind in "biufc":
            value = as_array
    if isinstance(value, np.ndarray):
        if value.dtype.kind == "O":
            return {}
        a = np.ascontiguousarray(value)
        return {path: hashlib.sha256(f"{a.dtype.str}{a.shape}".encode() + a.tobytes()).hexdigest()}
    if isinstance(value, (numbers.Number, str, bytes, type(None))):
        return {path: f"{type(value).__name__}:{value!r}"}
    if depth <= 0:
        return {}
    if isinstance(value, (list, tuple)):
        items = enumerate(value)
    elif isinstance(value, dict):
        items = value.items()
    else:
        items = ((k, v) for k, v in getattr(value, "__dict__", {}).items() if not str(k).startswith("_"))
    out = {}
    for k, v in items:
        out.update(_contents(v, f"{path}[{k!r}]" if isinstance(value, (list, tuple, dict)) else f"{path}.{k}",
                             depth - 1))
    return out


def _operator_contents(params, free):
    """``{name: _contents}`` of the operator's parameters (``operator__...``): the operator is built from
    them once, and a parameter stays the same object when an array inside it changes (the package's grids
    and surveys refuse that: they are immutable; a user's operator may take mutable objects)."""
    return {k: _contents(v, k) for k, v in params.items() if k.startswith("operator__") and k not in free}


def _same_param(a, b):
    if a is b:
        return True
    if isinstance(a, torch.Tensor) or isinstance(b, torch.Tensor):     # e.g. noise_std given as a tensor
        as_array = lambda v: v.detach().cpu().double().numpy() if isinstance(v, torch.Tensor) else v
        a, b = as_array(a), as_array(b)
    if isinstance(a, (np.ndarray, list, tuple)) or isinstance(b, (np.ndarray, list, tuple)):
        try:
            return bool(np.array_equal(np.asarray(a), np.asarray(b)))
        except (TypeError, ValueError):
            return False
    if isinstance(a, (numbers.Number, str, type(None))) and isinstance(b, (numbers.Number, str, type(None))):
        return type(a) is type(b) and a == b
    return False


def _same_nested(a, b):
    """:func:`_same_param`, or equal objects of one type (an operator's grid or survey rebuilt equal)."""
    if _same_param(a, b):
        return True
    try:
        return type(a) is type(b) and bool(a == b)
    except (TypeError, ValueError):
        return False



def engine_tags(tags):
    """scikit-learn tags of the engine's estimators (after their mixins' own: a regressor mixin would
    make ``y`` required): traveltimes are non-negative, ``y`` (true models) optional and multi-output."""
    tags.input_tags.positive_only = True
    tags.target_tags.required = False
    tags.target_tags.multi_output = True
    tags.target_tags.single_output = False
    tags.non_deterministic = False
    return tags


def _check_linear_kernel(op, s, t, owner):
    """A linear operator's ``response`` ``t`` at slowness ``s`` (rows) is the product with its Jacobian,
    which the engine takes as the operator (``jacobian(ones)``): an operator that declares ``is_linear``
    but is not, or whose response disagrees with its Jacobian, inverted data of one operator with another
    without a word."""
    kernel_t = np.asarray(op.jacobian(np.ones(op.n_params)) @ s.T).T
    err = np.abs(kernel_t - t).max(initial=0.0)
    if not err <= 1e-6 * max(np.abs(t).max(initial=0.0), 1e-300):
        k, j = np.unravel_index(np.argmax(np.abs(kernel_t - t)), t.shape)
        raise ValueError(
            f"{owner}: the operator {type(op).__name__} declares is_linear = True, but its response "
            f"differs from its Jacobian times the model (jacobian(m) @ m, the engine's kernel): "
            f"{t[k, j]:.6g} against {kernel_t[k, j]:.6g} ns at datum {j} of the generator's model {k}. "
            "A linear operator's jacobian must not depend on m; set is_linear = False otherwise")


class ModelScoreMixin:
    """``score`` of both estimators, placed before scikit-learn's ``RegressorMixin``, whose own ``score``
    (``r2_score(y, predict(X))`` over the cells as outputs) would come first in the method order."""

    def score(self, X, y, sample_weight=None):
        """Mean over surveys of the R^2 of the predicted model (:meth:`predict`: the lowest-misfit model
        of :class:`LatentInverter`, the posterior mean of :class:`LatentSampler`) against the true model
        ``y`` (over the cells), weighted by ``sample_weight`` (one weight >= 0 per survey; None: equal
        weights).

        This is the default ``scoring`` of ``GridSearchCV`` and ``cross_validate``. ``scoring="r2"`` is
        another number: scikit-learn's ``r2_score(y, predict(X))`` takes the cells as its outputs, so it
        is the R^2 of each cell over the surveys, averaged over the cells.

        Parameters
        ----------
        X : array-like of shape (n_surveys, n_data)
            Traveltimes (ns), given to :meth:`predict`.
        y : array-like of shape (n_surveys, n_cells) or (n_surveys, n_rows, n_cols)
            True models (values in [0, 1] with a prior whose models lie there).
        sample_weight : array-like of shape (n_surveys,), default=None
            Weights >= 0, not all 0; None: equal weights.

        Returns
        -------
        score : float
            At most 1.

        Raises
        ------
        ValueError
            For ``y=None``, or ``y`` or ``sample_weight`` that does not match ``X`` or the grid, or ``y``
            outside [0, 1] with such a prior (checked before :meth:`predict` runs).
        """
        return self._r2_against(X, lambda: self.predict(X), y, sample_weight)


class LatentEstimatorBase(BaseEstimator):
    """Base of the engine's estimators (not for direct use). Subclasses define ``_check_params``
    (ending with :meth:`_check_common_params`), ``_fit_schedule(op)`` and optionally
    ``_check_latent_distribution(dist)``; ``_rows_param`` names the parameter that counts the rows per
    survey (starts or chains)."""

    _rows_param = "n_starts"
    _row_noun = "start"
    #: the parameters that set the iterations every row records (named where not even one row fits)
    _iterations_param = "n_epochs"
    # parameters that may change after fit (they change how the run is carried out, not its numbers beyond
    # float32 rounding: chunk_size and n_jobs batch the surveys differently)
    _free_params = ("verbose", "n_jobs", "chunk_size", "operator__n_threads")

    def _run_params(self):
        """The parameters a run depends on: ``get_params(deep=False)`` and the operator's own
        (``operator__...``): ``set_params(operator__...)`` rebuilds the operator in place, and ``operator_``
        is that object."""
        params = self.get_params(deep=False)
        get = getattr(self.operator, "get_params", None)
        if callable(get):
            params.update({f"operator__{k}": v for k, v in get().items()})
        return params

    def __sklearn_clone__(self):
        """A clone with the same parameters, unfitted; a fitted prior is passed on as it is.

        scikit-learn's default clone would clone a fitted ``VAEPrior`` into an unfitted one, which
        :meth:`fit` would then retrain on ``y`` inside ``GridSearchCV`` or ``cross_validate``. A
        fitted prior is used as is, never retrained (the module's generator protocol), so clones
        share it (inversion only reads it). An unfitted prior is cloned as usual.
        """
        params = self.get_params(deep=False)
        prior = params.pop("prior")
        params = {k: clone(v, safe=False) for k, v in params.items()}
        params["prior"] = prior if prior is None or prior_is_fitted(prior) else clone(prior, safe=False)
        return type(self)(**params)

    def set_params(self, **params):
        """As scikit-learn's, but a change to a parameter of a fitted prior (``prior__beta=...``) is
        refused: a fitted prior is used as it is, never retrained, and is shared by the clones (see
        :meth:`__sklearn_clone__`), so the change would alter nothing but the settings the prior
        reports (of the caller's own object too), and a search over it would score one network under
        several names.

        Parameters
        ----------
        **params
            Parameters by name, nested ones as ``operator__n_threads`` (scikit-learn's ``<component>__
            <parameter>``).

        Returns
        -------
        self

        Raises
        ------
        ValueError
            On a change to a parameter of a fitted prior, a ``prior__`` parameter of a prior without
            ``set_params``, or a name scikit-learn refuses.
        """
        prior = params.get("prior", self.prior)
        nested = [k for k in params if k.startswith("prior__")]
        if nested and prior is not None and not callable(getattr(prior, "set_params", None)):
            raise ValueError(
                f"{type(self).__name__}.set_params: {nested[0]}={params[nested[0]]!r} sets a parameter of the prior, "
                f"but the prior {type(prior).__name__} has no set_params (it is used as it is); pass another prior "
                f"instead (prior={type(prior).__name__}(...))")
        if nested and prior is not None and prior_is_fitted(prior) and hasattr(prior, "get_params"):
            current = prior.get_params(deep=True)
            for key in nested:
                sub = key[len("prior__"):]
                if sub in current and not _same_param(current[sub], params[key]):
                    raise ValueError(
                        f"{type(self).__name__}.set_params: {key}={params[key]!r} would change a parameter "
                        f"of the fitted prior {type(prior).__name__} (now {sub}={current[sub]!r}), which is "
                        "used as it is and never retrained: the models would still come from the network "
                        "fitted with the current value, and the prior object (shared with this estimator's "
                        "clones) would report the new one. To compare priors, fit one per setting and "
                        "search over prior=[FrozenEstimator(p) for p in priors] (sklearn.frozen); to train "
                        "the prior on y in each fit, pass an unfitted one.")
        return super().set_params(**params)

    # -- validation ------------------------------------------------------------------------------------
    def _check_number(self, value, pname, low=None, high=None, low_open=False, integer=False):
        """A finite (integer) number in [low, high] (``low_open``: (low, high]); else a ValueError."""
        name = type(self).__name__
        kind = numbers.Integral if integer else numbers.Real
        if isinstance(value, bool) or not isinstance(value, kind) or not np.isfinite(value):
            what = "an integer" if integer else "a finite number"
            raise ValueError(f"{name}: {pname} must be {what}, got {value!r}")
        if low is not None and (value <= low if low_open else value < low):
            raise ValueError(f"{name}: {pname} must be {'>' if low_open else '>='} {low}, got {value!r}")
        if high is not None and value > high:
            raise ValueError(f"{name}: {pname} must be <= {high}, got {value!r}")

    def _idle_params(self, dist):
        """``(parameter, idle, why)`` rules: ``idle`` where the settings (and the prior's latent
        distribution ``dist``) leave the parameter no effect."""
        return []

    def _warn_idle_params(self, dist):
        """At fit, a UserWarning for each parameter of :meth:`_idle_params` set off its default where it
        has no effect: ignored without a word, the user would take it to have acted."""
        defaults = inspect.signature(type(self).__init__).parameters
        for param, idle, why in self._idle_params(dist):
            value = getattr(self, param)
            if idle and value != defaults[param].default:
                warnings.warn(f"{type(self).__name__}: {param}={value!r} has no effect {why}; it is ignored.",
                              UserWarning, stacklevel=caller_stacklevel())

    def _check_common_params(self, n_data):
        """``random_state``, ``slowness_map`` and ``noise_std``; returns the noise as an array of ``n_data``
        (or None)."""
        name = type(self).__name__
        check_random_state(self.random_state, name)     # before any training of the prior
        if not (isinstance(self.verbose, bool) or is_int(self.verbose, 0)):   # -1 or "no" would show the bar
            raise ValueError(f"{name}: verbose must be an int >= 0 or a bool, got {self.verbose!r}")
        if self.slowness_map is not None and not callable(self.slowness_map):
            raise ValueError(f"{name}: slowness_map must be callable or None, got {self.slowness_map!r}")
        if self.noise_std is None:
            return None
        sigma = noise_levels(self.noise_std, n_data, name, "noise_std")
        with np.errstate(over="ignore", divide="ignore", under="ignore"):
            weights = (1.0 / sigma ** 2).astype(np.float32)
        if not np.all(np.isfinite(weights) & (weights > 0)):
            bad = sigma[~(np.isfinite(weights) & (weights > 0))]
            raise ValueError(f"{name}: noise_std must keep 1 / noise_std**2 a finite, nonzero float32 (the "
                             f"misfit is computed in float32: about 1e-19 to 1e19 ns), got "
                             f"{bad[:3].tolist()}{' ...' if bad.size > 3 else ''}")
        return sigma

    def _check_operator(self):
        name = type(self).__name__
        op = self.operator
        # a subclass of ForwardOperator, not any object with n_data, n_params and forward: the engine
        # calls forward(m, jacobian_rows=...), response and (linear ones) jacobian, and relies on the
        # base class to check what the engine returns; a duck-typed operator failed inside the SGD with
        # a TypeError, and one whose forward returned a wrong shape, NaN or no gradient went unnoticed
        if not isinstance(op, ForwardOperator):
            raise ValueError(
                f"{name}: operator must be a latentinv.operators.ForwardOperator (subclass it and implement "
                f"_response_and_jacobian, see 'Your own operator' in the README), got "
                f"{'None' if op is None else type(op).__name__}")
        return op

    def _check_traveltimes(self, X, reset):
        name = type(self).__name__
        if isinstance(X, torch.Tensor):
            if X.dtype == torch.bool or X.is_complex():
                raise ValueError(f"{name}: X (traveltimes, ns) must hold real numbers, got dtype {X.dtype}")
            X = X.detach().cpu()
            X = X.to(torch.float64).numpy() if X.is_floating_point() else X.numpy()
        dtype = getattr(X, "dtype", None)
        if dtype is None and isinstance(X, (list, tuple)):
            try:
                dtype = np.asarray(X).dtype
            except ValueError:           # ragged: validate_data says so
                dtype = None
        if getattr(dtype, "kind", None) in ("b", "U", "S"):   # complex: scikit-learn's own message
            raise ValueError(f"{name}: X (traveltimes, ns) must hold real numbers, got dtype {dtype}")
        _reject_1d(X, "X", "survey", "n_data" if reset else self.operator_.n_data, name)
        X = validate_data(self, X, reset=reset, dtype=np.float64, ensure_all_finite=False,
                          ensure_2d=True, copy=False)
        finite = np.isfinite(X)
        if not finite.all():
            i, j = np.argwhere(~finite)[0]
            raise ValueError(
                f"{name}: X (traveltimes, ns) must be finite, got {int(np.isnan(X).sum())} NaN and "
                f"{int(np.isinf(X).sum())} inf values (the first at survey {i}, datum {j}: {float(X[i, j])!r})")
        if np.any(X < 0):
            raise ValueError(f"{name}: Negative values in data passed to X: traveltimes must be "
                             f">= 0 ns, got a minimum of {float(X.min())!r}")
        # the misfit is computed in float32: a sum of n_data squared residuals must stay finite
        limit = _max_traveltime(X.shape[1])
        if X.size and X.max() > limit:
            i, j = np.unravel_index(np.argmax(X), X.shape)
            raise ValueError(
                f"{name}: X (traveltimes, ns) must be at most {limit:.3g} ns (with {X.shape[1]} data, "
                f"larger values overflow the float32 misfit), got {X[i, j]:.6g} ns at survey {i}, "
                f"datum {j}; check the units (ns)")
        return X

    def _slowness_map_needs_gradient(self):
        """Whether the algorithm differentiates through ``slowness_map`` (the SGD does)."""
        return True

    def _check_latent_distribution(self, dist):
        """Subclasses refuse settings that a latent distribution does not support."""

    # -- fit -------------------------------------------------------------------------------------------
    @_unchanged_on_failure
    def _fit(self, X, y):
        """Everything ``fit`` does: operator, traveltimes, parameters, device, prior and generator checks."""
        name = type(self).__name__
        op = self._check_operator()
        X = self._check_traveltimes(X, reset=True)
        if y is not None:
            check_consistent_length(X, y)
        if X.shape[1] != op.n_data:
            raise ValueError(
                f"{name}: X has {X.shape[1]} traveltimes per survey but the operator expects "
                f"{op.n_data}")
        self._check_params(op.n_data)
        self.device_ = _resolve_device(self.device, name)

        prior = self.prior
        if prior is None:
            from ..prior import VAEPrior
            # seeded by the estimator's random_state: an unseeded default prior trained another network at
            # each fit, so "same random_state, same answer" failed (a RandomState is copied by the clone
            # below, so fit does not advance the estimator's own)
            prior = VAEPrior(random_state=self.random_state)
        if isinstance(prior, (str, bytes, os.PathLike)):
            raise ValueError(f"{name}: prior must be a generator object (a fitted VAEPrior or SGANPrior, or a "
                             f"TorchGenerator), got the path {os.fsdecode(prior)!r}: load it first, e.g. "
                             f"VAEPrior.load({os.fsdecode(prior)!r})")
        if not prior_is_fitted(prior) and not callable(getattr(prior, "fit", None)):
            got = (f"a torch module ({type(prior).__name__}): wrap it as TorchGenerator(module, n_components)"
                   if isinstance(prior, torch.nn.Module) else f"{prior!r} ({type(prior).__name__})")
            raise ValueError(f"{name}: prior must be a generator (with decoder_, n_components and latent_distribution: "
                             "a fitted VAEPrior or SGANPrior, or a TorchGenerator) or an unfitted prior with fit, to "
                             f"be trained on y; got {got}")
        if not prior_is_fitted(prior) and isinstance(prior, FrozenEstimator):
            raise ValueError(f"{name}: the prior is a FrozenEstimator of an unfitted {type(prior.estimator).__name__}: "
                             "a frozen prior is used as it is and never trained; fit the prior first "
                             "(FrozenEstimator(prior.fit(models))), or pass the unfitted prior itself to have it "
                             "trained on y")
        if prior_is_fitted(prior):
            self.prior_ = prior
        else:
            if y is None and getattr(prior, "_clone_of_fitted", False):
                raise ValueError(
                    f"{name}: the prior is an unfitted copy of a fitted {type(prior).__name__}: scikit-learn "
                    "clones the values of a parameter grid (GridSearchCV(..., {'prior': [...]})). To compare "
                    "fitted priors, search over prior=[FrozenEstimator(p) for p in priors] (sklearn.frozen).")
            if y is None:
                raise ValueError(
                    f"{name}: the prior {type(prior).__name__} is not fitted; pass the training "
                    "models as y (or a fitted prior)")
            if getattr(prior, "_clone_of_fitted", False):
                warnings.warn(
                    f"{name}.fit: the prior is an unfitted copy of a fitted {type(prior).__name__}, trained again "
                    f"here on y (n_iterations={prior.get_params().get('n_iterations')}): scikit-learn clones the "
                    "values of a parameter grid (GridSearchCV(..., {'prior': [...]})). To compare fitted priors, "
                    "search over prior=[FrozenEstimator(p) for p in priors] (sklearn.frozen).", UserWarning,
                    stacklevel=3)
            prior = clone(prior)
            # models are flat rows of the operator's grid: an image prior learns that grid's images
            grid = getattr(getattr(op, "grid", None), "shape", None)
            if grid is not None and prior.get_params().get("image_shape", "absent") is None:
                prior.set_params(image_shape=tuple(grid))
            self.prior_ = prior.fit(np.asarray(y))
        for attr in ("decoder_", "n_components", "latent_distribution"):
            if not hasattr(self.prior_, attr):
                raise ValueError(f"{name}: the prior {type(self.prior_).__name__} lacks {attr!r} "
                                 "(see the generator protocol in latentinv.inversion)")
        dist = self.prior_.latent_distribution
        if dist not in ("normal", "uniform"):
            raise ValueError(f"{name}: latent_distribution must be 'normal' or 'uniform', got {dist!r}")
        self._check_latent_distribution(dist)
        self._warn_idle_params(dist)
        d = self.prior_.n_components
        if not is_int(d, 1):
            raise ValueError(f"{name}: the prior's n_components (latent dimension) must be an int >= 1, "
                             f"got {d!r}")
        d = int(d)
        self.n_components_ = d
        self.latent_distribution_ = dist
        self.mu_chi_ = chi_mean(d)
        check_generator_module(self.prior_.decoder_, self.prior_, name)
        decoder = self._decoder()
        probes = probe_latents(d, dist).to(self.device_)
        try:
            with torch.no_grad():
                out = decoder(probes)
        except RuntimeError as err:     # e.g. a matmul shape error: n_components is not the module's input
            raise ValueError(f"{name}: the generator {type(self.prior_).__name__} fails on latents of shape "
                             f"({len(probes)}, n_components={d}): {err}. Does n_components match the "
                             f"generator's input?") from err
        if out.ndim != 2 or out.shape[1] != op.n_params:
            raise ValueError(
                f"{name}: the generator produces models of shape {tuple(out.shape)[1:]} but the "
                f"operator expects {op.n_params} cells")
        if out.dtype != torch.float32:     # an integer model was reported as the slowness map's fault
            raise ValueError(f"{name}: the generator {type(self.prior_).__name__} returns models of dtype "
                             f"{str(out.dtype).replace('torch.', '')}; expected float32 (model values)")
        self._check_geometry(op)
        self.initial_latents_ = self._check_initial_latents(d)
        per_survey = self.initial_latents_ is not None and self.initial_latents_.dim() == 3
        # the per-survey starts pair with these rows
        self._survey_starts_digest = traveltimes_digest(X).hexdigest() if per_survey else None
        self._check_survey_starts(X, same_x=False)      # the count; X is the one they pair with
        with torch.no_grad():
            # on a copy: a map that changes its input in place is refused below, not left to change out
            slowness = (self.slowness_map or paper_slowness)(out.clone())
            self._check_generator_output(out, slowness, f"at {len(probes)} test latents in fit")
        check_slowness_map_call(self.slowness_map, out, self._slowness_map_needs_gradient(), name)
        probe = slowness[:_SCALE_PROBES].detach().double().cpu().numpy()
        t_probe = np.asarray(op.response(probe)).reshape(len(probe), -1)
        if op.is_linear:
            _check_linear_kernel(op, probe, t_probe, name)
        # per datum, the median traveltime (ns) of a few of the prior's models: the scale of the data
        self._prior_traveltimes = np.median(t_probe, axis=0)
        self.operator_ = op
        self.n_cells_ = int(op.n_params)
        self._fit_schedule(op)
        params = self._run_params()
        self._fitted_params = _param_snapshot(params)
        self._fitted_contents = _operator_contents(params, self._free_params)
        return self

    def _warn_if_off_scale(self, Y, sigma=None):
        """Warn (:class:`DataScaleWarning`) when the traveltimes to invert, or ``noise_std`` (``sigma``, ns, or
        None), are out of scale with the traveltimes of the prior's own models: data in seconds or
        microseconds, or of a medium that ``slowness_map`` does not describe, would otherwise give the prior's
        best effort (a model at the edge of its range) without a word, and a noise in another unit would
        weight the misfit wrongly (:data:`NOISE_SCALE_RANGE`)."""
        ref = getattr(self, "_prior_traveltimes", None)
        if ref is None or not np.any(ref > 0):
            return
        name, usable = type(self).__name__, ref > 0
        ratio = np.median(Y[:, usable] / ref[usable], axis=1) if len(Y) else np.ones(0)
        off = np.flatnonzero(~((ratio >= 1 / DATA_SCALE_FACTOR) & (ratio <= DATA_SCALE_FACTOR)))
        if off.size:
            i = off[np.argmax(np.abs(np.log(np.maximum(ratio[off], 1e-300))))]
            warnings.warn(
                f"{name}: the traveltimes of {off.size} of {len(Y)} surveys are not within "
                f"a factor {DATA_SCALE_FACTOR:g} of those of the prior's models (median ratio over the data; "
                f"survey {i}: {ratio[i]:.3g} times); check that they are in ns and that slowness_map "
                f"describes their medium: the prior's models cannot fit them", DataScaleWarning,
                stacklevel=caller_stacklevel())
        if sigma is None:
            return
        noise, typical = float(np.median(sigma)), float(np.median(ref[usable]))
        low, high = NOISE_SCALE_RANGE
        if not low <= noise / typical <= high:
            warnings.warn(
                f"{name}: noise_std (median {noise:.3g} ns) is {noise / typical:.3g} times the median traveltime "
                f"of the prior's models ({typical:.3g} ns), outside [{low:g}, {high:g}]: check that it is in ns, "
                f"as the traveltimes are", DataScaleWarning, stacklevel=caller_stacklevel())

    #: whether ``initial_latents`` may hold one array per survey, ``(n_surveys, n_rows, d)``
    _per_survey_starts = False

    def _check_initial_latents(self, d):
        """``initial_latents`` as a float32 tensor (n_rows, d), or (n_surveys, n_rows, d) where the
        estimator takes one array per survey (``_per_survey_starts``), or None to draw them (``n_rows``:
        the parameter named by ``_rows_param``, ``n_starts`` or ``n_chains``)."""
        rows = self._rows_param
        if self.initial_latents is None:
            return None
        name = type(self).__name__
        try:
            z = np.asarray(self.initial_latents)
            if z.dtype.kind not in "iuf":       # complex would lose its imaginary part, text be parsed
                raise TypeError(f"dtype {z.dtype}")
            z = z.astype(np.float64)
        except (TypeError, ValueError) as err:
            raise ValueError(f"{name}: initial_latents must be a real numeric array of shape ({rows}, {d}), "
                             f"got {type(self.initial_latents).__name__} ({err})") from None
        n_rows = getattr(self, rows)
        per_survey = self._per_survey_starts and z.ndim == 3
        if z.shape[-2:] != (int(n_rows), d) or not (z.ndim == 2 or per_survey):
            raise ValueError(f"{name}: initial_latents must have shape ({rows}, n_components) = ({n_rows}, {d})"
                             + (f" or (n_surveys, {n_rows}, {d}), one array per survey of X"
                                if self._per_survey_starts else "") + f", got {z.shape}")
        if not np.isfinite(z).all():
            raise ValueError(f"{name}: initial_latents must be finite, got NaN or infinity")
        return torch.tensor(np.ascontiguousarray(z), dtype=torch.float32)

    def _check_geometry(self, op):
        check_geometry(self.prior_, self.n_components_, op, type(self).__name__)

    def _check_generator_output(self, x, s, when):
        check_generator_output(x, s, self.slowness_map, self.prior_, when, type(self).__name__)

    def _check_unchanged_params(self):
        before = getattr(self, "_fitted_params", None)
        if before is None:
            return
        params = self._run_params()
        now = _param_snapshot(params)
        keys = list(before) + [k for k in now if k not in before]     # another operator may have others
        changed = [k for k in keys if k not in self._free_params
                   and not (_same_nested if k.startswith("operator__") else _same_param)(before.get(k), now.get(k))]
        what = [f"{k}: {before.get(k)!r} at fit, {now.get(k)!r} now" for k in changed]
        # the same parameter object with an array inside it changed in place: equal to itself above
        fitted, current = getattr(self, "_fitted_contents", {}), _operator_contents(params, self._free_params)
        for k in sorted(fitted.keys() & current.keys() - set(changed)):
            moved = sorted(p for p in fitted[k].keys() | current[k].keys() if fitted[k].get(p) != current[k].get(p))
            if moved:
                what.append(f"{', '.join(moved)}: changed in place since fit; expected the values at fit, from "
                            f"which the operator was built: restore them, or build the operator again, e.g. "
                            f"set_params({k}=...)")
        if what:
            raise ValueError(
                f"{type(self).__name__}: parameters changed since fit ({', '.join(what)}); call fit again so "
                f"that the run and the fitted attributes (n_iterations_={getattr(self, 'n_iterations_', None)}, "
                f"device_={self.device_}) agree")

    def _decoder(self):
        dec = self.prior_.decoder_
        dev = module_device(dec)
        if dev is not None and dev != self.device_:
            dec = copy.deepcopy(dec).to(self.device_)
        return dec

    def _r2_against(self, X, predict, y, sample_weight=None):
        """Mean over surveys of the R^2 of the models ``predict()`` against the true models ``y``
        (``score``), weighted by ``sample_weight`` (one weight per survey; None: equal weights); ``y``
        given as images, its number of models and cells, and the weights, are checked before anything is
        inverted."""
        from ..metrics import check_model_images, survey_weights
        name = f"{type(self).__name__}.score"
        if y is None:
            raise ValueError(f"{name}: needs the true models y (n_surveys, n_cells), or "
                             "images (n_surveys, n_rows, n_cols), beside the traveltimes X; got y=None")
        check_is_fitted(self)
        self._check_traveltimes(X, reset=False)    # X's own errors first (its number of traveltimes)
        check_model_images(self, y, name, X)
        weights = None if sample_weight is None else survey_weights(sample_weight, 1 if np.ndim(y) == 1 else len(y), name,
                                                                       "sample_weight", also="None or ")
        pred = predict()
        y, pred = _rows(y, pred, name, ("y (the true models)", "the predicted models"))
        r2 = r2_score(y.T, pred.T, multioutput="raw_values")
        return float(np.average(r2, weights=weights))

    def simulate(self, models):
        """Traveltimes (ns) of models ``(n, n_cells)`` with values in [0, 1], through ``slowness_map``.

        Parameters
        ----------
        models : array-like of shape (n_models, n_cells), (n_models, n_rows, n_cols) or (n_cells,)
            Model values (not slowness), mapped to slowness (ns/m) by ``slowness_map`` (default
            :func:`paper_slowness`) in float64; their range is not checked.

        Returns
        -------
        ndarray of float64 of shape (n_models, n_data)
            The fitted operator's traveltimes, ns (one row for one model).

        Raises
        ------
        ValueError
            On a wrong shape or number of cells, images of another grid shape, non-real values, a
            parameter changed since fit, or a slowness the operator refuses.
        """
        check_is_fitted(self)
        self._check_unchanged_params()
        m = _real_array(models, f"{type(self).__name__}.simulate", "models")
        check_image_grid(self, m, f"{type(self).__name__}.simulate", "models", "models")
        m = m.reshape(1, -1) if m.ndim == 1 else m.reshape(m.shape[0], -1)
        if m.shape[1] != self.n_cells_:
            raise ValueError(f"{type(self).__name__}.simulate: models must have shape (n_models, "
                             f"{self.n_cells_}) (or one model of {self.n_cells_} cells), got "
                             f"{np.shape(models)}")
        fn = self.slowness_map or paper_slowness
        s = fn(torch.tensor(np.ascontiguousarray(m), dtype=torch.float64)).numpy()
        return np.asarray(self.operator_.response(s)).reshape(m.shape[0], -1)

    # -- the engine ------------------------------------------------------------------------------------
    def _problem(self, Y, sigma, *, allow_pending, nonlinear_gradient=None):
        """The :class:`~.problem.LatentProblem` of surveys ``Y``, ``_rows_param`` rows each."""
        return LatentProblem(self._decoder(), self.slowness_map or paper_slowness, self.operator_, Y,
                             sigma, int(getattr(self, self._rows_param)), self.device_,
                             nonlinear_gradient=nonlinear_gradient or self.nonlinear_gradient,
                             allow_pending=allow_pending, precision=getattr(self, "precision", "float32"))

    def _extra_bytes_per_row(self, problem):
        """What a row holds besides the decoder's activations and the common records, in bytes, as
        ``(on the device during the run, on the host during the run)``: the subclass's own accumulators
        (:meth:`_check_batch_fits`)."""
        return 0, 0

    def _check_batch_fits(self, problem, n_surveys, n_iterations, advice, *, result_histories, gradient=True):
        """MemoryError, before the batch's run, where its ``n_surveys x rows`` rows cannot fit
        (:mod:`latentinv._memory`). Every term is a lower bound of what the run holds, so that a run that
        fits is never refused: the decoder's activations (kept for the gradient; only its output without
        ``gradient``), the histories of ``n_iterations`` on the device (allocated whole), the best model and
        latent, the full traveltimes, the subclass's accumulators, and the result: its models and the
        ``result_histories`` per-iteration float64 arrays it surely keeps (0 where a run may stop early).
        On a CPU the activations are gone when the result is assembled: the larger of the two counts.
        ``advice(max_surveys)`` says what to pass instead, given how many surveys (at least one) would fit at
        once; where none fits, the message names the rows or the iterations to lower."""
        from .._memory import _size, check_fits, saved_bytes_per_row
        rows = int(getattr(self, self._rows_param))
        z = torch.zeros(1, self.n_components_, device=self.device_, dtype=problem.dtype)
        activations = saved_bytes_per_row(problem.decode, z, grad=gradient)     # the models and their slowness
        P, d = problem.operator.n_params, self.n_components_
        device_extra, host_extra = self._extra_bytes_per_row(problem)
        records = 4 * ((3 if problem.weighted else 2) * n_iterations + P + d + problem.n_data) + device_extra
        result = 8 * (result_histories * n_iterations + P + d) + host_extra
        kept = "the decoder's " + ("activations kept for the gradient" if gradient else "output")
        if self.device_.type == "cpu":
            needs = [(self.device_, records + max(activations, result), f"{kept}, the records, the result")]
        else:
            needs = [(self.device_, activations + records, f"{kept}, the records"),
                     (torch.device("cpu"), result, "the result")]
        per_iteration = 4 * (3 if problem.weighted else 2) + 8 * result_histories     # bytes per row

        def fitting(room, per_row):
            """``advice`` for the surveys that fit; where none does, what to lower: the rows, or (not even
            one row fits) the iterations, whose records every row keeps."""
            if room >= per_row * rows:
                return advice(int(room // (per_row * rows)))
            if room >= per_row:
                return f"Not even one survey fits: lower {self._rows_param} to at most {int(room // per_row)}."
            return (f"Not even one {self._row_noun} fits: one takes {_size(per_row)}, "
                    f"{_size(per_iteration * n_iterations)} of it the records of its {n_iterations} iterations; "
                    f"run fewer iterations ({self._iterations_param}).")

        for device, per_row, parts in needs:
            check_fits(type(self).__name__, n_surveys * rows, per_row, device, parts=parts,
                       what=f"{n_surveys} surveys x {self._rows_param}={rows} = {n_surveys * rows} rows",
                       advice=lambda room: fitting(room, per_row))

    def _check_survey_starts(self, Y, same_x=True):
        """ValueError unless per-survey ``initial_latents`` belong to the surveys ``Y``: one array for each,
        and (``same_x``) ``Y`` the X given to fit, whose rows they pair with (another X of as many surveys,
        such as a cross-validation's fold, would start each survey from another's array without a word)."""
        z0 = self.initial_latents_
        if z0 is None or z0.dim() == 2:
            return
        name, rows = type(self).__name__, getattr(self, self._rows_param)
        one_for_all = f"or one ({rows}, {z0.shape[-1]}) array for every survey"
        if z0.shape[0] != len(Y):
            raise ValueError(f"{name}: initial_latents holds starting latents for {z0.shape[0]} surveys, but X "
                             f"has {len(Y)}; give one array per survey of X, {one_for_all}")
        if same_x and traveltimes_digest(Y).hexdigest() != getattr(self, "_survey_starts_digest", None):
            raise ValueError(f"{name}: initial_latents holds one array per survey of the X given to fit, and "
                             f"this X is another ({len(Y)} surveys of other traveltimes): its arrays would start "
                             f"other surveys than their own (e.g. a cross-validation's folds, whose rows the "
                             f"estimator cannot know). Fit on this X, {one_for_all} (in a search)")

    def _start_latents(self, seed, n_surveys, surveys=slice(None)):
        """The rows' starting latents ``(n_surveys * n_rows, d)``: ``initial_latents`` (one array for every
        survey, or one per survey: those of ``surveys``, the slice of X these are, e.g. a chunk of a
        parallel run; checked against X by :meth:`_check_survey_starts`), else drawn from ``seed``, the
        same for every survey."""
        z0 = self.initial_latents_
        if z0 is None:
            z0 = initial_latents(seed, int(getattr(self, self._rows_param)), self.n_components_,
                                 self.latent_distribution_)
        if z0.dim() == 2:
            return z0.repeat(n_surveys, 1)
        z0 = z0[surveys]
        return z0.reshape(-1, z0.shape[-1])
