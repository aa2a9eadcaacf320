"""The package's declared dependencies (pyproject.toml) against what its code needs.

A wheel installed with the lowest versions that pyproject.toml allows must work: the packaging trial
(docs/user_trial.md) found `latentinv demo` failing at its figure under matplotlib 3.6, which
`matplotlib>=3.5` let in. Each row below names a feature of a dependency that the code uses, the
first release that has it and a pattern that finds the use in src/latentinv.
"""
import re
import tomllib
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SRC = ROOT / "src" / "latentinv"

# (distribution, first version with the feature, the feature, a regex that finds its use in src/latentinv)
FEATURES = [
    ("matplotlib", (3, 7), "a figure legend placed outside the axes, Figure.legend(loc='outside ...') "
                           "(plotting.plot_inversion_summary, the demo's figure)", r"""loc=["']outside """),
    # before 1.24 a ragged list became an object array, refused with another message than the documented one
    ("numpy", (1, 24), "a ValueError from np.asarray on ragged input (the input checks that name a ragged "
                       "array as such, e.g. 'must be a rectangular array')", r"except ValueError:\s+# ragged"),
    # before 1.25 mcmc seeded the extra streams otherwise, so a seed drew other differential-evolution moves
    ("numpy", (1, 25), "Generator.spawn (mcmc: the per-chain streams of the differential-evolution moves)",
     r"\bg\.spawn\(1\)"),
    # a scikit-learn bug, not a new call: 1.6.0's cross_validate with routing on and no params raised a
    # TypeError of its own (process_routing(**None)); the scorers' routing (metrics.py) passed from 1.6.1 on
    ("scikit-learn", (1, 6, 1), "metadata routing of the scorers' sample_weight (set_score_request) "
                                "through cross_validate, broken in 1.6.0", r"def set_score_request\("),
]


def _dependencies():
    return tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]


def _lower_bounds(dependencies=None):
    bounds = {}
    for dep in _dependencies() if dependencies is None else dependencies:
        m = re.fullmatch(r"([A-Za-z0-9_.\-]+)\s*>=\s*([0-9][0-9.]*)", dep)
        assert m, f"pyproject.toml: dependency {dep!r} is not of the form 'name>=version'"
        bounds[m[1].lower()] = tuple(int(x) for x in m[2].split("."))
    return bounds


@pytest.mark.parametrize("dist, first, feature, pattern", FEATURES,
                         ids=[f"{f[0]}-{'.'.join(map(str, f[1]))}" for f in FEATURES])
def test_declared_lower_bounds_have_the_features_the_code_uses(dist, first, feature, pattern):
    users = sorted(p.relative_to(SRC).as_posix() for p in SRC.rglob("*.py") if re.search(pattern, p.read_text()))
    assert users, f"no module of src/latentinv uses {feature} any more: drop its row of FEATURES"
    declared = _lower_bounds()[dist]
    assert declared >= first, (
        f"pyproject.toml asks for {dist}>={'.'.join(map(str, declared))}, but src/latentinv ({', '.join(users)}) "
        f"uses {feature}, new in {dist} {'.'.join(map(str, first))}")


def test_torch_lower_bound_is_kept():
    assert "torch>=2.2" in _dependencies()


def test_the_checks_themselves():
    """The bounds are read from dependencies of the form 'name>=version' only (an upper bound or a marker
    is refused, not read as the lower bound); a row whose feature no module uses, and a bound below a
    feature's release, fail."""
    assert _lower_bounds(["Matplotlib >= 3.7", "numpy>=1.24.2"]) == {"matplotlib": (3, 7), "numpy": (1, 24, 2)}
    for dep in ("numpy>=1.24,<3", "torch>=2.2; python_version>='3.11'", "scipy"):
        with pytest.raises(AssertionError, match="is not of the form 'name>=version'"):
            _lower_bounds([dep])
    with pytest.raises(AssertionError, match="no module of src/latentinv uses a retired feature"):
        test_declared_lower_bounds_have_the_features_the_code_uses("matplotlib", (3, 7), "a retired feature",
                                                                   r"no_such_call_\(")
    with pytest.raises(AssertionError, match=r"asks for matplotlib>=3\.7, but src/latentinv \(plotting\.py\) uses "
                                             r"a future feature, new in matplotlib 99\.0"):
        test_declared_lower_bounds_have_the_features_the_code_uses("matplotlib", (99, 0), "a future feature",
                                                                   FEATURES[0][3])


def test_the_package_declares_its_types():
    """``py.typed`` (PEP 561) ships in the package, beside the compiled core's stub: without it, mypy in a
    user's project skips latentinv ("missing library stubs or py.typed marker")."""
    from importlib.resources import files
    assert (files("latentinv") / "py.typed").is_file()
    assert (files("latentinv") / "_core.pyi").is_file()


def test_mypy_finds_no_error_in_the_package(tmp_path):
    """The annotations that ``py.typed`` declares hold: mypy (pinned in constraints.txt) checks
    src/latentinv; modules without stubs (pyGIMLi, ttcrpy, Dask) are taken as Any."""
    import subprocess
    import sys
    pytest.importorskip("mypy", reason="mypy (latentinv[test]) is not installed")
    done = subprocess.run([sys.executable, "-m", "mypy", str(SRC), "--ignore-missing-imports", "--no-color-output",
                           "--cache-dir", str(tmp_path / "cache")], capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout[-4000:] + done.stderr[-2000:]
    assert done.stdout.startswith("Success: no issues found in "), done.stdout


# torch 2.2's wheels beside NumPy 2 (pip pairs them: neither bounds the other); seen in a fresh environment
# with torch 2.2.0 and NumPy 2.4.6: "Numpy is not available" at the first sample; 2.3.0 and 2.4.0 worked
@pytest.mark.parametrize("numpy_version, torch_version, exchanges, refused", [
    ("2.4.6", "2.2.0+cu121", False, True),
    ("2.0.0rc1", "2.2.2", False, True),
    ("2.1.0", "2.2.1", True, False),        # a torch 2.2 built for NumPy 2 passes
    ("1.26.4", "2.2.0", None, False),       # None: the exchange must not be tried (torch not imported)
    ("2.4.6", "2.3.0", None, False),
    ("2.4.6", "2.13.0+cpu", None, False),
    ("2.4.6", None, None, False),           # torch missing: the first module that imports it says so
])
def test_torch_2_2_beside_numpy_2_is_refused_at_import(numpy_version, torch_version, exchanges, refused,
                                                        monkeypatch):
    from latentinv import _versions
    from latentinv._versions import check_torch_and_numpy
    if torch_version is None:
        monkeypatch.setattr(_versions, "_installed_torch_version", lambda: None)
    tried = []

    def exchanges_arrays():
        assert exchanges is not None, "the exchange was tried for a pair that needs no trial"
        tried.append(True)
        return exchanges

    if refused:
        with pytest.raises(ImportError, match=rf"torch {re.escape(torch_version)} was built for NumPy 1\.x and "
                                              rf"cannot exchange arrays with the installed NumPy "
                                              rf"{re.escape(numpy_version)} .*numpy>=1\.25,<2.* or torch>=2\.3"):
            check_torch_and_numpy(numpy_version, torch_version, exchanges_arrays)
    else:
        check_torch_and_numpy(numpy_version, torch_version, exchanges_arrays)
    assert tried == ([True] if exchanges is not None else [])


def test_the_installed_torch_version_is_read_without_importing_torch():
    import subprocess
    import sys
    from importlib import metadata
    from latentinv._versions import _installed_torch_version, _major_minor
    import torch
    assert _installed_torch_version() == torch.__version__          # with its local tag, as "2.2.0+cu121"
    assert _major_minor(_installed_torch_version()) == _major_minor(metadata.version("torch"))  # "2.2.0" there
    assert _major_minor("2.13.0+cpu") == (2, 13) and _major_minor("2") == (2, 0) and _major_minor("2.0.0rc1") == (2, 0)
    done = subprocess.run([sys.executable, "-c", "import sys, latentinv; print('torch' in sys.modules)"],
                          capture_output=True, text=True, timeout=120)
    assert done.stdout.strip() == "False", done.stdout + done.stderr
