"""The engine's straight-ray kernels (``latentinv.inversion.native``, ``cpp/engine_kernels.cpp``): bit for
bit what torch computes, on generated inputs, and the engine's results unchanged by a bit with them.

The CSR product's order is the matrix's entry order, each sum from zero without fused multiply-adds: it
is checked against an independent NumPy sum in that order, and against torch's own CSR product (MKL)
where that product rounds so (on the machine that wrote the engine's golden record it does; MKL may
fuse multiply-adds on other CPUs, and then only the first check runs).
"""
import sys
from pathlib import Path

import numpy as np
import pytest
import scipy.sparse as sp
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from latentinv.inversion import native
from latentinv.inversion.equations import paper_slowness
from latentinv.inversion.traveltimes import KernelRows

pytestmark = pytest.mark.skipif(not native.available(), reason="the compiled core is not built")
core = native.decoder_native.core


def _bits(a):
    """The float32 bits, every NaN as the one canonical NaN (x86 makes NaNs of either sign, and
    negations flip it: a NaN's sign changes no other result)."""
    a = np.array(a.detach().numpy() if isinstance(a, torch.Tensor) else a, dtype=np.float32)
    a[np.isnan(a)] = np.nan
    return a.view(np.uint32)


def assert_bits_equal(got, want):
    np.testing.assert_array_equal(_bits(got), _bits(want))


special = st.sampled_from([0.0, 1.0, -0.0, 4.0, 3.9999998, 5.0, -3.0, 1e-40, -1e-40, 1e30, np.inf, -np.inf])
values = st.one_of(st.floats(-0.5, 1.5, width=32), special)


# ---- the slowness map -------------------------------------------------------------------------------
@settings(max_examples=60, deadline=None)
@given(data=st.data(), rows=st.integers(1, 5), cols=st.integers(1, 70), threads=st.integers(1, 3))
def test_paper_slowness_is_torchs_bit_for_bit(data, rows, cols, threads):
    x = torch.tensor(data.draw(st.lists(values, min_size=rows * cols, max_size=rows * cols)),
                     dtype=torch.float32).reshape(rows, cols)
    g = torch.tensor(data.draw(st.lists(st.floats(-1e3, 1e3, width=32), min_size=rows * cols,
                                        max_size=rows * cols)), dtype=torch.float32).reshape(rows, cols)
    torch.set_num_threads(threads)
    try:
        xk, xt = x.clone().requires_grad_(True), x.clone().requires_grad_(True)
        sk, st_ = native.slowness(paper_slowness, xk), paper_slowness(xt)
        assert sk.grad_fn is not None and type(sk.grad_fn).__name__ == "_PaperSlownessBackward"
        assert_bits_equal(sk, st_)
        (gk,) = torch.autograd.grad(sk, xk, g)
        (gt,) = torch.autograd.grad(st_, xt, g)
        assert_bits_equal(gk, gt)
    finally:
        torch.set_num_threads(2)


def test_paper_slowness_second_derivative_and_other_maps():
    x = torch.rand(3, 9, dtype=torch.float32, generator=torch.Generator().manual_seed(0))
    xk, xt = x.clone().requires_grad_(True), x.clone().requires_grad_(True)
    (gk,) = torch.autograd.grad(native.slowness(paper_slowness, xk).pow(2).sum(), xk, create_graph=True)
    (gt,) = torch.autograd.grad(paper_slowness(xt).pow(2).sum(), xt, create_graph=True)
    (hk,) = torch.autograd.grad(gk.sum(), xk)
    (ht,) = torch.autograd.grad(gt.sum(), xt)
    torch.testing.assert_close(hk, ht, rtol=1e-6, atol=0)
    # a user's map, float64 and 1-D inputs: torch as given
    def double(v):
        return 2 * v
    assert native.slowness(double, x).grad_fn is None and torch.equal(native.slowness(double, x), 2 * x)
    assert native.slowness(paper_slowness, x.double()).dtype == torch.float64
    assert torch.equal(native.slowness(paper_slowness, x[0]), paper_slowness(x[0]))


# ---- the kernel's rows and the full product ------------------------------------------------------------
def _random_kernel(rng, n_rays, n_cells, max_width):
    rows, cols, vals = [], [], []
    for i in range(n_rays):
        k = int(rng.integers(0, max_width + 1))                  # empty rows too
        cells = np.sort(rng.choice(n_cells, size=min(k, n_cells), replace=False))
        rows += [i] * len(cells)
        cols += list(cells)
        vals += list(rng.uniform(0.0, 0.2, len(cells)))
    return sp.csr_matrix((vals, (rows, cols)), shape=(n_rays, n_cells))


def _torch_rows(kr, s, rays):
    R, B = rays.shape
    idx = kr.index[rays]
    gathered = torch.gather(s, 1, idx.reshape(R, -1)).reshape(idx.shape)
    return (gathered * kr.value[rays]).sum(-1)


@settings(max_examples=40, deadline=None)
@given(seed=st.integers(0, 2**31 - 1), n_rays=st.integers(1, 30), n_cells=st.integers(1, 60),
       max_width=st.integers(1, 25), n_rows=st.integers(1, 7), batch=st.integers(1, 12), threads=st.integers(1, 3))
def test_kernel_rows_are_torchs_bit_for_bit(seed, n_rays, n_cells, max_width, n_rows, batch, threads):
    rng = np.random.default_rng(seed)
    kr = KernelRows(_random_kernel(rng, n_rays, n_cells, max_width), torch.device("cpu"), torch.float32)
    s = torch.tensor(rng.uniform(10, 17, (n_rows, n_cells)), dtype=torch.float32)
    rays = torch.tensor(rng.integers(0, n_rays, (n_rows, batch)))       # repeated rays and cells included
    g = torch.tensor(rng.standard_normal((n_rows, batch)), dtype=torch.float32)
    torch.set_num_threads(threads)
    try:
        sk, st_ = s.clone().requires_grad_(True), s.clone().requires_grad_(True)
        tk, tt = kr.rows(sk, rays), _torch_rows(kr, st_, rays)
        assert_bits_equal(tk, tt)
        (gk,) = torch.autograd.grad(tk, sk, g)
        (gt,) = torch.autograd.grad(tt, st_, g)
        assert_bits_equal(gk, gt)
        # the full product: the entries' order, from zero, no fused multiply-add
        full = kr.full(s)
        csr = kr.matrix
        want = np.zeros((n_rows, n_rays), np.float32)
        ind, ptr, dat = csr.col_indices().numpy(), csr.crow_indices().numpy(), csr.values().numpy()
        s_np = s.numpy()
        for i in range(n_rays):
            acc = np.zeros(n_rows, np.float32)
            for p in range(ptr[i], ptr[i + 1]):
                acc = acc + dat[p] * s_np[:, ind[p]]
            want[:, i] = acc
        assert full.shape == (n_rows, n_rays)
        assert_bits_equal(full, want)
    finally:
        torch.set_num_threads(2)


def test_kernel_full_matches_torchs_csr_product_where_it_sums_in_order():
    from latentinv.geometry import CrossholeSurvey, Grid2D
    from latentinv.operators import StraightRayOperator
    op = StraightRayOperator(Grid2D.paper(), CrossholeSurvey.paper(0.01, 6.49))
    kr = KernelRows(op.jacobian(np.ones(op.n_params)), torch.device("cpu"), torch.float32)
    s = torch.rand(37, op.n_params, generator=torch.Generator().manual_seed(1)) * 4 + 12
    torchs = (kr.matrix @ s.T.contiguous()).T
    got = kr.full(s)
    sequential = np.zeros((625, 37), np.float32)
    st_np = s.T.contiguous().numpy()
    ptr, ind, dat = kr.matrix.crow_indices().numpy(), kr.matrix.col_indices().numpy(), kr.matrix.values().numpy()
    for i in range(625):
        acc = np.zeros(37, np.float32)
        for p in range(ptr[i], ptr[i + 1]):
            acc = acc + dat[p] * st_np[ind[p]]
        sequential[i] = acc
    assert_bits_equal(got, sequential.T)
    if not np.array_equal(_bits(torchs), _bits(sequential.T)):
        pytest.skip("torch's CSR product (MKL) rounds otherwise on this CPU (fused multiply-adds or another "
                    "order); the kernel keeps the entries' order")
    assert_bits_equal(got, torchs)


def test_engine_kernels_reject_bad_arguments():
    s = np.ones((2, 5), np.float32)
    index = np.zeros((3, 4), np.int64)
    value = np.ones((3, 4), np.float32)
    rays = np.zeros((2, 2), np.int64)
    out = np.empty((2, 2, 4), np.float32)
    core.engine_kernel_rows(s, index, value, rays, out, 1)
    with pytest.raises(ValueError, match="rays holds 3, outside \\[0, 3\\)"):
        core.engine_kernel_rows(s, index, value, rays + 3, out, 1)
    with pytest.raises(ValueError, match="index holds -1"):
        core.engine_kernel_rows(s, index - 1, value, rays, out, 1)
    with pytest.raises(ValueError, match="s must be float32, got float64"):
        core.engine_kernel_rows(s.astype(np.float64), index, value, rays, out, 1)
    with pytest.raises(ValueError, match="index must be int64, got int32"):
        core.engine_kernel_rows(s, index.astype(np.int32), value, rays, out, 1)
    with pytest.raises(ValueError, match="out must have shape \\(2, 2, 4\\), got \\(2, 2, 3\\)"):
        core.engine_kernel_rows(s, index, value, rays, out[:, :, :3].copy(), 1)
    with pytest.raises(ValueError, match="n_threads must be >= 1, got 0"):
        core.engine_kernel_rows(s, index, value, rays, out, 0)
    gs = np.empty((2, 5), np.float32)
    with pytest.raises(ValueError, match="g must have shape \\(2, 2\\)"):
        core.engine_kernel_rows_backward(np.ones((2, 3), np.float32), index, value, rays, gs, 1)
    with pytest.raises(ValueError, match="s must be writeable"):
        x = np.ones(4, np.float32)
        ro = np.empty(4, np.float32)
        ro.flags.writeable = False
        core.engine_paper_slowness(x, ro, 1)
    indptr, indices, data = np.array([0, 1, 2], np.int64), np.array([0, 4], np.int64), np.ones(2, np.float32)
    out_t = np.empty((2, 2), np.float32)
    core.engine_kernel_full(indptr, indices, data, s, out_t, 1)
    np.testing.assert_array_equal(out_t, np.ones((2, 2)))
    with pytest.raises(ValueError, match="indices holds 5, outside \\[0, 5\\)"):
        core.engine_kernel_full(indptr, indices + 1, data, s, out_t, 1)
    with pytest.raises(ValueError, match="indptr must run from 0 to len\\(indices\\)"):
        core.engine_kernel_full(np.array([0, 1, 3], np.int64), indices, data, s, out_t, 1)
    with pytest.raises(ValueError, match="indptr must not decrease"):
        core.engine_kernel_full(np.array([0, 2, 1, 2], np.int64), indices, data, s, np.empty((3, 2), np.float32), 1)


# ---- the engine with and without them ---------------------------------------------------------------------
#: The result's arrays computed from the full-data product (each start's misfit at every iteration): the
#: only ones that torch's CSR product can round otherwise than the kernel (the step never uses it), and the
#: stationarity check's line search (its trial points are scored by that product).
FULL_DATA_MISFITS = {"data_rmse", "chi2", "data_rmse_history", "chi2_history", "descent_rmse"}


def _csr_product_probe():
    """``(bits equal, max |difference|)`` of torch's CSR product (MKL) against the kernel's sum in the
    entries' order, on the golden cases' kernel (12 x 8 cells, 36 rays) for 12 slowness rows of the
    paper's range, as the engine runs it."""
    sys.path.insert(0, str(Path(__file__).with_name("golden")))
    import cases
    op = cases._straight()
    kr = KernelRows(op.jacobian(np.ones(op.n_params)), torch.device("cpu"), torch.float32)
    s = torch.rand(12, op.n_params, generator=torch.Generator().manual_seed(2)) * 4.2 + 12.5
    torchs = (kr.matrix @ s.T.contiguous()).T
    got = kr.full(s)
    return bool(np.array_equal(_bits(torchs), _bits(got))), float((torchs - got).abs().max())


@pytest.mark.parametrize("case", ["sgd_ring", "sgd_noise_target", "adam_uniform_normal_clip"])
def test_engine_results_are_unchanged_by_the_kernels(case, monkeypatch):
    """Bit for bit where torch's CSR product sums as the kernel does (as on the machine that wrote the
    golden record). Elsewhere (MKL may fuse multiply-adds or sum in another order) the full-data
    misfits differ by float32 round-off, and everything else (the steps, the selected models, the
    stops) stays bit for bit: the trajectories never see the full-data product."""
    sys.path.insert(0, str(Path(__file__).with_name("golden")))
    import cases
    in_order, max_diff = _csr_product_probe()
    calls = []
    monkeypatch.setattr(native.decoder_native, "core", _Spy(core, calls))
    with_kernels = cases.result_arrays(cases.CASES[case]())
    assert {"engine_paper_slowness", "engine_paper_slowness_backward", "engine_kernel_rows",
            "engine_kernel_rows_backward", "engine_kernel_full"} <= set(calls)
    monkeypatch.setattr(native, "available", lambda: False)
    calls.clear()
    without = cases.result_arrays(cases.CASES[case]())
    assert not calls
    assert with_kernels.keys() == without.keys()
    for key in with_kernels:
        if in_order or key not in FULL_DATA_MISFITS:
            np.testing.assert_array_equal(with_kernels[key], without[key], err_msg=key)
        else:
            # a traveltime sums 8 to 17 float32 terms of up to 2.4 ns: another order or fused multiply-adds
            # move it by a few ulps (~1e-6 ns), and an RMSE or chi-square of residuals relatively by about
            # as much (seen: 1.1e-6); the record's float32 tolerance (test_engine_golden) holds it 20 times
            np.testing.assert_allclose(with_kernels[key], without[key], rtol=2e-5, atol=1e-6, equal_nan=True,
                                       err_msg=f"{key} (torch's CSR product rounds otherwise on this CPU: up "
                                               f"to {max_diff:.1e} ns on the probe)")


class _Spy:
    """The compiled core, with the calls of its engine kernels recorded by name."""

    def __init__(self, inner, calls):
        self._inner, self._calls = inner, calls

    def __getattr__(self, attr):
        value = getattr(self._inner, attr)
        if not attr.startswith("engine_"):
            return value

        def spy(*args, **kwargs):
            self._calls.append(attr)
            return value(*args, **kwargs)
        return spy
