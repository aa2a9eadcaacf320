"""The compiled core's absence is never silent: backend="auto" warns when it falls back to Python."""
import warnings

import pytest

from latentinv import _backend


def test_auto_warns_when_it_falls_back_to_python(monkeypatch):
    monkeypatch.setattr(_backend, "HAS_CORE", False)
    monkeypatch.setattr(_backend, "_FORCED_PURE_PYTHON", False)
    with pytest.warns(RuntimeWarning, match=r"ShortestPathOperator: backend='auto' runs the pure-Python backend, "
                                            r"tens of times slower for the shortest paths \(13-61x in the records of docs/benchmarks\), "
                                            r"because the compiled core latentinv._core is "
                                            r"not importable from '.*latentinv'"):
        assert _backend.resolve_backend("auto", owner="ShortestPathOperator") == "python"
    with pytest.raises(ImportError, match="latentinv._core was not built"):
        _backend.resolve_backend("cpp")


@pytest.mark.parametrize("has_core, forced, backend, expected", [
    (False, False, "python", "python"),    # chosen: no warning
    (False, True, "auto", "python"),       # LATENTINV_PUREPYTHON asked for it
    (True, False, "auto", "cpp"),
])
def test_no_warning_where_python_is_chosen_or_the_core_is_there(monkeypatch, has_core, forced, backend, expected):
    monkeypatch.setattr(_backend, "HAS_CORE", has_core)
    monkeypatch.setattr(_backend, "_FORCED_PURE_PYTHON", forced)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert _backend.resolve_backend(backend) == expected
