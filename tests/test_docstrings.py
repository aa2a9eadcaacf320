"""The examples in latentinv's docstrings run and print what they say (doctest), in every module that has
one: a reader copies them as they are."""
import doctest
import importlib
import inspect
import pkgutil

import pytest

import latentinv


def _modules_with_examples():
    names = []
    for info in pkgutil.walk_packages(latentinv.__path__, "latentinv."):
        if info.name.rsplit(".", 1)[-1].startswith("_"):
            continue
        source = inspect.getsource(importlib.import_module(info.name))
        if ">>> " in source:
            names.append(info.name)
    return names


MODULES = _modules_with_examples()


def test_the_examples_are_found():
    assert {"latentinv.prior", "latentinv.sgan", "latentinv.inversion.estimator"} <= set(MODULES)


@pytest.mark.parametrize("name", MODULES)
def test_docstring_examples_run(name):
    result = doctest.testmod(importlib.import_module(name), optionflags=doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE)
    assert result.attempted > 0 and result.failed == 0, result
