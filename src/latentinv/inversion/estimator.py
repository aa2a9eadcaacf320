"""The scikit-learn estimator of the paper's inversion: :class:`LatentInverter`."""
from __future__ import annotations

import copy
import math
import numbers

import numpy as np
import torch
from sklearn.base import BaseEstimator, RegressorMixin, clone
from sklearn.metrics import r2_score
from sklearn.utils.validation import check_consistent_length, check_is_fitted, validate_data

from .._allocator import tune_malloc_for_tensors
from .equations import chi_mean, paper_slowness
from .generator import (TorchGenerator, check_generator_output, check_geometry, module_device,
                        prior_is_fitted, probe_latents)
from .problem import LatentProblem
from .randomness import EpochStreams, as_seed, initial_latents
from .runtime import resolve_device, torch_threads
from .sgd import SGDSettings, run_sgd

__all__ = ["LatentInverter"]


def _max_traveltime(n_data):
    """Largest traveltime (ns) whose squared residuals, summed over ``n_data``, stay finite in float32."""
    return math.sqrt(float(np.finfo(np.float32).max) / (4.0 * max(int(n_data), 1)))


def _param_snapshot(params):
    return {k: copy.deepcopy(v) if isinstance(v, (np.ndarray, list, tuple, dict)) else v
            for k, v in params.items()}


def _same_param(a, b):
    if a is b:
        return True
    if isinstance(a, (np.ndarray, list, tuple)) or isinstance(b, (np.ndarray, list, tuple)):
        try:
            return bool(np.array_equal(np.asarray(a), np.asarray(b)))
        except (TypeError, ValueError):
            return False
    if isinstance(a, (numbers.Number, str, type(None))) and isinstance(b, (numbers.Number, str, type(None))):
        return type(a) is type(b) and a == b
    return False



class LatentInverter(RegressorMixin, BaseEstimator):
    """Traveltime inversion by stochastic gradient descent in the latent space of a generator.

    Lopez-Alvis et al. (2021), Section 2.4, Eqs. 20-25 (linear operator) and Eq. 28 (nonlinear).
    All starts of all surveys advance together as one batch of latent vectors, on CPU or CUDA.

    Parameters
    ----------
    prior : VAEPrior, FrozenEstimator or generator, default=None
        The generative prior (see the module's generator protocol). ``None``: an unfitted
        ``VAEPrior()`` trained on ``y`` in :meth:`fit`.
    operator : ForwardOperator
        Slowness per cell (ns/m) -> traveltimes (ns); ``n_params`` must equal the generator's
        number of cells. Linear operators use a gathered sparse kernel (only the batch rays are
        evaluated with autograd); nonlinear ones enter autograd through their custom Function, whose
        backward applies the Jacobian at the current models (Eq. 28).
    slowness_map : callable, default=None
        Torch function from model values to slowness (ns/m); ``None`` is :func:`paper_slowness`
        (velocity ``0.06 + 0.02 (1 - x)`` m/ns).
    optimizer : {"sgd", "adam"}, default="sgd"
    lr : float, default=1e-2
        Initial step size (Eq. 20).
    lr_decay : float, default=0.95
        Factor applied to the step size every ``decay_every`` epochs (Eq. 21).
    decay_every : int, default=1
        Epochs between step-size decays.
    batch_size : int or None, default=25
        Rays per step; ``None`` uses all data (one iteration per epoch).
    regularization : {"ring", "origin"} or None, default="ring"
        ``"ring"``: ``lambda (||z|| - mu_chi)**2`` (Eq. 25, normal latents only); ``"origin"``:
        ``lambda ||z||**2``.
    lam : float, default=10.0
        Initial regularisation weight.
    lam_decay : float, default=0.999
        Factor applied to lambda every iteration (Eq. 22).
    n_epochs : int, default=120
        Iteration budget in epochs (``n_epochs * (n_data // batch_size)`` iterations; 3000 for the
        paper's linear case, 750 with ``n_epochs=30`` for its nonlinear case).
    n_starts : int, default=10
        Initial latent vectors per survey, drawn from the latent distribution (the same for every
        survey).
    initial_latents : array-like of shape (n_starts, n_components), default=None
        The initial latent vectors themselves (the same for every survey), instead of drawing them:
        e.g. the paper's published starts (``zinitVAE500.npy``, whose first 100 rows are its 100
        starts) to compare a run with the paper's start by start. Its number of rows must equal
        ``n_starts``; values must be finite.
    noise_std : float or array-like of shape (n_data,), default=None
        Per-datum noise standard deviation (ns). When given, residuals are weighted by ``1/sigma**2``
        in the data term and in the selection of the best model, and chi-square is reported. Note
        that weighting scales the gradient: divide ``lr`` by ``1/sigma**2`` to keep the paper's steps.
    target_misfit : float, default=None
        Early stop of a start once its full-data misfit reaches this value: data RMSE (ns), or
        ``sqrt(chi2 / n_data)`` when ``noise_std`` is given (1 = fitting to the noise level).
    nonlinear_gradient : {"paper", "exact"}, default="paper"
        Gradient of the data term for a nonlinear operator. ``"paper"``: the step of the paper's
        code, ``g'(z)^T S(x)^T (f(x) - y)`` with ``S`` the Jacobian with respect to slowness used
        directly as the gradient with respect to the model values ``x`` (Eq. 28: no factor 2 and
        no derivative of ``slowness_map``), so that :data:`NONLINEAR_SETTINGS` apply as published.
        ``"exact"``: the full chain rule of ``sum (y - f(s(g(z))))**2``, which is about 8 times
        larger with the paper's slowness map (factor 2 times ``ds/dx`` of 3.1 to 5.6 ns/m).
        Linear operators always use the exact gradient (as the paper's code does).
    clip_resample : {"uniform", "normal"}, default="uniform"
        Stochastic clipping of uniform latents (ignored for normal ones): after every step, each
        latent component outside [-1, 1] is replaced by a draw from U(-1, 1) (``"uniform"``: the
        latents stay in the prior's box) or from N(0, 1) (``"normal"``: the rule of the paper's
        published code, SGD_DGM.py, which redraws with ``torch.randn`` before each generator
        evaluation; the draw may itself lie outside [-1, 1] and is decoded as it is). The uniform-latent
        cases of :data:`PAPER_CASES` use ``"normal"``.
    random_state : int, RandomState instance or None, default=None
        Seeds the initial latents and each survey's mini-batch order.
    device : {"auto", "cpu", "cuda"}, default="auto"
    verbose : int, default=0
        Progress bar (tqdm) when > 0.

    Attributes
    ----------
    prior_ : object
        The prior used (``prior`` itself when fitted, a fitted clone otherwise).
    operator_ : ForwardOperator
    n_features_in_ : int
        Number of data (traveltimes) per survey.
    n_components_ : int
        Latent dimension ``d``.
    latent_distribution_ : str
    mu_chi_ : float
        Mean of the chi distribution with ``d`` degrees of freedom (Eq. 25).
    n_iterations_ : int
        Iterations per start.
    iterations_per_epoch_ : int
        ``n_data // batch_size`` (1 with ``batch_size=None``).
    device_ : torch.device

    Notes
    -----
    The inversion runs with the parameters validated by the last :meth:`fit`, which the fitted
    attributes describe: changing a parameter (``set_params`` or assignment) after ``fit`` makes
    :meth:`invert`, :meth:`predict` and :meth:`simulate` raise until ``fit`` is called again
    (``verbose`` excepted), so that ``n_iterations_`` is always the number of iterations run.

    Per iteration, the latents of all ``n_surveys * n_starts`` starts form one float32 tensor: one
    decoder call, one gradient (``torch.autograd.grad`` with respect to the latents only, so the
    prior's weights are never touched), one update. A linear operator's kernel is stored as padded
    (cell index, ray length) rows: the batch rays of each start are gathered (about 180 non-zeros a
    ray on the paper's grid) and differentiated through ``torch.gather``; the full-data misfit of
    every start, which selects the best model, is one sparse product without autograd. A nonlinear
    operator is called once per iteration for all models (its engine batches them) and its
    Jacobians enter through the operator's autograd Function. An operator whose engine runs in the
    background (``runs_in_background``: the C++ ShortestPathOperator) gets two jobs per iteration:
    the Dijkstra runs of the sources in each start's mini-batch first (traveltimes and the batch's
    Jacobian rows, which the step needs), then those of the other sources (traveltimes only, for
    the full-data misfit). The second job runs while the step is computed, and the iteration's
    records are completed at the next iteration; the numbers are the same as in line. Meanwhile
    torch computes with one thread on the CPU (the raytracer's workers take the cores); the
    previous thread count is restored afterwards. With ``target_misfit`` set, the runs stay in line
    (the stop decision needs the full misfit before the step).

    Randomness: the initial latents come from ``random_state`` alone (start ``k`` is the same
    whatever ``n_starts`` and for every survey); each survey's mini-batch orders (and stochastic
    clipping draws) come from generators seeded by ``random_state`` and the survey's own data, so a
    survey's result depends neither on the other surveys in ``X`` nor on their order.

    On the CPU, the first inversion of a process raises glibc's malloc thresholds (see
    ``latentinv._allocator``; ``LATENTINV_MALLOC_TUNING=0`` opts out): a batch of starts otherwise
    page-faults its activations back in every iteration.

    Examples
    --------
    >>> from latentinv import LatentInverter, StraightRayOperator, paper_crosshole
    >>> grid, survey = paper_crosshole(0.01, 6.49)
    >>> inverter = LatentInverter(prior, StraightRayOperator(grid, survey), n_starts=100)  # doctest: +SKIP
    >>> models = inverter.fit(traveltimes).predict(traveltimes)                           # doctest: +SKIP
    >>> result = inverter.invert(traveltimes); result.accepted_fraction(1.0)              # doctest: +SKIP
    """

    # overlap the full-data misfit's raytracing with the step (see _run); False computes it in line
    # (the same numbers: tests compare both)
    _pipeline_nonlinear = True

    def __init__(self, prior=None, operator=None, *, slowness_map=None, optimizer="sgd", lr=1e-2,
                 lr_decay=0.95, decay_every=1, batch_size=25, regularization="ring", lam=10.0,
                 lam_decay=0.999, n_epochs=120, n_starts=10, initial_latents=None, noise_std=None,
                 target_misfit=None, nonlinear_gradient="paper", clip_resample="uniform",
                 random_state=None, device="auto", verbose=0):
        self.prior = prior
        self.operator = operator
        self.slowness_map = slowness_map
        self.optimizer = optimizer
        self.lr = lr
        self.lr_decay = lr_decay
        self.decay_every = decay_every
        self.batch_size = batch_size
        self.regularization = regularization
        self.lam = lam
        self.lam_decay = lam_decay
        self.n_epochs = n_epochs
        self.n_starts = n_starts
        self.initial_latents = initial_latents
        self.noise_std = noise_std
        self.target_misfit = target_misfit
        self.nonlinear_gradient = nonlinear_gradient
        self.clip_resample = clip_resample
        self.random_state = random_state
        self.device = device
        self.verbose = verbose

    # -- cloning ---------------------------------------------------------------------------------------
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

    # -- tags ------------------------------------------------------------------------------------------
    def __sklearn_tags__(self):
        tags = super().__sklearn_tags__()
        tags.input_tags.positive_only = True
        tags.target_tags.required = False
        tags.target_tags.multi_output = True
        tags.target_tags.single_output = False
        tags.non_deterministic = False
        return tags

    # -- validation ------------------------------------------------------------------------------------
    def _check_params(self, n_data):
        name = type(self).__name__

        def number(value, pname, low=None, high=None, low_open=False, integer=False):
            kind = numbers.Integral if integer else numbers.Real
            if isinstance(value, bool) or not isinstance(value, kind) or not np.isfinite(value):
                what = "an integer" if integer else "a finite number"
                raise ValueError(f"{name}: {pname} must be {what}, got {value!r}")
            if low is not None and (value <= low if low_open else value < low):
                raise ValueError(f"{name}: {pname} must be {'>' if low_open else '>='} {low}, got {value!r}")
            if high is not None and value > high:
                raise ValueError(f"{name}: {pname} must be <= {high}, got {value!r}")

        if self.optimizer not in ("sgd", "adam"):
            raise ValueError(f"{name}: optimizer must be 'sgd' or 'adam', got {self.optimizer!r}")
        number(self.lr, "lr", 0, low_open=True)
        number(self.lr_decay, "lr_decay", 0, 1, low_open=True)
        number(self.decay_every, "decay_every", 1, integer=True)
        if self.batch_size is not None:
            number(self.batch_size, "batch_size", 1, n_data, integer=True)
        if self.regularization not in ("ring", "origin", None):
            raise ValueError(
                f"{name}: regularization must be 'ring', 'origin' or None, got {self.regularization!r}")
        number(self.lam, "lam", 0)
        number(self.lam_decay, "lam_decay", 0, 1, low_open=True)
        number(self.n_epochs, "n_epochs", 1, integer=True)
        number(self.n_starts, "n_starts", 1, integer=True)
        if self.target_misfit is not None:
            number(self.target_misfit, "target_misfit", 0)
        if self.nonlinear_gradient not in ("paper", "exact"):
            raise ValueError(f"{name}: nonlinear_gradient must be 'paper' or 'exact', got "
                             f"{self.nonlinear_gradient!r}")
        if self.clip_resample not in ("uniform", "normal"):
            raise ValueError(f"{name}: clip_resample must be 'uniform' or 'normal', got "
                             f"{self.clip_resample!r}")
        if self.slowness_map is not None and not callable(self.slowness_map):
            raise ValueError(f"{name}: slowness_map must be callable or None, got {self.slowness_map!r}")
        if self.noise_std is None:
            return None
        sigma = np.asarray(self.noise_std, dtype=np.float64)
        if sigma.ndim == 0:
            sigma = np.full(n_data, float(sigma))
        if sigma.shape != (n_data,) or not np.all(np.isfinite(sigma)) or np.any(sigma <= 0):
            raise ValueError(
                f"{name}: noise_std must be a positive number or an array of {n_data} positive "
                f"numbers (ns), got {self.noise_std!r}")
        return sigma

    def _check_operator(self):
        name = type(self).__name__
        op = self.operator
        if op is None or not all(hasattr(op, a) for a in ("n_data", "n_params", "forward")):
            raise ValueError(
                f"{name}: operator must be a forward operator (with n_data, n_params and forward), "
                f"got {op!r}")
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

    # -- fit -------------------------------------------------------------------------------------------
    def fit(self, X, y=None):
        """Check the traveltimes against the operator and set up the prior.

        Parameters
        ----------
        X : array-like of shape (n_surveys, n_data)
            Observed traveltimes (ns), one row per survey. Only checked: the inversion itself happens
            in :meth:`predict` / :meth:`invert`.
        y : array-like of shape (n_surveys, n_cells) or (n_surveys, n_rows, n_cols), default=None
            True models (values in [0, 1]); needed only to train an unfitted prior.

        Returns
        -------
        self : LatentInverter
        """
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
        self.device_ = resolve_device(self.device)

        prior = self.prior
        if prior is None:
            from ..prior import VAEPrior
            prior = VAEPrior()
        if prior_is_fitted(prior):
            self.prior_ = prior
        else:
            if y is None:
                raise ValueError(
                    f"{name}: the prior {type(prior).__name__} is not fitted; pass the training "
                    "models as y (or a fitted prior)")
            self.prior_ = clone(prior).fit(np.asarray(y))
        for attr in ("decoder_", "n_components", "latent_distribution"):
            if not hasattr(self.prior_, attr):
                raise ValueError(f"{name}: the prior {type(self.prior_).__name__} lacks {attr!r} "
                                 "(see the generator protocol in latentinv.inversion)")
        dist = self.prior_.latent_distribution
        if dist not in ("normal", "uniform"):
            raise ValueError(f"{name}: latent_distribution must be 'normal' or 'uniform', got {dist!r}")
        if dist == "uniform" and self.regularization == "ring":
            raise ValueError(f"{name}: regularization='ring' needs normal latents; the prior's "
                             "latents are uniform (use None or 'origin')")
        d = int(self.prior_.n_components)
        self.n_components_ = d
        self.latent_distribution_ = dist
        self.mu_chi_ = chi_mean(d)
        decoder = self._decoder()
        probes = probe_latents(d, dist).to(self.device_)
        with torch.no_grad():
            out = decoder(probes)
        if out.ndim != 2 or out.shape[1] != op.n_params:
            raise ValueError(
                f"{name}: the generator produces models of shape {tuple(out.shape)[1:]} but the "
                f"operator expects {op.n_params} cells")
        self._check_geometry(op)
        self.initial_latents_ = self._check_initial_latents(d)
        with torch.no_grad():
            self._check_generator_output(out, (self.slowness_map or paper_slowness)(out),
                                         f"at {len(probes)} test latents in fit")
        self.operator_ = op
        self.n_cells_ = int(op.n_params)
        self.iterations_per_epoch_ = op.n_data // (self.batch_size or op.n_data)
        self.n_iterations_ = self.n_epochs * self.iterations_per_epoch_
        self._fitted_params = _param_snapshot(self.get_params(deep=False))
        return self

    def _check_initial_latents(self, d):
        """``initial_latents`` as a float32 tensor (n_starts, d), or None to draw them."""
        if self.initial_latents is None:
            return None
        name = type(self).__name__
        try:
            z = np.asarray(self.initial_latents, dtype=np.float64)
        except (TypeError, ValueError):
            raise ValueError(f"{name}: initial_latents must be a numeric array of shape (n_starts, {d}), "
                             f"got {type(self.initial_latents).__name__}") from None
        if z.shape != (int(self.n_starts), d):
            raise ValueError(f"{name}: initial_latents must have shape (n_starts, n_components) = "
                             f"({self.n_starts}, {d}), got {z.shape}")
        if not np.isfinite(z).all():
            raise ValueError(f"{name}: initial_latents must be finite, got NaN or infinity")
        return torch.tensor(z, dtype=torch.float32)

    def _check_geometry(self, op):
        check_geometry(self.prior_, self.n_components_, op, type(self).__name__)

    def _check_generator_output(self, x, s, when):
        check_generator_output(x, s, self.slowness_map, self.prior_, when, type(self).__name__)

    def _check_unchanged_params(self):
        before = getattr(self, "_fitted_params", None)
        if before is None:
            return
        now = _param_snapshot(self.get_params(deep=False))
        changed = [k for k in before if k != "verbose" and not _same_param(before[k], now.get(k))]
        if changed:
            what = ", ".join(f"{k}: {before[k]!r} at fit, {now.get(k)!r} now" for k in changed)
            raise ValueError(
                f"{type(self).__name__}: parameters changed since fit ({what}); call fit again so "
                f"that the run and the fitted attributes (n_iterations_={self.n_iterations_}, "
                f"device_={self.device_}) agree")

    def _decoder(self):
        dec = self.prior_.decoder_
        dev = module_device(dec)
        if dev is not None and dev != self.device_:
            dec = copy.deepcopy(dec).to(self.device_)
        return dec

    # -- predict / invert ------------------------------------------------------------------------------
    def predict(self, X):
        """Invert each survey: the lowest-misfit model over all starts and iterations.

        Parameters
        ----------
        X : array-like of shape (n_surveys, n_data)
            Traveltimes (ns).

        Returns
        -------
        models : ndarray of shape (n_surveys, n_cells), float64
            Model values in [0, 1] (flat C order).
        """
        return self.invert(X).models

    def invert(self, X):
        """Invert each survey and return the traces (:class:`InversionResult`).

        The result also holds, per survey, the best homogeneous-velocity model's slowness and data
        RMSE (:func:`latentinv.baselines.homogeneous_fit`; one extra operator response), the baseline
        against which :meth:`InversionResult.accepted` judges an acceptance threshold.
        """
        check_is_fitted(self)
        self._check_unchanged_params()
        Y = self._check_traveltimes(X, reset=False)
        sigma = self._check_params(self.operator_.n_data)
        result = self._run(Y, sigma)
        from ..baselines import homogeneous_fit
        result.homogeneous_slowness, result.homogeneous_rmse = homogeneous_fit(self.operator_, Y, sigma)
        return result

    def score(self, X, y, sample_weight=None):
        """Mean over surveys of the R^2 of the predicted model against the true model ``y``."""
        pred = self.predict(X)
        y = np.asarray(y, dtype=np.float64).reshape(pred.shape[0], -1)
        return r2_score(y.T, pred.T, multioutput="uniform_average")

    def simulate(self, models):
        """Traveltimes (ns) of models ``(n, n_cells)`` with values in [0, 1], through ``slowness_map``."""
        check_is_fitted(self)
        self._check_unchanged_params()
        m = np.asarray(models, dtype=np.float64).reshape(-1, self.n_cells_)
        fn = self.slowness_map or paper_slowness
        s = fn(torch.tensor(m, dtype=torch.float64)).numpy()
        return np.asarray(self.operator_.response(s)).reshape(m.shape[0], -1)

    # -- the engine ------------------------------------------------------------------------------------
    def _problem(self, Y, sigma, *, allow_pending, nonlinear_gradient=None):
        """The :class:`~.problem.LatentProblem` of surveys ``Y``, ``n_starts`` rows each."""
        return LatentProblem(self._decoder(), self.slowness_map or paper_slowness, self.operator_, Y,
                             sigma, int(self.n_starts), self.device_,
                             nonlinear_gradient=nonlinear_gradient or self.nonlinear_gradient,
                             allow_pending=allow_pending)

    def _start_latents(self, seed):
        z0 = self.initial_latents_
        if z0 is None:
            z0 = initial_latents(seed, int(self.n_starts), self.n_components_, self.latent_distribution_)
        return z0

    def _run(self, Y, sigma):
        dev = self.device_
        if dev.type == "cpu":
            tune_malloc_for_tensors()     # activations of a batch of starts: see latentinv._allocator
        S, n_data = Y.shape
        K, d = int(self.n_starts), self.n_components_
        seed = as_seed(self.random_state)
        problem = self._problem(Y, sigma, allow_pending=self.target_misfit is None and self._pipeline_nonlinear)
        streams = EpochStreams(seed, Y, K, n_data, int(self.batch_size or n_data), d, self.clip_resample, dev)
        cfg = SGDSettings(
            optimizer=self.optimizer, lr=self.lr, lr_decay=self.lr_decay, decay_every=self.decay_every,
            regularization=self.regularization, lam=self.lam, lam_decay=self.lam_decay, mu_chi=self.mu_chi_,
            n_iterations=self.n_iterations_, iterations_per_epoch=self.iterations_per_epoch_,
            target_misfit=self.target_misfit, uniform=self.latent_distribution_ == "uniform")
        check = lambda x, s: self._check_generator_output(x, s, "at the initial latents of the inversion")
        progress = f"{type(self).__name__} ({S} surveys x {K} starts)" if self.verbose else None
        # a background engine's workers take the cores; the decoder's torch threads would contend with them
        with torch_threads(1 if problem.pending and dev.type == "cpu" else None):
            history, reached, diverged = run_sgd(problem, self._start_latents(seed).repeat(S, 1).to(dev),
                                                 streams, cfg, check_first=check, progress=progress)
        settings = dict({k: v for k, v in self.get_params(deep=False).items()
                         if k not in ("prior", "operator", "slowness_map")}, seed=seed,
                        n_iterations=self.n_iterations_, iterations_per_epoch=self.iterations_per_epoch_,
                        device=str(dev))
        return history.result(reached=reached, diverged=diverged, settings=settings, owner=type(self).__name__)
