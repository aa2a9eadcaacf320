"""The paper's equations (Lopez-Alvis et al., 2021, Section 2.4): the slowness map of the test case,
the ring's radius, the step-size and regularisation schedules and the penalties, as small pure
functions shared by every algorithm of the engine."""
from __future__ import annotations

import math

import torch

__all__ = ["paper_slowness", "chi_mean", "learning_rate_schedule", "regularization_schedule",
           "ring_penalty", "ring_gradient", "latent_penalty"]


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
