"""The paper's stochastic gradient descent in latent space (Section 2.4: Eqs. 20-25, and Eq. 28 for
the nonlinear operator), for all starts of all surveys as one batch of latent vectors."""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Optional

import torch

from .equations import latent_penalty, learning_rate_schedule, regularization_schedule
from .history import History
from .runtime import iterations
from .stopping import Stopping

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
    tol: Optional[float] = None             # convergence stop (see stopping.Stopping)
    n_epochs_no_change: int = 5
    prune_every: Optional[int] = None       # successive halving every this many epochs
    prune_keep: float = 0.5


class Adam:
    """Adam's update (torch's defaults: betas 0.9, 0.999, eps 1e-8) on a batch of latents."""

    def __init__(self, z):
        self.m1 = torch.zeros_like(z)
        self.m2 = torch.zeros_like(z)

    @staticmethod
    def scales(lr, t):
        """The bias-corrected factors of step ``t`` (1-based): ``(lr / (1 - b1**t), sqrt(1 - b2**t))``."""
        b1, b2 = ADAM_BETAS
        return lr / (1 - b1 ** t), math.sqrt(1 - b2 ** t)

    def step(self, z, grad, lr, t, rows=None):
        """The iterate after step ``t`` (1-based) with step size ``lr``, for rows ``rows`` (index
        tensor into the moments; None: every row)."""
        return self.step_scaled(z, grad, *self.scales(lr, t), rows)

    def step_scaled(self, z, grad, step, correction, rows=None):
        """:meth:`step` with the factors of :meth:`scales` given (floats, or 0-dim tensors on the
        device: a step captured in a CUDA graph)."""
        b1, b2 = ADAM_BETAS
        if rows is None:
            rows = slice(None)
        m1 = self.m1[rows] = b1 * self.m1[rows] + (1 - b1) * grad
        m2 = self.m2[rows] = b2 * self.m2[rows] + (1 - b2) * grad * grad
        denom = (m2.sqrt() / correction) + ADAM_EPS
        return z - step * m1 / denom


def run_sgd(problem, z, streams, cfg, *, check_first=None, progress=None):
    """Run the SGD from latents ``z`` (R, d) on ``problem``; returns ``(history, stopping)``.

    ``streams`` gives each epoch's mini-batches and clipping draws (:class:`~.randomness.EpochStreams`);
    ``check_first(x, s)`` sees the first iteration's models and slowness; ``progress``: a tqdm
    description (None: no progress bar). Every iterate is scored on the full data before its update
    (its record). A start leaves the batch when a rule of :class:`~.stopping.Stopping` stops it; the
    running rows are ``rows`` (None while all run: the full protocol computes on whole tensors).
    """
    R, d = z.shape
    per_epoch = cfg.iterations_per_epoch
    z = z.clone()
    history = History(problem, cfg.n_iterations, z, problem.operator.n_params)
    stopping = Stopping(R, problem.n_starts, d, z.device, target_misfit=cfg.target_misfit, tol=cfg.tol,
                        n_epochs_no_change=cfg.n_epochs_no_change, prune_every=cfg.prune_every,
                        prune_keep=cfg.prune_keep)
    adam = Adam(z) if cfg.optimizer == "adam" else None
    rows, all_rows = None, torch.arange(R, device=z.device)

    for k in iterations(cfg.n_iterations, progress):
        epoch, j = divmod(k, per_epoch)
        if j == 0:
            batches = streams.batches()
            redraw = streams.redraws() if cfg.uniform else None
        rays = batches[:, j] if rows is None else batches[rows, j]
        lr_k = learning_rate_schedule(cfg.lr, cfg.lr_decay, cfg.decay_every, epoch)
        lam_k = regularization_schedule(cfg.lam, cfg.lam_decay, k)
        history.schedule(lr_k, lam_k)

        zk = (z if rows is None else z[rows]).detach().requires_grad_(True)
        x, s = problem.decode(zk)
        if k == 0 and check_first is not None:
            with torch.no_grad():
                check_first(x, s)
        t_rays, t_full = problem.traveltimes(x, s, rays, while_waiting=history.flush)
        znorm = torch.linalg.vector_norm(zk, dim=1)
        loss = latent_penalty(problem.data_loss(t_rays, rays, rows), znorm, cfg.regularization, lam_k,
                              cfg.mu_chi)
        (grad,) = torch.autograd.grad(loss.sum(), zk)

        with torch.no_grad():
            zk = zk.detach()
            rms = history.record(k, t_full, x.detach(), zk, znorm.detach(), rows)
            z_new = zk - lr_k * grad if adam is None else adam.step(zk, grad, lr_k, k + 1, rows)
            if redraw is not None:   # stochastic clipping: out-of-box components redrawn
                z_new = torch.where(z_new.abs() > 1, redraw[j] if rows is None else redraw[j][rows], z_new)
            every = all_rows if rows is None else rows
            stop = stopping.after_step(every, rms, z_new)
            if j == per_epoch - 1 and stopping.needs_epoch_end:
                history.flush()
                stop |= stopping.at_epoch_end(epoch, every, history.best_misfit)
            z_next = torch.where(stop[:, None], zk, z_new)       # a stopped start keeps its iterate
            if rows is None:
                z = z_next      # not in place: zk (a view of z) may wait in a pending record
            else:
                z[rows] = z_next
            if bool(stop.any()):
                rows = every[~stop]
        if rows is not None and len(rows) == 0:
            break
    history.flush()
    return history, stopping
