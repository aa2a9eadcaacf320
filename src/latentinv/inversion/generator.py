"""The generator protocol: what ``LatentInverter`` and ``LatentSampler`` take as a prior, the wrapper
for a user's own torch module, and the checks of a generator's output."""
from __future__ import annotations

import numpy as np
import torch
from sklearn.exceptions import NotFittedError
from sklearn.utils.validation import check_is_fitted

from .._memory import is_out_of_memory
from .equations import paper_slowness

__all__ = ["TorchGenerator"]


class TorchGenerator:
    """Wrap a torch module ``z -> model`` into the generator protocol of :class:`LatentInverter`.

    Parameters
    ----------
    module : torch.nn.Module
        Maps float32 latents ``(batch, n_components)`` to models ``(batch, n_cells)`` (flat C order,
        values in [0, 1]). Outputs of another shape with ``batch`` first are flattened.
    n_components : int
        Latent dimension ``d``.
    latent_distribution : {"normal", "uniform"}, default="normal"
        ``"uniform"``: latents in [-1, 1] (SGAN), with stochastic clipping.
    image_shape : tuple of int, default=None
        ``(n_rows, n_cols)`` of the models, checked against the operator's grid. ``None``: taken
        from the module's output when it has image dimensions (``(batch, n_rows, n_cols)`` or
        ``(batch, 1, n_rows, n_cols)``), unchecked otherwise.

    Attributes
    ----------
    decoder_ : torch.nn.Module
        ``module`` followed by flattening. The module is used as given (never switched to eval
        mode here, which would change the caller's object): call ``module.eval()`` first when it
        holds dropout or batch normalisation, which the estimators' ``fit`` refuses in training mode
        (as it refuses weights other than float32, or on the 'meta' device). Its own gradients are
        never used.
    """

    def __init__(self, module, n_components, latent_distribution="normal", image_shape=None):
        self.module = module
        self.n_components = n_components
        self.latent_distribution = latent_distribution
        self.image_shape = image_shape

    @property
    def decoder_(self):
        return _Flatten(self.module)

    def __sklearn_is_fitted__(self):
        return True

    def decode(self, Z):
        """Models ``(n, n_cells)`` (float64 NumPy) for latents ``Z`` ``(n, n_components)``.

        Runs :attr:`decoder_` without autograd on the device of the module's first parameter (the CPU
        for a module without parameters), in float32, as the module is (not switched to eval mode).

        Parameters
        ----------
        Z : array-like of shape (n, n_components)
            Latent vectors (converted to float32). Two-dimensional: a single latent ``(n_components,)``
            is not treated as one row (the module receives it as it is).

        Returns
        -------
        ndarray of float64 of shape (n, n_cells)
            The models (model values, in [0, 1] for the paper's generators), one flat C-order row each
            (outputs with image dimensions flattened).

        Raises
        ------
        MemoryError
            Where the module or the models cannot be allocated for all of ``Z`` at once (torch's
            allocator error, or CUDA's, with the number of latents and the advice to decode in chunks).
        """
        dec = self.decoder_
        dev = next(iter(dec.parameters()), torch.empty(0)).device
        Z = np.ascontiguousarray(Z)
        try:
            with torch.no_grad():
                out = dec(torch.tensor(Z, dtype=torch.float32, device=dev))
            return out.cpu().numpy().astype(np.float64)
        except (MemoryError, RuntimeError) as err:
            if not is_out_of_memory(err):
                raise
            # torch's allocator message gives bytes, not the call's size nor what to change
            raise MemoryError(
                f"TorchGenerator.decode: {len(Z)} latents at once do not fit in the memory of {dev} (the module's "
                f"activations and the models, float32 on {dev}, then float64 on the CPU): decode fewer per "
                f"call, in chunks of rows of Z. {type(err).__name__}: {str(err).strip().splitlines()[0]}"
            ) from err

    def __repr__(self):
        return (f"TorchGenerator({type(self.module).__name__}, n_components={self.n_components}, "
                f"latent_distribution={self.latent_distribution!r})")

    def __setstate__(self, state):     # pickles of earlier versions have no image_shape
        state.setdefault("image_shape", None)
        self.__dict__.update(state)


class _Flatten(torch.nn.Module):
    def __init__(self, module):
        super().__init__()
        self.module = module

    def forward(self, z):
        out = self.module(z)
        return out.reshape(out.shape[0], -1)


def prior_is_fitted(prior):
    """A prior without ``fit`` is fitted when it has ``decoder_``; an estimator as scikit-learn says."""
    if not hasattr(prior, "fit"):
        return hasattr(prior, "decoder_")
    try:
        check_is_fitted(prior)
    except NotFittedError:
        return False
    return True


def module_device(module):
    """The device of a module's first parameter or buffer (None when it has neither)."""
    for p in module.parameters():
        return p.device
    for b in module.buffers():
        return b.device
    return None


def probe_latents(n_components, latent_distribution, n=16):
    """Latents on which a generator is checked at fit: the origin, then ``n - 1`` fixed draws from
    the latent distribution (own generator: no estimator randomness is used)."""
    rng = np.random.default_rng(20210)
    if latent_distribution == "uniform":
        z = rng.uniform(-1.0, 1.0, size=(n - 1, n_components))
    else:
        z = rng.standard_normal(size=(n - 1, n_components))
    return torch.tensor(np.vstack([np.zeros((1, n_components)), z]), dtype=torch.float32)


def check_generator_module(decoder, prior, owner):
    """The generator's torch module before it is first called: float32 parameters and buffers that hold
    data (not on the 'meta' device), and no dropout or batch normalisation in training mode.

    A float64 module failed on the engine's float32 latents with a message that blamed n_components, a
    'meta' one with torch's "Cannot copy out of meta tensor"; a module in training mode (the default of
    a new ``nn.Module``) with dropout made every decode random (the inversion's models, misfits and
    best model disagree), and its batch normalisation normalised over the batch of starts and changed
    the module's running statistics (or failed on one latent with torch's "Expected more than 1 value
    per channel")."""
    name = generator_name(prior)
    for kind, tensors in (("parameter", decoder.named_parameters()), ("buffer", decoder.named_buffers())):
        for pname, t in tensors:
            if t.is_meta:
                raise ValueError(f"{owner}: the generator {name} has its {kind} {pname!r} on the 'meta' device "
                                 "(no data); expected a module with its weights loaded (on the CPU or a GPU)")
            if t.is_floating_point() and t.dtype != torch.float32:
                raise ValueError(f"{owner}: the generator {name} must be float32 (the engine decodes float32 "
                                 f"latents), got its {kind} {pname!r} of dtype {str(t.dtype).replace('torch.', '')}; "
                                 "call module.float() first")
    random = [type(m).__name__ for m in decoder.modules() if m.training and isinstance(
        m, (torch.nn.modules.dropout._DropoutNd, torch.nn.modules.batchnorm._BatchNorm))]
    if random:
        raise ValueError(f"{owner}: the generator {name} holds {', '.join(sorted(set(random)))} in training mode "
                         "(its decodes would be random or depend on the batch); expected a module in eval "
                         "mode: call module.eval() first")


def check_slowness_map_call(fn, x, needs_gradient, owner):
    """The slowness map on a copy of one model ``x`` (1, n_cells): it must leave its input unchanged
    and, where the algorithm differentiates through it (``needs_gradient``), keep the torch graph.

    A map that computed in NumPy (or detached its result) gave no gradient: the SGD then followed the
    regularisation alone and returned a prior model without a word; one that changed ``x`` in place
    changed the models the engine records."""
    fn = fn or paper_slowness
    map_name = getattr(fn, "__name__", type(fn).__name__)
    x0 = x[:1].detach().clone()
    if needs_gradient:
        with torch.enable_grad():
            leaf = x0.clone().requires_grad_(True)
            xv = leaf * 1.0   # not a leaf: an in-place change is allowed, seen below
            try:
                s = fn(xv)
            except RuntimeError as err:      # e.g. x.numpy() on a tensor that requires grad
                raise ValueError(f"{owner}: slowness_map {map_name} fails on models that require a gradient "
                                 f"({err}); expected a differentiable torch function of the models: the "
                                 "inversion's gradient flows through it") from err
    else:
        xv = x0.clone()
        with torch.no_grad():
            s = fn(xv)
    after = xv.detach()
    if not bool(((after == x0) | (torch.isnan(after) & torch.isnan(x0))).all()):   # NaN models: reported below
        raise ValueError(f"{owner}: slowness_map {map_name} changed its input (the models) in place; "
                         "expected a function that returns a new tensor")
    if needs_gradient and torch.is_tensor(s) and s.requires_grad:   # through x, not only the map's own parameters
        with torch.enable_grad():
            s_requires_x = torch.autograd.grad(s, leaf, torch.ones_like(s), allow_unused=True)[0] is not None
    if needs_gradient and torch.is_tensor(s) and not (s.requires_grad and s_requires_x):
        raise ValueError(f"{owner}: slowness_map {map_name} returned a tensor without a gradient (computed "
                         "outside torch, e.g. in NumPy, or detached); expected a differentiable torch "
                         "function of the models: the inversion's gradient flows through it")


def generator_name(prior):
    return repr(prior) if isinstance(prior, TorchGenerator) else type(prior).__name__


def check_generator_output(x, s, slowness_map, prior, when, owner):
    """Models ``x`` finite and in the slowness map's domain, slowness ``s`` finite and positive."""
    fn = slowness_map or paper_slowness
    map_name = getattr(fn, "__name__", type(fn).__name__)
    if not torch.is_tensor(s):
        raise ValueError(f"{owner}: slowness_map {map_name} must return a torch.Tensor (differentiable: "
                         f"the gradient flows through it), got {type(s).__name__}")
    if s.shape != x.shape or s.dtype != x.dtype or s.device != x.device:
        raise ValueError(f"{owner}: slowness_map {map_name} must return a tensor like its input (one "
                         f"slowness per cell): shape {tuple(x.shape)}, dtype {x.dtype} on {x.device}; got "
                         f"shape {tuple(s.shape)}, dtype {s.dtype} on {s.device}")
    ok_x = torch.isfinite(x)
    problem = None
    if not bool(ok_x.all()):
        problem = f"{int((~ok_x).sum())} non-finite model values (NaN or inf)"
    else:
        lo, hi = float(x.min()), float(x.max())
        domain = getattr(fn, "domain", None)
        if domain is not None and not (domain[0] < lo and hi < domain[1]):
            problem = (f"model values in [{lo:.6g}, {hi:.6g}], outside the domain "
                       f"({domain[0]}, {domain[1]}) of the slowness map {map_name}")
        elif not bool((torch.isfinite(s) & (s > 0)).all()):
            bad = ~(torch.isfinite(s) & (s > 0))
            problem = (f"model values in [{lo:.6g}, {hi:.6g}] giving {int(bad.sum())} non-finite "
                       f"or non-positive slowness values through {map_name}")
    if problem is not None:
        raise ValueError(
            f"{owner}: the generator {generator_name(prior)} returned {problem} "
            f"{when}; the generator must produce finite models in the slowness map's domain"
            + (" (the paper's values are in [0, 1])" if fn is paper_slowness else ""))


def check_geometry(prior, n_components, op, owner):
    """The prior's image shape against the operator grid's (n_rows, n_cols), where both are known."""
    shape = getattr(prior, "image_shape_", None)
    if shape is None:
        shape = getattr(prior, "image_shape", None)
    if shape is None and isinstance(prior, TorchGenerator):
        with torch.no_grad():
            raw = prior.module(torch.zeros(1, n_components, device=module_device(prior.module) or "cpu"))
        dims = tuple(int(n) for n in raw.shape[1:])
        if len(dims) == 3 and dims[0] == 1:
            dims = dims[1:]
        shape = dims if len(dims) == 2 else None
    grid_shape = getattr(getattr(op, "grid", None), "shape", None)
    if shape is None or grid_shape is None:
        return
    name = generator_name(prior)
    try:
        shape = tuple(int(n) for n in shape)
    except (TypeError, ValueError):
        raise ValueError(f"{owner}: the prior {name} gives an image shape that is not a pair of "
                         f"ints: {shape!r}") from None
    if shape != tuple(grid_shape):
        same_cells = len(shape) == 2 and shape[0] * shape[1] == op.n_params
        raise ValueError(
            f"{owner}: the prior {name} makes images of shape (n_rows, n_cols) = {shape} but the "
            f"operator's grid is {tuple(grid_shape)}"
            + (f" (same number of cells, {op.n_params}, but another geometry)" if same_cells else ""))
