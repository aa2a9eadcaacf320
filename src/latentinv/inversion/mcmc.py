"""Markov chain kernels in latent space: the target, preconditioned Crank-Nicolson (pCN), MALA, and
the burn-in adaptation of their step sizes and preconditioners.

Every chain moves in a *whitened* space ``u`` whose prior is the standard normal ``N(0, I)``:

- normal latents (VAE): ``z = u``;
- uniform latents (SGAN, in [-1, 1]): ``z = erf(u / sqrt(2)) = 2 Phi(u) - 1`` (the boundary is
  *transformed*, not reflected): ``u ~ N(0, I)`` gives ``z ~ U(-1, 1)`` exactly, so that one kernel
  serves both priors and no proposal ever leaves the box.

The target of a chain is ``pi(u) ~ exp(-Phi(u) - ||u||**2 / 2)`` with the Gaussian likelihood's
potential ``Phi(u) = sum_i (y_i - f_i(s(g(z(u)))))**2 / (2 sigma_i**2)``, i.e. half the weighted data
term of :meth:`~.problem.LatentProblem.data_loss` (Eq. 24 of the paper without its regularisation:
the prior plays its part).

Kernels (all keep ``pi`` invariant; a Metropolis-Hastings test corrects each proposal):

- ``"pcn"``: ``u' = m + rho (u - m) + beta L xi`` with ``rho = sqrt(1 - beta**2)``, ``xi ~ N(0, I)``:
  reversible with respect to the reference Gaussian ``N(m, L L^T)``, so the acceptance ratio needs
  the potential only (no gradient): ``log a = Psi(u) - Psi(u')`` with
  ``Psi(u) = Phi(u) + ||u||**2 / 2 - ||L^{-1} (u - m)||**2 / 2``. With ``m = 0, L = I`` it is the
  classic pCN of Cotter et al. (2013), ``log a = Phi(u) - Phi(u')``.
- ``"mala"``: ``u' = u - (h / 2) C grad U(u) + sqrt(h) L xi`` with ``U = Phi + ||u||**2 / 2``,
  ``C = L L^T``, ``h = step**2`` (Roberts & Tweedie, 1996; preconditioned): one decoder gradient per
  proposal.
- ``"rwm"``: random-walk Metropolis ``u' = u + step L xi`` (symmetric: ``log a = U(u) - U(u')``). No
  reference mean: the pCN's contraction ``(1 - rho) (u - m)`` towards a mean fixed at the end of the
  burn-in pushes chains that keep drifting along narrow modes back uphill (on mc2 its acceptance fell
  from 0.20 to 0.09 after the burn-in while this kernel's stayed at 0.25; docs/benchmarks/sampling.md).
- ``"de"``: differential-evolution Metropolis from an archive of past states (DE-MCZ, ter Braak &
  Vrugt, 2008; the sampler of DREAM(ZS), Laloy & Vrugt, 2012): ``u' = u + gamma (a - b) + e`` with
  ``a, b`` two archived states, frozen with the archive at the end of the burn-in (symmetric:
  ``log a = U(u) - U(u')``); ``gamma = 1`` now and then jumps between the places the archive has
  seen (:class:`DifferentialEvolution`).
- ``"de-mala"``: MALA steps mixed, at random per chain and iteration, with those jumps
  (:class:`DifferentialEvolutionMALA`): each proposal keeps its own Metropolis-Hastings ratio, so
  the mixture keeps ``pi`` invariant.
- ``"hmc"``: Hamiltonian Monte Carlo (Duane et al., 1987; Neal, 2011) with ``C = L L^T`` as inverse
  mass matrix: ``n_leapfrog`` leapfrog steps per proposal (one decoder gradient each), ratio
  ``H(u, r) - H(u', r')`` with ``H = U + ||r||**2 / 2`` in whitened momenta ``r`` (:class:`HMC`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, fields

import numpy as np
import torch

from .equations import has_a_medium

_SQRT2 = math.sqrt(2.0)
#: latents of a uniform prior are kept this far inside (-1, 1) when mapped to the whitened space
UNIFORM_EDGE = 1e-6


# -- the latent transform -------------------------------------------------------------------------------
def to_latent(u, uniform):
    """Latents ``z`` of whitened ``u``: ``u`` itself, or ``erf(u / sqrt(2))`` for uniform latents."""
    return torch.special.erf(u / _SQRT2) if uniform else u


def from_latent(z, uniform):
    """Whitened ``u`` of latents ``z`` (inverse of :func:`to_latent`; uniform ones clipped inside
    (-1, 1) by :data:`UNIFORM_EDGE`), computed in float64."""
    z = torch.as_tensor(z).to(torch.float64)
    if not uniform:
        return z
    return _SQRT2 * torch.special.erfinv(z.clamp(-1 + UNIFORM_EDGE, 1 - UNIFORM_EDGE))


# -- the state of a batch of chains ---------------------------------------------------------------------
@dataclass
class ChainState:
    """The current point of ``R`` chains: whitened ``u`` (R, d), latents ``z``, models ``x``
    (R, n_cells), full-data traveltimes ``t_full`` (R, n_data), potential ``phi`` (R,) and, for MALA,
    ``grad`` = grad Phi(u) (R, d)."""

    u: torch.Tensor
    z: torch.Tensor
    x: torch.Tensor
    t_full: torch.Tensor
    phi: torch.Tensor
    grad: torch.Tensor | None = None

    def where(self, accept, other):
        """Rows of ``other`` where ``accept``, of ``self`` elsewhere."""
        out = {}
        for f in fields(self):
            a, b = getattr(self, f.name), getattr(other, f.name)
            if a is None:
                out[f.name] = None
                continue
            mask = accept.reshape(-1, *([1] * (a.ndim - 1)))
            out[f.name] = torch.where(mask, b, a)
        return ChainState(**out)


def evaluate(problem, u, *, uniform, gradient):
    """The :class:`ChainState` of whitened latents ``u`` (one decoder call and one operator call for
    all chains; with ``gradient``, one backward pass through the decoder for ``grad Phi``)."""
    rays = problem.all_rays(u.shape[0])
    with torch.enable_grad() if gradient else torch.no_grad():
        uu = u.detach().requires_grad_(gradient)
        z = to_latent(uu, uniform)
        x, s = problem.decode(z)
        # a model whose slowness is not finite and positive everywhere has no posterior density (the
        # slowness map's domain, as checked at the chains' start): its potential is infinite, so that the
        # proposal is rejected; its rows go to the operator as a unit slowness (a nonlinear engine
        # refuses non-positive slowness, a linear one would give finite traveltimes to an impossible model)
        outside = ~has_a_medium(s)
        s = torch.where(outside[:, None], torch.ones_like(s), s)
        if gradient:
            t_rays, t_full = problem.traveltimes(x, s, rays)
            phi = 0.5 * problem.data_loss(t_rays, rays)
            grad = torch.autograd.grad(phi.sum(), uu)[0]
        else:           # the potential from the full data, without autograd or Jacobians
            t_full = problem.full_traveltimes(x, s)
            phi = 0.5 * problem.data_loss(t_full, rays)
            grad = None
    phi = torch.where(outside, torch.inf, phi.detach())
    return ChainState(u.detach(), z.detach(), x.detach(), t_full.detach(), phi, grad)


def likelihood_jacobian(problem, u, uniform, max_rows=None, row_bytes=None):
    """The Jacobian ``d t / d u`` (R, n_data, d) of the full data at whitened latents ``u`` (R, d):
    ``J = G(s) D`` with ``D = d s / d u`` the slowness's Jacobian and ``G(s)`` the operator's.

    ``D``: each of ``u``'s rows is repeated once per latent direction and the directional derivatives
    ``D e_k`` come from a double backward through the decoder and the slowness map (the gradient
    ``D^T v`` of a dummy ``v``, differentiated in ``v``): the decoder's custom functions have
    differentiable backwards, where forward-mode differentiation would need a rule of its own for
    each. ``G``: a linear operator's kernel on the device, or a nonlinear operator's Jacobians at the
    rows' slowness, from its engine on the host (its backward applies ``G^T`` but cannot be
    differentiated again). ``max_rows``: rows per pass (each pass decodes ``max_rows`` latents and keeps
    a double-backward graph); None: ``max(d, R // 2)``, so that a pass holds about what the chains'
    own batch does, or fewer where that graph would not fit in memory (:func:`jacobian_pass_rows`,
    ``row_bytes`` its per-row size when known)."""
    R, d = u.shape
    max_rows = (jacobian_pass_rows(problem, u, uniform, row_bytes) if max_rows is None
                else max(d, int(max_rows)))
    per_pass = max(1, max_rows // d)
    eye = torch.eye(d, dtype=u.dtype, device=u.device)
    kernel = getattr(problem.traveltimes, "matrix", None)        # a linear operator's G (CSR, on the device)
    graph = _pass_graph(problem, uniform)
    blocks = []
    for start in range(0, R, per_pass):
        rows = u[start:start + per_pass].detach()
        n = rows.shape[0]
        with torch.enable_grad():
            g, s, v = graph(rows.repeat_interleave(d, 0).requires_grad_(True))
            (directional,) = torch.autograd.grad(g, v, eye.repeat(n, 1))      # row (r, k): D_r e_k
        D = directional.detach().reshape(n, d, -1)                            # (n, d, n_cells)
        if kernel is not None:
            flat = D.reshape(n * d, -1).T.contiguous()                        # (n_cells, n * d)
            blocks.append((kernel @ flat).T.reshape(n, d, -1).transpose(1, 2))
        else:
            slowness = s.detach()[::d].to("cpu", torch.float64).numpy()       # each row's own slowness
            _, jacobians = problem.operator.response_and_jacobian(slowness)
            D64 = D.to("cpu", torch.float64).numpy()
            J = np.stack([jac @ D64[r].T for r, jac in enumerate(jacobians)])    # (n, n_data, d)
            blocks.append(torch.as_tensor(J, dtype=u.dtype, device=u.device))
    return torch.cat(blocks)


def _pass_graph(problem, uniform):
    """A pass of :func:`likelihood_jacobian` up to its second backward, on rows ``uu`` that ask for
    gradients: ``(g, s, v)`` with ``s`` the slowness, ``v`` a dummy and ``g = D^T v``, its graph (the
    decoder's and the first backward's) built to be differentiated again (what the pass holds per row:
    :func:`pass_row_bytes`)."""
    def graph(uu):
        _, s = problem.decode(to_latent(uu, uniform))
        v = torch.zeros_like(s, requires_grad=True)
        (g,) = torch.autograd.grad(s, uu, v, create_graph=True)
        return g, s, v
    return graph


def jacobian_pass_rows(problem, u, uniform, per_row=None):
    """Rows per pass of :func:`likelihood_jacobian` for the chains ``u`` (R, d): at most
    ``max(d, R // 2)``, and where a pass's graph would take more than half the memory available
    (:mod:`latentinv._memory`), fewer: a multiple of ``d`` (whole chains), at least ``d``. ``per_row``:
    the graph's bytes per decoded row (a lower bound), measured on 6 rows when None (decodings that no
    forward-run count includes). MemoryError where not even one chain's ``d`` rows fit."""
    from .._memory import _size, available_bytes
    R, d = u.shape
    rows = max(d, R // 2)
    room = available_bytes(u.device)
    if room is None:
        return rows
    if per_row is None:
        per_row = pass_row_bytes(problem, u, uniform)
    if per_row * d > room:
        raise MemoryError(
            f"LatentSampler: the Gauss-Newton preconditioner's Jacobian needs at least {_size(per_row * d)} "
            f"for one chain ({d} decodings with their double-backward graphs, {_size(per_row)} each, whatever "
            f"the number of chains), but {u.device} has {_size(room)} available. Use "
            f"preconditioner='empirical' (no Jacobian), or free memory on {u.device}.")
    fit = int(room // 2 // max(per_row, 1.0)) // d * d
    return max(d, min(rows, fit))


def pass_row_bytes(problem, u, uniform):
    """Bytes a pass of :func:`likelihood_jacobian` holds per decoded row (measured on 6 rows like
    ``u``'s first; a lower bound, :func:`latentinv._memory.saved_bytes_per_row`)."""
    from .._memory import saved_bytes_per_row
    return saved_bytes_per_row(_pass_graph(problem, uniform), u[:1].detach())


# -- the preconditioner ---------------------------------------------------------------------------------
class Preconditioner:
    """Per-row reference Gaussian ``N(m, L L^T)`` of the kernels (``m``: per chain, ``L``: per survey,
    shared by its chains); starts as the prior's ``N(0, I)``."""

    def __init__(self, n_rows, n_components, device, dtype):
        self.mean = torch.zeros(n_rows, n_components, device=device, dtype=dtype)
        self.chol = torch.eye(n_components, device=device, dtype=dtype).expand(n_rows, -1, -1).clone()
        self.pass_row_bytes = None       # a Gauss-Newton fit's bytes per decoded row (fit_gauss_newton)

    def apply(self, v):
        """``L v`` per row."""
        return (self.chol @ v[:, :, None])[:, :, 0]

    def solve(self, v):
        """``L^{-1} v`` per row."""
        return torch.linalg.solve_triangular(self.chol, v[:, :, None], upper=False)[:, :, 0]

    def apply_transpose(self, v):
        """``L^T v`` per row."""
        return (self.chol.transpose(1, 2) @ v[:, :, None])[:, :, 0]

    def covariance_apply(self, v):
        """``L L^T v`` per row."""
        return self.apply((self.chol.transpose(1, 2) @ v[:, :, None])[:, :, 0])

    def fit_gauss_newton(self, problem, u, uniform, n_chains):
        """Fit ``L L^T`` to the inverse of the potential's Gauss-Newton Hessian ``J^T W J + I`` at the
        chains' points ``u`` (R, d), averaged over the chains of a survey (``J`` = the Jacobian of the
        traveltimes to ``u``, :func:`likelihood_jacobian`; ``W`` = the likelihood's weights
        ``1 / noise_std**2``; ``I``: the prior). Near a mode it is the local posterior covariance, so the
        kernels' steps are whitened from the first iteration, where the draws' covariance needs draws
        that already explore. The mean is left as it is."""
        R, d = u.shape
        if self.pass_row_bytes is None:       # measured once per run: the passes hold the same rows at each fit
            self.pass_row_bytes = pass_row_bytes(problem, u, uniform)
        J = likelihood_jacobian(problem, u, uniform, row_bytes=self.pass_row_bytes).to(torch.float64)  # (R, n_data, d)
        y, w = problem._observed(None)
        w = (torch.ones_like(y) if w is None else w).to(torch.float64)
        scale = 0.5 if problem.paper_gradient else 1.0      # data_loss's factor: phi = scale / 2 sum w r**2
        H = scale * (J.transpose(1, 2) @ (w[:, :, None] * J))
        # the mean over a survey's chains whose Jacobian is finite (a chain at a point where the slowness
        # map or the decoder is not differentiable says nothing about the others' curvature)
        finite = torch.isfinite(H).all(2).all(1).reshape(R // n_chains, n_chains)
        if not bool(finite.any(1).all()):
            bad = torch.nonzero(~finite.any(1)).flatten().tolist()
            raise ValueError(f"the Jacobian of the traveltimes to the latents is not finite at any chain of "
                             f"surveys {bad}: the Gauss-Newton preconditioner cannot be fitted there; use "
                             f"preconditioner='empirical'")
        H = torch.where(finite.reshape(R, 1, 1), H, 0.0).reshape(R // n_chains, n_chains, d, d).sum(1)
        H = H / finite.sum(1)[:, None, None] + torch.eye(d, dtype=torch.float64, device=u.device)
        covariance = torch.cholesky_inverse(torch.linalg.cholesky(H))         # H^{-1}, in float64
        chol = torch.linalg.cholesky(0.5 * (covariance + covariance.transpose(1, 2)))
        self.chol = chol.repeat_interleave(n_chains, 0).to(self.chol.dtype)

    def update(self, window, n_chains, shrinkage=0.1):
        """Fit to the draws ``window`` (n_draws, R, d) of the last burn-in window: ``m`` = each chain's
        mean; ``L L^T`` = the covariance around the chains' own means pooled over the chains of a
        survey, shrunk towards its mean variance by ``shrinkage`` (well conditioned with few draws)."""
        W = window.to(torch.float64)
        n, R, d = W.shape
        mean = W.mean(0)
        dev = (W - mean).reshape(n, R // n_chains, n_chains, d).permute(1, 0, 2, 3).reshape(R // n_chains, -1, d)
        cov = dev.transpose(1, 2) @ dev / max(dev.shape[1] - 1, 1)
        scale = torch.diagonal(cov, dim1=1, dim2=2).mean(1).clamp_min(1e-12)
        eye = torch.eye(d, dtype=torch.float64, device=W.device)
        cov = (1 - shrinkage) * cov + shrinkage * scale[:, None, None] * eye + 1e-12 * eye
        chol = torch.linalg.cholesky(cov).repeat_interleave(n_chains, 0)
        self.mean = mean.to(self.mean.dtype)
        self.chol = chol.to(self.chol.dtype)


# -- kernels ----------------------------------------------------------------------------------------------
def energy(state):
    """The potential ``U(u) = Phi(u) + ||u||**2 / 2`` of the target (the prior's term included)."""
    return state.phi + 0.5 * (state.u * state.u).sum(1)


class Kernel:
    """What :func:`~.sampler.run_chains` calls on every kernel besides ``propose`` and ``log_accept``:
    no-ops for the kernels whose proposal depends on the current state and the random normals only."""

    @classmethod
    def for_sampler(cls, sampler):
        """The kernel with the settings of a :class:`~.sampler.LatentSampler` it uses."""
        return cls()

    #: evaluations of the target (decoder + operator) per iteration and chain
    evaluations_per_iteration = 1

    def bind(self, evaluate):
        """Called once with ``evaluate(u) -> ChainState`` (with gradient), for kernels that evaluate
        the target inside a proposal."""

    def start(self, state, n_chains, streams):
        """Called once with the chains' initial state (rows grouped ``n_chains`` by survey)."""

    def observe(self, k, state, burnin):
        """Called after iteration ``k``'s accept/reject with the chains' new state."""

    def adaptation_signal(self, accept_prob):
        """The acceptance probabilities the step-size adaptation sees (all of them by default)."""
        return accept_prob


class PCN(Kernel):
    """Preconditioned Crank-Nicolson; ``step`` is ``beta`` in (0, 1] (see the module docstring)."""

    name = "pcn"
    needs_gradient = False
    max_step = 1.0

    def propose(self, state, step, xi, pre):
        beta = step[:, None]
        rho = torch.sqrt(1.0 - beta * beta)
        return pre.mean + rho * (state.u - pre.mean) + beta * pre.apply(xi)

    def log_accept(self, current, proposed, step, pre):
        return self.residual(current, pre) - self.residual(proposed, pre)

    @staticmethod
    def residual(state, pre):
        """``Psi(u) = Phi(u) + ||u||**2 / 2 - ||L^{-1} (u - m)||**2 / 2``."""
        w = pre.solve(state.u - pre.mean)
        return state.phi + 0.5 * (state.u * state.u).sum(1) - 0.5 * (w * w).sum(1)


class MALA(Kernel):
    """Preconditioned Metropolis-adjusted Langevin; ``step`` is ``sqrt(h)`` (see the module docstring)."""

    name = "mala"
    needs_gradient = True
    max_step = 10.0

    @staticmethod
    def _drift(state, step, pre):
        h = (step * step)[:, None]
        return state.u - 0.5 * h * pre.covariance_apply(state.grad + state.u)

    def propose(self, state, step, xi, pre):
        return self._drift(state, step, pre) + step[:, None] * pre.apply(xi)

    def log_accept(self, current, proposed, step, pre):
        def log_q(to, frm):       # log q(to | frm) up to a constant shared by both directions
            w = pre.solve(to.u - self._drift(frm, step, pre)) / step[:, None]
            return -0.5 * (w * w).sum(1)

        return energy(current) - energy(proposed) + log_q(current, proposed) - log_q(proposed, current)


class RWM(Kernel):
    """Random-walk Metropolis with the adapted covariance ``L L^T``; ``step`` scales ``L`` (see the
    module docstring)."""

    name = "rwm"
    needs_gradient = False
    max_step = 10.0

    def propose(self, state, step, xi, pre):
        return state.u + step[:, None] * pre.apply(xi)

    def log_accept(self, current, proposed, step, pre):
        return energy(current) - energy(proposed)


class DifferentialEvolution(Kernel):
    """Differential-evolution Metropolis from an archive of past states (DE-MCZ; ter Braak & Vrugt,
    2008, the sampler of DREAM(ZS)): ``u' = u + gamma (a - b) + e`` with ``a != b`` drawn uniformly
    from the survey's archive of past chain states, ``gamma = step * 2.38 / sqrt(2 d)`` (``step``
    adapted per chain during the burn-in) or, with probability ``p_jump``, ``gamma = 1`` (a jump by
    the difference of two archived states: a chain near ``b`` moves to the neighbourhood of ``a``,
    e.g. another mode; these jumps are left out of the step adaptation), and ``e = jitter * xi`` a
    small normal perturbation.

    The archive starts with the chains' initial states; during the burn-in every chain's state is
    added every ``archive_every`` iterations, keeping the last ``archive_size`` entries per survey
    (None: ``10 * n_chains``, the last 10 snapshots of every chain; a window of recent states, not
    DREAM(ZS)'s whole history, keeps the differences at the scale of the posterior the chains have
    reached); at the end of the burn-in it is frozen. With a fixed archive the proposal is
    symmetric (``a`` and ``b`` exchangeable), so the Metropolis ratio is ``U(u) - U(u')`` with
    ``U = Phi + ||u||**2 / 2`` (the prior's term included) and the kept draws come from one fixed
    reversible kernel, as for the other kernels."""

    name = "de"
    needs_gradient = False
    max_step = 10.0

    def __init__(self, p_jump=0.1, archive_every=10, archive_size=None, jitter=1e-4):
        self.p_jump, self.archive_every = p_jump, archive_every
        self.archive_size, self.jitter = archive_size, jitter

    @classmethod
    def for_sampler(cls, sampler):
        return cls(p_jump=float(sampler.jump_probability))

    def start(self, state, n_chains, streams):
        R, d = state.u.shape
        self.n_chains, self.n_surveys = n_chains, R // n_chains
        self.gamma = 2.38 / math.sqrt(2 * d)
        self.size = 10 * n_chains if self.archive_size is None else int(self.archive_size)
        self.archive = state.u.reshape(self.n_surveys, n_chains, d).clone()
        self.streams = streams
        self.survey_of_row = torch.arange(R, device=state.u.device) // n_chains
        self.jump = torch.zeros(R, dtype=torch.bool, device=state.u.device)

    def observe(self, k, state, burnin):
        if burnin and (k + 1) % self.archive_every == 0:
            new = state.u.reshape(self.n_surveys, self.n_chains, -1)
            self.archive = torch.cat([self.archive, new], 1)[:, -self.size:].contiguous()

    def pairs(self, uniforms):
        """Archive indices ``a != b`` (R,) from two columns of uniforms in [0, 1)."""
        n = self.archive.shape[1]
        if n < 2:
            zero = torch.zeros_like(uniforms[:, 0], dtype=torch.long)
            return zero, zero
        a = (uniforms[:, 0] * n).long().clamp(max=n - 1)
        b = (uniforms[:, 1] * (n - 1)).long().clamp(max=n - 2)
        return a, b + (b >= a).long()

    def difference_move(self, state, gamma, xi, uniforms):
        """``u + gamma (a - b) + jitter xi`` with the archive pair drawn from ``uniforms[:, :2]``."""
        a, b = self.pairs(uniforms)
        diff = self.archive[self.survey_of_row, a] - self.archive[self.survey_of_row, b]
        return state.u + gamma[:, None] * diff + self.jitter * xi

    def propose(self, state, step, xi, pre):
        uni = self.streams.uniforms()
        self.jump = uni[:, 2] < self.p_jump
        gamma = torch.where(self.jump, torch.ones_like(step), step * self.gamma)
        return self.difference_move(state, gamma, xi, uni)

    def log_accept(self, current, proposed, step, pre):
        return energy(current) - energy(proposed)

    def adaptation_signal(self, accept_prob):
        return torch.where(self.jump, torch.full_like(accept_prob, float("nan")), accept_prob)


class DifferentialEvolutionMALA(DifferentialEvolution):
    """MALA steps mixed with differential-evolution jumps: each chain, at each iteration, proposes
    with probability ``p_jump`` a jump ``u + (a - b) + jitter * xi`` by the difference of two states of
    the archive (as :class:`DifferentialEvolution` with ``gamma = 1``: symmetric, ratio
    ``U(u) - U(u')``), and otherwise a preconditioned MALA step (:class:`MALA`, its own ratio).
    The choice does not depend on the state, so the mixture keeps the target invariant; the
    Langevin steps explore a mode along the gradient (what a narrow, ill-conditioned mode needs),
    the jumps move chains between the places the archive has seen. Only the MALA steps adapt the
    step size."""

    name = "de-mala"
    needs_gradient = True
    max_step = MALA.max_step

    def __init__(self, p_jump=0.1, archive_every=10, archive_size=None, jitter=1e-4):
        super().__init__(p_jump, archive_every, archive_size, jitter)
        self.mala = MALA()

    def propose(self, state, step, xi, pre):
        uni = self.streams.uniforms()
        self.jump = uni[:, 2] < self.p_jump
        jumped = self.difference_move(state, torch.ones_like(step), xi, uni)
        return torch.where(self.jump[:, None], jumped, self.mala.propose(state, step, xi, pre))

    def log_accept(self, current, proposed, step, pre):
        return torch.where(self.jump, energy(current) - energy(proposed),
                           self.mala.log_accept(current, proposed, step, pre))


class HMC(Kernel):
    """Hamiltonian Monte Carlo with the preconditioner's ``C = L L^T`` as inverse mass matrix; ``step``
    is the leapfrog step ``eps`` (jittered by a uniform factor in [0.9, 1.1) per chain and iteration,
    independent of the state, against periodic trajectories).

    In whitened momenta ``r = L^T p`` (``r ~ N(0, I)``: the proposal's normals), a leapfrog step is
    ``r -= (eps / 2) L^T grad U(u); u += eps L r; r -= (eps / 2) L^T grad U(u)``, and the proposal after
    ``n_leapfrog`` steps is accepted with ``log a = H(u, r) - H(u', r')``, ``H = U + ||r||**2 / 2``. The
    leapfrog map is volume-preserving and reversible under ``r -> -r``, so this keeps ``pi`` invariant.
    The gradients at the ``n_leapfrog - 1`` inner points come from the kernel's own evaluations
    (:meth:`bind`); the last one is the proposal's, evaluated by the chains' loop. Along a long, narrow
    mode a trajectory moves ``n_leapfrog`` steps in one direction where MALA's steps diffuse."""

    name = "hmc"
    needs_gradient = True
    max_step = 10.0

    def __init__(self, n_leapfrog=10):
        self.n_leapfrog = int(n_leapfrog)

    @classmethod
    def for_sampler(cls, sampler):
        return cls(n_leapfrog=int(sampler.n_leapfrog))

    @property
    def evaluations_per_iteration(self):
        return self.n_leapfrog

    def bind(self, evaluate):
        self.evaluate = evaluate

    def start(self, state, n_chains, streams):
        self.streams = streams

    def propose(self, state, step, xi, pre):
        self.eps = step * (0.9 + 0.2 * self.streams.uniforms(1)[:, 0])
        half = 0.5 * self.eps[:, None]
        self.r0 = xi
        r = xi - half * pre.apply_transpose(state.grad + state.u)
        u = state.u
        for i in range(self.n_leapfrog):
            u = u + 2 * half * pre.apply(r)
            if i < self.n_leapfrog - 1:
                inner = self.evaluate(u)
                r = r - 2 * half * pre.apply_transpose(inner.grad + inner.u)
        self.r_last = r          # before the last half step, which needs the proposal's gradient
        return u

    def log_accept(self, current, proposed, step, pre):
        r = self.r_last - 0.5 * self.eps[:, None] * pre.apply_transpose(proposed.grad + proposed.u)
        return (energy(current) + 0.5 * (self.r0 * self.r0).sum(1)
                - energy(proposed) - 0.5 * (r * r).sum(1))


KERNELS = {"pcn": PCN, "mala": MALA, "rwm": RWM, "de": DifferentialEvolution, "de-mala": DifferentialEvolutionMALA,
           "hmc": HMC}

#: default target acceptance rates: 0.234 is optimal for random-walk-like moves such as pCN in many
#: dimensions (Roberts et al., 1997), 0.574 for MALA (Roberts & Rosenthal, 1998), 0.651 for HMC
#: (Beskos et al., 2013)
TARGET_ACCEPTANCE = {"pcn": 0.234, "mala": 0.574, "rwm": 0.234, "de": 0.234, "de-mala": 0.574, "hmc": 0.651}
#: default initial step sizes (pCN's beta, MALA's sqrt(h), RWM's scale of L, HMC's leapfrog step) before
#: the burn-in adaptation
INITIAL_STEP = {"pcn": 0.1, "mala": 0.1, "rwm": 0.1, "de": 1.0, "de-mala": 0.1, "hmc": 0.1}


# -- step-size adaptation -------------------------------------------------------------------------------
class StepAdaptation:
    """Robbins-Monro adaptation of each chain's log step size towards a target acceptance rate
    during burn-in: ``log step += gain_k (a_k - target)`` with ``a_k`` the acceptance probability and
    ``gain_k = (k + 1)**-0.6`` (``k`` restarting at each preconditioner update). At the end of the
    burn-in the step is frozen at ``exp`` of the mean log step over the last half of the last
    window."""

    def __init__(self, step0, target, max_step):
        self.log_step = torch.log(step0)
        self.target, self.max_log = target, math.log(max_step)
        self.k = 0
        self.trail = []

    @property
    def step(self):
        return torch.exp(self.log_step)

    def update(self, accept_prob):
        """One Robbins-Monro step; a chain whose ``accept_prob`` is NaN keeps its step."""
        gap = torch.nan_to_num(accept_prob - self.target, nan=0.0)
        self.log_step = (self.log_step + (self.k + 1) ** -0.6 * gap).clamp(max=self.max_log)
        self.k += 1
        self.trail.append(self.log_step)

    def restart(self):
        self.k = 0
        self.trail = []

    def frozen(self):
        tail = self.trail[len(self.trail) // 2:]
        return torch.exp(torch.stack(tail).mean(0)) if tail else self.step


def adaptation_windows(n_burnin, first=25):
    """Iterations (0-based, exclusive ends) at which the preconditioner is refitted during a burn-in
    of ``n_burnin`` iterations: doubling windows ``first, 2 first, 4 first, ...`` (on the draws since
    the previous refit), the last one ending at least ``first`` iterations before the burn-in's end
    (left to the step size alone)."""
    ends, start, length = [], 0, first
    while start + length + first <= n_burnin:
        ends.append(start + length)
        start, length = start + length, 2 * length
    return ends


# -- proposal and acceptance draws ----------------------------------------------------------------------
class ChainStreams:
    """Per-chain random numbers, drawn in blocks from the per-survey, per-chain NumPy generators of
    :func:`~.randomness.survey_generators` (proposal normals, acceptance uniforms)."""

    def __init__(self, generators, n_components, device, dtype, block=64):
        self.normal_rngs, self.uniform_rngs = generators
        self.d, self.device, self.dtype, self.block = n_components, device, dtype, block
        self._k = block

    def next(self):
        """``(xi, log_uniform)`` of one iteration: (R, d) normals and (R,) log-uniforms."""
        if self._k == self.block:
            xi = np.stack([g.standard_normal((self.block, self.d)) for g in self.normal_rngs], 1)
            uni = np.stack([g.random(self.block) for g in self.uniform_rngs], 1)
            self._xi = torch.tensor(xi, dtype=self.dtype, device=self.device)
            self._log_u = torch.tensor(np.log(uni), dtype=self.dtype, device=self.device)
            self._k = 0
        k = self._k
        self._k += 1
        return self._xi[k], self._log_u[k]

    def uniforms(self, n=3):
        """(R, n) uniforms in [0, 1) of one iteration, for kernels that draw more than a normal
        proposal (archive indices, a choice of move), from per-chain generators spawned from the
        acceptance ones (created at the first call: the other kernels' streams are unchanged)."""
        if getattr(self, "_extra_rngs", None) is None:
            # Generator.spawn (NumPy >= 1.25, the declared bound): the same streams on every NumPy
            self._extra_rngs = [g.spawn(1)[0] for g in self.uniform_rngs]
            self._j = self.block
        if self._j == self.block:
            uni = np.stack([g.random((self.block, n)) for g in self._extra_rngs], 1)
            self._uni = torch.tensor(uni, dtype=self.dtype, device=self.device)
            self._j = 0
        j = self._j
        self._j += 1
        return self._uni[j]
