"""The scikit-learn estimator of the paper's inversion: :class:`LatentInverter`."""
from __future__ import annotations

import math
import warnings

import numpy as np
import torch
from sklearn.base import RegressorMixin
from sklearn.exceptions import ConvergenceWarning
from sklearn.utils.validation import check_is_fitted

from .._allocator import tune_malloc_for_tensors
from .._checks import caller_stacklevel
from .._common import native_bfloat16 as _native_bfloat16
from . import graphed
from .base import LatentEstimatorBase, ModelScoreMixin, engine_tags
from .equations import has_a_medium, paper_slowness
from .parallel import run_chunks, survey_chunks
from .randomness import EpochStreams, replayable_seed
from .result import InversionResult
from .runtime import stop_if_cancelled, torch_threads
from .sgd import SGDSettings, run_sgd
from .stationarity import DROP, descent_misfit, is_stationary

__all__ = ["LatentInverter", "PrecisionWarning"]


class PrecisionWarning(UserWarning):
    """A reduced-precision run's selected model fits the data more than 1 % differently in float32."""


class LatentInverter(ModelScoreMixin, RegressorMixin, LatentEstimatorBase):
    """Traveltime inversion by stochastic gradient descent in the latent space of a generator.

    Lopez-Alvis et al. (2021), Section 2.4, Eqs. 20-25 (linear operator) and Eq. 28 (nonlinear).
    All starts of all surveys advance together as one batch of latent vectors, on CPU or CUDA.

    Parameters
    ----------
    prior : VAEPrior, FrozenEstimator or generator, default=None
        The generative prior (see the module's generator protocol). ``None``: an unfitted
        ``VAEPrior(random_state=random_state)`` trained on ``y`` in :meth:`fit`. An unfitted prior given
        here is trained with its own ``random_state`` (its default, None, trains another network at each
        fit: give it one to repeat a fit).
    operator : ForwardOperator
        Slowness per cell (ns/m) -> traveltimes (ns); ``n_params`` must equal the generator's
        number of cells. One's own is a subclass of :class:`~latentinv.operators.ForwardOperator`
        (see its module's "Writing an operator"). Linear operators use a gathered sparse kernel (only the batch rays are
        evaluated with autograd); nonlinear ones enter autograd through their custom Function, whose
        backward applies the Jacobian at the current models (Eq. 28).
    slowness_map : callable, default=None
        Torch function from model values to slowness (ns/m), differentiable, returning a new tensor
        like its input; ``None`` is :func:`paper_slowness`
        (velocity ``0.06 + 0.02 (1 - x)`` m/ns). fit checks it at test latents (and refuses a map
        without a gradient, e.g. computed in NumPy, or one that changes its input in place); where a selected model's
        slowness is not positive (the iterates left the region where the map is), :meth:`invert` warns.
    optimizer : {"sgd", "adam"}, default="sgd"
    lr : float, default=1e-2
        Initial step size (Eq. 20). In latent units per unit of the data term's gradient (the squared
        residuals of a mini-batch, ns**2, summed): the paper's value (Table 1) is sized for its 625 rays
        of 6-13 m in batches of 25. Fewer, shorter or differently scaled data give smaller gradients
        and fewer steps per epoch, so the SGD moves less; search over ``lr`` and ``lam`` (README).
    lr_decay : float, default=0.95
        Factor applied to the step size every ``decay_every`` epochs (Eq. 21).
    decay_every : int, default=1
        Epochs between step-size decays.
    batch_size : int or None, default=25
        Rays per step; ``None`` uses all data (one iteration per epoch).
    regularization : {"ring", "origin"} or None, default="ring"
        ``"ring"``: ``lambda (||z|| - mu_chi)**2`` (Eqs. 23-24, normal latents only); ``"origin"``:
        ``lambda ||z||**2``.
    lam : float, default=10.0
        Initial regularisation weight, in the data term's units (ns**2 per mini-batch; Table 1's value
        for the paper's survey). Against a smaller data term (fewer or shorter rays) it weighs more and
        pulls the latent norm toward ``mu_chi`` (Eq. 23) at the data's expense.
    lam_decay : float, default=0.999
        Factor applied to lambda every iteration (Eq. 22).
    n_epochs : int, default=120
        Iteration budget in epochs (``n_epochs * (n_data // batch_size)`` iterations; 3000 for the
        paper's linear case, 750 with ``n_epochs=30`` for its nonlinear case).
    n_starts : int, default=10
        Initial latent vectors per survey, drawn from the latent distribution (the same for every
        survey).
    initial_latents : array-like of shape (n_starts, n_components) or (n_surveys, n_starts, n_components), default=None
        The initial latent vectors themselves, instead of drawing them: one array for every survey
        (e.g. the paper's published starts, ``zinitVAE500.npy``, whose first 100 rows are its 100
        starts, to compare a run with the paper's start by start), or one per survey of the X given to
        :meth:`fit`, in its order (e.g. to continue each survey from its own earlier solutions,
        ``result.latents``); the latter ties the estimator to that X (a ValueError at ``fit`` for another
        number of surveys, and at :meth:`invert` for another X, e.g. a cross-validation's fold: use the
        former there). Its number of rows must equal ``n_starts``; values must be finite, and in [-1, 1]
        for a prior with uniform latents.
    noise_std : float or array-like of shape (n_data,), default=None
        Per-datum noise standard deviation (ns). When given, residuals are weighted by ``1/sigma**2``
        in the data term and in the selection of the best model, and chi-square is reported. Note
        that weighting scales the gradient: divide ``lr`` by ``1/sigma**2`` to keep the paper's steps.
    target_misfit : float, default=None
        Early stop of a start once its full-data misfit reaches this value: data RMSE (ns), or
        ``sqrt(chi2 / n_data)`` when ``noise_std`` is given (1 = fitting to the noise level).
    tol : float, default=None
        Convergence stop per start (the paper's suggestion of stopping on "a minimal change in ...
        data misfit"): a start stops when its best full-data misfit has not fallen by the relative
        amount ``tol`` for ``n_epochs_no_change`` epochs. That misfit is the sum of squared residuals
        (chi-square with ``noise_std``), not the RMSE of ``target_misfit``: a fall of ``tol`` in it is
        a fall of about ``tol / 2`` in the data RMSE. ``None``: every start runs its budget.
    n_epochs_no_change : int, default=5
        The convergence rule's window, in epochs.
    prune : {None, "halving"}, default=None
        ``"halving"``: successive halving across the starts of each survey; every ``prune_every``
        epochs each survey keeps the best ``prune_keep`` fraction of its running starts (ranked by
        their best misfit so far; at least one).
    prune_every : int, default=None
        Epochs between prunings; ``None``: ``n_epochs // (floor(log2(n_starts)) + 1)`` (at least 1),
        so that the budget splits evenly between the halving rounds.
    prune_keep : float, default=0.5
        Fraction of the running starts kept at each pruning, in (0, 1).

        Starts stopped by any rule (target, divergence, convergence, pruning) leave the batch: the
        later iterations decode and trace only the running starts, so they get cheaper. With none
        of ``target_misfit``, ``tol`` and ``prune`` set, the paper's full protocol runs unchanged.
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
    precision : {"float32", "bfloat16"}, default="float32"
        Arithmetic of the decoder during the iterations. ``"bfloat16"`` runs it under
        ``torch.autocast`` (several times faster where the CPU has native bfloat16, AVX512-BF16 or
        AMX, and on recent GPUs; refused elsewhere); the misfit, the step and the records stay in
        float32. At the end every start's selected latent is decoded again in float32, and the
        returned models, data RMSEs, chi-square and best start are those of the float32 models
        (histories keep the bfloat16 values). A :class:`PrecisionWarning` says when a survey's
        selected model's data RMSE moved by more than 1 % between the two (the guard:
        ``result.settings["bfloat16_rmse_change"]`` holds the relative changes).
    cuda_graphs : bool, default=False
        On CUDA, record one SGD iteration in a CUDA graph and replay it (``latentinv.inversion.graphed``):
        no kernel launches from Python, and the host waits for the device once per chunk of about 25
        iterations. Every start is computed in every iteration (a stopped one is masked), the
        full-data misfit is a dense product and full-data batches keep one order, so results equal
        the eager loop's to float32 rounding, not bit for bit. Needs
        ``device="cuda"``, a linear operator, and neither ``tol`` nor ``prune`` (rules that decide on
        the host); ValueError otherwise.
    random_state : int, RandomState instance or None, default=None
        Seeds the initial latents and each survey's mini-batch order (and the default prior's training,
        ``prior=None``). An int gives the same numbers at every call. A RandomState gives one int draw to
        each :meth:`invert` / :meth:`predict` call, so it advances and a second call differs (scikit-learn's
        convention), and its numbers are not those of the int it was seeded with (``RandomState(4)`` is not
        ``4`` here, unlike in :class:`~latentinv.prior.VAEPrior`: the call's int draw is its
        ``result.settings["replay_random_state"]``, which repeats the call). A ``numpy.random.Generator``
        is refused (ValueError).
    device : {"auto", "cpu", "cuda"}, default="auto"
    n_jobs : int, default=None
        Surveys inverted in parallel through joblib (scikit-learn's meaning: ``None`` is 1 unless in
        a ``joblib.parallel_backend`` context, ``-1`` all processors); inside
        ``with joblib.parallel_backend("dask"):`` the chunks run on a Dask cluster. Each worker uses
        the threads it was given (torch and the operator's engine). May change after ``fit``.
    chunk_size : int, default=None
        Surveys per chunk (one batch of ``chunk_size * n_starts`` starts, the unit of parallel work).
        ``None``: all surveys in one batch when ``n_jobs`` is None and no joblib context makes the call
        parallel; one survey per chunk otherwise, ``n_jobs=1`` included (the chunks of a parallel run,
        run in turn: its numbers are those of any ``n_jobs``, and it is slower than one batch). Results
        are bit for bit the same for a given ``chunk_size`` and the same torch threads per worker
        whatever ``n_jobs`` and the backend (a loky worker runs with its ``OMP_NUM_THREADS``, cores //
        ``n_jobs``; a serial or threading run with torch's own count); between chunk sizes, or thread
        counts, they agree to float32 rounding (a decoder may round a row differently in a batch of
        another size: about 1e-7 in the models of the tests' problems). May change after ``fit``.
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
        Mean of the chi distribution with ``d`` degrees of freedom (Eq. 23).
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
    (``verbose``, ``n_jobs``, ``chunk_size`` and the operator's ``n_threads`` excepted), so that
    ``n_iterations_`` is always the number of iterations run. The operator's own parameters count too
    (``set_params(operator__boundary_rays=...)`` rebuilds the operator in place), and so do their contents:
    an array or attribute inside a parameter changed in place (the operator was built from the values at
    fit; build it again from the new ones, then fit). The package's grids and surveys refuse such changes:
    they are immutable.

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
    _per_survey_starts = True
    _pipeline_nonlinear = True
    # run the static step of inversion.graphed without capturing it (tests compare it with the loop)
    _static_step = False

    def __init__(self, prior=None, operator=None, *, slowness_map=None, optimizer="sgd", lr=1e-2,
                 lr_decay=0.95, decay_every=1, batch_size=25, regularization="ring", lam=10.0,
                 lam_decay=0.999, n_epochs=120, n_starts=10, initial_latents=None, noise_std=None,
                 target_misfit=None, tol=None, n_epochs_no_change=5, prune=None, prune_every=None,
                 prune_keep=0.5, nonlinear_gradient="paper", clip_resample="uniform",
                 precision="float32", cuda_graphs=False, random_state=None, device="auto", n_jobs=None,
                 chunk_size=None, verbose=0):
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
        self.tol = tol
        self.n_epochs_no_change = n_epochs_no_change
        self.prune = prune
        self.prune_every = prune_every
        self.prune_keep = prune_keep
        self.nonlinear_gradient = nonlinear_gradient
        self.clip_resample = clip_resample
        self.random_state = random_state
        self.device = device
        self.precision = precision
        self.cuda_graphs = cuda_graphs
        self.n_jobs = n_jobs
        self.chunk_size = chunk_size
        self.verbose = verbose

    # -- tags ------------------------------------------------------------------------------------------
    def __sklearn_tags__(self):
        return engine_tags(super().__sklearn_tags__())

    # -- validation ------------------------------------------------------------------------------------
    def _check_params(self, n_data):
        name = type(self).__name__
        number = self._check_number
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
        if self.n_jobs is not None:
            number(self.n_jobs, "n_jobs", integer=True)
            if self.n_jobs == 0:
                raise ValueError(f"{name}: n_jobs must be a non-zero integer or None, got 0")
        if self.chunk_size is not None:
            number(self.chunk_size, "chunk_size", 1, integer=True)
        if self.tol is not None:
            number(self.tol, "tol", 0, 1, low_open=True)
        number(self.n_epochs_no_change, "n_epochs_no_change", 1, integer=True)
        if self.prune not in (None, "halving"):
            raise ValueError(f"{name}: prune must be None or 'halving', got {self.prune!r}")
        if self.prune_every is not None:
            number(self.prune_every, "prune_every", 1, integer=True)
        number(self.prune_keep, "prune_keep", 0, low_open=True)
        if self.prune_keep >= 1:
            raise ValueError(f"{name}: prune_keep must be < 1 (the fraction of starts kept), got "
                             f"{self.prune_keep!r}")
        if self.nonlinear_gradient not in ("paper", "exact"):
            raise ValueError(f"{name}: nonlinear_gradient must be 'paper' or 'exact', got "
                             f"{self.nonlinear_gradient!r}")
        if self.clip_resample not in ("uniform", "normal"):
            raise ValueError(f"{name}: clip_resample must be 'uniform' or 'normal', got "
                             f"{self.clip_resample!r}")
        return self._check_common_params(n_data)

    def _idle_params(self, dist):
        no_ring = self.regularization is None
        return [("prune_every", self.prune is None, "without prune='halving'"),
                ("prune_keep", self.prune is None, "without prune='halving'"),
                ("n_epochs_no_change", self.tol is None, "without tol"),
                # lam=0 and lam_decay=1 say "no regularization" too (Table 1's SAnnn, SSbnd)
                ("lam", no_ring and self.lam != 0, "with regularization=None"),
                ("lam_decay", no_ring and self.lam_decay != 1, "with regularization=None"),
                ("clip_resample", dist != "uniform",
                 f"with the prior's {dist} latents (stochastic clipping applies to uniform ones)")]

    def _check_initial_latents(self, d):
        z = super()._check_initial_latents(d)
        if z is not None and self.latent_distribution_ == "uniform" and bool((z.abs() > 1).any()):
            where = tuple(int(v) for v in torch.nonzero(z.abs() > 1)[0])
            at = (f"survey {where[0]}, " if z.dim() == 3 else "") + f"start {where[-2]}, component {where[-1]}"
            raise ValueError(f"{type(self).__name__}: initial_latents must lie in [-1, 1], the box of the prior's "
                             f"uniform latents (stochastic clipping keeps the iterates there, but a start outside "
                             f"it is decoded as it is and may be returned as the best model); got "
                             f"{float(z[where]):g} at {at}")
        return z

    def _check_latent_distribution(self, dist):
        if dist == "uniform" and self.regularization == "ring":
            raise ValueError(f"{type(self).__name__}: regularization='ring' needs normal latents; the "
                             "prior's latents are uniform (use None or 'origin')")

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
        return self._fit(X, y)

    def _fit_schedule(self, op):
        if self.precision not in ("float32", "bfloat16"):
            raise ValueError(f"{type(self).__name__}: precision must be 'float32' or 'bfloat16', got "
                             f"{self.precision!r}")
        if self.precision == "bfloat16" and not _native_bfloat16(self.device_):
            raise ValueError(
                f"{type(self).__name__}: precision='bfloat16' needs native bfloat16 arithmetic on "
                f"{self.device_} (AVX512-BF16 or AMX on a CPU, compute capability 8.0 on a GPU), which "
                "this machine lacks: emulated bfloat16 is slower than float32; use 'float32'")
        if not isinstance(self.cuda_graphs, bool):
            raise ValueError(f"{type(self).__name__}: cuda_graphs must be True or False, got {self.cuda_graphs!r}")
        if self.cuda_graphs:
            why = (f"the device is {self.device_} (CUDA graphs need device='cuda')" if self.device_.type != "cuda"
                   else graphed.unsupported(bool(getattr(op, "is_linear", False)), self.tol, self.prune))
            if why is not None:
                raise ValueError(f"{type(self).__name__}: cuda_graphs=True cannot run here: {why}")
        self.iterations_per_epoch_ = op.n_data // (self.batch_size or op.n_data)
        self.n_iterations_ = self.n_epochs * self.iterations_per_epoch_

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
        against which :meth:`InversionResult.accepted` judges an acceptance threshold. A DataScaleWarning
        says when a survey's traveltimes are not within a factor 3 (median over the data) of those of
        the prior's own models (computed at fit): data in other units than ns, or of a medium that
        ``slowness_map`` does not describe, or when ``noise_std`` is not within 1e-5 to 1 times their
        median (another unit than ns). A :class:`~latentinv.baselines.BaselineWarning` says when a
        survey's selected model fits its data no better than that homogeneous model: a poor inversion,
        whatever the cause. A ``ConvergenceWarning`` says when a step along the full-data gradient from a
        survey's selected latent lowers its data RMSE by more than 10 % (``result.stationary``; the
        data not already fitted within ``noise_std`` or 0.1 % of their median): the step schedule ran out
        before the SGD converged (one gradient and 9 trial points per survey, :mod:`.stationarity`).

        Parameters
        ----------
        X : array-like of shape (n_surveys, n_data)
            Observed traveltimes (ns), one row per survey.

        Returns
        -------
        result : InversionResult
            Per survey: the selected model, every start's model, latents, data RMSE and histories.

        Raises
        ------
        ValueError
            On traveltimes of a wrong shape, negative, NaN or inf, or a parameter changed since
            :meth:`fit`.
        """
        check_is_fitted(self)
        self._check_unchanged_params()
        Y = self._check_traveltimes(X, reset=False)
        sigma = self._check_params(self.operator_.n_data)
        self._warn_if_off_scale(Y, sigma)
        # once per call: every chunk starts from the same latents
        seed, replay = replayable_seed(self.random_state, type(self).__name__)
        self._check_survey_starts(Y)        # before any chunk runs
        chunks = survey_chunks(len(Y), self.chunk_size, self.n_jobs)
        if len(chunks) == 1:
            result = self._run(Y, sigma, seed)
        else:
            # the estimator goes to each worker once (scattered)
            parts = run_chunks(self, Y, sigma, seed, chunks, self.n_jobs)
            result = InversionResult.concatenate(parts)
            if "bfloat16_rmse_change" in result.settings:
                self._warn_if_precision_moved(result.settings["bfloat16_rmse_change"])
        result.settings["replay_random_state"] = replay     # random_state=replay repeats this call
        from ..baselines import homogeneous_fit
        result.homogeneous_slowness, result.homogeneous_rmse = homogeneous_fit(self.operator_, Y, sigma)
        self._warn_if_no_better_than_homogeneous(result)
        self._warn_if_impossible(result)
        self._warn_if_not_stationary(result)
        return result

    def _warn_if_not_stationary(self, result):
        """A ConvergenceWarning for the surveys whose selected model is not a minimum of the misfit
        (``result.stationary``): a step along the full-data gradient lowers its data RMSE much."""
        bad = np.flatnonzero(~result.stationary)
        if bad.size:
            at = result.data_rmse[bad, result.best_start[bad]]
            j = int(np.argmax(1 - result.descent_rmse[bad] / at))
            k = int(bad[j])
            warnings.warn(
                f"{type(self).__name__}: the selected models of {bad.size} of {result.n_surveys} surveys are "
                f"not minima of the data misfit: a step along its full-data gradient lowers it by more than "
                f"{100 * DROP:.0f} % (survey {k}: data RMSE {at[j]:.4g} -> "
                f"{result.descent_rmse[k]:.4g} ns; result.descent_rmse, result.stationary). The step size "
                f"decayed, or the regularization held the latents, before the SGD converged: raise lr, or "
                f"n_epochs with lr_decay nearer 1, or lower lam. Their units are the data term's, sized for "
                f"the paper's survey of 625 rays (README, 'A scikit-learn example').",
                ConvergenceWarning, stacklevel=caller_stacklevel())

    def _warn_if_impossible(self, result):
        """A UserWarning for the surveys whose selected model has a non-positive or non-finite slowness
        through ``slowness_map``: fit checks the map at test latents only, and the iterates may leave the
        region where it is positive (the paper's map is positive on [0, 1], where its decoders' outputs lie).
        Such a model's traveltimes are a linear formula's, not a medium's."""
        fn = self.slowness_map or paper_slowness
        with torch.no_grad():
            s = fn(torch.as_tensor(result.models, dtype=torch.float32, device=self.device_))
        bad = np.flatnonzero((~has_a_medium(s)).cpu().numpy())
        if bad.size:
            k = int(bad[0])
            warnings.warn(
                f"{type(self).__name__}: the selected models of {bad.size} of {len(s)} surveys (first: survey "
                f"{k}) have non-positive or non-finite slowness through slowness_map "
                f"{getattr(fn, '__name__', type(fn).__name__)} (down to {float(s[k].min()):.4g}): no medium has "
                f"them, and their traveltimes are not a medium's. The iterates left the region where the map is "
                f"positive: use a slowness_map positive for every model the generator can return, or check the "
                f"data's units.", UserWarning, stacklevel=caller_stacklevel())

    def _warn_if_no_better_than_homogeneous(self, result):
        """A BaselineWarning for the surveys whose selected model fits no better than the best
        homogeneous-velocity model (:func:`latentinv.baselines.warn_if_no_better_than_homogeneous`)."""
        from ..baselines import warn_if_no_better_than_homogeneous
        best = np.min(np.where(np.isfinite(result.data_rmse), result.data_rmse, np.inf), axis=1)
        warn_if_no_better_than_homogeneous(type(self).__name__, best, result.homogeneous_rmse)

    # -- the engine ------------------------------------------------------------------------------------
    def _prune_every(self):
        if self.prune_every is not None:
            return int(self.prune_every)
        return max(1, int(self.n_epochs) // (int(math.log2(int(self.n_starts))) + 1))

    def _run(self, Y, sigma, seed, chunked=False, surveys=slice(None)):
        dev = self.device_
        if dev.type == "cpu":
            tune_malloc_for_tensors()     # activations of a batch of starts: see latentinv._allocator
        S, n_data = Y.shape
        K, d = int(self.n_starts), self.n_components_
        problem = self._problem(Y, sigma, allow_pending=self.target_misfit is None and self._pipeline_nonlinear)
        # the result keeps 4 per-iteration histories (5 with chi-square) of every iteration run: counted
        # only where no rule can stop the run early
        stops_early = self.target_misfit is not None or self.tol is not None or self.prune == "halving"
        self._check_batch_fits(problem, S, self.n_iterations_, lambda n: (
            f"Pass chunk_size={n} or less (surveys per batch; with n_jobs=J, {n} divided by J: the workers "
            f"share the memory), or lower n_starts (then fit again)."),
            result_histories=0 if stops_early else (5 if problem.weighted else 4))
        streams = EpochStreams(seed, Y, K, n_data, int(self.batch_size or n_data), d, self.clip_resample, dev)
        cfg = SGDSettings(
            optimizer=self.optimizer, lr=self.lr, lr_decay=self.lr_decay, decay_every=self.decay_every,
            regularization=self.regularization, lam=self.lam, lam_decay=self.lam_decay, mu_chi=self.mu_chi_,
            n_iterations=self.n_iterations_, iterations_per_epoch=self.iterations_per_epoch_,
            target_misfit=self.target_misfit, uniform=self.latent_distribution_ == "uniform",
            tol=self.tol, n_epochs_no_change=self.n_epochs_no_change, prune_keep=self.prune_keep,
            prune_every=self._prune_every() if self.prune == "halving" else None)
        check = lambda x, s: self._check_generator_output(x, s, "at the initial latents of the inversion")
        progress = f"{type(self).__name__} ({S} surveys x {K} starts)" if self.verbose else None
        # a background engine's workers take the cores; torch's CPU threads would contend with them (on
        # CUDA too: the CPU side there is a few small operations, and OpenMP workers spin after each)
        with torch_threads(1 if problem.pending else None):
            z0 = self._start_latents(seed, S, surveys).to(dev)
            if self.cuda_graphs or self._static_step:
                history, stopping = graphed.run_sgd_static(problem, z0, streams, cfg, capture=self.cuda_graphs,
                                                           check_first=check, progress=progress)
            else:
                history, stopping = run_sgd(problem, z0, streams, cfg, check_first=check, progress=progress)
        settings = dict({k: v for k, v in self.get_params(deep=False).items()
                         if k not in ("prior", "operator", "slowness_map")}, seed=seed,
                        n_iterations=self.n_iterations_, iterations_per_epoch=self.iterations_per_epoch_,
                        device=str(dev))
        result = history.result(stopping, settings=settings, owner=type(self).__name__)
        stop_if_cancelled()     # a chunk whose loop ended as another failed: no rescoring, no check
        if self.precision != "float32":
            # a chunk's guard is warned by invert, over all the chunks (a worker process's warnings are lost)
            result = self._rescore_in_float32(result, problem, warn=not chunked)
        self._check_stationary(result, problem, Y, sigma)
        return result

    def _check_stationary(self, result, problem, Y, sigma):
        """``result.descent_rmse`` and ``result.stationary``: a line search along the full-data gradient
        from each survey's selected latent (:mod:`.stationarity`; invert warns over all the chunks)."""
        rows = np.arange(len(Y))
        z = torch.tensor(result.latents[rows, result.best_start], dtype=torch.float32, device=self.device_)
        at, best = descent_misfit(problem, Y, sigma, z, uniform=self.latent_distribution_ == "uniform")
        result.descent_rmse = best.rmse.cpu().numpy().astype(np.float64)
        result.stationary = is_stationary(at, best, Y) | result.reached_target[rows, result.best_start]

    def _rescore_in_float32(self, result, problem, warn=True):
        """Every start's selected latent decoded again in float32: models, data RMSE, chi-square and
        best start from those; a PrecisionWarning where a selected model's data RMSE moved by > 1 %."""
        S, K, d = result.latents.shape
        z = torch.tensor(result.latents.reshape(S * K, d), dtype=torch.float32, device=self.device_)
        with torch.no_grad():
            x, s = problem.decode(z, precision="float32")
            m = problem.misfit(problem.full_traveltimes(x, s))
        rows = np.arange(S)
        before = result.data_rmse[rows, result.best_start]
        result.start_models = x.cpu().numpy().astype(np.float64).reshape(S, K, -1)
        result.data_rmse = m.rmse.cpu().numpy().astype(np.float64).reshape(S, K)
        if m.chi2 is not None:
            result.chi2 = m.chi2.cpu().numpy().astype(np.float64).reshape(S, K)
        value = m.value.cpu().numpy().reshape(S, K)
        result.best_start = np.argmin(np.where(np.isfinite(value), value, np.inf), axis=1)
        result.models = result.start_models[rows, result.best_start]
        change = np.abs(result.data_rmse[rows, result.best_start] - before) / np.maximum(before, 1e-30)
        result.settings["bfloat16_rmse_change"] = change.tolist()
        if warn:
            self._warn_if_precision_moved(change)
        return result

    def _warn_if_precision_moved(self, change):
        """The PrecisionWarning of the surveys (indices in X) whose selected model's data RMSE moved by > 1 %."""
        change = np.asarray(change, dtype=np.float64)
        if np.any(change > 0.01):
            warnings.warn(
                f"{type(self).__name__}: with precision='bfloat16' the selected model's data RMSE moved by "
                f"up to {100 * change.max():.2f} % (surveys {np.flatnonzero(change > 0.01).tolist()}) when "
                "decoded again in float32 (the returned values); bfloat16 guided the search less "
                "accurately than 1 %: consider precision='float32'", PrecisionWarning,
                stacklevel=caller_stacklevel())
