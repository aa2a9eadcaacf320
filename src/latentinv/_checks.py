"""Parameter checks shared by the estimators and the data sets (no torch: :mod:`latentinv.datasets`,
which imports this, stays light)."""

from numbers import Integral


def is_int(value, minimum=None):
    """An int, Python's or NumPy's, at least ``minimum`` if given; never a bool, nor a float with an
    integral value (``3.0``)."""
    ok = isinstance(value, Integral) and not isinstance(value, bool)
    return ok and (minimum is None or value >= minimum)
