"""One Adam step of the VAE's training (eq. (2) of the paper), eager or replayed from a CUDA graph.

:class:`TrainingStep` is what ``VAEPrior.fit`` runs at every iteration: the forward pass with the
noise of eq. (1), the loss, the backward pass and Adam's update. It returns the step's
``(reconstruction, kl, loss)`` as one device tensor, so that the loop reads the device only once per
block of iterations.

:class:`GraphedTrainingStep` (``VAEPrior(cuda_graphs=True)``, CUDA only) runs the same step from a
CUDA graph: a few eager steps on a side stream (cuDNN's and the allocator's first calls), then one
capture, then one replay per iteration. The host's work per iteration is two copies into the
graph's inputs: the crops, and the noise of eq. (1), drawn outside the graph from the training's own
generator (a graph may only draw from the default generator), in float32. Adam runs with
``capturable=True`` (its step count on the device). These two differences make its numbers differ
from the eager step's by rounding, not bit for bit.
"""
from __future__ import annotations

import torch

from .nn.vae import VAE, vae_loss

#: eager steps before the capture (on a side stream, as torch's CUDA-graph notes ask)
WARMUP_STEPS = 3


class TrainingStep:
    """The eager step (see the module's docstring)."""

    def __init__(self, module, optimizer, generator, *, alpha, beta, bfloat16):
        self.module, self.optimizer, self.generator = module, optimizer, generator
        self.alpha, self.beta, self.bfloat16 = float(alpha), float(beta), bfloat16

    def forward_backward(self, xb, eps=None, autocast_cache=True):
        """Loss of batch ``xb``, its gradient and Adam's update; the losses as one tensor (3,).
        ``eps``: the noise of eq. (1) given (None: drawn from the training's generator)."""
        device = xb.device.type
        with torch.autocast(device, dtype=torch.bfloat16, enabled=self.bfloat16, cache_enabled=autocast_cache):
            # encode and decode only (VAE.forward's steps): a callable architecture's module need not have forward
            mu, logvar = self.module.encode(xb)
            x_hat = self.module.decode(VAE.reparameterise(mu, logvar, alpha=self.alpha, generator=self.generator,
                                                          eps=eps))
        loss, reconstruction, kl = vae_loss(x_hat.float(), xb, mu.float(), logvar.float(), beta=self.beta)
        loss.backward()
        self.optimizer.step()
        return torch.stack([reconstruction.detach(), kl.detach(), loss.detach()])

    def __call__(self, xb):
        self.optimizer.zero_grad(set_to_none=True)
        return self.forward_backward(xb)

    def _probe_loss(self, xb):
        """Batch ``xb``'s loss with the noise of eq. (1) at zero (no draw), for the checks below."""
        with torch.autocast(xb.device.type, dtype=torch.bfloat16, enabled=self.bfloat16):
            mu, logvar = self.module.encode(xb)
            x_hat = self.module.decode(VAE.reparameterise(mu, logvar, alpha=self.alpha, eps=torch.zeros_like(mu)))
        return vae_loss(x_hat.float(), xb, mu.float(), logvar.float(), beta=self.beta)[0]

    def check_batch_fits(self, x1, batch, owner, input_held=False):
        """A MemoryError where a batch of ``batch`` rows like ``x1`` (one row) cannot keep its activations
        for the gradient in the device's available memory (:mod:`latentinv._memory`), before any step.
        ``input_held``: the batch is a tensor already in memory (the whole training set), not counted again."""
        from ._memory import check_fits, saved_bytes_per_row
        per_row = saved_bytes_per_row(self._probe_loss, x1) - (x1[0].nbytes if input_held else 0)
        check_fits(owner, batch, per_row, x1.device, what=f"batch_size={batch} rows",
                   parts="the network's activations kept for the gradient",
                   advice=lambda room: f"Lower batch_size to at most {int(room // per_row)}, or the network's "
                                       "channels / hidden_size.")

    def check_bfloat16_gradients(self, xb, owner, repeats=3):
        """On a CPU in bfloat16: a ValueError unless ``repeats`` computations of batch ``xb``'s gradient
        are finite and the same to the bit, checked before the first step and leaving the training's state
        as it was (the noise of eq. (1) at zero, no draw).

        oneDNN's bfloat16 weight gradients are otherwise deterministic here. torch 2.13's are garbage, from
        one call to the next, for convolutions whose input map is smaller than their kernel (a 1 x 1 map,
        4 x 4 kernel, padding 2: a network too deep for its images), with and without AMX. Such a network
        would train on values up to 1e38 without a word, or diverge at a random iteration."""
        named = [(n, p) for n, p in self.module.named_parameters() if p.requires_grad]
        params = [p for _, p in named]
        grads = [torch.autograd.grad(self._probe_loss(xb), params) for _ in range(repeats)]
        for (name, _), *gs in zip(named, *grads):
            if not all(bool(torch.isfinite(g).all()) for g in gs) or not all(torch.equal(g, gs[0]) for g in gs[1:]):
                raise ValueError(
                    f"{owner}: precision='bfloat16' on this CPU gives {name}'s gradient non-finite or different "
                    f"from one computation to the next ({repeats} computations of one batch): torch's bfloat16 "
                    "convolution kernels (oneDNN) compute garbage for a layer whose input map is smaller than "
                    "its kernel, which a network too deep for its images has. Use precision='float32', or "
                    "larger images or fewer layers (channels / kernel_sizes).")

    def release(self):
        """Drop what the step holds between calls (nothing for the eager step)."""


class GraphedTrainingStep(TrainingStep):
    """The step replayed from a CUDA graph (see the module's docstring)."""

    def __init__(self, module, optimizer, generator, *, alpha, beta, bfloat16, n_components):
        super().__init__(module, optimizer, generator, alpha=alpha, beta=beta, bfloat16=bfloat16)
        self.n_components = int(n_components)
        self.graph = self.xb = self.eps = self.out = None
        self.steps = 0

    def _noise(self, batch, device):
        if self.alpha == 0:      # eq. (1) without noise: z = mu (reparameterise draws nothing)
            return torch.zeros((batch, self.n_components), device=device)
        return torch.randn((batch, self.n_components), generator=self.generator, device=device)

    def __call__(self, xb):
        eps = self._noise(xb.shape[0], xb.device)
        if self.steps < WARMUP_STEPS:                 # eager, on a side stream
            side = torch.cuda.Stream()
            side.wait_stream(torch.cuda.current_stream())
            with torch.cuda.stream(side):
                self.optimizer.zero_grad(set_to_none=True)
                out = self.forward_backward(xb, eps, autocast_cache=False)
            torch.cuda.current_stream().wait_stream(side)
        else:
            if self.graph is None:                    # capture once; the gradients live in its pool
                self.xb, self.eps = xb.clone(), eps.clone()
                self.optimizer.zero_grad(set_to_none=True)
                self.graph = torch.cuda.CUDAGraph()
                with torch.cuda.graph(self.graph):
                    self.out = self.forward_backward(self.xb, self.eps, autocast_cache=False)
            else:
                if xb.shape != self.xb.shape:
                    raise ValueError(f"GraphedTrainingStep: a captured step takes batches of shape "
                                     f"{tuple(self.xb.shape)}, got {tuple(xb.shape)}")
                self.xb.copy_(xb)
                self.eps.copy_(eps)
            self.graph.replay()
            out = self.out.clone()
        self.steps += 1
        return out

    def release(self):
        """Free the graph and its pool (the gradients held there)."""
        self.optimizer.zero_grad(set_to_none=True)
        self.graph = self.xb = self.eps = self.out = None
