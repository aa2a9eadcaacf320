"""Parameter checks shared by the estimators and the data sets (no torch: :mod:`latentinv.datasets`,
which imports this, stays light)."""

import contextlib
import inspect
import os
import threading
import warnings
from numbers import Integral

_PACKAGE_DIR = os.path.dirname(os.path.abspath(__file__)) + os.sep

#: held while one of the package's sections has changed the warnings filters: ``warnings.catch_warnings``
#: saves and restores the process-wide list, so two such sections overlapping in two threads left the
#: first one's filters in place for good (among them an "ignore" of every warning)
_WARNINGS_LOCK = threading.RLock()


@contextlib.contextmanager
def ignoring_warnings(*filters):
    """Warnings that match ``filters`` (keyword arguments of :func:`warnings.filterwarnings`: ``message``,
    ``category``) ignored inside the block, one such section of the package at a time. The filters are the
    process's, shared by its threads: a warning of another thread that matches them meanwhile is ignored too,
    so they stay narrow."""
    with _WARNINGS_LOCK, warnings.catch_warnings():
        for f in filters:
            warnings.filterwarnings("ignore", **f)
        yield


def is_int(value, minimum=None):
    """An int, Python's or NumPy's, at least ``minimum`` if given; never a bool, nor a float with an
    integral value (``3.0``)."""
    ok = isinstance(value, Integral) and not isinstance(value, bool)
    return ok and (minimum is None or value >= minimum)


def check_int(value, name, owner, minimum):
    """``value`` as an int at least ``minimum`` (:func:`is_int`), else a ValueError naming ``owner``'s
    parameter ``name``."""
    if not is_int(value, minimum):
        raise ValueError(f"{owner}: {name} must be an int >= {minimum}, got {value!r}")
    return int(value)


def check_real(value, name, owner, minimum=None, strict=False):
    """``value`` as a finite float, above ``minimum`` (``strict``) or at least it, else a ValueError naming
    ``owner``'s parameter ``name``. A real number, Python's or NumPy's; never a bool or text."""
    import math
    from numbers import Real

    ok = isinstance(value, Real) and not isinstance(value, bool) and math.isfinite(float(value))
    if ok and minimum is not None:
        ok = float(value) > minimum if strict else float(value) >= minimum
    if not ok:
        bound = "" if minimum is None else f" {'>' if strict else '>='} {minimum:g}"
        raise ValueError(f"{owner}: {name} must be a finite number{bound}, got {value!r}")
    return float(value)


def check_random_state(random_state, owner, name="random_state"):
    """scikit-learn's ``check_random_state`` (None, an int seed or a ``numpy.random.RandomState``) with
    an error that names the estimator, the parameter and what it takes."""
    import numpy as np
    from sklearn.utils import check_random_state as sklearn_check

    if not (random_state is None or isinstance(random_state, np.random.RandomState)
            or (is_int(random_state) and 0 <= random_state < 2 ** 32)):
        raise ValueError(f"{owner}: {name} must be None, an int in [0, 2**32 - 1] or a "
                         f"numpy.random.RandomState; got {random_state!r}.")
    return sklearn_check(random_state)


def noise_levels(value, n_data, owner, param, expected=None):
    """Noise standard deviations ``value`` (a number, or an array of ``n_data``; NumPy, torch, or numbers
    held as objects, e.g. from pandas) as a float64 array of ``n_data`` finite positive values; the
    ValueError names ``owner``'s ``param``, what it takes (``expected``) and what came (the shape of a
    wrong array, not its values; the first bad datum)."""
    import numbers

    import numpy as np

    expected = expected or f"a positive number or an array of {n_data} positive numbers (ns)"
    raw = value.detach().cpu().numpy() if hasattr(value, "detach") else value      # a torch tensor
    try:
        raw = np.asarray(raw)
    except ValueError:                  # ragged
        raw = np.asarray([], dtype=object)
    if raw.dtype.kind == "O" and all(isinstance(v, numbers.Real) and not isinstance(v, (bool, np.bool_))
                                     for v in raw.ravel()):
        raw = raw.astype(np.float64)
    if raw.dtype.kind not in "iuf":     # not bool, complex or text (np.asarray would parse "0.5")
        raise ValueError(f"{owner}: {param} must be {expected}, got {value!r} (dtype {raw.dtype})")
    sigma = raw.astype(np.float64)
    if sigma.ndim == 0:
        if not (np.isfinite(sigma) and sigma > 0):
            raise ValueError(f"{owner}: {param} must be {expected}, got {value!r}")
        return np.full(n_data, float(sigma))
    if sigma.shape != (n_data,):        # the shape, not the values (an array of 625 would fill the screen)
        raise ValueError(f"{owner}: {param} must be {expected}, got an array of shape {sigma.shape}")
    bad = ~(np.isfinite(sigma) & (sigma > 0))
    if bad.any():
        i = int(np.argmax(bad))
        raise ValueError(f"{owner}: {param} must be {expected}, got {int(bad.sum())} that are not finite "
                         f"and positive (the first at datum {i}: {float(sigma[i])!r})")
    return sigma


def caller_stacklevel():
    """``stacklevel`` for a ``warnings.warn`` in the calling function that points at the first frame
    outside latentinv: the user's line, however deep in the package the warning is raised."""
    frame, level = inspect.currentframe().f_back, 1
    while frame is not None and os.path.abspath(frame.f_code.co_filename).startswith(_PACKAGE_DIR):
        frame, level = frame.f_back, level + 1
    return level
