"""Stochastic-gradient inversion in the latent space of a deep generative prior.

:class:`LatentInverter` implements the inversion of Lopez-Alvis, Laloy, Nguyen & Hermans (2021),
Section 2.4 (Eqs. 20-25 for the linear operator, Eq. 28 for the nonlinear one): the latent vector
``z`` of a generator ``g`` is updated by (mini-batch) stochastic gradient descent on

    C(z) = sum_{i in batch} w_i (y_i - f_i(s(g(z))))**2 + lambda_k R(z)            (Eq. 24)

with ``s`` the map from model values in [0, 1] to slowness (ns/m), ``f`` the forward operator
(traveltimes, ns), ``w_i = 1 / sigma_i**2`` when per-datum noise standard deviations are given
(``w_i = 1`` otherwise, as in the paper), and the regularisation

- ``"ring"``:   R(z) = (||z|| - mu_chi)**2, mu_chi the mean of the chi distribution with ``d``
  degrees of freedom (Eq. 25; 4.4166 for d = 20), gradient ``2 lambda (||z|| - mu_chi) z / ||z||``;
- ``"origin"``: R(z) = ||z||**2.

Schedules: the learning rate decays by ``lr_decay`` every ``decay_every`` epochs (Eq. 21,
:func:`learning_rate_schedule`) and the regularisation weight by ``lam_decay`` every iteration
(Eq. 22, :func:`regularization_schedule`). Mini-batches are drawn without replacement within each
epoch (``n_data // batch_size`` iterations per epoch; the remainder rays of a permutation are
skipped in that epoch, as in the paper's code). Every iterate's model is scored on the full data and
the lowest-misfit model over all starts and iterations is kept.

Generator protocol
------------------
``prior`` may be

(a) a :class:`~latentinv.prior.VAEPrior` (or any scikit-learn estimator with the attributes below
    once fitted). Unfitted: it is cloned and fitted on the true models ``y`` in :meth:`LatentInverter.fit`.
    Fitted (as judged by :func:`sklearn.utils.validation.check_is_fitted`), or wrapped in
    :class:`sklearn.frozen.FrozenEstimator`: used as is, never retrained;
(b) any object exposing

    - ``decoder_``: a torch ``nn.Module`` mapping float32 latents ``(batch, n_components)`` to
      float32 models ``(batch, n_cells)`` (flat C order, values in [0, 1]), differentiable;
    - ``n_components``: the latent dimension ``d``;
    - ``latent_distribution``: ``"normal"`` (standard normal latents) or ``"uniform"`` (latents
      uniform in [-1, 1], with stochastic clipping after every step, as in the SGAN inversions of
      Laloy et al., 2019: a component outside [-1, 1] is redrawn, see ``clip_resample``);
    - optionally ``image_shape_`` or ``image_shape``: ``(n_rows, n_cols)`` of the models, checked
      against the operator's grid (a 129 x 65 prior on a 65 x 129 grid has the right number of
      cells but the wrong geometry).

  :class:`TorchGenerator` wraps a user's own module (an SGAN generator, say) into this protocol.
  Objects without ``fit`` are taken as fitted.

  The generator's models are checked in :meth:`LatentInverter.fit` (on a few fixed latents) and at
  the first iteration of every inversion (on every start): they must be finite, inside the slowness
  map's domain (``slowness_map.domain`` when the map declares one; :func:`paper_slowness` is defined
  for ``x < 4``, where its velocity is positive, and the paper's models lie in [0, 1]) and give finite,
  positive slowness.

Transductive inversion
----------------------
``fit`` sets up the prior and checks it against the operator; the inversion of a set of surveys
happens in :meth:`LatentInverter.predict` / :meth:`LatentInverter.invert`, which do not change the
estimator.

Table 1 of the paper
--------------------
Every case of Table 1 is one complete set of parameters, :data:`PAPER_CASES`, so that
``LatentInverter(prior, operator, **PAPER_CASES[name])`` runs that case (the paper ran 100 starts:
add ``n_starts=PAPER_N_STARTS``). ``VS`` = VAE prior and SGD, ``SA`` / ``SS`` = uniform-latent (SGAN)
generator with Adam / SGD; then batch (``b``) or all data (``n``), regularisation ring (``r``),
origin (``o``) or none (``n``), and decay (``d``) or not (``n``). The linear-operator defaults are
those of VSbrd. For the nonlinear (shortest-path) operator the paper uses ``lr=0.1, lr_decay=0.8,
decay_every=5, lam=1, lam_decay=0.99, n_epochs=30`` (750 iterations with batches of 25 rays), see
:data:`NONLINEAR_SETTINGS`.
"""
from __future__ import annotations

import contextlib
import copy
import hashlib
import math
import numbers
import warnings
from dataclasses import dataclass, field
from typing import Optional

import numpy as np
import torch
from sklearn.base import BaseEstimator, RegressorMixin, clone
from sklearn.exceptions import NotFittedError
from sklearn.metrics import r2_score
from sklearn.utils import check_random_state
from sklearn.utils.validation import check_consistent_length, check_is_fitted, validate_data

from ._allocator import tune_malloc_for_tensors

__all__ = [
    "LatentInverter", "TorchGenerator", "InversionResult", "paper_slowness", "chi_mean",
    "learning_rate_schedule", "regularization_schedule", "ring_penalty", "ring_gradient",
    "PAPER_CASES", "PAPER_N_STARTS", "NONLINEAR_SETTINGS",
]

#: Settings of the paper's nonlinear (shortest-path) experiment (750 iterations), as the issue that
#: specified them gives them. The paper's published notebook (jlalvis/VAE_SGD,
#: DGM_inv_nonlinear_comparison.ipynb) ran lam=10.0 instead of 1.0, all else equal; pass ``lam=10``
#: to follow it.
NONLINEAR_SETTINGS = dict(lr=0.1, lr_decay=0.8, decay_every=5, batch_size=25, regularization="ring",
                          lam=1.0, lam_decay=0.99, n_epochs=30)

#: Number of initial latent vectors per survey in the paper's comparison of Table 1 (Section 3.2).
PAPER_N_STARTS = 100

_PAPER_NO_REGULARIZATION = dict(regularization=None, lam=0.0, lam_decay=1.0)
_PAPER_RING_OR_ORIGIN = dict(lam=10.0, lam_decay=0.999)

#: The cases of the paper's Table 1 (Section 3.2), each a complete set of inversion parameters:
#: ``LatentInverter(prior, operator, **PAPER_CASES[name])`` runs the case (with the estimator's
#: default ``n_starts``; the paper ran :data:`PAPER_N_STARTS`). From the table and its text: 3000
#: iterations for every case, i.e. 120 epochs of 25 batches of 25 rays (of 625, drawn without
#: replacement) or 3000 full-data iterations (``batch_size=None`` counts one iteration per epoch);
#: lambda = 10 and c_lambda = 0.999 where a regularisation is used (``lam=0`` otherwise); the step
#: size decays by c_l every epoch where "decreasing" is "yes". Where the text leaves a choice open, the
#: paper's published code (jlalvis/VAE_SGD, SGD_DGM.py) decides:
#:
#: - the full-data cases (VSnnn, SAnnn) minimise the plain sum of squared residuals over all 625 data
#:   with the table's step size, unscaled (the published code uses the same loss for any batch size);
#: - the uniform-latent cases (SAnnn, SSbnd) use stochastic clipping with ``clip_resample="normal"``:
#:   a latent component that leaves [-1, 1] is replaced by a standard-normal draw (``torch.randn``
#:   in the published code), which may itself lie outside [-1, 1];
#: - Adam uses torch's defaults (betas 0.9 and 0.999, eps 1e-8), as this estimator does.
PAPER_CASES = {
    "VSnnn": dict(optimizer="sgd", batch_size=None, lr=1e-4, lr_decay=1.0, decay_every=1,
                  n_epochs=3000, **_PAPER_NO_REGULARIZATION),
    "VSbnn": dict(optimizer="sgd", batch_size=25, lr=1e-4, lr_decay=1.0, decay_every=1,
                  n_epochs=120, **_PAPER_NO_REGULARIZATION),
    "VSbod": dict(optimizer="sgd", batch_size=25, lr=1e-2, lr_decay=0.95, decay_every=1,
                  n_epochs=120, regularization="origin", **_PAPER_RING_OR_ORIGIN),
    "VSbrd": dict(optimizer="sgd", batch_size=25, lr=1e-2, lr_decay=0.95, decay_every=1,
                  n_epochs=120, regularization="ring", **_PAPER_RING_OR_ORIGIN),
    # uniform-latent (SGAN-like) generator: pass a generator with latent_distribution="uniform"
    "SAnnn": dict(optimizer="adam", batch_size=None, lr=1e-2, lr_decay=1.0, decay_every=1,
                  n_epochs=3000, clip_resample="normal", **_PAPER_NO_REGULARIZATION),
    "SSbnd": dict(optimizer="sgd", batch_size=25, lr=1e-3, lr_decay=0.95, decay_every=1,
                  n_epochs=120, clip_resample="normal", **_PAPER_NO_REGULARIZATION),
}

# a start whose latent norm exceeds this many times sqrt(d) is declared diverged
_DIVERGENCE_FACTOR = 100.0
_ADAM_BETAS = (0.9, 0.999)
_ADAM_EPS = 1e-8


# ---------------------------------------------------------------------------------------------------
# small pure functions (the paper's equations)
# ---------------------------------------------------------------------------------------------------
def paper_slowness(x):
    """Slowness (ns/m) of model values ``x`` in [0, 1]: ``1 / (0.06 + 0.02 (1 - x))``.

    Velocity is 0.06 m/ns where ``x = 1`` and 0.08 m/ns where ``x = 0`` (the paper's test case).
    Works on torch tensors and NumPy arrays. The formula is defined where the velocity is positive,
    ``x < 4`` (:attr:`paper_slowness.domain`): ``x = 4`` gives infinite slowness and ``x > 4``
    negative slowness. The paper's models lie in [0, 1]; values between 1 and 4 (or below 0)
    extrapolate its linear velocity law.
    """
    return 1.0 / (0.06 + 0.02 * (1.0 - x))


#: model values for which :func:`paper_slowness` gives a positive velocity (open interval)
paper_slowness.domain = (-math.inf, 4.0)


def chi_mean(d):
    """Mean of the chi distribution with ``d`` degrees of freedom: ``sqrt(2) G((d+1)/2) / G(d/2)``.

    The expected norm of a ``d``-dimensional standard-normal vector (mu_chi of Eq. 25; 4.4166 for
    ``d = 20``).
    """
    d = float(d)
    return math.sqrt(2.0) * math.exp(math.lgamma((d + 1.0) / 2.0) - math.lgamma(d / 2.0))


def learning_rate_schedule(lr, lr_decay, decay_every, epoch):
    """Step size at ``epoch`` (0-based): ``lr * lr_decay ** (epoch // decay_every)`` (Eq. 21)."""
    return lr * lr_decay ** (epoch // decay_every)


def regularization_schedule(lam, lam_decay, iteration):
    """Regularisation weight at ``iteration`` (0-based): ``lam * lam_decay ** iteration`` (Eq. 22)."""
    return lam * lam_decay ** iteration


def ring_penalty(z, lam, d=None):
    """Ring term ``lam (||z|| - mu_chi)**2`` per row of ``z`` (torch, differentiable; Eq. 25)."""
    d = z.shape[-1] if d is None else d
    return lam * (torch.linalg.vector_norm(z, dim=-1) - chi_mean(d)) ** 2


def ring_gradient(z, lam, d=None):
    """Analytic gradient of :func:`ring_penalty`: ``2 lam (||z|| - mu_chi) z / ||z||`` (Eq. 25)."""
    d = z.shape[-1] if d is None else d
    norm = torch.linalg.vector_norm(z, dim=-1, keepdim=True)
    return 2.0 * lam * (norm - chi_mean(d)) * z / norm


# ---------------------------------------------------------------------------------------------------
# generators
# ---------------------------------------------------------------------------------------------------
class TorchGenerator:
    """Wrap a torch module ``z -> model`` into the generator protocol of :class:`LatentInverter`.

    Parameters
    ----------
    module : torch.nn.Module
        Maps float32 latents ``(batch, n_components)`` to models ``(batch, n_cells)`` (flat C order,
        values in [0, 1]). Outputs of another shape with ``batch`` first are flattened.
    n_components : int
        Latent dimension ``d``.
    latent_distribution : {"normal", "uniform"}, default="normal"
        ``"uniform"``: latents in [-1, 1] (SGAN), with stochastic clipping.
    image_shape : tuple of int, default=None
        ``(n_rows, n_cols)`` of the models, checked against the operator's grid. ``None``: taken
        from the module's output when it has image dimensions (``(batch, n_rows, n_cols)`` or
        ``(batch, 1, n_rows, n_cols)``), unchecked otherwise.

    Attributes
    ----------
    decoder_ : torch.nn.Module
        ``module`` followed by flattening. The module is used as given (never switched to eval
        mode here, which would change the caller's object): call ``module.eval()`` first when it
        holds dropout or batch normalisation.
    """

    def __init__(self, module, n_components, latent_distribution="normal", image_shape=None):
        self.module = module
        self.n_components = n_components
        self.latent_distribution = latent_distribution
        self.image_shape = image_shape

    @property
    def decoder_(self):
        return _Flatten(self.module)

    def __sklearn_is_fitted__(self):
        return True

    def decode(self, Z):
        """Models ``(n, n_cells)`` (float64 NumPy) for latents ``Z`` ``(n, n_components)``."""
        dec = self.decoder_
        dev = next(iter(dec.parameters()), torch.empty(0)).device
        with torch.no_grad():
            out = dec(torch.tensor(np.asarray(Z), dtype=torch.float32, device=dev))
        return out.cpu().numpy().astype(np.float64)

    def __repr__(self):
        return (f"TorchGenerator({type(self.module).__name__}, n_components={self.n_components}, "
                f"latent_distribution={self.latent_distribution!r})")

    def __setstate__(self, state):     # pickles of earlier versions have no image_shape
        state.setdefault("image_shape", None)
        self.__dict__.update(state)


class _Flatten(torch.nn.Module):
    def __init__(self, module):
        super().__init__()
        self.module = module

    def forward(self, z):
        out = self.module(z)
        return out.reshape(out.shape[0], -1)


# ---------------------------------------------------------------------------------------------------
# result
# ---------------------------------------------------------------------------------------------------
@dataclass
class InversionResult:
    """Outcome of :meth:`LatentInverter.invert` for ``n_surveys`` surveys and ``n_starts`` starts.

    Histories are indexed ``[survey, start, iteration]``; entries after a start stopped (target
    reached or divergence) are NaN. The misfit of iteration ``k`` is that of the model decoded from
    the iterate ``z_k`` before its update (as in the paper's code).

    Attributes
    ----------
    models : ndarray of shape (n_surveys, n_cells)
        Lowest-misfit model (values in [0, 1]) over all starts and iterations.
    best_start : ndarray of shape (n_surveys,)
        The start that gave ``models``.
    start_models : ndarray of shape (n_surveys, n_starts, n_cells)
        Lowest-misfit model of each start.
    latents : ndarray of shape (n_surveys, n_starts, n_components)
        Latent vector of each start's selected model.
    data_rmse : ndarray of shape (n_surveys, n_starts)
        Full-data RMSE (ns) of each start's selected model.
    chi2 : ndarray of shape (n_surveys, n_starts) or None
        Chi-square ``sum ((y - f) / sigma)**2`` of each start's selected model (with ``noise_std``).
    best_iteration : ndarray of shape (n_surveys, n_starts)
        Iteration of each start's selected model.
    data_rmse_history, latent_norm_history, learning_rate_history, lam_history : ndarray of shape (n_surveys, n_starts, n_iterations)
        Per iteration: full-data RMSE (ns), ``||z_k||``, step size (Eq. 21), lambda (Eq. 22).
    chi2_history : ndarray of shape (n_surveys, n_starts, n_iterations) or None
    n_iterations_run : ndarray of shape (n_surveys, n_starts)
        Iterations performed by each start (less than the budget after an early stop or divergence).
    reached_target : ndarray of bool, shape (n_surveys, n_starts)
    diverged : ndarray of bool, shape (n_surveys, n_starts)
        NaN or a latent norm above ``100 sqrt(d)``: the start was stopped before the bad iterate was
        decoded; its selected model comes from the iterations before.
    settings : dict
        The parameters of the run, its seed, number of iterations and device.
    homogeneous_slowness : ndarray of shape (n_surveys,) or None
        Slowness (ns/m) of the best homogeneous-velocity model of each survey's data
        (:func:`latentinv.baselines.homogeneous_fit`, weighted by ``1 / noise_std**2`` when given).
    homogeneous_rmse : ndarray of shape (n_surveys,) or None
        Data RMSE (ns) of that model: the baseline an acceptance threshold must clearly beat
        (:meth:`accepted` warns otherwise).
    """

    models: np.ndarray
    best_start: np.ndarray
    start_models: np.ndarray
    latents: np.ndarray
    data_rmse: np.ndarray
    chi2: Optional[np.ndarray]
    best_iteration: np.ndarray
    data_rmse_history: np.ndarray
    latent_norm_history: np.ndarray
    learning_rate_history: np.ndarray
    lam_history: np.ndarray
    chi2_history: Optional[np.ndarray]
    n_iterations_run: np.ndarray
    reached_target: np.ndarray
    diverged: np.ndarray
    settings: dict = field(default_factory=dict)
    homogeneous_slowness: Optional[np.ndarray] = None
    homogeneous_rmse: Optional[np.ndarray] = None

    @property
    def n_surveys(self):
        return self.models.shape[0]

    @property
    def n_starts(self):
        return self.latents.shape[1]

    def _threshold(self, threshold, caller):
        """``threshold`` (ns) broadcast to ``(n_surveys, n_starts)``, checked; warns against the baseline."""
        shape = self.data_rmse.shape
        try:
            thr = np.asarray(threshold, dtype=np.float64)
            thr = np.broadcast_to(thr, shape)
        except (TypeError, ValueError):
            raise ValueError(
                f"InversionResult.{caller}: threshold must be a number of ns or an array that "
                f"broadcasts to (n_surveys, n_starts) = {shape}, got {threshold!r}") from None
        if np.isnan(thr).any() or (thr < 0).any():
            raise ValueError(f"InversionResult.{caller}: threshold must be >= 0 ns (not NaN), got "
                             f"{threshold!r}")
        if self.homogeneous_rmse is not None:
            from .baselines import check_against_baselines
            check_against_baselines(
                data_rmse=thr.max(axis=1), homogeneous_rmse=self.homogeneous_rmse, stacklevel=4,
                what=f"the acceptance threshold of InversionResult.{caller}")
        return thr

    def accepted(self, threshold):
        """Boolean ``(n_surveys, n_starts)``: selected data RMSE <= ``threshold`` (ns), not diverged.

        ``threshold``: a number or an array broadcasting to ``(n_surveys, n_starts)`` (one value
        per survey as ``(n_surveys, 1)``). Warns with :class:`latentinv.baselines.BaselineWarning`
        when a survey's threshold is above ``DATA_RATIO`` (0.5) times the data RMSE of its best
        homogeneous-velocity model (:attr:`homogeneous_rmse`): such an acceptance says little.
        """
        thr = self._threshold(threshold, "accepted")
        return (self.data_rmse <= thr) & ~self.diverged

    def accepted_fraction(self, threshold):
        """Fraction of the starts of each survey whose selected data RMSE (ns) is <= ``threshold``.

        Diverged starts count as not accepted. Returns an array of shape ``(n_surveys,)``. Warns as
        :meth:`accepted` when the threshold is not clearly better than the homogeneous model's
        data RMSE (:attr:`homogeneous_rmse`, reported beside the fraction).
        """
        thr = self._threshold(threshold, "accepted_fraction")
        return ((self.data_rmse <= thr) & ~self.diverged).mean(axis=1)


# ---------------------------------------------------------------------------------------------------
# randomness: one int seed; initial latents shared by all surveys; per-survey, per-start streams
# ---------------------------------------------------------------------------------------------------
def _as_seed(random_state):
    return int(check_random_state(random_state).randint(np.iinfo(np.int32).max))


def _max_traveltime(n_data):
    """Largest traveltime (ns) whose squared residuals, summed over ``n_data``, stay finite in float32."""
    return math.sqrt(float(np.finfo(np.float32).max) / (4.0 * max(int(n_data), 1)))


def _probe_latents(n_components, latent_distribution, n=16):
    """Latents on which :meth:`LatentInverter.fit` checks the generator: the origin, then ``n - 1``
    fixed draws from the latent distribution (own generator: no estimator randomness is used)."""
    rng = np.random.default_rng(20210)
    if latent_distribution == "uniform":
        z = rng.uniform(-1.0, 1.0, size=(n - 1, n_components))
    else:
        z = rng.standard_normal(size=(n - 1, n_components))
    return torch.tensor(np.vstack([np.zeros((1, n_components)), z]), dtype=torch.float32)


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


def _initial_latents(seed, n_starts, n_components, latent_distribution):
    """The ``n_starts`` initial latents (float32, CPU), the same for every survey.

    Drawn row by row from one NumPy generator, so that start ``k`` is the same whatever
    ``n_starts`` (more starts only add rows).
    """
    rng = np.random.default_rng(np.random.SeedSequence([seed, 0x5EED]))
    if latent_distribution == "uniform":
        z = rng.uniform(-1.0, 1.0, size=(n_starts, n_components))
    else:
        z = rng.standard_normal(size=(n_starts, n_components))
    return torch.tensor(z, dtype=torch.float32)


def _survey_generators(seed, y, n_starts):
    """Per-start NumPy generators of one survey: (mini-batch orders, stochastic clipping).

    Seeded from the estimator's seed and the survey's data, so that a survey's streams do not
    depend on the other surveys or their order.
    """
    digest = hashlib.sha256(np.ascontiguousarray(y, dtype=np.float64).tobytes()).digest()
    words = [int.from_bytes(digest[i:i + 4], "little") for i in range(0, 16, 4)]
    children = np.random.SeedSequence([seed] + words).spawn(2 * n_starts)
    gens = [np.random.default_rng(c) for c in children]
    return gens[:n_starts], gens[n_starts:]


def _resolve_device(device, owner="LatentInverter"):
    if isinstance(device, torch.device):
        device = str(device)
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device not in ("cpu", "cuda") and not (isinstance(device, str) and device.startswith("cuda:")):
        raise ValueError(f"{owner}: device must be 'auto', 'cpu' or 'cuda', got {device!r}")
    if str(device).startswith("cuda") and not torch.cuda.is_available():
        raise ValueError(f"{owner}: device={device!r} but CUDA is not available")
    return torch.device(device)


def _module_device(module):
    for p in module.parameters():
        return p.device
    for b in module.buffers():
        return b.device
    return None


class _GatheredRows:
    """Rows of a constant sparse kernel as padded (index, value) tensors: ``t_i = sum_j v_ij s[idx_ij]``."""

    def __init__(self, G, device, dtype):
        G = G.tocsr()
        G.sort_indices()
        counts = np.diff(G.indptr)
        width = max(int(counts.max()), 1)
        n = G.shape[0]
        idx = np.zeros((n, width), dtype=np.int64)
        val = np.zeros((n, width), dtype=np.float64)
        for i in range(n):
            a, b = G.indptr[i], G.indptr[i + 1]
            idx[i, :b - a] = G.indices[a:b]
            val[i, :b - a] = G.data[a:b]
        self.index = torch.tensor(idx, device=device)
        self.value = torch.tensor(val, dtype=dtype, device=device)
        Gc = G.astype(np.float64)
        with warnings.catch_warnings():  # torch flags sparse CSR as beta; used read-only here
            warnings.filterwarnings("ignore", message="Sparse CSR tensor support is in beta")
            warnings.filterwarnings("ignore", message="Sparse invariant checks are implicitly disabled")
            self.matrix = torch.sparse_csr_tensor(
                torch.tensor(Gc.indptr, dtype=torch.int64), torch.tensor(Gc.indices, dtype=torch.int64),
                torch.tensor(Gc.data, dtype=dtype), size=Gc.shape, check_invariants=True).to(device)

    def rows(self, s, batch):
        """Traveltimes of rays ``batch`` (R, B) for slowness ``s`` (R, n_cells): differentiable."""
        R, B = batch.shape
        idx = self.index[batch]                     # (R, B, P)
        gathered = torch.gather(s, 1, idx.reshape(R, -1)).reshape(idx.shape)
        return (gathered * self.value[batch]).sum(-1)

    def full(self, s):
        """All traveltimes (R, n_data), no autograd."""
        return (self.matrix @ s.T.contiguous()).T


# ---------------------------------------------------------------------------------------------------
# the estimator
# ---------------------------------------------------------------------------------------------------
@contextlib.contextmanager
def _torch_threads(n):
    """torch's intra-op thread count set to ``n`` inside the block (None: unchanged)."""
    before = torch.get_num_threads()
    if n is not None and n != before:
        torch.set_num_threads(n)
    try:
        yield
    finally:
        if torch.get_num_threads() != before:
            torch.set_num_threads(before)


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
        params["prior"] = prior if prior is None or _prior_is_fitted(prior) else clone(prior, safe=False)
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
        self.device_ = _resolve_device(self.device)

        prior = self.prior
        if prior is None:
            from .prior import VAEPrior
            prior = VAEPrior()
        if _prior_is_fitted(prior):
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
        probes = _probe_latents(d, dist).to(self.device_)
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

    def _generator_name(self):
        prior = self.prior_
        return repr(prior) if isinstance(prior, TorchGenerator) else type(prior).__name__

    def _check_geometry(self, op):
        """The prior's image shape against the operator grid's (n_rows, n_cols), where both are known."""
        prior = self.prior_
        shape = getattr(prior, "image_shape_", None)
        if shape is None:
            shape = getattr(prior, "image_shape", None)
        if shape is None and isinstance(prior, TorchGenerator):
            with torch.no_grad():
                raw = prior.module(torch.zeros(1, self.n_components_,
                                               device=_module_device(prior.module) or "cpu"))
            dims = tuple(int(n) for n in raw.shape[1:])
            if len(dims) == 3 and dims[0] == 1:
                dims = dims[1:]
            shape = dims if len(dims) == 2 else None
        grid_shape = getattr(getattr(op, "grid", None), "shape", None)
        if shape is None or grid_shape is None:
            return
        try:
            shape = tuple(int(n) for n in shape)
        except (TypeError, ValueError):
            raise ValueError(f"{type(self).__name__}: the prior {self._generator_name()} gives an image "
                             f"shape that is not a pair of ints: {shape!r}") from None
        if shape != tuple(grid_shape):
            raise ValueError(
                f"{type(self).__name__}: the prior {self._generator_name()} makes images of shape "
                f"(n_rows, n_cols) = {shape} but the operator's grid is {tuple(grid_shape)} "
                f"(same number of cells, {op.n_params}, but another geometry)"
                if len(shape) == 2 and shape[0] * shape[1] == op.n_params else
                f"{type(self).__name__}: the prior {self._generator_name()} makes images of shape "
                f"(n_rows, n_cols) = {shape} but the operator's grid is {tuple(grid_shape)}")

    def _check_generator_output(self, x, s, when):
        """Models ``x`` finite and in the slowness map's domain, slowness ``s`` finite and positive."""
        fn = self.slowness_map or paper_slowness
        map_name = getattr(fn, "__name__", type(fn).__name__)
        ok_x = torch.isfinite(x)
        problem = None
        if not bool(ok_x.all()):
            problem = f"{int((~ok_x).sum())} non-finite model values (NaN or inf)"
        else:
            lo, hi = float(x.min()), float(x.max())
            domain = getattr(fn, "domain", None)
            if domain is not None and not (domain[0] < lo and hi < domain[1]):
                problem = (f"model values in [{lo:.6g}, {hi:.6g}], outside the domain "
                           f"({domain[0]}, {domain[1]}) of the slowness map {map_name}")
            elif not bool((torch.isfinite(s) & (s > 0)).all()):
                bad = ~(torch.isfinite(s) & (s > 0))
                problem = (f"model values in [{lo:.6g}, {hi:.6g}] giving {int(bad.sum())} non-finite "
                           f"or non-positive slowness values through {map_name}")
        if problem is not None:
            raise ValueError(
                f"{type(self).__name__}: the generator {self._generator_name()} returned {problem} "
                f"{when}; the generator must produce finite models in the slowness map's domain"
                + (" (the paper's values are in [0, 1])" if fn is paper_slowness else ""))

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
        dev = _module_device(dec)
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
        from .baselines import homogeneous_fit
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
    def _run(self, Y, sigma):
        dev = self.device_
        if dev.type == "cpu":
            tune_malloc_for_tensors()     # activations of a batch of starts: see latentinv._allocator
        dtype = torch.float32
        op = self.operator_
        S, n_data = Y.shape
        K, d = int(self.n_starts), self.n_components_
        R = S * K
        B = int(self.batch_size or n_data)
        per_epoch = n_data // B
        n_iter = self.n_epochs * per_epoch
        uniform = self.latent_distribution_ == "uniform"
        fn = self.slowness_map or paper_slowness
        decoder = self._decoder()
        seed = _as_seed(self.random_state)

        z0 = self.initial_latents_
        if z0 is None:
            z0 = _initial_latents(seed, K, d, self.latent_distribution_)
        z = z0.repeat(S, 1).to(dev)
        gens = [_survey_generators(seed, Y[i], K) for i in range(S)]
        batch_rngs = [g for pair in gens for g in pair[0]]      # row r = survey * K + start
        clip_rngs = [g for pair in gens for g in pair[1]]

        y_rows = torch.tensor(np.repeat(Y, K, axis=0), dtype=dtype, device=dev)   # (R, n_data)
        if sigma is not None:
            w_rows = torch.tensor(np.tile(1.0 / sigma**2, (R, 1)), dtype=dtype, device=dev)
        else:
            w_rows = None
        kernel = None
        paper_gradient = not getattr(op, "is_linear", False) and self.nonlinear_gradient == "paper"
        if getattr(op, "is_linear", False):
            kernel = _GatheredRows(op.jacobian(np.ones(op.n_params)), dev, dtype)

        # per-iteration records, kept on the device
        rmse_h = torch.full((n_iter, R), float("nan"), device=dev)
        chi2_h = torch.full((n_iter, R), float("nan"), device=dev) if sigma is not None else None
        norm_h = torch.full((n_iter, R), float("nan"), device=dev)
        best_mis = torch.full((R,), float("inf"), device=dev)
        best_x = torch.zeros(R, op.n_params, dtype=dtype, device=dev)
        best_z = z.clone()
        best_it = torch.zeros(R, dtype=torch.long, device=dev)
        active = torch.ones(R, dtype=torch.bool, device=dev)
        diverged = torch.zeros(R, dtype=torch.bool, device=dev)
        reached = torch.zeros(R, dtype=torch.bool, device=dev)
        n_run = torch.zeros(R, dtype=torch.long, device=dev)
        if self.optimizer == "adam":
            m1 = torch.zeros_like(z)
            m2 = torch.zeros_like(z)
        lr_list, lam_list = [], []
        max_norm = _DIVERGENCE_FACTOR * math.sqrt(d)
        target = self.target_misfit

        # Nonlinear operators that run in the background: each iteration queues the Dijkstra runs of
        # the batch's sources first (they carry the gradient), then the others (needed only for the
        # full-data misfit); the latter finish while Python computes the step, and the iteration's
        # records are written one iteration late. Same numbers as computing everything at once.
        pipelined = (kernel is None and target is None and self._pipeline_nonlinear
                     and getattr(op, "runs_in_background", False))
        if pipelined:
            source_of = np.asarray(op.data_sources)
            n_sources = op.survey.n_sources
            rows_r = np.arange(R)[:, None]

        def record(k, t_full, x, zk, znorm, active):
            """Full-data misfit of iteration k: histories and the best model so far."""
            nonlocal best_mis, best_x, best_z, best_it, n_run
            r_full = y_rows - t_full
            sse = (r_full * r_full).sum(1)
            rmse = torch.sqrt(sse / n_data)
            if w_rows is not None:
                chi2 = (r_full * r_full * w_rows).sum(1)
                misfit = chi2
                rms_for_target = torch.sqrt(chi2 / n_data)
                chi2_h[k] = torch.where(active, chi2, float("nan"))
            else:
                misfit = sse
                rms_for_target = rmse
            rmse_h[k] = torch.where(active, rmse, float("nan"))
            norm_h[k] = torch.where(active, znorm, float("nan"))
            improved = active & (misfit < best_mis)
            best_mis = torch.where(improved, misfit, best_mis)
            best_x = torch.where(improved[:, None], x, best_x)
            best_z = torch.where(improved[:, None], zk, best_z)
            best_it = torch.where(improved, k, best_it)
            n_run = n_run + active.long()
            return rms_for_target

        late = None   # pipelined: (k, pending rest, head times, x, z, ||z||, active) of iteration k-1

        def record_late():
            k_, rest, t_head, *state = late
            t_rest = torch.tensor(rest.result()[0], dtype=dtype, device=dev)
            with torch.no_grad():
                record(k_, torch.where(torch.isnan(t_head), t_rest, t_head), *state)

        # the workers take the cores; the decoder's torch threads would only contend with them
        with _torch_threads(1 if pipelined and dev.type == "cpu" else None):
            iterator = range(n_iter)
            if self.verbose:
                from tqdm.auto import tqdm
                iterator = tqdm(iterator, desc=f"{type(self).__name__} ({S} surveys x {K} starts)")
            for k in iterator:
                epoch, j = divmod(k, per_epoch)
                if j == 0:
                    perms = np.stack([g.permutation(n_data) for g in batch_rngs])
                    perms = torch.tensor(perms[:, :per_epoch * B].reshape(R, per_epoch, B), device=dev)
                    if uniform:
                        if self.clip_resample == "normal":
                            redraw = np.stack([g.standard_normal((per_epoch, d)) for g in clip_rngs], 1)
                        else:
                            redraw = np.stack([2.0 * g.random((per_epoch, d)) - 1.0 for g in clip_rngs], 1)
                        redraw = torch.tensor(redraw, dtype=dtype, device=dev)
                batch = perms[:, j]                                   # (R, B)
                lr_k = learning_rate_schedule(self.lr, self.lr_decay, self.decay_every, epoch)
                lam_k = regularization_schedule(self.lam, self.lam_decay, k)
                lr_list.append(lr_k)
                lam_list.append(lam_k)

                zk = z.detach().requires_grad_(True)
                x = decoder(zk)
                s = fn(x)
                if k == 0:
                    with torch.no_grad():
                        self._check_generator_output(x, s, "at the initial latents of the inversion")
                rest = None
                if kernel is not None:
                    t_batch = kernel.rows(s, batch)
                    with torch.no_grad():
                        t_full = kernel.full(s.detach())
                else:
                    # paper: value s, gradient passed to x unchanged: dC/dx := S^T (f - y) (paper's code)
                    s_in = x + (s - x).detach() if paper_gradient else s
                    if pipelined:
                        s_np = s_in.detach().to("cpu", torch.float64).numpy()
                        batch_np = batch.cpu().numpy()
                        rows_mask = np.zeros((R, n_data), bool)
                        rows_mask[rows_r, batch_np] = True
                        head_sources = np.zeros((R, n_sources), bool)
                        head_sources[rows_r, source_of[batch_np]] = True
                        head = op.submit(s_np, want_jacobian=True, jacobian_rows=rows_mask,
                                         sources=head_sources)
                        rest = op.submit(s_np, want_jacobian=False, sources=~head_sources)
                        if late is not None:     # iteration k-1's records, while the workers run
                            record_late()
                        t_full = op.forward(s_in, jacobian_rows=batch, pending=head)
                    else:
                        # only the batch rays' Jacobian rows are needed (the rest carry no gradient)
                        t_full = op.forward(s_in, jacobian_rows=batch)
                    t_batch = torch.gather(t_full, 1, batch)
                resid = torch.gather(y_rows, 1, batch) - t_batch
                sq = resid * resid
                if w_rows is not None:
                    sq = sq * torch.gather(w_rows, 1, batch)
                loss = sq.sum(1)                                       # Eq. 24: sum over batch rays
                if paper_gradient:
                    loss = 0.5 * loss
                znorm = torch.linalg.vector_norm(zk, dim=1)
                if self.regularization == "ring":
                    loss = loss + lam_k * (znorm - self.mu_chi_) ** 2
                elif self.regularization == "origin":
                    loss = loss + lam_k * znorm**2
                (grad,) = torch.autograd.grad(loss.sum(), zk)

                with torch.no_grad():
                    if rest is None:
                        rms_for_target = record(k, t_full.detach(), x.detach(), zk.detach(),
                                                znorm.detach(), active)
                    else:
                        late = (k, rest, t_full.detach(), x.detach(), zk.detach(), znorm.detach(), active)

                    if self.optimizer == "sgd":
                        z_new = zk.detach() - lr_k * grad
                    else:
                        t = k + 1
                        m1 = _ADAM_BETAS[0] * m1 + (1 - _ADAM_BETAS[0]) * grad
                        m2 = _ADAM_BETAS[1] * m2 + (1 - _ADAM_BETAS[1]) * grad * grad
                        denom = (m2.sqrt() / math.sqrt(1 - _ADAM_BETAS[1] ** t)) + _ADAM_EPS
                        z_new = zk.detach() - (lr_k / (1 - _ADAM_BETAS[0] ** t)) * m1 / denom
                    if uniform:   # stochastic clipping: out-of-box components redrawn (clip_resample)
                        z_new = torch.where(z_new.abs() > 1, redraw[j], z_new)
                    if target is not None:
                        hit = active & (rms_for_target <= target)
                        reached = reached | hit
                        active = active & ~hit
                    bad = active & (~torch.isfinite(z_new).all(1)
                                    | (torch.linalg.vector_norm(z_new, dim=1) > max_norm))
                    diverged = diverged | bad
                    active = active & ~bad
                    z = torch.where(active[:, None], z_new, zk.detach())
                if target is not None and k % per_epoch == per_epoch - 1 and not bool(active.any()):
                    break
            if late is not None:
                record_late()

        n_done = len(lr_list)
        best_mis_np = best_mis.cpu().numpy().reshape(S, K)
        best_start = np.argmin(np.where(np.isfinite(best_mis_np), best_mis_np, np.inf), axis=1)
        if not np.all(np.isfinite(best_mis_np[np.arange(S), best_start])):
            bad_surveys = np.flatnonzero(~np.isfinite(best_mis_np).any(1))
            raise RuntimeError(f"{type(self).__name__}: no start gave a finite misfit for surveys "
                               f"{bad_surveys.tolist()} (the generator or operator returned NaN)")
        start_models = best_x.cpu().numpy().astype(np.float64).reshape(S, K, -1)
        rmse_np = rmse_h[:n_done].T.cpu().numpy().astype(np.float64).reshape(S, K, n_done)
        n_run_np = n_run.cpu().numpy().reshape(S, K)
        best_it_np = best_it.cpu().numpy().reshape(S, K)
        sched_mask = np.arange(n_done)[None, None, :] < n_run_np[:, :, None]
        lr_h = np.where(sched_mask, np.asarray(lr_list)[None, None, :], np.nan)
        lam_h = np.where(sched_mask, np.asarray(lam_list)[None, None, :], np.nan)
        pick = best_it_np[:, :, None]
        if chi2_h is not None:
            chi2_np = chi2_h[:n_done].T.cpu().numpy().astype(np.float64).reshape(S, K, n_done)
            chi2_best = np.take_along_axis(chi2_np, pick, 2)[:, :, 0]
        else:
            chi2_np = chi2_best = None
        return InversionResult(
            models=start_models[np.arange(S), best_start],
            best_start=best_start,
            start_models=start_models,
            latents=best_z.cpu().numpy().astype(np.float64).reshape(S, K, d),
            data_rmse=np.take_along_axis(rmse_np, pick, 2)[:, :, 0],
            chi2=chi2_best,
            best_iteration=best_it_np,
            data_rmse_history=rmse_np,
            latent_norm_history=norm_h[:n_done].T.cpu().numpy().astype(np.float64).reshape(S, K, n_done),
            learning_rate_history=lr_h,
            lam_history=lam_h,
            chi2_history=chi2_np,
            n_iterations_run=n_run_np,
            reached_target=reached.cpu().numpy().reshape(S, K),
            diverged=diverged.cpu().numpy().reshape(S, K),
            settings=dict({k: v for k, v in self.get_params(deep=False).items()
                           if k not in ("prior", "operator", "slowness_map")}, seed=seed, n_iterations=n_iter,
                          iterations_per_epoch=per_epoch, device=str(dev)),
        )


def _prior_is_fitted(prior):
    if not hasattr(prior, "fit"):
        return hasattr(prior, "decoder_")
    try:
        check_is_fitted(prior)
    except NotFittedError:
        return False
    return True


# ---------------------------------------------------------------------------------------------------
# scikit-learn's estimator checks (tests/test_inversion.py, tests/test_sklearn_compat.py)
# ---------------------------------------------------------------------------------------------------
_MODELS_NOT_1D = ("predict returns one model (n_cells values) per survey and score compares it with "
                  "true models (n_surveys, n_cells); the check expects a 1-D regression target")

#: Checks that cannot apply to LatentInverter whatever its operator, with the reason.
_SKLEARN_EXPECTED_FAILED_CHECKS = {
    "check_fit_score_takes_y": _MODELS_NOT_1D,
    "check_pipeline_consistency": _MODELS_NOT_1D,
    "check_regressors_train": _MODELS_NOT_1D,
    "check_regressors_train(readonly_memmap=True)": _MODELS_NOT_1D,
    "check_regressors_train(readonly_memmap=True,X_dtype=float32)": _MODELS_NOT_1D,
    "check_regressor_multioutput": "predict returns n_cells outputs whatever the width of y",
    "check_fit2d_1feature": ("X of one traveltime per survey needs a one-ray operator; the test "
                             "instances have 2 to 10 rays"),
    "check_estimators_overwrite_params": (
        "joblib.hash of a deep-copied torch tensor differs from the original's, so a torch-module "
        "prior (TorchGenerator) never hashes equal to its copy; that fit leaves the prior's "
        "weights untouched is tested directly in tests/test_inversion.py"),
}

#: Width of the X that each other check feeds: X must hold the operator's n_data traveltimes, so a
#: check runs (and must pass) only on an instance whose operator has that many rays.
_SKLEARN_CHECK_WIDTHS = {
    "check_dict_unchanged": 3, "check_dont_overwrite_parameters": 3, "check_estimators_nan_inf": 3,
    "check_estimators_pickle": 3, "check_estimators_pickle(readonly_memmap=True)": 3,
    "check_f_contiguous_array_estimator": 3, "check_fit2d_predict1d": 3,
    "check_methods_sample_order_invariance": 3, "check_methods_subset_invariance": 3,
    "check_dtype_object": 10, "check_fit2d_1sample": 10, "check_regressor_data_not_an_array": 10,
    "check_regressors_int": 10,
    "check_n_features_in_after_fitting": 4, "check_regressors_no_decision_function": 4,
    "check_estimators_fit_returns_self": 2, "check_fit_check_is_fitted": 2,
    "check_fit_idempotent": 2, "check_n_features_in": 2, "check_readonly_memmap_input": 2,
    "check_estimators_dtypes": 5,
}


def _sklearn_expected_failed_checks(n_data):
    """``expected_failed_checks`` for an inverter whose operator has ``n_data`` rays."""
    width = ("the check's X is not as wide as this operator's n_data traveltimes (it runs on an "
             "instance of the right width)")
    out = {c: width for c, w in _SKLEARN_CHECK_WIDTHS.items() if w != n_data}
    out.update(_SKLEARN_EXPECTED_FAILED_CHECKS)
    return out
