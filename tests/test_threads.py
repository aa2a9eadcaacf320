"""The package used from several threads at once: the sections that change process-wide state (the
warnings filters here; torch's global RNG in test_nn.py) leave it as they found it."""
import threading
import warnings

import numpy as np
import pytest
import scipy.sparse as sp
import torch

from latentinv._common import _numeric_input
from latentinv.operators._base import torch_csr


def test_two_sections_ignoring_warnings_in_two_threads_leave_the_filters_as_they_were(monkeypatch):
    """``warnings.catch_warnings`` saves and restores the process's filter list: a section entered in thread A,
    then one in thread B, A leaving first and B last, put back A's list, so A's filters stayed for good.
    Mixed with ``_numeric_input`` (in ``VAEPrior.encode`` and the like, for a list), whose filter ignored every
    warning, threads running straight-ray inversions left an "ignore" of every warning in 3 of 5 runs of 8
    threads x 200 calls. The package's sections now take turns. Here each stops inside (in torch's
    constructor) until told: B is started while A is inside, and A is let go once B is inside too (or 0.3 s
    passed: B waits for A now)."""
    matrix = sp.identity(3, format="csr")
    real = torch.sparse_csr_tensor
    inside = {"A": threading.Event(), "B": threading.Event()}
    go = {"A": threading.Event(), "B": threading.Event()}

    def halting(*args, **kwargs):
        name = threading.current_thread().name
        inside[name].set()
        go[name].wait(10)
        return real(*args, **kwargs)
    monkeypatch.setattr(torch, "sparse_csr_tensor", halting)
    with warnings.catch_warnings():
        warnings.simplefilter("default")
        before = list(warnings.filters)
        a = threading.Thread(target=torch_csr, args=(matrix, torch.float32), name="A")
        b = threading.Thread(target=torch_csr, args=(matrix, torch.float32), name="B")
        a.start()
        assert inside["A"].wait(10)
        b.start()
        inside["B"].wait(0.3)
        go["A"].set()
        a.join(10)
        go["B"].set()
        b.join(10)
        assert inside["B"].is_set() and warnings.filters == before


def test_a_list_checked_in_one_thread_hides_no_warning_of_another():
    """``_numeric_input`` ignored every warning while NumPy read a list, and the filters are the process's:
    a warning raised meanwhile in another thread (a DataScaleWarning, a BaselineWarning) was lost. It now
    ignores only NumPy's warnings of ragged lists (before 1.24). The list's reading is held here (its
    ``__array__``) while this thread warns."""
    reading, done = threading.Event(), threading.Event()

    class HeldList:
        def __array__(self, dtype=None, copy=None):
            reading.set()
            done.wait(10)
            return np.zeros((2, 3))
    thread = threading.Thread(target=_numeric_input, args=(HeldList(), "X", "VAEPrior"))
    with pytest.warns(UserWarning, match="from another thread"):
        thread.start()
        assert reading.wait(10)
        warnings.warn("from another thread", UserWarning)
        done.set()
        thread.join(10)


def test_the_sections_ignore_only_their_own_warnings(monkeypatch):
    """``torch_csr`` hides torch's beta notice of sparse CSR (torch warns it once per process, so here the
    constructor warns it, as torch's first call does, and another warning beside it), and only it; and
    ``ignoring_warnings`` sets "ignore" filters for what it is given, nothing else."""
    from latentinv._checks import ignoring_warnings
    real = torch.sparse_csr_tensor

    def warning(*args, **kwargs):
        warnings.warn("Sparse CSR tensor support is in beta state. If you miss a functionality in the sparse "
                      "tensor support, please submit a feature request", UserWarning)
        warnings.warn("another notice", UserWarning)
        return real(*args, **kwargs)
    monkeypatch.setattr(torch, "sparse_csr_tensor", warning)
    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        torch_csr(sp.identity(3, format="csr"), torch.float32)
        with ignoring_warnings(dict(message="hidden"), dict(category=DeprecationWarning)):
            warnings.warn("hidden, by its message", UserWarning)
            warnings.warn("by its category", DeprecationWarning)
            warnings.warn("shown", UserWarning)
    assert [str(w.message) for w in seen] == ["another notice", "shown"]
