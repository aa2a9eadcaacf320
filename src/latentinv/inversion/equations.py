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
paper_slowness.domain = (-math.inf, 4.0)


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
    """Ring term ``lam (||z|| - mu_chi)**2`` per row of ``z`` (torch, differentiable; Eqs. 23-24)."""
    d = z.shape[-1] if d is None else d
    return lam * (torch.linalg.vector_norm(z, dim=-1) - chi_mean(d)) ** 2


def ring_gradient(z, lam, d=None):
    """Analytic gradient of :func:`ring_penalty`: ``2 lam (||z|| - mu_chi) z / ||z||`` (Eq. 25)."""
    d = z.shape[-1] if d is None else d
    norm = torch.linalg.vector_norm(z, dim=-1, keepdim=True)
    return 2.0 * lam * (norm - chi_mean(d)) * z / norm


def latent_penalty(loss, znorm, regularization, lam, mu_chi):
    """``loss`` plus the regularisation of Eq. 24 per row, from the latent norms ``znorm``:
    ``lam (||z|| - mu_chi)**2`` (``"ring"``), ``lam ||z||**2`` (``"origin"``) or nothing (None)."""
    if regularization == "ring":
        return loss + lam * (znorm - mu_chi) ** 2
    if regularization == "origin":
        return loss + lam * znorm**2
    return loss
