"""Parameter checks shared by the estimators and the data sets (no torch: :mod:`latentinv.datasets`,
which imports this, stays light)."""

import inspect
import os
from numbers import Integral

_PACKAGE_DIR = os.path.dirname(os.path.abspath(__file__)) + os.sep


def is_int(value, minimum=None):
    """An int, Python's or NumPy's, at least ``minimum`` if given; never a bool, nor a float with an
    integral value (``3.0``)."""
    ok = isinstance(value, Integral) and not isinstance(value, bool)
    return ok and (minimum is None or value >= minimum)


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


def caller_stacklevel():
    """``stacklevel`` for a ``warnings.warn`` in the calling function that points at the first frame
    outside latentinv: the user's line, however deep in the package the warning is raised."""
    frame, level = inspect.currentframe().f_back, 1
    while frame is not None and os.path.abspath(frame.f_code.co_filename).startswith(_PACKAGE_DIR):
        frame, level = frame.f_back, level + 1
    return level
