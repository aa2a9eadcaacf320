"""latentinv: geophysical inversion with deep generative priors.

A variational-autoencoder prior (:class:`VAEPrior`), the spatial GAN the paper compares it with
(:class:`SGANPrior`), stochastic-gradient inversion in their latent space (:class:`LatentInverter`)
and latent-space MCMC (:class:`LatentSampler`) for crosshole traveltime tomography, after
Lopez-Alvis, Laloy, Nguyen & Hermans (2021), Computers & Geosciences.
"""
from ._backend import HAS_CORE
from ._versions import check_torch_and_numpy as _check_torch_and_numpy
from .geometry import CrossholeSurvey, Grid2D, paper_crosshole

_check_torch_and_numpy()      # torch 2.2 beside NumPy 2: refused here, not "Numpy is not available" in a fit

__version__ = "0.1.0"

__all__ = [
    "Grid2D", "CrossholeSurvey", "paper_crosshole", "StraightRayOperator", "ShortestPathOperator",
    "PyGimliOperator", "VAEPrior", "SGANPrior", "LatentInverter", "LatentSampler", "HAS_CORE",
    "__version__",
]

# torch-backed names load on first use, so that `import latentinv` (and `latentinv --help`) does not
# import torch
_LATE = {
    "StraightRayOperator": ("operators.straight_ray", "StraightRayOperator"),
    "ShortestPathOperator": ("operators.shortest_path", "ShortestPathOperator"),
    "PyGimliOperator": ("operators.pygimli", "PyGimliOperator"),
    "VAEPrior": ("prior", "VAEPrior"),
    "SGANPrior": ("sgan", "SGANPrior"),
    "LatentInverter": ("inversion", "LatentInverter"),
    "LatentSampler": ("inversion", "LatentSampler"),
}


def __getattr__(name):
    if name in _LATE:
        import importlib
        mod, attr = _LATE[name]
        return getattr(importlib.import_module(f".{mod}", __name__), attr)
    if name in ("datasets", "metrics", "plotting", "nn", "toys", "baselines"):
        import importlib
        return importlib.import_module(f".{name}", __name__)
    raise AttributeError(f"module 'latentinv' has no attribute {name!r}")


def __dir__():
    return sorted(set(globals()) | set(__all__))
