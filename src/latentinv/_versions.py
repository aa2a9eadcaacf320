"""The one pair of allowed releases that cannot work together: torch 2.2 beside NumPy 2.

The package allows ``torch>=2.2`` and ``numpy>=1.25``, and pip pairs them freely. torch 2.2's wheels were
built for NumPy 1.x: beside NumPy 2 torch prints a warning at import, and every array exchanged with NumPy
(``Tensor.numpy()``, ``torch.from_numpy``) is "RuntimeError: Numpy is not available", raised deep inside a
fit or a sample. torch 2.3.0 works with NumPy 2 (seen with 2.4.6). So ``import latentinv`` refuses that
pair with the remedy. torch's version is read from its ``version.py`` (or its metadata), so that
``import latentinv`` still does not import torch; torch is imported, to try one exchange, only for the
suspect pair (a torch 2.2 built for NumPy 2 passes).
"""
import importlib.util
import re
from pathlib import Path

__all__ = ["check_torch_and_numpy"]


def _major_minor(version):
    parts = re.findall(r"\d+", version)[:2]
    return tuple(int(p) for p in parts) + (0,) * (2 - len(parts))


def _torch_exchanges_arrays():
    import torch
    try:
        torch.zeros(1).numpy()
    except RuntimeError:        # "Numpy is not available"
        return False
    return True


def _installed_torch_version():
    """torch's ``version.py`` as found on the path (a fraction of a millisecond; importlib.metadata takes
    some 30 ms more than ``import latentinv`` itself takes without it), else the metadata; None where
    torch is not installed (the first module that imports torch says so)."""
    spec = importlib.util.find_spec("torch")
    if spec is None:
        return None
    if spec.origin:
        try:
            text = (Path(spec.origin).parent / "version.py").read_text()
        except OSError:
            text = ""
        found = re.search(r"""^__version__\s*(?::\s*str\s*)?=\s*['"]([^'"]+)['"]""", text, re.M)
        if found:
            return found[1]
    from importlib import metadata
    try:
        return metadata.version("torch")
    except metadata.PackageNotFoundError:
        return None


def check_torch_and_numpy(numpy_version=None, torch_version=None, exchanges_arrays=_torch_exchanges_arrays):
    """Raise ImportError for torch < 2.3 beside NumPy >= 2 where torch cannot exchange arrays with NumPy.

    ``numpy_version`` and ``torch_version`` default to the installed ones; ``exchanges_arrays`` tries one
    exchange (a parameter for the tests)."""
    if numpy_version is None:
        import numpy
        numpy_version = numpy.__version__
    if _major_minor(numpy_version) < (2, 0):
        return
    if torch_version is None:
        torch_version = _installed_torch_version()
    if torch_version is None or _major_minor(torch_version) >= (2, 3):
        return
    if exchanges_arrays():
        return
    raise ImportError(
        f"latentinv: torch {torch_version} was built for NumPy 1.x and cannot exchange arrays with the "
        f"installed NumPy {numpy_version} (torch: 'Numpy is not available'); install NumPy 1.x "
        f"(pip install 'numpy>=1.25,<2') or torch>=2.3")
