"""Is a selected model a stationary point of the data misfit? A line search along the full-data gradient.

The paper's SGD decays its step every epoch and its ring weight every iteration, so a schedule sized for
another survey can freeze the iterate before it reaches a minimum of the misfit: the best misfit then no
longer falls at the end, and a rule on its last iterations (scikit-learn's ``max_iter`` warning) cannot
tell that run from a converged one. A step along the full-data gradient from the selected latent can:
from a minimum (local or global) no step lowers the misfit much, from a frozen iterate one does.

Measured on the paper's survey with the shipped prior (mc1-mc3 with 10 starts and all six truths with 5
in Table 1's VAE cases, the nonlinear case with 1 start; 0.25 ns noise or none), the best step lowered the
data RMSE by at most 3.0 % (VSbod, whose origin term holds the latents; docs/reproduction_convergence_cpu/);
on the tests' 36-ray survey with the defaults, by 64-84 % (docs/user_trial.md, "A convergence check for the
SGD"). :data:`DROP` sits between.
"""
from __future__ import annotations

import numpy as np
import torch

from .problem import LatentProblem, Misfit

#: Distances along the unit steepest-descent direction tried, in latent units (the prior's scale).
STEPS = tuple(2.0 ** -k for k in range(-1, 8))      # 2 ... 1/128
#: Relative fall of the misfit's root (the data RMSE without noise_std) above which a model is not stationary.
DROP = 0.10
#: Data RMSE, relative to the median traveltime, below which a survey is fitted whatever the step gives.
FLOOR = 1e-3


def descent_misfit(problem, Y, sigma, latents, uniform):
    """The lowest misfit reached along the full-data gradient from each row of ``latents``.

    Parameters
    ----------
    problem : LatentProblem
        The run's problem: its decoder, slowness map, operator and device are used (its rows are not).
    Y : ndarray of shape (n_surveys, n_data)
        Observed traveltimes (ns).
    sigma : ndarray of shape (n_data,) or None
        Noise standard deviations (ns); None: unweighted.
    latents : torch.Tensor of shape (n_surveys, d)
        Each survey's selected latent.
    uniform : bool
        Latents in the box [-1, 1]: trial points are clipped into it.

    Returns
    -------
    at : Misfit
        The misfit of ``latents`` (float32 decoder).
    best : Misfit
        Per survey, the misfit of the trial point of :data:`STEPS` with the lowest ``value``.
    """
    S = len(latents)
    # the chain rule's gradient (the paper's nonlinear gradient skips the slowness map's derivative, and
    # points the wrong way under a map that falls with the model value) and the float32 decoder
    check = LatentProblem(problem.decoder, problem.slowness_map, problem.operator, Y, sigma, 1, problem.device,
                          nonlinear_gradient="exact", dtype=problem.dtype)
    z = latents.detach().to(problem.dtype).requires_grad_(True)
    x, s = check.decode(z)
    rays = check.all_rays()
    t_rays, t_full = check.traveltimes(x, s, rays)
    (grad,) = torch.autograd.grad(check.data_loss(t_rays, rays).sum(), z)
    with torch.no_grad():
        at = check.misfit(t_full)
        direction = grad / grad.norm(dim=1, keepdim=True).clamp_min(torch.finfo(grad.dtype).tiny)
        # the trial points in blocks of at most the run's rows (n_starts per survey): one operator call
        # per block, within the memory the run was checked for
        per_block = max(1, min(len(STEPS), problem.n_starts))
        blocks = []         # Misfits of (steps of the block) x S rows, step-major
        for first in range(0, len(STEPS), per_block):
            steps = torch.tensor(STEPS[first:first + per_block], dtype=z.dtype, device=z.device)
            trial = (z[None] - steps[:, None, None] * direction[None]).reshape(-1, z.shape[1])
            if uniform:
                trial = trial.clamp(-1.0, 1.0)
            blocks.append(check.misfit(check.full_traveltimes(*check.decode(trial)),
                                       rows=torch.arange(S, device=z.device).repeat(len(steps))))

    def per_step(name):     # one field of the Misfits, (len(STEPS), S)
        return torch.cat([getattr(m, name) for m in blocks]).reshape(len(STEPS), S)

    value = per_step("value")
    k = torch.where(torch.isfinite(value), value, torch.inf).argmin(0)
    pick = lambda name: None if getattr(at, name) is None else per_step(name)[k, torch.arange(S, device=k.device)]
    best = Misfit(pick("rmse"), pick("chi2"), pick("value"), pick("rms_for_target"))
    return at, best


def is_stationary(at, best, Y):
    """Per survey: True unless the best trial step lowers the misfit's root by more than :data:`DROP`
    from a model that does not already fit its data: within the noise (``sqrt(chi2 / n_data) <= 1``,
    with noise weights) or within :data:`FLOOR` of the median traveltime (0.1 %: the most precise picks
    of first arrivals; float32's rounding lies far below), where the relative fall says nothing.

    Parameters
    ----------
    at, best : Misfit
        As returned by :func:`descent_misfit`.
    Y : ndarray of shape (n_surveys, n_data)
        Observed traveltimes (ns).

    Returns
    -------
    ndarray of bool of shape (n_surveys,)
    """
    at_value, best_value = at.value.cpu().numpy().astype(np.float64), best.value.cpu().numpy().astype(np.float64)
    with np.errstate(divide="ignore", invalid="ignore"):
        drop = 1.0 - np.sqrt(np.minimum(best_value, at_value) / at_value)
    drop = np.where(np.isfinite(at_value) & (at_value > 0) & np.isfinite(drop), drop, 0.0)
    fitted = at.rmse.cpu().numpy() <= FLOOR * np.median(np.abs(Y), axis=1)
    if at.chi2 is not None:
        fitted |= at.rms_for_target.cpu().numpy() <= 1.0
    return (drop <= DROP) | fitted
