"""The compiled instance norms (latentinv.nn.fused) and the decoders' switches that use them.

On the CPU torch.compile generates C++ kernels; on CUDA, Triton ones (the CUDA graph test is in
test_graphed.py). Every answer is compared with the modules run in float64.
"""
import copy

import pytest
import torch
import torch.nn.functional as F

from latentinv.nn import ConvDecoder, fused
from latentinv.nn.sgan import SpatialGenerator


def _reference(h, relu_first, eps=1e-5):
    h = h.double()
    return F.instance_norm(F.relu(h), eps=eps) if relu_first else F.relu(F.instance_norm(h, eps=eps))


@pytest.mark.parametrize("relu_first", [False, True])
@pytest.mark.parametrize("channels_last", [False, True])
def test_fused_norms_are_instance_norm_and_relu(relu_first, channels_last):
    """Values and input gradient of both orders, NCHW and NHWC, against float64 modules; the result
    keeps the input's dtype and shape."""
    g = torch.Generator().manual_seed(int(relu_first) + 2 * int(channels_last))
    h = torch.randn(3, 5, 7, 4, generator=g) * 3 + 1
    if channels_last:
        h = h.contiguous(memory_format=torch.channels_last)
    h.requires_grad_(True)
    w = torch.randn(3, 5, 7, 4, generator=g, dtype=torch.float64)
    got = (fused.relu_norm if relu_first else fused.norm_relu)(h, 1e-5)
    (got_grad,) = torch.autograd.grad(got, h, w.float())
    hd = h.detach().double().requires_grad_(True)
    want = _reference(hd, relu_first)
    (want_grad,) = torch.autograd.grad(want, hd, w)
    assert got.dtype == torch.float32 and got.shape == h.shape
    torch.testing.assert_close(got.double(), want, rtol=0, atol=2e-6)
    torch.testing.assert_close(got_grad.double(), want_grad, rtol=0, atol=2e-5 * float(want_grad.abs().max()))


def test_fused_norm_of_bfloat16_maps_keeps_float32_statistics():
    """A bfloat16 map (the convolutions' output under autocast) comes back bfloat16, normalised from
    float32 statistics: within bfloat16's rounding of the float64 answer, under autocast too."""
    h = (torch.randn(2, 4, 9, 6, generator=torch.Generator().manual_seed(4)) * 5 + 3).to(torch.bfloat16)
    want = _reference(h, relu_first=False)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        got = fused.norm_relu(h, 1e-5)
    assert got.dtype == torch.bfloat16
    torch.testing.assert_close(got.double(), want, rtol=8e-3, atol=8e-3)


def _decoder():
    torch.manual_seed(0)
    decoder = ConvDecoder((65, 33), 6, (4, 8, 8, 16)).eval().requires_grad_(False)
    decoder.fast_frozen_path = False        # the path CUDA takes
    return decoder


@pytest.mark.parametrize("others", [False, True])
def test_decoder_fused_norm_switch_equals_the_modules(others, monkeypatch):
    """``layout_fused_norm`` (alone, and with channels-last maps, the folded last layer and the composed
    fully-connected layers, whose composition is cached on the module): every
    instance norm + ReLU through the compiled kernels, and models and latent gradients those of the
    modules in float64 to float32 round-off."""
    plain = _decoder()
    switched = copy.deepcopy(plain)
    switched.layout_fused_norm = True
    switched.layout_channels_last = switched.layout_fold_last = switched.layout_compose_fc = others
    calls = []
    real = fused.norm_relu
    monkeypatch.setattr(fused, "norm_relu", lambda h, eps: calls.append(tuple(h.shape)) or real(h, eps))
    z = torch.randn(4, 6, generator=torch.Generator().manual_seed(1))
    g = torch.randn(4, plain.n_cells, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    zf = z.clone().requires_grad_(True)
    x = switched(zf)
    (grad,) = torch.autograd.grad(x, zf, g.float())
    assert len(calls) == 3                  # the three hidden layers' norms
    assert ("_latentinv_composed" in switched.fc.__dict__) == others
    exact = copy.deepcopy(plain).double()
    zd = z.double().requires_grad_(True)
    xd = exact(zd)
    (grad_d,) = torch.autograd.grad(xd, zd, g)
    assert float((x.double() - xd).abs().max().detach()) <= 2e-6
    assert float((grad.double() - grad_d).abs().max()) <= 2e-6 * float(grad_d.abs().max())


def _generator(**switches):
    torch.manual_seed(3)
    generator = SpatialGenerator(n_filters=4).eval().requires_grad_(False)
    switched = copy.deepcopy(generator)
    for name, value in switches.items():
        setattr(switched, name, value)
    return switched, generator


@pytest.mark.parametrize("channels_last,fused_norm", [(True, False), (False, True), (True, True)])
def test_sgan_layout_switches_equal_the_generator(channels_last, fused_norm, monkeypatch):
    """The SGAN generator's switches: channels-last maps into every transposed convolution (with the
    weights' channels-last copies cached on the layers), the five ReLU + instance norms compiled;
    images and latent gradients those of the modules in float64."""
    switched, plain = _generator(layout_channels_last=channels_last, layout_fused_norm=fused_norm)
    norms, layouts = [], []
    real_norm, real_conv = fused.relu_norm, F.conv_transpose2d
    monkeypatch.setattr(fused, "relu_norm", lambda h, eps=1e-5: norms.append(1) or real_norm(h, eps))
    monkeypatch.setattr(F, "conv_transpose2d", lambda x, *a, **k: layouts.append(
        x.is_contiguous(memory_format=torch.channels_last)) or real_conv(x, *a, **k))
    z = torch.rand(3, 1, 5, 3, generator=torch.Generator().manual_seed(5)) * 2 - 1
    w = torch.randn(3, 1, 129, 65, generator=torch.Generator().manual_seed(6), dtype=torch.float64)
    zf = z.clone().requires_grad_(True)
    x = switched(zf)
    (grad,) = torch.autograd.grad(x, zf, w.float())
    assert len(norms) == (5 if fused_norm else 0)
    assert len(layouts) == 7 and (all(layouts) if channels_last else not all(layouts))
    convs = list(switched.upsample) + list(switched.refine)
    assert all(("_latentinv_channels_last_weight" in c.__dict__) == channels_last for c in convs)
    exact = copy.deepcopy(plain).double()
    zd = z.double().requires_grad_(True)
    xd = exact(zd)
    (grad_d,) = torch.autograd.grad(xd, zd, w)
    assert x.shape == xd.shape == (3, 1, 129, 65)
    assert float((x.double() - xd).abs().max().detach()) <= 1e-5
    assert float((grad.double() - grad_d).abs().max()) <= 1e-5 * float(grad_d.abs().max())


def test_sgan_switches_leave_training_to_the_modules():
    """Weights that ask for gradients (training): the modules as they are, bit for bit, and every
    weight gets its gradient."""
    switched, plain = _generator(layout_channels_last=True, layout_fused_norm=True)
    switched.requires_grad_(True)
    plain.requires_grad_(True)
    z = torch.rand(2, 1, 5, 3, generator=torch.Generator().manual_seed(7))
    y = switched(z)
    assert torch.equal(y, plain(z))
    y.sum().backward()
    assert all(p.grad is not None for p in switched.parameters())
    assert not any("_latentinv_channels_last_weight" in c.__dict__ for c in switched.upsample)
