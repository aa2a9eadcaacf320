"""Toy problems of Lopez-Alvis et al. (2021) in two dimensions.

* :func:`make_eight_manifold` -- the "eight"-shaped (lemniscate) 1-D manifold embedded in 2-D data,
  the data set of the paper's Fig. 4;
* :func:`fit_toy_vae` -- a small fully-connected VAE trained on such 2-D data for a given
  ``(alpha, beta)`` (the paper's Eqs. 14 and 19 as :func:`latentinv.nn.vae_loss` implements them), used to show how a
  regular latent grid deforms when decoded;
* :class:`ToyLatentProblem` and :func:`sgd_toy_paths` -- a 2-D latent space, a nonlinear generator and
  a linear operator, with stochastic-gradient paths on the data misfit with no, origin or ring
  regularisation (the paper's Fig. 6 and its Eq. of the ring penalty
  ``lam * (||z|| - E[chi_d])**2``).

Everything here is CPU-sized (seconds) and deterministic for a given ``random_state``; torch's global
random generator is left untouched.
"""
from __future__ import annotations

import math
import numbers

import numpy as np
import torch
from scipy.stats import chi

from ._checks import check_int as _check_int, check_real as _check_real
from .inversion.randomness import as_seed

__all__ = ["make_eight_manifold", "fit_toy_vae", "ToyVAE", "ToyLatentProblem", "sgd_toy_paths",
           "ring_radius"]


def ring_radius(n_components, owner="ring_radius"):
    """Mean of the chi distribution with ``n_components`` degrees of freedom: where ``||z||`` of a
    standard normal latent vector concentrates (the radius of the paper's ring regularisation).

    ``n_components`` must be an int >= 1 (an integral float such as ``20.0`` is taken); 0, negative
    or fractional dimensions are refused (they gave NaN or were truncated).
    """
    n = n_components
    ok = (not isinstance(n, (bool, np.bool_, str, bytes)) and isinstance(n, (numbers.Real, np.integer))
          and np.isfinite(float(n)) and float(n).is_integer() and float(n) >= 1)
    if not ok:
        raise ValueError(f"{owner}: n_components must be an int >= 1 (latent dimensions), got {n_components!r}")
    return float(chi(int(n)).mean())


def make_eight_manifold(n_samples=1000, noise=0.1, scale=2.0, random_state=None):
    """Points on an eight-shaped curve (lemniscate of Bernoulli) plus Gaussian noise.

    ``x = scale cos t / (1 + sin^2 t)``, ``y = scale sin t cos t / (1 + sin^2 t)`` with ``t`` uniform in
    ``[0, 2 pi)``, as the data set of the paper's Fig. 4 (a 1-D manifold in 2-D data space).

    Parameters
    ----------
    n_samples : int >= 1, default=1000
    noise : float >= 0, default=0.1
        Standard deviation of the isotropic Gaussian noise added to each coordinate.
    scale : float > 0, default=2.0
        Half-width of the eight along x.
    random_state : int, numpy RandomState or None

    Returns
    -------
    X : ndarray of shape (n_samples, 2)
    """
    owner = "make_eight_manifold"
    n_samples = _check_int(n_samples, "n_samples", owner, 1)
    noise = _check_real(noise, "noise", owner, 0.0)
    scale = _check_real(scale, "scale", owner, 0.0, strict=True)
    rng = np.random.default_rng(as_seed(random_state, "make_eight_manifold"))
    t = 2.0 * np.pi * rng.random(int(n_samples))
    den = 1.0 + np.sin(t) ** 2
    x = scale * np.cos(t) / den
    y = scale * np.sin(t) * np.cos(t) / den
    X = np.column_stack([x, y])
    return X + noise * rng.standard_normal(X.shape)


class ToyVAE:
    """A trained small VAE on 2-D data (result of :func:`fit_toy_vae`).

    Attributes
    ----------
    module : latentinv.nn.VAE
    alpha, beta : float
    mean_, scale_ : ndarray of shape (n_features,)
        Standardisation applied before encoding (``(X - mean_) / scale_``) and undone after decoding.
    history_ : dict of list
        ``"loss"``, ``"reconstruction"``, ``"kl"`` per iteration.
    """

    def __init__(self, module, alpha, beta, mean, scale, history):
        self.module = module
        self.alpha = alpha
        self.beta = beta
        self.mean_ = mean
        self.scale_ = scale
        self.history_ = history

    def encode(self, X):
        x = torch.tensor((np.asarray(X, dtype=float) - self.mean_) / self.scale_, dtype=torch.float32)
        with torch.no_grad():
            mu, _ = self.module.encode(x)
        return mu.numpy().astype(np.float64)

    def decode(self, Z):
        z = torch.tensor(np.asarray(Z, dtype=float), dtype=torch.float32)
        with torch.no_grad():
            x = self.module.decode(z).numpy().astype(np.float64)
        return x * self.scale_ + self.mean_


def fit_toy_vae(X, alpha=1.0, beta=1.0, n_components=2, hidden_size=64, n_iterations=1000,
                batch_size=100, learning_rate=1e-3, random_state=None):
    """Train a fully-connected VAE on 2-D (or any vector) data.

    The loss is the reference one (:func:`latentinv.nn.vae_loss`; the paper's Eqs. 14 and 19): squared
    error summed over the batch plus ``beta`` times the KL averaged over batch and latent dimensions,
    with ``z = mu + sqrt(alpha) sigma eps``. The data are standardised first and the decoder output
    is linear.

    Parameters
    ----------
    X : array-like of shape (n_samples, n_features)
    alpha : float >= 0, default=1.0
        Scale of the reparameterisation noise variance (0 gives a deterministic autoencoder).
    beta : float >= 0, default=1.0
        Weight of the KL term.
    n_components : int >= 1, default=2
    hidden_size : int >= 1, default=64
    n_iterations : int >= 0, default=1000
        Adam steps, each on a fresh random mini-batch.
    batch_size : int >= 1, default=100
    learning_rate : float > 0, default=1e-3
    random_state : int, numpy RandomState or None

    Returns
    -------
    ToyVAE
    """
    from .nn import build_vae, vae_loss

    owner = "fit_toy_vae"
    X = np.asarray(X, dtype=float)
    if X.ndim != 2 or X.shape[0] < 2:
        raise ValueError(f"fit_toy_vae: X must have shape (n_samples >= 2, n_features), got {X.shape}")
    if not np.all(np.isfinite(X)):
        raise ValueError(f"{owner}: X must be finite, got {int(np.sum(~np.isfinite(X)))} NaN or infinite "
                         "values")
    alpha = _check_real(alpha, "alpha", owner, 0.0)
    beta = _check_real(beta, "beta", owner, 0.0)
    n_components = _check_int(n_components, "n_components", owner, 1)
    hidden_size = _check_int(hidden_size, "hidden_size", owner, 1)
    n_iterations = _check_int(n_iterations, "n_iterations", owner, 0)
    batch_size = _check_int(batch_size, "batch_size", owner, 1)
    learning_rate = _check_real(learning_rate, "learning_rate", owner, 0.0, strict=True)
    seed = as_seed(random_state, "fit_toy_vae")
    mean = X.mean(axis=0)
    scale = X.std(axis=0)
    scale[scale == 0] = 1.0
    data = torch.tensor((X - mean) / scale, dtype=torch.float32)
    module = build_vae("mlp", X.shape[1], int(n_components), hidden_size=int(hidden_size),
                       output_activation="identity", seed=seed)
    gen = torch.Generator().manual_seed(seed)
    opt = torch.optim.Adam(module.parameters(), lr=learning_rate)
    n = data.shape[0]
    b = min(int(batch_size), n)
    history = {"loss": [], "reconstruction": [], "kl": []}
    module.train()
    for _ in range(int(n_iterations)):
        idx = torch.randint(0, n, (b,), generator=gen)
        xb = data[idx]
        x_hat, mu, logvar = module(xb, alpha=float(alpha), generator=gen)
        loss, rec, kl = vae_loss(x_hat, xb, mu, logvar, beta=float(beta))
        opt.zero_grad()
        loss.backward()
        opt.step()
        history["loss"].append(loss.item())
        history["reconstruction"].append(rec.item())
        history["kl"].append(kl.item())
    module.eval()
    return ToyVAE(module, float(alpha), float(beta), mean, scale, history)


class ToyLatentProblem:
    """A 2-D latent inverse problem with a nonlinear generator and a linear operator.

    ``m(z) = tanh(W z + b)`` (``n_params`` values), ``d(z) = G m(z)`` (``n_data`` values); the data
    are ``d(z_true)``. The misfit ``||d - d(z)||^2`` over the latent plane is non-convex: the
    generator bends straight lines of latent space like a trained decoder does (paper, Sec. 2.4 and
    Fig. 6).

    Parameters
    ----------
    z_true : array-like of shape (2,), default=(1.0, -0.6)
    n_params : int, default=12
    n_data : int, default=24
    random_state : int, default=3
    """

    def __init__(self, z_true=(1.0, -0.6), n_params=12, n_data=24, random_state=3):
        rng = np.random.default_rng(as_seed(random_state, "ToyLatentProblem"))
        self.W = 1.0 * rng.standard_normal((n_params, 2))
        self.b = 0.5 * rng.standard_normal(n_params)
        self.G = rng.standard_normal((n_data, n_params)) / math.sqrt(n_params)
        self.z_true = np.asarray(z_true, dtype=float)
        self.data = self.response(self.z_true)

    @property
    def n_data(self):
        return self.G.shape[0]

    def response(self, z):
        """Data ``G tanh(W z + b)`` for ``z`` of shape (2,) or (n, 2)."""
        z = np.asarray(z, dtype=float)
        return np.tanh(z @ self.W.T + self.b) @ self.G.T

    def misfit(self, z):
        """Data RMSE ``sqrt(mean((d - d(z))^2))`` for ``z`` of shape (..., 2)."""
        z = np.asarray(z, dtype=float)
        r = self.response(z.reshape(-1, 2)) - self.data
        return np.sqrt(np.mean(r ** 2, axis=1)).reshape(z.shape[:-1])

    def _torch(self):
        return (torch.tensor(self.W), torch.tensor(self.b), torch.tensor(self.G),
                torch.tensor(self.data))


def sgd_toy_paths(problem, z_inits, regularization="none", lam=1.0, lam_decay=1.0, lr=0.05,
                  lr_decay=1.0, batch_size=None, n_epochs=50, random_state=None):
    """Stochastic-gradient descent paths in a 2-D latent space (the paper's Fig. 6).

    Each iteration takes a mini-batch of data (drawn without replacement within an epoch), the
    gradient of the batch's squared residuals plus the regulariser (``"origin"``: ``lam ||z||^2``,
    ``"ring"``: ``lam (||z|| - E[chi_2])^2``), and a step of size ``lr``; ``lr`` is multiplied by
    ``lr_decay`` after every epoch and ``lam`` by ``lam_decay`` after every iteration, as in the
    paper's SGD.

    Parameters
    ----------
    problem : ToyLatentProblem
    z_inits : array-like of shape (n_starts, 2) or (2,)
        Finite initial latents; every path starts there.
    regularization : {"none", "origin", "ring"}, default="none"
    lam, lam_decay, lr, lr_decay : float
        ``lam >= 0``; the others ``> 0``; all finite.
    batch_size : int >= 1 or None, default=None
        ``None`` (or a size above ``n_data``) uses all data at every iteration.
    n_epochs : int >= 0, default=50
    random_state : int, numpy RandomState or None

    Returns
    -------
    paths : ndarray of shape (n_starts, n_iterations + 1, 2)
    """
    if regularization not in ("none", "origin", "ring"):
        raise ValueError(f"sgd_toy_paths: regularization must be 'none', 'origin' or 'ring', "
                         f"got {regularization!r}")
    owner = "sgd_toy_paths"
    given_shape = np.shape(z_inits)
    z_inits = np.atleast_2d(np.asarray(z_inits, dtype=float))
    if z_inits.ndim != 2 or z_inits.shape[0] < 1 or z_inits.shape[1] != 2 or not np.all(np.isfinite(z_inits)):
        raise ValueError(f"{owner}: z_inits must have shape (n_starts >= 1, 2) (or (2,) for one start) with "
                         f"finite values, got shape {given_shape}"
                         + ("" if np.all(np.isfinite(z_inits)) else " with NaN or infinite values"))
    lam = _check_real(lam, "lam", owner, 0.0)
    lam_decay = _check_real(lam_decay, "lam_decay", owner, 0.0, strict=True)
    lr = _check_real(lr, "lr", owner, 0.0, strict=True)
    lr_decay = _check_real(lr_decay, "lr_decay", owner, 0.0, strict=True)
    n_epochs = _check_int(n_epochs, "n_epochs", owner, 0)
    if batch_size is not None:
        batch_size = _check_int(batch_size, "batch_size", owner, 1)
    W, b, G, d = problem._torch()
    n_data = problem.n_data
    bs = n_data if batch_size is None else int(min(batch_size, n_data))
    per_epoch = n_data // bs
    radius = ring_radius(2)
    rng = np.random.default_rng(as_seed(random_state, "sgd_toy_paths"))
    paths = []
    for z0 in z_inits:
        z = torch.tensor(z0, dtype=torch.float64, requires_grad=True)
        step, weight = float(lr), float(lam)
        path = [z0.copy()]
        for _ in range(int(n_epochs)):
            order = rng.permutation(n_data)
            for k in range(per_epoch):
                idx = torch.tensor(order[k * bs:(k + 1) * bs])
                pred = G[idx] @ torch.tanh(W @ z + b)
                loss = ((pred - d[idx]) ** 2).sum() / bs
                if regularization == "origin":
                    loss = loss + weight * (z ** 2).sum()
                elif regularization == "ring":
                    loss = loss + weight * (torch.linalg.norm(z) - radius) ** 2
                (grad,) = torch.autograd.grad(loss, z)
                with torch.no_grad():
                    z -= step * grad
                weight *= lam_decay
                path.append(z.detach().numpy().copy())
            step *= lr_decay
        paths.append(np.array(path))
    return np.stack(paths)
