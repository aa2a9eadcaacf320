"""The compiled core's kernels of the frozen decoder (``cpp/decoder_kernel.hpp``, ``latentinv.nn.native``).

Each kernel is checked, on every instruction set this machine runs, against torch's own ops in float64
(an independent implementation), the transposed convolution also against its adjoint (an identity that
needs no reference); the decoder's native path against its modules, values, gradients and second
derivatives; and every argument error.
"""
import copy

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st

from latentinv._backend import core
from latentinv.nn import ConvDecoder, native

pytestmark = pytest.mark.skipif(not native.available(), reason="the compiled core is not built")


def _isas():
    out = []
    for isa in ("avx512", "avx2", "portable"):
        try:
            core.decoder_isa(isa)
        except ValueError:
            continue
        out.append(isa)
    return out


ISAS = _isas() if native.available() else []
RNG = np.random.default_rng(0)


def _f32(*shape, rng=RNG):
    return rng.standard_normal(shape).astype(np.float32)


def _norm_relu_reference(x_nhwc, eps):
    x = torch.from_numpy(x_nhwc).double().permute(0, 3, 1, 2)
    return F.group_norm(x, x.shape[1], eps=eps).relu().permute(0, 2, 3, 1).numpy()


# -- instance norm + ReLU ----------------------------------------------------------------------------
@pytest.mark.parametrize("isa", ISAS)
@pytest.mark.parametrize("shape", [(3, 5, 7, 16), (2, 4, 3, 32), (2, 6, 2, 48), (1, 3, 3, 144)])
def test_norm_relu_forward_matches_torch(isa, shape):
    x = _f32(*shape) * 3 + 1
    y, mean, rstd = np.empty_like(x), np.empty(shape[::3], np.float32), np.empty(shape[::3], np.float32)
    core.decoder_norm_relu_forward(x, y, mean, rstd, 1e-5, 2, isa)
    np.testing.assert_allclose(y, _norm_relu_reference(x, 1e-5), rtol=0, atol=2e-5)
    xd = x.astype(np.float64)
    np.testing.assert_allclose(mean, xd.mean(axis=(1, 2)), rtol=0, atol=1e-5)
    np.testing.assert_allclose(rstd, 1 / np.sqrt(xd.var(axis=(1, 2)) + 1e-5), rtol=1e-5)


@pytest.mark.parametrize("isa", ISAS)
@pytest.mark.parametrize("shape", [(3, 5, 7, 16), (2, 4, 3, 32), (1, 3, 3, 144)])
def test_norm_relu_backward_matches_autograd(isa, shape):
    x, g = _f32(*shape), _f32(*shape)
    n, c = shape[0], shape[3]
    y, mean, rstd = np.empty_like(x), np.empty((n, c), np.float32), np.empty((n, c), np.float32)
    core.decoder_norm_relu_forward(x, y, mean, rstd, 1e-5, 1, isa)
    dx = np.empty_like(x)
    core.decoder_norm_relu_backward(x, g, mean, rstd, dx, 1, isa)
    xd = torch.from_numpy(x).double().requires_grad_(True)
    out = F.group_norm(xd.permute(0, 3, 1, 2), c, eps=1e-5).relu().permute(0, 2, 3, 1)
    (ref,) = torch.autograd.grad(out, xd, torch.from_numpy(g).double())
    np.testing.assert_allclose(dx, ref.numpy(), rtol=0, atol=5e-5 * float(ref.abs().max()))
    core.decoder_norm_relu_backward(x, g, mean, rstd, g, 1, isa)      # dx may be g itself
    np.testing.assert_array_equal(g, dx)


# -- the one-channel transposed convolution ----------------------------------------------------------
def _deconv1(x_nhwc, w, out_shape, isa, n_threads=1):
    y = np.full((x_nhwc.shape[0],) + tuple(out_shape), np.nan, np.float32)
    core.decoder_deconv1_forward(x_nhwc, w, y, n_threads, isa)
    return y


def _deconv1_backward(g, w, in_hw, isa, n_threads=1):
    dx = np.full((g.shape[0],) + tuple(in_hw) + (w.shape[0],), np.nan, np.float32)
    core.decoder_deconv1_backward(g, w, dx, n_threads, isa)
    return dx


def _geometry(h, wd, k, oph, opw):
    return (2 * (h - 1) + k + oph, 2 * (wd - 1) + k + opw)


@pytest.mark.parametrize("isa", ISAS)
@pytest.mark.parametrize("h,wd,c,k,oph,opw", [
    (63, 31, 32, 5, 0, 0),      # the paper's last layer (129 x 65)
    (5, 4, 16, 5, 1, 0),        # output padding
    (3, 7, 16, 2, 0, 1),
    (4, 3, 48, 3, 1, 1),
    (2, 2, 16, 7, 0, 0),
    (6, 62, 16, 4, 0, 0),       # 126 columns: four vectors of 16 per phase row
    (3, 8, 16, 1, 0, 0),
])
def test_deconv1_matches_torch(isa, h, wd, c, k, oph, opw):
    n = 3
    x, w = _f32(n, h, wd, c), _f32(c, k, k)
    out = _geometry(h, wd, k, oph, opw)
    y = _deconv1(x, w, out, isa)
    xt = torch.from_numpy(x).double().permute(0, 3, 1, 2)
    wt = torch.from_numpy(w).double().reshape(c, 1, k, k)
    ref = F.conv_transpose2d(xt, wt, stride=2, output_padding=(oph, opw))[:, 0]
    assert ref.shape[1:] == out
    scale = float(ref.abs().max())
    np.testing.assert_allclose(y, ref.numpy(), rtol=0, atol=2e-6 * scale)
    g = _f32(n, *out)
    dx = _deconv1_backward(g, w, (h, wd), isa)
    ref_dx = F.conv2d(torch.from_numpy(g).double()[:, None], wt, stride=2)[:, :, :h, :wd]
    np.testing.assert_allclose(dx, ref_dx.permute(0, 2, 3, 1).numpy(), rtol=0,
                               atol=2e-6 * float(ref_dx.abs().max()))


@pytest.mark.parametrize("isa", ISAS)
@pytest.mark.parametrize("wd,k", [(16, 3), (16, 4), (32, 3), (32, 4), (48, 3), (48, 4)])
def test_deconv1_where_the_odd_phase_spills_into_a_block(isa, wd, k):
    # 34, 35, 66, 67, 98, 99 output columns: the odd phase has 16 j + 1 columns, one past a block of
    # 16, and as many blocks as the even phase (a block fewer only where it has at most 16 j)
    n, h, c = 2, 3, 16
    x, w = _f32(n, h, wd, c), _f32(c, k, k)
    out = _geometry(h, wd, k, 1, 1)
    assert (out[1] // 2) % 16 == 1
    y = _deconv1(x, w, out, isa)
    ref = F.conv_transpose2d(torch.from_numpy(x).double().permute(0, 3, 1, 2),
                             torch.from_numpy(w).double().reshape(c, 1, k, k), stride=2, output_padding=1)[:, 0]
    np.testing.assert_allclose(y, ref.numpy(), rtol=0, atol=2e-6 * float(ref.abs().max()))


@pytest.mark.parametrize("isa", ISAS)
@pytest.mark.parametrize("h,wd,c,k,opw", [(63, 31, 32, 5, 0), (4, 5, 16, 4, 1), (3, 2, 48, 3, 0)])
def test_norm_relu_deconv1_fused_matches_torch(isa, h, wd, c, k, opw):
    # the last block in one kernel each way: instance norm + ReLU, then the one-channel layer
    n = 2
    x, w = _f32(n, h, wd, c) * 2 + 0.5, _f32(c, k, k)
    out = _geometry(h, wd, k, 0, opw)
    y = np.full((n,) + out, np.nan, np.float32)
    mean, rstd = np.empty((n, c), np.float32), np.empty((n, c), np.float32)
    core.decoder_deconv1_forward(x, w, y, 2, isa, mean, rstd, 1e-5)
    xd = torch.from_numpy(x).double().permute(0, 3, 1, 2).requires_grad_(True)
    wt = torch.from_numpy(w).double().reshape(c, 1, k, k)
    ref = F.conv_transpose2d(F.group_norm(xd, c, eps=1e-5).relu(), wt, stride=2, output_padding=(0, opw))
    np.testing.assert_allclose(y, ref[:, 0].detach().numpy(), rtol=0, atol=1e-5 * float(ref.detach().abs().max()))
    np.testing.assert_allclose(mean, x.astype(np.float64).mean(axis=(1, 2)), rtol=0, atol=1e-5)
    g = _f32(n, *out)
    dx = np.full_like(x, np.nan)
    core.decoder_deconv1_backward(g, w, dx, 2, isa, x, mean, rstd)
    (ref_dx,) = torch.autograd.grad(ref[:, 0], xd, torch.from_numpy(g).double())
    ref_dx = ref_dx.permute(0, 2, 3, 1).numpy()
    np.testing.assert_allclose(dx, ref_dx, rtol=0, atol=1e-4 * float(np.abs(ref_dx).max()))


@settings(max_examples=40, deadline=None)
@given(h=st.integers(1, 9), wd=st.integers(1, 40), cv=st.integers(1, 3), k=st.integers(1, 8),
       oph=st.integers(0, 1), opw=st.integers(0, 1), isa=st.sampled_from(ISAS or ["auto"]),
       seed=st.integers(0, 2**31 - 1))
def test_deconv1_backward_is_the_adjoint_of_forward(h, wd, cv, k, oph, opw, isa, seed):
    # <deconv(x), g> == <x, deconv_backward(g)>: an identity that holds for any correct pair
    rng = np.random.default_rng(seed)
    c = 16 * cv
    out = _geometry(h, wd, k, oph, opw)
    x, w, g = _f32(2, h, wd, c, rng=rng), _f32(c, k, k, rng=rng), _f32(2, *out, rng=rng)
    y = _deconv1(x, w, out, isa)
    dx = _deconv1_backward(g, w, (h, wd), isa)
    lhs = float((y.astype(np.float64) * g).sum())
    rhs = float((x.astype(np.float64) * dx).sum())
    # float32 sums round with the size of their terms, not of their result (which may cancel): the
    # scale is the sum of |terms|, the same products on |x|, |w|, |g|
    scale = float((_deconv1(np.abs(x), np.abs(w), out, isa).astype(np.float64) * np.abs(g)).sum()) + 1e-30
    assert abs(lhs - rhs) <= 1e-6 * scale
    assert np.isfinite(y).all() and np.isfinite(dx).all()      # every output element written


def test_threads_do_not_change_the_results():
    x, w = _f32(7, 9, 6, 32), _f32(32, 5, 5)
    out = _geometry(9, 6, 5, 0, 0)
    one = _deconv1(x, w, out, "auto", 1)
    for t in (2, 3, 16):
        np.testing.assert_array_equal(_deconv1(x, w, out, "auto", t), one)
    y1, m1, r1 = np.empty_like(x), np.empty((7, 32), np.float32), np.empty((7, 32), np.float32)
    core.decoder_norm_relu_forward(x, y1, m1, r1, 1e-5, 1)
    y3, m3, r3 = np.empty_like(x), np.empty((7, 32), np.float32), np.empty((7, 32), np.float32)
    core.decoder_norm_relu_forward(x, y3, m3, r3, 1e-5, 3)
    np.testing.assert_array_equal(y1, y3)


def test_denormal_gradients_are_flushed_not_slow():
    # gradients through a saturated sigmoid are denormal: the kernels flush them to zero (as oneDNN does)
    x, w = _f32(2, 4, 4, 16), _f32(16, 3, 3)
    out = _geometry(4, 4, 3, 0, 0)
    g = np.full((2,) + out, 1e-42, np.float32)
    assert g[0, 0, 0] != 0                                   # a denormal float32
    dx = _deconv1_backward(g, w, (4, 4), "auto")
    assert np.all(dx == 0)
    assert np.isfinite(_deconv1(x, w, out, "auto")).all()


# -- argument errors ---------------------------------------------------------------------------------
def test_bad_arguments_raise_clear_errors():
    x, w = _f32(2, 4, 4, 16), _f32(16, 3, 3)
    y = np.empty((2, 9, 9), np.float32)
    with pytest.raises(ValueError, match="x must be float32, got float64"):
        core.decoder_deconv1_forward(x.astype(np.float64), w, y, 1)
    with pytest.raises(ValueError, match="w must have shape \\(16, 3, 3\\), got \\(16, 3, 4\\)"):
        core.decoder_deconv1_forward(x, _f32(16, 3, 4), y, 1)
    with pytest.raises(ValueError, match="oh >= 2 \\(h - 1\\) \\+ k"):
        core.decoder_deconv1_forward(x, w, np.empty((2, 8, 9), np.float32), 1)
    with pytest.raises(ValueError, match="C-contiguous"):
        core.decoder_deconv1_forward(np.asfortranarray(x), w, y, 1)
    y_ro = np.empty((2, 9, 9), np.float32)
    y_ro.flags.writeable = False
    with pytest.raises(ValueError, match="y must be writeable"):
        core.decoder_deconv1_forward(x, w, y_ro, 1)
    with pytest.raises(ValueError, match="n_threads must be >= 1, got 0"):
        core.decoder_deconv1_forward(x, w, y, 0)
    with pytest.raises(ValueError, match="ow <= 128"):
        core.decoder_deconv1_forward(_f32(1, 2, 70, 16), w, np.empty((1, 5, 141), np.float32), 1)
    with pytest.raises(ValueError, match="isa must be"):
        core.decoder_deconv1_forward(x, w, y, 1, "sse9")
    with pytest.raises(ValueError, match="multiple of 16, got 24"):
        core.decoder_norm_relu_forward(_f32(1, 2, 2, 24), _f32(1, 2, 2, 24), _f32(1, 24), _f32(1, 24), 1e-5, 1)
    with pytest.raises(ValueError, match="mean must have shape \\(2, 16\\), got \\(16,\\)"):
        core.decoder_norm_relu_forward(x, np.empty_like(x), _f32(16), _f32(2, 16), 1e-5, 1)
    with pytest.raises(ValueError, match="dx must have shape \\(2, 4, 4, 16\\)"):
        core.decoder_deconv1_backward(np.empty((2, 9, 9), np.float32), w, _f32(2, 4, 4, 32), 1)
    with pytest.raises(ValueError, match="multiple of 16, got 8"):
        core.decoder_deconv1_backward(np.empty((2, 9, 9), np.float32), _f32(8, 3, 3), _f32(2, 4, 4, 8), 1)
    with pytest.raises(ValueError, match="mean and rstd must be given together"):
        core.decoder_deconv1_forward(x, w, y, 1, "auto", np.empty((2, 16), np.float32))
    with pytest.raises(ValueError, match="rstd must have shape \\(2, 16\\), got \\(2, 15\\)"):
        core.decoder_deconv1_forward(x, w, y, 1, "auto", np.empty((2, 16), np.float32),
                                     np.empty((2, 15), np.float32))
    with pytest.raises(ValueError, match="x, mean and rstd must be given together"):
        core.decoder_deconv1_backward(np.empty((2, 9, 9), np.float32), w, _f32(2, 4, 4, 16), 1, "auto", x)
    taps = _f32(2, 3, 2, 4, 4, 8)
    with pytest.raises(ValueError, match="taps must be \\(n, h, w, kh, kw, c\\)"):
        core.decoder_col2im(_f32(2, 3, 2, 4, 8), _f32(2, 8, 6, 8), [2, 2], [0, 0], 1)
    with pytest.raises(ValueError, match="y must have shape \\(2, 8, 6, 8\\), got \\(2, 8, 6, 4\\)"):
        core.decoder_col2im(taps, _f32(2, 8, 6, 4), [2, 2], [0, 0], 1)
    with pytest.raises(ValueError, match="stride must be >= 1 and padding >= 0"):
        core.decoder_col2im(taps, _f32(2, 8, 6, 8), [0, 2], [0, 0], 1)
    with pytest.raises(ValueError, match="stride must be >= 1 and padding >= 0"):
        core.decoder_col2im(taps, _f32(2, 8, 6, 8), [2, 2], [0, -1], 1)


# -- the decoder's native path -----------------------------------------------------------------------
def _decoders(image_shape, channels, kernel_sizes, seed=5):
    torch.manual_seed(seed)
    dec = ConvDecoder(image_shape, 6, channels, kernel_sizes, hidden_size=32).eval().requires_grad_(False)
    modules = copy.deepcopy(dec)
    modules.fast_frozen_path = False
    group_norm = copy.deepcopy(dec)
    group_norm.native_cpu_kernels = False
    return dec, modules, group_norm


def _count_core_calls(monkeypatch):
    calls = []
    for name in ("decoder_norm_relu_forward", "decoder_deconv1_forward", "decoder_col2im"):
        real = getattr(core, name)
        monkeypatch.setattr(native.core, name, lambda *a, _r=real, _n=name: calls.append(_n) or _r(*a))
    return calls


@pytest.mark.parametrize("image_shape,channels,kernel_sizes", [
    ((33, 17), (16, 32, 32, 48), (5, 5, 4, 4)),   # the paper's kernels on a smaller image
    ((129, 65), (16, 32, 64, 128), (5, 5, 4, 4)),  # the shipped prior's network
    ((21, 14), (16, 16, 32), (4, 3, 3)),          # output padding, an even last kernel
])
def test_native_decoder_equals_the_modules(monkeypatch, image_shape, channels, kernel_sizes):
    dec, modules, group_norm = _decoders(image_shape, channels, kernel_sizes)
    calls = _count_core_calls(monkeypatch)
    z = torch.randn(5, 6, generator=torch.Generator().manual_seed(1)) * 2
    zn, zm = z.clone().requires_grad_(True), z.clone().requires_grad_(True)
    xn, xm = dec(zn), modules(zm)
    # one norm kernel per hidden block but the last, whose norm runs inside the last layer's kernel
    assert calls.count("decoder_deconv1_forward") == 1
    assert calls.count("decoder_norm_relu_forward") == len(channels) - 2
    # the GEMM form for the hidden layers whose input has at most 16 pixels (each net has one or two)
    inputs = []
    hooks = [m.register_forward_hook(lambda m, a, out: inputs.append(a[0].shape[2:].numel()))
             for m in list(modules.deconv)[:-2] if isinstance(m, torch.nn.ConvTranspose2d)]
    with torch.no_grad():
        modules(z)
    for h in hooks:
        h.remove()
    small = sum(p <= native.GEMM_FORM_MAX_PIXELS for p in inputs)
    assert small >= 1
    assert calls.count("decoder_col2im") == small
    torch.testing.assert_close(xn, xm, rtol=1e-5, atol=2e-6)
    g = torch.randn(xn.shape, generator=torch.Generator().manual_seed(2))
    (gn,) = torch.autograd.grad(xn, zn, g)
    (gm,) = torch.autograd.grad(xm, zm, g)
    ref = copy.deepcopy(modules).double()
    zd = z.double().requires_grad_(True)
    xd = ref(zd)
    (gd,) = torch.autograd.grad(xd, zd, g.double())
    assert float((xn.detach().double() - xd.detach()).abs().max()) <= 2e-6
    # the native path is at least as close to float64 as the modules are (and within round-off)
    err_native = float((gn.double() - gd).abs().max())
    err_modules = float((gm.double() - gd).abs().max())
    assert err_native <= max(2 * err_modules, 1e-5 * float(gd.abs().max()))
    with torch.no_grad():
        torch.testing.assert_close(dec(z), xn.detach(), rtol=0, atol=0)
        torch.testing.assert_close(dec(z), group_norm(z), rtol=1e-5, atol=2e-6)


@settings(max_examples=40, deadline=None)
@given(cin=st.integers(1, 24), cout=st.integers(1, 12), k=st.integers(1, 5), stride=st.integers(1, 3),
       h=st.integers(1, 4), w=st.integers(1, 4), n=st.integers(0, 3), data=st.data())
def test_deconv_gemm_form_matches_torch(cin, cout, k, stride, h, w, n, data):
    padding = data.draw(st.integers(0, k - 1))
    output_padding = data.draw(st.integers(0, stride - 1))
    if (h - 1) * stride - 2 * padding + k + output_padding <= 0 or (w - 1) * stride - 2 * padding + k + output_padding <= 0:
        return
    seed = data.draw(st.integers(0, 2**31 - 1))
    torch.manual_seed(seed)
    conv = torch.nn.ConvTranspose2d(cin, cout, k, stride=stride, padding=padding, output_padding=output_padding,
                                    bias=False).requires_grad_(False)
    x = torch.randn(n, cin, h, w).contiguous(memory_format=torch.channels_last)
    xd = x.double().requires_grad_(True)
    want = F.conv_transpose2d(xd, conv.weight.double(), None, stride, padding, output_padding)
    xg = x.clone().requires_grad_(True)
    got = native._DeconvByGEMM.apply(xg, conv, native._taps_weight(conv))
    assert got.shape == want.shape
    if n:
        assert float((got.double() - want).abs().max()) <= 1e-5 * max(float(want.abs().max()), 1.0)
        g = torch.randn(want.shape)
        (gx,) = torch.autograd.grad(got, xg, g)
        (gd,) = torch.autograd.grad(want, xd, g.double())
        assert float((gx.double() - gd).abs().max()) <= 1e-5 * max(float(gd.abs().max()), 1.0)


@pytest.mark.parametrize("kernel, stride, padding, output_padding", [
    ((3, 4), (2, 3), (1, 0), (1, 2)),
    ((2, 5), (1, 2), (0, 2), (0, 1)),
    ((4, 1), (3, 1), (2, 0), (0, 0)),
])
def test_deconv_gemm_form_with_unequal_sides(kernel, stride, padding, output_padding):
    # the taps are added into the output with each axis's own stride and padding (col2im)
    torch.manual_seed(0)
    conv = torch.nn.ConvTranspose2d(5, 3, kernel, stride=stride, padding=padding, output_padding=output_padding,
                                    bias=False).requires_grad_(False)
    x = torch.randn(2, 5, 4, 3).contiguous(memory_format=torch.channels_last)
    want = F.conv_transpose2d(x.double(), conv.weight.double(), None, stride, padding, output_padding)
    got = native._DeconvByGEMM.apply(x, conv, native._taps_weight(conv))
    assert got.shape == want.shape
    assert float((got.double() - want).abs().max()) <= 1e-5 * float(want.abs().max())


def test_native_decoder_second_derivatives():
    dec, modules, _ = _decoders((33, 17), (16, 32, 32, 48), (5, 5, 4, 4))
    z = torch.randn(3, 6, generator=torch.Generator().manual_seed(3))
    v = torch.randn_like(z)

    def hvp(d, z, v):
        zz = z.clone().requires_grad_(True)
        (g,) = torch.autograd.grad(d(zz).pow(3).sum(), zz, create_graph=True)
        (h,) = torch.autograd.grad((g * v).sum(), zz)
        return h

    # against float64: a float32 Hessian-vector product through ReLUs and norms is accurate to a few
    # 1e-5 of its scale on any path (the modules' own error varies 1e-6 to 4e-6 of it over seeds)
    want = hvp(copy.deepcopy(modules).double(), z.double(), v.double())
    got = hvp(dec, z, v).double()
    assert float((got - want).abs().max()) <= 1e-4 * float(want.abs().max())


def test_native_path_taken_only_where_it_applies(monkeypatch):
    calls = _count_core_calls(monkeypatch)
    z = torch.randn(2, 6)
    dec, _, _ = _decoders((33, 17), (4, 8, 8, 16), (5, 5, 4, 4))        # 8 channels: torch's path
    dec(z)
    assert calls == []
    dec, modules, _ = _decoders((9, 140), (16, 16), (3, 3))            # 140 columns: torch's path
    torch.testing.assert_close(dec(z), modules(z), rtol=1e-5, atol=1e-6)
    assert calls == []
    dec, modules, _ = _decoders((33, 17), (16, 32, 32, 48), (5, 5, 4, 4))
    dec.requires_grad_(True)
    modules.requires_grad_(True)
    assert torch.equal(dec(z), modules(z))                              # training: the modules
    assert calls == []
    dec.requires_grad_(False)(z)
    assert calls.count("decoder_deconv1_forward") == 1
    with torch.autocast("cpu", dtype=torch.float16):                   # float16 autocast: the modules
        dec(z)
    assert calls.count("decoder_deconv1_forward") == 1


def test_native_decoder_under_bfloat16_autocast():
    # the transposed convolutions in bfloat16 (as autocast runs them), norms and last layer in float32
    dec, modules, _ = _decoders((33, 17), (16, 32, 32, 48), (5, 5, 4, 4))
    modules.requires_grad_(False)
    z = torch.randn(6, 6, generator=torch.Generator().manual_seed(8))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        xb, xm = dec(z), modules(z)
    x32 = dec(z)
    assert xb.dtype == torch.float32
    err_native, err_modules = float((xb - x32).abs().max()), float((xm.float() - x32).abs().max())
    assert 0 < err_native <= max(2 * err_modules, 1e-3)                  # bfloat16 rounding, no worse
    def grad(d, bfloat16):
        zz = z.clone().requires_grad_(True)
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bfloat16):
            y = d(zz)
        return torch.autograd.grad(y.float().sum(), zz)[0]

    g32 = grad(dec, False)
    # this random network's gradients are ill-conditioned in bfloat16 (about 25 % off for the modules
    # too): the native path's error is bfloat16's, no worse than the modules'
    err_native = float((grad(dec, True) - g32).abs().max())
    err_modules = float((grad(modules, True) - g32).abs().max())
    assert 0 < err_native <= 1.5 * err_modules + 1e-3 * float(g32.abs().max())


def test_weights_written_in_place_are_seen(monkeypatch):
    dec, modules, _ = _decoders((33, 17), (16, 32, 32, 48), (5, 5, 4, 4))
    z = torch.randn(4, 6, generator=torch.Generator().manual_seed(4))
    before = dec(z)
    with torch.no_grad():
        for d in (dec, modules):
            d.deconv[0].weight.mul_(1.5)     # the channels-last copy of this weight must be refreshed
    after = dec(z)
    assert not torch.allclose(before, after)
    torch.testing.assert_close(after, modules(z), rtol=1e-5, atol=2e-6)


def test_without_the_core_the_decoder_takes_torch_paths(monkeypatch):
    dec, modules, group_norm = _decoders((33, 17), (16, 32, 32, 48), (5, 5, 4, 4))
    z = torch.randn(3, 6, generator=torch.Generator().manual_seed(6))
    monkeypatch.setattr(native, "core", None)          # as with LATENTINV_PUREPYTHON=1 or no compiler
    assert not native.available() and native.isa() is None
    assert native.frozen_deconv(dec.deconv, torch.randn(3, 48, 3, 1)) is None
    torch.testing.assert_close(dec(z), group_norm(z), rtol=0, atol=0)   # the group-norm path, same bits
    torch.testing.assert_close(dec(z), modules(z), rtol=1e-5, atol=2e-6)


def test_torch_openmp_pool_and_own_threads_give_the_same_bits():
    name = native.openmp_runtime()
    if name is None:
        pytest.skip("no OpenMP runtime of torch's found in this process")
    x, w = _f32(9, 12, 7, 32), _f32(32, 5, 5)
    out = _geometry(12, 7, 5, 0, 0)
    on_pool = _deconv1(x, w, out, "auto", 2)
    try:
        core.decoder_set_openmp_runtime(0, 0)           # threads of the kernels' own
        own = _deconv1(x, w, out, "auto", 2)
    finally:
        native._RUNTIME.update(checked=False, name=None)
        assert native.openmp_runtime() == name
    np.testing.assert_array_equal(on_pool, own)
    with pytest.raises(ValueError, match="both OpenMP entry points, or neither"):
        core.decoder_set_openmp_runtime(1, 0)


@pytest.mark.parametrize("native_kernels", [True, False])
def test_decoder_takes_empty_and_single_batches(native_kernels):
    dec, modules, _ = _decoders((33, 17), (16, 32, 32, 48), (5, 5, 4, 4))
    dec.native_cpu_kernels = native_kernels
    for n in (0, 1):
        z = torch.randn(n, 6, requires_grad=True)
        x = dec(z)
        assert x.shape == (n, 33 * 17)
        torch.testing.assert_close(x, modules(z), rtol=1e-5, atol=2e-6)
        assert torch.autograd.grad(x.sum(), z)[0].shape == (n, 6)


def test_native_decoder_from_concurrent_python_threads():
    import threading
    dec, _, _ = _decoders((33, 17), (16, 32, 32, 48), (5, 5, 4, 4))
    z = torch.randn(16, 6, generator=torch.Generator().manual_seed(9))
    expected = dec(z)
    results = []

    def work():
        for _ in range(4):
            results.append(dec(z))

    threads = [threading.Thread(target=work) for _ in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(results) == 12 and all(torch.equal(r, expected) for r in results)
