"""Fuzz suite (issue 14, item 3): generated bad inputs through the public API.

The one property everywhere: a call either returns a result that passes the documented checks
(shape, dtype, finite values; for a loaded prior, a decoder equal bit for bit to the saved one), or
raises an exception of a documented type (``ValueError``, ``TypeError``, ``FileNotFoundError``,
the package's ``ModelFileError``, scikit-learn's ``NotFittedError``) with a non-empty message.
Never a crash, a hang, another exception type, or a silent NaN/inf.

- operators: arrays of random shapes (0-D to 3-D, empty), dtypes (bool, ints, float16/32/64,
  complex, object, strings), containers (NumPy, lists, torch tensors with and without
  ``requires_grad``) and values (NaN, inf, negative, zero, 1e300, subnormal) into ``response``,
  ``jacobian``, ``response_and_jacobian``, ``forward`` and ``submit``/``PendingResponse.result``,
  on the straight-ray operator and the shortest-path operator with both backends;
- ``VAEPrior``: ``fit``, ``encode``, ``decode``, ``sample``, ``score_samples`` on a tiny network;
- ``LatentInverter``: ``fit``/``predict``/``invert``/``score`` with bad traveltimes, and
  ``set_params`` with bad values;
- saved priors: byte flips, truncations and deleted files, then ``VAEPrior.load``.

Reproducible: every test is ``derandomize=True`` (the same cases in every run) and has no example
database. Guards: each case runs under ``signal.setitimer`` (a Python-level hang raises) and
``faulthandler.dump_traceback_later(exit=True)`` (a hang inside C++ ends the process with a
traceback); a crash of the C++ engine ends the process too, and ``test_operator_fuzz_in_a_child``
replays the operator property in a subprocess so that a segfault is reported as a failing test.
``test_zz_case_count`` (last) asserts that at least 1,000 cases ran and prints the counts.
"""
from __future__ import annotations

import contextlib
import faulthandler
import json
import math
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import warnings
from collections import Counter

import numpy as np
import pytest
import scipy.sparse as sp
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sklearn.exceptions import NotFittedError

from latentinv._backend import HAS_CORE
from latentinv.geometry import CrossholeSurvey, Grid2D
from latentinv.inversion import InversionResult, LatentInverter
from latentinv.operators import PendingResponse, ShortestPathOperator, StraightRayOperator
from latentinv.operators._base import smallest_slowness
from latentinv.prior import ModelFileError, VAEPrior

#: generated cases per property (hypothesis' ``max_examples``); the total is asserted at the end
N_OPERATOR = 450
N_PRIOR_FIT = 60
N_PRIOR_INFERENCE = 300
N_INVERTER = 100
N_INVERTER_PARAMS = 100
N_LOAD = 400
MIN_TOTAL = 1000

#: seconds one case may take before it counts as a hang (Python level), and before the process is
#: ended with a traceback (a hang in C++ that never returns to the interpreter)
CASE_TIMEOUT = float(os.environ.get("LATENTINV_FUZZ_CASE_TIMEOUT", 5.0))
HARD_TIMEOUT = float(os.environ.get("LATENTINV_FUZZ_HARD_TIMEOUT", 30.0))

CASES = Counter()  # property name -> cases run in this process

FUZZ = dict(deadline=None, derandomize=True, database=None, print_blob=True,
            suppress_health_check=list(HealthCheck))


class Hang(Exception):
    """A case ran past CASE_TIMEOUT."""


def _on_alarm(signum, frame):
    raise Hang(f"a fuzz case ran longer than {CASE_TIMEOUT} s")


@contextlib.contextmanager
def case_guard(name):
    """Count one case of property ``name`` and bound its run time."""
    CASES[name] += 1
    previous = signal.signal(signal.SIGALRM, _on_alarm)
    faulthandler.dump_traceback_later(HARD_TIMEOUT, exit=True)
    signal.setitimer(signal.ITIMER_REAL, CASE_TIMEOUT)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        faulthandler.cancel_dump_traceback_later()
        signal.signal(signal.SIGALRM, previous)


#: documented exception types of the whole API (ModelFileError and NotFittedError are ValueErrors)
DOCUMENTED = (ValueError, TypeError, FileNotFoundError)
#: ValueError subclasses that are raw library errors, not the package's messages
RAW_VALUE_ERRORS = (UnicodeError, json.JSONDecodeError)


def check_error(err, allowed=DOCUMENTED):
    """An exception is acceptable when it has a documented type and a message."""
    if isinstance(err, Hang) or not isinstance(err, allowed) or isinstance(err, RAW_VALUE_ERRORS):
        raise AssertionError(f"undocumented exception {type(err).__module__}.{type(err).__name__}: "
                             f"{err}") from err
    assert str(err).strip(), f"{type(err).__name__} without a message"


@pytest.fixture(scope="module", autouse=True)
def _two_threads():
    """Torch on one thread here (the machine is shared), restored afterwards."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


# ---------------------------------------------------------------------------------------------------
# generated arrays
# ---------------------------------------------------------------------------------------------------
#: values that break things: NaN, infinities, signs, zero, the float64 extremes, float32/16 limits
SPECIAL = [math.nan, math.inf, -math.inf, -1.0, -12.5, 0.0, -0.0, 1e300, 1.7e308, 1e-300, 5e-324,
           3.0e38, 3.5e38, 65504.0, 70000.0, 1e20, 1e-8]
DTYPES = ["float64", "float32", "float16", "int64", "int8", "uint8", "bool", "complex128", "object",
          "U4", "S4"]


@st.composite
def arrays(draw, n, valid_range=(0.05, 20.0)):
    """``(value, description)``: an array-like aimed at a model of ``n`` entries per row."""
    kind = draw(st.sampled_from(["vector", "batch", "batch", "empty_batch", "scalar", "empty",
                                 "wrong_length", "3d", "column"]))
    k = draw(st.integers(1, 3))
    shape = {"vector": (n,), "batch": (k, n), "empty_batch": (0, n), "scalar": (), "empty": (0,),
             "wrong_length": (draw(st.sampled_from([n - 1, n + 1, 1])),),
             "3d": (k, n, 1) if draw(st.booleans()) else (1, k, n), "column": (n, 1)}[kind]
    size = int(np.prod(shape))
    base = draw(st.floats(*valid_range))
    values = np.full(size, base)
    seed = draw(st.integers(0, 2**32 - 1))
    values = values * np.random.default_rng(seed).uniform(0.5, 2.0, size)
    n_special = draw(st.integers(0, min(size, 3))) if draw(st.booleans()) else 0
    for _ in range(n_special):
        values[draw(st.integers(0, size - 1))] = draw(st.sampled_from(SPECIAL))
    if draw(st.integers(0, 9)) == 0 and size:  # everything huge or everything tiny
        values[:] = draw(st.sampled_from([1e300, 1e-300, 3e38, 65504.0, 1e20]))
    return draw(converted(values.reshape(shape)))


@st.composite
def converted(draw, values):
    """``values`` (float64) in a drawn dtype and container: ``(value, description)``."""
    size = values.size
    dtype = draw(st.sampled_from(DTYPES + ["float64"] * 6 + ["float32"] * 2))
    if dtype.startswith("float") and size and draw(st.integers(0, 7)) == 0:
        values = np.full_like(values, 0.5 * float(np.finfo(dtype).max))  # near the dtype's maximum
    with np.errstate(all="ignore"), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        if dtype in ("U4", "S4"):
            a = values.astype(dtype)
        elif dtype == "object":
            a = values.astype(object)
            if size and draw(st.booleans()):
                a.flat[0] = draw(st.sampled_from(["x", None, [1.0], 1 + 2j]))
        elif dtype == "complex128":
            a = values.astype(dtype) + (1j if draw(st.booleans()) else 0)
        elif dtype in ("int64", "int8", "uint8", "bool"):
            a = np.nan_to_num(values, nan=0.0, posinf=1e6, neginf=-1e6)
            a = np.clip(a, -1e6, 1e6).astype(dtype)
        else:
            a = values.astype(dtype)
    container = draw(st.sampled_from(["numpy", "numpy", "list", "torch", "torch_grad"]))
    if container == "list":
        return a.tolist(), f"list from {a.dtype} {a.shape}"
    if container.startswith("torch") and a.dtype.kind in "biufc" and a.dtype != np.uint16:
        tensor = torch.tensor(a)
        if container == "torch_grad" and tensor.is_floating_point():
            tensor.requires_grad_(True)
        return tensor, f"tensor {tensor.dtype} {tuple(tensor.shape)} grad={tensor.requires_grad}"
    return a, f"ndarray {a.dtype} {a.shape}"


def _valid_model(m, n, torch_dtypes=None):
    """Whether ``m`` is a real, finite model of ``n`` cells (one or a batch) whose slowness is at least
    its dtype's smallest normal number (positive, not subnormal: ``smallest_slowness``); with
    ``torch_dtypes``, only a tensor of one of these dtypes is (``forward``)."""
    if torch_dtypes is not None and not (isinstance(m, torch.Tensor) and m.dtype in torch_dtypes):
        return False
    if isinstance(m, torch.Tensor):
        if m.dtype == torch.bool or m.is_complex():
            return False
        a, low = m.detach().double().numpy(), smallest_slowness(m.dtype)
    else:
        try:
            a = np.asarray(m)
            if a.dtype.kind not in "iufO":  # object arrays of numbers are array-likes too
                return False
            low = smallest_slowness(a.dtype)
            a = a.astype(np.float64)
        except (TypeError, ValueError):
            return False
    return a.ndim in (1, 2) and a.shape[-1] == n and bool(np.all(np.isfinite(a)) and np.all(a >= low))


# ---------------------------------------------------------------------------------------------------
# operators
# ---------------------------------------------------------------------------------------------------
# cells of 1 m: rays of 3-5 m, so that a slowness near a dtype's maximum overflows the traveltime
_GRID = Grid2D(4, 3, 1.0)                                          # 12 cells, 3 m x 4 m
_SURVEY = CrossholeSurvey([[0.0, 1.0], [0.0, 3.0]], [[3.0, 0.0], [3.0, 2.0], [3.0, 4.0]])  # 6 data
_OPERATORS = {"straight": lambda: StraightRayOperator(_GRID, _SURVEY),
              "shortest-python": lambda: ShortestPathOperator(_GRID, _SURVEY, 1, backend="python")}
if HAS_CORE:
    _OPERATORS["shortest-cpp"] = lambda: ShortestPathOperator(_GRID, _SURVEY, 1, n_threads=2,
                                                              backend="cpp")
_OPERATOR_CACHE = {}
_STATE = {}  # tiny prior, inverter, saved prior (built once); "engine_died" from the child test
METHODS = ["response", "jacobian", "response_and_jacobian", "forward", "submit"]


def _operator(name):
    if name not in _OPERATOR_CACHE:
        _OPERATOR_CACHE[name] = _OPERATORS[name]()
    return _OPERATOR_CACHE[name]


def _check_csr(J, op):
    assert sp.issparse(J) and J.format == "csr", type(J)
    assert J.shape == (op.n_data, op.n_params)
    assert np.all(np.isfinite(J.data)) and np.all(J.data >= 0)
    # every ray has a path (positive length) through the grid
    assert np.all(np.asarray(J.sum(axis=1)).ravel() > 0)


def _check_times(t, shape, nan_rows=None):
    assert isinstance(t, np.ndarray) and t.dtype == np.float64, (type(t), getattr(t, "dtype", None))
    assert t.shape == shape, (t.shape, shape)
    assert np.all(np.isfinite(t)), f"silent non-finite traveltimes: {t}"
    assert np.all(t >= 0), f"negative traveltimes for positive slowness: {t}"


def _n_models(m):
    try:
        shape = tuple(m.shape) if hasattr(m, "shape") else np.shape(m)
    except ValueError:  # a ragged list
        return None
    return shape[0] if len(shape) >= 2 else None


def operator_case(op_name, method, m, data):
    """The property for one call; ``data`` draws the extra arguments of ``submit``."""
    op = _operator(op_name)
    if method == "forward":  # documented: float16/bfloat16/float32/float64 (straight ray: 32/64)
        dtypes = ((torch.float32, torch.float64) if isinstance(op, StraightRayOperator)
                  else (torch.float16, torch.bfloat16, torch.float32, torch.float64))
        valid = _valid_model(m, op.n_params, dtypes)
    else:
        valid = _valid_model(m, op.n_params)
    single = _n_models(m) is None
    if method == "jacobian":  # documented: one model (n_params,); a batch is refused
        valid = valid and single
    # documented limits on valid models: a graph operator refuses a slowness contrast above
    # max_slowness_contrast; near a dtype's range (times that overflow it, edge times that vanish
    # against path times) every operator may refuse with a ValueError instead of answering
    borderline = False
    if valid:
        a = np.asarray(m.detach().double() if isinstance(m, torch.Tensor) else m, dtype=np.float64)
        a = a.reshape(-1, op.n_params)
        limit = getattr(op, "max_slowness_contrast", None)
        if a.size and limit is not None and np.any(a.max(axis=1) / a.min(axis=1) > limit):
            valid = False
        out_max = (float(torch.finfo(m.dtype).max) if isinstance(m, torch.Tensor) and method == "forward"
                   else np.finfo(np.float64).max)
        borderline = a.size > 0 and (a.max() * 100.0 >= out_max or a.min() < 1e-290)
    try:
        if method == "forward":
            out = op.forward(m)
        elif method == "submit":
            if not hasattr(op, "submit"):
                return
            want = data.draw(st.booleans(), label="want_jacobian")
            pending = op.submit(m, want_jacobian=want)
            assert isinstance(pending, PendingResponse)
            out = pending.result()
            assert out is pending.result()  # may be called again
        else:
            out = getattr(op, method)(m)
    except Exception as err:  # noqa: BLE001 - the property classifies every exception
        check_error(err, (ValueError, TypeError))
        assert not valid or (borderline and isinstance(err, ValueError)), \
            f"a valid model was refused: {type(err).__name__}: {err}"
        return
    assert valid, f"{method} accepted an invalid model and returned {out!r}"
    n_models = 1 if single else _n_models(m)
    if method == "forward":
        assert isinstance(out, torch.Tensor) and out.dtype == m.dtype
        assert tuple(out.shape) == ((op.n_data,) if single else (n_models, op.n_data))
        assert torch.isfinite(out).all(), f"silent non-finite traveltimes from forward: {out}"
        if m.requires_grad and out.numel():
            (g,) = torch.autograd.grad(out.sum(), m)
            assert g.shape == m.shape and torch.isfinite(g).all()
        return
    if method == "response":
        _check_times(out, (op.n_data,) if single else (n_models, op.n_data))
    elif method == "jacobian":
        _check_csr(out, op)
    elif method == "response_and_jacobian":
        t, J = out
        if single:
            _check_times(t, (op.n_data,))
            J = [J]
            t = t[None]
        else:
            _check_times(t, (n_models, op.n_data))
        assert len(J) == n_models
        a = np.asarray(m.detach().double() if isinstance(m, torch.Tensor) else m,
                       dtype=np.float64).reshape(n_models, op.n_params)
        for k in range(n_models):
            _check_csr(J[k], op)
            with np.errstate(over="ignore"):
                np.testing.assert_allclose(J[k] @ a[k], t[k], rtol=1e-9)  # J(m) m == response(m)
    else:  # submit
        t, J = out
        _check_times(t, (n_models, op.n_data))
        if J is not None:
            assert len(J) == n_models
            for Jk in J:
                _check_csr(Jk, op)


def _tiny_cell(value=1e-300):
    m = np.full(12, 5.0)
    m[5] = value  # one cell of almost zero slowness on the path: d + L*s == d in float64
    return m


#: minimal inputs that the fuzzing found (each a failure when found): (operator, method, model)
FOUND_CASES = [
    ("straight", "response", np.full(12, 1e308)),                 # traveltimes overflow to inf
    ("shortest-python", "response", np.full(12, 1e308)),
    ("straight", "forward", torch.full((12,), 3e38)),            # float32 traveltimes overflow
    ("shortest-python", "forward", torch.full((12,), 6e4, dtype=torch.float16)),
    ("shortest-python", "response_and_jacobian", _tiny_cell()),  # the back-tracking never ends
] + ([("shortest-cpp", "response", np.full(12, 1e308)),
      ("shortest-cpp", "response_and_jacobian", _tiny_cell()),
      ("shortest-cpp", "forward", torch.tensor(_tiny_cell(), requires_grad=True))] if HAS_CORE else [])


CHILD = r"""
import sys
sys.path.insert(0, {tests!r})
import test_fuzz
failures = 0
try:
    test_fuzz.test_operator_fuzz()      # the same derandomized cases as in-process
except Exception as err:                # a property failure: test_operator_fuzz reports it
    failures += 1
print("FUZZ DONE", flush=True)
for i, case in enumerate(test_fuzz.FOUND_CASES):
    try:
        with test_fuzz.case_guard("operators (found)"):
            test_fuzz.operator_case(*case, data=None)
    except Exception as err:
        failures += 1
    print("FOUND DONE", i, flush=True)
print("cases", test_fuzz.CASES["operators"], "failures", failures)
"""


def test_operator_fuzz_in_a_child():
    """The operator property replayed in a subprocess, first: a segfault, an abort or a hang of the
    engine (C++ code that never returns to the interpreter, where SIGALRM cannot interrupt it) is a
    failed test here, with the child's traceback, instead of a dead test session. A plain property
    failure in the child is left to ``test_operator_fuzz`` to report."""
    code = CHILD.format(tests=os.path.dirname(os.path.abspath(__file__)))
    env = dict(os.environ, OMP_NUM_THREADS="1", LATENTINV_FUZZ_CASE_TIMEOUT="3",
               LATENTINV_FUZZ_HARD_TIMEOUT="8")
    try:
        proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env,
                              timeout=240)
    except subprocess.TimeoutExpired as err:
        _STATE["engine_died"] = "hang"
        raise AssertionError(f"the operator fuzz did not finish in 240 s:\n{err.stderr}") from None
    died = proc.returncode < 0 or "Fatal Python error" in proc.stderr or "Timeout (0:" in proc.stderr
    if died:  # where: in the fuzz phase, or in the found case after the last one that finished
        why = f"return code {proc.returncode}"
        if "FUZZ DONE" not in proc.stdout:
            _STATE["engine_died"] = why
        else:
            done = [int(line.split()[-1]) for line in proc.stdout.splitlines()
                    if line.startswith("FOUND DONE")]
            _STATE["found_died"] = (max(done, default=-1) + 1, why)
    tail = (proc.stdout + proc.stderr)[-6000:]
    assert not died, f"the operator fuzz crashed or hung (return code {proc.returncode}):\n{tail}"
    assert proc.returncode == 0 and "cases" in proc.stdout, tail


@settings(max_examples=N_OPERATOR, **FUZZ)
@given(op_name=st.sampled_from(sorted(_OPERATORS)), method=st.sampled_from(METHODS),
       m=arrays(12), data=st.data())
def test_operator_fuzz(op_name, method, m, data):
    if "engine_died" in _STATE:  # the same cases would end this process: reported above
        pytest.fail(f"the operator engine crashed or hung in test_operator_fuzz_in_a_child "
                    f"({_STATE['engine_died']}); not repeated in-process")
    m, description = m
    data.draw(st.just(description), label="model")
    with case_guard("operators"):
        operator_case(op_name, method, m, data)


@pytest.mark.parametrize("op_name, method, m", FOUND_CASES,
                         ids=[f"{o}-{k}-{i}" for i, (o, k, _) in enumerate(FOUND_CASES)])
def test_operator_found_cases(op_name, method, m):
    """The minimal failing inputs found by the fuzzing, kept as fixed cases (same property)."""
    index = next(i for i, case in enumerate(FOUND_CASES) if case[0] == op_name and case[1] == method
                 and case[2] is m)
    died, why = _STATE.get("found_died", (len(FOUND_CASES), ""))
    if "engine_died" in _STATE or index == died or (index > died and op_name == "shortest-cpp"):
        pytest.fail(f"the operator engine crashed or hung on this case (or an earlier one) in "
                    f"test_operator_fuzz_in_a_child ({_STATE.get('engine_died', why)}); not run "
                    f"in-process, where it would end the test session")
    with case_guard("operators (found)"):
        operator_case(op_name, method, m, data=None)


# ---------------------------------------------------------------------------------------------------
# VAEPrior
# ---------------------------------------------------------------------------------------------------
SHAPE = (33, 17)
TINY = dict(n_components=2, image_shape=SHAPE, channels=(2, 2, 2, 2), hidden_size=4, n_iterations=1,
            batch_size=4, device="cpu", random_state=0)


def _training_images(n=6):
    rng = np.random.default_rng(0)
    rows = np.arange(SHAPE[0])[None, :, None]
    top = rng.integers(5, 25, size=(n, 1, 1))
    return np.broadcast_to((rows >= top) & (rows < top + 6), (n, *SHAPE)).astype(np.float64)


def tiny_prior():
    if "prior" not in _STATE:
        _STATE["prior"] = VAEPrior(**TINY).fit(_training_images())
    return _STATE["prior"]


@st.composite
def models(draw):
    """Bad or good training/encoding models: images (n, 33, 17), flat (n, 561), others."""
    layout = draw(st.sampled_from(["images", "flat", "other"]))
    n_cells = SHAPE[0] * SHAPE[1]
    if layout == "other":
        return draw(arrays(n_cells, valid_range=(0.0, 1.0)))
    value, description = draw(arrays(n_cells, valid_range=(0.0, 1.0)))
    if isinstance(value, list):
        value = np.asarray(value, dtype=object if description.startswith("list from object") else None)
    if layout == "images" and getattr(value, "ndim", 0) == 2 and value.shape[1] == n_cells:
        value = value.reshape(-1, *SHAPE)
        if draw(st.booleans()):  # the transposed geometry: same cells, wrong shape
            value = value.reshape(-1, SHAPE[1], SHAPE[0])
    return value, description + f" as {layout}"


def _as_float(X, kinds):
    """``X`` as a float64 array when its dtype kind is in ``kinds`` (or an object array of numbers,
    which scikit-learn's checks accept), else None."""
    if isinstance(X, torch.Tensor):
        X = X.detach().float().numpy() if X.dtype == torch.bfloat16 else X.detach().numpy()
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            a = np.asarray(X)
            if a.dtype.kind not in kinds + "O":
                return None
            return a.astype(np.float64)
    except (TypeError, ValueError):
        return None


def _x_ok_for_prior(X):
    """Whether ``X`` is a valid model batch for the fitted prior (finite, in [0, 1])."""
    a = _as_float(X, "biuf")  # bool masks are images too
    if a is None or a.ndim not in (2, 3) or a.shape[0] == 0:
        return False
    if a.shape[1:] not in ((SHAPE[0] * SHAPE[1],), SHAPE):
        return False
    if not np.all(np.isfinite(a)) or np.any(np.abs(a) > float(np.finfo(np.float32).max)):
        return False  # the network computes in float32
    return bool(np.all((a >= 0) & (a <= 1)))  # the sigmoid decoder's range (TINY's output_activation)


def _check_model_output(out, n_rows):
    assert isinstance(out, np.ndarray) and out.dtype == np.float64
    assert out.shape == (n_rows, SHAPE[0] * SHAPE[1])
    assert np.all(np.isfinite(out)), "silent non-finite models"
    assert np.all((out >= 0) & (out <= 1)), "the conv decoder's sigmoid output left [0, 1]"


@settings(max_examples=N_PRIOR_FIT, **FUZZ)
@given(X=models())
def test_prior_fit_fuzz(X):
    X, description = X
    with case_guard("VAEPrior.fit"), warnings.catch_warnings():
        warnings.simplefilter("ignore")  # sklearn's DataConversionWarning and the like
        prior = VAEPrior(**TINY)
        ok = _x_ok_for_prior(X)
        try:
            fitted = prior.fit(X)
        except Exception as err:  # noqa: BLE001
            check_error(err)
            assert ok is not True, f"refused valid X: {type(err).__name__}: {err}"
            return
        assert fitted is prior
        assert ok is not False, f"fit accepted invalid X ({description})"
        assert all(math.isfinite(v) for v in prior.history_["loss"])
        for p in prior.module_.parameters():
            assert torch.isfinite(p).all(), "fit left non-finite weights"
        _check_model_output(prior.decode(np.zeros((2, 2))), 2)


INFERENCE = ["encode", "transform", "decode", "inverse_transform", "sample", "score_samples", "score"]


@st.composite
def latents(draw):
    value, description = draw(arrays(2, valid_range=(-3.0, 3.0)))
    return value, description


@settings(max_examples=N_PRIOR_INFERENCE, **FUZZ)
@given(method=st.sampled_from(INFERENCE), data=st.data())
def test_prior_inference_fuzz(method, data):
    prior = tiny_prior()
    with case_guard("VAEPrior inference"), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        if method in ("decode", "inverse_transform"):
            arg, _ = data.draw(latents(), label="Z")
            ok = _z_ok(arg)
            n_rows = _n_rows(arg)
        elif method == "sample":
            arg = data.draw(st.one_of(st.integers(-3, 5), st.sampled_from(
                [0, 1.5, math.nan, "3", None, True, np.int64(2), np.array([2])])), label="n_samples")
            ok = isinstance(arg, (int, np.integer)) and not isinstance(arg, bool) and 1 <= arg <= 5
            n_rows = arg
        else:
            arg, _ = data.draw(models(), label="X")
            ok = _x_ok_for_prior(arg)
            n_rows = _n_rows(arg)
        try:
            out = getattr(prior, method)(arg)
        except Exception as err:  # noqa: BLE001
            check_error(err)
            assert ok is not True, f"{method} refused a valid input: {type(err).__name__}: {err}"
            return
        assert ok is not False, f"{method} accepted an invalid input and returned {out!r}"
        if method in ("decode", "inverse_transform", "sample"):
            _check_model_output(out, n_rows)
        elif method in ("encode", "transform"):
            assert isinstance(out, np.ndarray) and out.dtype == np.float64
            assert out.shape == (n_rows, 2) and np.all(np.isfinite(out)), out
        elif method == "score_samples":
            assert isinstance(out, np.ndarray) and out.shape == (n_rows,) and np.all(np.isfinite(out))
        else:
            assert isinstance(out, float) and math.isfinite(out)


def _n_rows(a):
    shape = tuple(a.shape) if hasattr(a, "shape") else np.shape(a)
    return shape[0] if shape else 0


def _z_ok(Z):
    a = _as_float(Z, "biuf")
    if a is None or a.ndim != 2 or a.shape[0] == 0 or a.shape[1] != 2:
        return False
    if not np.all(np.isfinite(a)) or np.any(np.abs(a) > float(np.finfo(np.float32).max)):
        return False  # the network computes in float32
    return True if np.all(np.abs(a) < 1e6) else None  # huge but float32: an error or a result


# ---------------------------------------------------------------------------------------------------
# LatentInverter
# ---------------------------------------------------------------------------------------------------
def _inversion_setup():
    if "inverter" not in _STATE:
        prior = tiny_prior()
        grid = Grid2D(*SHAPE, 0.1)
        depths = np.array([0.5, 1.5, 2.5])
        survey = CrossholeSurvey(np.c_[np.zeros(3), depths], np.c_[np.full(3, 1.7), depths + 0.2])
        op = StraightRayOperator(grid, survey)
        inv = LatentInverter(prior, op, n_starts=2, n_epochs=1, batch_size=None, device="cpu",
                             random_state=0)
        truth = prior.sample(2, random_state=1)
        tt = inv.fit(np.ones((1, op.n_data))).simulate(truth)
        _STATE["inverter"] = (inv, op, truth, tt)
    return _STATE["inverter"]


def _check_models(models, n_surveys, n_cells):
    assert isinstance(models, np.ndarray) and models.dtype == np.float64
    assert models.shape == (n_surveys, n_cells)
    assert np.all(np.isfinite(models)) and np.all((models >= 0) & (models <= 1))


def _traveltimes_ok(X, n_data):
    """True: valid traveltimes; False: invalid; None: either (between 1e15 ns and the float32
    overflow bound that fit enforces, whose refusal is documented)."""
    a = _as_float(X, "iuf")  # bool "traveltimes" are refused like bool slowness
    if a is None or a.ndim != 2 or a.shape[0] == 0 or a.shape[1] != n_data:
        return False
    if not (np.all(np.isfinite(a)) and np.all(a >= 0)):
        return False
    if np.all(a <= 1e15):
        return True
    return False if a.max() > math.sqrt(3.5e38 / (4 * n_data)) else None


def inverter_call(inv, method, X, truth):
    if method == "fit":
        return inv.fit(X)
    if method == "score":
        return inv.score(X, truth[: max(_n_rows(X), 1)])
    return getattr(inv, method)(X)


def check_inverter_result(inv, method, out, n_surveys, n_cells):
    if method == "fit":
        assert out is inv and inv.n_iterations_ == inv.n_epochs * inv.iterations_per_epoch_
    elif method == "predict":
        _check_models(out, n_surveys, n_cells)
    elif method == "invert":
        assert isinstance(out, InversionResult)
        _check_models(out.models, n_surveys, n_cells)
        assert out.data_rmse.shape == (n_surveys, inv.n_starts)
        assert np.all(np.isfinite(out.data_rmse)) and np.all(out.data_rmse >= 0)
        assert np.all(np.isfinite(out.latents))
        assert np.all(np.isfinite(out.homogeneous_rmse)) and np.all(out.homogeneous_slowness > 0)
    else:
        assert isinstance(out, float) and math.isfinite(out)


@settings(max_examples=N_INVERTER, **FUZZ)
@given(method=st.sampled_from(["fit", "predict", "invert", "score"]), data=st.data())
def test_inverter_traveltimes_fuzz(method, data):
    inv, op, truth, tt = _inversion_setup()
    scale = data.draw(st.sampled_from([1.0, 1.0, 1.0, 0.5, 2.0, 1e3, 1e20]), label="scale")
    X, _ = data.draw(arrays(op.n_data, valid_range=(20.0, 40.0)), label="X")
    if data.draw(st.booleans(), label="from simulated"):
        X, _ = data.draw(converted(np.asarray(tt) * scale), label="X from simulated")
    if _n_rows(X) > 2 and method == "score":
        method = "predict"
    with case_guard("LatentInverter traveltimes"), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ok = _traveltimes_ok(X, op.n_data)
        try:
            out = inverter_call(inv, method, X, truth)
        except Exception as err:  # noqa: BLE001
            check_error(err)
            assert ok is not True, f"{method} refused valid traveltimes: {type(err).__name__}: {err}"
            return
        assert ok is not False, f"{method} accepted invalid traveltimes and returned {out!r}"
        check_inverter_result(inv, method, out, _n_rows(X), op.n_params)


BAD_VALUES = [math.nan, math.inf, -math.inf, -1, 0, 1e20, 10**30, 1.5, -0.5, "abc", "1", None, True,
              False, [1], np.float64(0.5), np.int64(1), 2, 0.999]
PARAMS = ["lr", "lr_decay", "decay_every", "batch_size", "regularization", "lam", "lam_decay",
          "n_epochs", "n_starts", "noise_std", "target_misfit", "optimizer", "nonlinear_gradient",
          "clip_resample", "slowness_map", "random_state", "device"]


@settings(max_examples=N_INVERTER_PARAMS, **FUZZ)
@given(param=st.sampled_from(PARAMS), value=st.sampled_from(BAD_VALUES),
       refit=st.booleans(), method=st.sampled_from(["predict", "invert", "score"]))
def test_inverter_set_params_fuzz(param, value, refit, method):
    inv0, op, truth, tt = _inversion_setup()
    with case_guard("LatentInverter.set_params"), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        inv = LatentInverter(**inv0.get_params(deep=False)).fit(tt)
        if param in ("n_epochs", "n_starts") and isinstance(value, (int, np.integer)) and value > 3:
            value = 3  # keep the valid cases short
        inv.set_params(**{param: value})
        try:
            if refit:
                inv.fit(tt)
            out = inverter_call(inv, method, tt, truth)
        except Exception as err:  # noqa: BLE001
            check_error(err)
            return
        before = inv0.get_params()[param]
        unchanged = value is before or (type(value) is type(before) and value == before)
        assert refit or unchanged, \
            f"set_params({param}={value!r}) after fit: {method} ran with the stale fitted state"
        check_inverter_result(inv, method, out, tt.shape[0], op.n_params)


# ---------------------------------------------------------------------------------------------------
# saved priors: byte flips, truncations, deletions
# ---------------------------------------------------------------------------------------------------
FILES = ("weights.safetensors", "config.json")


def _saved():
    if "saved" not in _STATE:
        prior = tiny_prior()
        root = tempfile.mkdtemp(prefix="latentinv-fuzz-")
        path = os.path.join(root, "prior")
        prior.save(path)
        z = np.random.default_rng(3).standard_normal((4, 2))
        _STATE["saved"] = (path, {f: open(os.path.join(path, f), "rb").read() for f in FILES},
                           z, prior.decode(z), prior.get_params(), prior.module_.state_dict())
    return _STATE["saved"]


@st.composite
def damage(draw):
    """A list of (file, action, args): flips of 1-8 bytes, truncations, deletions."""
    _, original, *_ = _saved()
    steps = []
    for _ in range(draw(st.integers(1, 2))):
        file = draw(st.sampled_from(FILES))
        size = len(original[file])
        action = draw(st.sampled_from(["flip", "flip", "flip", "truncate", "delete"]))
        # positions uniform over the file (hypothesis alone favours small integers: the header)
        rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
        if action == "flip":
            n = draw(st.integers(1, 8))
            flips = list(zip(rng.integers(0, size, n).tolist(), rng.integers(1, 256, n).tolist()))
            steps.append((file, "flip", flips))
        elif action == "truncate":
            steps.append((file, "truncate", int(rng.integers(0, size))))
        else:
            steps.append((file, "delete", None))
    return steps


@settings(max_examples=N_LOAD, **FUZZ)
@given(steps=damage())
def test_load_damaged_prior_fuzz(steps):
    path, original, z, decoded, params, state = _saved()
    with case_guard("VAEPrior.load"), tempfile.TemporaryDirectory() as root:
        target = os.path.join(root, "prior")
        shutil.copytree(path, target)
        contents = dict(original)
        for file, action, args in steps:
            if contents.get(file) is None:
                continue
            if action == "flip":
                b = bytearray(contents[file])
                for pos, mask in args:
                    if b:  # positions of the original file, wrapped into a truncated one
                        b[pos % len(b)] ^= mask
                contents[file] = bytes(b)
            elif action == "truncate":
                contents[file] = contents[file][:args]
            else:
                contents[file] = None
        for file, raw in contents.items():
            full = os.path.join(target, file)
            if raw is None:
                os.unlink(full)
            else:
                with open(full, "wb") as f:
                    f.write(raw)
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("error")  # an UnverifiedModelWarning would hide a damaged file
                loaded = VAEPrior.load(target, device="cpu")
        except Exception as err:  # noqa: BLE001
            check_error(err, (ModelFileError, FileNotFoundError))
            named = [f for f in FILES if f in str(err)] or [target]
            assert any(n in str(err) for n in named), f"the message names no file: {err}"
            return
        # loadable: then it must be the same prior, bit for bit
        assert loaded.get_params() == params, "a damaged file loaded with other parameters"
        assert np.array_equal(loaded.decode(z), decoded), "a damaged file loaded with other weights"
        loaded_state = loaded.module_.state_dict()
        assert loaded_state.keys() == state.keys()
        for key, tensor in state.items():  # the encoder too, bit for bit
            assert torch.equal(loaded_state[key], tensor), f"a damaged file changed {key}"


# ---------------------------------------------------------------------------------------------------
# the count
# ---------------------------------------------------------------------------------------------------
PROPERTIES = ("operators", "VAEPrior.fit", "VAEPrior inference",
              "LatentInverter traveltimes", "LatentInverter.set_params", "VAEPrior.load")


def test_zz_case_count(request):
    """Runs last (file order): at least MIN_TOTAL generated cases in all, each property exercised."""
    total = sum(CASES[p] for p in PROPERTIES)
    line = "fuzz cases: " + ", ".join(f"{p} {CASES[p]}" for p in PROPERTIES) + f"; total {total}"
    reporter = request.config.pluginmanager.getplugin("terminalreporter")
    if reporter is not None:
        reporter.write_line(line)
    if any(CASES[p] == 0 for p in PROPERTIES):
        pytest.skip(f"not every property ran in this session (e.g. -k): {line}")
    if request.session.testsfailed:
        pytest.skip(f"a property failed (it stops at its first failing case): {line}")
    assert total >= MIN_TOTAL, line
