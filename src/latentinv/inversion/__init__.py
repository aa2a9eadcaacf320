"""Stochastic-gradient inversion in the latent space of a deep generative prior.

The package is one engine with its parts named by what they are:

- :mod:`.equations`: the paper's equations (slowness map, mu_chi, schedules, penalties);
- :mod:`.settings`: Table 1's cases and the nonlinear experiment's settings;
- :mod:`.generator`: the generator protocol below, :class:`TorchGenerator` and the output checks;
- :mod:`.traveltimes`: batched traveltimes scheduled for each kind of operator;
- :mod:`.problem`: :class:`~.problem.LatentProblem`, decoder + slowness map + operator + data + noise;
- :mod:`.history`: per-iteration records, the best model so far and the result's assembly;
- :mod:`.randomness`: seeds, initial latents and per-survey streams;
- :mod:`.sgd`: the SGD loop itself; :mod:`.result`: :class:`InversionResult`;
- :mod:`.base`: what the estimators share (input checks, the prior's set-up, the problem of a set of surveys);
- :mod:`.estimator`: :class:`LatentInverter`, the scikit-learn estimator of the SGD.

:class:`LatentInverter` implements the inversion of Lopez-Alvis, Laloy, Nguyen & Hermans (2021),
Section 2.4 (Eqs. 20-25 for the linear operator, Eq. 28 for the nonlinear one): the latent vector
``z`` of a generator ``g`` is updated by (mini-batch) stochastic gradient descent on

    C(z) = sum_{i in batch} w_i (y_i - f_i(s(g(z))))**2 + lambda_k R(z)            (Eq. 24)

with ``s`` the map from model values in [0, 1] to slowness (ns/m), ``f`` the forward operator
(traveltimes, ns), ``w_i = 1 / sigma_i**2`` when per-datum noise standard deviations are given
(``w_i = 1`` otherwise, as in the paper), and the regularisation

- ``"ring"``:   R(z) = (||z|| - mu_chi)**2, mu_chi the mean of the chi distribution with ``d``
  degrees of freedom (Eq. 23; 4.4166 for d = 20), gradient ``2 lambda (||z|| - mu_chi) z / ||z||``;
- ``"origin"``: R(z) = ||z||**2.

Schedules: the learning rate decays by ``lr_decay`` every ``decay_every`` epochs (Eq. 21, written per
iteration in the paper, applied per epoch as in its published code; :func:`learning_rate_schedule`) and the regularisation weight by ``lam_decay`` every iteration
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
from .equations import (LinearVelocitySlowness, chi_mean, latent_penalty, learning_rate_schedule,
                        paper_slowness, regularization_schedule, ring_gradient, ring_penalty)
from .base import DataScaleWarning
from .estimator import LatentInverter, PrecisionWarning
from .generator import TorchGenerator
from .problem import LatentProblem
from .randomness import as_seed as _as_seed
from .randomness import initial_latents as _initial_latents
from .randomness import survey_generators as _survey_generators
from .result import InversionResult
from .sampler import LatentSampler
from .settings import NONLINEAR_SETTINGS, PAPER_CASES, PAPER_N_STARTS
from ._sklearn_checks import (_SKLEARN_CHECK_WIDTHS, _SKLEARN_EXPECTED_FAILED_CHECKS,
                              _sklearn_expected_failed_checks)

__all__ = [
    "LatentInverter", "PrecisionWarning", "DataScaleWarning", "TorchGenerator", "InversionResult", "LatentProblem",
    "paper_slowness", "LinearVelocitySlowness", "chi_mean", "learning_rate_schedule", "regularization_schedule", "ring_penalty", "ring_gradient",
    "latent_penalty", "PAPER_CASES", "PAPER_N_STARTS", "NONLINEAR_SETTINGS",
]
