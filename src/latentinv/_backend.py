"""The one place that knows whether the compiled core (``latentinv._core``) is available.

Set ``LATENTINV_PUREPYTHON=1`` to force the pure-Python fallback even where the core is built.
"""
import os
import warnings
from typing import Any

_FORCED_PURE_PYTHON = os.environ.get("LATENTINV_PUREPYTHON", "0") not in ("", "0")

core: Any = None     # the module, or None (its functions are declared in _core.pyi)
if not _FORCED_PURE_PYTHON:
    try:  # pragma: no branch
        from . import _core as core  # type: ignore[no-redef]
    except ImportError:  # no compiler at install time, or a source checkout without a build
        core = None

HAS_CORE = core is not None


def resolve_backend(backend, owner="operator"):
    """Turn ``"auto" | "cpp" | "python"`` into the backend that will actually run.

    Warns
    -----
    RuntimeWarning
        If ``"auto"`` falls back to Python because the compiled core is missing (not when
        ``LATENTINV_PUREPYTHON`` asks for Python): the Python shortest-path solver is about two orders
        of magnitude slower, e.g. when ``latentinv`` is imported from a source tree without a build
        while the installed, compiled package sits elsewhere on the path.

    Raises
    ------
    ValueError
        If ``backend`` is not one of the accepted names.
    ImportError
        If ``"cpp"`` is requested but the compiled core is missing.
    """
    if backend not in ("auto", "cpp", "python"):
        raise ValueError(
            f"{owner}: backend must be 'auto', 'cpp' or 'python', got {backend!r}"
        )
    if backend == "auto":
        if not HAS_CORE and not _FORCED_PURE_PYTHON:
            warnings.warn(f"{owner}: backend='auto' runs the pure-Python backend, tens of times slower for the "
                          f"shortest paths (13-61x in the records of docs/benchmarks), because "
                          f"the compiled core latentinv._core is not importable from "
                          f"{os.path.dirname(os.path.abspath(__file__))!r} (a source tree without a build, or "
                          f"no C++ compiler at install time). Install the package (pip install .) and import "
                          f"it from there, or pass backend='python' to choose Python.", RuntimeWarning,
                          stacklevel=3)
        return "cpp" if HAS_CORE else "python"
    if backend == "cpp" and not HAS_CORE:
        reason = (
            "LATENTINV_PUREPYTHON is set"
            if _FORCED_PURE_PYTHON
            else "latentinv._core was not built (no C++ compiler at install time?)"
        )
        raise ImportError(f"{owner}: backend='cpp' requested but {reason}; use backend='python'")
    return backend
