"""The SGD of :func:`.sgd.run_sgd` as one fixed-shape step over device tensors, replayed from a CUDA graph.

On a GPU the eager loop is bound by kernel launches and host synchronisations (about 3.4 ms per
iteration of 100 starts on an H100, for a few hundred microseconds of arithmetic). Here an iteration
is a fixed sequence of kernels that never waits for the host:

- it computes every row; a row that stopped (target reached, diverged) is masked, not removed, and
  records nothing more (:meth:`~.history.History.record_masked`), so its results are those of the
  eager loop, which drops it from the batch;
- the iteration counter, the step sizes, the regularisation weights, Adam's bias corrections and the
  epoch's mini-batches and clipping draws are device tensors, read at the counter;
- the full-data traveltimes are a dense product with the kernel (cuSPARSE's CSR product is not known
  to be capturable), equal to the eager CSR product to float32 rounding.

With ``capture=True`` (CUDA) the step is recorded once in a :class:`torch.cuda.CUDAGraph` and each
iteration is one replay; the host touches the device once per chunk of whole epochs, about 25
iterations (the chunk's mini-batches and clipping draws, and whether any row still runs). Without it the same step runs eagerly, on any device: the tests
compare that with :func:`~.sgd.run_sgd` on the CPU.

Rules that decide on the host (convergence ``tol``, successive-halving ``prune_every``) and operators
that run on the host (nonlinear) are not supported: :func:`unsupported` names them.

For the benchmark that weighs this capture against ``torch.compile`` (issue 16: "whichever measures
better"), :data:`compile_options` runs the same step through ``torch.compile(**compile_options)``, alone
(``mode="reduce-overhead"`` makes torch's own CUDA graphs) or inside this module's capture (inductor's
fused kernels, one replay per iteration).
"""
from __future__ import annotations

import torch

from .._subnormals import keep_subnormals
from .equations import latent_penalty, learning_rate_schedule, regularization_schedule
from .history import History
from .runtime import iterations
from .sgd import Adam
from .stopping import Stopping

__all__ = ["run_sgd_static", "unsupported"]


def unsupported(is_linear, tol, prune_every):
    """Why the static step cannot run with an operator (``is_linear``) and these stop rules (a
    sentence), or None."""
    if not is_linear:
        return "the operator is nonlinear (its traveltimes are computed on the host every iteration)"
    if tol is not None:
        return "tol is set (the convergence rule decides on the host at every epoch's end)"
    if prune_every is not None:
        return "prune is set (successive halving ranks the starts on the host)"
    return None


class _StaticStep:
    """The state of a run on the device and its step (see the module's docstring)."""

    def __init__(self, problem, z, cfg, history, stopping, *, dense_full):
        R, d = z.shape
        dev = z.device
        self.problem, self.cfg, self.history, self.stopping = problem, cfg, history, stopping
        self.dense_full = dense_full
        self.z = z.clone()
        self.k = torch.zeros((), dtype=torch.long, device=dev)
        self.running = torch.ones(R, dtype=torch.bool, device=dev)
        per_epoch = cfg.iterations_per_epoch
        # the draws of a chunk of whole epochs, about CHUNK_ITERATIONS iterations (see next_chunk)
        self.chunk_epochs = max(1, -(-CHUNK_ITERATIONS // per_epoch))
        self.chunk_iterations = self.chunk_epochs * per_epoch
        self.batches = self.redraw = None
        self.reuse_full_batches = False
        # the schedules, as the eager loop computes them (Python floats), stored once on the device
        n = cfg.n_iterations
        self.lr_list = [learning_rate_schedule(cfg.lr, cfg.lr_decay, cfg.decay_every, k // per_epoch)
                        for k in range(n)]
        self.lam_list = [regularization_schedule(cfg.lam, cfg.lam_decay, k) for k in range(n)]
        as_tensor = lambda v: torch.tensor(v, dtype=z.dtype, device=dev)
        self.lam = as_tensor(self.lam_list)
        self.adam = Adam(self.z) if cfg.optimizer == "adam" else None
        if self.adam is None:
            self.lr = as_tensor(self.lr_list)
        else:
            step, corr = zip(*(Adam.scales(lr, k + 1) for k, lr in enumerate(self.lr_list)))
            self.adam_step, self.adam_corr = as_tensor(step), as_tensor(corr)

    def next_chunk(self, streams):
        """The next chunk's mini-batches (and clipping draws), copied into the step's own tensors: the
        same numbers as the eager loop's epoch by epoch (a last chunk drawn whole uses its head).
        With ``reuse_full_batches`` and every ray in every batch, the first chunk's orders are kept:
        they only order the sum over all rays."""
        full = streams.batch_size == streams.n_data and self.batches is not None
        draws = [("batches", None if full and self.reuse_full_batches else streams.batches),
                 ("redraw", streams.redraws if self.cfg.uniform else None)]
        for name, draw in draws:
            if draw is None:
                continue
            value = draw(self.chunk_epochs)
            if getattr(self, name) is None:
                setattr(self, name, value)
            else:
                getattr(self, name).copy_(value)

    def state(self):
        """Every tensor a step writes (restored after the warm-up steps that precede a capture)."""
        h, s = self.history, self.stopping
        out = [self.z, self.k, self.running, h.rmse, h.norm, h.best_misfit, h.best_x, h.best_z,
               h.best_iteration, h.n_run, s.reached, s.diverged]
        if h.chi2 is not None:
            out.append(h.chi2)
        if self.adam is not None:
            out += [self.adam.m1, self.adam.m2]
        return out

    def full_traveltimes(self, s):
        ev = self.problem.traveltimes
        return s @ ev.dense_kernel.T if self.dense_full else ev.full(s)

    def __call__(self):
        """One iteration, every row (masked by ``running``); advances the counter."""
        p, cfg, k = self.problem, self.cfg, self.k
        at = k.reshape(1)
        j = torch.remainder(at, self.chunk_iterations)
        rays = self.batches.index_select(1, j)[:, 0]
        lam = self.lam.index_select(0, at)[0]
        zk = self.z.detach().requires_grad_(True)
        x, s = p.decode(zk, autocast_cache=False)
        t_rays = p.traveltimes.rows(s, rays)
        znorm = torch.linalg.vector_norm(zk, dim=1)
        loss = latent_penalty(p.data_loss(t_rays, rays), znorm, cfg.regularization, lam, cfg.mu_chi)
        (grad,) = torch.autograd.grad(loss.sum(), zk)
        with torch.no_grad():
            zk = zk.detach()
            t_full = self.full_traveltimes(s.detach())
            rms = self.history.record_masked(k, t_full, x.detach(), zk, znorm.detach(), self.running)
            if self.adam is None:
                z_new = zk - self.lr.index_select(0, at)[0] * grad
            else:
                z_new = self.adam.step_scaled(zk, grad, self.adam_step.index_select(0, at)[0],
                                              self.adam_corr.index_select(0, at)[0])
            if self.redraw is not None:   # stochastic clipping: out-of-box components redrawn
                z_new = torch.where(z_new.abs() > 1, self.redraw.index_select(0, j)[0], z_new)
            stop = self.stopping.after_step(slice(None), rms, z_new, self.running)
            # a stopped start keeps its iterate, and so does one that stopped before
            self.z.copy_(torch.where((stop | ~self.running)[:, None], zk, z_new))
            self.running &= ~stop
            self.k += 1


#: ``torch.compile`` keyword arguments for the step (None: not compiled); a switch for benchmarks and
#: tests only. On torch 2.13's CPU inductor the compiled step is wrong: docs/benchmarks/gpu.md.
compile_options = None


def _compiled(step, options):
    """``step`` through ``torch.compile(**options)``, the full data a dense product (torch.compile does
    not take sparse tensors). Dynamo splits the step at ``torch.autograd.grad``. A CPU kernel's load may
    turn flush-to-zero on (:mod:`latentinv._subnormals`): each call undoes that."""
    compiled = torch.compile(step.__call__, **options)

    def call(*args, **kwargs):
        with keep_subnormals():
            return compiled(*args, **kwargs)
    return call


#: eager steps before the capture (on a side stream, as torch's CUDA-graph notes ask; then undone)
WARMUP_STEPS = 3
#: iterations (whole epochs) whose draws the host makes and copies to the device at once
CHUNK_ITERATIONS = 25


def _capture(step, call):
    """``call`` (``step``, maybe compiled) recorded in a CUDA graph, after warm-up steps on a side stream
    (then undone). A run of fewer iterations warms up with fewer: a step reads its schedules at the
    counter."""
    saved = [t.clone() for t in step.state()]
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        for _ in range(min(WARMUP_STEPS, step.cfg.n_iterations)):
            call()
    torch.cuda.current_stream().wait_stream(side)
    with torch.no_grad():
        for t, v in zip(step.state(), saved):
            t.copy_(v)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        call()
    return graph


def run_sgd_static(problem, z, streams, cfg, *, capture=False, dense_full=None, reuse_full_batches=None,
                   check_first=None, progress=None):
    """:func:`~.sgd.run_sgd` through the static step; returns ``(history, stopping)``.

    ``capture``: record the step in a CUDA graph and replay it (CUDA only). ``dense_full``: the
    full data as a dense product. ``reuse_full_batches``: where every batch holds every ray, draw
    their order once (the host's draws would otherwise cost more than a GPU's iteration). Both
    default to ``capture``; off, the run equals the eager one on the CPU bit for bit. With
    :data:`compile_options` set the step runs through ``torch.compile`` (``dense_full`` then defaults to
    True).
    """
    if capture and z.device.type != "cuda":
        raise ValueError(f"capture=True needs CUDA tensors, got latents on {z.device}")
    why = unsupported(problem.is_linear and hasattr(problem.traveltimes, "dense_kernel"), cfg.tol,
                      cfg.prune_every)
    if why is not None:
        raise ValueError(f"the static SGD step cannot run this problem: {why}")
    problem.y     # the rows' data, made at first use: made here, never inside a capture (where nothing runs)
    R, d = z.shape
    history = History(problem, cfg.n_iterations, z, problem.operator.n_params)
    stopping = Stopping(R, problem.n_starts, d, z.device, target_misfit=cfg.target_misfit)
    if dense_full is None:
        dense_full = capture or compile_options is not None
    step = _StaticStep(problem, z, cfg, history, stopping, dense_full=dense_full)
    call = step if compile_options is None else _compiled(step, compile_options)
    step.reuse_full_batches = capture if reuse_full_batches is None else reuse_full_batches
    if check_first is not None:
        with torch.no_grad():
            check_first(*problem.decode(z))
    n = cfg.n_iterations
    graph = None
    n_done = 0
    for _ in iterations(-(-n // step.chunk_iterations), progress, unit="chunk"):
        step.next_chunk(streams)
        if capture and graph is None:
            graph = _capture(step, call)
        for _ in range(min(step.chunk_iterations, n - n_done)):
            graph.replay() if graph is not None else call()
            n_done += 1
        if not bool(step.running.any()):      # once per chunk: every start stopped
            break
    # the eager loop stops right after its last row's last iteration: n_run's maximum
    if not bool(step.running.any()):
        n_done = int(history.n_run.max())
    history.lr, history.lam = step.lr_list[:n_done], step.lam_list[:n_done]
    return history, stopping
