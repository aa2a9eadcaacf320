"""latentinv._subnormals: a call that turns flush-to-zero on (torch 2.4's CPU kernels, compiled with
-ffast-math by gcc < 13, do so when they load) leaves subnormals as they were, in this thread and in
torch's intra-op threads; a flush-to-zero the user set is kept.

The torch of CI (2.13) does not turn it on, so the flip is made here with ``torch.set_flush_denormal``;
the real one was seen with torch 2.4.0 and gcc 12 (docs/user_trial.md, "torch 2.2")."""
import numpy as np
import pytest
import torch

from latentinv import _subnormals
from latentinv._subnormals import flushes_subnormals, keep_subnormals
from latentinv.inversion import graphed
from latentinv.nn import fused


@pytest.fixture(autouse=True)
def subnormals_on():
    if not torch.set_flush_denormal(False):
        pytest.skip("torch cannot set flush-to-zero on this CPU")
    assert not flushes_subnormals() and not flushes_subnormals(parallel=True)
    yield
    torch.set_flush_denormal(False)


def test_the_check_sees_flush_to_zero_in_this_thread_and_in_torchs_threads():
    assert np.float64(5e-324) * 1.0 != 0.0
    torch.set_flush_denormal(True)
    assert flushes_subnormals() and flushes_subnormals(parallel=True)
    assert np.float64(5e-324) * 1.0 == 0.0


def test_a_call_that_turns_flush_to_zero_on_is_undone():
    with keep_subnormals():
        torch.set_flush_denormal(True)                 # as a kernel's library does when it loads
        assert flushes_subnormals()
    assert not flushes_subnormals() and not flushes_subnormals(parallel=True)


def test_the_users_own_flush_to_zero_is_kept():
    torch.set_flush_denormal(True)
    with keep_subnormals():
        pass
    assert flushes_subnormals()


def test_where_it_cannot_be_undone_a_warning_says_so(monkeypatch):
    with pytest.warns(RuntimeWarning, match=r"turned on flush-to-zero of subnormal floats .* now compute as 0"):
        with keep_subnormals():
            torch.set_flush_denormal(True)
            monkeypatch.setattr(torch, "set_flush_denormal", lambda mode: False)   # a CPU without the flag
    monkeypatch.undo()
    assert flushes_subnormals()        # as the warning says (the fixture turns it off)


def _flipping(fn):
    def compiled(*args, **kwargs):
        torch.set_flush_denormal(True)
        return fn(*args, **kwargs)
    return compiled


def test_the_fused_norms_leave_subnormals_on(monkeypatch):
    flipping = {fn: _flipping(fn) for fn in (fused._norm_then_relu, fused._relu_then_norm)}
    monkeypatch.setattr(fused, "_compiled", flipping)
    h = torch.randn(2, 3, 4, 5, dtype=torch.float64)
    out = fused.norm_relu(h)
    assert not flushes_subnormals() and not flushes_subnormals(parallel=True)
    torch.testing.assert_close(out, fused._norm_then_relu(h, 1e-5), rtol=0, atol=0)


class _FlipInBackward(torch.autograd.Function):
    """The identity, whose backward turns flush-to-zero on (as torch 2.4's compiled backward, whose
    kernels load when it first runs)."""

    @staticmethod
    def forward(ctx, x):
        return x.clone()

    @staticmethod
    def backward(ctx, grad):
        torch.set_flush_denormal(True)
        return grad


def test_a_backward_through_the_fused_norms_leaves_subnormals_on(monkeypatch):
    flipping = {fn: (lambda fn: lambda h, eps: fn(_FlipInBackward.apply(h), eps))(fn)
                for fn in (fused._norm_then_relu, fused._relu_then_norm)}
    monkeypatch.setattr(fused, "_compiled", flipping)
    h = torch.randn(2, 3, 4, 5, dtype=torch.float64, requires_grad=True)
    (got,) = torch.autograd.grad(fused.relu_norm(h).square().sum(), h)
    assert not flushes_subnormals() and not flushes_subnormals(parallel=True)
    hp = h.detach().requires_grad_(True)
    (want,) = torch.autograd.grad(fused._relu_then_norm(hp, 1e-5).square().sum(), hp)
    torch.testing.assert_close(got, want, rtol=0, atol=0)


def test_the_benchmarks_compiled_step_leaves_subnormals_on(monkeypatch):
    monkeypatch.setattr(torch, "compile", lambda fn, **options: _flipping(fn))

    class Step:
        def __call__(self, x):
            return x * 2.0

    call = graphed._compiled(Step(), {"backend": "eager"})
    assert call(torch.tensor(3.0)) == 6.0
    assert not flushes_subnormals() and not flushes_subnormals(parallel=True)


def test_torchs_threads_start_before_the_first_call_that_may_compile(monkeypatch):
    """Threads started while the flag is on inherit it, and set_flush_denormal(False) reaches only the
    calling thread: the pool is started first."""
    monkeypatch.setattr(_subnormals, "_pool_started", False)
    checks = []
    real = _subnormals.flushes_subnormals
    monkeypatch.setattr(_subnormals, "flushes_subnormals",
                        lambda parallel=False: checks.append(parallel) or real(parallel))
    with keep_subnormals():
        assert checks[0] is True and _subnormals._pool_started
