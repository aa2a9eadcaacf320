"""The paper's stochastic gradient descent in latent space (Section 2.4: Eqs. 20-25, and Eq. 28 for
the nonlinear operator), for all starts of all surveys as one batch of latent vectors."""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Optional

import torch

from .equations import latent_penalty, learning_rate_schedule, regularization_schedule
from .history import History

# a start whose latent norm exceeds this many times sqrt(d) is declared diverged
DIVERGENCE_FACTOR = 100.0
ADAM_BETAS = (0.9, 0.999)
ADAM_EPS = 1e-8


@dataclass(frozen=True)
class SGDSettings:
    """One run's settings (validated by the estimator)."""

    optimizer: str              # "sgd" or "adam"
    lr: float
    lr_decay: float
    decay_every: int
    regularization: Optional[str]
    lam: float
    lam_decay: float
    mu_chi: float
    n_iterations: int
    iterations_per_epoch: int
    target_misfit: Optional[float]
    uniform: bool               # uniform latents: stochastic clipping after every step


class Adam:
    """Adam's update (torch's defaults: betas 0.9, 0.999, eps 1e-8) on a batch of latents."""

    def __init__(self, z):
        self.m1 = torch.zeros_like(z)
        self.m2 = torch.zeros_like(z)

    def step(self, z, grad, lr, t):
        """The iterate after step ``t`` (1-based) with step size ``lr``."""
        b1, b2 = ADAM_BETAS
        self.m1 = b1 * self.m1 + (1 - b1) * grad
        self.m2 = b2 * self.m2 + (1 - b2) * grad * grad
        denom = (self.m2.sqrt() / math.sqrt(1 - b2 ** t)) + ADAM_EPS
        return z - (lr / (1 - b1 ** t)) * self.m1 / denom


def run_sgd(problem, z, streams, cfg, *, check_first=None, progress=None):
    """Run the SGD from latents ``z`` (R, d) on ``problem``; returns ``(history, reached, diverged)``.

    ``streams`` gives each epoch's mini-batches and clipping draws (:class:`~.randomness.EpochStreams`);
    ``check_first(x, s)`` sees the first iteration's models and slowness; ``progress``: a tqdm
    description (None: no progress bar). Every iterate is scored on the full data before its update
    (its record); a start stops when it reaches ``cfg.target_misfit`` or diverges (NaN, or a latent
    norm above ``DIVERGENCE_FACTOR * sqrt(d)``: the bad iterate is never decoded).
    """
    R, d = z.shape
    per_epoch, target = cfg.iterations_per_epoch, cfg.target_misfit
    history = History(problem, cfg.n_iterations, z, problem.operator.n_params)
    active = torch.ones(R, dtype=torch.bool, device=z.device)
    diverged = torch.zeros_like(active)
    reached = torch.zeros_like(active)
    adam = Adam(z) if cfg.optimizer == "adam" else None
    max_norm = DIVERGENCE_FACTOR * math.sqrt(d)

    iterations = range(cfg.n_iterations)
    if progress is not None:
        from tqdm.auto import tqdm
        iterations = tqdm(iterations, desc=progress)
    for k in iterations:
        epoch, j = divmod(k, per_epoch)
        if j == 0:
            batches = streams.batches()
            redraw = streams.redraws() if cfg.uniform else None
        rays = batches[:, j]
        lr_k = learning_rate_schedule(cfg.lr, cfg.lr_decay, cfg.decay_every, epoch)
        lam_k = regularization_schedule(cfg.lam, cfg.lam_decay, k)
        history.schedule(lr_k, lam_k)

        zk = z.detach().requires_grad_(True)
        x, s = problem.decode(zk)
        if k == 0 and check_first is not None:
            with torch.no_grad():
                check_first(x, s)
        t_rays, t_full = problem.traveltimes(x, s, rays, while_waiting=history.flush)
        znorm = torch.linalg.vector_norm(zk, dim=1)
        loss = latent_penalty(problem.data_loss(t_rays, rays), znorm, cfg.regularization, lam_k, cfg.mu_chi)
        (grad,) = torch.autograd.grad(loss.sum(), zk)

        with torch.no_grad():
            rms = history.record(k, t_full, x.detach(), zk.detach(), znorm.detach(), active)
            z_new = zk.detach() - lr_k * grad if adam is None else adam.step(zk.detach(), grad, lr_k, k + 1)
            if redraw is not None:   # stochastic clipping: out-of-box components redrawn
                z_new = torch.where(z_new.abs() > 1, redraw[j], z_new)
            if target is not None:
                hit = active & (rms <= target)
                reached = reached | hit
                active = active & ~hit
            bad = active & (~torch.isfinite(z_new).all(1) | (torch.linalg.vector_norm(z_new, dim=1) > max_norm))
            diverged = diverged | bad
            active = active & ~bad
            z = torch.where(active[:, None], z_new, zk.detach())
        if target is not None and j == per_epoch - 1 and not bool(active.any()):
            break
    history.flush()
    return history, reached, diverged
