"""The paper's equations (Lopez-Alvis et al., 2021, Section 2.4): the slowness map of the test case,
the ring's radius, the step-size and regularisation schedules and the penalties, as small pure
functions shared by every algorithm of the engine."""
from __future__ import annotations

import math
import warnings

import torch

from .._checks import caller_stacklevel
from ..operators._base import IMPLAUSIBLE_SPEED, smallest_slowness

__all__ = ["paper_slowness", "has_a_medium", "LinearVelocitySlowness", "chi_mean", "learning_rate_schedule", "regularization_schedule",
           "ring_penalty", "ring_gradient", "latent_penalty"]


def paper_slowness(x):
    """Slowness (ns/m) of model values ``x`` in [0, 1]: ``1 / (0.06 + 0.02 (1 - x))``.

    Velocity is 0.06 m/ns where ``x = 1`` and 0.08 m/ns where ``x = 0`` (the paper's test case).
    Works on torch tensors and NumPy arrays. The formula is defined where the velocity is positive,
    ``x < 4`` (:attr:`paper_slowness.domain`): ``x = 4`` gives infinite slowness and ``x > 4``
    negative slowness. The paper's models lie in [0, 1]; values between 1 and 4 (or below 0)
    extrapolate its linear velocity law.

    Parameters
    ----------
    x : float, ndarray or torch.Tensor
        Model values (1 = channel).

    Returns
    -------
    float, ndarray or torch.Tensor
        Slowness in ns/m, of the type and shape of ``x`` (not checked for sign).
    """
    return 1.0 / (0.06 + 0.02 * (1.0 - x))


#: model values for which :func:`paper_slowness` gives a positive velocity (open interval)
paper_slowness.domain = (-math.inf, 4.0)     # type: ignore[attr-defined]  # a function's attribute


def has_a_medium(s):
    """Per row of slowness ``s`` (..., n_cells): whether every cell's slowness is finite and positive (a
    model of any other slowness has no medium: its traveltimes are a formula's, not a medium's), and at
    least the smallest normal number of its dtype, as the operators require
    (:func:`latentinv.operators._base.smallest_slowness`: a subnormal slowness loses digits)."""
    return (torch.isfinite(s) & (s >= smallest_slowness(s.dtype))).all(dim=-1)


class LinearVelocitySlowness:
    """Slowness map (ns/m) of a medium whose velocity is linear in the model value: ``channel`` m/ns
    where ``x = 1``, ``background`` m/ns where ``x = 0``; :func:`paper_slowness` is this map with
    0.06 and 0.08 m/ns. Pass it as ``slowness_map`` when the surveyed medium has other velocities.

    Works on torch tensors and NumPy arrays; an instance pickles (Dask workers) and declares its
    ``domain``, the open interval of model values whose velocity is positive. A velocity above 1 m/ns
    (over three times light's, 0.3 m/ns) gives a UserWarning: it is most likely a slowness in ns/m (the
    paper's 16.7 and 12.5 ns/m for 0.06 and 0.08 m/ns), which would make every traveltime 150 to 280 times
    too short.

    Parameters
    ----------
    channel : float, default=0.06
        Velocity (m/ns) where the model value is 1; finite and > 0.
    background : float, default=0.08
        Velocity (m/ns) where the model value is 0; finite and > 0.

    Raises
    ------
    ValueError
        On a velocity that is not a finite number > 0 (a bool or a string included).

    Examples
    --------
    >>> s = LinearVelocitySlowness(channel=0.05, background=0.1)
    >>> float(s(1.0)), float(s(0.0)), s.domain
    (20.0, 10.0, (-inf, 2.0))
    """

    def __init__(self, channel=0.06, background=0.08):
        for name, value in (("channel", channel), ("background", background)):
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) \
                    or value <= 0:
                raise ValueError(f"LinearVelocitySlowness: {name} must be a finite velocity > 0 (m/ns); "
                                 f"got {value!r}.")
        for name, value in (("channel", channel), ("background", background)):
            if value > IMPLAUSIBLE_SPEED:     # no medium is faster than light: a slowness in ns/m?
                warnings.warn(f"LinearVelocitySlowness: {name} is a velocity in m/ns, expected at most "
                              f"{IMPLAUSIBLE_SPEED:g} m/ns (light travels 0.3 m/ns), got {value!r}: is it a slowness "
                              f"in ns/m? As a velocity that is {1 / value:.3g} m/ns", UserWarning,
                              stacklevel=caller_stacklevel())
                break
        self.channel, self.background = float(channel), float(background)

    def __call__(self, x):
        return 1.0 / (self.background + (self.channel - self.background) * x)

    @property
    def domain(self):
        slope = self.channel - self.background
        if slope == 0:
            return (-math.inf, math.inf)
        edge = -self.background / slope            # where the velocity reaches 0
        return (-math.inf, edge) if slope < 0 else (edge, math.inf)

    def __repr__(self):
        return f"LinearVelocitySlowness(channel={self.channel!r}, background={self.background!r})"

    def __eq__(self, other):
        return (isinstance(other, LinearVelocitySlowness)
                and (self.channel, self.background) == (other.channel, other.background))

    def __hash__(self):
        return hash((self.channel, self.background))


def chi_mean(d):
    """Mean of the chi distribution with ``d`` degrees of freedom: ``sqrt(2) G((d+1)/2) / G(d/2)``.

    The expected norm of a ``d``-dimensional standard-normal vector (mu_chi of Eq. 23; 4.4166 for
    ``d = 20``).

    Parameters
    ----------
    d : int or float
        Degrees of freedom, the latent dimension; > 0 (converted with ``float``).

    Returns
    -------
    float
        mu_chi, dimensionless (a latent norm).

    Raises
    ------
    ValueError
        Unless ``d`` is a finite number > 0 (a bool is refused).

    Examples
    --------
    >>> round(chi_mean(20), 4)
    4.4166
    """
    try:
        value = float(d)
    except (TypeError, ValueError):
        value = math.nan
    if isinstance(d, bool) or not value > 0 or math.isinf(value):   # lgamma has poles at 0, -1, ...
        raise ValueError(f"chi_mean: d (degrees of freedom, the latent dimension) must be a finite number > 0, "
                         f"got {d!r}")
    return math.sqrt(2.0) * math.exp(math.lgamma((value + 1.0) / 2.0) - math.lgamma(value / 2.0))


def learning_rate_schedule(lr, lr_decay, decay_every, epoch):
    """Step size at ``epoch`` (0-based): ``lr * lr_decay ** (epoch // decay_every)`` (Eq. 21).

    Eq. 21 (``l_{k+1} = c_l l_k``) applied once every ``decay_every`` epochs: the step is constant
    within each block of ``decay_every`` epochs (:class:`LatentInverter` calls it once per epoch).

    Parameters
    ----------
    lr : float
        Initial step size ``l_0`` (the paper's ``l``; the latent step ``z_{k+1} = z_k - l grad``, Eq. 20).
    lr_decay : float
        Factor ``c_l`` per decay (< 1 decreases the step; 1: constant).
    decay_every : int
        Epochs between two decays, >= 1.
    epoch : int or ndarray of int
        0-based epoch; an integer array gives the step of each element.

    Returns
    -------
    float or ndarray
        The step size at ``epoch``.

    Examples
    --------
    >>> [round(learning_rate_schedule(0.1, 0.8, 5, e), 3) for e in (0, 4, 5, 10)]
    [0.1, 0.1, 0.08, 0.064]
    """
    return lr * lr_decay ** (epoch // decay_every)


def regularization_schedule(lam, lam_decay, iteration):
    """Regularisation weight at ``iteration`` (0-based): ``lam * lam_decay ** iteration`` (Eq. 22).

    Parameters
    ----------
    lam : float
        Initial weight ``lambda_0`` of the latent regularisation (Eqs. 7 and 24).
    lam_decay : float
        Factor ``c_lambda`` per iteration (< 1 decreases the weight; 1: constant).
    iteration : int or ndarray of int
        0-based iteration (one per mini-batch step); an integer array gives the weight of each element.

    Returns
    -------
    float or ndarray
        ``lambda`` at ``iteration``.

    Examples
    --------
    >>> round(regularization_schedule(10.0, 0.999, 3000), 4)
    0.4971
    """
    return lam * lam_decay ** iteration


def ring_penalty(z, lam, d=None):
    """Ring term ``lam (||z|| - mu_chi)**2`` per row of ``z`` (torch, differentiable; Eqs. 23-24).

    Parameters
    ----------
    z : torch.Tensor of shape (..., d)
        Latent vectors, one per row (the norm is taken over the last axis). A torch tensor: NumPy
        arrays are refused (``TypeError``).
    lam : float or torch.Tensor
        Regularisation weight ``lambda`` (a tensor broadcasting to ``z.shape[:-1]`` gives one per row).
    d : int, default=None
        Degrees of freedom of mu_chi (:func:`chi_mean`); None: ``z.shape[-1]``.

    Returns
    -------
    torch.Tensor of shape z.shape[:-1]
        The penalty of each row (a 0-d tensor for a 1-D ``z``), of ``z``'s dtype.
    """
    d = z.shape[-1] if d is None else d
    return lam * (torch.linalg.vector_norm(z, dim=-1) - chi_mean(d)) ** 2


def ring_gradient(z, lam, d=None):
    """Analytic gradient of :func:`ring_penalty`: ``2 lam (||z|| - mu_chi) z / ||z||`` (Eq. 25).

    The regularisation term of Eq. 25, ``2 lam z (1 - mu_chi / ||z||)``, written differently.

    Parameters
    ----------
    z : torch.Tensor of shape (..., d)
        Latent vectors, one per row (NumPy arrays are refused, ``TypeError``).
    lam : float or torch.Tensor
        Regularisation weight ``lambda`` (a tensor of shape ``z.shape[:-1] + (1,)`` gives one per row).
    d : int, default=None
        Degrees of freedom of mu_chi (:func:`chi_mean`); None: ``z.shape[-1]``.

    Returns
    -------
    torch.Tensor of z's shape
        The gradient of each row's penalty with respect to that row. NaN in a row of zeros
        (``||z|| = 0``, where the penalty has no gradient).
    """
    d = z.shape[-1] if d is None else d
    norm = torch.linalg.vector_norm(z, dim=-1, keepdim=True)
    return 2.0 * lam * (norm - chi_mean(d)) * z / norm


def latent_penalty(loss, znorm, regularization, lam, mu_chi):
    """``loss`` plus the latent regularisation ``lam R(z)`` per row (Eq. 7), from the latent norms
    ``znorm``: ``lam (||z|| - mu_chi)**2`` (``"ring"``, Eqs. 23-24), ``lam ||z||**2`` (``"origin"``, as
    in Bora et al., 2017) or nothing (None).

    Parameters
    ----------
    loss : torch.Tensor or ndarray of shape (R,)
        The data term of each row (ns**2, weighted by ``1 / sigma**2`` when noise is given).
    znorm : torch.Tensor or ndarray of shape (R,)
        ``||z||`` of each row's latent vector.
    regularization : {"ring", "origin"} or None
        The penalty ``R(z)``.
    lam : float or array of shape (R,)
        Regularisation weight ``lambda`` (the current value of :func:`regularization_schedule`).
    mu_chi : float
        The ring's radius (:func:`chi_mean` of the latent dimension); used by ``"ring"`` only.

    Returns
    -------
    torch.Tensor or ndarray of shape (R,)
        ``loss + lam R(z)`` (``loss`` itself without regularisation).

    Raises
    ------
    ValueError
        On another ``regularization`` (a misspelt one added nothing before).
    """
    if regularization == "ring":
        return loss + lam * (znorm - mu_chi) ** 2
    if regularization == "origin":
        return loss + lam * znorm**2
    if regularization is not None:
        raise ValueError(f"latent_penalty: regularization must be 'ring', 'origin' or None, got {regularization!r}")
    return loss
